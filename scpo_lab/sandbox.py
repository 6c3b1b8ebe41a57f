"""Run untrusted, model-written Python in a separate, limited process — never in the lab's own.

    result = run_program("print(input()[::-1])", stdin="abc\\n")        # SandboxResult(status="passed", ...)
    results = run_programs([SandboxJob(code_a), SandboxJob(code_b)], workers=4)

Each program gets a fresh interpreter (`python -S -s`: no site-packages, so only the standard library, and a
start in ~7 ms instead of ~20; the prelude takes its own folder off sys.path) started in its own session and
process group, in its own temporary folder (deleted afterwards), with an environment built from scratch (nothing
inherited: no secrets, no tokens, no PYTHON* variable but ours). Inside, sandbox_prelude.py sets rlimits (CPU
seconds, address space, file size, no core files, no child processes) and installs an audit hook that refuses
sockets, subprocesses, fork, signals, ctypes and file writes (and most reads) outside its folder, and counts the
files it creates and the bytes they hold (limits.max_files, limits.total_file_bytes), then runs it. Out here: a
wall-clock limit after which the whole process group is SIGKILLed, caps on stdout+stderr and on the report pipe,
and a watch on the folder's total size (polled every WATCH_S), so a program that writes many files each under the
per-file limit is stopped before it fills the disk; the folder is deleted whatever happened.

Status (SandboxResult.status):
    passed        the program ran to completion (exit 0); tasks then compare outputs and may call it failed
    failed        it raised an uncaught exception / exited non-zero (trace: the error's last lines)
    timeout       wall-clock or CPU limit
    memory        MemoryError (address-space limit)
    crash         killed by a signal (e.g. segfault from unbounded recursion)
    output_limit  past a cap on what it may produce: stdout+stderr, test reports, the bytes or the number of files
                  it writes (killed at once; tasks report "Output Limit Exceeded")
    syntax_error  main.py does not compile; it never ran
What is NOT isolated (see README "Code tasks and the sandbox"): same user id, same kernel, same filesystem view
(reads are limited by the hook, not by the kernel); the hook is in-process, so a C-level escape is not stopped.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

PRELUDE = Path(__file__).with_name("sandbox_prelude.py")
STATUSES = ("passed", "failed", "timeout", "memory", "crash", "output_limit", "syntax_error")
TRACE_CHARS = 1200
WATCH_S = 0.05  # how often the folder's total size is measured while a program runs


@dataclass(frozen=True)
class Limits:
    wall_s: float = 10.0            # wall clock, then SIGKILL to the process group
    cpu_s: int = 10                 # RLIMIT_CPU (whole seconds)
    memory_mb: int = 1024           # RLIMIT_AS: address space, so MemoryError rather than the host's OOM killer
    output_bytes: int = 1_000_000   # stdout + stderr kept; beyond it the program is killed (output_limit)
    report_bytes: int = 64_000_000  # harness reports (one line per test); beyond it the program is killed
    file_bytes: int = 10_000_000    # RLIMIT_FSIZE: largest file it may write in its folder
    total_file_bytes: int = 32_000_000  # all files in its folder together (its inputs included); then killed
    max_files: int = 256            # files and folders it may create; the next one is refused and it is killed

    def __post_init__(self):
        for name in ("wall_s", "cpu_s", "memory_mb", "output_bytes", "report_bytes", "file_bytes",
                     "total_file_bytes", "max_files"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"limits.{name}: got {value!r}; must be a number > 0")


@dataclass(frozen=True)
class SandboxJob:
    source: str                                     # the untrusted program (main.py)
    stdin: str = ""
    harness: str | None = None                      # trusted code run after it, with its globals as `solution`
    files: dict = field(default_factory=dict)       # name -> text, written into the folder (e.g. test inputs)
    limits: Limits = Limits()


@dataclass
class SandboxResult:
    status: str                     # one of STATUSES
    returncode: int | None
    stdout: str                     # truncated to limits.output_bytes
    stderr: str
    trace: str                      # short: the error's last lines, or why the program was stopped
    reports: list = field(default_factory=list)  # JSON lines the prelude/harness wrote on the report pipe
    wall_s: float = 0.0
    output_truncated: bool = False


def _minimal_env(folder: str) -> dict:
    # Nothing from os.environ: the program must not see API keys, tokens or the lab's paths.
    # PYTHONHASHSEED fixed: str hashes, hence set and dict-of-set iteration orders, repeat from run to run, so a
    # reference solution that returns tuple(set_of_strings) gives the same order for the expected output and
    # for a candidate doing the same.
    return {"PATH": "/usr/bin:/bin", "HOME": folder, "TMPDIR": folder, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
            "PYTHONIOENCODING": "utf-8", "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1",
            "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def _kill_group(proc: subprocess.Popen) -> None:
    for kill in (lambda: os.killpg(proc.pid, signal.SIGKILL), proc.kill):
        try:
            kill()
        except (ProcessLookupError, PermissionError, OSError):
            pass


def run_program(source: str | SandboxJob, stdin: str = "", *, harness: str | None = None,
                files: dict | None = None, limits: Limits = Limits()) -> SandboxResult:
    """Run one program to completion or to its limits; never raises for anything the program does."""
    job = source if isinstance(source, SandboxJob) else SandboxJob(source, stdin, harness, files or {}, limits)
    folder = tempfile.mkdtemp(prefix="scpo-sandbox-")
    try:
        return _run_in(folder, job)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _run_in(folder: str, job: SandboxJob) -> SandboxResult:
    limits = job.limits
    Path(folder, "main.py").write_text(job.source, encoding="utf-8", errors="replace")
    if job.harness is not None:
        Path(folder, "harness.py").write_text(job.harness, encoding="utf-8")
    for name, text in job.files.items():
        if os.path.basename(name) != name or name in ("main.py", "harness.py"):
            raise ValueError(f"files: {name!r} must be a plain file name other than main.py and harness.py")
        Path(folder, name).write_text(text, encoding="utf-8")
    Path(folder, ".stdin").write_text(job.stdin, encoding="utf-8")
    report_read, report_write = os.pipe()
    # no single file may be larger than the folder's total cap either
    config = [report_write, int(max(1, limits.cpu_s)), int(limits.memory_mb),
              int(min(limits.file_bytes, limits.total_file_bytes)), int(job.harness is not None),
              int(limits.max_files), int(limits.total_file_bytes)]
    start = time.monotonic()
    with open(Path(folder, ".stdin"), "rb") as stdin:
        try:
            proc = subprocess.Popen([sys.executable, "-S", "-s", str(PRELUDE), *map(str, config)], cwd=folder,
                                    env=_minimal_env(folder), stdin=stdin, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, pass_fds=(report_write,), start_new_session=True)
        except BaseException:
            os.close(report_read)
            raise
        finally:
            os.close(report_write)  # the child holds its own copy; EOF arrives when the child exits
    out, stopped = _collect(proc, report_read, start + limits.wall_s, limits, _FolderWatch(folder, limits))
    wall = time.monotonic() - start
    return _result(proc.returncode, out, stopped, wall, limits)


def folder_bytes(folder: str) -> int:
    """Total size of the regular files under `folder` (links not followed; entries vanishing meanwhile skipped).
    sandbox_prelude.py keeps its own copy on purpose: it runs before any program and imports nothing of the lab."""
    total, stack = 0, [folder]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
            except OSError:
                pass
    return total


class _FolderWatch:
    """Has the program written more than limits.total_file_bytes to its folder (beyond the inputs it was given)?
    Measured at most every WATCH_S."""

    def __init__(self, folder: str, limits: Limits):
        self.folder, self.cap, self.next_at = folder, limits.total_file_bytes, 0.0
        self.inputs = folder_bytes(folder)

    def exceeded(self) -> bool:
        now = time.monotonic()
        if now < self.next_at:
            return False
        self.next_at = now + WATCH_S
        return folder_bytes(self.folder) - self.inputs > self.cap


def _collect(proc, report_fd: int, deadline: float, limits: Limits, watch: _FolderWatch):
    """Read stdout, stderr and reports until the program exits or breaks a limit; returns (buffers, why stopped).
    Every WATCH_S the folder's size is measured too: the prelude refuses a write-open past the cap, but a file
    already open grows without asking it."""
    buffers = {"stdout": bytearray(), "stderr": bytearray(), "report": bytearray()}
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, "stdout")
    sel.register(proc.stderr, selectors.EVENT_READ, "stderr")
    report = os.fdopen(report_fd, "rb", buffering=0)
    sel.register(report, selectors.EVENT_READ, "report")
    stopped, open_streams = None, 3
    try:
        while open_streams and stopped is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                stopped = "timeout"
                break
            if watch.exceeded():
                stopped = "files"
                break
            for key, _ in sel.select(timeout=min(remaining, WATCH_S)):
                chunk = os.read(key.fileobj.fileno(), 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    open_streams -= 1
                    continue
                buffers[key.data] += chunk
                if len(buffers["stdout"]) + len(buffers["stderr"]) > limits.output_bytes:
                    stopped = "output"
                elif len(buffers["report"]) > limits.report_bytes:
                    stopped = "report"
        while stopped is None:  # every stream closed (e.g. the program closed stdout): wait for the exit itself
            try:
                proc.wait(timeout=max(0.0, min(WATCH_S, deadline - time.monotonic())))
                break
            except subprocess.TimeoutExpired:
                if watch.exceeded():
                    stopped = "files"
                elif time.monotonic() >= deadline:
                    stopped = "timeout"
    finally:
        _kill_group(proc)  # also reaps anything left in its process group
        proc.wait()
        sel.close()
        for stream in (proc.stdout, proc.stderr, report):
            stream.close()
    return buffers, stopped


def _decode(data: bytearray, cap: int) -> tuple[str, bool]:
    return bytes(data[:cap]).decode("utf-8", errors="replace"), len(data) > cap


def _result(returncode, buffers, stopped, wall, limits: Limits) -> SandboxResult:
    stdout, cut_out = _decode(buffers["stdout"], limits.output_bytes)
    stderr, cut_err = _decode(buffers["stderr"], limits.output_bytes)
    reports = []
    for line in bytes(buffers["report"]).decode("utf-8", errors="replace").splitlines():
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if isinstance(message, dict):
            reports.append(message)
    kinds = {r.get("kind"): r for r in reports if "kind" in r}
    last_err = "\n".join(stderr.rstrip().splitlines()[-6:])[-TRACE_CHARS:]
    if stopped == "timeout":
        status, trace = "timeout", f"Time limit exceeded: wall clock {limits.wall_s:.1f} s"
    elif stopped == "output":
        status, trace = "output_limit", f"Output limit exceeded: more than {limits.output_bytes} bytes on stdout/stderr"
    elif stopped == "report":
        status, trace = "output_limit", "Output limit exceeded: too much test output"
    elif stopped == "files" or "output_limit" in kinds:
        status = "output_limit"
        trace = kinds.get("output_limit", {}).get("trace") or (
            f"Output limit exceeded: more than {limits.total_file_bytes} bytes written to files")
    elif "syntax_error" in kinds:
        status, trace = "syntax_error", kinds["syntax_error"].get("trace", "SyntaxError")
    elif "memory" in kinds or (returncode != 0 and "MemoryError" in last_err):
        status, trace = "memory", f"Memory limit exceeded ({limits.memory_mb} MB): MemoryError"
    elif returncode in (-signal.SIGXCPU, -signal.SIGKILL):  # soft, then hard RLIMIT_CPU (or the OOM killer)
        status, trace = "timeout", f"Time limit exceeded: CPU {limits.cpu_s} s"
    elif returncode is not None and returncode < 0:
        name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else str(-returncode)
        status, trace = "crash", f"Killed by signal {name}" + (" (stack overflow?)" if name == "SIGSEGV" else "")
    elif returncode != 0:
        status = "failed"
        trace = str(kinds.get("exception", {}).get("trace") or last_err or f"exit status {returncode}")
    else:
        status, trace = "passed", ""
    return SandboxResult(status, returncode, stdout, stderr, trace[-TRACE_CHARS:], reports, wall,
                         cut_out or cut_err)


def default_workers() -> int:
    return max(1, os.cpu_count() or 1)


def run_programs(jobs: list[SandboxJob], workers: int | None = None) -> list[SandboxResult]:
    """Run many programs, at most `workers` at a time (threads that each wait on one subprocess); input order."""
    workers = default_workers() if workers is None else workers
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers: got {workers!r}; must be an integer >= 1")
    if len(jobs) <= 1 or workers == 1:
        return [run_program(job) for job in jobs]
    with ThreadPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
        return list(pool.map(run_program, jobs))
