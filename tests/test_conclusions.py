"""The comparison rule and the tables of scpo_lab.conclusions on hand-made evaluations with known answers."""

import numpy as np
import pandas as pd
import pytest

from scpo_lab.conclusions import (ALPHA, MIN_SEEDS, compare, comparison_sentence, conclude, differing_problems,
                                  headline, paired_comparisons, p_text, paired_difference, pass_at_k_lines,
                                  seed_summary, sweep_lines, verdict)
from scpo_lab.evaluation import EvalResult

N = 4  # samples per problem


def _eval(correct: list[int], seed: int = 1234, n: int = N) -> EvalResult:
    """An evaluation of len(correct) problems, `correct[i]` of n samples passing on problem i."""
    per_problem = [{"problem_id": f"p{i}", "n": n, "correct": int(c)} for i, c in enumerate(correct)]
    rate = sum(correct) / (n * len(correct))
    return EvalResult(task="arithmetic", split="test", n_problems=len(correct), n_samples=n, temperature=1.0,
                      max_new_tokens=48, seed=seed, pass_at_1=rate, ci_low=rate, ci_high=rate,
                      pass_at_k=[{"k": 1, "pass_at_k": rate, "ci_low": rate, "ci_high": rate}],
                      per_problem=per_problem)


def _arms(tables: dict[str, np.ndarray], n: int = N):
    """{arm: seeds x problems correct counts of n samples} -> (evals, arm_of) with labels arm/s<seed>."""
    evals, arm_of = {}, {}
    for arm, counts in tables.items():
        for seed, row in enumerate(counts):
            evals[f"{arm}/s{seed}"] = _eval(list(row), n=n)
            arm_of[f"{arm}/s{seed}"] = arm
    return evals, arm_of


def test_pairing_removes_the_noise_both_arms_share():
    """Seed and problem effects shared by both arms (same prompts, same problems) cancel in the paired difference:
    arm b solves exactly one more sample of every problem than arm a in every seed, so the difference is 1/N with
    a zero-width interval, while each arm's own interval is wide."""
    rng = np.random.default_rng(0)
    a = rng.integers(0, N, size=(5, 30))  # 0..3 of 4: room for one more
    evals, arm_of = _arms({"a": a, "b": a + 1})
    paired = paired_difference({k: v for k, v in evals.items() if arm_of[k] == "b"},
                               {k: v for k, v in evals.items() if arm_of[k] == "a"})
    interval = paired.interval
    assert (interval.value, interval.low, interval.high) == pytest.approx((1 / N, 1 / N, 1 / N))
    assert (paired.seeds_agree, paired.seeds, interval.problems) == (5, 5, 30)
    assert paired.passes - paired.reference_passes == 5 * 30  # one more sample of each problem in each seed
    summary = seed_summary(evals, arm_of).set_index("arm")
    assert summary.loc["a", "ci_high"] - summary.loc["a", "ci_low"] > 0.05
    assert ((summary["ci_low"] >= 0) & (summary["ci_high"] <= 1)).all()


def test_pairs_by_seed_and_problem_id_not_by_position():
    """b's evaluations listed in another seed order and with problems in another order pair with a's by seed and
    problem id: the difference stays exact."""
    a = np.array([[0, 1, 2], [3, 0, 1]])
    evals = {"a/s0": _eval(list(a[0])), "a/s1": _eval(list(a[1]))}
    b1, b0 = _eval(list(a[1] + 1)), _eval(list(a[0] + 1))
    b0.per_problem = b0.per_problem[::-1]
    evals |= {"b/s1": b1, "b/s0": b0}
    interval = paired_difference({k: evals[k] for k in ("b/s1", "b/s0")},
                                 {k: evals[k] for k in ("a/s0", "a/s1")}).interval
    assert interval.value == pytest.approx(1 / N) and interval.high - interval.low == pytest.approx(0)


def test_the_rule_needs_min_seeds_and_holm():
    assert verdict(0.1, 0.001, MIN_SEEDS - 1) == "no claim"
    assert verdict(0.1, 0.001, MIN_SEEDS) == "better"
    assert verdict(-0.1, 0.001, MIN_SEEDS) == "worse"
    assert verdict(0.1, ALPHA, MIN_SEEDS) == "not separated"
    rng = np.random.default_rng(1)
    ref = rng.integers(0, 3, size=(MIN_SEEDS, 40))
    clear = ref + 1  # +0.25 in every cell: beats the reference
    noisy = ref[:, ::-1]  # the same counts on other problems: every seed's mean difference is exactly 0
    evals, arm_of = _arms({"grpo": ref, "clear": clear, "noisy": noisy})
    table = paired_comparisons(evals, arm_of, references=("grpo",)).set_index("arm")
    assert table.loc["clear", "verdict"] == "better" and table.loc["noisy", "verdict"] == "not separated"
    assert table.loc["clear", "p_holm"] == pytest.approx(2 * table.loc["clear", "p"])  # Holm over the two
    assert (table["comparisons"] == 2).all() and table.loc["noisy", "caveats"] == ""  # a zero difference: no sign
    # three seeds: the same data makes no claim, and no Holm family is formed
    few, few_of = _arms({"grpo": ref[:3], "clear": clear[:3]})
    row = paired_comparisons(few, few_of, references=("grpo",)).iloc[0]
    assert row.verdict == "no claim" and "3 paired seeds" in row.caveats and np.isnan(row.p_holm)


def test_holm_turns_marginal_wins_among_many_comparisons_into_not_separated(monkeypatch):
    """Ten arms whose bootstrap p-values are 0.004, 0.01, 0.02, ... (fixed here, so the test does not hang on one
    random draw): alone four would pass at 0.05; Holm over ten keeps only the first (10 x 0.004 = 0.04)."""
    import scpo_lab.conclusions as conclusions
    from scpo_lab.stats import Interval

    p_of = {f"arm{i}": p for i, p in enumerate([0.004, 0.01, 0.02, 0.03, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])}
    tables = {"grpo": np.ones((MIN_SEEDS, 5), int)} | {arm: np.full((MIN_SEEDS, 5), 2) for arm in p_of}
    evals, arm_of = _arms(tables)
    order = iter(p_of.values())
    monkeypatch.setattr(conclusions, "seeds_by_problems_bootstrap",
                        lambda x, n_boot, bounds: Interval(float(np.mean(x)), 0.1, 0.4, next(order), *np.shape(x)))
    table = paired_comparisons(evals, arm_of, references=("grpo",)).set_index("arm")
    assert (table["p"] < ALPHA).sum() == 4
    assert table.loc["arm0", "verdict"] == "better" and (table.drop(index="arm0")["verdict"] == "not separated").all()
    assert table.loc["arm0", "p_holm"] == pytest.approx(0.04) and table.loc["arm1", "p_holm"] == pytest.approx(0.09)


def test_an_exact_zero_difference_has_no_sign_where_rates_are_not_binary_fractions():
    """At 3 samples a problem the rates c / 3 are inexact in binary: a difference that is exactly 0 summed to
    ~1e-18, and its sign printed "-0.000" or "+0.000" with "k of 5 seeds agree in sign" (the N = 4 case above is
    exact, so it could not see this)."""
    ref = np.random.default_rng(6).integers(0, 4, size=(MIN_SEEDS, 7))
    assert (ref[:, ::-1] / 3 - ref / 3).mean() != 0  # the rounding is there (-1.7e-17 with this draw)
    evals, arm_of = _arms({"grpo": ref, "mirror": ref[:, ::-1]}, n=3)
    row = paired_comparisons(evals, arm_of, references=("grpo",)).iloc[0]
    assert row.difference == 0.0 and row.verdict == "not separated" and "agree in sign" not in row.caveats
    assert "mirror − grpo: +0.000 [" in comparison_sentence(row)


def test_differing_problems_pools_only_the_paired_seeds():
    """The reference has seed 0 only, where both arms solve nothing: no problem differs on the paired seed, however
    well the arm's unpaired seeds 1-4 did (pooling them showed a 0.8 gap the comparison does not see)."""
    evals = {"a/s0": _eval([0, 0]), "b/s0": _eval([0, 0])} | {f"a/s{s}": _eval([N, 0]) for s in range(1, 5)}
    arm_of = {label: label.split("/")[0] for label in evals}
    table = differing_problems(evals, arm_of, "a", "b")
    assert (table["a"] == 0.0).all() and (table["b"] == 0.0).all()
    arm_a = {k: v for k, v in evals.items() if k[0] == "a"}
    assert paired_difference(arm_a, {"b/s0": evals["b/s0"]}).interval.value == 0


def test_sweep_and_pass_at_k_lines_state_no_direction_under_min_seeds():
    """The rule holds in the instrument lines too: a sweep whose fewest-seeded point has 1 seed says which way the
    intervals lie and makes no claim (it read "pass@1 rises with compute" when any point had 5); an arm of 1 seed
    beyond the base model's interval is not listed as below it."""
    points = pd.DataFrame({"axis": ["G", "G"], "value": [4, 16], "total_flops": [1e12, 4e12], "runs": [1, MIN_SEEDS],
                           "pass@1": [0.1, 0.4], "ci_low": [0.05, 0.3], "ci_high": [0.15, 0.5],
                           "ci_over": ["problems", "seeds x problems"]})
    (line,) = sweep_lines(points)
    assert "rises" not in line and "lies above the cheapest's, but at 1 seed(s) a point" in line and "no claim" in line
    (line,) = sweep_lines(points.assign(runs=MIN_SEEDS))
    assert "pass@1 rises with compute" in line and "no claim" not in line
    (line,) = sweep_lines(points.assign(ci_low=[0.05, 0.1]))
    assert "overlap: no effect shown" in line
    passk = pd.DataFrame({"arm": ["base", "one_seed", "five_seeds"], "k": [8, 8, 8], "mean": [0.5, 0.1, 0.1],
                          "ci_low": [0.4, 0.05, 0.05], "ci_high": [0.6, 0.15, 0.15], "seeds": [1, 1, MIN_SEEDS]})
    below = pass_at_k_lines(passk)[1]
    assert "seeds: five_seeds;" in below and "no claim for one_seed" in below


def test_pairing_refuses_what_cannot_be_paired():
    a = {"a/s0": _eval([1, 2])}
    with pytest.raises(ValueError, match="other settings"):
        paired_difference({"b/s0": _eval([1, 2], seed=7)} | a, a)
    with pytest.raises(ValueError, match="lacks 1 of the problems"):
        paired_difference(a, {"b/s0": _eval([1])})
    with pytest.raises(ValueError, match="share no training seed"):
        paired_difference(a, {"b/s3": _eval([1, 2])})
    with pytest.raises(ValueError, match="/s<seed>"):
        paired_difference({"a": _eval([1, 2])}, a)


def test_conclude_states_the_finding_by_the_rule_with_its_caveats():
    rng = np.random.default_rng(3)
    ref = rng.integers(0, 3, size=(MIN_SEEDS, 40))
    evals, arm_of = _arms({"grpo": ref, "dapo": ref, "better": ref + 1})
    evals["base"] = _eval([0] * 40)
    conclusion = conclude(evals, arm_of, profile="cpu")
    assert conclusion.headline.startswith("better beats grpo (+0.250") and "better beats dapo" in conclusion.headline
    text = conclusion.markdown()
    assert "Holm" in text and "Rule:" in text and "Smoke" not in text
    one = {k: v for k, v in evals.items() if k.endswith("/s0")}
    small = conclude(one, {k: arm_of[k] for k in one if k != "base"}, profile="smoke")
    assert small.headline.startswith("No claim") and "One seed only" in small.markdown() and "Smoke" in small.markdown()
    assert headline(pd.DataFrame()) == "No paired comparison was made."


def test_conclude_records_the_git_commits_that_trained_the_runs(tmp_path):
    """From each run folder's provenance (config.json's git_commit). RunDir.config drops provenance keys, so
    reading it there gave "unknown" for every run (the index's "runs trained at" column, before this test)."""
    from types import SimpleNamespace

    from scpo_lab.runs import RunDir, provenance

    folders = [RunDir.create({"method": "grpo", "seed": seed}, runs_dir=tmp_path) for seed in (0, 1)]
    evals, arm_of = _arms({"grpo": np.ones((MIN_SEEDS, 5), int), "x": np.ones((MIN_SEEDS, 5), int)})
    conclusion = conclude(evals, arm_of, profile="cpu", runs={f"r{i}": SimpleNamespace(dir=d) for i, d in
                                                              enumerate(folders)})
    assert conclusion.train_commits == [provenance()["git_commit"]] and "unknown" not in conclusion.train_commits


def test_show_puts_the_headline_in_the_output_metadata(monkeypatch):
    import IPython.display

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda obj, metadata=None: shown.append(metadata))
    evals, arm_of = _arms({"grpo": np.ones((MIN_SEEDS, 5), int), "x": np.ones((MIN_SEEDS, 5), int)})
    conclusion = conclude(evals, arm_of, profile="cpu")
    conclusion.show()
    assert shown == [{"scpo_lab": {"headline": conclusion.headline, "train_commits": []}}]


def test_compare_two_single_runs_makes_no_claim():
    text = compare(_eval([2, 2, 2]), _eval([1, 1, 1]), "trained", "base")
    assert "+0.250 [+0.250, +0.250]" in text and "no claim" in text


def test_compare_prints_a_p_below_the_bootstrap_resolution_as_such():
    """Every problem one sample better: no bootstrap resample reaches 0, so p is below 1 / (N_BOOT + 1). The
    quickstart printed "p = 0.000" there (the report set of 2026-12-02), a value the bootstrap cannot measure."""
    text = compare(_eval([3] * 40), _eval([2] * 40), "trained", "base")
    assert "(p < 0.001)" in text and "0.000" not in text
    assert p_text(0.0234) == "0.023" and p_text(float("nan")) == "n/a"


def test_the_reports_index_reads_the_recorded_finding_and_commits(tmp_path):
    """reports.headline / conclusion_record read what Conclusion.show left in an executed notebook's outputs,
    not whatever line happens to come first in its Markdown."""
    import nbformat

    from scpo_lab.reports import _index_html, conclusion_record, headline as report_headline

    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("conclusion.show()")
    cell.outputs = [nbformat.v4.new_output("display_data", data={"text/markdown": "- **Finding:** x\n- other"},
                                           metadata={"scpo_lab": {"headline": "x beats grpo", "train_commits": ["abc"]}})]
    nb.cells = [nbformat.v4.new_code_cell("print(1)"), cell]
    path = tmp_path / "01.ipynb"
    nbformat.write(nb, str(path))
    assert report_headline(path) == "x beats grpo" and conclusion_record(path)["train_commits"] == ["abc"]
    page = _index_html([("01", None, "ok", 60.0, "x beats grpo", "abc")], "cpu", "def0")
    assert "x beats grpo" in page and "<code>abc</code>" in page and "def0" in page
    assert "trained in" not in page  # the precision line only where the runs have a report precision
    assert "Runs trained in <b>bf16</b>" in _index_html([("01", None, "ok", 60.0, "x", "abc")], "cpu", "d", "bf16")


def test_comparison_pairs_count_each_comparison_once():
    from scpo_lab.conclusions import comparison_pairs

    ran = ["grpo", "dapo", "a", "grpo@a"]
    assert comparison_pairs(ran) == [("dapo", "grpo"), ("a", "grpo"), ("grpo@a", "grpo"), ("a", "dapo"),
                                     ("grpo@a", "dapo")]
    assert comparison_pairs(ran, arms=["a"], extra_pairs=[("a", "grpo@a"), ("a", "grpo"), ("b", "grpo"),
                                                          ("a", "a")]) == [
        ("dapo", "grpo"), ("a", "grpo"), ("a", "dapo"), ("a", "grpo@a")]  # b did not run; a vs a is no comparison


def test_the_not_separated_headline_names_only_the_references_of_comparisons_with_enough_seeds():
    """A screen's extra pair (one seed, against another screen) makes no claim, so its reference is not among
    those "no arm is separated from"; the count of short comparisons still says they exist."""
    rows = [("scpo-sequence", "grpo", MIN_SEEDS), ("dapo", "grpo", MIN_SEEDS), ("scpo-sequence", "dapo", MIN_SEEDS),
            ("scpo-span", "scpo-token", 1), ("scpo-span", "grpo", 1)]
    table = pd.DataFrame([{"arm": a, "reference": r, "seeds": n, "difference": 0.01, "ci_low": -0.05,
                           "ci_high": 0.07, "verdict": "not separated" if n >= MIN_SEEDS else "no claim"}
                          for a, r, n in rows])
    text = headline(table)
    assert text.startswith("No arm is separated from grpo, dapo: "), text
    assert "scpo-token" not in text and "over 3 comparisons" in text and "2 with too few seeds" in text


def test_explained_variance_is_summarised_by_its_median_not_one_degenerate_step():
    """The shared critic's logged explained variance in the 2026-12-02 report set (seed 0, steps 1-8): step 6, every
    rollout failed, returns nearly constant, -13.3. The mean of steps 5-8 (-3.34) was reported as the critic's fit;
    the median (-0.05) is what the other three steps show."""
    from scpo_lab.conclusions import value_lines

    ev = [0.0, -0.196, -0.062, -0.112, -0.071, -13.344, 0.102, -0.032]
    metrics = pd.DataFrame({"arm": "scpo-critic-shared", "step": range(1, 9), "critic/explained_variance": ev})
    (line,) = value_lines(metrics, pd.DataFrame())
    assert "-0.05 (median over the second half's steps): near zero" in line and "-3.34" not in line
    metrics["critic/explained_variance"] = [0.0] * 4 + [-0.4, -0.6, -0.5, -13.0]
    assert "-0.55 (median over the second half's steps): negative" in value_lines(metrics, pd.DataFrame())[0]
    metrics["critic/explained_variance"] = [0.0] * 4 + [0.5, 0.6, 0.7, -13.0]
    assert value_lines(metrics, pd.DataFrame())[0].endswith("+0.55 (median over the second half's steps).")


def test_matched_flops_line_states_the_realized_ratio_not_equality():
    """grpo@scpo-sequence at G = 12 realized 5.527 TFLOPs against scpo-sequence's 4.847 (2026-12-02 set)."""
    from scpo_lab.conclusions import matched_flops_line

    summary = pd.DataFrame({"group": ["grpo", "scpo-sequence", "grpo@scpo-sequence"],
                            "total_flops": [3.748e12, 4.847e12, 5.527e12]})
    assert matched_flops_line(summary).endswith("grpo@scpo-sequence x1.14 scpo-sequence's.")
    assert matched_flops_line(summary[summary.group != "scpo-sequence"]) == ""
