#!/usr/bin/env python
"""Does bf16 train as well as fp32? GRPO in each precision on the same seeds, evaluated on the same problems.

For each seed, one GRPO run per precision at the fp32 report set's comparison sizes (sizes.COMPARISON_SIZES: the
runs the notebooks train, so the answer is about that regime; the same sizes for both, not the bf16 set's larger
runs, sizes.BF16_LARGER), each final adapter evaluated in
fp32 on the comparison evaluation (sizes.COMPARISON_EVAL). Printed: each precision's held-out pass@1 with its
seeds x problems interval, the paired difference bf16 - fp32 by the lab's comparison rule (conclusions.py: paired
on seeds and problems, bootstrap over both), and the first-pass ratio pi_theta / pi_sampler each precision logged.

    python benchmarks/precision_agreement.py                       # seeds 0-4, fp32 and bf16
    python benchmarks/precision_agreement.py --seeds 0,1 --profile smoke   # plumbing check (numbers mean nothing)

Runs are kept in --runs-dir (default runs/precision_agreement), so a killed check resumes where it stopped.
Timing is not the point here (step_profile.py measures it): the machine may be shared.
"""

from __future__ import annotations

import argparse
import os
import sys

from common import print_host

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never download: every model here is local


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated training seeds")
    parser.add_argument("--profile", default="cpu", choices=("smoke", "cpu"))
    parser.add_argument("--runs-dir", default=os.path.join("runs", "precision_agreement"))
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]

    import pandas as pd

    from scpo_lab.conclusions import paired_comparisons, comparison_sentence, seed_summary
    from scpo_lab.config import make_config
    from scpo_lab.sizes import COMPARISON_SIZES, comparison_eval
    from scpo_lab.experiment import run_experiment

    print_host()
    sizes, settings = dict(COMPARISON_SIZES[args.profile]), comparison_eval(args.profile)
    configs, arm_of = {}, {}
    for precision in ("fp32", "bf16"):
        for seed in seeds:
            label = f"{precision}/s{seed}"
            configs[label] = make_config(args.profile, method="grpo", seed=seed, precision=precision,
                                         runs_dir=args.runs_dir, **sizes)
            arm_of[label] = precision
    exp = run_experiment(configs, args.profile, settings=settings, include_base=False)
    metrics = exp.metrics
    metrics["arm"] = metrics["label"].map(arm_of)
    summary = seed_summary(exp.evals, arm_of).set_index("arm")
    ratios = metrics.groupby("arm").agg(ratio_mean=("ratio/first_pass_mean", "mean"),
                                        ratio_max=("ratio/first_pass_max", "max"),
                                        train_pass_rate=("pass_rate", "mean"), step_s=("time/step", "median"))
    table = summary[["seeds", "mean", "ci_low", "ci_high"]].join(ratios)
    table["per seed"] = [", ".join(f"{v:.3f}" for v in summary.loc[a, "values"]) for a in table.index]
    cfg = next(iter(configs.values()))
    print(f"\ngrpo, {cfg.steps} steps x {cfg.prompts_per_step} prompts x G={cfg.group_size}, {cfg.max_new_tokens} "
          f"new tokens; held-out {settings['n_problems']} problems x {settings['n_samples']} samples, fp32 eval")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.round(4).to_string())
    row = paired_comparisons(exp.evals, arm_of, pairs=[("bf16", "fp32")]).iloc[0]
    print("\npaired " + comparison_sentence(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
