"""Tables and sentences from finished runs: what the notebooks' result cells and conclusions show.

`experiment.py` trains, evaluates and caches; this module only reads what that produced. Its one comparison rule
(`paired_comparisons`, `verdict`) is what every notebook's conclusion and the reports' index call:

    An arm BEATS a reference (grpo, dapo, compute-matched grpo) when, paired on the same training seeds and the same
    held-out problems and sampling seeds, the difference in pass@1 is positive and its two-sided bootstrap p-value
    over seeds x problems (stats.seeds_by_problems_bootstrap), Holm-adjusted over every comparison the notebook
    makes, is below ALPHA = 0.05, with at least MIN_SEEDS = 5 paired seeds. It is WORSE by the same rule with the
    sign reversed; otherwise the two are NOT SEPARATED, or, under MIN_SEEDS paired seeds, NO CLAIM is made.

Rates (pass@1 of an arm) get the same bootstrap, their intervals clipped to [0, 1] (RATE_BOUNDS); differences
of rates to [-1, 1]."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from scpo_lab.evaluation import EvalResult
from scpo_lab.stats import calibration_bins, holm, seeds_by_problems_bootstrap

if TYPE_CHECKING:
    from scpo_lab.trainer import Run

ALPHA = 0.05  # family-wise error rate of a notebook's comparisons (Holm)
MIN_SEEDS = 5  # paired seeds below which a comparison makes no claim
N_BOOT = 4000  # bootstrap replicates (the p-value's resolution is 1 / (N_BOOT + 1))
EV_NEAR_ZERO = 0.1  # |explained variance| up to this reads as "explains almost nothing" in value_lines
FEW_PASSES = 20  # fewer passes than this among an arm's held-out samples: the interval rests on few successes
RATE_BOUNDS = (0.0, 1.0)  # what a pass rate's interval is clipped to (stats.seeds_by_problems_bootstrap)
DIFFERENCE_BOUNDS = (-1.0, 1.0)  # the same for a difference of two pass rates
# a paired difference smaller than this is 0: rates c / n with n = 3 sum to ~1e-18 where the exact value is 0, and a
# sign read from that noise made "2 of 5 seeds agree in sign" and "-0.000"; a real mean difference is >= 1 / (n P)
ZERO_TOL = 1e-9


# ------------------------------------------------------------------------------------------------------------------
# Pairing: which seeds and problems two arms share
# ------------------------------------------------------------------------------------------------------------------

def seed_of(label: str) -> int:
    """The training seed in a run label "<arm>/s<seed>" (experiment.arm_configs' labels)."""
    match = re.search(r"/s(\d+)$", label)
    if not match:
        raise ValueError(f"label: {label!r} does not end in /s<seed> (the labels arm_configs makes); cannot pair it")
    return int(match.group(1))


def _evaluation_of(result: EvalResult) -> tuple:
    return (result.task, result.split, result.n_samples, result.temperature, result.max_new_tokens, result.seed)


def pass_rates(results: dict[str, EvalResult], problems: list | None = None,
               per_problem=lambda n, c: c / n) -> tuple[list[int], list, np.ndarray]:
    """{label: evaluation} of one arm -> (seeds, problem ids, seeds x problems table of per_problem(n, c)): each
    run's pass rate (default) or pass@k on each held-out problem. Every evaluation must be of the same problems with
    the same settings."""
    if not results:
        raise ValueError("results: no evaluations to tabulate")
    first = next(iter(results.values()))
    problems = problems if problems is not None else [r["problem_id"] for r in first.per_problem]
    seeds, rows = [], []
    for label, result in results.items():
        if _evaluation_of(result) != _evaluation_of(first):
            raise ValueError(f"evaluations: {label} was evaluated with other settings "
                             f"({_evaluation_of(result)} vs {_evaluation_of(first)}); they cannot be paired")
        rate = {r["problem_id"]: per_problem(r["n"], r["correct"]) for r in result.per_problem}
        missing = [p for p in problems if p not in rate]
        if missing:
            raise ValueError(f"evaluations: {label} lacks {len(missing)} of the problems the others were evaluated "
                             f"on (e.g. {missing[0]!r}); they cannot be paired")
        seeds.append(seed_of(label))
        rows.append([rate[p] for p in problems])
    return seeds, problems, np.asarray(rows, dtype=np.float64)


def _results_by_arm(evals: dict[str, EvalResult], arm_of: dict[str, str]) -> dict[str, dict[str, EvalResult]]:
    """{arm: {label: evaluation}} over its seeds, arms in first-seen order (an arm without evaluations maps to {})."""
    return {arm: {label: evals[label] for label, a in arm_of.items() if a == arm and label in evals}
            for arm in dict.fromkeys(arm_of.values())}


def arm_interval(results: dict[str, EvalResult]):
    """pass@1 of one arm over its seeds' evaluations: the seeds x problems bootstrap (one seed: over problems)."""
    _, _, table = pass_rates(results)
    return seeds_by_problems_bootstrap(table, n_boot=N_BOOT, bounds=RATE_BOUNDS)


def _passes(results: dict[str, EvalResult]) -> int:
    return sum(r["correct"] for result in results.values() for r in result.per_problem)


# ------------------------------------------------------------------------------------------------------------------
# Per-arm tables
# ------------------------------------------------------------------------------------------------------------------

def seed_summary(evals: dict[str, EvalResult], arm_of: dict[str, str]) -> pd.DataFrame:
    """One row per arm: pass@1 mean over its seeds' runs with a 95% interval from the seeds x problems bootstrap
    (inside [0, 1]; one seed: over problems), the seeds' values, and the mean of the per-run bootstrap intervals'
    widths (evaluation noise alone, for scale)."""
    rows = []
    for arm, results in _results_by_arm(evals, arm_of).items():
        if not results:
            continue
        interval = arm_interval(results)
        values = [r.pass_at_1 for r in results.values()]
        rows.append({"arm": arm, "seeds": len(results), "mean": interval.value, "ci_low": interval.low,
                     "ci_high": interval.high, "values": values, "passes": _passes(results),
                     "eval_ci_width": sum(r.ci_high - r.ci_low for r in results.values()) / len(results)})
    return pd.DataFrame(rows)


def arm_pass_at_k(evals: dict[str, EvalResult], arm_of: dict[str, str]) -> pd.DataFrame:
    """pass@k per arm and k: mean over the arm's seeds and problems of the unbiased per-problem pass@k, with the
    seeds x problems bootstrap's 95% interval; "base" (if in evals and not in arm_of) is its own arm with its
    bootstrap interval over problems."""
    from scpo_lab.stats import pass_at_k

    rows = []
    if "base" in evals and "base" not in arm_of:
        for r in evals["base"].pass_at_k:
            rows.append({"arm": "base", "k": r["k"], "mean": r["pass_at_k"], "ci_low": r["ci_low"],
                         "ci_high": r["ci_high"], "seeds": 1})
    for arm, results in _results_by_arm(evals, arm_of).items():
        if not results:
            continue
        for k in sorted({r["k"] for res in results.values() for r in res.pass_at_k}):
            _, _, table = pass_rates(results, per_problem=lambda n, c, k=k: pass_at_k(n, c, k))
            interval = seeds_by_problems_bootstrap(table, n_boot=N_BOOT, bounds=RATE_BOUNDS)
            rows.append({"arm": arm, "k": k, "mean": interval.value, "ci_low": interval.low,
                         "ci_high": interval.high, "seeds": len(results)})
    return pd.DataFrame(rows)


def reasoning_summary(evals: dict[str, EvalResult], arm_of: dict[str, str]) -> pd.DataFrame:
    """One row per arm (and "base"): each EvalResult.reasoning metric, mean over the arm's seeds."""
    rows = []
    if "base" in evals and "base" not in arm_of and evals["base"].reasoning:
        rows.append({"arm": "base", "seeds": 1, "pass@1": evals["base"].pass_at_1,
                     "mean_length": evals["base"].mean_length, **evals["base"].reasoning})
    for arm, results in _results_by_arm(evals, arm_of).items():
        results = [r for r in results.values() if r.reasoning]
        if not results:
            continue
        frame = pd.DataFrame([{"pass@1": r.pass_at_1, "mean_length": r.mean_length, **r.reasoning}
                              for r in results])
        rows.append({"arm": arm, "seeds": len(results), **frame.mean(numeric_only=True).to_dict()})
    return pd.DataFrame(rows)


def compute_summary(metrics: pd.DataFrame, evals: dict[str, EvalResult], group_of: dict[str, str]) -> pd.DataFrame:
    """Held-out pass@1 against training compute, one row per group (an arm, or a sweep point) of labels:
    total training FLOPs (the runs' logged totals: sampling, teacher/critic passes and updates; also as TFLOPs)
    and generated tokens, mean over the group's runs; pass@1 with the seeds x problems bootstrap's 95% interval
    (one run: over problems; ci_over says which); seconds = summed step times, mean over runs."""
    last = metrics.sort_values("step").groupby("label").tail(1).set_index("label")
    seconds = metrics.groupby("label")["time/step"].sum()
    rows = []
    for group in dict.fromkeys(group_of.values()):
        labels = [lab for lab, g in group_of.items() if g == group and lab in evals and lab in last.index]
        if not labels:
            continue
        interval = arm_interval({lab: evals[lab] for lab in labels})
        total_flops = float(last.loc[labels, "flops"].mean())
        rows.append({"group": group, "runs": len(labels), "total_flops": total_flops, "TFLOPs": total_flops / 1e12,
                     "generated_tokens": float(last.loc[labels, "generated_tokens"].mean()),
                     "seconds": float(seconds[labels].mean()), "pass@1": interval.value, "ci_low": interval.low,
                     "ci_high": interval.high, "ci_over": "seeds x problems" if len(labels) > 1 else "problems"})
    return pd.DataFrame(rows)


def expected_calibration_error(predicted, passed, bins: int = 10) -> float:
    """ECE = sum_b (n_b / n) |mean predicted_b - pass rate_b| over equal-width bins of the prediction."""
    per_bin = calibration_bins(predicted, passed, bins)
    if per_bin.empty:
        return float("nan")
    return float((per_bin["n"] / per_bin["n"].sum() * (per_bin["p"] - per_bin["y"]).abs()).sum())


HACK_COLUMNS = ("hack/auroc", "hack/youden_j", "hack/high_reward_failures", "hack/failed_score", "hack/proxy_gap")


def cost_table(metrics: pd.DataFrame, arms: list[str], reference: str = "grpo") -> pd.DataFrame:
    """Per arm (metrics needs an `arm` column): extra parameters (params/extra), median seconds per step over all
    its steps and seeds (total, teacher pass, update; the median, so a step slowed by other work on the machine
    does not move it), the extra seconds over `reference`, and training FLOPs per step (the runs' logged totals /
    steps, mean over seeds, critics' own updates included); seconds_vs_ref and flops_vs_ref put wall-clock beside
    FLOPs, both relative to `reference`."""
    last = metrics.sort_values("step").groupby("run").tail(1)
    flops = (last["flops"] / last["step"]).groupby(last["arm"]).mean()
    per_arm = metrics.groupby("arm").agg(extra_params=("params/extra", "max"), seconds=("time/step", "median"),
                                         teacher=("time/teacher", "median"), update=("time/update", "median"))
    per_arm["flops_per_step"] = flops
    base = per_arm.loc[reference, "seconds"] if reference in per_arm.index else 0.0
    per_arm["extra_seconds"] = per_arm["seconds"] - base
    if reference in per_arm.index:  # wall-clock beside FLOPs, both relative to the reference arm
        per_arm["seconds_vs_ref"] = per_arm["seconds"] / per_arm.loc[reference, "seconds"]
        per_arm["flops_vs_ref"] = per_arm["flops_per_step"] / per_arm.loc[reference, "flops_per_step"]
    return per_arm.reindex([a for a in arms if a in per_arm.index]).reset_index()


def hacking_summary(metrics: pd.DataFrame, evals: dict[str, EvalResult], arm_of: dict[str, str],
                    runs: dict[str, Run] | None = None, reference: str = "grpo") -> pd.DataFrame:
    """The reward-hacking instruments side by side, one row per arm (mean over seeds):
    training time, second half of the steps (metrics.hacking_stats: the critic's own score vs the verifier on each
    step's fresh rollouts; empty for arms with no critic score): hack/auroc, hack/youden_j,
    hack/high_reward_failures, hack/proxy_gap; held-out (EvalResult): pass@1, mean_length and, where the
    evaluation has them, leakage_rate and repeated_3gram_rate; with `runs`, the last logged training step's
    rollouts: train_length (tokens) and train_repeated_3gram_rate (every run has those). Lengths and repetition
    also relative to `reference` (ratio)."""
    from scpo_lab.metrics import repeated_ngram_rate

    late = metrics[metrics["step"] > metrics.groupby("run")["step"].transform("max") / 2]
    train = late.groupby("arm")[[c for c in HACK_COLUMNS if c in late]].mean()
    rows = []
    for label, result in evals.items():
        row = {"arm": arm_of.get(label, label), "pass@1": result.pass_at_1, "mean_length": result.mean_length,
               "leakage_rate": result.reasoning.get("leakage_rate", float("nan")),
               "repeated_3gram_rate": result.reasoning.get("repeated_3gram_rate", float("nan"))}
        samples = runs[label].samples() if runs is not None and label in runs else pd.DataFrame()
        if not samples.empty:  # (dynamic sampling that found no informative group keeps no rollouts)
            last = samples[samples["step"] == samples["step"].max()]
            at_last = (metrics["label"] == label) & (metrics["step"] == last["step"].max())
            row["train_length"] = float(metrics.loc[at_last, "completions/mean_length"].mean())
            row["train_repeated_3gram_rate"] = float(last["completion"].map(repeated_ngram_rate).mean())
        rows.append(row)
    table = pd.DataFrame(rows).groupby("arm", sort=False).mean().join(train, how="left")
    if reference in table.index:
        for column in ("mean_length", "train_length", "train_repeated_3gram_rate"):
            if column in table:
                table[f"{column}_vs_{reference}"] = table[column] / table.loc[reference, column]
    return table.reset_index()


def phrase_rate_by_step(run: Run, phrase: str) -> pd.DataFrame:
    """Share of a run's training rollouts containing `phrase` (whole words, case-insensitive), at every step
    whose rollouts were written to samples.jsonl -> rows (step, rate, rollouts)."""
    from scpo_lab.metrics import phrase_rates

    samples = run.samples()
    if samples.empty:
        return pd.DataFrame(columns=["step", "rate", "rollouts"])
    return pd.DataFrame([{"step": step, "rate": phrase_rates(part["completion"].tolist(), (phrase,))[phrase],
                          "rollouts": len(part)} for step, part in samples.groupby("step")])


# ------------------------------------------------------------------------------------------------------------------
# The comparison rule
# ------------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Paired:
    """A paired difference (paired_difference): its bootstrap interval, how many of the paired seeds' own mean
    differences share its sign, and each side's passing samples over those seeds."""

    interval: object  # stats.Interval
    seeds_agree: int
    seeds: int
    passes: int
    reference_passes: int


def paired_tables(a: dict[str, EvalResult], b: dict[str, EvalResult]) -> tuple[list[int], list, np.ndarray, np.ndarray]:
    """Two arms' evaluations -> (the training seeds both have, the problems, a's and b's shared-seeds x problems
    tables of per-problem pass rates, row i of both = seed i). Same training seed: same prompts per step; same
    problems and sampling seed: the evaluations must have the same settings."""
    seeds_a, problems, table_a = pass_rates(a)
    seeds_b, _, table_b = pass_rates(b, problems)
    if _evaluation_of(next(iter(a.values()))) != _evaluation_of(next(iter(b.values()))):
        raise ValueError("evaluations: the two arms were evaluated with different settings; they cannot be paired")
    shared = [s for s in seeds_a if s in seeds_b]
    if not shared:
        raise ValueError(f"seeds: the arms share no training seed (a: {seeds_a}, b: {seeds_b}); nothing to pair")
    return (shared, problems, table_a[[seeds_a.index(s) for s in shared]],
            table_b[[seeds_b.index(s) for s in shared]])


def _zeroed(x):
    """x with |x| < ZERO_TOL set to exactly 0 (so a sign or a "!= 0" reads the difference, not its rounding)."""
    return np.where(np.abs(x) < ZERO_TOL, 0.0, x)


def paired_difference(a: dict[str, EvalResult], b: dict[str, EvalResult], n_boot: int = N_BOOT) -> Paired:
    """pass@1 of arm a minus arm b, paired (`paired_tables`: the seeds both have, the same problems), as a seeds x
    problems table of differences in per-problem pass rates, bootstrapped (stats.seeds_by_problems_bootstrap)."""
    shared, _, table_a, table_b = paired_tables(a, b)
    diff = table_a - table_b
    interval = seeds_by_problems_bootstrap(diff, n_boot=n_boot, bounds=DIFFERENCE_BOUNDS)
    interval = replace(interval, value=float(_zeroed(interval.value)))
    per_seed = _zeroed(diff.mean(axis=1))
    agree = int((np.sign(per_seed) == np.sign(interval.value)).sum())
    paired = lambda results: {k: v for k, v in results.items() if seed_of(k) in shared}  # noqa: E731
    return Paired(interval, agree, len(shared), _passes(paired(a)), _passes(paired(b)))


def comparison_pairs(ran: list[str], references=("grpo", "dapo"), arms: list[str] | None = None,
                     extra_pairs: list[tuple[str, str]] = ()) -> list[tuple[str, str]]:
    """(arm, reference) for every arm that ran (or those in `arms`) against every reference that ran, then the
    `extra_pairs` whose two arms ran; a pair and its reverse are one comparison (dapo vs grpo once)."""
    compared = [a for a in ran if arms is None or a in arms or a in references]
    pairs = [(a, r) for r in references if r in ran for a in compared] + list(extra_pairs)
    return _distinct_pairs([pair for pair in pairs if set(pair) <= set(ran)])


def _distinct_pairs(pairs) -> list[tuple[str, str]]:
    """Each comparison once: no arm against itself, a pair and its reverse count once (dapo vs grpo)."""
    out: list[tuple[str, str]] = []
    for arm, ref in pairs:
        if arm != ref and (arm, ref) not in out and (ref, arm) not in out:
            out.append((arm, ref))
    return out


def verdict(diff: float, p_holm: float, seeds: int) -> str:
    """The rule (module docstring): 'better', 'worse', 'not separated', or 'no claim' (under MIN_SEEDS seeds)."""
    if seeds < MIN_SEEDS:
        return "no claim"
    if p_holm < ALPHA and diff != 0:
        return "better" if diff > 0 else "worse"
    return "not separated"


def paired_comparisons(evals: dict[str, EvalResult], arm_of: dict[str, str], references=("grpo", "dapo"),
                       pairs: list[tuple[str, str]] | None = None) -> pd.DataFrame:
    """Every arm against every reference present (or the explicit (arm, reference) `pairs`), one row each: the
    paired difference in pass@1 with its 95% interval and p-value, Holm's adjusted p over the comparisons that
    can make a claim (>= MIN_SEEDS paired seeds), the verdict of the rule, and the caveats that qualify it."""
    by_arm = _results_by_arm(evals, arm_of)
    if pairs is None:
        pairs = comparison_pairs([a for a in by_arm if by_arm[a]], references)
    rows = []
    for arm, ref in _distinct_pairs(pairs):
        for name in (arm, ref):
            if not by_arm.get(name):
                available = ", ".join(a for a in by_arm if by_arm[a])
                raise ValueError(f"pairs: no evaluations for arm {name!r}; available: {available}")
        paired = paired_difference(by_arm[arm], by_arm[ref])
        interval = paired.interval
        rows.append({"arm": arm, "reference": ref, "seeds": paired.seeds, "problems": interval.problems,
                     "difference": interval.value, "ci_low": interval.low, "ci_high": interval.high, "p": interval.p,
                     "seeds_agree": paired.seeds_agree, "passes": paired.passes,
                     "reference_passes": paired.reference_passes})
    table = pd.DataFrame(rows, columns=["arm", "reference", "seeds", "problems", "difference", "ci_low", "ci_high", "p",
                                        "seeds_agree", "passes", "reference_passes"])
    eligible = table["seeds"] >= MIN_SEEDS
    table["p_holm"] = float("nan")
    if eligible.any():
        table.loc[eligible, "p_holm"] = holm(table.loc[eligible, "p"].tolist())
    table["comparisons"] = int(eligible.sum())
    table["verdict"] = [verdict(r.difference, r.p_holm, r.seeds) for r in table.itertuples()]
    table["caveats"] = [_caveats(r) for r in table.itertuples()]
    return table


def _caveats(row) -> str:
    out = []
    if row.seeds < MIN_SEEDS:
        out.append(f"{row.seeds} paired seed{'s' if row.seeds != 1 else ''} (a claim needs {MIN_SEEDS})")
    elif row.seeds_agree < row.seeds and row.difference != 0:
        out.append(f"{row.seeds_agree} of {row.seeds} seeds agree in sign")
    if min(row.passes, row.reference_passes) < FEW_PASSES:
        out.append(f"few passes ({min(row.passes, row.reference_passes)} on one side)")
    return "; ".join(out)


def p_text(p: float) -> str:
    """A p-value as the sentences print it: "< 0.001" below the bootstrap's resolution (1 / (N_BOOT + 1)), never
    "0.000", which would claim more than the bootstrap measured; "n/a" for NaN."""
    return "n/a" if p != p else "< 0.001" if p < 0.001 else f"{p:.3f}"


def _p_clause(p: float) -> str:
    """"p = 0.023", "p < 0.001" or "p n/a"."""
    text = p_text(p)
    return f"p {text}" if text[0] in "<n" else f"p = {text}"


def comparison_sentence(row) -> str:
    """One comparison in words, with its numbers and caveats."""
    holm_text = f", Holm {p_text(row.p_holm)} over {row.comparisons}" if row.p_holm == row.p_holm else ""
    text = (f"{row.arm} − {row.reference}: {row.difference:+.3f} [{row.ci_low:+.3f}, {row.ci_high:+.3f}] over "
            f"{row.seeds} seeds x {row.problems} problems ({_p_clause(row.p)}{holm_text}): ")
    text += {"better": f"{row.arm} beats {row.reference}", "worse": f"{row.arm} is below {row.reference}",
             "not separated": "not separated", "no claim": "no claim"}[row.verdict]
    return text + (f" ({row.caveats})." if row.caveats else ".")


def rates_sentence(summary: pd.DataFrame, base: EvalResult | None = None) -> str:
    """Each arm's held-out pass@1 with its interval, highest first (a seed_summary table)."""
    ranked = summary.sort_values("mean", ascending=False)
    text = "Held-out pass@1, mean over seeds and problems (95% interval over seeds x problems): " + ", ".join(
        f"{r.arm} {r['mean']:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}] ({int(r.seeds)} seed{'s' if r.seeds != 1 else ''})"
        for _, r in ranked.iterrows())
    if base is not None:
        text += f"; base model {base.pass_at_1:.3f} [{base.ci_low:.3f}, {base.ci_high:.3f}]"
    return text + "."


def headline(comparisons: pd.DataFrame) -> str:
    """The notebook's finding in one sentence, by the rule: which arms beat or fall below which references."""
    if comparisons.empty:
        return "No paired comparison was made."
    seeds = int(comparisons["seeds"].min())
    found = []  # the claims the rule allows, better ones first
    for kind, words in (("better", "beats"), ("worse", "is below")):
        for r in comparisons[comparisons["verdict"] == kind].itertuples():
            found.append(f"{r.arm} {words} {r.reference} ({r.difference:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}])")
    eligible = int((comparisons["seeds"] >= MIN_SEEDS).sum())
    if found:
        rest = len(comparisons) - len(found)
        return ("; ".join(found) + f" (Holm over {eligible} paired comparisons, >= {MIN_SEEDS} seeds)"
                + (f"; the other {rest} comparisons are not separated or make no claim." if rest else "."))
    if eligible == 0:
        return (f"No claim: at most {int(comparisons['seeds'].max())} paired seeds per comparison (the rule needs "
                f"{MIN_SEEDS}).")
    # the references of the comparisons the sentence is about (those with enough seeds), not of the screens
    refs = ", ".join(dict.fromkeys(comparisons.loc[comparisons["seeds"] >= MIN_SEEDS, "reference"]))
    short = int((comparisons["seeds"] < MIN_SEEDS).sum())
    few = "" if seeds >= MIN_SEEDS else f"; {short} with too few seeds make no claim"
    return (f"No arm is separated from {refs}: no paired difference is beyond chance after Holm's correction over "
            f"{eligible} comparisons with >= {MIN_SEEDS} seeds{few}.")


@dataclass
class Conclusion:
    """A notebook's conclusion: its comparisons table, the headline by the rule, and the lines to show."""

    comparisons: pd.DataFrame
    headline: str
    lines: list[str] = field(default_factory=list)
    train_commits: list[str] = field(default_factory=list)  # the git commits that trained the runs behind it

    def add(self, *lines: str) -> "Conclusion":
        self.lines += [line for line in lines if line]
        return self

    def markdown(self) -> str:
        return "\n".join(f"- {line}" for line in [f"**Finding:** {self.headline}", *self.lines])

    def show(self) -> None:
        """Display it; the headline rides along in the output's metadata, where the reports' index reads it."""
        from IPython.display import Markdown, display

        display(Markdown(self.markdown()),
                metadata={"scpo_lab": {"headline": self.headline, "train_commits": self.train_commits}})


def conclude(evals: dict[str, EvalResult], arm_of: dict[str, str], *, profile: str, references=("grpo", "dapo"),
             extra_pairs: list[tuple[str, str]] = (), arms: list[str] | None = None,
             runs: dict | None = None) -> Conclusion:
    """The conclusion every comparison notebook starts from: each arm's pass@1 with its interval, every paired
    comparison against the references present (and the notebook's own pre-stated `extra_pairs` whose arms both ran),
    all in one Holm family, by the rule; and the caveats (smoke profile, one-seed arms, multiple comparisons).
    `arms`: the arms compared with the references (default: every arm evaluated). `runs` (Experiment.runs): their
    folders' git commits are recorded, for the index. A notebook adds its own instrument lines with Conclusion.add."""
    evals = {k: v for k, v in evals.items() if k != "base"}
    summary = seed_summary(evals, arm_of)
    ran = list(summary["arm"]) if len(summary) else []
    comparisons = paired_comparisons(evals, arm_of, pairs=comparison_pairs(ran, references, arms, extra_pairs))
    commits = sorted({str(run.dir.meta.get("git_commit", "unknown")) for run in (runs or {}).values()})  # provenance
    conclusion = Conclusion(comparisons, headline(comparisons), train_commits=commits)
    if profile == "smoke":
        conclusion.add("**Smoke profile: a random tiny model; these numbers only show that the code runs.**")
    conclusion.add(rates_sentence(summary))
    conclusion.add(*(comparison_sentence(r) for r in comparisons.itertuples()))
    one_seed = [r.arm for r in summary.itertuples() if r.seeds == 1]
    if one_seed:
        conclusion.add(f"One seed only ({', '.join(one_seed)}): its interval is over problems; it says nothing about "
                       "seed-to-seed variation.")
    conclusion.add(f"Rule: an arm beats a reference when the paired difference is positive with Holm-adjusted "
                   f"p < {ALPHA} over the notebook's comparisons and at least {MIN_SEEDS} paired seeds "
                   "(scpo_lab.conclusions).")
    return conclusion


def compare(a: EvalResult, b: EvalResult, name_a: str, name_b: str) -> str:
    """One sentence on two single evaluations of the same problems (e.g. a run against the base model): their
    paired difference with its bootstrap interval over problems. One run on a side: no claim, by the rule."""
    interval = paired_difference({f"{name_a}/s0": a}, {f"{name_b}/s0": b}).interval
    return (f"{name_a} pass@1 {a.pass_at_1:.3f} vs {name_b} {b.pass_at_1:.3f}: paired difference "
            f"{interval.value:+.3f} [{interval.low:+.3f}, {interval.high:+.3f}] over {interval.problems} problems "
            f"({_p_clause(interval.p)}); one run each, so by the lab's rule (>= {MIN_SEEDS} seeds) no claim.")


# ------------------------------------------------------------------------------------------------------------------
# The notebooks' instrument lines (each computed from a table a notebook shows)
# ------------------------------------------------------------------------------------------------------------------

def _fmt(value, spec: str = ".2f") -> str:
    return "n/a" if value is None or value != value else format(value, spec)


def zero_std_line(metrics: pd.DataFrame, what: str) -> str:
    """Collapse accounting per arm, mean over steps and seeds: the share of zero-std groups and, for arms with a
    critic, the share of the within-group advantage variance that lies in them (scpo/zero_std_spread)."""
    cols = [c for c in ("frac_reward_zero_std", "scpo/zero_std_spread") if c in metrics]
    means = metrics.groupby("arm", sort=False)[cols].mean()
    parts = []
    for arm, row in means.iterrows():
        text = f"{arm}: zero-std groups {_fmt(row['frac_reward_zero_std'])}"
        if "scpo/zero_std_spread" in row and row["scpo/zero_std_spread"] == row["scpo/zero_std_spread"]:
            text += f", their share of the advantage spread {_fmt(row['scpo/zero_std_spread'])}"
        parts.append(text)
    return f"{what}, mean over steps and seeds: " + "; ".join(parts) + "."


def identical_arms_line(metrics: pd.DataFrame, columns=("pass_rate", "frac_reward_zero_std", "scpo/zero_std_spread",
                                                        "completions/mean_length", "reward")) -> str:
    """Arms whose training logs agree in every listed column at every step and seed: in that setting they are the
    same run (an option that did nothing there), which a reader must be told. '' when there are none."""
    cols = [c for c in columns if c in metrics]
    tables = {arm: part.sort_values(["seed", "step"])[cols].reset_index(drop=True)
              for arm, part in metrics.groupby("arm", sort=False)}
    same = [(a, b) for i, a in enumerate(tables) for b in list(tables)[i + 1:]
            if tables[a].shape == tables[b].shape and tables[a].equals(tables[b])]
    if not same:
        return ""
    return ("Identical training logs (" + ", ".join(cols) + "), so these arms did the same thing here: "
            + "; ".join(f"{a} = {b}" for a, b in same) + ".")


def held_out_line(what: str, held: pd.DataFrame, base: EvalResult | None = None) -> str:
    """A compute_summary table's pass@1 per group with its interval; whether every interval overlaps the base's."""
    text = f"{what}: " + ", ".join(f"{r.group} {r['pass@1']:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]"
                                   for _, r in held.iterrows())
    if base is None:
        return text + "."
    text += f"; base model {base.pass_at_1:.3f} [{base.ci_low:.3f}, {base.ci_high:.3f}]"
    overlap = all(r.ci_low <= base.ci_high and r.ci_high >= base.ci_low for _, r in held.iterrows())
    return text + (": every interval overlaps the base model's (no change shown)." if overlap else ".")


def cost_line(costs: pd.DataFrame) -> str:
    """A cost_table in words: extra parameters, seconds per step and FLOPs per step against the reference."""
    parts = []
    for r in costs.itertuples():
        text = f"{r.arm}: {int(r.extra_params):,} extra parameters, {r.extra_seconds:+.1f} s per step"
        if hasattr(r, "seconds_vs_ref") and r.seconds_vs_ref == r.seconds_vs_ref:
            text += f" (x{r.seconds_vs_ref:.2f} wall-clock, x{r.flops_vs_ref:.2f} FLOPs)"
        parts.append(text)
    return "Cost per step (median over steps and seeds) against grpo: " + "; ".join(parts) + "."


def late_summary(metrics: pd.DataFrame, arm: str, column: str, how: str = "mean") -> float:
    """An arm's logged `column` over the second half of its steps (all seeds), their mean (or `how="median"`);
    nan when absent."""
    if column not in metrics or arm not in set(metrics["arm"]):
        return float("nan")
    part = metrics[metrics["arm"] == arm]
    tail = part[part["step"] > part["step"].max() / 2][column].dropna()
    return float(getattr(tail, how)()) if len(tail) else float("nan")


def value_lines(metrics: pd.DataFrame, ece: pd.DataFrame) -> list[str]:
    """Notebook 02: does each value function predict the verifier (AUROC, explained variance) and is it
    calibrated on held-out rollouts, said plainly where it does no better than chance."""
    lines = []
    for arm, col in (("scpo-head", "head/auroc_student"), ("scpo-head", "head/auroc_teacher"),
                     ("scpo-critic-shared", "critic/auroc"), ("scpo-critic-separate", "critic/auroc")):
        value = late_summary(metrics, arm, col)
        if value != value:
            continue
        verdict_text = ("below chance" if value < 0.45 else "near chance" if value < 0.55 else "above chance")
        lines.append(f"{arm}: {col} {value:.2f} over the second half of training ({verdict_text}; 0.5 = chance)"
                     + (". It reads the verdict and still does not separate passes from failures: the head is "
                        "undertrained at this size (benchmarks/head_auroc.py: a logistic probe on the same states "
                        "reaches 0.86), not evidence that the verdict is unreadable."
                        if col == "head/auroc_teacher" and value < 0.55 else "."))
    for arm in ("scpo-critic-shared", "scpo-critic-separate"):
        # The median over steps, not the mean: a step whose rollouts all fail has returns that barely vary, and
        # 1 - Var(residual) / Var(returns) then reaches -13 on its own (the 2026-12-02 report set), which a mean
        # of four steps reports as the critic's typical fit.
        ev = late_summary(metrics, arm, "critic/explained_variance", how="median")
        if ev == ev:
            lines.append(f"{arm}: explained variance of the GAE returns {ev:+.2f} (median over the second half's "
                         "steps)" + (": negative, the critic predicts the returns worse than their mean does, so its "
                                     "GAE advantages are mostly noise at this size." if ev < -EV_NEAR_ZERO else
                                     ": near zero, the critic explains almost none of the returns' variance, so its "
                                     "GAE advantages are mostly noise at this size." if ev <= EV_NEAR_ZERO else "."))
    if not ece.empty:
        last = ece.sort_values("step").groupby("arm").tail(1)
        lines.append("Calibration at the last checkpoint (seed 0, held-out): " + "; ".join(
            f"{r.arm}: ECE {r.ECE:.3f}, mean predicted {r['mean predicted']:.2f} vs pass rate {r['pass rate']:.2f}"
            f" ({int(r.rollouts)} rollouts)" for _, r in last.iterrows()) + ".")
    return lines


def pass_at_k_lines(passk: pd.DataFrame) -> list[str]:
    """Notebook 03: pass@k at the largest k per arm, and which arms with MIN_SEEDS seeds fall below the base model
    there (an arm_pass_at_k table)."""
    k_max = int(passk["k"].max())
    at_max = passk[passk["k"] == k_max].set_index("arm")
    lines = [f"pass@{k_max} (mean over seeds and problems): " + ", ".join(
        f"{a} {r['mean']:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]" for a, r in at_max.iterrows()) + "."]
    if "base" in at_max.index:
        arms = at_max.drop(index="base")
        few = arms[arms["seeds"] < MIN_SEEDS]  # the rule: no claim under MIN_SEEDS seeds
        below = [a for a, r in arms.drop(index=few.index).iterrows() if r.ci_high < at_max.loc["base", "ci_low"]]
        line = (f"Below the base model at pass@{k_max} beyond both intervals, among the arms with {MIN_SEEDS} or more "
                f"seeds: {', '.join(below) or 'none'}")
        if len(few):
            line += f"; no claim for {', '.join(few.index)} (under {MIN_SEEDS} seeds)"
        lines.append(line + ".")
    return lines


def reasoning_lines(table: pd.DataFrame) -> list[str]:
    """Notebook 03: token entropy against the base model, and the reasoning measures per arm."""
    lines = []
    base = table[table["arm"] == "base"].iloc[0] if (table["arm"] == "base").any() else None
    if base is not None and "token_entropy" in table:
        lines.append(f"Token entropy on the policy's own held-out samples: base {base.token_entropy:.3f} nats/token; "
                     + ", ".join(f"{r.arm} {r.token_entropy:.3f} ({r.token_entropy - base.token_entropy:+.3f})"
                                 for _, r in table.iterrows() if r.arm != "base") + " (mean over seeds).")
    for _, r in table.iterrows():
        lines.append(f"{r.arm}: {_fmt(r.get('steps_per_chain'), '.1f')} arithmetic claims per completion, "
                     f"{_fmt(r.get('valid_step_rate'))} of them valid; passing completions with an invalid step "
                     f"{_fmt(r.get('right_with_invalid_step'))}; self-check phrases {_fmt(r.get('self_check_rate'))}; "
                     f"distinct-2 {_fmt(r.get('distinct_2'))}; distinct answers per problem "
                     f"{_fmt(r.get('distinct_answers'))}; leakage {_fmt(r.get('leakage_rate'), '.3f')}.")
    return lines


def flops_line(methods: pd.DataFrame, reference: str = "grpo") -> str:
    """Notebook 04: each method's training FLOPs relative to the reference (a compute_summary table)."""
    if reference not in set(methods["group"]):
        return ""
    ref = methods.set_index("group").loc[reference, "total_flops"]
    dearer = methods[methods["group"] != reference].sort_values("total_flops")
    return (f"Training FLOPs relative to {reference}: "
            + ", ".join(f"{r.group} x{r.total_flops / ref:.2f}" for _, r in dearer.iterrows()) + ".")


def matched_flops_line(summary: pd.DataFrame, prefix: str = "grpo@") -> str:
    """Notebook 04: the FLOPs each compute-matched `grpo@<arm>` realized against its arm's (means over seeds, a
    compute_summary table holding both). The group size is fixed before training from a predicted completion
    length, so "equal FLOPs" holds only to this ratio: a comparison against the matched arm is at it."""
    flops = summary.set_index("group")["total_flops"]
    pairs = [(g, g[len(prefix):]) for g in flops.index if g.startswith(prefix) and g[len(prefix):] in flops.index]
    if not pairs:
        return ""
    return ("Training FLOPs realized by the compute-matched grpo, against the arm it matches (mean over seeds): "
            + ", ".join(f"{g} x{flops[g] / flops[arm]:.2f} {arm}'s" for g, arm in pairs) + ".")


def sweep_lines(points: pd.DataFrame) -> list[str]:
    """Notebook 04: along each compute axis, pass@1 per setting and whether the cheapest and dearest settings'
    intervals separate. A direction is stated only where every point has MIN_SEEDS seeds (the rule); under that the
    line says which way the intervals lie and that it makes no claim (one seed: intervals over problems only)."""
    lines = []
    for axis, part in points.groupby("axis", sort=False):
        part = part.sort_values("total_flops")
        lo, hi = part.iloc[0], part.iloc[-1]
        overlap = not (hi.ci_low > lo.ci_high or hi.ci_high < lo.ci_low)
        runs = int(part["runs"].min())  # the fewest-seeded point bounds what the axis can claim
        direction = "above" if hi["pass@1"] > lo["pass@1"] else "below"
        if overlap:
            trend = "the cheapest and dearest settings' intervals overlap: no effect shown"
        elif runs < MIN_SEEDS:
            trend = (f"the dearest setting's interval lies {direction} the cheapest's, but at {runs} seed(s) a point "
                     f"(a claim needs {MIN_SEEDS}): no claim")
        else:
            trend = "pass@1 rises with compute" if direction == "above" else "pass@1 falls with compute"
        lines.append(f"{axis}: " + ", ".join(
            f"{r.value} -> {r['pass@1']:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}] at {r.total_flops / 1e12:.1f} TFLOPs"
            for _, r in part.iterrows()) + f"; {trend} (intervals over {part.ci_over.iloc[0]}).")
    return lines


def hacking_lines(hack: pd.DataFrame) -> list[str]:
    """Notebook 05: each critic's agreement with the verifier, and length, repetition and leakage against grpo."""
    lines = []
    scored = hack.dropna(subset=["hack/auroc"]) if "hack/auroc" in hack else hack.iloc[:0]
    if len(scored):
        lines.append("Critic score vs verifier, second half of training: " + "; ".join(
            f"{r.arm}: AUROC {r['hack/auroc']:.2f}, top-quartile failures {r['hack/high_reward_failures']:.2f}"
            for _, r in scored.iterrows()) + ".")
    if "mean_length_vs_grpo" in hack:
        parts = [", ".join(f"{r.arm} x{r.mean_length_vs_grpo:.2f}" for _, r in hack.iterrows()
                           if r.mean_length_vs_grpo == r.mean_length_vs_grpo)]
        if "train_repeated_3gram_rate_vs_grpo" in hack:
            parts.append("repeated 3-grams in the last training step's rollouts vs grpo: " + ", ".join(
                f"{r.arm} x{r.train_repeated_3gram_rate_vs_grpo:.2f}" for _, r in hack.iterrows()
                if r.train_repeated_3gram_rate_vs_grpo == r.train_repeated_3gram_rate_vs_grpo))
        lines.append("Held-out length vs grpo: " + "; ".join(parts) + ".")
    return lines


# which way each instrument moves when a critic is being exploited
EXPLOIT_DIRECTIONS = {"hack/proxy_gap": ("score-verifier gap", +1),
                      "hack/high_reward_failures": ("top-quartile failures", +1),
                      "hack/auroc": ("AUROC", -1),
                      "hack/failed_score": ("mean score of failed rollouts", +1)}


def exploit_lines(metrics: pd.DataFrame, phrase_rates: pd.DataFrame, planted: str) -> list[str]:
    """Notebook 05's instrument check on the deliberately exploitable judge, per run: did the planted phrase
    spread (its share at every kept step), and which instruments moved the way an exploit moves them between the
    first and second half of training, and which did not (said as a miss of that instrument)."""
    lines = []
    for label, part in metrics.groupby("label", sort=False):
        part = part.sort_values("step")
        half = len(part) // 2
        first, second = part.iloc[:half], part.iloc[half:]
        rates = phrase_rates[phrase_rates["label"] == label].sort_values("step")
        shares = ", ".join(f"{r.rate:.2f} (step {int(r.step)})" for r in rates.itertuples())
        caught, missed = [], []
        for col, (name, sign) in EXPLOIT_DIRECTIONS.items():
            if col not in part or part[col].isna().all():
                continue
            before, after = first[col].mean(), second[col].mean()
            (caught if (after - before) * sign > 0 else missed).append(f"{name} {before:.2f} -> {after:.2f}")
        lines.append(f"Exploitable judge ({label}): share of training rollouts with {planted!r} at each kept "
                     f"step: {shares}. Instruments that moved as an exploit moves them (first vs second half of "
                     f"training): {', '.join(caught) or 'none'}; that did not, i.e. missed it here: "
                     f"{', '.join(missed) or 'none'}; "
                     f"verifier pass rate {first['pass_rate'].mean():.2f} -> {second['pass_rate'].mean():.2f}.")
    for label, rates in phrase_rates[~phrase_rates["label"].isin(set(metrics["label"]))].groupby("label", sort=False):
        rates = rates.sort_values("step")  # the fair judge beside it: the word's share without the bonus
        lines.append(f"Fair judge ({label}): share with {planted!r}: "
                     + ", ".join(f"{r.rate:.2f} (step {int(r.step)})" for r in rates.itertuples()) + ".")
    return lines


def bias_probe_line(probe: pd.DataFrame) -> str:
    """The judge-bias probe's shifts with their intervals; '' without a probe."""
    if probe.empty:
        return ""
    return ("Judge-bias probe (shift of the judge's score when a phrase is appended to a failed rollout; 95% "
            "interval over rollouts): " + "; ".join(
                f"{r.run} + {r.phrase!r}: {r['shift']:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}]"
                f"{' (biased)' if r.biased else ''}" for _, r in probe.iterrows()) + ".")


# ------------------------------------------------------------------------------------------------------------------
# Qualitative evidence: whole texts, never truncated
# ------------------------------------------------------------------------------------------------------------------

def _block(text: str) -> str:
    fence = "````" if "```" in str(text) else "```"
    return f"{fence}text\n{text}\n{fence}"


def examples_markdown(rows: pd.DataFrame, title: str, fields=("prompt", "completion", "critique"),
                      numbers=("step", "passed", "reward", "judge_score")) -> str:
    """Rows of rollouts as Markdown: a line per rollout with its `numbers`, then each text field whole."""
    if rows.empty:
        return f"**{title}:** none."
    out = [f"**{title}**"]
    for _, r in rows.iterrows():
        out.append("*" + ", ".join(f"{k} {r[k]:.3f}" if isinstance(r[k], float) else f"{k} {r[k]}"
                                   for k in numbers if k in r and r[k] == r[k]) + "*")
        out += [f"{name}:\n\n{_block(r[name])}" for name in fields if name in r and isinstance(r[name], str)]
    return "\n\n".join(out)


def judge_disagreements(samples: pd.DataFrame, n: int = 2) -> pd.DataFrame:
    """The judge's critiques where it disagrees most with the verifier at the last kept step: the n highest-scored
    failures and the n lowest-scored passes (all rows when there are fewer)."""
    if samples.empty or "judge_score" not in samples:
        return samples.iloc[:0]
    last = samples[samples["step"] == samples["step"].max()]
    failed = last[~last["passed"].astype(bool)].nlargest(n, "judge_score")
    passed = last[last["passed"].astype(bool)].nsmallest(n, "judge_score")
    return pd.concat([failed, passed])


def phrase_examples(samples: pd.DataFrame, phrase: str, n: int = 3) -> pd.DataFrame:
    """Up to n rollouts of the last kept step that contain `phrase` (whole word, any case), failures first."""
    if samples.empty:
        return samples
    last = samples[samples["step"] == samples["step"].max()]
    has = last["completion"].str.contains(rf"\b{re.escape(phrase)}\b", case=False, regex=True)
    return last[has].sort_values("passed").head(n)


def differing_problems(evals: dict[str, EvalResult], arm_of: dict[str, str], arm: str, reference: str,
                       n: int = 3) -> pd.DataFrame:
    """The held-out problems where two arms' pass rates (pooled over their paired seeds only, `paired_tables`, as
    the comparison pairs them) differ most: problem id, both rates, and the prompt and each arm's first kept
    completion of it (from those seeds' evaluations) where the evaluations kept one."""
    by_arm = _results_by_arm(evals, arm_of)
    if not by_arm.get(arm) or not by_arm.get(reference):
        return pd.DataFrame()
    shared, problems, a, b = paired_tables(by_arm[arm], by_arm[reference])
    gap = _zeroed(a.mean(axis=0) - b.mean(axis=0))
    order = np.argsort(-np.abs(gap), kind="stable")[:n]
    kept = {name: {s["problem_id"]: s for label, result in by_arm[name].items() if seed_of(label) in shared
                   for s in result.samples} for name in (arm, reference)}
    rows = []
    for i in order:
        pid = problems[i]
        sample = kept[arm].get(pid) or kept[reference].get(pid) or {}
        rows.append({"problem_id": pid, arm: float(a[:, i].mean()), reference: float(b[:, i].mean()),
                     "prompt": sample.get("prompt"),
                     f"{arm} completion": kept[arm].get(pid, {}).get("completion"),
                     f"{reference} completion": kept[reference].get(pid, {}).get("completion")})
    return pd.DataFrame(rows)
