"""Two processes under `accelerate launch` (gloo on CPU) against one process: the same rollouts per step, finite
losses, weights identical across processes, every file written once, and resume after a kill."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scpo_lab.config import ConfigError, make_config
from scpo_lab.distributed import World, check_config
from scpo_lab.trainer import train

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {"method": "scpo-divergence", "steps": 3, "save_every": 1, "samples_every": 1, "learning_rate": 0.05}


def _launch(runs_dir: Path, processes: int = 2, settings: dict = SETTINGS) -> subprocess.CompletedProcess:
    accelerate = Path(sys.executable).with_name("accelerate")
    # --multi_gpu selects accelerate's torchrun launcher; with no GPU the processes use gloo on the CPU
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
           "-m", "scpo_lab.cli", "train", "--profile", "smoke", "--no-progress",
           "--set", *(f"{k}={v}" for k, v in settings.items()), f"runs_dir={runs_dir}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)


def _rows(path: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (path / name).read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_match_one_process_and_resume(tmp_path):
    done = _launch(tmp_path / "two")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("run folder:") == 1  # rank 0 reports
    [run] = list((tmp_path / "two").iterdir())
    single = train(make_config("smoke", runs_dir=str(tmp_path / "one"), **SETTINGS), progress=False)
    config = json.loads((run / "config.json").read_text())
    assert config["processes"] == 2 and run.name != single.path.name  # its own run folder
    metrics, reference = _rows(run, "metrics.jsonl"), _rows(single.path, "metrics.jsonl")
    assert [r["step"] for r in metrics] == [1, 2, 3]
    samples, reference_samples = _rows(run, "samples.jsonl"), _rows(single.path, "samples.jsonl")
    for step in (1, 2, 3):  # the same number of rollouts per step: prompts_per_step x G, split over processes
        assert sum(r["step"] == step for r in samples) == sum(r["step"] == step for r in reference_samples) == 2 * 4
        # each process took whole groups: every problem's G rollouts are together
        ids = [r["problem_id"] for r in samples if r["step"] == step]
        assert len(set(ids)) == 2 and all(ids.count(i) == 4 for i in set(ids))
    for r in metrics:
        assert r["loss"] == r["loss"] and r["grad_norm"] > 0  # finite, and the dense critic's signal trained
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-1", "step-2", "step-3"]
    assert (run / "final" / "adapter_model.safetensors").is_file() and (run / "DONE").is_file()
    assert len(reference) == 3
    # resume: as if killed during step 3 (its checkpoint, the final adapter and DONE never landed)
    shutil.rmtree(run / "checkpoints" / "step-3")
    shutil.rmtree(run / "final")
    (run / "DONE").unlink()
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join(lines[:2]) + "\n")
    again = _launch(tmp_path / "two")
    assert again.returncode == 0, again.stderr[-3000:]
    assert [r["step"] for r in _rows(run, "metrics.jsonl")] == [1, 2, 3]
    assert (run / "DONE").is_file() and (run / "checkpoints" / "step-3" / "COMPLETE").is_file()


CRITICS_WITH_PARAMETERS = [("scpo-head", {"value.train_lora": True}), ("scpo-critic", {}),
                           ("scpo-irl", {"irl.expert": "teacher", "irl.keep_passing": False, "irl.teacher_rollouts": 1}), ("scpo-divergence", {"scpo.signal": "probe"})]


@pytest.mark.slow
@pytest.mark.parametrize("method, options", CRITICS_WITH_PARAMETERS, ids=[m for m, _ in CRITICS_WITH_PARAMETERS])
def test_critics_that_train_parameters_stay_in_sync_under_two_processes(tmp_path, method, options):
    """Every critic with its own parameters trains under 2 processes: whole groups per process, the one-process
    number of rollouts per step, and the policy's and the critic's parameters identical on both processes at the
    end (World.check_in_sync fails the run otherwise); its final critic state is written once."""
    settings = {"method": method, "steps": 2, "save_every": 1, "samples_every": 1, "learning_rate": 0.05,
                **{k: str(v).lower() if isinstance(v, bool) else v for k, v in options.items()}}
    done = _launch(tmp_path, settings=settings)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "drifted apart" not in done.stderr
    [run] = list(tmp_path.iterdir())
    samples = _rows(run, "samples.jsonl")
    for step in (1, 2):
        ids = [r["problem_id"] for r in samples if r["step"] == step]
        assert len(ids) == 2 * 4 and len(set(ids)) == 2 and all(ids.count(i) == 4 for i in set(ids))
    assert (run / "final" / "critic.pt").is_file() and (run / "DONE").is_file()
    assert all(r["loss"] == r["loss"] for r in _rows(run, "metrics.jsonl"))


def test_sum_gradients_and_the_sync_check_on_one_process_are_no_ops():
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 2.0)
    World().sum_gradients([p])
    assert torch.equal(p.grad, torch.full((3,), 2.0))
    World().check_in_sync([p])


def test_world_merges_rows_and_refuses_what_would_drift(monkeypatch):
    assert World().mean_row({"step": 1, "loss": 0.5}) == {"step": 1, "loss": 0.5}
    two = World(rank=0, size=2)
    rows = [{"step": 3, "loss": 0.25, "reward": 0.5, "method": "grpo", "flops": 7.0},
            {"step": 3, "loss": 0.5, "reward": 1.0, "method": "grpo", "flops": 7.0}]
    monkeypatch.setattr(World, "gather", lambda self, obj: [(r, n) for r, n in zip(rows, (10, 30))])
    # losses are shares of the whole batch's loss (summed); rates are means of equal shares; the rest as is
    assert two.mean_row(rows[0]) == {"step": 3, "loss": 0.75, "reward": 0.75, "method": "grpo", "flops": 7.0}
    # per-token means weighted by each process's tokens (10 at 1, 30 at 0: 0.25, not 0.5), maxima the largest
    rows = [{"entropy": 1.0, "ratio/first_pass_max": 1.02}, {"entropy": 0.0, "ratio/first_pass_max": 1.5}]
    assert two.mean_row(rows[0], token_means=("entropy",), tokens=10) == {"entropy": 0.25, "ratio/first_pass_max": 1.5}
    for method, options in CRITICS_WITH_PARAMETERS:  # no longer refused: their parameters are kept in sync
        check_config(make_config("smoke", method=method, **options), 2)
    with pytest.raises(ConfigError, match="prompts_per_step"):
        check_config(make_config("smoke", prompts_per_step=3), 2)
    with pytest.raises(ConfigError, match="scale_rewards"):
        check_config(make_config("smoke", scale_rewards="batch"), 2)
    with pytest.raises(ConfigError, match="^dynamic_sampling: not supported with several processes") as err:
        check_config(make_config("smoke", dynamic_sampling=True), 2)
    assert "\n" not in str(err.value)
    check_config(make_config("smoke", method="scpo-head"), 1)  # one process: anything goes
    check_config(make_config("smoke", dynamic_sampling=True), 1)
