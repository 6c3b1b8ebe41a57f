#!/usr/bin/env python
"""One short training of every method on randomly initialised models of real shapes: steps/s, rollout tokens/s and
peak memory per method. Written for a GPU machine with no network (benchmarks/gpu_check.sh); runs on CPU too.

    bash benchmarks/gpu_check.sh                                   # GPU: SmolLM2-135M and Qwen2.5-0.5B shapes
    python benchmarks/gpu_check.py --shapes tiny --steps 1         # CPU: the plumbing, in seconds

No weights travel and nothing is downloaded: each model is built from its architecture's numbers (below) with
random weights and saved to a scratch folder, with the embedded model's tokenizer (shipped in the package).
Throughput does not depend on the weights' values, but it does depend on the vocabulary: the Qwen2.5 shape keeps
Qwen's layers and widths with SmolLM2's 49,152-token vocabulary (Qwen's is 151,936), so its LM head costs about a
third of the real one. A random model almost never samples EOS, so every completion runs to max_new_tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import peak_rss_mib, print_host, scratch_dir  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# layer counts and widths from the models' published config.json files
SHAPES = {
    "tiny": dict(arch="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, tie_word_embeddings=True),
    "smollm2-135m": dict(arch="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True, rope_theta=100000.0),
    "qwen2.5-0.5b": dict(arch="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True,
                         rope_theta=1000000.0),
}
MARKER = "GPU_CHECK_JSON "


def build_model(shape: str, folder: str, seed: int = 0) -> str:
    """A random model of `shape` with the embedded tokenizer, saved to `folder`; returns the folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from scpo_lab.models import _embedded_tokenizer

    tokenizer = _embedded_tokenizer()
    numbers = dict(SHAPES[shape])
    arch = numbers.pop("arch")
    config_class, model_class = (LlamaConfig, LlamaForCausalLM) if arch == "llama" else (Qwen2Config, Qwen2ForCausalLM)
    config = config_class(vocab_size=len(tokenizer), max_position_embeddings=4096, bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **numbers)
    torch.manual_seed(seed)
    model = model_class(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    path = os.path.join(folder, shape)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def measure(shape: str, folder: str, method: str, args) -> dict:
    """Train `method` for args.steps steps on the model in `folder`; its throughput and peak memory."""
    import torch

    from scpo_lab.config import make_config
    from scpo_lab.trainer import train

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    overrides = {"steps": args.steps, "prompts_per_step": args.prompts, "group_size": args.group_size,
                 "max_new_tokens": args.max_new_tokens, "micro_batch_size": args.micro_batch_size,
                 "save_every": args.steps, "runs_dir": os.path.join(folder, "runs"), "seed": 0}
    if method == "scpo-critic":
        overrides["value.critic"] = "shared"
    model = {"name": folder, "backend": args.backend, "gradient_checkpointing": args.gradient_checkpointing,
             "fast_inference": args.fast_inference, "load_in_4bit": args.load_in_4bit}
    config = make_config("cpu", method=method, model=model, **overrides)
    start = time.perf_counter()
    run = train(config, progress=False)
    seconds = time.perf_counter() - start
    rows = run.metrics
    tokens = rows["generated_tokens"].diff().fillna(rows["generated_tokens"].iloc[0])  # generated in each step
    measured = rows.index[1:] if len(rows) > 1 else rows.index  # step 1 warms up (kernels, allocator)
    return {"shape": shape, "method": method, "device": "cuda" if cuda else "cpu", "steps": len(rows),
            "options": f"ckpt={args.gradient_checkpointing} vllm={args.fast_inference} 4bit={args.load_in_4bit}",
            "wall_seconds": round(seconds, 1),
            "steps_per_s": round(len(measured) / float(rows.loc[measured, "time/step"].sum()), 4),
            "rollout_tokens_per_s": round(float(tokens[measured].sum() / rows.loc[measured, "time/generation"].sum()),
                                          1),
            "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20) if cuda else None,
            "peak_rss_mib": round(peak_rss_mib())}  # of this process so far (all methods before it too)


def main(argv=None) -> list[dict]:
    from scpo_lab.critics import methods

    METHODS = methods()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--shapes", nargs="+", default=["smollm2-135m", "qwen2.5-0.5b"], choices=list(SHAPES))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--backend", default="auto", help="auto | hf | unsloth (auto: unsloth on CUDA if installed)")
    parser.add_argument("--gradient-checkpointing", default="off", choices=["off", "on", "unsloth"],
                        help="unsloth needs --backend unsloth")
    parser.add_argument("--fast-inference", default="off", choices=["off", "on", "auto"],
                        help="rollouts through Unsloth's vLLM engine (needs --backend unsloth and vllm)")
    parser.add_argument("--load-in-4bit", action="store_true", help="4-bit base weights (needs --backend unsloth)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--micro-batch-size", type=int, default=16)
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one, deleted)")
    args = parser.parse_args(argv)

    import torch

    print_host()
    if torch.cuda.is_available():
        print(f"gpu: {torch.cuda.get_device_name(0)} x {torch.cuda.device_count()}, torch CUDA {torch.version.cuda}")
    results = []
    with scratch_dir(args.workdir, "gpu-check-") as workdir:
        for shape in args.shapes:
            folder = build_model(shape, workdir)
            for method in args.methods:
                try:
                    result = measure(shape, folder, method, args)
                except Exception as err:  # noqa: BLE001 - one failing method must not hide the others' numbers
                    result = {"shape": shape, "method": method, "error": f"{type(err).__name__}: {err}"[:300]}
                results.append(result)
                print(MARKER + json.dumps(result), flush=True)
    print(f"\noptions: backend={args.backend} gradient_checkpointing={args.gradient_checkpointing} "
          f"fast_inference={args.fast_inference} load_in_4bit={args.load_in_4bit}")
    print(f"{'shape':<14} {'method':<16} {'device':<6} {'steps/s':>8} {'rollout tok/s':>14} {'peak GPU MiB':>13} "
          f"{'peak RSS MiB':>13}")
    for r in results:
        if "error" in r:
            print(f"{r['shape']:<14} {r['method']:<16} FAILED: {r['error']}")
            continue
        print(f"{r['shape']:<14} {r['method']:<16} {r['device']:<6} {r['steps_per_s']:>8.3f} "
              f"{r['rollout_tokens_per_s']:>14.1f} {str(r['peak_gpu_mib']):>13} {r['peak_rss_mib']:>13}")
    return results


if __name__ == "__main__":
    main()
