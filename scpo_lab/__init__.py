"""scpo_lab: Self-Critic Policy Optimization — RL post-training of LLMs on verifiable tasks, with a self-teacher pass.

The public API (see README):
    load_policy, tiny_policy            models
    get_task, TASK_NAMES                tasks (Problem, Verdict)
    make_config, load_config            configuration
    train                               the two-pass loop (cached by config hash, resumable)
    evaluate                            pass@1 / pass@k with bootstrap intervals
    load_runs, load_samples, load_eval  run folders as DataFrames
"""

__version__ = "0.1.0"

from scpo_lab import _quiet  # noqa: E402 - first: its filters must exist before anything imports peft

_quiet.install()

from scpo_lab.config import (ConfigError, TrainConfig, collapse_eval, collapse_sizes, comparison_settings, eval_settings,  # noqa: E402
                             load_config, make_config)
from scpo_lab.evaluation import EvalResult, evaluate  # noqa: E402
from scpo_lab.conclusions import (Conclusion, arm_pass_at_k, compare, compute_summary, conclude,  # noqa: E402
                                  cost_table, expected_calibration_error, hacking_summary, paired_comparisons,
                                  phrase_rate_by_step, reasoning_summary, seed_summary)
from scpo_lab.experiment import (ARMS, arm_configs, collapse_experiment, compute_match,  # noqa: E402
                                 compute_matched_configs, compute_matched_grpo, evaluate_base, evaluate_run,
                                 judge_bias_report, run_experiment, sweep_configs, value_calibration)
from scpo_lab.models import LoraConfig, Policy, load_policy, tiny_policy  # noqa: E402
from scpo_lab.runs import load_eval, load_runs, load_samples  # noqa: E402
from scpo_lab.tasks import TASK_NAMES, get_task  # noqa: E402
from scpo_lab.tasks.base import Problem, Verdict  # noqa: E402
from scpo_lab.trainer import Run, train  # noqa: E402

__all__ = ["ARMS", "arm_configs", "arm_pass_at_k", "reasoning_summary", "ConfigError", "EvalResult", "LoraConfig", "Policy", "Problem", "Run", "TASK_NAMES", "TrainConfig",
           "Verdict", "collapse_eval", "collapse_experiment", "collapse_sizes", "compare", "Conclusion", "conclude", "paired_comparisons", "comparison_settings", "compute_match", "compute_matched_configs",
           "compute_matched_grpo", "compute_summary", "cost_table", "hacking_summary",
           "phrase_rate_by_step", "eval_settings", "evaluate", "evaluate_base", "evaluate_run",
           "get_task", "load_config", "load_eval", "load_policy", "load_runs", "load_samples", "make_config",
           "expected_calibration_error", "judge_bias_report", "run_experiment", "seed_summary", "sweep_configs", "tiny_policy", "train", "value_calibration"]
