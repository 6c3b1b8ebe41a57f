#!/usr/bin/env bash
# One short training of every method on random models of SmolLM2-135M's and Qwen2.5-0.5B's shapes, on the GPU,
# with no network: prints steps/s, rollout tokens/s and peak GPU memory per method (benchmarks/gpu_check.py).
# Usage (from the repository root, after `make setup`): bash benchmarks/gpu_check.sh [extra gpu_check.py options]
# The gpu profile's options, one at a time:  --backend unsloth --gradient-checkpointing unsloth
#                                            --backend unsloth --fast-inference on      (needs vllm installed)
#                                            --backend unsloth --load-in-4bit           (needs bitsandbytes)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || echo "no nvidia-smi: is there a GPU?"
"$PY" benchmarks/gpu_check.py --shapes smollm2-135m qwen2.5-0.5b --steps 3 --prompts 8 --group-size 8 \
    --max-new-tokens 128 "$@"
