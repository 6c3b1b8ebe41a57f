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
