import math

import numpy as np
import pytest

from scpo_lab.stats import bootstrap_ci, mean_ci, pass_at_k, pass_at_k_table, t_cdf, t_ppf


def test_pass_at_k_hand_values():
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - math.comb(3, 2) / math.comb(5, 2))  # 0.7
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(5, 5, 1) == 1.0
    assert pass_at_k(5, 4, 2) == 1.0  # n - c < k: every pair holds a pass


@pytest.mark.parametrize("n", [1, 2, 5, 10, 16, 33])
def test_pass_at_k_matches_combinatorial(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            exact = 1 - math.comb(n - c, k) / math.comb(n, k)
            assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)


def test_pass_at_k_large_n_stable():
    v = pass_at_k(1000, 3, 100)
    assert 0 < v < 1 and math.isfinite(v)
    assert v == pytest.approx(1 - math.comb(997, 100) / math.comb(1000, 100), rel=1e-10)


@pytest.mark.parametrize("n,c,k", [(5, 2, 6), (5, 6, 1), (5, -1, 1), (5, 2, 0), (0, 0, 1)])
def test_pass_at_k_bad_input(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_bootstrap_ci_contains_mean_and_shrinks():
    rng = np.random.default_rng(1)
    small = rng.binomial(1, 0.4, size=20).astype(float)
    big = rng.binomial(1, 0.4, size=2000).astype(float)
    lo_s, hi_s = bootstrap_ci(small)
    lo_b, hi_b = bootstrap_ci(big)
    assert lo_s <= small.mean() <= hi_s
    assert lo_b <= big.mean() <= hi_b
    assert (hi_b - lo_b) < (hi_s - lo_s) / 3


def test_bootstrap_ci_deterministic_and_edge_cases():
    vals = np.random.default_rng(0).random(15).tolist()
    assert bootstrap_ci(vals, seed=3) == bootstrap_ci(vals, seed=3)
    assert bootstrap_ci(vals, n_boot=200, seed=3) != bootstrap_ci(vals, n_boot=200, seed=4)
    assert bootstrap_ci([0.7]) == (0.7, 0.7)
    assert bootstrap_ci([0.5] * 10) == pytest.approx((0.5, 0.5))
    with pytest.raises(ValueError):
        bootstrap_ci([])


def test_pass_at_k_table():
    counts = [(4, 0), (4, 1), (4, 2), (4, 4)]
    df = pass_at_k_table(counts, ks=[1, 2, 4])
    assert list(df.columns) == ["k", "pass_at_k", "ci_low", "ci_high"]
    assert list(df["k"]) == [1, 2, 4]
    want1 = np.mean([0, 0.25, 0.5, 1.0])
    assert df.loc[0, "pass_at_k"] == pytest.approx(want1)
    assert df.loc[2, "pass_at_k"] == pytest.approx(0.75)  # k=n: any pass counts
    assert (df["ci_low"] <= df["pass_at_k"]).all() and (df["pass_at_k"] <= df["ci_high"]).all()
    assert df["pass_at_k"].is_monotonic_increasing
    with pytest.raises(ValueError):
        pass_at_k_table(counts, ks=[5])


def test_t_quantiles_closed_forms_and_table():
    for p in (0.6, 0.9, 0.975, 0.995):
        assert t_ppf(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-8)  # Cauchy
        assert t_ppf(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-8)
    assert t_ppf(0.975, 4) == pytest.approx(2.776445105, rel=1e-7)
    assert t_ppf(0.975, 30) == pytest.approx(2.042272456, rel=1e-7)
    assert t_ppf(0.975, 1e6) == pytest.approx(1.959966, rel=1e-5)
    assert t_ppf(0.025, 4) == pytest.approx(-2.776445105, rel=1e-7)
    assert t_cdf(0.0, 3) == pytest.approx(0.5)


def test_mean_ci():
    vals = [0.30, 0.35, 0.40]
    m, lo, hi = mean_ci(vals)
    s = np.std(vals, ddof=1)
    assert m == pytest.approx(0.35)
    assert hi - m == pytest.approx(4.302652730 * s / math.sqrt(3), rel=1e-7)
    assert m - lo == pytest.approx(hi - m)
    assert mean_ci([0.2]) == (0.2, 0.2, 0.2)
    _, lo90, hi90 = mean_ci(vals, alpha=0.10)
    assert lo < lo90 and hi90 < hi
    with pytest.raises(ValueError):
        mean_ci([])


def test_evaluate_interval_is_the_k1_row_of_its_pass_at_k_table():
    from scpo_lab.evaluation import evaluate
    from scpo_lab.models import tiny_policy
    from scpo_lab.tasks import get_task

    result = evaluate(tiny_policy(seed=0), get_task("arithmetic"), n_problems=6, n_samples=4, max_new_tokens=3,
                      progress=False)
    k1 = [row for row in result.pass_at_k if row["k"] == 1][0]
    assert (result.ci_low, result.ci_high) == (k1["ci_low"], k1["ci_high"])
    assert result.pass_at_1 == pytest.approx(k1["pass_at_k"])
    assert [row["k"] for row in result.pass_at_k] == [1, 2, 4]


# --- the seeds x problems bootstrap of the comparisons -------------------------------------------------------

def _crossed(rng, seeds, problems, mean, sd_seed, sd_problem, sd_noise):
    """y_sp = mean + a_s + b_p + e_sp: seeds and problems are crossed random factors, as in the lab's evaluations."""
    return (mean + rng.normal(0, sd_seed, (seeds, 1)) + rng.normal(0, sd_problem, (1, problems))
            + rng.normal(0, sd_noise, (seeds, problems)))


def test_seeds_by_problems_bootstrap_covers_a_known_mean_where_a_bootstrap_over_problems_does_not():
    """Known answer: 300 synthetic experiments (5 seeds x 50 problems, true mean 0.05, seed effects sd 0.1). The
    crossed bootstrap's 95% interval holds the truth at least about 95% of the time; resampling problems only, the
    seed-to-seed spread is ignored and coverage falls far short."""
    from scpo_lab.stats import seeds_by_problems_bootstrap

    rng = np.random.default_rng(0)
    truth, crossed, problems_only = 0.05, 0, 0
    for rep in range(300):
        x = _crossed(rng, 5, 50, truth, 0.1, 0.2, 0.1)
        interval = seeds_by_problems_bootstrap(x, n_boot=1000, seed=rep)
        crossed += interval.low <= truth <= interval.high
        low, high = bootstrap_ci(x.mean(axis=0), n_boot=1000, seed=rep)
        problems_only += low <= truth <= high
    assert 0.9 <= crossed / 300 <= 1.0
    assert problems_only / 300 < 0.8


def test_seeds_by_problems_bootstrap_width_follows_the_two_way_variance():
    """Width of the interval against the model's standard error sqrt(var_a / S + var_b / P + var_e / (S P)),
    averaged over synthetic experiments (S = 10, P = 80): never narrower, and at most ~25 % wider (the t_{S-1}
    seed correction and the pigeonhole bootstrap's extra residual term)."""
    from scpo_lab.stats import seeds_by_problems_bootstrap

    rng = np.random.default_rng(1)
    seeds, problems, sa, sb, se = 10, 80, 0.1, 0.3, 0.2
    se_true = np.sqrt(sa ** 2 / seeds + sb ** 2 / problems + se ** 2 / (seeds * problems))
    widths = [seeds_by_problems_bootstrap(_crossed(rng, seeds, problems, 0.0, sa, sb, se), n_boot=2000, seed=r)
              for r in range(40)]
    ratio = np.mean([(w.high - w.low) / (2 * 1.96 * se_true) for w in widths])
    assert 1.0 <= ratio <= 1.25


def test_seeds_by_problems_bootstrap_false_positives_at_five_seeds():
    """No true difference, seed effects dominating (the RL case: seeds differ more than problems' noise): at 5
    seeds the p-value falls under 0.05 near 5 % of the time. Without the small-S correction (resampling 5 seeds
    shrinks their spread by 4/5 and reads it against normal, not t_4, quantiles) it was ~15 %."""
    from scpo_lab.stats import seeds_by_problems_bootstrap

    rng = np.random.default_rng(5)
    hits = sum(seeds_by_problems_bootstrap(_crossed(rng, 5, 50, 0.0, 0.1, 0.02, 0.05), n_boot=800, seed=r).p < 0.05
               for r in range(400))
    assert hits / 400 <= 0.10


def test_seeds_by_problems_bootstrap_degenerate_cases_and_p_value():
    from scpo_lab.stats import seeds_by_problems_bootstrap

    constant = seeds_by_problems_bootstrap(np.full((5, 20), 0.25))
    assert (constant.value, constant.low, constant.high) == (0.25, 0.25, 0.25)
    assert constant.p < 0.001 and (constant.seeds, constant.problems) == (5, 20)
    # a mean of rates: its interval stays inside [0, 1] (a t-interval over three seeds of 0, 0, 0.1 does not)
    rates = np.zeros((3, 40))
    rates[2, :4] = 1.0
    interval = seeds_by_problems_bootstrap(rates, bounds=(0.0, 1.0))
    assert 0.0 <= interval.low <= interval.value <= interval.high <= 1.0
    assert seeds_by_problems_bootstrap(rates).low < 0.0  # unbounded: the widened replicates go below 0
    with pytest.raises(ValueError, match="bounds"):
        seeds_by_problems_bootstrap(rates + 0.5, bounds=(0.0, 1.0))
    # symmetric around zero: no evidence either way
    rng = np.random.default_rng(2)
    x = rng.normal(0, 1, (6, 50))
    assert seeds_by_problems_bootstrap(x - x.mean()).p > 0.5
    assert np.isnan(seeds_by_problems_bootstrap([[0.3]]).p)  # one value: nothing to test
    with pytest.raises(ValueError, match="seeds x problems"):
        seeds_by_problems_bootstrap([0.1, 0.2])
    with pytest.raises(ValueError, match="finite"):
        seeds_by_problems_bootstrap([[0.1, float("nan")]])


def test_seeds_by_problems_bootstrap_interval_and_p_agree():
    """The interval and the p-value come from the same replicates, so p < 0.05 exactly when the interval excludes
    0. A clip to the table's observed range broke that where every cell has one sign: this difference table's
    interval was [0.0625, 1.0] beside p = 0.16 (three seeds one sample in 16 better, two seeds 16 better)."""
    from scpo_lab.stats import seeds_by_problems_bootstrap

    x = np.array([[1 / 16] * 4] * 3 + [[1.0] * 4] * 2)
    interval = seeds_by_problems_bootstrap(x, bounds=(-1.0, 1.0))
    assert interval.p > 0.05 and interval.low < 0.0 < interval.high
    rng = np.random.default_rng(0)
    disagree = 0
    for rep in range(150):  # tables whose every cell is > 0, seed effects of every size
        seeds, problems = int(rng.integers(2, 7)), int(rng.integers(3, 30))
        seed_means = np.abs(rng.normal(rng.uniform(0.0, 0.2), rng.uniform(0.01, 0.4), (seeds, 1)))
        table = np.clip(seed_means + np.abs(rng.normal(0.0, 0.05, (seeds, problems))), 1e-3, 1.0)
        interval = seeds_by_problems_bootstrap(table, n_boot=800, seed=rep, bounds=(-1.0, 1.0))
        disagree += (interval.p < 0.05) != (interval.low > 0.0)
    assert disagree == 0
    # two seeds are not an interval from the lower to the higher: t with 1 degree of freedom, inside the bounds
    two = seeds_by_problems_bootstrap([[0.2, 0.2], [0.4, 0.4]], bounds=(0.0, 1.0))
    assert two.low < 0.1 and two.high > 0.9 and (two.low, two.high) >= (0.0, 0.0) and two.high <= 1.0


def test_holm_against_hand_computed_adjustments():
    from scpo_lab.stats import holm

    # sorted 0.01, 0.03, 0.04, 0.5 with m = 4: 4 * 0.01 = 0.04, 3 * 0.03 = 0.09, max(0.09, 2 * 0.04) = 0.09, 0.5
    assert holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert holm([0.2]) == [0.2] and holm([]) == []
    assert holm([0.6, 0.6]) == [1.0, 1.0]  # capped at 1
    with pytest.raises(ValueError, match="p_values"):
        holm([1.5])
