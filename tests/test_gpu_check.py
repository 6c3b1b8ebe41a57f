"""benchmarks/gpu_check.py, the GPU throughput check, runs end to end here on CPU with the tiny shape (the GPU run
itself needs a GPU machine: README, Scaling up)."""

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"


@pytest.mark.slow
def test_gpu_check_trains_every_method_and_prints_the_table(tmp_path, capsys):
    sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.main(["--shapes", "tiny", "--steps", "2", "--prompts", "2", "--group-size", "2",
                           "--max-new-tokens", "4", "--workdir", str(tmp_path)])
    from scpo_lab.critics import methods

    assert [r["method"] for r in results] == list(methods())
    assert not [r for r in results if "error" in r]
    assert all(r["steps"] == 2 and r["steps_per_s"] > 0 and r["rollout_tokens_per_s"] > 0 for r in results)
    out = capsys.readouterr().out
    assert "rollout tok/s" in out and "scpo-irl" in out

    # the gpu profile's options reach the runs: checkpointed training of one method, its options in the row
    checkpointed = module.main(["--shapes", "tiny", "--methods", "grpo", "--steps", "1", "--prompts", "2",
                                "--group-size", "2", "--max-new-tokens", "4", "--gradient-checkpointing", "on",
                                "--workdir", str(tmp_path / "ckpt")])
    assert checkpointed[0]["options"] == "ckpt=on vllm=off 4bit=False" and "error" not in checkpointed[0]
    assert "gradient_checkpointing=on" in capsys.readouterr().out
