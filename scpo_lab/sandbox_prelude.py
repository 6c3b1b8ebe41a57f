"""What runs first inside every sandboxed interpreter, before the untrusted program (sandbox.py starts it).

    python -S -s sandbox_prelude.py REPORT_FD CPU_S MEMORY_MB FILE_BYTES HARNESS(0|1) MAX_FILES TOTAL_FILE_BYTES
                                                                                    (cwd: the program's folder)

1. sets the resource limits (CPU seconds, address space, file size, no core files, no new processes);
2. compiles main.py (a SyntaxError is reported as such: the program never ran);
3. reads and compiles the trusted harness, if any, before the untrusted code could rewrite it;
4. installs an audit hook (PEP 578; it cannot be removed from Python code) that refuses sockets, new processes,
   signals to other processes, ctypes, raising limits, writes outside the folder and reads outside the folder,
   the Python installation and a few device files; it counts the files and folders the program creates and
   ends it (reporting kind "output_limit") at the one past MAX_FILES, or at a file opened for writing once the
   folder holds more than TOTAL_FILE_BYTES beyond its inputs (a file already open grows without an audit event:
   sandbox.py also watches the folder's size from outside);
5. runs main.py, then the harness with the program's globals; reports on file descriptor `report_fd` (JSON lines).

Only the standard library, and little of it (json, re and traceback cost ~10 ms of a ~20 ms start; traceback is
imported only on an error): this file runs before every single program.
"""

import _json
import builtins
import errno
import os
import posix
import resource
import stat
import sys

if sys.path and os.path.realpath(sys.path[0]) == os.path.dirname(os.path.realpath(__file__)):
    del sys.path[0]  # the lab's package folder: the program must not import the lab's modules by name
if not hasattr(builtins, "exit"):  # -S skips site, which defines exit() and quit(); programs do call them
    def _exit(code=None):
        raise SystemExit(code)

    builtins.exit = builtins.quit = _exit
REPORT_FD, CPU_S, MEMORY_MB, FILE_BYTES, HARNESS, MAX_FILES, TOTAL_FILE_BYTES = (int(a) for a in sys.argv[1:8])
sys.argv = ["main.py"]
HERE = os.path.realpath(os.getcwd())


def report(**message) -> None:
    """One JSON line on the report pipe; a program that closed it only loses its own reports."""
    try:
        os.write(REPORT_FD, (_to_json(message) + "\n").encode())
    except OSError:
        pass


def _to_json(message: dict) -> str:
    """A flat dict of str/int/float/bool/None as JSON, with the C string encoder (no json/re import)."""
    def value(v):
        if v is None or isinstance(v, bool):
            return {None: "null", True: "true", False: "false"}[v]
        return repr(v) if isinstance(v, (int, float)) else _json.encode_basestring_ascii(str(v))
    return "{" + ",".join(f"{_json.encode_basestring_ascii(k)}:{value(v)}" for k, v in message.items()) + "}"


def tail(text: str, lines: int = 6, chars: int = 1200) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])[-chars:]


def format_error(err: BaseException) -> str:
    """The traceback without this file's frames (the run loop, the audit hook): only the program's own lines."""
    import traceback

    frames = [f for f in traceback.extract_tb(err.__traceback__) if f.filename != __file__]
    head = "Traceback (most recent call last):\n" if frames else ""
    return head + "".join(traceback.format_list(frames)) + "".join(traceback.format_exception_only(type(err), err))


# 1. limits (the soft CPU limit sends SIGXCPU; the hard one, a second later, SIGKILL)
cpu, memory = CPU_S, MEMORY_MB * 1024 * 1024
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_BYTES, FILE_BYTES))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))  # no fork for non-root users (root ignores it: see hook)

# 2. the program
with open("main.py", encoding="utf-8", errors="replace") as f:
    source = f.read()
try:
    program = compile(source, "main.py", "exec")
except (SyntaxError, ValueError, MemoryError, RecursionError) as err:  # ValueError: null bytes
    import traceback

    report(kind="syntax_error", trace=tail("".join(traceback.format_exception_only(type(err), err))))
    sys.exit(3)

# 3. the trusted harness, compiled before any untrusted code runs
harness = None
if HARNESS:
    with open("harness.py", encoding="utf-8") as f:
        harness = compile(f.read(), "harness.py", "exec")

# 4. the policy. Everything it uses is bound here, at install time: the builtins and os functions it calls are
#    captured (a program that rebinds builtins.any or os.lstat changes nothing), its tables are immutable, and once
#    this function returns only the interpreter holds the hook (gc's object walks, the way to reach it, are refused).
def _install_policy(here: str) -> None:
    lstat, readlink, getcwd, stat_of = os.lstat, os.readlink, os.getcwd, os.stat  # C functions
    write, hard_exit, scandir = os.write, os._exit, os.scandir
    created = [0]  # files, folders and links the program has made in its folder

    def limit_message(trace: str) -> bytes:
        return (_to_json({"kind": "output_limit", "trace": f"Output limit exceeded: {trace}"}) + "\n").encode()

    too_many = limit_message(f"more than {MAX_FILES} files created")
    too_large = limit_message(f"more than {TOTAL_FILE_BYTES} bytes written to files")

    def folder_bytes() -> int:
        total, stack = 0, [here]
        while stack:
            try:
                entries = list(scandir(stack.pop()))
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

    inputs = folder_bytes()  # main.py, the harness, stdin and test files: not the program's output

    def end_for(message: bytes) -> None:
        """Report, then end the program at once (a refusal alone could be caught and ignored)."""
        try:
            write(REPORT_FD, message)
        except OSError:
            pass
        hard_exit(1)
    is_link, is_block, is_char = stat.S_ISLNK, stat.S_ISBLK, stat.S_ISCHR
    _any, _type, _str, _bytes, _int, _tuple = any, type, str, bytes, int, tuple
    Denied, NotImportable = PermissionError, ImportError

    def resolve(path: str) -> str:
        """Absolute path with ".", ".." and symlinks resolved (os.path.realpath, without its mutable globals)."""
        parts = (path if path.startswith("/") else getcwd() + "/" + path).split("/")
        done, hops = [], 0
        while parts:
            part = parts.pop(0)
            if part in ("", "."):
                continue
            if part == "..":
                if done:
                    done.pop()
                continue
            candidate = "/" + "/".join(done + [part])
            try:
                link = is_link(lstat(candidate).st_mode)
            except OSError:
                link = False  # does not exist (yet): a file about to be created
            if link and hops < 40:
                hops += 1
                target = readlink(candidate)
                parts = target.split("/") + parts
                if target.startswith("/"):
                    done = []
                continue
            done.append(part)
        return "/" + "/".join(done)

    def plain(path) -> str:
        # Only exact str/bytes: a str subclass or a PathLike could answer the hook one path and the OS another.
        if _type(path) is not _str and _type(path) is not _bytes:
            raise Denied("sandbox: file paths must be plain str or bytes")
        return resolve(path if _type(path) is _str else path.decode("utf-8", "surrogateescape"))

    def under(real: str, roots) -> bool:
        return _any(real == r or real.startswith(r.rstrip("/") + "/") for r in roots)

    read_roots = _tuple({os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix,
                                                        sys.base_exec_prefix)} | {here})
    read_files = frozenset({"/dev/null", "/dev/urandom", "/dev/random", "/dev/zero", "/etc/localtime"})
    denied = frozenset({
        "os.system", "os.fork", "os.forkpty", "os.exec", "os.spawn", "os.posix_spawn", "subprocess.Popen",
        "os.kill", "os.killpg", "signal.pthread_kill", "socket.__new__", "socket.connect", "socket.bind",
        "socket.sendto", "socket.getaddrinfo", "resource.setrlimit", "resource.prlimit", "ctypes.dlopen",
        "ctypes.dlsym", "ctypes.cdata", "pty.spawn", "mmap.__new__", "gc.get_objects", "gc.get_referrers",
        "gc.get_referents", "sys.setprofile", "sys.settrace"})
    denied_imports = frozenset({"ctypes", "_ctypes", "_posixsubprocess", "_socket", "_multiprocessing", "cffi"})
    one_path = frozenset({"os.remove", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.truncate", "os.utime",
                          "shutil.rmtree", "os.setxattr", "os.removexattr", "os.chflags"})
    two_paths = frozenset({"os.rename", "os.link", "os.symlink"})
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    new_entry = frozenset({"os.mkdir", "os.link", "os.symlink"})  # (the new name is the second of two paths)

    def exists(real: str) -> bool:
        try:
            lstat(real)
            return True
        except OSError:
            return False

    def count_new_entry(real: str) -> None:
        """One more directory entry: past MAX_FILES the program is ended."""
        if exists(real):
            return
        created[0] += 1
        if created[0] > MAX_FILES:
            end_for(too_many)

    def check_open(path, mode, flags) -> None:
        if _type(path) is _int:
            return  # an already open descriptor: only ones the sandbox handed over, or the program opened here
        real = plain(path)
        writing = (mode is not None and _any(c in mode for c in "wax+")) or bool((flags or 0) & write_flags)
        if real in read_files and (not writing or real == "/dev/null"):
            return
        # os.open (mode None) only inside the folder: a directory descriptor from elsewhere plus dir_fd= would
        # let a relative path name a file the hook resolves against the wrong directory.
        inside_only = writing or mode is None
        if not under(real, (here,) if inside_only else read_roots):
            verb = "writing" if writing else "reading"
            raise Denied(f"sandbox: {verb} outside the working folder is not allowed: {real}")
        try:
            mode_bits = stat_of(real).st_mode
            if is_block(mode_bits) or is_char(mode_bits):  # a device node made in the folder (root can mknod)
                raise Denied(f"sandbox: device files are not allowed: {real}")
        except OSError:
            pass  # does not exist yet
        if writing:
            count_new_entry(real)
            if folder_bytes() - inputs > TOTAL_FILE_BYTES:
                end_for(too_large)

    def policy(event, args) -> None:
        if event in denied:
            raise Denied(f"sandbox: {event} is not allowed")
        if event == "import" and args[0] in denied_imports:
            raise NotImportable(f"sandbox: importing {args[0]} is not allowed")
        if event == "open":
            check_open(*args)
        elif event in one_path or event in two_paths:
            for path in args[:2 if event in two_paths else 1]:
                if _type(path) is not _int and not under(plain(path), (here,)):
                    raise Denied(f"sandbox: {event} outside the working folder is not allowed")
            if event in new_entry and _type(args[1 if event in two_paths else 0]) is not _int:
                count_new_entry(plain(args[1 if event in two_paths else 0]))

    sys.addaudithook(policy)


_install_policy(HERE)
for _module in (os, posix):  # no audit event guards mknod; gone for good measure (check_open refuses devices)
    for _name in ("mknod", "mkfifo"):
        if hasattr(_module, _name):
            delattr(_module, _name)
del _install_policy, f

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
    if isinstance(err, OSError) and err.errno == errno.EFBIG:  # past RLIMIT_FSIZE: the output cap, not a bug
        report(kind="output_limit", trace=f"Output limit exceeded: a file larger than {FILE_BYTES} bytes")
    report(kind="exception", trace=tail(text))
    try:
        sys.stderr.write(text)
    except Exception:
        pass
    sys.exit(1)
