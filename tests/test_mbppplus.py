"""MBPP+: data, split, inputs shaped like the example call, expected outputs from the canonical solutions
(cached), grading and feedback through the sandbox."""

import json
import time

import pytest

from scpo_lab.tasks import get_task
from scpo_lab.tasks.mbppplus import DATA_DIR, MBPPPlusTask, conform, example_templates


@pytest.fixture
def task(tmp_path, monkeypatch):
    monkeypatch.setenv("SCPO_LAB_CACHE", str(tmp_path / "cache"))  # expected outputs computed afresh
    return MBPPPlusTask(workers=2)


def by_id(task, task_id):
    return next(p for split in ("train", "test") for p in task.problems(split) if p.id == task_id)


def fenced(code):
    return f"Here is my solution.\n```python\n{code}\n```\nIt works because ..."


def test_split_is_disjoint_deterministic_and_complete():
    task = MBPPPlusTask()
    train, test = task.problems("train"), task.problems("test")
    assert len(train) + len(test) == 378 and not {p.id for p in train} & {p.id for p in test}
    assert [p.id for p in MBPPPlusTask().problems("test")] == [p.id for p in test]
    assert [p.id for p in task.problems("train", n=5, seed=3)] == [p.id for p in task.problems("train", n=5, seed=3)]
    assert len({p.id for p in task.problems("train", n=20, seed=1)}) == 20


def test_prompt_has_task_example_and_instruction():
    problem = by_id(MBPPPlusTask(), "Mbpp/2")
    text = problem.prompt[-1]["content"]
    assert "shared elements" in text and "assert" in text and "similar_elements" in text and "```python" in text
    assert '"""' not in text


def test_vendored_data_has_provenance_and_license():
    assert {"MbppPlus-v0.2.0.jsonl", "PROVENANCE.md", "LICENSE"} <= {p.name for p in DATA_DIR.iterdir()}
    assert "Apache License" in (DATA_DIR / "LICENSE").read_text()


def test_inputs_take_the_example_call_container_types():
    templates = example_templates("assert f((1, 2), [(3, 'a')], {1: [2]}) == 3", "f")
    assert templates == [(1, 2), [(3, "a")], {1: [2]}]
    assert conform([5, 6, 7], templates[0]) == (5, 6, 7)
    assert conform([[4, "b"], [5, "c"]], templates[1]) == [(4, "b"), (5, "c")]
    assert conform(3, templates[0]) == 3
    assert conform(["0", "1j"], (0, 1j)) == (0, 1j)  # complex numbers are stored as text
    nested = (4, 5, (7, 6, (2, 4)), 6, 8)  # inputs nest deeper, and elsewhere, than the example
    assert conform([1, [2, [3, [4, [5]]]], 6, [7]], nested) == (1, (2, (3, (4, (5,)))), 6, (7,))
    assert example_templates("assert g(x) == 1", "f") is None


def test_canonical_passes_and_wrong_solutions_fail_with_feedback(task):
    problem = by_id(task, "Mbpp/4")  # heap_queue_largest(nums, n): the n largest, descending
    good, wrong, crash = task.verify_batch([problem] * 3, [
        fenced(problem.answer),
        fenced("def heap_queue_largest(nums, n):\n    return sorted(nums)[:n]\n"),
        fenced("def heap_queue_largest(nums, n):\n    return nums[n * 1000]\n"),
    ])
    assert good.passed and good.reward == 1.0 and good.details["fraction_passed"] == 1.0
    assert not wrong.passed and wrong.reward == 0.0 and 0 <= wrong.details["fraction_passed"] < 1
    assert wrong.feedback.startswith("Wrong Answer") and "Input: heap_queue_largest(" in wrong.feedback
    assert "Expected:" in wrong.feedback and "Output:" in wrong.feedback
    assert crash.feedback.startswith("Runtime Error") and "IndexError" in crash.feedback
    assert wrong.extracted.startswith("def heap_queue_largest")


def test_float_tolerance_and_set_comparison(task):
    sphere = by_id(task, "Mbpp/82")  # volume_sphere, atol 1e-4
    close = "import math\ndef volume_sphere(r):\n    return 4 / 3 * math.pi * r ** 3 * (1 + 1e-9)\n"
    far = "import math\ndef volume_sphere(r):\n    return 4 / 3 * 3.14 * r ** 3\n"
    shared = by_id(task, "Mbpp/2")  # the example compares set(similar_elements(...)): order does not count
    reordered = "def similar_elements(a, b):\n    return tuple(sorted(set(a) & set(b), key=repr, reverse=True))\n"
    v_close, v_far, v_set = task.verify_batch([sphere, sphere, shared], [fenced(close), fenced(far), reordered])
    assert v_close.passed and not v_far.passed and v_set.passed


def test_no_code_syntax_error_timeout_and_missing_function(task):
    problem = by_id(task, "Mbpp/4")
    texts = ["I don't know.", fenced("def heap_queue_largest(nums, n:\n"),
             fenced("def heap_queue_largest(nums, n):\n    while True:\n        pass\n"),
             fenced("def other(nums, n):\n    return nums\n")]
    start = time.monotonic()
    empty, syntax, loop, missing = task.verify_batch([problem] * 4, texts)
    assert time.monotonic() - start < 30
    assert not any(v.passed for v in (empty, syntax, loop, missing))
    assert syntax.details["status"] == "syntax_error" and syntax.feedback.startswith("Compile Error")
    assert loop.details["status"] == "timeout" and loop.feedback.startswith("Time Limit Exceeded")
    assert "does not define `heap_queue_largest`" in missing.feedback
    assert "Error" in empty.feedback


def test_expected_outputs_are_cached(task, tmp_path):
    problem = by_id(task, "Mbpp/4")
    task.verify(problem, fenced(problem.answer))
    files = list((tmp_path / "cache" / "mbppplus").rglob("Mbpp_4.json"))
    assert len(files) == 1
    data = json.loads(files[0].read_text())
    assert len(data["outputs"]) == len(problem.meta["base_input"]) + len(problem.meta["plus_input"])
    assert task.verify(problem, fenced(problem.answer)).passed  # read back from the cache


def test_base_tests_only(tmp_path, monkeypatch):
    monkeypatch.setenv("SCPO_LAB_CACHE", str(tmp_path / "cache"))
    task = get_task("mbppplus", tests="base")
    problem = by_id(task, "Mbpp/4")
    verdict = task.verify(problem, fenced(problem.answer))
    assert verdict.passed and verdict.details["tests_total"] == len(problem.meta["base_input"])


def test_bad_options():
    with pytest.raises(ValueError, match="^task.tests: unknown 'all'; known: plus, base$"):
        MBPPPlusTask(tests="all")
    with pytest.raises(ValueError, match="^task.workers: "):
        MBPPPlusTask(workers=0)
    with pytest.raises(ValueError, match="^completions: "):
        MBPPPlusTask().verify_batch([], ["x"])


def test_hostile_programs_as_completions_get_failed_verdicts(task, tmp_path, monkeypatch):
    from test_sandbox import hostile_programs

    monkeypatch.setenv("SCPO_TEST_SECRET", "hunter2")
    victim = tmp_path / "victim.txt"
    victim.write_text("original")
    problem = by_id(task, "Mbpp/4")
    programs = hostile_programs(victim, "SCPO_TEST_SECRET")
    verdicts = task.verify_batch([problem] * len(programs), [fenced(code) for code, _ in programs.values()])
    for name, verdict in zip(programs, verdicts):
        assert not verdict.passed and verdict.reward == 0.0, name
        assert verdict.details["status"] != "passed" and "hunter2" not in verdict.feedback, name
    assert victim.read_text() == "original"


@pytest.mark.slow
def test_all_canonical_solutions_pass_their_own_tests(task):
    problems = task.problems("train") + task.problems("test")
    start = time.monotonic()
    verdicts = task.verify_batch(problems, [fenced(p.answer) for p in problems])
    failed = [(p.id, v.feedback[:200]) for p, v in zip(problems, verdicts) if not v.passed]
    print(f"\n{len(problems) - len(failed)}/{len(problems)} canonical solutions pass "
          f"(expected outputs + verification: {time.monotonic() - start:.0f} s)")
    assert not failed, failed
