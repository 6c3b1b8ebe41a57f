import json
import subprocess

import pytest

from scpo_lab import runs
from scpo_lab.runs import (RunDir, config_hash, find_run, git_commit, is_finished, load_eval, load_runs,
                           load_samples, read_jsonl)

CFG = {"method": "grpo", "seed": 0, "lr": 1e-5, "task": {"name": "arithmetic", "n_train": 64},
       "lora": {"r": 16, "target_modules": ["q_proj", "v_proj"]}, "runs_dir": "/tmp/x", "log_every": 1}


def test_hash_stable_across_key_order_and_excluded_keys():
    h = config_hash(CFG)
    assert len(h) == 12 and all(ch in "0123456789abcdef" for ch in h)
    reordered = {"task": {"n_train": 64, "name": "arithmetic"}, "lora": {"target_modules": ("q_proj", "v_proj"), "r": 16},
                 "lr": 1e-5, "seed": 0, "method": "grpo"}
    assert config_hash(reordered) == h  # no runs_dir/log_every, different order, tuple vs list
    assert config_hash({**CFG, "runs_dir": "elsewhere", "notes": "hi", "save_every": 50, "log_every": 7}) == h
    assert config_hash({**CFG, "seed": 1}) != h
    assert config_hash({**CFG, "task": {"name": "gsm8k", "n_train": 64}}) != h
    assert config_hash(CFG, exclude=()) != h  # runs_dir now counts
    assert config_hash(CFG, exclude=("runs_dir", "log_every", "seed")) == config_hash({**CFG, "seed": 9},
                                                                                   exclude=("runs_dir", "log_every", "seed"))


def test_create_writes_config_with_provenance(tmp_path):
    run = RunDir.create(CFG, runs_dir=tmp_path)
    assert run.path == tmp_path / f"grpo-{config_hash(CFG)}"
    rec = json.loads(run.config_path.read_text())
    for k, v in CFG.items():
        assert rec[k] == v  # complete config, excluded keys included
    for k in ("package_version", "git_commit", "created", "python", "torch", "transformers"):
        assert k in rec
    assert rec["package_version"] == runs._version("scpo_lab")
    assert rec["created"].endswith("+00:00")
    assert isinstance(rec["git_commit"], str) and rec["git_commit"]
    assert run.config == CFG
    # reopening keeps the original config.json (resume)
    before = run.config_path.read_text()
    again = RunDir.create({**CFG, "notes": "resumed"}, runs_dir=tmp_path)
    assert again == run and run.config_path.read_text() == before
    assert RunDir.create(CFG, name="my/run", runs_dir=tmp_path).name == f"my_run-{config_hash(CFG)}"
    with pytest.raises(ValueError):
        RunDir.create({**CFG, "git_commit": "x"}, runs_dir=tmp_path)


def test_git_commit_never_raises(tmp_path):
    assert git_commit(tmp_path) == "unknown"  # not a git checkout
    assert git_commit(tmp_path / "missing") == "unknown"
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
           "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    try:
        subprocess.run(["git", "init", "-q", str(repo)], check=True, env=env)
        (repo / "a").write_text("a")
        subprocess.run(["git", "-C", str(repo), "add", "a"], check=True, env=env)
        subprocess.run(["git", "-C", str(repo), "commit", "-qm", "a"], check=True, env=env)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("git not usable here")
    clean = git_commit(repo)
    assert len(clean) == 40
    (repo / "a").write_text("b")
    assert git_commit(repo) == clean + "-dirty"


def test_append_read_round_trip_and_torn_line(tmp_path):
    run = RunDir.create(CFG, runs_dir=tmp_path)
    for s in range(3):
        run.append_metrics({"step": s, "loss": 0.5 - 0.1 * s, "reward": s / 3})
    samples = [{"step": 0, "problem_id": f"p{i}", "prompt": [{"role": "user", "content": "1+1?"}],
                "completion": "2 ✓", "reward": 1.0, "passed": True, "feedback": "ok", "extracted": "2"}
               for i in range(2)]
    run.append_samples(samples)
    assert [r["step"] for r in run.read_metrics()] == [0, 1, 2]
    assert run.read_samples() == samples
    assert run.last_step() == 2
    # a kill mid-write leaves a torn last line: readers ignore it
    with open(run.metrics_path, "a") as f:
        f.write('{"step": 3, "lo')
    assert [r["step"] for r in run.read_metrics()] == [0, 1, 2]
    # the next append drops the torn tail instead of gluing onto it
    run.append_metrics({"step": 3, "loss": 0.1})
    assert [r["step"] for r in run.read_metrics()] == [0, 1, 2, 3]
    # corruption in the middle is an error, not silently skipped
    lines = run.metrics_path.read_text().splitlines()
    lines[1] = "{bad"
    run.metrics_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError):
        run.read_metrics()
    with pytest.raises(ValueError):
        run.append_metrics({"loss": 1.0})
    assert read_jsonl(tmp_path / "nope.jsonl") == []


def test_truncate_after(tmp_path):
    run = RunDir.create(CFG, runs_dir=tmp_path)
    for s in range(6):
        run.append_metrics({"step": s, "loss": float(s)})
        run.append_samples([{"step": s, "problem_id": f"p{s}-{j}", "reward": 0.0} for j in range(2)])
    with open(run.samples_path, "a") as f:
        f.write('{"step": 6, "pro')  # torn
    run.truncate_after(3)
    assert [r["step"] for r in run.read_metrics()] == [0, 1, 2, 3]
    assert [r["problem_id"] for r in run.read_samples()] == [f"p{s}-{j}" for s in range(4) for j in range(2)]
    assert run.samples_path.read_text().endswith("\n")
    assert not list(run.path.glob(".*tmp*"))
    run.append_metrics({"step": 4, "loss": 4.0})  # resume continues cleanly
    assert [r["step"] for r in run.read_metrics()] == [0, 1, 2, 3, 4]


def test_latest_checkpoint_ignores_incomplete(tmp_path):
    run = RunDir.create(CFG, runs_dir=tmp_path)
    assert run.latest_checkpoint() is None
    for step in (10, 20, 5):
        d = run.checkpoint_dir(step)
        (d / "adapter.safetensors").write_text("w")
        RunDir.mark_complete(d)
    incomplete = run.checkpoint_dir(30)  # killed before the marker was written
    (incomplete / "adapter.safetensors").write_text("w")
    (run.checkpoints_dir / "step-x").mkdir()
    (run.checkpoints_dir / "step-40").write_text("a file, not a folder")
    assert run.latest_checkpoint() == (20, run.checkpoints_dir / "step-20")
    assert [s for s, _ in run.checkpoints()] == [5, 10, 20]
    run.mark_complete(incomplete)
    assert run.latest_checkpoint() == (30, incomplete)


def test_done_find_and_eval(tmp_path):
    assert find_run(CFG, tmp_path) is None
    run = RunDir.create(CFG, runs_dir=tmp_path)
    assert find_run({**CFG, "notes": "x"}, tmp_path) == run
    assert find_run({**CFG, "seed": 5}, tmp_path) is None
    assert not run.is_finished() and not is_finished(run.path)
    run.mark_done()
    assert run.is_finished() and is_finished(run) and is_finished(str(run.path))
    assert run.read_eval() == []
    run.add_eval({"split": "test", "checkpoint": "final", "pass_at_1": 0.5, "ci": {"low": 0.4, "high": 0.6}})
    run.add_eval({"split": "test", "checkpoint": "base", "pass_at_1": 0.3})
    assert [r["checkpoint"] for r in run.read_eval()] == ["final", "base"]


def _make_runs(tmp_path):
    out = []
    for method, seed in (("grpo", 0), ("scpo", 0), ("scpo", 1)):
        cfg = {**CFG, "method": method, "seed": seed}
        run = RunDir.create(cfg, runs_dir=tmp_path)
        for s in range(3):
            run.append_metrics({"step": s, "reward": 0.1 * s + seed})
        out.append(run)
    return out


def test_load_runs(tmp_path):
    grpo, scpo0, scpo1 = _make_runs(tmp_path)
    (tmp_path / "not-a-run").mkdir()
    df = load_runs(tmp_path)
    assert len(df) == 9
    for col in ("run", "run_hash", "step", "reward", "method", "seed", "task.name", "lora.r", "git_commit"):
        assert col in df.columns
    assert set(df["run"]) == {grpo.name, scpo0.name, scpo1.name}
    assert (df["task.name"] == "arithmetic").all()
    assert df["lora.target_modules"].iloc[0] == ("q_proj", "v_proj")
    assert "config.run_hash" not in df.columns and "run_name" not in df.columns
    g = load_runs(tmp_path, where={"method": "grpo"})
    assert len(g) == 3 and set(g["run"]) == {grpo.name} and list(g["step"]) == [0, 1, 2]
    assert set(load_runs(tmp_path, where={"method": "scpo", "seed": 1})["run"]) == {scpo1.name}
    assert set(load_runs(tmp_path, where={"seed": [0, 1], "task.name": "arithmetic"})["run"]) == set(df["run"])
    assert len(load_runs(tmp_path, where={"method": "ppo"})) == 0
    assert len(load_runs(tmp_path, where={"no.such.key": 1})) == 0
    assert set(load_runs(tmp_path, names=[scpo0.name])["run"]) == {scpo0.name}
    assert len(load_runs(tmp_path, names="scpo")) == 6  # the <name> part matches both scpo runs
    assert len(load_runs(tmp_path / "empty")) == 0
    assert df.groupby("method")["reward"].mean().to_dict() == pytest.approx({"grpo": 0.1, "scpo": 0.6})


def test_runs_dir_env(tmp_path, monkeypatch):
    monkeypatch.setenv("SCPO_LAB_RUNS", str(tmp_path / "envruns"))
    run = RunDir.create(CFG)
    assert run.path.parent == tmp_path / "envruns"
    run.append_metrics({"step": 0, "reward": 1.0})
    assert len(load_runs()) == 1
    monkeypatch.delenv("SCPO_LAB_RUNS")
    monkeypatch.chdir(tmp_path)  # from a source checkout: <checkout>/runs whatever the working directory
    assert runs.default_runs_dir() == runs._SOURCE_ROOT / "runs"
    monkeypatch.setattr(runs, "_SOURCE_ROOT", tmp_path / "site-packages")  # installed package: ./runs
    assert runs.default_runs_dir().resolve() == (tmp_path / "runs").resolve()


def test_load_samples_and_eval(tmp_path):
    grpo, scpo0, _ = _make_runs(tmp_path)
    grpo.append_samples([{"step": 0, "problem_id": "a", "reward": 1.0, "passed": True},
                         {"step": 1, "problem_id": "b", "reward": 0.0, "passed": False}])
    for obj in (grpo, grpo.path, grpo.name):
        s = load_samples(obj, runs_dir=tmp_path)
        assert list(s["problem_id"]) == ["a", "b"] and list(s["passed"]) == [True, False]
    with pytest.raises(ValueError):
        load_samples("missing-run", runs_dir=tmp_path)
    grpo.write_eval([{"split": "test", "k": 1, "pass_at_k": 0.4}, {"split": "test", "k": 8, "pass_at_k": 0.7}])
    scpo0.write_eval({"split": "test", "k": 1, "pass_at_k": 0.5, "ci": {"low": 0.3, "high": 0.6}})
    ev = load_eval(tmp_path)
    assert len(ev) == 3
    assert {"run", "run_hash", "method", "seed", "k", "pass_at_k", "ci.low"} <= set(ev.columns)
    assert sorted(ev[ev["method"] == "grpo"]["pass_at_k"]) == [0.4, 0.7]
    assert len(load_eval(tmp_path, where={"method": "scpo"})) == 1


def test_git_commit_is_dirty_for_code_changes_not_for_regenerated_reports(tmp_path):
    import subprocess

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "reports").mkdir()
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "reports" / "index.html").write_text("old\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert git_commit(tmp_path) == head
    (tmp_path / "reports" / "index.html").write_text("rebuilt\n")  # a report build rewrites its outputs
    (tmp_path / "reports" / "new.html").write_text("new\n")
    assert git_commit(tmp_path) == head
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_commit(tmp_path) == head + "-dirty"


# --- issue 22: a run folder's identity, its one writer --------------------------------------------------------

def _two_runs(tmp_path):
    good = RunDir.create(CFG, runs_dir=tmp_path)
    other = RunDir.create({**CFG, "seed": 7}, runs_dir=tmp_path)
    for run in (good, other):
        run.append_metrics({"step": 1, "reward": 0.5})
    return good, other


@pytest.mark.parametrize("damage", ["edited", "truncated", "deleted", "not an object"])
def test_a_damaged_config_json_is_named_and_load_runs_skips_it(tmp_path, damage):
    good, other = _two_runs(tmp_path)
    text = other.config_path.read_text()
    if damage == "edited":
        other.config_path.write_text(text.replace('"method": "grpo"', '"method": "scpo"'))
    elif damage == "truncated":
        other.config_path.write_text(text[:40])
    elif damage == "deleted":
        other.config_path.unlink()
    else:
        other.config_path.write_text("[1, 2]")
    with pytest.raises(runs.RunFolderError) as err:
        other.check_identity()
    assert str(other.config_path) in str(err.value) and "\n" not in str(err.value)
    with pytest.warns(UserWarning, match=f"skipping run folder {other.name}: .*config.json"):
        df = load_runs(tmp_path)
    assert set(df["run"]) == {good.name} and set(df["method"]) == {"grpo"}
    with pytest.warns(UserWarning):
        assert len(load_eval(tmp_path)) == 0
    with pytest.raises(runs.RunFolderError):  # resuming it would train under a config the file does not say
        RunDir.create({**CFG, "seed": 7}, runs_dir=tmp_path)
    assert good.check_identity()["seed"] == 0


def test_an_edited_seed_is_not_resumed_under_another_config(tmp_path):
    _, other = _two_runs(tmp_path)
    record = other.record()
    record["seed"] = 8
    other.config_path.write_text(json.dumps(record))
    with pytest.raises(runs.RunFolderError, match="does not match the folder's hash"):
        RunDir.create({**CFG, "seed": 7}, runs_dir=tmp_path)


def test_folders_without_hash_exclude_still_verify(tmp_path):
    run = RunDir.create(CFG, runs_dir=tmp_path, exclude=runs.DEFAULT_EXCLUDE)
    record = run.record()
    del record["hash_exclude"]  # as the code before this check wrote config.json
    run.config_path.write_text(json.dumps(record, indent=2, sort_keys=True))
    assert run.check_identity()["method"] == "grpo"
    assert RunDir.create(CFG, runs_dir=tmp_path) == run
    assert "hash_exclude" not in load_runs(tmp_path).columns


def test_one_writer_per_run_folder_in_one_process(tmp_path):
    run = RunDir.create(CFG, runs_dir=tmp_path)
    with run.lock():
        with pytest.raises(runs.RunLockedError, match=f"is being written by pid {__import__('os').getpid()} on "):
            run.lock().acquire()  # another train() of the same kernel: refused too
    with run.lock():  # released on exit
        pass
