"""What every notebook does: train (or load) runs, evaluate them and the base model with caching, and state
conclusions from the numbers. Evaluations are stored next to the run (eval.json) or, for the base model, in
<runs_dir>/base-evals/, keyed by what determines them, so a notebook rerun recomputes nothing that finished.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from scpo_lab.config import TrainConfig, eval_settings
from scpo_lab.evaluation import EvalResult, evaluate
from scpo_lab.runs import config_hash, default_runs_dir
from scpo_lab.tasks import get_task
from scpo_lab.trainer import Run, policy_for, train

log = logging.getLogger("scpo_lab")


def _eval_key(config: TrainConfig, settings: dict) -> dict:
    return {"model": config.model.name, "task": config.task.name, "task_options": config.task.options,
            "max_new_tokens": config.max_new_tokens, "temperature": config.temperature, **settings}


def _from_dict(d: dict) -> EvalResult:
    return EvalResult(**d)


def evaluate_base(config: TrainConfig, settings: dict | None = None, policy=None) -> EvalResult:
    """The base model (adapter disabled) on the config's task; cached in <runs_dir>/base-evals/<hash>.json."""
    settings = settings or {}
    key = _eval_key(config, settings)
    path = default_runs_dir() if config.runs_dir is None else Path(config.runs_dir)
    path = path / "base-evals" / f"{config_hash(key)}.json"
    if path.is_file():
        return _from_dict(json.loads(path.read_text())["result"])
    policy = policy or policy_for(config)
    with policy.reference():
        result = _evaluate(policy, config, settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"key": key, "result": result.to_dict()}))
    return result


def _evaluate(policy, config: TrainConfig, settings: dict) -> EvalResult:
    task = get_task(config.task.name, **config.task.options)
    return evaluate(policy, task, max_new_tokens=config.max_new_tokens, temperature=config.temperature, **settings)


def evaluate_run(run: Run, settings: dict | None = None, policy=None) -> EvalResult:
    """The run's final adapter on held-out problems; cached in the run folder's eval.json."""
    settings = settings or {}
    key = _eval_key(run.config, settings)
    for record in run.dir.read_eval():
        if record.get("key") == key:
            return _from_dict(record["result"])
    policy = run.load_policy(policy)
    result = _evaluate(policy, run.config, settings)
    run.dir.add_eval({"key": key, "result": result.to_dict()})
    return result


@dataclass
class Experiment:
    """Several configs trained and evaluated the same way; `metrics` is one DataFrame over all runs."""

    runs: dict[str, Run]
    evals: dict[str, EvalResult]

    @property
    def metrics(self) -> pd.DataFrame:
        frames = []
        for label, run in self.runs.items():
            df = run.metrics.copy()
            df["label"], df["method"], df["seed"], df["run"] = label, run.config.method, run.config.seed, run.path.name
            frames.append(df)
        return pd.concat(frames, ignore_index=True)

    def eval_table(self) -> pd.DataFrame:
        return pd.DataFrame([{"policy": label, "pass@1": r.pass_at_1, "ci_low": r.ci_low, "ci_high": r.ci_high,
                              "problems": r.n_problems, "samples": r.n_samples, "mean_length": r.mean_length}
                             for label, r in self.evals.items()])


def run_experiment(configs: dict[str, TrainConfig], profile: str, *, include_base: bool = True,
                   progress: bool = True) -> Experiment:
    """Train (or load) each config, evaluate the base model once and every final adapter on the same problems.
    One policy is loaded (lazily, only when something must be computed) and shared: each run resets its LoRA
    adapter before training, evaluation loads the run's adapter into it."""
    settings = eval_settings(profile)
    shared: dict = {}

    def policy():
        if "policy" not in shared:
            shared["policy"] = policy_for(next(iter(configs.values())))
        return shared["policy"]

    runs, evals = {}, {}
    if include_base:
        evals["base"] = evaluate_base(next(iter(configs.values())), settings, policy=_Lazy(policy))
    for label, config in configs.items():
        runs[label] = train(config, _Lazy(policy), progress=progress)
        evals[label] = evaluate_run(runs[label], settings, policy=_Lazy(policy))
    return Experiment(runs=runs, evals=evals)


class _Lazy:
    """Stands for a policy that is loaded on first attribute access (cached runs never load the model)."""

    def __init__(self, factory):
        self._factory = factory

    def __getattr__(self, name):
        return getattr(self._factory(), name)


def compare(a: EvalResult, b: EvalResult, name_a: str, name_b: str) -> str:
    """One sentence: does `a` beat `b` by more than the intervals (non-overlapping 95% intervals)?"""
    diff = a.pass_at_1 - b.pass_at_1
    text = (f"{name_a} pass@1 {a.pass_at_1:.3f} [{a.ci_low:.3f}, {a.ci_high:.3f}] vs {name_b} "
            f"{b.pass_at_1:.3f} [{b.ci_low:.3f}, {b.ci_high:.3f}] (difference {diff:+.3f}): ")
    if a.ci_low > b.ci_high:
        return text + f"{name_a} is better, beyond both 95% intervals."
    if a.ci_high < b.ci_low:
        return text + f"{name_a} is worse, beyond both 95% intervals."
    return text + "the intervals overlap, so this evaluation does not separate them."
