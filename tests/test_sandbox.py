"""The sandbox: hostile programs end in a non-passing status within their limits and harm nothing outside."""

import os
import time

import pytest

from scpo_lab.sandbox import STATUSES, Limits, SandboxJob, run_program, run_programs

FAST = Limits(wall_s=3.0, cpu_s=2, memory_mb=256, output_bytes=100_000)


def hostile_programs(victim, secret_name):
    """name -> (program, statuses it may end with). `victim` is a host file no program may touch."""
    return {
        "infinite loop": ("while True:\n    pass\n", {"timeout"}),
        "sleeping forever": ("import time\ntime.sleep(1000)\n", {"timeout"}),
        "fork bomb": ("import os\nwhile True:\n    os.fork()\n", {"failed"}),
        "multiprocessing": ("import multiprocessing as m\nm.Process(target=print).start()\n", {"failed"}),
        "memory bomb": ("x = []\nwhile True:\n    x.append(bytearray(10**7))\n", {"memory"}),
        "huge output": ("while True:\n    print('x' * 10000)\n", {"output_limit"}),
        "write outside": (f"open({str(victim)!r}, 'w').write('pwned')\n", {"failed"}),
        "delete outside": (f"import os\nos.remove({str(victim)!r})\n", {"failed"}),
        "write via ../": ("open('../scpo-escape.txt', 'w').write('x')\n", {"failed"}),
        "socket": ("import socket\ns = socket.socket()\ns.connect(('127.0.0.1', 80))\n", {"failed"}),
        "parent env": (f"import os\nprint(os.environ.get({secret_name!r}))\n"
                       "print(open(f'/proc/{os.getppid()}/environ').read())\n", {"failed"}),
        "kill parent": ("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n", {"failed"}),
        "kill parent group": ("import os, signal\nos.killpg(os.getpgid(os.getppid()), signal.SIGKILL)\n",
                              {"failed"}),
        "os.system": (f"import os\nos.system('echo pwned > {victim}')\n", {"failed"}),
        "subprocess": ("import subprocess\nsubprocess.run(['true'])\n", {"failed"}),
        "ctypes": ("import ctypes\nctypes.CDLL(None).kill(1, 9)\n", {"failed"}),
        "raise limits": ("import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))\n", {"failed"}),
        "deep recursion": ("import sys\nsys.setrecursionlimit(10**7)\ndef f(n):\n    return f(n + 1)\nf(0)\n",
                           {"crash", "failed", "memory", "timeout"}),
        "closes stdout": ("import os, sys\nsys.stdout.close()\nos.close(1)\nprint('hidden')\n", {"failed"}),
        "closes stdout and waits": ("import os\nos.close(1)\nos.close(2)\nwhile True:\n    pass\n", {"timeout"}),
        "closes report pipe": ("import os\nfor fd in range(3, 64):\n    try:\n        os.close(fd)\n"
                               "    except OSError:\n        pass\n1 / 0\n", {"failed"}),
        "syntax error": ("def f(:\n", {"syntax_error"}),
        # attempts on the policy itself
        "rebind builtins": ("import builtins\nbuiltins.any = lambda xs: True\nbuiltins.isinstance = lambda *a: True\n"
                            f"open({str(victim)!r}, 'w').write('pwned')\n", {"failed"}),
        "patch os.path": ("import os, posixpath\nposixpath.realpath = os.path.realpath = lambda p, **k: os.getcwd()\n"
                          "os.lstat = None\n"
                          f"open({str(victim)!r}, 'w').write('pwned')\n", {"failed"}),
        "lying path object": ("import os\nclass P:\n    n = 0\n    def __fspath__(self):\n        P.n += 1\n"
                              f"        return {str(victim)!r} if P.n % 2 else 'inside.txt'\n"
                              "fd = os.open(P(), os.O_WRONLY | os.O_TRUNC)\nos.write(fd, b'pwned')\n", {"failed"}),
        "str subclass path": ("class S(str):\n    def startswith(self, *a):\n        return True\n"
                              f"open(S({str(victim)!r}), 'w').write('pwned')\n", {"failed"}),
        "directory fd": (f"import os\nfd = os.open({str(victim.parent)!r}, os.O_RDONLY)\n"
                         "w = os.open('victim.txt', os.O_WRONLY | os.O_TRUNC, dir_fd=fd)\n", {"failed"}),
        "symlink out": (f"import os\nos.symlink({str(victim)!r}, 'link')\nopen('link', 'w').write('pwned')\n",
                        {"failed"}),
        "device node": ("import os, posix\nos.mknod('disk', 0o600 | 0o60000, os.makedev(8, 0))\n", {"failed"}),
        "walk frames to the hook": ("import sys, gc\nprint(len(gc.get_objects()))\n", {"failed"}),
    }


def test_hostile_programs_fail_within_limits_and_harm_nothing(tmp_path, monkeypatch):
    secret_name, secret = "SCPO_TEST_SECRET_TOKEN", "hunter2-do-not-leak"
    monkeypatch.setenv(secret_name, secret)
    victim = tmp_path / "victim.txt"
    victim.write_text("original")
    programs = hostile_programs(victim, secret_name)
    benign = SandboxJob("import sys\nprint(sum(map(int, sys.stdin.read().split())))\n", stdin="1 2 3\n",
                        limits=FAST)
    # hostile and benign programs interleaved on 4 workers: neighbours must be unaffected
    jobs = [job for program, _ in programs.values() for job in (SandboxJob(program, limits=FAST), benign)]
    start = time.monotonic()
    results = run_programs(jobs, workers=4)
    elapsed = time.monotonic() - start
    for (name, (_, allowed)), result in zip(programs.items(), results[0::2]):
        assert result.status in allowed, (name, result.status, result.trace)
        assert result.status != "passed" and result.trace, name
        assert result.wall_s < FAST.wall_s + 2.0, (name, result.wall_s)
        assert secret not in result.stdout + result.stderr + result.trace, name
    for result in results[1::2]:
        assert (result.status, result.stdout) == ("passed", "6\n")
    assert elapsed < 60
    assert victim.read_text() == "original"  # the host's files
    assert not (tmp_path.parent / "scpo-escape.txt").exists()
    huge = results[2 * list(programs).index("huge output")]
    assert len(huge.stdout) <= FAST.output_bytes and huge.output_truncated
    assert os.getpid() > 0  # and this process is still here (a killed parent would have ended the test run)


@pytest.fixture
def sandbox_tmp(tmp_path, monkeypatch):
    """The sandbox's folders go under a temp dir of this test's own, so it can check that nothing remains."""
    import tempfile
    root = tmp_path / "sandboxes"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


# Each file is under the per-file limit (1 MB); together they pass the 5 MB total after 6 files.
MANY_FILES = ("for i in range(300):\n    with open(f'out{i}.bin', 'wb') as f:\n        f.write(b'x' * 1_000_000)\n"
              "print('done')\n")
CAPS = Limits(wall_s=10.0, cpu_s=10, memory_mb=256, file_bytes=1_000_000, total_file_bytes=5_000_000, max_files=50)
WIDE = Limits(wall_s=10.0, cpu_s=10, memory_mb=256, file_bytes=1_000_000, total_file_bytes=5_000_000,
              max_files=10_000)


def test_total_bytes_written_are_capped(sandbox_tmp):
    start = time.monotonic()
    result = run_program(MANY_FILES, limits=WIDE)
    assert result.status == "output_limit" and "more than 5000000 bytes written to files" in result.trace
    assert "done" not in result.stdout
    assert time.monotonic() - start < 5.0  # stopped at once, not at the wall limit
    assert list(sandbox_tmp.iterdir()) == []  # and nothing remains


def test_one_open_file_cannot_pass_the_total_either(sandbox_tmp):
    """An open file grows without any audit event: the watch from outside stops it (and RLIMIT_FSIZE is at most
    the total cap too)."""
    limits = Limits(wall_s=10.0, cpu_s=10, memory_mb=256, file_bytes=50_000_000, total_file_bytes=3_000_000)
    program = "import time\nf = open('big.bin', 'wb')\nwhile True:\n    f.write(b'x' * 100_000)\n    f.flush()\n"
    result = run_program(program, limits=limits)
    assert result.status == "output_limit"  # past 3 MB: killed from outside, or refused by RLIMIT_FSIZE (EFBIG)
    assert list(sandbox_tmp.iterdir()) == []


def test_number_of_files_is_capped(sandbox_tmp):
    program = ("import os\nfor i in range(10_000):\n    try:\n        open(f'f{i}', 'w').close()\n"
               "    except OSError:\n        pass\nprint('survived')\n")
    result = run_program(program, limits=CAPS)
    assert result.status == "output_limit" and "more than 50 files created" in result.trace
    assert "survived" not in result.stdout
    folders = run_program("import os\nfor i in range(100):\n    os.mkdir(f'd{i}')\n", limits=CAPS)
    assert folders.status == "output_limit"
    assert list(sandbox_tmp.iterdir()) == []


def test_programs_within_the_caps_still_pass_and_inputs_do_not_count(sandbox_tmp):
    big_input = "1\n" * 3_000_000  # 6 MB of stdin: the caps are on what the program writes, not on its inputs
    program = ("import sys\nn = sum(1 for _ in sys.stdin)\nfor i in range(4):\n"
               "    open(f'o{i}', 'w').write('y' * 900_000)\nprint(n)\n")
    result = run_program(program, stdin=big_input, limits=CAPS)
    assert (result.status, result.stdout) == ("passed", "3000000\n")
    assert list(sandbox_tmp.iterdir()) == []


def test_one_file_past_the_per_file_limit_is_an_output_limit(sandbox_tmp):
    result = run_program("open('a.bin', 'wb').write(b'x' * 2_000_000)\n", limits=CAPS)
    assert result.status == "output_limit" and "larger than 1000000 bytes" in result.trace
    caught = run_program("try:\n    open('a.bin', 'wb').write(b'x' * 2_000_000)\nexcept OSError:\n    pass\n",
                         limits=CAPS)
    assert caught.status == "passed"  # a program that handles EFBIG itself goes on (its output is then judged)


def test_output_limit_reads_as_its_own_verdict():
    from scpo_lab.tasks.code import TestRun, feedback
    run = TestRun("output_limit", 0, 3, {"index": 0, "input": "x", "expected": "1", "why": "output_limit"})
    assert feedback(run).startswith("Output Limit Exceeded: 0/3 tests passed.")


def test_working_folder_is_private_and_removed():
    result = run_program("import os\nopen('scratch.txt', 'w').write('ok')\nprint(os.getcwd())\n", limits=FAST)
    assert result.status == "passed"
    folder = result.stdout.strip()
    assert folder and not os.path.exists(folder)


def test_program_sees_a_minimal_environment():
    result = run_program("import os, json\nprint(json.dumps(sorted(os.environ)))\n", limits=FAST)
    assert result.status == "passed"
    assert "PATH" in result.stdout and "SCPO_LAB_CACHE" not in result.stdout and "HF_" not in result.stdout


def test_ordinary_programs_run():
    program = ("import math, re, heapq, itertools, functools, bisect, collections, fractions, random\n"
               "n = int(input())\nprint(math.comb(n, 2), sorted(collections.Counter('abca').items()))\n")
    result = run_program(program, stdin="5\n", limits=FAST)
    assert (result.status, result.stdout) == ("passed", "10 [('a', 2), ('b', 1), ('c', 1)]\n")


def test_runtime_error_trace_names_the_program_line_only():
    result = run_program("x = 1\ny = x / 0\n", limits=FAST)
    assert result.status == "failed"
    assert "ZeroDivisionError" in result.trace and 'File "main.py", line 2' in result.trace
    assert "sandbox_prelude" not in result.trace


def test_only_the_standard_library_is_importable():
    assert run_program("import json, decimal, fractions\n", limits=FAST).status == "passed"
    result = run_program("import torch\n", limits=FAST)  # installed in the lab's venv, not for programs
    assert result.status == "failed" and "ModuleNotFoundError" in result.trace
    assert run_program("import sandbox_codec\n", limits=FAST).status == "failed"  # nor the lab's own modules


def test_exit_status_and_statuses():
    assert run_program("import sys\nsys.exit(0)\n", limits=FAST).status == "passed"
    assert run_program("print(1)\nexit()\n", limits=FAST).status == "passed"
    assert run_program("quit(4)\n", limits=FAST).status == "failed"
    assert run_program("import sys\nsys.exit(2)\n", limits=FAST).status == "failed"
    assert set(STATUSES) == {"passed", "failed", "timeout", "memory", "crash", "output_limit", "syntax_error"}


def test_harness_reports_and_sees_the_program():
    harness = "report(value=solution['f'](20))\n"
    result = run_program("def f(x):\n    return x + 1\n", harness=harness, limits=FAST)
    assert result.status == "passed" and result.reports == [{"value": 21}]


@pytest.mark.parametrize("limits, field", [({"wall_s": 0}, "limits.wall_s"), ({"memory_mb": -1}, "limits.memory_mb"),
                                           ({"cpu_s": "1"}, "limits.cpu_s")])
def test_bad_limits(limits, field):
    with pytest.raises(ValueError, match=f"^{field}: "):
        Limits(**limits)


def test_bad_workers():
    with pytest.raises(ValueError, match="^workers: "):
        run_programs([SandboxJob("pass")], workers=0)
