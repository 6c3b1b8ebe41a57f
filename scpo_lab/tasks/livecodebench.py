"""LiveCodeBench code generation: stdin/stdout problems (AtCoder, Codeforces) and functional LeetCode problems
(`class Solution`), graded in the sandbox.

Sources:
  "v5"        the vendored release_v5 subsets with public tests only (scpo_lab/data/livecodebench/PROVENANCE.md):
              train = contests 2023-05..2024-07 (580 problems), test = 2024-08..2025-01 (279). Disjoint by date.
  "upstream"  files in the schema of HF `livecodebench/code_generation_lite` (e.g. release_v6's test6.jsonl),
              given by `path` (a .jsonl file or a folder of them): question_content, starter_code,
              public_test_cases (JSON), private_test_cases (base64 + zlib + pickle, decoded by an unpickler that
              admits only plain strings and containers), metadata (JSON, func_name), contest_date. Kept:
              start_date <= contest_date < end_date; test = contest_date >= test_from, train = earlier.
Tests: evaluation (the test split) uses every public and private test. During training (the train split) the
verdict and its feedback use only the first half of the public tests (feedback_tests="half", as SDPO does), so
the other half stays unseen; feedback_tests="all" uses them all.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import pickle
import re
import zlib
from functools import partial
from pathlib import Path

from scpo_lab.sandbox import Limits, SandboxJob, default_workers, run_programs
from scpo_lab.tasks.base import Problem, Task, Verdict, check_split, sample_pool
from scpo_lab.tasks.code import (code_verdict, cut, extract_code, functional_job, grade_functional, grade_stdio,
                                 values_equal)

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "livecodebench"
V5_FILES = {"train": "lcb_v5_2023-05_to_2024-07_public_tests.json", "test": "lcb_v5_2024-08_to_2025-01_public_tests.json"}
SOURCES = ("v5", "upstream")
FEEDBACK_TESTS = ("half", "all")
MAX_PRIVATE_BYTES = 512 * 1024 * 1024  # decompressed private tests of one problem (a zlib bomb stops here)
# LeetCode runs solutions with these names already imported; one line, so tracebacks are off by one line only
FUNCTIONAL_HEADER = ("from typing import *; from collections import *; from functools import *; "
                     "from itertools import *; from heapq import *; from bisect import *; import math, string, re\n")
STDIN_INSTRUCTION = ("Write a Python 3 program that reads the input from standard input and writes the answer to "
                     "standard output. Reply with the complete program in one ```python code block.")
FUNCTIONAL_INSTRUCTION = ("Complete the following starter code in Python 3 and reply with the complete class in one "
                          "```python code block:\n```python\n{starter}\n```")


# ---------------------------------------------------------------------------------------------------------------
# upstream schema

class _PlainUnpickler(pickle.Unpickler):
    """Admits only what pickle builds without looking up a global: str, bytes, numbers, lists, tuples, dicts."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed")


def decode_private_tests(blob: str) -> list[dict]:
    """LiveCodeBench's private_test_cases: base64(zlib(pickle(json string of [{input, output, testtype}])))."""
    if not blob:
        return []
    if blob.lstrip().startswith("["):  # some releases store plain JSON
        value = blob
    else:
        try:
            inflater = zlib.decompressobj()
            raw = inflater.decompress(base64.b64decode(blob), MAX_PRIVATE_BYTES)
            if inflater.unconsumed_tail:
                raise ValueError(f"more than {MAX_PRIVATE_BYTES} bytes once decompressed")
            value = _PlainUnpickler(io.BytesIO(raw)).load()
        except (ValueError, zlib.error, pickle.UnpicklingError, EOFError, TypeError) as err:
            message = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ValueError(f"private_test_cases: not base64+zlib+pickle of plain data ({message})") from None
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    return check_tests(json.loads(value) if isinstance(value, str) else value, "private_test_cases")


def check_tests(tests, field: str) -> list[dict]:
    if not isinstance(tests, list) or not all(
            isinstance(t, dict) and isinstance(t.get("input"), str) and isinstance(t.get("output"), str)
            for t in tests):
        raise ValueError(f"{field}: must be a list of {{input: str, output: str, testtype}} objects")
    return [{"input": t["input"], "output": t["output"], "testtype": t.get("testtype", "stdin")} for t in tests]


def load_upstream(path: str | Path, start_date: str | None = None, end_date: str | None = None) -> list[dict]:
    """Rows of upstream files (one .jsonl or a folder of *.jsonl), contest_date in [start_date, end_date)."""
    path = Path(path)
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise ValueError(f"task.path: '{path}' is not a .jsonl file or a folder holding some")
    rows = []
    for file in files:
        with open(file, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:  # every problem names the file and line, so a bad row can be found and fixed
                    row = _upstream_row(line, start_date, end_date)
                except (ValueError, UnicodeDecodeError) as err:
                    raise ValueError(f"task.path: {file}:{number}: {err}") from None
                if row is not None:
                    rows.append(row)
    return rows


UPSTREAM_FIELDS = ("question_id", "question_content", "public_test_cases")


def _upstream_row(line: str, start_date: str | None, end_date: str | None) -> dict | None:
    """One line of an upstream .jsonl as a row; None when its contest_date is outside [start_date, end_date)."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"not valid JSON ({err.msg}, column {err.colno})") from None
    if not isinstance(row, dict):
        raise ValueError(f"expected one JSON object per line with {', '.join(UPSTREAM_FIELDS)}, got "
                         f"{type(row).__name__}")
    missing = [name for name in UPSTREAM_FIELDS if name not in row]
    if missing:
        raise ValueError(f"missing field {missing[0]!r}; upstream rows need {', '.join(UPSTREAM_FIELDS)}")
    day = str(row.get("contest_date", ""))[:10]
    if (start_date and day < start_date) or (end_date and day >= end_date):
        return None
    metadata = _json_field(row, "metadata", "{}")
    public = check_tests(_json_field(row, "public_test_cases", "[]"), "public_test_cases")
    private = row.get("private_test_cases") or ""
    if not public and not private:  # no test can fail: every program would be "Accepted"
        raise ValueError(f"problem {row['question_id']!r} has no tests (public_test_cases and private_test_cases "
                         "are empty)")
    return {"id": f"lcb-{row['question_id']}", "question": str(row["question_content"]),
            "starter_code": row.get("starter_code") or "", "date": day,
            "platform": row.get("platform", ""), "difficulty": row.get("difficulty", ""),
            "func_name": metadata.get("func_name") if isinstance(metadata, dict) else None,
            "public": public,
            # kept encoded: decoded, a release's private tests can take gigabytes
            "private": private}


def _json_field(row: dict, name: str, empty: str):
    value = row.get(name) or empty
    try:
        return json.loads(value) if isinstance(value, str) else value
    except json.JSONDecodeError as err:
        raise ValueError(f"{name}: not valid JSON ({err.msg})") from None


def load_v5(split: str) -> list[dict]:
    """The vendored v5 subset of `split` (public tests only; the method name comes from the starter code)."""
    with open(DATA_DIR / V5_FILES[split], encoding="utf-8") as f:
        records = json.load(f)
    rows = []
    for index, record in enumerate(records):
        starter = record.get("starter_code") or ""
        rows.append({"id": f"lcb-v5-{split}-{index}", "question": record["problem"], "starter_code": starter,
                     "date": "", "platform": "", "difficulty": "", "func_name": method_name(starter),
                     "public": check_tests(record["tests"], "tests"), "private": ""})
    return rows


def method_name(starter_code: str) -> str | None:
    """The first method of `class Solution` in LeetCode starter code."""
    m = re.search(r"class\s+Solution\b.*?def\s+(\w+)\s*\(\s*self", starter_code, re.S)
    return m.group(1) if m else None


# ---------------------------------------------------------------------------------------------------------------
# the task

class LiveCodeBenchTask(Task):
    """Problem ids "lcb-<question_id>" (upstream) or "lcb-v5-<split>-<index>"; meta: testtype ("stdin" |
    "functional"), func_name, starter_code, public (tests), private (still encoded: decoded when a verdict needs
    them), date, platform, difficulty, split."""

    name = "livecodebench"

    def __init__(self, source: str = "v5", path: str | None = None, start_date: str | None = None,
                 end_date: str | None = None, test_from: str = "2025-02-01", feedback_tests: str = "half",
                 timeout_s: float = 6.0, workers: int | None = None, system_prompt: str | None = None):
        if source not in SOURCES:
            raise ValueError(f"task.source: unknown {source!r}; known: {', '.join(SOURCES)}")
        if source == "upstream" and not path:
            raise ValueError("task.path: required with source 'upstream' (a release .jsonl file or its folder)")
        for name, value in (("start_date", start_date), ("end_date", end_date), ("test_from", test_from)):
            if value is not None and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", str(value)):
                raise ValueError(f"task.{name}: got {value!r}; must be a date YYYY-MM-DD or None")
        if feedback_tests not in FEEDBACK_TESTS:
            raise ValueError(f"task.feedback_tests: unknown {feedback_tests!r}; known: {', '.join(FEEDBACK_TESTS)}")
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or timeout_s <= 0:
            raise ValueError(f"task.timeout_s: got {timeout_s!r}; must be a number > 0")
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise ValueError(f"task.workers: got {workers!r}; must be an integer >= 1 or None (all cores)")
        self.source, self.path, self.start_date, self.end_date = source, path, start_date, end_date
        self.test_from, self.feedback_tests, self.timeout_s = test_from, feedback_tests, float(timeout_s)
        self.workers, self.system_prompt = workers or default_workers(), system_prompt
        self._problems: dict[str, list[Problem]] | None = None

    def problems(self, split: str, n: int | None = None, seed: int = 0) -> list[Problem]:
        check_split(split)
        return sample_pool(self._load()[split], "livecodebench", split, n, seed)

    def tests_for(self, problem: Problem) -> list[dict]:
        """The tests a verdict uses: half the public ones for training problems (feedback_tests="half"), else all."""
        meta = problem.meta
        if meta["split"] == "train" and self.feedback_tests == "half":
            tests = meta["public"][:math.ceil(len(meta["public"]) / 2)]
        else:
            tests = meta["public"] + decode_private_tests(meta["private"])
        if not tests:  # zero tests would pass every program ("Accepted: all 0 tests passed.")
            raise ValueError(f"task: problem {problem.id} has no tests to verify with (feedback_tests="
                             f"{self.feedback_tests!r}); use feedback_tests 'all' or a problem with public tests")
        return tests

    def verify(self, problem: Problem, completion: str) -> Verdict:
        return self.verify_batch([problem], [completion])[0]

    def verify_batch(self, problems: list[Problem], completions: list[str]) -> list[Verdict]:
        if len(problems) != len(completions):
            raise ValueError(f"completions: got {len(completions)} for {len(problems)} problems; must be equal")
        jobs, plans, tests_of = [], [], {}
        for problem, completion in zip(problems, completions):
            functional = problem.meta["testtype"] == "functional"
            code = extract_code(completion, wants="class Solution" if functional else None)
            if problem.id not in tests_of:  # once per problem of the batch: its G rollouts share the tests
                tests_of[problem.id] = self.tests_for(problem)
            tests = tests_of[problem.id]
            first = len(jobs)
            if functional:
                args = [[json.loads(line) for line in t["input"].split("\n") if line.strip()] for t in tests]
                wall = min(60.0, self.timeout_s * (1 + len(tests) / 4))
                jobs.append(functional_job(FUNCTIONAL_HEADER + code, problem.meta["func_name"], args,
                                           Limits(wall_s=wall, cpu_s=math.ceil(wall)), class_name="Solution"))
            else:  # one process per test: the program reads the real stdin, as on a judge
                limits = Limits(wall_s=self.timeout_s, cpu_s=math.ceil(self.timeout_s))
                jobs += [SandboxJob(code, stdin=t["input"], limits=limits) for t in tests]
            plans.append((code, tests, functional, first, len(jobs)))
        results = run_programs(jobs, self.workers)
        verdicts = []
        for code, tests, functional, first, last in plans:
            if functional:
                expected = [json.loads(t["output"]) for t in tests]
                shown = [cut(t["input"].replace("\n", ", ")) for t in tests]
                run = grade_functional(results[first], expected, shown, partial(values_equal, loose_sequences=True))
            else:
                run = grade_stdio(results[first:last], [t["input"] for t in tests], [t["output"] for t in tests])
            verdicts.append(code_verdict(run, code, code_found=bool(code.strip())))
        return verdicts

    def _load(self) -> dict[str, list[Problem]]:
        if self._problems is None:
            if self.source == "v5":
                rows = {split: load_v5(split) for split in ("train", "test")}
            else:
                loaded = load_upstream(self.path, self.start_date, self.end_date)
                rows = {"train": [r for r in loaded if r["date"] < self.test_from],
                        "test": [r for r in loaded if r["date"] >= self.test_from]}
            self._problems = {split: [self._make_problem(split, r) for r in rows[split]] for split in rows}
        return self._problems

    def _make_problem(self, split: str, row: dict) -> Problem:
        functional = bool(row["starter_code"].strip()) or any(t["testtype"] == "functional" for t in row["public"])
        if functional and not row["func_name"]:
            row["func_name"] = method_name(row["starter_code"])
        if functional and not row["func_name"]:
            raise ValueError(f"metadata.func_name: missing for functional problem {row['id']}")
        instruction = (FUNCTIONAL_INSTRUCTION.format(starter=row["starter_code"].strip()) if functional
                       else STDIN_INSTRUCTION)
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        messages.append({"role": "user", "content": f"{row['question'].strip()}\n\n{instruction}"})
        meta = {"testtype": "functional" if functional else "stdin", "func_name": row["func_name"],
                "starter_code": row["starter_code"], "public": row["public"], "private": row["private"],
                "date": row["date"], "platform": row["platform"], "difficulty": row["difficulty"], "split": split,
                "question_hash": hashlib.sha256(row["question"].encode()).hexdigest()[:16]}
        return Problem(id=row["id"], prompt=messages, answer="", meta=meta)
