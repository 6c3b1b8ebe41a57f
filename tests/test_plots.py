"""The figures say what they show: one colour per arm in every figure, log axes for parameter counts and FLOPs,
no line through two points, names that do not run into each other, heat strips with their scale and their whole
tokens, the smoothing window stated. Synthetic frames only: no model, no run folder."""

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402
from matplotlib.colors import to_rgb  # noqa: E402

from scpo_lab import critics, plots  # noqa: E402

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
# 12 names, long ones among them, as in notebook 05's head-to-head
TWELVE = ["grpo", "dapo", "scpo-token", "scpo-span", "scpo-sequence", "scpo-head", "scpo-critic-shared",
          "scpo-critic-separate", "scpo-judge", "scpo-judge-exploitable", "grpo@scpo-critic-separate", "base"]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _rgb(colour):
    return tuple(round(v, 4) for v in to_rgb(colour))


def _metrics(arms, steps=6, seeds=2, seed=0):
    """A metrics frame as Experiment.metrics has it: one row per (run, step)."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame([{"arm": arm, "method": arm, "run": f"{arm}/s{s}", "step": t, "pass_rate": rng.random(),
                          "frac_reward_zero_std": rng.random(), "entropy": rng.random(),
                          "time/generation": rng.random(), "time/teacher": rng.random(), "time/update": rng.random()}
                         for arm in arms for s in range(seeds) for t in range(steps)])


def _seed_summary(arms, seed=0):
    rng = np.random.default_rng(seed)
    mean = rng.random(len(arms)) * 0.3
    return pd.DataFrame({"arm": arms, "mean": mean, "ci_low": mean - 0.05, "ci_high": mean + 0.05,
                         "values": [list(rng.random(3) * 0.3) for _ in arms]})


def _costs(arms):
    params = [0, 1_234, 135_000_000] + [0] * (len(arms) - 3)
    return pd.DataFrame({"arm": arms, "extra_params": params, "extra_seconds": np.linspace(-0.5, 2.0, len(arms))})


def _line_colours(ax) -> dict[str, tuple]:
    """legend label (without its ' (n=..)') -> the colour of its series (a line, or an errorbar's marker)."""
    handles, labels = ax.get_legend_handles_labels()
    out = {}
    for handle, label in zip(handles, labels):
        line = handle[0] if isinstance(handle, tuple) or hasattr(handle, "lines") else handle
        out[label.split(" (n=")[0]] = _rgb(line.get_color())
    return out


def _overlapping(texts, renderer) -> list[tuple[str, str]]:
    """Pairs of drawn, non-empty texts whose window extents share area (touching edges do not count)."""
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts if t.get_visible() and t.get_text()]
    return [(a, b) for i, (a, p) in enumerate(boxes) for b, q in boxes[i + 1:]
            if p.x0 < q.x1 and q.x0 < p.x1 and p.y0 < q.y1 and q.y0 < p.y1]


def _drawn(fig):
    fig.canvas.draw()
    return fig.canvas.get_renderer()


# ----- one colour per arm -----------------------------------------------------------------------------------------

def test_an_arm_has_the_same_colour_in_every_figure():
    # seed_bars colours by row position, training_curves by sorted name: the same arm must still match
    arms = ["scpo-token", "grpo", "sdpo", "dapo"]
    bars = plots.seed_bars(_seed_summary(arms)).axes[0].patches
    by_bar = {arm: _rgb(bar.get_facecolor()) for arm, bar in zip(arms, bars)}
    by_line = _line_colours(plots.training_curves(_metrics(arms[1:]), ("pass_rate",), hue="arm").axes[0])
    cost_bars = plots.cost_bars(_costs(arms)).axes[0].patches
    by_cost = {arm: _rgb(bar.get_facecolor()) for arm, bar in zip(arms, cost_bars)}
    for arm in arms[1:]:
        assert by_bar[arm] == by_line[arm] == by_cost[arm] == _rgb(plots.arm_colour(arm)), arm
    assert plots.arm_colour("grpo/s2") == plots.arm_colour("grpo")  # a run is coloured as its arm


def test_two_arms_in_one_figure_never_share_a_colour():
    # every registered arm, the base model, compute-matched GRPO and a name nobody registered: more than tab10 has
    arms = [*critics.arms(), "base", "grpo@scpo-judge", "grpo@scpo-irl-B", "my-new-arm"]
    bars = plots.seed_bars(_seed_summary(arms)).axes[0].patches
    colours = [_rgb(bar.get_facecolor()) for bar in bars]
    assert len(set(colours)) == len(arms)
    assert plots.arm_colour("my-new-arm") == plots.arm_colour("my-new-arm")  # deterministic, not by call order


# ----- log axes ---------------------------------------------------------------------------------------------------

def test_parameter_counts_and_flops_are_on_log_axes():
    fig = plots.cost_bars(_costs(["grpo", "scpo-head", "scpo-critic-separate"]))
    params = fig.axes[0]
    assert params.get_yscale() == "symlog"  # log above 1, and 0 extra parameters still on the axis
    assert "0" in [t.get_text() for t in params.texts]  # the zero bars say so in words
    summary = pd.DataFrame({"group": ["grpo", "scpo-judge"], "total_flops": [1e15, 3e16], "pass@1": [0.2, 0.3],
                            "ci_low": [0.15, 0.25], "ci_high": [0.25, 0.35]})
    assert plots.pass_at_1_vs_flops(summary).axes[0].get_xscale() == "log"


# ----- no two-point curves ----------------------------------------------------------------------------------------

def _joined_lines(ax):
    """Lines drawn through two or more data points (the base model's reference line excluded)."""
    return [line for line in ax.get_lines() if line.get_label() != "base model"
            and line.get_linestyle() not in ("None", "none", "", " ") and len(line.get_xdata()) >= 2]


def test_two_checkpoints_are_points_with_whiskers_not_a_line():
    rows = [{"arm": arm, "step": step, "generated_tokens": 1000 * step, "pass@1": 0.1 * seed + 0.01 * step}
            for arm in ("grpo", "scpo-token") for step in (4, 8) for seed in range(3)]
    ax = plots.pass_at_1_vs_tokens(pd.DataFrame(rows), base=0.1).axes[0]
    assert not _joined_lines(ax)
    assert not any(isinstance(c, PolyCollection) for c in ax.collections)  # no band between two points either
    assert len(ax.containers) == 2  # one errorbar per arm: the points are there
    ax = plots.training_curves(_metrics(["grpo", "sdpo"], steps=2), ("pass_rate",), hue="arm").axes[0]
    assert not _joined_lines(ax)
    # three checkpoints are a curve again
    rows += [{"arm": arm, "step": 12, "generated_tokens": 12000, "pass@1": 0.3} for arm in ("grpo", "scpo-token")]
    assert len(_joined_lines(plots.pass_at_1_vs_tokens(pd.DataFrame(rows)).axes[0])) == 2


def test_a_two_point_sweep_is_not_joined():
    points = pd.DataFrame({"group": ["g=4", "g=8", "g=16", "s=1", "s=2"], "arm": ["grpo"] * 3 + ["scpo-judge"] * 2,
                           "axis": ["grpo · group_size"] * 3 + ["scpo-judge · judge.samples"] * 2,
                           "value": [4, 8, 16, 1, 2], "total_flops": [1e15, 2e15, 4e15, 1.5e15, 3e15],
                           "pass@1": [0.2, 0.21, 0.22, 0.2, 0.21]})
    points["ci_low"], points["ci_high"] = points["pass@1"] - 0.03, points["pass@1"] + 0.03
    joined = _joined_lines(plots.pass_at_1_vs_flops(points, hue="axis").axes[0])
    assert [line.get_label() for line in joined] == ["grpo · group_size"]


# ----- labels that do not overlap ---------------------------------------------------------------------------------

@pytest.mark.parametrize("figure", ["cost_bars", "seed_bars", "phase_times", "metric_bars"])
def test_twelve_arm_names_do_not_overlap(figure):
    if figure == "cost_bars":
        fig = plots.cost_bars(_costs(TWELVE))
    elif figure == "seed_bars":
        fig = plots.seed_bars(_seed_summary(TWELVE))
    elif figure == "phase_times":
        fig = plots.phase_times(_metrics(TWELVE, steps=2, seeds=1), hue="arm")
    else:  # notebook 05's figure 4: many arms x several measures with long names
        measures = ["hack/auroc", "hack/high_reward_failures", "hack/proxy_gap", "mean_length_vs_grpo",
                    "train_repeated_3gram_rate_vs_grpo"]
        rng = np.random.default_rng(0)
        fig = plots.metric_bars(pd.DataFrame({"arm": TWELVE, **{m: rng.random(12) for m in measures}}), measures)
    renderer = _drawn(fig)
    for ax in fig.axes:
        assert not _overlapping(ax.get_xticklabels(), renderer), (figure, ax.get_xticklabels())
        assert not _overlapping(ax.get_yticklabels(), renderer), figure
        assert not _overlapping(ax.texts, renderer), figure  # bar labels
    assert not _overlapping([ax.title for ax in fig.axes], renderer), figure  # measure names over the panels


def test_flops_point_labels_do_not_overlap():
    # sweep points at almost the same compute and accuracy: their value labels must be moved apart
    points = pd.DataFrame({"group": ["1", "2", "4", "32", "64", "128"], "arm": ["scpo-judge"] * 6,
                           "axis": ["scpo-judge · judge.samples"] * 3
                           + ["scpo-judge · judge.max_critique_tokens"] * 3,
                           "value": [1, 2, 4, 32, 64, 128], "total_flops": [1.50e15, 1.51e15, 1.52e15] * 2,
                           "pass@1": [0.200, 0.201, 0.202] * 2})
    points["ci_low"], points["ci_high"] = points["pass@1"] - 0.03, points["pass@1"] + 0.03
    fig = plots.pass_at_1_vs_flops(points, hue="axis")
    renderer = _drawn(fig)
    ax = fig.axes[0]
    assert sorted(t.get_text() for t in ax.texts) == sorted(str(v) for v in points["value"])
    assert not _overlapping(ax.texts, renderer)
    # methods at their defaults: named in the legend, no text written on the points
    methods = points.assign(group=TWELVE[:6])
    ax = plots.pass_at_1_vs_flops(methods).axes[0]
    assert not ax.texts
    assert [t.get_text() for t in ax.get_legend().get_texts()] == TWELVE[:6]


# ----- heat strips ------------------------------------------------------------------------------------------------

def _samples():
    tokens = [["ĠLet", "Ġus", "Ġcalculate", "Ġthe", "Ġtotal", ":", "Ġ$", "12", "Ġ*", "Ġ2", "Ġ=", "Ġ24", "$", "Ċ",
               "The", "Ġanswer", "Ġis", "Ġ24", "."] * 3,
              ["ĠI", "Ġthink", "Ġconsequently", "Ġ7"]]
    rng = np.random.default_rng(0)
    return pd.DataFrame({"tokens": tokens, "token_advantage": [list(rng.normal(size=len(t))) for t in tokens],
                         "passed": [True, False], "reward": [1.0, 0.0]})


def test_heat_strip_has_a_named_colourbar_and_every_token_whole():
    samples = _samples()
    fig = plots.signal_heat_strip(samples, value="token_advantage", max_tokens=50)
    strip = fig.axes[0]
    bars = [ax for ax in fig.axes if ax is not strip]
    assert len(bars) == 1 and bars[0].get_ylabel() == "token_advantage"  # the colour scale, and what it measures
    drawn = [t.get_text() for t in strip.texts]
    shown = [plots._token_text(t) for row in samples["tokens"] for t in list(row)[:50]]
    assert drawn == shown  # every token, in order, none cut short
    assert "calculate" in " ".join(drawn) and "consequently" in " ".join(drawn)
    renderer = _drawn(fig)
    frame = strip.get_window_extent(renderer)
    for text in strip.texts:  # inside the strip, and clear of its neighbours
        box = text.get_window_extent(renderer)
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1, text.get_text()
    assert not _overlapping(strip.texts, renderer)
    assert "50/57" in strip.get_yticklabels()[0].get_text()  # a cut completion says how much of it is shown


# ----- smoothing, redundant panels --------------------------------------------------------------------------------

def _all_text(fig) -> str:
    texts = [fig._suptitle.get_text() if fig._suptitle else ""]
    for ax in fig.axes:
        texts += [ax.get_title(), ax.get_ylabel(), ax.get_xlabel()]
    return " ".join(texts)


def test_a_smoothed_curve_states_its_window():
    df = _metrics(["grpo", "scpo-token"], steps=8)
    assert "rolling mean over 3 steps" in _all_text(plots.training_curves(df, ("pass_rate",), hue="arm", smooth=3))
    assert "rolling mean" not in _all_text(plots.training_curves(df, ("pass_rate",), hue="arm"))


def test_no_notebook_draws_the_mean_reward_beside_the_pass_rate():
    # with the binary verifier the mean reward is the pass rate: the notebooks draw "pass_rate" (the verifier's
    # alone, also where a length penalty shapes the reward), so no panel repeats another
    calls = []
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
            source = "".join(cell["source"])
            if cell["cell_type"] == "code" and "training_curves(" in source:
                calls.append((path.name, source))
    assert calls
    for name, source in calls:
        assert '"reward"' not in source, name
