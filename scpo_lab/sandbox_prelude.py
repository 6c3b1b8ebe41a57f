"""What runs first inside every sandboxed interpreter, before the untrusted program (sandbox.py starts it).

    python -s sandbox_prelude.py <config json>      (cwd = the program's own temporary folder)

1. sets the resource limits (CPU seconds, address space, file size, no core files, no new processes);
2. compiles main.py (a SyntaxError is reported as such: the program never ran);
3. reads and compiles the trusted harness, if any, before the untrusted code could rewrite it;
4. installs an audit hook (PEP 578; it cannot be removed from Python code) that refuses sockets, new processes,
   signals to other processes, ctypes, raising limits, writes outside the folder and reads outside the folder,
   the Python installation and a few device files;
5. runs main.py, then the harness with the program's globals; reports on file descriptor `report_fd` (JSON lines).

Only the standard library is imported here: this file is the interpreter's first code and must stay small.
"""

import json
import os
import resource
import sys
import traceback

if sys.path and os.path.realpath(sys.path[0]) == os.path.dirname(os.path.realpath(__file__)):
    del sys.path[0]  # the lab's package folder: the program must not import the lab's modules by name
config = json.loads(sys.argv[1])
sys.argv = ["main.py"]
HERE = os.path.realpath(os.getcwd())
REPORT_FD = config["report_fd"]


def report(**message) -> None:
    """One JSON line on the report pipe; a program that closed it only loses its own reports."""
    try:
        os.write(REPORT_FD, (json.dumps(message) + "\n").encode())
    except OSError:
        pass


def tail(text: str, lines: int = 6, chars: int = 1200) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])[-chars:]


def format_error(err: BaseException) -> str:
    """The traceback without this file's frames (the run loop, the audit hook): only the program's own lines."""
    frames = [f for f in traceback.extract_tb(err.__traceback__) if f.filename != __file__]
    head = "Traceback (most recent call last):\n" if frames else ""
    return head + "".join(traceback.format_list(frames)) + "".join(traceback.format_exception_only(type(err), err))


# 1. limits (the soft CPU limit sends SIGXCPU; the hard one, a second later, SIGKILL)
cpu, memory = config["cpu_s"], config["memory_mb"] * 1024 * 1024
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
resource.setrlimit(resource.RLIMIT_FSIZE, (config["file_bytes"], config["file_bytes"]))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))  # no fork for non-root users (root ignores it: see hook)

# 2. the program
with open("main.py", encoding="utf-8", errors="replace") as f:
    source = f.read()
try:
    program = compile(source, "main.py", "exec")
except (SyntaxError, ValueError, MemoryError, RecursionError) as err:  # ValueError: null bytes
    report(kind="syntax_error", trace=tail("".join(traceback.format_exception_only(type(err), err))))
    sys.exit(3)

# 3. the trusted harness, compiled before any untrusted code runs
harness = None
if config.get("harness"):
    with open("harness.py", encoding="utf-8") as f:
        harness = compile(f.read(), "harness.py", "exec")

# 4. the policy. Everything it reads is local to this function: once it returns, only the interpreter holds
#    the hook, so a program that walks frames or module globals finds nothing to switch off (gc's object walks,
#    the other way to reach it, are refused below).
def _install_policy(here: str) -> None:
    read_roots = tuple({os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix,
                                                       sys.base_exec_prefix)} | {here})
    read_files = frozenset({"/dev/null", "/dev/urandom", "/dev/random", "/dev/zero", "/etc/localtime"})
    denied = frozenset({
        "os.system", "os.fork", "os.forkpty", "os.exec", "os.spawn", "os.posix_spawn", "subprocess.Popen",
        "os.kill", "os.killpg", "signal.pthread_kill", "socket.__new__", "socket.connect", "socket.bind",
        "socket.sendto", "socket.getaddrinfo", "resource.setrlimit", "resource.prlimit", "ctypes.dlopen",
        "ctypes.dlsym", "ctypes.cdata", "pty.spawn", "mmap.__new__", "gc.get_objects", "gc.get_referrers",
        "gc.get_referents", "sys.setprofile", "sys.settrace"})
    denied_imports = frozenset({"ctypes", "_ctypes", "_posixsubprocess", "_socket", "_multiprocessing", "cffi"})
    path_args = {"os.remove": 1, "os.rmdir": 1, "os.mkdir": 1, "os.chmod": 1, "os.chown": 1, "os.truncate": 1,
                 "os.utime": 1, "os.rename": 2, "os.link": 2, "os.symlink": 2, "shutil.rmtree": 1}
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    realpath, fsdecode = os.path.realpath, os.fsdecode

    def under(path, roots) -> bool:
        real = realpath(fsdecode(path))
        return any(real == r or real.startswith(r.rstrip("/") + "/") for r in roots)

    def policy(event, args) -> None:
        if event in denied:
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "import" and args[0] in denied_imports:
            raise ImportError(f"sandbox: importing {args[0]} is not allowed")
        if event == "open":
            path, mode, flags = args
            if isinstance(path, int):
                return  # an already open descriptor: only the ones the sandbox handed over exist
            writing = (mode is not None and any(c in mode for c in "wax+")) or bool((flags or 0) & write_flags)
            if writing and not under(path, (here,)):
                raise PermissionError(f"sandbox: writing outside the working folder is not allowed: {path}")
            if not writing and not (under(path, read_roots) or realpath(fsdecode(path)) in read_files):
                raise PermissionError(f"sandbox: reading outside the working folder is not allowed: {path}")
        elif event in path_args:
            for path in args[:path_args[event]]:
                if not isinstance(path, int) and not under(path, (here,)):
                    raise PermissionError(f"sandbox: {event} outside the working folder is not allowed")

    sys.addaudithook(policy)


_install_policy(HERE)
del _install_policy, config, f

# 5. run
namespace = {"__name__": "__main__" if harness is None else "solution", "__builtins__": __builtins__}
try:
    exec(program, namespace)
    if harness is not None:
        exec(harness, {"solution": namespace, "report": report, "tail": tail, "format_error": format_error,
                       "__builtins__": __builtins__})
except SystemExit:
    raise
except MemoryError:
    report(kind="memory", trace="MemoryError")
    sys.exit(1)
except BaseException as err:  # the program's own uncaught error: a failed run, not a sandbox fault
    text = format_error(err)
    report(kind="exception", trace=tail(text))
    try:
        sys.stderr.write(text)
    except Exception:
        pass
    sys.exit(1)
