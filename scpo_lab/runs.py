"""Run folders: `<runs_dir>/<name>-<hash>/` with config, metrics, samples, checkpoints, eval and a DONE marker.

Layout of one run folder:
    config.json          complete config + provenance (package_version, git_commit, created, python, torch, ...)
    metrics.jsonl        one JSON object per step, each with "step"
    samples.jsonl        one JSON object per rollout: step, problem_id, prompt, completion, reward, passed, ...
    checkpoints/step-N/  written by the trainer; complete once it holds a COMPLETE marker (written last)
    final/               the final adapter
    eval.json            a JSON list of evaluation records (dicts), one per evaluation
    DONE                 written when training finished
    .lock                held (fcntl.flock) by the one process writing the folder; holds its pid and host

Appends flush + fsync; readers ignore a torn final line (a kill mid-write); `truncate_after(step)` rewrites the
logs atomically so a resumed run has neither duplicated nor missing rows. config.json records the keys its hash
left out (hash_exclude), so `check_identity()` can tell a hand-edited, truncated or deleted config.json.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import importlib.metadata
import json
import os
import re
import socket
import subprocess
import sys
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

DEFAULT_EXCLUDE: tuple[str, ...] = ("runs_dir", "notes", "save_every", "log_every")
# provenance keys that RunDir adds to config.json next to the config itself
META_KEYS: tuple[str, ...] = ("package_version", "git_commit", "created", "python", "torch", "transformers",
                              "run_name", "run_hash", "hash_exclude", "migrated_from")
COMPLETE = "COMPLETE"
DONE = "DONE"
LOCK = ".lock"
DAMAGED = ".damaged"  # suffix of a checkpoint folder set aside because it does not load


class RunFolderError(ValueError):
    """A run folder (or the runs folder) cannot be used as it is. One line naming the file and what to do."""


class RunLockedError(RuntimeError):
    """Another live process is writing this run folder."""
_STEP_DIR = re.compile(r"^step-(\d+)$")


# --- helpers -----------------------------------------------------------------------------------------------

_SOURCE_ROOT = Path(__file__).resolve().parent.parent


def default_runs_dir() -> Path:
    """$SCPO_LAB_RUNS if set; else <checkout>/runs when the package runs from a source checkout (so notebooks,
    whose working directory is notebooks/, and the CLI share one run cache); else ./runs. Read at call time."""
    if os.environ.get("SCPO_LAB_RUNS"):
        return Path(os.environ["SCPO_LAB_RUNS"])
    if (_SOURCE_ROOT / "pyproject.toml").is_file():
        return _SOURCE_ROOT / "runs"
    return Path("runs")


def _json_default(obj: Any) -> Any:
    """JSON fallback for numpy/torch scalars and arrays, paths, sets, dataclasses."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if hasattr(obj, "tolist"):  # numpy scalar/array, torch tensor
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=str)
    return str(obj)


def _as_dict(config: Any) -> dict:
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    if not isinstance(config, Mapping):
        raise ValueError(f"config: must be a dict or a dataclass; got {type(config).__name__}")
    return dict(config)


def _strip(obj: Any, exclude: frozenset[str], prefix: str = "") -> Any:
    """Drop excluded keys at any depth; a key matches by its own name or its dotted path."""
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            path = f"{prefix}{k}"
            if str(k) in exclude or path in exclude:
                continue
            out[k] = _strip(v, exclude, path + ".")
        return out
    if isinstance(obj, (list, tuple)):
        return [_strip(v, exclude, prefix) for v in obj]
    return obj


def canonical_json(config: Any, exclude: Iterable[str] = DEFAULT_EXCLUDE) -> str:
    """Canonical JSON (sorted keys, compact separators) of `config` without the excluded keys."""
    stripped = _strip(_as_dict(config), frozenset(exclude))
    return json.dumps(stripped, sort_keys=True, separators=(",", ":"), default=_json_default)


def config_hash(config: Any, exclude: Iterable[str] = DEFAULT_EXCLUDE) -> str:
    """12 hex chars of sha256(canonical JSON of config minus `exclude`); stable across key order.

    Note: 1 and 1.0 hash differently (JSON "1" vs "1.0"); keep config value types consistent.
    """
    return hashlib.sha256(canonical_json(config, exclude).encode("utf-8")).hexdigest()[:12]


def flatten(d: Mapping, prefix: str = "", sep: str = ".") -> dict:
    """{"task": {"name": "x"}} -> {"task.name": "x"}; lists become tuples (hashable cells)."""
    out: dict = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + sep, sep))
        elif isinstance(v, list):
            out[key] = tuple(v)
        else:
            out[key] = v
    return out


# Generated outputs that are committed (the cpu-profile reports): rewriting them does not make the code "dirty"
GENERATED_PATHS = ("reports",)


def git_commit(path: str | os.PathLike | None = None) -> str:
    """HEAD of the git checkout holding `path` (default: this package), + "-dirty" if anything but the generated
    outputs (GENERATED_PATHS) differs from it; never raises."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0 or not head.stdout.strip():
            return "unknown"
        commit = head.stdout.strip()
        outputs = [f":(top,exclude){p}" for p in GENERATED_PATHS]
        status = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--", ":(top)", *outputs],
                                capture_output=True, text=True, timeout=30)
        if status.returncode == 0 and status.stdout.strip():
            commit += "-dirty"
        return commit
    except Exception:  # no git binary, timeout, permissions: provenance must never break a run
        return "unknown"


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except Exception:
        return None


def provenance() -> dict:
    """package_version, git_commit, created (UTC ISO), python, torch, transformers."""
    return {
        "package_version": _version("scpo_lab") or "unknown",
        "git_commit": git_commit(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "torch": _version("torch"),
        "transformers": _version("transformers"),
    }


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write_text(path: Path, text: str) -> None:
    """Write temp file in the same folder, fsync, os.replace over `path`."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _dumps(row: Any) -> str:
    return json.dumps(row, default=_json_default, ensure_ascii=False)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Rows of a JSONL file; a final line that is not valid JSON (torn write) is ignored; missing file -> []."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break  # torn last line from a kill mid-write
            raise ValueError(f"{path}:{i + 1}: invalid JSON line (only a torn final line is tolerated)") from None
    return rows


def _repair_tail(path: Path) -> None:
    """If the file does not end in a newline (torn write), cut it back to after its last newline."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    if size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        content = f.read()
        cut = content.rfind(b"\n") + 1  # 0 when no complete line
        f.truncate(cut)
        f.flush()
        os.fsync(f.fileno())


def _append_jsonl(path: Path, rows: Iterable[Mapping]) -> None:
    _repair_tail(path)
    text = "".join(_dumps(dict(r)) + "\n" for r in rows)
    if not text:
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("_") or "run"


# --- run folder --------------------------------------------------------------------------------------------

class RunDir:
    """One run folder `<runs_dir>/<name>-<hash>/`. `RunDir(path)` opens one; `RunDir.create(...)` makes one."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    # construction
    @classmethod
    def create(cls, config: Any, name: str | None = None, runs_dir: str | os.PathLike | None = None,
               exclude: Iterable[str] = DEFAULT_EXCLUDE) -> "RunDir":
        """Create (or reopen) the folder for `config`; writes config.json only when absent (resume keeps it).

        name defaults to config["name"], else config["method"], else "run".
        """
        cfg = _as_dict(config)
        run = cls.locate(cfg, name, runs_dir, exclude)
        if run.config_path.exists():
            run.check_identity()  # resume or reload only what this config wrote
            return run
        if run.has_outputs():  # never silently recreate a lost config.json next to results it did not describe
            raise RunFolderError(f"{run.config_path}: missing, but the folder holds results; restore config.json "
                                 "or delete the folder to train again")
        _make_dir(run.path)
        record = json.loads(json.dumps(cfg, default=_json_default))  # complete config, JSON-normalized
        record.update(provenance())
        record["run_name"] = run.path.name
        record["run_hash"] = run.hash
        record["hash_exclude"] = sorted(set(exclude))  # what check_identity needs to recompute the hash
        _atomic_write_text(run.config_path, json.dumps(record, indent=2, sort_keys=True) + "\n")
        return run

    @classmethod
    def locate(cls, config: Any, name: str | None = None, runs_dir: str | os.PathLike | None = None,
               exclude: Iterable[str] = DEFAULT_EXCLUDE) -> "RunDir":
        """The folder `create` would use for `config`; writes nothing."""
        cfg = _as_dict(config)
        clash = [k for k in META_KEYS if k in cfg]
        if clash:
            raise ValueError(f"config: keys {clash} are reserved for run provenance; rename them")
        if name is None:
            name = cfg.get("name") or cfg.get("method") or "run"
        return cls(_root(runs_dir) / f"{_safe_name(name)}-{config_hash(cfg, exclude)}")

    # paths
    @property
    def name(self) -> str:
        return self.path.name

    @property
    def hash(self) -> str:
        """The config hash: the part of the folder name after the last '-'."""
        return self.path.name.rsplit("-", 1)[-1]

    config_path = property(lambda self: self.path / "config.json")
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    samples_path = property(lambda self: self.path / "samples.jsonl")
    eval_path = property(lambda self: self.path / "eval.json")
    checkpoints_dir = property(lambda self: self.path / "checkpoints")
    final_dir = property(lambda self: self.path / "final")
    done_path = property(lambda self: self.path / DONE)

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunDir) and self.path.resolve() == other.path.resolve()

    def __hash__(self) -> int:
        return hash(self.path.resolve())

    # config
    def record(self) -> dict:
        """config.json as written: the config plus provenance keys."""
        return json.loads(self.config_path.read_text(encoding="utf-8"))

    def check_identity(self) -> dict:
        """config.json, verified against the folder's hash; RunFolderError (naming the file) when it is missing,
        not JSON, or describes another config than the one the folder was made for (edited by hand)."""
        path = self.config_path
        fix = f"restore it or delete {self.path} to train again"
        if not path.is_file():
            raise RunFolderError(f"{path}: missing; {fix}")
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, OSError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise RunFolderError(f"{path}: unreadable ({_first_line(err)}); {fix}") from None
        if not isinstance(record, dict):
            raise RunFolderError(f"{path}: must hold a JSON object, got {type(record).__name__}; {fix}")
        cfg = {k: v for k, v in record.items() if k not in META_KEYS}
        excludes = [record["hash_exclude"]] if isinstance(record.get("hash_exclude"), list) else _legacy_excludes(cfg)
        if not any(config_hash(cfg, exclude) == self.hash for exclude in excludes):
            raise RunFolderError(f"{path}: does not match the folder's hash {self.hash} (edited by hand?); {fix}")
        return record

    @classmethod
    def adopt(cls, config: Any, name: str | None, runs_dir, exclude: Iterable[str],
              old_exclude: Iterable[str]) -> "RunDir | None":
        """The folder `config` had under an older identity rule (`old_exclude`), renamed to its folder under
        `exclude` and its config.json rewritten (`config` in full, the original provenance, the new hash and
        exclusions, `migrated_from`), under its lock; None when there is nothing to adopt (no old folder, a
        folder under the new rule already, the old one being written by another process, or not verifying)."""
        cfg = _as_dict(config)
        new = cls.locate(cfg, name, runs_dir, exclude)
        old = cls.locate(cfg, name, runs_dir, old_exclude)
        if new.path.exists() or old.path == new.path or not old.config_path.is_file():
            return None
        try:
            with old.lock():
                if new.path.exists():  # another process adopted it first
                    return None
                kept = old.check_identity()  # only a folder that is what its name says
                os.replace(old.path, new.path)  # the held lock file moves with it
                _fsync_dir(new.path.parent)
                record = json.loads(json.dumps(cfg, default=_json_default)) | {
                    k: v for k, v in kept.items() if k in META_KEYS} | {
                    "run_name": new.path.name, "run_hash": new.hash, "hash_exclude": sorted(set(exclude)),
                    "migrated_from": old.path.name}
                _atomic_write_text(new.config_path, json.dumps(record, indent=2, sort_keys=True) + "\n")
        except (RunLockedError, FileNotFoundError):
            return None  # being written (an older checkout training in it) or moved meanwhile: leave it
        except RunFolderError as err:
            warnings.warn(f"old run folder {old.path} does not verify ({err}); training anew in {new.path}")
            return None
        return new

    def has_outputs(self) -> bool:
        """Anything a run writes besides config.json (metrics, samples, checkpoints, final/, eval, DONE)."""
        return any(p.exists() for p in (self.metrics_path, self.samples_path, self.checkpoints_dir, self.final_dir,
                                        self.eval_path, self.done_path))

    def lock(self) -> "RunLock":
        """`with run.lock(): ...` makes this process the folder's only writer (RunLockedError otherwise)."""
        return RunLock(self.path)

    @property
    def config(self) -> dict:
        """The config alone (provenance keys removed)."""
        return {k: v for k, v in self.record().items() if k not in META_KEYS}

    @property
    def meta(self) -> dict:
        """The provenance keys of config.json."""
        return {k: v for k, v in self.record().items() if k in META_KEYS}

    # logs
    def append_metrics(self, row: Mapping) -> None:
        """Append one metrics row (must hold "step"); flushed and fsynced."""
        if "step" not in row:
            raise ValueError("row: metrics rows need a 'step' key")
        _append_jsonl(self.metrics_path, [row])

    def append_samples(self, rows: Iterable[Mapping]) -> None:
        """Append rollout rows (step, problem_id, prompt, completion, reward, passed, feedback, extracted)."""
        rows = list(rows)
        if any("step" not in r for r in rows):
            raise ValueError("rows: sample rows need a 'step' key")
        _append_jsonl(self.samples_path, rows)

    def read_metrics(self) -> list[dict]:
        return read_jsonl(self.metrics_path)

    def read_samples(self) -> list[dict]:
        return read_jsonl(self.samples_path)

    def last_step(self) -> int | None:
        """Highest step in metrics.jsonl, None if empty."""
        steps = [r["step"] for r in self.read_metrics() if "step" in r]
        return max(steps) if steps else None

    def truncate_after(self, step: int) -> None:
        """Keep only rows with row["step"] <= step in metrics.jsonl and samples.jsonl (atomic rewrite)."""
        for path in (self.metrics_path, self.samples_path):
            if not path.exists():
                continue
            kept = [r for r in read_jsonl(path) if "step" not in r or r["step"] <= step]
            _atomic_write_text(path, "".join(_dumps(r) + "\n" for r in kept))

    # checkpoints
    def checkpoint_dir(self, step: int, create: bool = True) -> Path:
        """checkpoints/step-<step>/ (created unless create=False)."""
        p = self.checkpoints_dir / f"step-{int(step)}"
        if create:
            p.mkdir(parents=True, exist_ok=True)
        return p

    @staticmethod
    def mark_complete(path: str | os.PathLike) -> None:
        """Write the COMPLETE marker into a checkpoint folder; call it after everything else is written."""
        path = Path(path)
        with open(path / COMPLETE, "w", encoding="utf-8") as f:
            f.write(_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds") + "\n")
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(path)

    def checkpoints(self) -> list[tuple[int, Path]]:
        """Complete checkpoints as (step, path), ascending by step."""
        if not self.checkpoints_dir.is_dir():
            return []
        out = []
        for p in self.checkpoints_dir.iterdir():
            m = _STEP_DIR.match(p.name)
            if m and p.is_dir() and (p / COMPLETE).is_file():
                out.append((int(m.group(1)), p))
        return sorted(out)

    def latest_checkpoint(self) -> tuple[int, Path] | None:
        """(step, path) of the highest COMPLETE checkpoint, None if none."""
        ckpts = self.checkpoints()
        return ckpts[-1] if ckpts else None

    @staticmethod
    def set_aside(checkpoint: str | os.PathLike) -> Path:
        """Rename a checkpoint that does not load to step-N.damaged[-k] (kept for a post-mortem, no longer listed)."""
        checkpoint = Path(checkpoint)
        target, k = checkpoint.with_name(checkpoint.name + DAMAGED), 1
        while target.exists():
            target, k = checkpoint.with_name(f"{checkpoint.name}{DAMAGED}-{k}"), k + 1
        os.replace(checkpoint, target)
        _fsync_dir(checkpoint.parent)
        return target

    # eval + done
    def write_eval(self, records: Mapping | list[Mapping]) -> None:
        """Replace eval.json with `records` (one dict or a list of dicts), atomically."""
        records = [dict(records)] if isinstance(records, Mapping) else [dict(r) for r in records]
        _atomic_write_text(self.eval_path, json.dumps(records, indent=2, default=_json_default) + "\n")

    def add_eval(self, record: Mapping) -> None:
        """Append one evaluation record to eval.json (atomic rewrite)."""
        self.write_eval(self.read_eval() + [dict(record)])

    def read_eval(self) -> list[dict]:
        """eval.json as a list of records ([] if absent; a single dict is wrapped)."""
        if not self.eval_path.exists():
            return []
        data = json.loads(self.eval_path.read_text(encoding="utf-8"))
        return [data] if isinstance(data, dict) else list(data)

    def mark_done(self) -> None:
        """Write the DONE marker (training finished)."""
        with open(self.done_path, "w", encoding="utf-8") as f:
            f.write(_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds") + "\n")
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(self.path)

    def is_finished(self) -> bool:
        return self.done_path.is_file()


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _make_dir(path: Path) -> None:
    """mkdir -p, failing with one line naming the folder (read-only runs folder, SCPO_LAB_RUNS naming a file)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunFolderError(f"runs_dir: cannot create '{path}' ({err.strerror or _first_line(err)}); set runs_dir "
                             "or SCPO_LAB_RUNS to a writable folder") from None


def _legacy_excludes(cfg: dict) -> Iterable[tuple[str, ...]]:
    """Folders written before config.json recorded hash_exclude: the plain exclusions, then the trainer's rule of
    that time (scpo_lab.migrate.legacy_exclude)."""
    yield DEFAULT_EXCLUDE
    try:
        from scpo_lab.config import config_of_record
        from scpo_lab.migrate import legacy_exclude

        yield DEFAULT_EXCLUDE + legacy_exclude(config_of_record(cfg))
    except Exception:  # not a TrainConfig (any dict can make a run folder): no other rule to try
        return


class RunLock:
    """An exclusive lock on one run folder: fcntl.flock on <run>/.lock, which names the holder (pid, host, since).
    The kernel drops a flock when its process ends however it ends (SIGKILL included), so a crashed writer
    leaves no stale lock: the next process simply takes it. The file itself stays (removing it would let two
    processes lock two different files)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / LOCK
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        import fcntl

        _make_dir(self.folder)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise RunFolderError(f"runs_dir: cannot write '{self.path}' ({err.strerror or _first_line(err)}); set "
                                 "runs_dir or SCPO_LAB_RUNS to a writable folder") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held: by another process, or by another train() of this very process
            holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise RunLockedError(f"run folder '{self.folder}' is being written by {holder}; wait for it to finish "
                                 "(a rerun then loads the finished run) or stop that process") from None
        os.ftruncate(fd, 0)
        started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {started}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            os.ftruncate(self._fd, 0)  # no holder named once released
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# --- finding and loading runs ------------------------------------------------------------------------------

def _root(runs_dir: str | os.PathLike | None) -> Path:
    return Path(runs_dir) if runs_dir is not None else default_runs_dir()


def list_runs(runs_dir: str | os.PathLike | None = None) -> list[RunDir]:
    """Run folders (those holding config.json) under runs_dir, sorted by name."""
    root = _root(runs_dir)
    if not root.is_dir():
        return []
    return [RunDir(p) for p in sorted(root.iterdir()) if p.is_dir() and (p / "config.json").is_file()]


def find_run(config: Any, runs_dir: str | os.PathLike | None = None,
             exclude: Iterable[str] = DEFAULT_EXCLUDE) -> RunDir | None:
    """The run folder whose hash matches `config` (any name); prefers a finished one, then the newest. A plain
    record lookup: for a TrainConfig use trainer.run_dir_of, whose record adds what the trainer hashes beside the
    config (the precision used, the task's data revision) and whose exclusions are the method's."""
    h = config_hash(config, exclude)
    hits = [r for r in list_runs(runs_dir) if r.hash == h]
    if not hits:
        return None
    return max(hits, key=lambda r: (r.is_finished(), r.config_path.stat().st_mtime))


def is_finished(run: RunDir | str | os.PathLike) -> bool:
    """True when the run folder holds the DONE marker."""
    return (Path(run) / DONE).is_file()


def _resolve(run: RunDir | str | os.PathLike, runs_dir: str | os.PathLike | None) -> RunDir:
    if isinstance(run, RunDir):
        return run
    p = Path(run)
    if not p.is_dir():
        p = _root(runs_dir) / run
    if not (p / "config.json").is_file():
        raise ValueError(f"run: no run folder at {p}")
    return RunDir(p)


def _matches(flat: Mapping, where: Mapping | None) -> bool:
    """where={"method": "grpo", "seed": [0, 1]}: equality, or membership for a list/tuple/set value."""
    for key, want in (where or {}).items():
        if key not in flat:
            return False
        have = flat[key]
        if isinstance(want, (list, tuple, set, frozenset)) and not isinstance(have, tuple):
            if have not in want:
                return False
        elif have != (tuple(want) if isinstance(want, list) else want):
            return False
    return True


def _selected(runs_dir, names, where) -> list[tuple[RunDir, dict]]:
    """(run, flattened config.json) of the selected runs; a folder whose config.json fails check_identity is
    skipped with a warning naming the file (one bad folder must not hide, or mislabel, the others)."""
    names = [names] if isinstance(names, str) else names
    root = _root(runs_dir)
    folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    out = []
    for run in (RunDir(p) for p in folders):
        if names is not None and run.name not in names and run.name.rsplit("-", 1)[0] not in names:
            continue
        if not run.config_path.is_file() and not run.has_outputs():
            continue  # not a run folder
        try:
            flat = flatten(run.check_identity())
        except RunFolderError as err:
            warnings.warn(f"skipping run folder {run.name}: {err}", stacklevel=3)
            continue
        if _matches(flat, where):
            out.append((run, flat))
    return out


def _frame(rows: list[dict], run: RunDir, flat: Mapping) -> pd.DataFrame:
    """rows as a DataFrame plus run, run_hash, finished and config columns (metric names win clashes)."""
    df = pd.DataFrame(rows)
    n = len(df)
    df["run"] = run.name
    df["run_hash"] = run.hash
    df["finished"] = run.is_finished()
    for k, v in flat.items():
        if k in ("run_name", "run_hash") or k.startswith("hash_exclude"):  # "run", "run_hash" columns; bookkeeping
            continue
        col = k if k not in df.columns else f"config.{k}"
        df[col] = [v] * n if isinstance(v, tuple) else v
    return df


def load_runs(runs_dir: str | os.PathLike | None = None, names: Iterable[str] | str | None = None,
              where: Mapping | None = None) -> pd.DataFrame:
    """One row per (run, step) of metrics across runs, with flattened config columns ("task.name"), "run",
    "run_hash", "finished". names: folder names or their <name> part; where: filter on flattened config values.
    """
    frames = [_frame(run.read_metrics(), run, flat) for run, flat in _selected(runs_dir, names, where)]
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=["run", "run_hash", "step"])
    df = pd.concat(frames, ignore_index=True, sort=False)
    return df.sort_values(["run", "step"], kind="stable").reset_index(drop=True)


def load_samples(run: RunDir | str | os.PathLike, runs_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """samples.jsonl of one run (a RunDir, a folder path, or a folder name under runs_dir) as a DataFrame."""
    return pd.DataFrame(_resolve(run, runs_dir).read_samples())


def load_eval(runs_dir: str | os.PathLike | None = None, names: Iterable[str] | str | None = None,
              where: Mapping | None = None) -> pd.DataFrame:
    """One row per (run, eval record) of eval.json files, records flattened, with config columns, run, run_hash."""
    frames = []
    for run, flat in _selected(runs_dir, names, where):
        records = [flatten(r) for r in run.read_eval()]
        if records:
            frames.append(_frame(records, run, flat))
    if not frames:
        return pd.DataFrame(columns=["run", "run_hash"])
    return pd.concat(frames, ignore_index=True, sort=False)
