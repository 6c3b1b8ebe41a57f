"""One file per critic: the registry is the only list of methods, a new critic is one file plus one registry line,
run identity hashes only what a method reads, folders of the old identity still load, and no import circles."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

import scpo_lab.trainer as trainer_module
from scpo_lab import critics
from scpo_lab.config import ConfigError, make_config
from scpo_lab.experiment import arm_configs
from scpo_lab.migrate import legacy_exclude
from scpo_lab.runs import DEFAULT_EXCLUDE, RunDir, config_hash
from scpo_lab.trainer import run_dir_of, train

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "surprise_critic.py"


def smoke(tmp_path, **overrides):
    return make_config("smoke", runs_dir=str(tmp_path / "runs"), **overrides)


# ------------------------------------------------------------------------------------------------ the registry

def test_the_registry_lists_every_method_section_and_arm():
    assert critics.methods()[0] == "grpo"
    for method in critics.methods()[1:]:
        cls = critics.critic_class(method)
        assert method in cls.methods
        for arm, options in cls.presets.items():  # every preset is an arm of its own method, and builds
            assert critics.arms()[arm] == options and options["method"] in cls.methods
            make_config("smoke", **options)
    assert set(critics.sections()) == {"scpo", "distill", "value", "judge", "irl", "rlsd"}
    assert critics.section_of("grpo") is None and critics.section_of("random-reward") is None
    assert critics.section_of("scpo-judge") == "judge" and critics.section_of("opsd") == "distill"
    assert critics.section_of("srpo") == "distill" and critics.section_of("rlsd") == "rlsd"
    with pytest.raises(ValueError, match="already"):
        critics.register(type("Dup", (critics.JudgeCritic,), {"methods": ("scpo-head",)}))


def test_readme_method_table_names_every_method_and_its_module():
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("| method |"):]
    table = table[:table.index("\n\n")]
    for method in critics.methods():
        row = next((line for line in table.splitlines() if line.startswith(f"| `{method}` ")), None)
        assert row is not None, f"README's method table has no row for {method}"
        cls = critics.critic_class(method)
        if cls is not None:  # the row points at the module whose docstring holds the formulas
            assert cls.__module__.replace(".", "/") + ".py" in row, row


def test_a_section_validates_itself_with_one_line_errors():
    with pytest.raises(ConfigError) as err:
        make_config("smoke", method="scpo-judge", **{"judge.samples": 0})
    assert str(err.value) == "judge.samples: got 0; must be an integer >= 1"
    cfg = make_config("smoke", method="scpo-judge")
    cfg.judge.reading = "regex"  # changed after construction: validate() still catches it
    with pytest.raises(ConfigError, match="judge.reading: unknown 'regex'; allowed: expected, parsed"):
        cfg.validate()
    with pytest.raises(ConfigError, match="'nosuch' is not a section; sections: model, task, scpo"):
        make_config("smoke", **{"nosuch.x": 1})


# ------------------------------------------------------------------------------------------------ run identity

def test_a_critics_options_never_move_another_methods_run():
    grpo = make_config("smoke")
    for changed in ({"scpo.weight": 0.1}, {"distill.alpha": 0.9}, {"judge.samples": 3}, {"value.lr": 0.5},
                    {"irl.form": "gail"}):
        assert run_dir_of(grpo.replace(**changed)).path == run_dir_of(grpo).path, changed
    scpo = make_config("smoke", method="scpo-divergence")
    assert run_dir_of(scpo.replace(**{"scpo.weight": 0.1})).path != run_dir_of(scpo).path  # its own section
    assert run_dir_of(scpo.replace(**{"judge.samples": 3})).path == run_dir_of(scpo).path
    assert run_dir_of(grpo.replace(learning_rate=1e-3)).path != run_dir_of(grpo).path  # a common field


def test_a_changed_scpo_default_leaves_a_grpo_run_identity_unchanged(monkeypatch):
    from scpo_lab.critics.divergence import ScpoConfig

    before = run_dir_of(make_config("smoke")).path
    scpo_before = run_dir_of(make_config("smoke", method="scpo-divergence")).path
    monkeypatch.setattr(ScpoConfig, "__init__", _with_default(ScpoConfig.__init__, weight=0.05))
    assert make_config("smoke").scpo.weight == 0.05  # the default did change
    assert run_dir_of(make_config("smoke")).path == before
    assert run_dir_of(make_config("smoke", method="scpo-divergence")).path != scpo_before


def _with_default(init, **defaults):
    def patched(self, *args, **kwargs):
        init(self, *args, **{**defaults, **kwargs})
    return patched


def _as_legacy_folder(run: RunDir, config, keep_hash_exclude: bool = True) -> RunDir:
    """Turn a run folder of today's identity into the one the previous rule gave the same config."""
    record = run.record()
    exclude = DEFAULT_EXCLUDE + legacy_exclude(config)
    old_hash = config_hash({k: v for k, v in record.items() if k not in
                            ("package_version", "git_commit", "created", "python", "torch", "transformers",
                             "run_name", "run_hash", "hash_exclude")}, exclude)
    old = RunDir(run.path.with_name(f"{config.method}-{old_hash}"))
    os.replace(run.path, old.path)
    record.update(run_name=old.path.name, run_hash=old_hash, hash_exclude=sorted(set(exclude)))
    if not keep_hash_exclude:  # as folders written before config.json recorded it
        del record["hash_exclude"]
    old.config_path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    old.check_identity()  # a valid old folder
    return old


@pytest.mark.parametrize("keep_hash_exclude", [True, False])
def test_a_finished_run_of_the_old_identity_loads_without_training(tmp_path, monkeypatch, keep_hash_exclude):
    cfg = smoke(tmp_path, method="scpo-judge", steps=2)
    first = train(cfg, progress=False)
    metrics = first.dir.read_metrics()
    old = _as_legacy_folder(first.dir, cfg, keep_hash_exclude)
    assert old.path != first.path and not first.path.exists()
    monkeypatch.setattr(trainer_module, "training_step", lambda *a, **k: pytest.fail("retrained an old run"))
    again = train(cfg, progress=False)
    assert again.path == first.path and not old.path.exists()  # renamed to today's identity, once
    assert again.dir.read_metrics() == metrics and again.dir.is_finished()
    record = again.dir.check_identity()
    assert record["migrated_from"] == old.path.name and record["run_hash"] == again.dir.hash


def test_a_killed_run_of_the_old_identity_resumes(tmp_path):
    cfg = smoke(tmp_path, method="scpo-head", steps=2, save_every=1)
    whole = train(cfg, progress=False).dir.read_metrics()
    run = run_dir_of(cfg)
    import shutil

    shutil.rmtree(run.checkpoints_dir / "step-2")  # as if killed in step 2
    shutil.rmtree(run.final_dir)
    run.done_path.unlink()
    run.truncate_after(1)
    _as_legacy_folder(run, cfg)
    resumed = train(cfg, progress=False)
    assert [r["step"] for r in resumed.dir.read_metrics()] == [1, 2] and resumed.dir.is_finished()
    assert resumed.dir.read_metrics()[1]["loss"] == pytest.approx(whole[1]["loss"], abs=1e-6)


# ------------------------------------------------------------------------------------------------ a new critic

def _load_example():
    spec = importlib.util.spec_from_file_location("surprise_critic", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as `import surprise_critic` would (dataclasses look their module up)
    spec.loader.exec_module(module)  # its last line registers the critic
    return module


def test_a_critic_added_as_one_file_trains_with_its_own_section_and_arm(tmp_path):
    grpo_before = run_dir_of(smoke(tmp_path)).path
    module = _load_example()
    try:
        assert "scpo-surprise" in critics.methods() and critics.section_of("scpo-surprise") == "surprise"
        with pytest.raises(ConfigError, match="surprise.clip: got 0; must be a finite number > 0"):
            make_config("smoke", method="scpo-surprise", **{"surprise.clip": 0})
        assert run_dir_of(smoke(tmp_path)).path == grpo_before  # a new section moves no other method's runs
        configs, _ = arm_configs("smoke", ["scpo-surprise"], [0], runs_dir=str(tmp_path / "runs"),
                                 **{"surprise.weight": 0.5})
        [cfg] = configs.values()
        run = train(cfg, progress=False)
        metrics = run.metrics
        assert metrics["step"].tolist() == [1, 2] and metrics["loss"].notna().all()
        assert {"surprise/score_mean", "hack/auroc"} <= set(metrics.columns)
        assert (metrics["surprise/score_mean"] <= 0).all()
        assert json.loads((run.path / "config.json").read_text())["surprise"] == {"weight": 0.5, "clip": 5.0}
    finally:
        critics.unregister(module.SurpriseCritic)
        sys.modules.pop("surprise_critic", None)
    assert "scpo-surprise" not in critics.methods() and "surprise" not in make_config("smoke").to_dict()


# ------------------------------------------------------------------------------------------------ imports

def _imports(path: Path, package: str) -> set[str]:
    """Every scpo_lab module `path` imports, at the top or inside a function (not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("scpo_lab")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("scpo_lab"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if (ROOT / (sub.replace(".", "/") + ".py")).is_file()
                          or (ROOT / sub.replace(".", "/")).is_dir() else node.module)
    return {m for m in found if m != package}


def test_no_import_circles_in_the_package():
    modules = {}
    for path in (ROOT / "scpo_lab").rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        name = name.removesuffix(".__init__")
        modules[name] = path
    graph = {name: {m for m in _imports(path, name) if m in modules} for name, path in modules.items()}
    for name in graph:  # a package's __init__ is imported by each of its submodules: not an edge back
        graph[name] = {m for m in graph[name] if not name.startswith(m + ".")}
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_a_critic_module_imports_without_the_config():
    """A critic module validates its section with scpo_lab.checks alone: importing it does not need config.py."""
    code = ("import sys; import scpo_lab.critics.judge; "
            "assert 'scpo_lab.config' not in sys.modules, sorted(m for m in sys.modules if m.startswith('scpo_lab'))")
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # scpo_lab/__init__ imports the whole API: load the critic module's package path without it
    code = ("import importlib.util, sys, types; pkg = types.ModuleType('scpo_lab'); "
            f"pkg.__path__ = [{str(ROOT / 'scpo_lab')!r}]; sys.modules['scpo_lab'] = pkg; " + code)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
