"""LiveCodeBench: the upstream (release_v6) schema on a small fixture built here, the restricted unpickler,
the vendored v5 subsets, stdin and functional grading, and the half/all split of public tests."""

import base64
import json
import pickle
import zlib

import pytest

from scpo_lab.tasks import get_task
from scpo_lab.tasks.livecodebench import DATA_DIR, LiveCodeBenchTask, decode_private_tests, method_name


def encode_private(tests) -> str:
    """As upstream stores private_test_cases: base64(zlib(pickle(json string)))."""
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(tests)))).decode()


def stdin_tests(pairs):
    return [{"input": i, "output": o, "testtype": "stdin"} for i, o in pairs]


def upstream_row(qid, date, content, public, private, starter="", func_name=None, platform="atcoder"):
    return {"question_title": f"Problem {qid}", "question_content": content, "platform": platform,
            "question_id": qid, "contest_id": "c1", "contest_date": f"{date}T00:00:00", "starter_code": starter,
            "difficulty": "easy", "public_test_cases": json.dumps(public), "private_test_cases": encode_private(private),
            "metadata": json.dumps({"func_name": func_name} if func_name else {})}


TWO_SUM_STARTER = "class Solution:\n    def twoSum(self, nums: List[int], target: int) -> List[int]:\n        "


@pytest.fixture
def fixture_file(tmp_path):
    """Four problems in the release_v6 schema: stdin sum (2025-02), functional twoSum (2025-03), stdin max
    (2024-12, before test_from), one outside the date window (2024-01)."""
    sum_public = stdin_tests([("3\n1 2 3\n", "6\n"), ("1\n-5\n", "-5\n"), ("2\n10 20\n", "30\n"),
                              ("4\n1 1 1 1\n", "4\n")])
    sum_private = stdin_tests([("5\n1 2 3 4 5\n", "15\n"), ("2\n1000000000 1000000000\n", "2000000000\n")])
    two_public = [{"input": "[2, 7, 11, 15]\n9", "output": "[0, 1]", "testtype": "functional"},
                  {"input": "[3, 2, 4]\n6", "output": "[1, 2]", "testtype": "functional"}]
    two_private = [{"input": "[3, 3]\n6", "output": "[0, 1]", "testtype": "functional"}]
    max_public = stdin_tests([("3\n4 9 2\n", "9\n"), ("2\n-1 -2\n", "-1\n")])
    rows = [
        upstream_row("abc400_a", "2025-02-15", "Read N and N integers; print their sum.", sum_public, sum_private),
        upstream_row("3000", "2025-03-01", "Return indices of the two numbers adding up to target.", two_public,
                     two_private, starter=TWO_SUM_STARTER, func_name="twoSum", platform="leetcode"),
        upstream_row("abc390_a", "2024-12-01", "Read N and N integers; print the largest.", max_public, []),
        upstream_row("old_1", "2024-01-01", "Too old.", max_public, []),
    ]
    path = tmp_path / "test6.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def task(fixture_file):
    return LiveCodeBenchTask(source="upstream", path=str(fixture_file), start_date="2024-06-01", workers=2)


SUM_OK = "n = int(input())\nprint(sum(map(int, input().split())))\n"
SUM_WRONG = "n = int(input())\nprint(sum(map(int, input().split())) + 1)\n"
TWO_SUM_OK = ("class Solution:\n    def twoSum(self, nums: List[int], target: int) -> List[int]:\n"
              "        seen = {}\n        for i, x in enumerate(nums):\n            if target - x in seen:\n"
              "                return [seen[target - x], i]\n            seen[x] = i\n")
TWO_SUM_WRONG = "class Solution:\n    def twoSum(self, nums, target):\n        return [0, 1]\n"


def fenced(code):
    return f"Approach: ...\n```python\n{code}```\n"


def test_upstream_loader_dates_split_and_private_tests(task):
    test, train = task.problems("test"), task.problems("train")
    assert {p.id for p in test} == {"lcb-abc400_a", "lcb-3000"} and [p.id for p in train] == ["lcb-abc390_a"]
    by_id = {p.id: p for p in test}
    assert by_id["lcb-abc400_a"].meta["testtype"] == "stdin"
    assert len(task.tests_for(by_id["lcb-abc400_a"])) == 4 + 2  # test split: public + decoded private
    assert by_id["lcb-3000"].meta["testtype"] == "functional" and by_id["lcb-3000"].meta["func_name"] == "twoSum"
    assert "standard input" in by_id["lcb-abc400_a"].prompt[-1]["content"]
    assert "class Solution" in by_id["lcb-3000"].prompt[-1]["content"]


def test_reference_solutions_pass_and_wrong_ones_fail_with_feedback(task):
    p_sum, p_two = sorted(task.problems("test"), key=lambda p: p.meta["testtype"] == "functional")
    ok_sum, bad_sum, ok_two, bad_two = task.verify_batch(
        [p_sum, p_sum, p_two, p_two], [fenced(SUM_OK), fenced(SUM_WRONG), fenced(TWO_SUM_OK), fenced(TWO_SUM_WRONG)])
    assert ok_sum.passed and ok_sum.details["tests_total"] == 6  # evaluation: all public + private tests
    assert ok_two.passed and ok_two.details["tests_total"] == 3
    assert not bad_sum.passed and bad_sum.feedback.startswith("Wrong Answer: 0/6")
    assert "Input: 3\n1 2 3" in bad_sum.feedback and "Expected: 6" in bad_sum.feedback and "Output: 7" in bad_sum.feedback
    assert not bad_two.passed and bad_two.details["tests_passed"] == 2  # [0, 1] is right for 2 of 3
    assert "Input: [3, 2, 4], 6" in bad_two.feedback and "Expected: [1, 2]" in bad_two.feedback
    assert "Output: [0, 1]" in bad_two.feedback


def test_runtime_error_and_timeout_feedback(task):
    p_sum = next(p for p in task.problems("test") if p.meta["testtype"] == "stdin")
    fast = LiveCodeBenchTask(source="upstream", path=task.path, start_date="2024-06-01", timeout_s=1.0, workers=2)
    crash, loop = fast.verify_batch([p_sum, p_sum], [fenced("x = int(input())\nprint(1 // (x - x))\n"),
                                                     fenced("while True:\n    pass\n")])
    assert crash.feedback.startswith("Runtime Error") and "ZeroDivisionError" in crash.feedback
    assert loop.details["status"] == "timeout" and loop.feedback.startswith("Time Limit Exceeded")


def test_training_feedback_uses_half_the_public_tests(fixture_file):
    task = LiveCodeBenchTask(source="upstream", path=str(fixture_file), test_from="2025-03-01")
    train = {p.id: p for p in task.problems("train")}
    p_sum = train["lcb-abc400_a"]  # 4 public tests -> 2 for training feedback
    assert task.tests_for(p_sum) == p_sum.meta["public"][:2]
    all_tests = LiveCodeBenchTask(source="upstream", path=str(fixture_file), test_from="2025-03-01",
                                  feedback_tests="all")
    assert len(all_tests.tests_for(p_sum)) == 6
    verdict = task.verify(p_sum, fenced(SUM_OK))
    assert verdict.passed and verdict.details["tests_total"] == 2


def test_restricted_unpickler_refuses_globals(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os
            return os.system, (f"touch {marker}",)

    blob = base64.b64encode(zlib.compress(pickle.dumps([Evil()]))).decode()
    with pytest.raises(ValueError, match="^private_test_cases: not base64\\+zlib\\+pickle of plain data"):
        decode_private_tests(blob)
    assert not marker.exists()
    with pytest.raises(ValueError, match="^private_test_cases: "):
        decode_private_tests("not base64 at all!")
    plain = stdin_tests([("1\n", "2\n")])
    assert decode_private_tests(encode_private(plain)) == plain
    assert decode_private_tests(json.dumps(plain)) == plain


def test_vendored_v5_subsets():
    assert {"PROVENANCE.md", "LICENSE"} <= {p.name for p in DATA_DIR.iterdir()}
    task = get_task("livecodebench")
    train, test = task.problems("train"), task.problems("test")
    assert (len(train), len(test)) == (580, 279)
    assert sum(p.meta["testtype"] == "functional" for p in test) == 104
    assert all(p.meta["func_name"] for p in train + test if p.meta["testtype"] == "functional")
    assert not {p.meta["question_hash"] for p in train} & {p.meta["question_hash"] for p in test}


def test_v5_problem_wrong_program_gets_public_test_feedback():
    task = get_task("livecodebench", workers=2)
    problem = next(p for p in task.problems("test") if p.meta["testtype"] == "stdin")
    verdict = task.verify(problem, fenced("print('no idea')\n"))
    assert not verdict.passed and verdict.feedback.startswith("Wrong Answer")
    assert problem.meta["public"][0]["input"].strip()[:20] in verdict.feedback


def test_v5_reference_solutions_pass():
    task = get_task("livecodebench", workers=2)
    by_id = {p.id: p for p in task.problems("test")}
    second, smallest = by_id["lcb-v5-test-0"], by_id["lcb-v5-test-249"]  # second largest (stdin); all-ones >= n
    assert (second.meta["testtype"], smallest.meta["testtype"]) == ("stdin", "functional")
    second_ok = "n = int(input())\na = list(map(int, input().split()))\nprint(a.index(sorted(a)[-2]) + 1)\n"
    smallest_ok = ("class Solution:\n    def smallestNumber(self, n: int) -> int:\n        x = 1\n"
                   "        while x < n:\n            x = 2 * x + 1\n        return x\n")
    verdicts = task.verify_batch([second, smallest, smallest], [fenced(second_ok), fenced(smallest_ok),
                                                                fenced(smallest_ok.replace("2 * x + 1", "2 * x"))])
    assert [v.passed for v in verdicts] == [True, True, False]
    assert "Expected: 7" in verdicts[2].feedback and "Output: 8" in verdicts[2].feedback


def test_method_name_and_bad_options():
    assert method_name(TWO_SUM_STARTER) == "twoSum"
    assert method_name("def f(x): pass") is None
    with pytest.raises(ValueError, match="^task.source: unknown 'v7'; known: v5, upstream$"):
        LiveCodeBenchTask(source="v7")
    with pytest.raises(ValueError, match="^task.path: "):
        LiveCodeBenchTask(source="upstream")
    with pytest.raises(ValueError, match="^task.start_date: "):
        LiveCodeBenchTask(start_date="March")
    with pytest.raises(ValueError, match="^task.feedback_tests: unknown 'none'; known: half, all$"):
        LiveCodeBenchTask(feedback_tests="none")
    with pytest.raises(ValueError, match="^task.path: "):
        LiveCodeBenchTask(source="upstream", path="/nonexistent/x.jsonl").problems("test")
