"""MBPP+ (EvalPlus v0.2.0): 378 Python function-writing problems with base (MBPP) and plus (EvalPlus) tests.

Expected outputs are not in the data: as EvalPlus does, they come from running each task's canonical_solution on
its inputs, in the sandbox, once; they are cached under the lab cache (`$SCPO_LAB_CACHE/mbppplus/<key>/`, one
file per task, keyed by the data file's hash and the harness version). A candidate passes when every test's
output equals the expected one (floats within the task's atol, at least 1e-6); reward is binary (all pass), and
Verdict.details records the fraction passed.

Inputs are stored as JSON, which turns tuples into lists. Each argument is given back the container types of
the task's own example call (the `assertion` field: `assert f((1, 2), [3])` -> a tuple and a list); the canonical
solution sees the same inputs, so expected and actual outputs always come from identical arguments.
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import os
import re
import tempfile
from functools import partial
from pathlib import Path

from scpo_lab import sandbox_codec
from scpo_lab.sandbox import Limits, default_workers, run_programs
from scpo_lab.tasks.base import Problem, Task, Verdict, check_split, sample_pool
from scpo_lab.tasks.code import (as_set, code_verdict, cut, extract_code, functional_job, grade_functional,
                                 values_equal)

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "mbppplus"
DATA_FILE = DATA_DIR / "MbppPlus-v0.2.0.jsonl"
TEST_SETS = ("plus", "base")   # plus = base + plus inputs (the MBPP+ score); base = the original MBPP tests
TEST_ONE_IN = 3                # a task is in the test split iff sha256(task_id) % 3 == 0 (~126 of 378)
HARNESS_VERSION = "3"          # bump when the harness or input conversion changes: expected outputs are recomputed
CANONICAL_LIMITS = Limits(wall_s=120.0, cpu_s=120, memory_mb=2048)
INSTRUCTION = ("Write a Python function `{entry_point}` that solves this task. Your code must pass the example "
               "assert above. Reply with the complete code (imports included) in one ```python code block.")


# ---------------------------------------------------------------------------------------------------------------
# inputs

def example_templates(assertion: str, entry_point: str) -> list | None:
    """The literal arguments of the first call to `entry_point` in the task's example assert (None if unreadable)."""
    try:
        tree = ast.parse(assertion)
    except SyntaxError:
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == entry_point:
            templates = []
            for arg in node.args:
                try:
                    templates.append(ast.literal_eval(arg))
                except (ValueError, SyntaxError, TypeError):
                    templates.append(None)  # not a literal (e.g. a variable): leave that argument as JSON gives it
            return templates
    return None


_CONTAINERS = (tuple, list, set)


def _item_template(items: list, i: int, value, template):
    """Which part of the template shapes value[i]: the item at the same place if it is of the same kind
    (container or not); for a container, else the template's first container item, else the template itself
    (nested inputs often go deeper than the example: ((1, (2, 3)),) shapes [1, [2, [3, [4]]]] all the way)."""
    if i < len(items) and isinstance(value, list) == isinstance(items[i], _CONTAINERS):
        return items[i]
    if isinstance(value, list):
        return next((t for t in items if isinstance(t, _CONTAINERS)), template)
    return items[min(i, len(items) - 1)] if items else None


def conform(value, template):
    """`value` (from JSON) with the container types of `template` (a literal from the example call)."""
    if isinstance(value, list) and isinstance(template, _CONTAINERS):
        items = list(template)
        shaped = [conform(v, _item_template(items, i, v, template)) for i, v in enumerate(value)]
        if isinstance(template, tuple):
            return tuple(shaped)
        if isinstance(template, set):
            try:
                return set(shaped)
            except TypeError:
                return shaped
        return shaped
    if isinstance(value, str) and isinstance(template, (int, float, complex)) and not isinstance(template, bool):
        for number in (int, float, complex):  # numbers JSON cannot hold are stored as text ("1j", "1e-100j")
            try:
                return number(value)
            except ValueError:
                pass
    if isinstance(value, dict) and isinstance(template, dict) and template:
        first = next(iter(template.values()))
        return {k: conform(v, first) for k, v in value.items()}
    return value


def task_inputs(meta: dict, tests: str) -> list[list]:
    raw = meta["base_input"] + (meta["plus_input"] if tests == "plus" else [])
    templates = meta["templates"] or []
    return [[conform(arg, templates[j] if j < len(templates) else None) for j, arg in enumerate(args)]
            for args in raw]


def show_call(entry_point: str, args: list) -> str:
    return cut(f"{entry_point}({', '.join(repr(a) for a in args)})")


# ---------------------------------------------------------------------------------------------------------------
# expected outputs (cached)

def _cache_dir() -> Path:
    from scpo_lab.paths import cache_root

    digest = hashlib.sha256(DATA_FILE.read_bytes()).hexdigest()[:12]
    return cache_root() / "mbppplus" / f"{digest}-h{HARNESS_VERSION}"


def _cache_file(task_id: str) -> Path:
    return _cache_dir() / (task_id.replace("/", "_") + ".json")


def _write_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)  # atomic: a reader sees the old file or the new one, never half of one


def expected_outputs(problems: list[Problem], workers: int | None = None) -> dict[str, dict]:
    """task_id -> {"outputs": [encoded value | None if the canonical solution raised], "wall_s"}; computed
    in the sandbox for the tasks not cached yet, all tests (base + plus) at once."""
    found, missing = {}, []
    for p in problems:
        path = _cache_file(p.id)
        if p.id in found:
            continue
        if path.is_file():
            found[p.id] = json.loads(path.read_text())
        elif p not in missing:
            missing.append(p)
    jobs = [functional_job(p.answer, p.meta["entry_point"], task_inputs(p.meta, "plus"), CANONICAL_LIMITS)
            for p in missing]
    for p, result in zip(missing, run_programs(jobs, workers)):
        n = len(p.meta["base_input"]) + len(p.meta["plus_input"])
        by_index = {r["i"]: r for r in result.reports if isinstance(r.get("i"), int)}
        outputs = [by_index.get(i, {}).get("out") for i in range(n)]
        if all(o is None for o in outputs):
            raise RuntimeError(f"mbppplus: canonical solution of {p.id} did not run ({result.status}): {result.trace}")
        data = {"task_id": p.id, "outputs": outputs, "wall_s": result.wall_s}
        _write_atomic(_cache_file(p.id), data)
        found[p.id] = data
    return found


# ---------------------------------------------------------------------------------------------------------------
# the task

def split_of(task_id: str) -> str:
    digest = hashlib.sha256(task_id.encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") % TEST_ONE_IN == 0 else "train"


def prompt_text(row: dict) -> str:
    text = row["prompt"].strip()
    text = re.sub(r'^"""|"""$', "", text).strip()  # the task is a docstring: drop its quotes
    return f"{text}\n\n{INSTRUCTION.format(entry_point=row['entry_point'])}"


class MBPPPlusTask(Task):
    """MBPP+ problems, split by a hash of task_id (train ~2/3, test ~1/3). Problem id = task_id ("Mbpp/2"),
    answer = the canonical solution; meta: entry_point, atol, base_input, plus_input, templates, set_compare."""

    name = "mbppplus"

    def __init__(self, tests: str = "plus", workers: int | None = None, system_prompt: str | None = None):
        if tests not in TEST_SETS:
            raise ValueError(f"task.tests: unknown {tests!r}; known: {', '.join(TEST_SETS)}")
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise ValueError(f"task.workers: got {workers!r}; must be an integer >= 1 or None (all cores)")
        if system_prompt is not None and not isinstance(system_prompt, str):
            raise ValueError(f"task.system_prompt: must be a string or None (got {type(system_prompt).__name__})")
        self.tests, self.workers, self.system_prompt = tests, workers or default_workers(), system_prompt
        self._problems: dict[str, list[Problem]] | None = None

    def problems(self, split: str, n: int | None = None, seed: int = 0) -> list[Problem]:
        check_split(split)
        return sample_pool(self._load()[split], "mbppplus", split, n, seed)

    def verify(self, problem: Problem, completion: str) -> Verdict:
        return self.verify_batch([problem], [completion])[0]

    def verify_batch(self, problems: list[Problem], completions: list[str]) -> list[Verdict]:
        if len(problems) != len(completions):
            raise ValueError(f"completions: got {len(completions)} for {len(problems)} problems; must be equal")
        expected = expected_outputs(problems, self.workers)
        jobs, plans = [], []
        for problem, completion in zip(problems, completions):
            meta = problem.meta
            code = extract_code(completion, wants=f"def {meta['entry_point']}")
            inputs = task_inputs(meta, self.tests)
            outputs = expected[problem.id]["outputs"][:len(inputs)]
            keep = [i for i, o in enumerate(outputs) if o is not None]  # inputs the canonical solution rejects
            wall = 4.0 + 3.0 * expected[problem.id]["wall_s"]  # generous: the canonical run is the yardstick
            # the reference's memory limit: a correct candidate never fails a limit its reference passed
            limits = Limits(wall_s=wall, cpu_s=math.ceil(wall), memory_mb=CANONICAL_LIMITS.memory_mb)
            jobs.append(functional_job(code, meta["entry_point"], [inputs[i] for i in keep], limits))
            plans.append((problem, code, [inputs[i] for i in keep], [outputs[i] for i in keep]))
        verdicts = []
        for (problem, code, inputs, outputs), result in zip(plans, run_programs(jobs, self.workers)):
            meta = problem.meta
            equal = partial(_equal, atol=float(meta["atol"] or 0), set_compare=meta["set_compare"])
            shown = [show_call(meta["entry_point"], args) for args in inputs]
            run = grade_functional(result, [sandbox_codec.decode(o) for o in outputs], shown, equal)
            verdicts.append(code_verdict(run, code, code_found=bool(code.strip())))
        return verdicts

    def _load(self) -> dict[str, list[Problem]]:
        if self._problems is None:
            self._problems = {"train": [], "test": []}
            with open(DATA_FILE, encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        row = json.loads(line)
                        self._problems[split_of(row["task_id"])].append(self._make_problem(row))
        return self._problems

    def _make_problem(self, row: dict) -> Problem:
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        messages.append({"role": "user", "content": prompt_text(row)})
        entry = row["entry_point"]
        # plus_input is {} (not []) for the few tasks EvalPlus added no inputs to
        meta = {"entry_point": entry, "atol": row["atol"], "base_input": row["base_input"],
                "plus_input": row["plus_input"] or [], "templates": example_templates(row["assertion"], entry),
                # the task's own example compares set(f(x)) == set(...): order and duplicates do not count
                "set_compare": f"set({entry}(" in (row["prompt"] + row["assertion"]).replace(" ", "")}
        return Problem(id=row["task_id"], prompt=messages, answer=row["canonical_solution"], meta=meta)


def _equal(expected, actual, atol: float, set_compare: bool) -> bool:
    if set_compare:
        expected, actual = as_set(expected), as_set(actual)
    return values_equal(expected, actual, atol)
