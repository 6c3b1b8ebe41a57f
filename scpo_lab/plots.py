"""The figures the notebooks draw. Each function returns a matplotlib Figure."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from scpo_lab.stats import calibration_bins

# Readable names for the logged metrics (TRL's names are kept in the logs themselves).
LABELS = {
    "reward": "mean reward",
    "pass_rate": "verifier pass rate",
    "frac_reward_zero_std": "fraction of groups with zero reward std\n(no GRPO gradient)",
    "completions/mean_length": "completion length (tokens)",
    "entropy": "token entropy (nats)",
    "kl": "KL to reference",
    "grad_norm": "gradient norm",
    "time/step": "seconds per step",
}


def _finish(fig, ax, title: str, legend_size: int = 7):
    """The common end of a one-panel figure: title, legend, light grid, tight layout."""
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=legend_size)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def training_curves(df: pd.DataFrame, metrics=("reward", "pass_rate", "frac_reward_zero_std"), *, hue: str = "method",
                    x: str = "step", smooth: int = 1, title: str | None = None):
    """One panel per metric, one line per `hue` value; with several seeds the line is the mean and the band
    spans the min..max over seeds. `smooth` = rolling-mean window over steps (1 = raw)."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for label, part in df.groupby(hue, sort=True):
            per_run = part.pivot_table(index=x, columns="run", values=metric)
            if smooth > 1:
                per_run = per_run.rolling(smooth, min_periods=1).mean()
            mean = per_run.mean(axis=1)
            line, = ax.plot(mean.index, mean.values, label=f"{label} (n={per_run.shape[1]})")
            if per_run.shape[1] > 1:
                ax.fill_between(mean.index, per_run.min(axis=1), per_run.max(axis=1), alpha=0.2,
                                color=line.get_color())
        ax.set_xlabel(x.replace("_", " "))
        ax.set_ylabel(LABELS.get(metric, metric))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def pass_at_1_bars(results: dict, title: str = "held-out pass@1 (95% bootstrap interval over problems)"):
    """Bars of pass@1 with interval whiskers; `results` maps a label to an EvalResult (or its dict)."""
    labels = list(results)
    rows = [r if isinstance(r, dict) else r.to_dict() for r in results.values()]
    values = [r["pass_at_1"] for r in rows]
    errors = [[v - r["ci_low"] for v, r in zip(values, rows)], [r["ci_high"] - v for v, r in zip(values, rows)]]
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(labels), 3.4))
    ax.bar(labels, values, yerr=errors, capsize=6, color=plt.cm.tab10.colors[: len(labels)])
    for i, (v, r) in enumerate(zip(values, rows)):
        ax.text(i, r["ci_high"] + 0.01, f"{v:.3f}", ha="center", va="bottom", fontweight="bold")
    ax.set_ylabel("pass@1")
    ax.set_ylim(0, max(0.05, max(r["ci_high"] for r in rows) * 1.2))
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def pass_at_k_curves(results: dict, title: str = "pass@k (unbiased estimator, 95% interval)"):
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for label, r in results.items():
        table = pd.DataFrame((r if isinstance(r, dict) else r.to_dict())["pass_at_k"])
        ax.plot(table["k"], table["pass_at_k"], marker="o", label=label)
        ax.fill_between(table["k"], table["ci_low"], table["ci_high"], alpha=0.15)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k")
    ax.set_ylabel("pass@k")
    return _finish(fig, ax, title, legend_size=8)


def phase_times(df: pd.DataFrame, hue: str = "method"):
    """Stacked mean seconds per step by phase (generation, verification, teacher, update) for each method."""
    phases = [c for c in ("time/generation", "time/verification", "time/teacher", "time/update") if c in df]
    means = df.groupby(hue)[phases].mean()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    means.rename(columns=lambda c: c.split("/")[1]).plot.bar(stacked=True, ax=ax)
    ax.set_ylabel("seconds per step")
    ax.set_xlabel("")
    ax.tick_params(axis="x", rotation=0)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def pass_at_1_vs_tokens(curve: pd.DataFrame, hue: str = "arm", base: float | None = None,
                        title: str = "held-out pass@1 along training (mean over seeds; band: min..max)"):
    """Held-out pass@1 of each checkpoint against generated tokens so far: one line per `hue` value (the mean
    over seeds at each checkpoint step, x = mean generated tokens), a min..max band over seeds."""
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for label, part in curve.groupby(hue, sort=True):
        by_step = part.groupby("step").agg(tokens=("generated_tokens", "mean"), mean=("pass@1", "mean"),
                                           low=("pass@1", "min"), high=("pass@1", "max"), n=("pass@1", "size"))
        line, = ax.plot(by_step["tokens"], by_step["mean"], marker="o", label=f"{label} (n={int(by_step.n.max())})")
        ax.fill_between(by_step["tokens"], by_step["low"], by_step["high"], alpha=0.15, color=line.get_color())
    if base is not None:
        ax.axhline(base, color="gray", linestyle="--", linewidth=1, label="base model")
    ax.set_xlabel("generated tokens (training)")
    ax.set_ylabel("held-out pass@1")
    return _finish(fig, ax, title, legend_size=7)


def pass_at_1_vs_flops(summary: pd.DataFrame, hue: str | None = None, base: float | None = None,
                       title: str = "held-out pass@1 vs training compute (bars: 95% interval)"):
    """Points from experiment.compute_summary: x = total training FLOPs (log scale), y = pass@1 with its interval.
    With `hue` (a column such as the swept axis) the points of one hue value are joined in order of compute and
    share a colour; every point is labelled with its group."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    parts = summary.groupby(hue, sort=False) if hue else [(None, summary)]
    for name, part in parts:
        part = part.sort_values("total_flops")
        err = [part["pass@1"] - part["ci_low"], part["ci_high"] - part["pass@1"]]
        line = ax.errorbar(part["total_flops"], part["pass@1"], yerr=err, marker="o", capsize=3,
                           linestyle="-" if hue else "none", label=name, alpha=0.85)
        for _, row in part.iterrows():
            ax.annotate(str(row["group"]), (row["total_flops"], row["pass@1"]), fontsize=6, xytext=(3, 3),
                        textcoords="offset points", color=line[0].get_color())
    if base is not None:
        ax.axhline(base, color="gray", linestyle="--", linewidth=1, label="base model")
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs (sampling + self-critic passes + updates)")
    ax.set_ylabel("held-out pass@1")
    return _finish(fig, ax, title)


def seed_bars(summary: pd.DataFrame, title: str = "held-out pass@1: mean over seeds, 95% t-interval; dots = seeds"):
    """Bars from a seed summary (columns arm, mean, ci_low, ci_high, values) with each seed's value as a dot."""
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(summary), 3.6))
    x = range(len(summary))
    ax.bar(x, summary["mean"], yerr=[summary["mean"] - summary["ci_low"], summary["ci_high"] - summary["mean"]],
           capsize=5, color=plt.cm.tab10.colors[: len(summary)], alpha=0.8)
    for i, values in zip(x, summary["values"]):
        ax.scatter([i] * len(values), values, color="black", s=12, zorder=3)
    ax.set_xticks(list(x), summary["arm"], rotation=20)
    ax.set_ylabel("pass@1")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def signal_heat_strip(samples: pd.DataFrame, value: str = "token_advantage", n: int = 6, max_tokens: int = 40,
                      title: str | None = None):
    """Rows = a few logged rollouts, cells = their completion tokens coloured by a per-token signal (blue < 0 <
    red), the token text written in each cell: where in a completion a dense signal concentrates."""
    rows = samples[samples[value].notna()].head(n) if value in samples else samples.head(0)
    fig, ax = plt.subplots(figsize=(min(18, 0.42 * max_tokens + 2), 0.55 * max(1, len(rows)) + 1.0))
    if rows.empty:
        ax.text(0.5, 0.5, f"no samples carry '{value}'", ha="center", va="center")
        ax.axis("off")
        return fig
    grid = np.full((len(rows), max_tokens), np.nan)
    for r, (_, row) in enumerate(rows.iterrows()):
        vals = list(row[value])[:max_tokens]
        grid[r, : len(vals)] = vals
    limit = float(np.nanmax(np.abs(grid))) or 1.0
    ax.imshow(grid, cmap="coolwarm", vmin=-limit, vmax=limit, aspect="auto")
    for r, (_, row) in enumerate(rows.iterrows()):
        for t, token in enumerate(list(row["tokens"])[:max_tokens]):
            ax.text(t, r, str(token).replace("Ġ", " ").replace("Ċ", "\\n")[:6], ha="center", va="center",
                    fontsize=6)
    ax.set_yticks(range(len(rows)), [f"{'pass' if p else 'fail'} r={rw:.0f}" for p, rw in
                                     zip(rows["passed"], rows["reward"])], fontsize=7)
    ax.set_xlabel("completion token")
    ax.set_title(title or f"{value} per token (colour range +-{limit:.2f})", fontsize=10)
    fig.tight_layout()
    return fig


def reliability_diagram(calibration: pd.DataFrame, hue: str = "step", bins: int = 10,
                        title: str = "calibration on held-out rollouts"):
    """Predicted success (binned) against the verifier's pass rate in each bin, one line per `hue` value; the
    diagonal is perfect calibration; marker size ~ rollouts in the bin. `calibration`: columns predicted, passed,
    and `hue` (experiment.value_calibration's rows, optionally with an arm column)."""
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=1, label="perfect")
    for label, part in calibration.groupby(hue, sort=True):
        per_bin = calibration_bins(part["predicted"], part["passed"], bins)
        ax.plot(per_bin["p"], per_bin["y"], marker="o", label=f"{hue} {label} (n={len(part)})")
        ax.scatter(per_bin["p"], per_bin["y"], s=10 + 2 * per_bin["n"], alpha=0.3)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted success")
    ax.set_ylabel("verifier pass rate")
    return _finish(fig, ax, title, legend_size=7)


def cost_bars(costs: pd.DataFrame, title: str = "what each method adds to a GRPO step"):
    """Two panels from a table with columns arm, extra_params, extra_seconds (per step, vs grpo)."""
    fig, axes = plt.subplots(1, 2, figsize=(4 + 1.6 * len(costs), 3.4))
    colors = plt.cm.tab10.colors[: len(costs)]
    bars = axes[0].bar(costs["arm"], costs["extra_params"] / 1e6, color=colors)
    axes[0].bar_label(bars, [f"{int(n):,}" for n in costs["extra_params"]], fontsize=7)  # small heads stay readable
    axes[0].set_ylabel("extra parameters (millions)")
    axes[1].bar(costs["arm"], costs["extra_seconds"], color=colors)
    axes[1].set_ylabel("extra seconds per step vs grpo")
    for ax in axes:
        ax.tick_params(axis="x", rotation=25)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def pass_at_k_by_arm(table: pd.DataFrame, title: str = "pass@k (mean over seeds, 95% t-interval; base: bootstrap)"):
    """pass@k against k (log2 axis), one line per arm with its interval band (experiment.arm_pass_at_k)."""
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for arm, part in table.groupby("arm", sort=False):
        part = part.sort_values("k")
        style = {"color": "gray", "linestyle": "--"} if arm == "base" else {}
        line, = ax.plot(part["k"], part["mean"], marker="o", label=arm, **style)
        ax.fill_between(part["k"], part["ci_low"], part["ci_high"], alpha=0.12, color=line.get_color())
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k (samples per problem)")
    ax.set_ylabel("pass@k")
    return _finish(fig, ax, title, legend_size=7)


def metric_bars(table: pd.DataFrame, metrics: list[str], label: str = "arm"):
    """One small bar panel per metric, one bar per row of `table` (e.g. experiment.reasoning_summary)."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(2.4 * len(metrics), 3.2), squeeze=False)
    colors = list(plt.cm.tab10.colors) * (1 + len(table) // 10)
    for ax, metric in zip(axes[0], metrics):
        ax.bar(table[label], table[metric], color=colors[: len(table)])
        ax.set_title(metric, fontsize=8)
        ax.tick_params(axis="x", rotation=60, labelsize=7)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig
