"""The figures the notebooks draw. Each function returns a matplotlib Figure.

Conventions every figure keeps, so that figures can be compared with each other:
- one colour per arm everywhere (`arm_colour`): the same arm is the same colour in every figure;
- a series with two x values or fewer is drawn as points with whiskers, not as a line (`_series`): a straight
  segment between two measurements reads as a trend nobody measured;
- arm names on an axis never run into each other (`_fit_xticklabels`, horizontal bars for many measures);
- parameter counts and FLOPs on log axes; a smoothed curve says its window.
"""

from __future__ import annotations

import colorsys
import hashlib
import re

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import Normalize, to_rgb
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from scpo_lab.stats import calibration_bins

# Readable names for the logged metrics (TRL's names are kept in the logs themselves).
LABELS = {
    "reward": "mean reward",
    "pass_rate": "verifier pass rate",
    "frac_reward_zero_std": "fraction of groups the verifier\ncannot tell apart (zero std)",
    "completions/mean_length": "completion length (tokens)",
    "entropy": "token entropy (nats)",
    "kl": "KL to reference",
    "grad_norm": "gradient norm",
    "time/step": "seconds per step",
}

# Distinct colours in a fixed order: tab10 without its grey, tab20's light shades without grey, tab20b's darks.
# Grey is kept for "base" (the untrained model), which every figure draws as the reference.
PALETTE = ([c for i, c in enumerate(plt.cm.tab10.colors) if i != 7]
           + [c for i, c in enumerate(plt.cm.tab20.colors) if i % 2 and i != 15]
           + [plt.cm.tab20b.colors[i] for i in (0, 4, 8, 12, 16)])
BASE_COLOUR = (0.45, 0.45, 0.45)
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")
_SEED = re.compile(r"/s\d+$")  # run labels are "<arm>/s<seed>": a run is coloured as its arm


def _arm_order() -> list[str]:
    """The registry's arms, then the methods that are not arms: the order the palette is handed out in. Read at
    call time, so a critic registered later gets a colour after the built-in ones and moves none of them."""
    from scpo_lab import critics

    return list(dict.fromkeys([*critics.arms(), *critics.methods()]))


def _hashed_colour(name: str, salt: int = 0) -> tuple[float, float, float]:
    """A colour from the name's md5 (stable across processes, unlike hash()): any hue, mid lightness."""
    digest = hashlib.md5(f"{name}#{salt}".encode()).digest()
    hue, light, sat = digest[0] / 256, 0.38 + 0.2 * digest[1] / 255, 0.55 + 0.35 * digest[2] / 255
    return tuple(round(v, 4) for v in colorsys.hls_to_rgb(hue, light, sat))


def arm_colour(arm: str) -> tuple[float, float, float]:
    """The colour of an arm in every figure: the registry's arms (scpo_lab.critics.arms(), then the methods that
    are not arms) take the palette in order, "base" is grey, and any other name (a compute-matched
    "grpo@<arm>", a sweep axis) a colour from a hash of its name. "<arm>/s<seed>" is coloured as <arm>."""
    arm = _SEED.sub("", str(arm))
    if arm == "base":
        return BASE_COLOUR
    order = _arm_order()
    if arm in order and order.index(arm) < len(PALETTE):
        return tuple(to_rgb(PALETTE[order.index(arm)]))
    return _hashed_colour(arm)


def arm_colours(names) -> dict[str, tuple[float, float, float]]:
    """arm_colour for each name of one figure, where two different arms never share a colour: a hashed colour
    that lands on one already taken in this figure is drawn again from the next salt."""
    out, owner = {}, {}
    for name in dict.fromkeys(str(n) for n in names):
        arm, colour, salt = _SEED.sub("", name), arm_colour(name), 0
        while owner.get(colour, arm) != arm:
            salt += 1
            colour = _hashed_colour(arm, salt)
        owner[colour], out[name] = arm, colour
    return out


def _series(ax, x, y, colour, label, low=None, high=None, marker=None, dodge: float = 0.0, **style):
    """One series: a line with a low..high band, or, with two x values or fewer, markers with low..high whiskers
    and no connecting line, shifted by `dodge` (x units) so that several series' points sit side by side."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(np.unique(x[~np.isnan(x)])) > 2:
        ax.plot(x, y, color=colour, label=label, marker=marker, **style)
        if low is not None:
            ax.fill_between(x, low, high, alpha=0.15, color=colour, linewidth=0)
    else:
        yerr = None if low is None else [y - np.asarray(low, float), np.asarray(high, float) - y]
        ax.errorbar(x + dodge, y, yerr=yerr, color=colour, label=label, marker=marker or "o", linestyle="none",
                    capsize=3, markersize=5)


def _dodges(names, x_values, points: bool) -> dict:
    """name -> its x shift when `points` (series of two x values or fewer, drawn as points): the names side by
    side around each x, 0.3 of the x range (or of 1) shared among them; 0 for every name when drawn as lines."""
    names = list(names)
    span = 0.3 / max(1, len(names)) * (float(np.max(x_values) - np.min(x_values)) or 1.0)
    return {name: span * (i - (len(names) - 1) / 2) if points else 0.0 for i, name in enumerate(names)}


def _renderer(fig):
    """The figure's renderer (Agg and the notebook's inline backend have one); None elsewhere."""
    get = getattr(fig.canvas, "get_renderer", None)
    return get() if get is not None else None


def _overlap(a, b) -> bool:
    """Whether two window extents share any area (touching edges do not count)."""
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def _any_overlap(texts, renderer) -> bool:
    boxes = [t.get_window_extent(renderer) for t in texts if t.get_visible() and t.get_text()]
    return any(_overlap(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def _fit_xticklabels(fig, axes) -> None:
    """Arm names side by side where they fit, turned upright where they would run into each other (a turned
    label's box is one line tall, so the figure widths below, >= 0.4 in per bar, keep them apart)."""
    fig.tight_layout()
    renderer = _renderer(fig)
    turned = [ax for ax in axes if renderer is None or _any_overlap(ax.get_xticklabels(), renderer)]
    for ax in turned:
        ax.tick_params(axis="x", rotation=90)
    if turned and renderer is not None:  # the figure grows by the upright names' length, not the plot shrinks
        tall = max(t.get_window_extent(renderer).height for ax in turned for t in ax.get_xticklabels())
        fig.set_figheight(fig.get_figheight() + tall / fig.dpi)
    fig.tight_layout()


def _separate_labels(fig, texts, step: float = 7.0, tries: int = 16) -> None:
    """Move point annotations up or down (in offset points, further each try) until none overlaps one placed
    before it: labels of nearby points are read, not stacked."""
    renderer = _renderer(fig)
    if renderer is None:
        return
    placed = []
    for text in texts:
        x0, y0 = text.xyann
        for k in range(tries):
            box = text.get_window_extent(renderer)
            if not any(_overlap(box, p) for p in placed):
                break
            text.xyann = (x0, y0 + step * (k // 2 + 1) * (1 if k % 2 == 0 else -1))
        placed.append(text.get_window_extent(renderer))


def _wrap(name: str, width: int) -> str:
    """A metric name on lines of at most `width` characters, broken after "_", "/" or "-" (not mid-word)."""
    lines = [""]
    for piece in re.findall(r"[^_/\-]+[_/\-]?|[_/\-]", name):
        if lines[-1] and len(lines[-1]) + len(piece) > width:
            lines.append("")
        lines[-1] += piece
    return "\n".join(lines)


def _compact(n: float) -> str:
    """12345 -> '12.3k', 0 -> '0': bar labels short enough for a narrow bar."""
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= size:
            return f"{n / size:.3g}{suffix}"
    return f"{n:.0f}"


def _finish(fig, ax, title: str, legend_size: int = 7):
    """The common end of a one-panel figure: title, legend, light grid, tight layout."""
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=legend_size)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def training_curves(df: pd.DataFrame, metrics=("pass_rate", "frac_reward_zero_std"), *, hue: str = "method",
                    x: str = "step", smooth: int = 1, title: str | None = None):
    """One panel per metric, one series per `hue` value; with several seeds the line is the mean and the band
    spans the min..max over seeds (two steps or fewer: points with min..max whiskers). `smooth` = trailing
    rolling-mean window over steps (1 = raw), stated in the figure's title. With the binary verifier "reward"
    is the pass rate: draw "pass_rate" (the verifier's alone, also under a length penalty)."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 3.4), squeeze=False)
    colours = arm_colours(sorted(df[hue].unique()))
    # two steps or fewer are drawn as points: side by side, a few hundredths of the step apart, not on each other
    dodge = _dodges(colours, df[x], df[x].nunique() <= 2)
    for ax, metric in zip(axes[0], metrics):
        for label, part in df.groupby(hue, sort=True):
            per_run = part.pivot_table(index=x, columns="run", values=metric)
            if smooth > 1:
                per_run = per_run.rolling(smooth, min_periods=1).mean()
            mean = per_run.mean(axis=1)
            several = per_run.shape[1] > 1
            _series(ax, mean.index, mean.values, colours[str(label)], f"{label} (n={per_run.shape[1]})",
                    per_run.min(axis=1) if several else None, per_run.max(axis=1) if several else None,
                    dodge=dodge[str(label)])
        ax.set_xlabel(x.replace("_", " "))
        ax.set_ylabel(LABELS.get(metric, metric))
        if x == "step":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)
    window = (f"rolling mean over {smooth} " + ("steps" if x == "step" else f"values of {x}")) if smooth > 1 else ""
    heading = "; ".join(part for part in (title, window) if part)
    if heading:
        fig.suptitle(heading, fontsize=10)
    fig.tight_layout()
    return fig


def pass_at_1_bars(results: dict, title: str = "held-out pass@1 (95% bootstrap interval over problems)"):
    """Bars of pass@1 with interval whiskers; `results` maps a label to an EvalResult (or its dict)."""
    labels = list(results)
    rows = [r if isinstance(r, dict) else r.to_dict() for r in results.values()]
    values = [r["pass_at_1"] for r in rows]
    errors = [[v - r["ci_low"] for v, r in zip(values, rows)], [r["ci_high"] - v for v, r in zip(values, rows)]]
    colours = arm_colours(labels)
    fig, ax = plt.subplots(figsize=(2 + 0.9 * len(labels), 3.6))
    x = range(len(labels))
    ax.bar(x, values, yerr=errors, capsize=6, color=[colours[lab] for lab in labels])
    for i, (v, r) in enumerate(zip(values, rows)):
        ax.text(i, r["ci_high"] + 0.01, f"{v:.3f}", ha="center", va="bottom", fontweight="bold", fontsize=8)
    ax.set_xticks(list(x), labels)
    ax.set_ylabel("pass@1")
    ax.set_ylim(0, max(0.05, max(r["ci_high"] for r in rows) * 1.2))
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    _fit_xticklabels(fig, [ax])
    return fig


def pass_at_k_curves(results: dict, title: str = "pass@k (unbiased estimator, 95% interval)"):
    fig, ax = plt.subplots(figsize=(5, 3.4))
    colours = arm_colours(results)
    for label, r in results.items():
        table = pd.DataFrame((r if isinstance(r, dict) else r.to_dict())["pass_at_k"])
        _series(ax, table["k"], table["pass_at_k"], colours[str(label)], label, table["ci_low"], table["ci_high"],
                marker="o")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k")
    ax.set_ylabel("pass@k")
    return _finish(fig, ax, title, legend_size=8)


def phase_times(df: pd.DataFrame, hue: str = "method"):
    """Stacked mean seconds per step by phase (generation, verification, teacher, update) for each method. The
    phases are shades of grey, so that no phase reads as an arm's colour."""
    phases = [c for c in ("time/generation", "time/verification", "time/teacher", "time/update") if c in df]
    means = df.groupby(hue, sort=False)[phases].mean()  # the arms in the order they ran, as in the other figures
    fig, ax = plt.subplots(figsize=(3.5 + 0.45 * len(means), 3.6))
    shades = [plt.cm.Greys(v) for v in np.linspace(0.85, 0.3, len(phases))]
    means.rename(columns=lambda c: c.split("/")[1]).plot.bar(stacked=True, ax=ax, color=shades, edgecolor="black",
                                                            linewidth=0.4)
    ax.set_ylabel("seconds per step")
    ax.set_xlabel("")
    ax.tick_params(axis="x", rotation=0)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
    ax.grid(axis="y", alpha=0.3)
    _fit_xticklabels(fig, [ax])
    return fig


def pass_at_1_vs_tokens(curve: pd.DataFrame, hue: str = "arm", base: float | None = None,
                        title: str = "held-out pass@1 along training (mean over seeds; min..max over seeds)"):
    """Held-out pass@1 of each checkpoint against generated tokens so far: one line per `hue` value (the mean
    over seeds at each checkpoint step, x = mean generated tokens), a min..max band over seeds; with two
    checkpoints or fewer, points with min..max whiskers and no line, the arms of a checkpoint side by side.
    The legend sits beside the axes, where it hides no point."""
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    colours = arm_colours(sorted(curve[hue].unique()))
    dodged = curve["step"].nunique() <= 2  # points of one checkpoint side by side, not on each other
    dodge = _dodges(colours, curve["generated_tokens"], dodged)
    for label, part in curve.groupby(hue, sort=True):
        by_step = part.groupby("step").agg(tokens=("generated_tokens", "mean"), mean=("pass@1", "mean"),
                                           low=("pass@1", "min"), high=("pass@1", "max"), n=("pass@1", "size"))
        _series(ax, by_step["tokens"], by_step["mean"], colours[str(label)], f"{label} (n={int(by_step.n.max())})",
                by_step["low"], by_step["high"], marker="o",
                dodge=dodge[str(label)])
    if base is not None:
        ax.axhline(base, color=BASE_COLOUR, linestyle="--", linewidth=1, label="base model")
    ax.set_xlabel("generated tokens (training)" + ("; a checkpoint's arms drawn side by side" if dodged else ""))
    ax.set_ylabel("held-out pass@1")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def pass_at_1_vs_flops(summary: pd.DataFrame, hue: str | None = None, base: float | None = None,
                       title: str = "held-out pass@1 vs training compute (bars: 95% interval)"):
    """Points from conclusions.compute_summary: x = total training FLOPs (log scale), y = pass@1 with its interval.
    Without `hue` each point is a group (an arm), named by its colour and marker in the legend: no text on the
    points, which overlaps where arms spent similar compute. With `hue` (a column such as the swept axis) the
    points of one hue value share a marker and a colour (their arm's, from an `arm` column if there is one), are
    joined in order of compute when there are more than two, and each is labelled with its `value` (or its
    group), moved apart where labels would collide."""
    fig, ax = plt.subplots(figsize=(8, 4.4))
    labels = []
    if hue is None:
        colours = arm_colours(summary["group"])
        for i, (_, row) in enumerate(summary.iterrows()):
            err = [[row["pass@1"] - row["ci_low"]], [row["ci_high"] - row["pass@1"]]]
            ax.errorbar([row["total_flops"]], [row["pass@1"]], yerr=err, marker=MARKERS[i % len(MARKERS)],
                        capsize=3, linestyle="none", color=colours[str(row["group"])], label=row["group"])
    else:
        arm_of = (summary.groupby(hue, sort=False)["arm"].first() if "arm" in summary
                  else pd.Series(summary[hue].unique(), index=summary[hue].unique()))
        colours = arm_colours(arm_of.values)
        for i, (name, part) in enumerate(summary.groupby(hue, sort=False)):
            part = part.sort_values("total_flops")
            colour = colours[str(arm_of[name])]
            _series(ax, part["total_flops"], part["pass@1"], colour, name, part["ci_low"], part["ci_high"],
                    marker=MARKERS[i % len(MARKERS)], alpha=0.85)
            for _, row in part.iterrows():
                text = row["value"] if "value" in part else row["group"]
                labels.append(ax.annotate(str(text), (row["total_flops"], row["pass@1"]), fontsize=7,
                                          xytext=(5, 4), textcoords="offset points", color=colour, zorder=5,
                                          bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none",
                                                "pad": 0.5}))  # readable over the whiskers
    if base is not None:
        ax.axhline(base, color=BASE_COLOUR, linestyle="--", linewidth=1, label="base model")
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs (log scale; sampling + self-critic passes + updates)")
    ax.set_ylabel("held-out pass@1")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _separate_labels(fig, labels)  # after the layout: offsets are in points, positions in pixels
    return fig


def seed_bars(summary: pd.DataFrame, title: str = "held-out pass@1: mean over seeds, 95% t-interval; dots = seeds"):
    """Bars from a seed summary (columns arm, mean, ci_low, ci_high, values) with each seed's value as a dot."""
    arms = [str(a) for a in summary["arm"]]
    colours = arm_colours(arms)
    fig, ax = plt.subplots(figsize=(2.4 + 0.5 * len(summary), 3.8))
    x = range(len(summary))
    ax.bar(x, summary["mean"], yerr=[summary["mean"] - summary["ci_low"], summary["ci_high"] - summary["mean"]],
           capsize=5, color=[colours[a] for a in arms], alpha=0.8)
    for i, values in zip(x, summary["values"]):
        ax.scatter([i] * len(values), values, color="black", s=12, zorder=3)
    ax.set_xticks(list(x), arms)
    ax.set_ylabel("pass@1")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    _fit_xticklabels(fig, [ax])
    return fig


def _token_text(token) -> str:
    """A logged token as read: byte-level BPE's space and newline marks (and SentencePiece's space) undone, a
    newline or tab written as an escape so the row stays one line."""
    text = str(token).replace("Ġ", " ").replace("▁", " ").replace("Ċ", "\n").replace("ĉ", "\t")
    return text.replace("\n", "\\n").replace("\t", "\\t")


def signal_heat_strip(samples: pd.DataFrame, value: str = "token_advantage", n: int = 6, max_tokens: int = 40,
                      title: str | None = None, line_chars: int = 100, fontsize: float = 7):
    """A few logged rollouts as text, each token on a cell coloured by a per-token signal (blue < 0 < red, the
    colourbar names it): where in a completion a dense signal concentrates. Each rollout's first `max_tokens`
    tokens are written whole in a monospace font, wrapping onto the next line after `line_chars` characters
    (no token is cut short); a row's label says pass/fail, the reward, and how many tokens are shown."""
    rows = samples[samples[value].notna()].head(n) if value in samples else samples.head(0)
    if rows.empty:
        fig, ax = plt.subplots(figsize=(6, 1.5))
        ax.text(0.5, 0.5, f"no samples carry '{value}'", ha="center", va="center")
        ax.axis("off")
        return fig
    cells, starts, line = [], [], 0  # cells: (line, first character, width, text, value)
    for _, row in rows.iterrows():
        tokens = list(row["tokens"])
        values = list(row[value])[:max_tokens]
        starts.append((line, len(tokens)))
        column = 0
        for t, token in enumerate(tokens[:max_tokens]):
            text = _token_text(token)
            width = max(1, len(text))
            if column and column + width > line_chars:
                line, column = line + 1, 0
            cells.append((line, column, width, text, values[t] if t < len(values) else np.nan))
            column += width
        line += 1
    n_lines, columns = line, max(line_chars, max(c + w for _, c, w, _, _ in cells))
    finite = np.array([v for *_, v in cells], dtype=float)
    limit = float(np.nanmax(np.abs(finite))) if np.isfinite(finite).any() else 1.0
    norm, cmap = Normalize(-(limit or 1.0), limit or 1.0), plt.cm.coolwarm

    # sized from the font: a monospace character is 0.6 em wide; 0.7 em per cell leaves room on both sides
    char_w, line_h = 0.7 * fontsize / 72, 1.9 * fontsize / 72
    left, right, top, bottom = 1.9, 1.2, 0.45, 0.35
    width, height = left + columns * char_w + right, top + n_lines * line_h + bottom
    fig = plt.figure(figsize=(width, height))
    ax = fig.add_axes((left / width, bottom / height, columns * char_w / width, n_lines * line_h / height))
    for ln, col, w, text, v in cells:
        face = cmap(norm(v)) if np.isfinite(v) else (0.92, 0.92, 0.92, 1.0)
        ax.add_patch(Rectangle((col, ln - 0.5), w, 1, facecolor=face, edgecolor="white", linewidth=0.5))
        ax.text(col + w / 2, ln, text, ha="center", va="center", fontsize=fontsize, family="monospace",
                parse_math=False)
    ax.set_xlim(0, columns)
    ax.set_ylim(n_lines - 0.5, -0.5)
    ax.set_xticks([])
    for first, _ in starts[1:]:
        ax.axhline(first - 0.5, color="black", linewidth=0.8)
    ax.set_yticks([first for first, _ in starts],
                  [f"{'pass' if p else 'fail'} r={rw:.2g} · {min(total, max_tokens)}/{total} tokens"
                   for (first, total), p, rw in zip(starts, rows["passed"], rows["reward"])], fontsize=fontsize)
    ax.set_title(title or f"{value} per token", fontsize=10)
    cax = fig.add_axes(((left + columns * char_w + 0.25) / width, bottom / height, 0.12 / width,
                        n_lines * line_h / height))
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), cax=cax).set_label(value, fontsize=8)
    cax.tick_params(labelsize=7)
    return fig


def reliability_diagram(calibration: pd.DataFrame, hue: str = "step", bins: int = 10,
                        title: str = "calibration on held-out rollouts"):
    """Predicted success (binned) against the verifier's pass rate in each bin, one line per `hue` value; the
    diagonal is perfect calibration; marker size ~ rollouts in the bin. `calibration`: columns predicted, passed,
    and `hue` (experiment.value_calibration's rows, optionally with an arm column). Steps are ordered, so their
    colours run along a sequential map (not the arms' colours)."""
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=1, label="perfect")
    groups = list(calibration.groupby(hue, sort=True))
    for i, (label, part) in enumerate(groups):
        colour = plt.cm.viridis(0.85 * i / max(1, len(groups) - 1))
        per_bin = calibration_bins(part["predicted"], part["passed"], bins)
        ax.plot(per_bin["p"], per_bin["y"], marker="o", color=colour, label=f"{hue} {label} (n={len(part)})")
        ax.scatter(per_bin["p"], per_bin["y"], s=10 + 2 * per_bin["n"], alpha=0.3, color=colour)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted success")
    ax.set_ylabel("verifier pass rate")
    return _finish(fig, ax, title, legend_size=7)


def cost_bars(costs: pd.DataFrame, title: str = "what each method adds to a GRPO step"):
    """Two panels from a table with columns arm, extra_params, extra_seconds (per step, vs grpo). Extra parameters
    span 0 (most arms) to a second model, so that axis is symmetric-log: linear below 1, log above, 0 on it; each
    bar is labelled with its count."""
    arms = [str(a) for a in costs["arm"]]
    by_arm = arm_colours(arms)
    colours = [by_arm[a] for a in arms]
    x = range(len(arms))
    fig, axes = plt.subplots(1, 2, figsize=(3 + 0.9 * len(costs), 3.8))
    bars = axes[0].bar(x, costs["extra_params"], color=colours)
    axes[0].set_yscale("symlog", linthresh=1)
    axes[0].set_ylim(0, max(10.0, float(costs["extra_params"].max()) * 10))  # room for the bar labels
    axes[0].bar_label(bars, [_compact(v) for v in costs["extra_params"]], fontsize=7)
    axes[0].set_ylabel("extra parameters (symlog)")
    axes[1].bar(x, costs["extra_seconds"], color=colours)
    axes[1].axhline(0, color="black", linewidth=0.6)
    axes[1].set_ylabel("extra seconds per step\nvs grpo")
    for ax in axes:
        ax.set_xticks(list(x), arms)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    _fit_xticklabels(fig, axes)
    return fig


def pass_at_k_by_arm(table: pd.DataFrame, title: str = "pass@k (mean over seeds, 95% t-interval; base: bootstrap)"):
    """pass@k against k (log2 axis), one line per arm with its interval band (conclusions.arm_pass_at_k); with two
    values of k or fewer, points with whiskers."""
    fig, ax = plt.subplots(figsize=(6, 3.8))
    colours = arm_colours(table["arm"].unique())
    for arm, part in table.groupby("arm", sort=False):
        part = part.sort_values("k")
        style = {"linestyle": "--"} if arm == "base" else {}
        _series(ax, part["k"], part["mean"], colours[str(arm)], arm, part["ci_low"], part["ci_high"], marker="o",
                **style)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k (samples per problem)")
    ax.set_ylabel("pass@k")
    return _finish(fig, ax, title, legend_size=7)


def metric_bars(table: pd.DataFrame, metrics: list[str], label: str = "arm"):
    """One small panel per metric, one horizontal bar per row of `table` (e.g. conclusions.reasoning_summary):
    the rows' names are read once, down the left, however many there are; a missing value is written "n/a"
    rather than drawn as a bar of 0."""
    names = [str(v) for v in table[label]]
    colours = arm_colours(names)
    y = np.arange(len(names))
    fig, axes = plt.subplots(1, len(metrics), figsize=(1.8 + 2.2 * len(metrics), 1.1 + 0.24 * len(names)),
                             sharey=True, squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        values = pd.to_numeric(table[metric], errors="coerce").to_numpy(dtype=float)
        ax.barh(y, np.nan_to_num(values), color=[colours[n] for n in names])
        for i in np.flatnonzero(np.isnan(values)):
            ax.text(0, i, " n/a", va="center", fontsize=7, color="0.35")
        ax.axvline(0, color="black", linewidth=0.6)
        ax.set_title(_wrap(metric, 18), fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(y, names, fontsize=8)
    axes[0][0].invert_yaxis()  # the table's first row on top
    fig.tight_layout()
    return fig
