"""Task registry: get_task("arithmetic", digits=2) -> a Task (docs/interfaces.md)."""

import inspect

from scpo_lab.tasks.arithmetic import ArithmeticTask
from scpo_lab.tasks.base import Problem, Task, Verdict
from scpo_lab.tasks.gsm8k import GSM8KTask
from scpo_lab.tasks.livecodebench import LiveCodeBenchTask
from scpo_lab.tasks.mbppplus import MBPPPlusTask

TASKS: dict[str, type[Task]] = {"arithmetic": ArithmeticTask, "gsm8k": GSM8KTask, "mbppplus": MBPPPlusTask,
                               "livecodebench": LiveCodeBenchTask}
TASK_NAMES: tuple[str, ...] = tuple(TASKS)


def task_options(name: str) -> tuple[str, ...]:
    """The keyword options a task accepts (its constructor's parameters)."""
    return tuple(p for p in inspect.signature(TASKS[name].__init__).parameters if p != "self")


IDENTITY_KEY = "task_data_revision"


def identity(name: str) -> dict:
    """The run-record and evaluation-key entry of a task's data revision: {} where it never changed (Task.data_revision
    None, so those runs keep their hashes), else {"task_data_revision": n}."""
    revision = TASKS[name].data_revision if name in TASKS else None
    return {} if revision is None else {IDENTITY_KEY: revision}


def get_task(name: str, **options) -> Task:
    if name not in TASKS:
        raise ValueError(f"task.name: unknown {name!r}; known: {', '.join(TASK_NAMES)}")
    allowed = task_options(name)
    for option in options:  # checked here so a typo names the allowed options instead of a TypeError
        if option not in allowed:
            raise ValueError(f"task.{option}: unknown option for {name}; allowed: {', '.join(allowed)}")
    return TASKS[name](**options)


__all__ = ["Problem", "Verdict", "Task", "ArithmeticTask", "GSM8KTask", "MBPPPlusTask", "LiveCodeBenchTask",
           "TASK_NAMES", "get_task", "task_options", "identity", "IDENTITY_KEY"]
