"""Command line: `scpo-lab train --config file.yaml`, `scpo-lab eval ...`, `scpo-lab reports`.

Errors in the configuration print one line (field and allowed values) and exit with status 2 before anything
is loaded or trained.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
from pathlib import Path
from unittest import mock

from scpo_lab.config import ConfigError


def _parse_overrides(pairs: list[str]) -> dict:
    """`key=value` pairs (dotted keys for sections); values are parsed as YAML scalars (numbers, bools, ...)."""
    from scpo_lab.config import yaml_load

    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set: expected key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key] = yaml_load(value)
    return out


def cmd_train(args) -> int:
    from scpo_lab.config import load_config, make_config

    overrides = _parse_overrides(args.set or [])
    config = load_config(args.config).replace(**overrides).validate() if args.config else \
        make_config(args.profile, **overrides)
    from scpo_lab.trainer import train

    run = train(config, progress=not args.no_progress)
    from scpo_lab.distributed import world

    if not world().is_main:  # several processes (accelerate launch): rank 0 reports and evaluates
        return 0
    print(f"run folder: {run.path}")
    if args.eval_problems:
        result = _evaluate_run(run, config, args.eval_problems, args.eval_samples)
        print(result.summary())
        try:
            run.dir.add_eval(result.to_dict())
        except OSError as err:  # a read-only run folder: the evaluation is kept elsewhere, never lost
            kept = _save_elsewhere(result.to_dict(), f"eval-{run.dir.name}.json")
            raise ConfigError(f"{run.dir.eval_path}: cannot write ({err.strerror or err}); the result was saved to "
                              f"{kept}") from None
    return 0


def _save_elsewhere(record: dict, name: str) -> Path:
    """Write `record` as JSON into the working directory, else the temp folder; the path it went to."""
    for folder in (Path.cwd(), Path(tempfile.gettempdir())):
        path = folder / name
        try:
            path.write_text(json.dumps(record, indent=1, default=str) + "\n", encoding="utf-8")
            return path
        except OSError:
            continue
    raise ConfigError(f"{name}: could not be written to {Path.cwd()} or {tempfile.gettempdir()}")


def _check_eval_args(args) -> None:
    if args.problems < 1 or args.samples < 1:
        raise ConfigError(f"--problems/--samples: must be >= 1, got {args.problems}/{args.samples}")
    if args.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens: got {args.max_new_tokens}; must be an integer >= 1")
    if not math.isfinite(args.temperature) or args.temperature <= 0:
        raise ConfigError(f"--temperature: got {args.temperature}; must be a finite number > 0")
    if args.adapter and not os.path.isdir(args.adapter):
        raise ConfigError(f"--adapter: '{args.adapter}' is not a folder; use a run's final/ or a checkpoint's "
                          "adapter/")


def _evaluate_run(run, config, n_problems, n_samples, policy=None):
    from scpo_lab.evaluation import evaluate
    from scpo_lab.tasks import get_task

    policy = run.load_policy(policy)
    return evaluate(policy, get_task(config.task.name, **config.task.options), n_problems=n_problems,
                    n_samples=n_samples, max_new_tokens=config.max_new_tokens, temperature=config.temperature)


def _profile_task_options(task: str) -> dict:
    """The cpu profile's options for its own task (arithmetic: max_operand=20, 131 held-out problems), none for the
    others: `scpo-lab eval` with no --task-option evaluates on the task the lab trains on (the bare default space has
    31 held-out problems, fewer than --problems' default)."""
    from scpo_lab.config import PROFILE_DEFAULTS

    profile_task = PROFILE_DEFAULTS["cpu"]["task"]
    return dict(profile_task["options"]) if profile_task["name"] == task else {}


def cmd_eval(args) -> int:
    from scpo_lab.evaluation import evaluate
    from scpo_lab.models import LoraConfig, adapter_lora_config, load_policy
    from scpo_lab.tasks import get_task

    _check_eval_args(args)
    options = _parse_overrides(args.task_option) if args.task_option is not None else _profile_task_options(args.task)
    task = get_task(args.task, **options)
    # the adapter's own LoRA shape (rank, alpha, modules), not the defaults: any run's final/ loads
    lora = adapter_lora_config(args.adapter) if args.adapter else LoraConfig()
    policy = load_policy(args.model, backend=args.backend, lora=lora)
    if args.adapter:
        policy.load_adapter(args.adapter)
    result = evaluate(policy, task, n_problems=args.problems, n_samples=args.samples,
                      max_new_tokens=args.max_new_tokens, temperature=args.temperature)
    print(result.summary())
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result.to_dict(), f, indent=1)
    return 0


def cmd_reports(args) -> int:
    from scpo_lab.reports import build_reports
    from scpo_lab.sizes import REPORT_PRECISION_ENV

    if args.precision and args.profile != "cpu":
        raise ConfigError(f"--precision: only the cpu profile's report set takes one (got --profile "
                          f"{args.profile}: smoke pins fp32, gpu resolves its own auto)")
    # the notebooks' kernels inherit it (sizes.report_precision reads it); main() called in-process leaves it as it was
    with mock.patch.dict(os.environ, {REPORT_PRECISION_ENV: args.precision} if args.precision else {}):
        build_reports(profile=args.profile, notebooks=args.notebooks or None, output_dir=args.output)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scpo-lab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one run from a YAML config (or a profile) into its run folder")
    p.add_argument("--config", help="YAML file of TrainConfig fields (plus optional 'profile:')")
    p.add_argument("--profile", default="cpu", help="smoke | cpu | gpu (when no --config)")
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="overrides, e.g. method=grpo task.name=gsm8k")
    p.add_argument("--eval-problems", type=int, default=0, help="evaluate the trained adapter on N test problems")
    p.add_argument("--eval-samples", type=int, default=4)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a policy (base or base + adapter) on a task's test split")
    p.add_argument("--model", default="embedded")
    p.add_argument("--backend", default="auto")
    p.add_argument("--adapter", help="a saved LoRA adapter folder (a run's final/ or a checkpoint's adapter/)")
    p.add_argument("--task", default="arithmetic")
    p.add_argument("--task-option", nargs="*", metavar="KEY=VALUE",
                   help="task options (default: the cpu profile's for its task, arithmetic max_operand=20; give the "
                        "flag with no value for the task's bare defaults)")
    p.add_argument("--problems", type=int, default=100)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--output", help="write the result as JSON here")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("reports", help="execute the notebooks with papermill into reports/*.html")
    p.add_argument("--profile", default="cpu")
    p.add_argument("--notebooks", nargs="*", help="notebook names (default: all in notebooks/)")
    p.add_argument("--output", default="reports")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"),
                   help="the cpu runs' precision (default auto: bf16 where the host has fast bf16, with larger runs on "
                        "AMX; fp32 elsewhere)")
    p.set_defaults(func=cmd_reports)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return args.func(args)
    # user errors (bad input, a busy or damaged run folder, a full disk, a diverged run) print one line, no traceback
    except (ConfigError, ValueError, OSError, RuntimeError, FloatingPointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
