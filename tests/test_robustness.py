"""Nothing lost, nothing silently wrong (issue 22): one writer per run folder, no non-finite state saved or marked
done, resume past a damaged checkpoint, a full disk, and one-line errors for bad input, on the tiny model."""

import base64
import errno
import json
import logging
import os
import pickle
import signal
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch

import scpo_lab.trainer as trainer_module
from scpo_lab.cli import main
from scpo_lab.config import ConfigError, make_config
from scpo_lab.runs import RunLockedError, load_runs
from scpo_lab.trainer import RunWriteError, run_dir_of, train

ROOT = Path(__file__).resolve().parent.parent


def smoke(tmp_path, **overrides):
    return make_config("smoke", runs_dir=str(tmp_path / "runs"), **overrides)


def steps_of(run_path) -> list[int]:
    path = Path(run_path) / "metrics.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.exists() else []


def cli_error(capsys) -> str:
    """The CLI's error line: exactly one, and no traceback (libraries may log warnings on stderr besides)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


def one_line(err: BaseException) -> str:
    message = str(err)
    assert "\n" not in message, message
    return message


# --- one writer per run folder -----------------------------------------------------------------------------

# A second process trains the same config, each step slowed so that the test can meet it mid-run.
SLOW_TRAINER = """
import sys, time
import scpo_lab.trainer as t
from scpo_lab.config import make_config
real = t.training_step
def slow(*a, **k):
    row = real(*a, **k)
    print("step", row["step"], flush=True)
    time.sleep(0.5)
    return row
t.training_step = slow
t.train(make_config("smoke", runs_dir=sys.argv[1], steps=int(sys.argv[2]), save_every=1), progress=False)
"""


def _start_trainer(runs_dir: Path, steps: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_TRAINER, str(runs_dir), str(steps)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()  # the first step is done: the other process holds the lock
    assert line.startswith("step"), proc.stderr.read()[-3000:]
    return proc


def test_two_processes_on_one_run_folder_the_second_stops_and_a_killed_writer_leaves_no_stale_lock(tmp_path, capsys):
    cfg = smoke(tmp_path, steps=8, save_every=1)
    other = _start_trainer(tmp_path / "runs", 8)
    try:
        with pytest.raises(RunLockedError) as err:
            train(cfg, progress=False)
        assert f"pid {other.pid}" in one_line(err.value) and str(run_dir_of(cfg).path) in str(err.value)
        assert main(["train", "--profile", "smoke", "--no-progress", "--set", "steps=8", "save_every=1",
                     f"runs_dir={tmp_path / 'runs'}"]) == 2  # the CLI: one line, no traceback
        assert f"pid {other.pid}" in cli_error(capsys)
    finally:
        other.send_signal(signal.SIGKILL)  # killed mid-run: its lock must not outlive it
        other.wait()
    run = train(cfg, progress=False)  # takes over the folder and resumes
    assert steps_of(run.path) == list(range(1, 9))  # every step once, in order
    assert (run.path / "DONE").is_file()
    df = load_runs(tmp_path / "runs")
    assert df["step"].tolist() == list(range(1, 9))


def test_a_finished_run_in_another_process_is_loaded_not_trained_again(tmp_path, monkeypatch):
    cfg = smoke(tmp_path, steps=2, save_every=1)
    other = _start_trainer(tmp_path / "runs", 2)
    assert other.wait(timeout=300) == 0, other.stderr.read()[-3000:]
    monkeypatch.setattr(trainer_module, "training_step", lambda *a, **k: pytest.fail("trained a finished run"))
    assert steps_of(train(cfg, progress=False).path) == [1, 2]


# --- nothing non-finite is saved or marked done ------------------------------------------------------------

@pytest.mark.parametrize("bad_step", [1, 2])
def test_non_finite_weights_stop_before_any_checkpoint_or_final_is_written(tmp_path, monkeypatch, bad_step):
    cfg = smoke(tmp_path, steps=3, save_every=1)
    real_update = trainer_module._update
    calls = {"n": 0}

    def overflows(config, policy, *args, **kwargs):  # as an infinite learning rate would
        out = real_update(config, policy, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == bad_step:
            with torch.no_grad():
                next(p for p in policy.model.parameters() if p.requires_grad).fill_(float("inf"))
        return out

    monkeypatch.setattr(trainer_module, "_update", overflows)
    with pytest.raises(FloatingPointError) as err:
        train(cfg, progress=False)
    message = one_line(err.value)
    run = run_dir_of(cfg)
    assert str(run.path) in message and f"step {bad_step}" in message and "not finite" in message
    assert not (run.path / "DONE").exists() and not (run.path / "final").exists()
    assert [s for s, _ in run.checkpoints()] == list(range(1, bad_step))  # the kept ones are the good ones
    for _, ckpt in run.checkpoints():
        from safetensors.torch import load_file
        assert all(torch.isfinite(t).all() for t in load_file(ckpt / "adapter" / "adapter_model.safetensors").values())
    assert steps_of(run.path) == list(range(1, bad_step))  # the bad step's row is not logged either


def test_cli_refuses_infinite_learning_rate_and_temperature(tmp_path, capsys):
    for setting in ("learning_rate=.inf", "temperature=.inf", "learning_rate=.nan", "temperature=-1"):
        assert main(["train", "--profile", "smoke", "--no-progress", "--set", setting, "steps=1",
                     f"runs_dir={tmp_path / 'runs'}"]) == 2
        err = cli_error(capsys)
        assert err.startswith(f"error: {setting.split('=')[0]}:"), err
    assert not (tmp_path / "runs").exists()


# --- resume survives a damaged checkpoint ------------------------------------------------------------------

def _killed_in_step_3(tmp_path, monkeypatch, cfg):
    real_step = trainer_module.training_step

    def dies(*args, **kwargs):
        row = real_step(*args, **kwargs)
        if row["step"] == 3:
            raise KeyboardInterrupt
        return row

    monkeypatch.setattr(trainer_module, "training_step", dies)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False)
    monkeypatch.setattr(trainer_module, "training_step", real_step)
    return run_dir_of(cfg)


DAMAGES = {
    "deleted optimizer": lambda ckpt: (ckpt / "optimizer.pt").unlink(),
    "truncated safetensors": lambda ckpt: (ckpt / "adapter" / "adapter_model.safetensors").write_bytes(
        (ckpt / "adapter" / "adapter_model.safetensors").read_bytes()[:100]),
    "broken trainer state": lambda ckpt: (ckpt / "trainer_state.json").write_text("{"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_resume_sets_a_damaged_checkpoint_aside_and_uses_the_previous_one(tmp_path, monkeypatch, caplog, damage):
    cfg = smoke(tmp_path, steps=3, save_every=1)
    reference = train(cfg.replace(runs_dir=str(tmp_path / "ref")), progress=False).metrics
    run = _killed_in_step_3(tmp_path, monkeypatch, cfg)
    assert [s for s, _ in run.checkpoints()] == [1, 2]
    DAMAGES[damage](run.checkpoints_dir / "step-2")  # COMPLETE marker still there
    with caplog.at_level(logging.WARNING, logger="scpo_lab"):
        resumed = train(cfg, progress=False)
    warning = [r.getMessage() for r in caplog.records if "does not load" in r.getMessage()]
    assert len(warning) == 1 and "step-2" in warning[0] and "\n" not in warning[0]
    assert (run.checkpoints_dir / "step-2.damaged").is_dir()  # set aside, not deleted
    assert resumed.metrics["step"].tolist() == [1, 2, 3]  # steps 2 and 3 replayed from step 1
    assert resumed.metrics["loss"].tolist() == pytest.approx(reference["loss"].tolist(), abs=1e-5)
    assert (run.path / "DONE").is_file()


def test_a_deleted_critic_state_is_a_damaged_checkpoint(tmp_path, monkeypatch, caplog):
    cfg = smoke(tmp_path, method="sdpo", steps=3, save_every=1)  # its EMA teacher lives in critic.pt
    reference = train(cfg.replace(runs_dir=str(tmp_path / "ref")), progress=False).metrics
    run = _killed_in_step_3(tmp_path, monkeypatch, cfg)
    (run.checkpoints_dir / "step-2" / "critic.pt").unlink()
    with caplog.at_level(logging.WARNING, logger="scpo_lab"):
        resumed = train(cfg, progress=False).metrics
    assert any("critic.pt" in r.getMessage() for r in caplog.records)
    assert (run.checkpoints_dir / "step-2.damaged").is_dir()
    assert resumed["distill/loss"].tolist() == pytest.approx(reference["distill/loss"].tolist(), abs=1e-5)


def test_every_checkpoint_damaged_starts_over_cleanly(tmp_path, monkeypatch):
    cfg = smoke(tmp_path, steps=3, save_every=1)
    reference = train(cfg.replace(runs_dir=str(tmp_path / "ref")), progress=False).metrics
    run = _killed_in_step_3(tmp_path, monkeypatch, cfg)
    for step in (1, 2):
        DAMAGES["broken trainer state"](run.checkpoints_dir / f"step-{step}")
    resumed = train(cfg, progress=False).metrics
    assert resumed["step"].tolist() == [1, 2, 3]
    assert resumed["loss"].tolist() == pytest.approx(reference["loss"].tolist(), abs=1e-5)


# --- a full disk -------------------------------------------------------------------------------------------

def test_a_full_disk_stops_with_one_line_keeps_the_last_checkpoint_and_a_rerun_resumes(tmp_path, monkeypatch):
    cfg = smoke(tmp_path, steps=3, save_every=1)
    reference = train(cfg.replace(runs_dir=str(tmp_path / "ref")), progress=False).metrics
    real_save = torch.save

    def disk_full_in_step_2(obj, f, *args, **kwargs):
        if "step-2" in str(f):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_full_in_step_2)
    with pytest.raises(RunWriteError) as err:
        train(cfg, progress=False)
    message = one_line(err.value)
    run = run_dir_of(cfg)
    assert str(run.path) in message and "No space left on device" in message and "free space" in message
    assert "rerun" in message and "step 1" in message
    assert [s for s, _ in run.checkpoints()] == [1]
    assert not (run.checkpoints_dir / "step-2").exists()  # the half-written one is removed
    monkeypatch.setattr(torch, "save", real_save)  # space is freed
    policy = trainer_module.policy_for(cfg)
    params = [p for p in policy.model.parameters() if p.requires_grad]
    state = trainer_module._load_checkpoint(run.checkpoints_dir / "step-1", 1, policy,
                                            torch.optim.AdamW(params), None)  # intact and loadable
    assert state["step"] == 1
    resumed = train(cfg, progress=False).metrics
    assert resumed["step"].tolist() == [1, 2, 3]
    assert resumed["loss"].tolist() == pytest.approx(reference["loss"].tolist(), abs=1e-5)


def test_cli_reports_a_full_disk_in_one_line(tmp_path, monkeypatch, capsys):
    real_save = torch.save

    def disk_full(obj, f, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))

    monkeypatch.setattr(torch, "save", disk_full)
    assert main(["train", "--profile", "smoke", "--no-progress", "--set", "steps=1",
                 f"runs_dir={tmp_path / 'runs'}"]) == 2
    err = cli_error(capsys)
    assert "No space left on device" in err and "free space" in err
    monkeypatch.setattr(torch, "save", real_save)


# --- runs folders that cannot be written, models that cannot be loaded ------------------------------------

def test_runs_folder_that_is_a_file_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "runs-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("SCPO_LAB_RUNS", str(blocker))
    with pytest.raises(ValueError, match="^runs_dir: cannot create") as err:
        train(make_config("smoke", steps=1), progress=False)
    assert str(blocker) in one_line(err.value)
    assert main(["train", "--profile", "smoke", "--no-progress", "--set", "steps=1"]) == 2
    err = cli_error(capsys)
    assert err.startswith("error: runs_dir:")


def test_a_read_only_runs_folder_is_one_line(tmp_path, monkeypatch, capsys):
    real_mkdir = Path.mkdir
    (tmp_path / "runs").mkdir()

    def read_only(self, *args, **kwargs):  # as chmod a-w would (the tests may run as root, which ignores it)
        if self.parent == tmp_path / "runs":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(ValueError, match="^runs_dir: cannot create .*Permission denied.*writable folder") as err:
        train(smoke(tmp_path, steps=1), progress=False)
    one_line(err.value)
    assert main(["train", "--profile", "smoke", "--no-progress", "--set", "steps=1",
                 f"runs_dir={tmp_path / 'runs'}"]) == 2
    assert cli_error(capsys).startswith("error: runs_dir: cannot create")
    assert list((tmp_path / "runs").iterdir()) == []


def test_an_evaluation_is_never_lost_when_eval_json_cannot_be_written(tmp_path, monkeypatch, capsys):
    from scpo_lab.runs import RunDir

    args = ["train", "--profile", "smoke", "--no-progress", "--set", "steps=1", f"runs_dir={tmp_path / 'runs'}"]
    assert main(args) == 0  # the run is finished; then its folder turns read-only
    capsys.readouterr()

    def read_only(self, record):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self.eval_path))

    monkeypatch.setattr(RunDir, "add_eval", read_only)
    monkeypatch.chdir(tmp_path)
    assert main(args + ["--eval-problems", "2", "--eval-samples", "2"]) == 2
    captured = capsys.readouterr()
    assert "pass@1" in captured.out  # the summary is printed before the write is tried
    [err] = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert "Traceback" not in captured.err and "eval.json" in err and "saved to" in err
    kept = Path(err.rsplit("saved to ", 1)[1])
    assert kept.is_file() and json.loads(kept.read_text())  # the computed result, where the message says


def test_a_model_that_cannot_be_loaded_is_one_line_and_leaves_no_run_folder(tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants
    import transformers.utils.hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as offline: no network is tried
    monkeypatch.setattr(transformers.utils.hub, "_is_offline_mode", True, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in ("no_such_model", "no-such-org/no-such-model"):
        cfg = smoke(tmp_path, model={"name": name, "backend": "hf"})
        with pytest.raises(ValueError, match=f"^model.name: cannot load '{name}'") as err:
            train(cfg, progress=False)
        one_line(err.value)
        assert not (tmp_path / "runs").exists()
    assert main(["train", "--profile", "smoke", "--no-progress", "--set", "model.name=no_such_model",
                 f"runs_dir={tmp_path / 'runs'}"]) == 2
    err = cli_error(capsys)
    assert err.startswith("error: model.name: cannot load 'no_such_model'")


# --- eval reads the adapter's own LoRA config; bad eval flags ----------------------------------------------

def test_cli_eval_loads_an_adapter_of_another_rank(tmp_path, capsys):
    run = train(smoke(tmp_path, steps=1, model={"lora_r": 8, "lora_alpha": 16}), progress=False)
    assert main(["eval", "--model", "tiny", "--backend", "hf", "--adapter", str(run.path / "final"),
                 "--problems", "2", "--samples", "1", "--max-new-tokens", "4"]) == 0
    assert "pass@1" in capsys.readouterr().out


@pytest.mark.parametrize("flags, field", [
    (["--temperature", "-1"], "--temperature"),
    (["--temperature", "inf"], "--temperature"),
    (["--max-new-tokens", "0"], "--max-new-tokens"),
    (["--adapter", "/nowhere/final"], "--adapter"),
])
def test_cli_eval_refuses_bad_flags_in_one_line(capsys, flags, field):
    assert main(["eval", "--model", "tiny", "--problems", "1", "--samples", "1", *flags]) == 2
    err = cli_error(capsys)
    assert err.startswith(f"error: {field}:"), err


# --- bad input through the Python API ----------------------------------------------------------------------

def test_train_with_a_dict_names_what_it_takes(tmp_path):
    with pytest.raises(ConfigError, match="^config: train\\(\\) takes a TrainConfig, got dict; build one with "
                                          "make_config"):
        train({"method": "grpo", "steps": 1}, progress=False)


def test_a_non_numeric_answer_on_a_numeric_task_is_an_error_not_reward_0():
    from scpo_lab.tasks import Problem, get_task

    task = get_task("gsm8k")
    problem = Problem(id="mine-1", prompt=[{"role": "user", "content": "2 + 2?"}], answer="abc")
    with pytest.raises(ValueError, match="^answer: problem 'mine-1' has answer 'abc'; numeric tasks need a number"):
        task.verify(problem, "#### 4")
    assert task.verify(Problem(id="ok", prompt=[], answer="4"), "#### 4").passed


# --- LiveCodeBench upstream files --------------------------------------------------------------------------

def _lcb_row(qid="abc1_a", public=None):
    tests = [{"input": "1\n", "output": "1\n", "testtype": "stdin"}] if public is None else public
    return {"question_id": qid, "question_content": "Echo N.", "contest_date": "2025-03-01T00:00:00",
            "public_test_cases": json.dumps(tests), "private_test_cases": "", "metadata": "{}"}


@pytest.mark.parametrize("line, expected", [
    ('{"question_id": "x", ', "not valid JSON"),
    ("[]", "expected one JSON object per line"),
    (json.dumps({k: v for k, v in _lcb_row().items() if k != "question_id"}), "missing field 'question_id'"),
    (json.dumps(_lcb_row(public=[])), "problem 'abc1_a' has no tests"),
])
def test_malformed_upstream_livecodebench_files_name_file_and_line(tmp_path, line, expected):
    from scpo_lab.tasks import get_task

    path = tmp_path / "test6.jsonl"
    path.write_text(json.dumps(_lcb_row("good")) + "\n" + line + "\n")
    task = get_task("livecodebench", source="upstream", path=str(path))
    with pytest.raises(ValueError) as err:
        task.problems("test")
    message = one_line(err.value)
    assert message.startswith(f"task.path: {path}:2: ") and expected in message, message


def test_a_livecodebench_problem_with_no_training_tests_is_an_error_not_accepted(tmp_path):
    from scpo_lab.tasks import get_task

    row = _lcb_row(public=[])  # private tests only: a training problem's verdicts (half the public tests) have none
    row["private_test_cases"] = base64.b64encode(zlib.compress(pickle.dumps(json.dumps(
        [{"input": "1\n", "output": "1\n", "testtype": "stdin"}])))).decode()
    row["contest_date"] = "2024-01-01T00:00:00"
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(row) + "\n")
    task = get_task("livecodebench", source="upstream", path=str(path))
    [problem] = task.problems("train")
    with pytest.raises(ValueError, match="no tests to verify with") as err:
        task.verify(problem, "```python\nprint(input())\n```")
    one_line(err.value)
