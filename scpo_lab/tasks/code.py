"""What the code tasks share: code extraction, the test harness, output comparison, LeetCode-style feedback.

A candidate is graded on a list of tests and the outcome is a TestRun: how many passed and the first failure.
Expected outputs never enter the sandbox: the program reports what it computed, and the host compares. So a
program that forges its reports can only forge values it could have computed.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from scpo_lab import sandbox_codec
from scpo_lab.sandbox import Limits, SandboxJob, SandboxResult
from scpo_lab.tasks.base import Verdict

SHOW_CHARS = 300       # one input / expected / actual value in the feedback
FEEDBACK_CHARS = 1500  # the whole feedback text
FLOAT_ATOL = 1e-6      # floats always get at least this absolute tolerance

# ---------------------------------------------------------------------------------------------------------------
# code extraction

_FENCE = re.compile(r"```[ \t]*([\w+.-]*)[^\n]*\n(.*?)(?:\n[ \t]*```|\Z)", re.S)


def extract_code(text: str, wants: str | None = None) -> str:
    """The program in a completion: the last fenced block that contains `wants` (e.g. "def f"), else the last
    Python/unlabelled fenced block, else the whole text. An unclosed fence (a truncated completion) runs to the end."""
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(text or "")]
    python = [body for lang, body in blocks if lang in ("", "python", "py", "python3")]
    if wants is not None:
        having = [body for body in python if wants in body]
        if having:
            return having[-1]
    return python[-1] if python else (text or "")


# ---------------------------------------------------------------------------------------------------------------
# the functional harness: call a function (or Solution().method) on every input, report each output

_DRIVER = '''
import json as _json, sys as _sys, time as _time
_sys.set_int_max_str_digits(0)
with open("tests.json", encoding="utf-8") as _f:
    _spec = _json.load(_f)
_owner = solution.get(_spec["class"] or _spec["name"])
if _owner is None:
    report(kind="missing", name=_spec["class"] or _spec["name"])
else:
    report(kind="loaded")  # the program's own top-level code finished: later failures belong to tests
    for _i, _args in enumerate(_spec["inputs"]):
        _start = _time.perf_counter()
        try:
            _fn = getattr(_owner(), _spec["name"]) if _spec["class"] else _owner
            _out = _fn(*decode(_args))
            report(i=_i, out=encode(_out), t=_time.perf_counter() - _start)
        except MemoryError:
            report(i=_i, error="MemoryError", memory=True)
        except BaseException as _err:  # SystemExit and KeyboardInterrupt too: the test failed, go on
            report(i=_i, error=tail(format_error(_err)))
'''


def functional_harness() -> str:
    """The codec (encode/decode) followed by the driver, as one trusted source text."""
    return Path(sandbox_codec.__file__).read_text(encoding="utf-8") + _DRIVER


def functional_job(code: str, name: str, inputs: list, limits: Limits, class_name: str | None = None) -> SandboxJob:
    """A sandbox job that runs `code` then calls `name` (or `class_name`().`name`) on each argument list."""
    spec = {"class": class_name, "name": name, "inputs": [sandbox_codec.encode(list(args)) for args in inputs]}
    return SandboxJob(code, harness=functional_harness(), files={"tests.json": json.dumps(spec)}, limits=limits)


# ---------------------------------------------------------------------------------------------------------------
# comparison

def values_equal(expected, actual, atol: float = 0.0, loose_sequences: bool = False) -> bool:
    """expected == actual, floats within max(atol, FLOAT_ATOL) or a relative 1e-6, NaN equal to NaN;
    loose_sequences: a tuple equals a list with the same items (LeetCode outputs are JSON)."""
    if isinstance(expected, float) or isinstance(actual, float):
        if isinstance(expected, (int, float)) and isinstance(actual, (int, float)) \
                and not isinstance(expected, bool) and not isinstance(actual, bool):
            if math.isnan(expected) or math.isnan(actual):
                return math.isnan(expected) and math.isnan(actual)
            return math.isclose(expected, actual, rel_tol=1e-6, abs_tol=max(atol, FLOAT_ATOL))
        return False
    sequences = (list, tuple)
    if isinstance(expected, sequences) and isinstance(actual, sequences):
        if type(expected) is not type(actual) and not loose_sequences:
            return False
        return len(expected) == len(actual) and all(
            values_equal(e, a, atol, loose_sequences) for e, a in zip(expected, actual))
    if isinstance(expected, dict) and isinstance(actual, dict):
        return expected.keys() == actual.keys() and all(
            values_equal(v, actual[k], atol, loose_sequences) for k, v in expected.items())
    try:
        return bool(expected == actual)
    except Exception:  # exotic values whose == raises
        return False


def as_set(value):
    """For tasks whose own asserts compare set(f(x)) == set(...): the output as a set, if it can be one."""
    try:
        return set(value)
    except TypeError:
        return value


def stdout_equal(expected: str, actual: str) -> bool:
    """Judge-style: line by line after stripping, trailing blank lines ignored; tokens that are both numbers
    compare within 1e-6 (so "0.5" matches "0.50000")."""
    exp, act = expected.rstrip().splitlines(), actual.rstrip().splitlines()
    if len(exp) != len(act):
        return False
    for e_line, a_line in zip(exp, act):
        if e_line.strip() == a_line.strip():
            continue
        e_tok, a_tok = e_line.split(), a_line.split()
        if len(e_tok) != len(a_tok):
            return False
        for e, a in zip(e_tok, a_tok):
            if e == a:
                continue
            if not _numbers_close(e, a):
                return False
    return True


def _numbers_close(e: str, a: str) -> bool:
    """Integers exactly ("+5" == "5"); decimals within 1e-6 (a large integer must not pass as "close")."""
    try:
        return int(e) == int(a)
    except ValueError:
        pass
    try:
        return math.isclose(float(e), float(a), rel_tol=1e-6, abs_tol=1e-6)
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------------------------------
# grading

@dataclass
class TestRun:
    """A candidate over a list of tests."""

    status: str               # passed | failed | timeout | memory | crash | output_limit | syntax_error (sandbox.STATUSES)
    passed: int
    total: int
    failure: dict | None = None  # the first failing test: {index, input, expected, actual | error, why}

    @property
    def fraction(self) -> float:
        return self.passed / self.total if self.total else 0.0


def grade_functional(result: SandboxResult, expected: list, shown_inputs: list[str], equal) -> TestRun:
    """A functional harness run against expected outputs; `equal(expected, actual) -> bool`."""
    total = len(expected)
    if result.status == "syntax_error":
        return TestRun("syntax_error", 0, total, {"why": "syntax_error", "error": result.trace})
    if any(r.get("kind") == "missing" for r in result.reports):
        name = next(r.get("name") for r in result.reports if r.get("kind") == "missing")
        return TestRun("failed", 0, total, {"why": "missing", "error": f"Your code does not define `{name}`."})
    by_index = {r["i"]: r for r in result.reports if isinstance(r.get("i"), int)}
    loaded = any(r.get("kind") == "loaded" for r in result.reports)
    passed, failure, status = 0, None, "passed"
    for i, want in enumerate(expected):
        report, why, detail = by_index.get(i), None, {}
        if report is None and not loaded:  # the program's top-level code failed before the tests started
            why = result.status if result.status != "passed" else "failed"
            error = result.trace or "The program exited before the tests started."
            return TestRun({"passed": "failed"}.get(result.status, result.status), 0, total,
                           {"why": why if why != "failed" else "runtime_error", "error": error, "at_load": True})
        if report is None:  # never reported: the program stopped (limit, crash, exit) during this test
            why = result.status if result.status != "passed" else "failed"
            detail = {"error": result.trace or "The program stopped before this test finished."}
        elif "error" in report:
            why = "memory" if report.get("memory") else "runtime_error"
            detail = {"error": str(report["error"])}
        else:
            try:
                got = sandbox_codec.decode(report["out"])
            except (ValueError, TypeError, KeyError):
                got = sandbox_codec.Opaque("unreadable output")
            if equal(want, got):
                passed += 1
                continue
            why, detail = "wrong_answer", {"actual": show(got)}
        if failure is None:
            failure = {"index": i, "input": shown_inputs[i], "expected": show(want), "why": why, **detail}
            status = {"runtime_error": "failed", "wrong_answer": "failed"}.get(why, why)
    return TestRun(status, passed, total, failure)


def grade_stdio(results: list[SandboxResult], inputs: list[str], outputs: list[str]) -> TestRun:
    """One sandbox run per stdin/stdout test."""
    passed, failure, status = 0, None, "passed"
    for i, (result, given, want) in enumerate(zip(results, inputs, outputs)):
        if result.status == "passed" and stdout_equal(want, result.stdout):
            passed += 1
            continue
        if failure is None:
            why = {"passed": "wrong_answer", "failed": "runtime_error"}.get(result.status, result.status)
            failure = {"index": i, "input": cut(given.rstrip()), "expected": cut(want.rstrip()), "why": why}
            if why == "wrong_answer":
                failure["actual"] = cut(result.stdout.rstrip())
            else:
                failure["error"] = result.trace
            status = {"runtime_error": "failed", "wrong_answer": "failed"}.get(why, why)
    return TestRun(status, passed, len(outputs), failure)


def cut(text: str, limit: int = SHOW_CHARS) -> str:
    text = str(text)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text) - limit} more characters)"


def show(value) -> str:
    return cut(repr(value))


# ---------------------------------------------------------------------------------------------------------------
# feedback

_HEADLINES = {"wrong_answer": "Wrong Answer", "runtime_error": "Runtime Error", "timeout": "Time Limit Exceeded",
              "memory": "Memory Limit Exceeded", "crash": "Runtime Error (the process crashed)",
              "output_limit": "Output Limit Exceeded", "failed": "Runtime Error", "missing": "Wrong Answer"}


def feedback(run: TestRun, code_found: bool = True) -> str:
    """LeetCode-style: the outcome, tests passed, then the first failing test's input, expected, actual/error."""
    if not code_found:
        return f"No code was found in your response. 0/{run.total} tests passed."
    if run.status == "passed":
        return f"Accepted: all {run.total} tests passed."
    f = run.failure or {}
    if run.status == "syntax_error":
        return cut(f"Compile Error: your code does not run. 0/{run.total} tests passed.\n{f.get('error', '')}",
                   FEEDBACK_CHARS)
    lines = [f"{_HEADLINES.get(f.get('why'), 'Wrong Answer')}: {run.passed}/{run.total} tests passed."]
    if f.get("why") == "missing":
        lines.append(f["error"])
    elif f.get("at_load"):
        lines.append("Your code failed while loading, before any test ran:")
        lines.append(f"Error: {cut(f.get('error', ''), 600)}")
    else:
        lines.append(f"First failing test (#{f.get('index', 0) + 1}):")
        lines.append(f"Input: {f.get('input', '')}")
        lines.append(f"Expected: {f.get('expected', '')}")
        if "actual" in f:
            lines.append(f"Output: {f['actual']}")
        if f.get("error"):
            lines.append(f"Error: {cut(f['error'], 600)}")
    return cut("\n".join(lines), FEEDBACK_CHARS)


def code_verdict(run: TestRun, code: str, code_found: bool = True) -> Verdict:
    """Binary reward (all tests pass); the fraction passed and the status in Verdict.details."""
    ok = run.status == "passed" and run.total > 0
    details = {"status": run.status, "tests_passed": run.passed, "tests_total": run.total,
               "fraction_passed": run.fraction}
    return Verdict(1.0 if ok else 0.0, ok, feedback(run, code_found), code, details)
