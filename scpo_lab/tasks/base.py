"""Problem, Verdict and the Task interface (docs/interfaces.md), plus the checks every task shares."""

import abc
import random
from dataclasses import dataclass, field

from scpo_lab.tasks.answers import answers_match, canonical_number, extract_final_answer

SPLITS = ("train", "test")


@dataclass(frozen=True)
class Problem:
    id: str                      # stable, unique within a task+split
    prompt: list[dict]           # chat messages, e.g. [{"role": "user", "content": "..."}]
    answer: str                  # ground truth, canonical string form ("42", "-3", "0.5")
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    reward: float                # 1.0 pass / 0.0 fail for binary tasks
    passed: bool
    feedback: str                # privileged context for the self-teacher: names the outcome; what every rollout
                                 # of the problem shares comes first ("The expected answer is 42. Your final ...")
    extracted: str | None = None # the final answer parsed from the completion (None if none); code tasks: the code
    details: dict = field(default_factory=dict, compare=False)  # task-specific extras, e.g. code tasks'
                                 # {"status", "tests_passed", "tests_total", "fraction_passed"}


class Task(abc.ABC):
    name: str
    # bumped when the problems a task's options yield change (a new split rule, new data): part of the run identity
    # and of the evaluation keys where set (tasks.identity), so runs and evaluations of the old problems are not
    # loaded as if they were of the new ones; None: never changed, so cached runs keep their hashes
    data_revision: int | None = None

    @abc.abstractmethod
    def problems(self, split: str, n: int | None = None, seed: int = 0) -> list[Problem]:
        """Problems of `split` ("train"/"test"); n=None -> all; `seed` picks the sample. Splits never overlap."""

    @abc.abstractmethod
    def verify(self, problem: Problem, completion: str) -> Verdict:
        """Score one completion of `problem`."""

    def verify_batch(self, problems: list[Problem], completions: list[str]) -> list[Verdict]:
        """Score completions[i] of problems[i]. Code tasks override it to run the programs in parallel."""
        if len(problems) != len(completions):
            raise ValueError(f"completions: got {len(completions)} for {len(problems)} problems; must be equal")
        return [self.verify(p, c) for p, c in zip(problems, completions)]


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split: unknown {split!r}; known: {', '.join(SPLITS)}")


def check_count(n, field_name: str = "n") -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"{field_name}: must be an integer >= 0 (got {n!r})")


def verify_final_answer(problem: Problem, completion: str) -> Verdict:
    """Binary reward for numeric tasks: the completion's final answer (answers.py) against problem.answer."""
    expected = problem.answer
    if not isinstance(expected, str) or canonical_number(expected) is None:  # else every completion silently fails
        raise ValueError(f"answer: problem {problem.id!r} has answer {expected!r}; numeric tasks need a number as a "
                         "string, e.g. '42', '-3', '0.5'")
    extracted = extract_final_answer(completion)
    if extracted is None:
        feedback = f"The expected answer is {expected}. No final answer was found in your response."
        return Verdict(0.0, False, feedback, None)
    if answers_match(extracted, expected):
        return Verdict(1.0, True, f"The expected answer is {expected}. Your final answer {extracted} is correct.", extracted)
    return Verdict(0.0, False, f"The expected answer is {expected}. Your final answer {extracted} is wrong.", extracted)


def sample_pool(pool: list, task_name: str, split: str, n, seed: int) -> list:
    """All of a fixed split (n=None) or n of them drawn with a seed of their own (task, split, seed)."""
    if n is None:
        return list(pool)
    check_count(n)
    if n > len(pool):
        raise ValueError(f"n: {n} exceeds the {len(pool)} {task_name} {split} problems")
    return random.Random(f"{task_name}:{split}:{seed}").sample(pool, n)
