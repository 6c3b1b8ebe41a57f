"""What both benchmark scripts share: peak RSS, one child process per measured variant, a scratch folder."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (ru_maxrss: KiB on Linux, bytes on macOS), in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def run_child(script: str, name: str, cmd_args: list[str], marker: str) -> dict | None:
    """Run `script` with `cmd_args` in a fresh interpreter (so its peak RSS is its own) and return the JSON it
    printed after `marker`; its stderr passes through. None (with its stdout shown) when it failed."""
    cmd = [sys.executable, os.path.abspath(script), *cmd_args]
    print(f"[{name}] running: {' '.join(cmd)}", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    results = [json.loads(line[len(marker):]) for line in proc.stdout.splitlines() if line.startswith(marker)]
    if proc.returncode != 0 or not results:
        print(f"[{name}] FAILED (exit {proc.returncode}); its stdout:\n{proc.stdout}", file=sys.stderr)
        return None
    return results[-1]


@contextlib.contextmanager
def scratch_dir(path: str | None, prefix: str):
    """`path` (created) if given, else a temporary folder deleted afterwards."""
    if path is not None:
        os.makedirs(path, exist_ok=True)
        yield path
        return
    path = tempfile.mkdtemp(prefix=prefix)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def print_load() -> None:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average at start: {load:.2f} on {os.cpu_count()} cores (timings are only meaningful on a quiet machine)")
