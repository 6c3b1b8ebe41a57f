"""Evaluation math: pass@k, bootstrap confidence intervals over problems, the seeds x problems bootstrap of the
comparisons, Holm's correction, t-intervals over seeds.

`evaluation.py` samples completions and calls these; nothing here touches a model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import pandas as pd


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021) from n samples of which c passed.

    pass@k = 1 - C(n-c, k) / C(n, k), computed stably in product form.
    """
    n, c, k = int(n), int(c), int(k)
    if n < 1:
        raise ValueError(f"n: must be >= 1; got {n}")
    if k < 1 or k > n:
        raise ValueError(f"k: must be in 1..n (n={n}); got {k}")
    if c < 0 or c > n:
        raise ValueError(f"c: must be in 0..n (n={n}); got {c}")
    if n - c < k:  # every k-subset holds at least one correct sample
        return 1.0
    # 1 - C(n-c,k)/C(n,k) = 1 - prod_{i=n-c+1}^{n} (1 - k/i)
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def bootstrap_ci(values: Iterable[float], n_boot: int = 2000, alpha: float = 0.05,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap (1 - alpha) interval of the mean of `values` (one value per problem)."""
    x = np.asarray(list(values), dtype=np.float64)
    if x.size == 0:
        raise ValueError("values: must be non-empty")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha: must be in (0, 1); got {alpha}")
    if n_boot < 1:
        raise ValueError(f"n_boot: must be >= 1; got {n_boot}")
    if x.size == 1:
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))  # resample problems with replacement
    means = x[idx].mean(axis=1)                          # mean*_b = (1/N) sum_i x[idx_b,i]
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def pass_at_k_table(counts: Sequence[tuple[int, int]], ks: Iterable[int], n_boot: int = 2000,
                    alpha: float = 0.05, seed: int = 0) -> pd.DataFrame:
    """pass@k per k, averaged over problems, with a bootstrap CI over problems.

    counts: one (n_i, c_i) per problem (samples drawn, samples passed). Columns: k, pass_at_k, ci_low, ci_high.
    """
    counts = [(int(n), int(c)) for n, c in counts]
    if not counts:
        raise ValueError("counts: must be non-empty (one (n, c) per problem)")
    rows = []
    for k in ks:
        per_problem = [pass_at_k(n, c, k) for n, c in counts]
        low, high = bootstrap_ci(per_problem, n_boot=n_boot, alpha=alpha, seed=seed)
        rows.append({"k": int(k), "pass_at_k": float(np.mean(per_problem)), "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows, columns=["k", "pass_at_k", "ci_low", "ci_high"])


# --- comparisons over seeds x problems -------------------------------------------------------------------

@dataclass(frozen=True)
class Interval:
    """A bootstrap estimate: the point value, its (1 - alpha) percentile interval, the two-sided bootstrap p-value
    of "the value is 0" and the number of seeds and problems it came from."""

    value: float
    low: float
    high: float
    p: float
    seeds: int
    problems: int


def seeds_by_problems_bootstrap(values, n_boot: int = 4000, alpha: float = 0.05, seed: int = 0,
                                bounds: tuple[float, float] = (-math.inf, math.inf)) -> Interval:
    """Interval of the grand mean of `values` (seeds x problems: one row per training seed, one column per held-out
    problem, e.g. a problem's pass rate or a paired difference of two arms' pass rates on it).

    Every run is evaluated on the same problems, so seeds and problems are *crossed* factors, and both are
    random: another experiment would draw other seeds and other problems. Each replicate resamples the seeds
    (rows) and, independently, the problems (columns) with replacement and takes the mean of the S x P sub-table
    (the two-way "pigeonhole" bootstrap, Owen 2007, Ann. Appl. Stat. 1(2)); the same column draw serves every row,
    as the same problems serve every run. Under y_sp = mu + a_s + b_p + e_sp its variance is close to
    var(a)/S + var(b)/P + var(e)/(S P), with a small-seed-count correction (below) that makes it t-like in the
    seeds; the tests check coverage, width and the false-positive rate at 5 seeds. One seed reduces it to the
    bootstrap over problems, one problem to the one over seeds.

    p: two-sided percentile-bootstrap p-value of 0, 2 min(P*(mean <= 0), P*(mean >= 0)) with the +1 correction
    (never 0; nan for a single value). The interval and p come from the same replicates, so p < alpha exactly
    when the interval excludes 0 (up to the quantiles' interpolation and the +1).

    bounds: the range the mean can take whatever the data (rates: (0, 1); a difference of two rates: (-1, 1));
    the interval is clipped to it. Not to the observed range: the population mean can lie outside the table's
    values, and with few seeds the small-S widening below puts it there (2 seeds at 0.2 and 0.4 are not an
    interval [0.2, 0.4]; a difference table whose every cell is > 0 but whose p is 0.16 has low < 0)."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 2 or x.size == 0:
        raise ValueError(f"values: must be a non-empty seeds x problems table; got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("values: must be finite (a missing problem in one run cannot be paired)")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha: must be in (0, 1); got {alpha}")
    if n_boot < 1:
        raise ValueError(f"n_boot: must be >= 1; got {n_boot}")
    if not bounds[0] <= x.min() <= x.max() <= bounds[1]:
        raise ValueError(f"values: must lie within bounds {bounds}; got [{x.min()}, {x.max()}]")
    n_seeds, n_problems = x.shape
    if n_seeds > 1:
        # small-S correction: resampling S seeds sees their spread shrunk by (S - 1) / S and reads it against normal
        # rather than t_{S-1} quantiles, which at S = 5 makes a true difference of 0 look significant ~15% of the
        # time when seeds dominate the variance. Widening each seed's main effect (its row mean's deviation from the
        # grand mean) by sqrt(S / (S - 1)) t_{S-1} / z brings that near 5% (tested); the problems' effects and the
        # residuals are left as they are (the pigeonhole bootstrap already over-counts the residuals: where
        # per-problem noise dominates, the interval is conservative)
        z = NormalDist().inv_cdf(1 - alpha / 2)
        widen = math.sqrt(n_seeds / (n_seeds - 1)) * t_ppf(1 - alpha / 2, n_seeds - 1) / z
        seed_effects = x.mean(axis=1, keepdims=True) - x.mean()
        x_boot = x + (widen - 1.0) * seed_effects  # same grand mean
    else:
        x_boot = x
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    cols = rng.integers(0, n_problems, size=(n_boot, n_problems))
    # mean*_b = (1 / S P) sum_i sum_j x[rows_bi, cols_bj] = (1 / S P) sum_i (x[rows_bi] counts_b) over the column
    # draw's counts: one matrix product per replicate instead of an S x P gather
    counts = np.zeros((n_boot, n_problems))
    np.add.at(counts, (np.arange(n_boot)[:, None], cols), 1.0)
    row_means = (x_boot @ counts.T) / n_problems  # (S, n_boot): row i's mean over replicate b's problems
    means = np.take_along_axis(row_means.T, rows, axis=1).mean(axis=1)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    low, high = max(low, bounds[0]), min(high, bounds[1])  # e.g. a rate's interval inside [0, 1]
    if x.size == 1:  # one value: no spread to resample, so no test
        return Interval(float(x.mean()), float(low), float(high), float("nan"), n_seeds, n_problems)
    below, above = (means <= 0).sum(), (means >= 0).sum()
    p = min(1.0, 2.0 * (min(below, above) + 1) / (n_boot + 1))
    return Interval(float(x.mean()), float(low), float(high), float(p), n_seeds, n_problems)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979), in the input order: sort p ascending,
    p_adj(i) = max_{j <= i} min(1, (m - j + 1) p(j)); rejecting where p_adj < alpha controls the family-wise error
    rate at alpha over the m comparisons, under any dependence between them."""
    p = np.asarray(list(p_values), dtype=np.float64)
    if p.size == 0:
        return []
    if ((p < 0) | (p > 1) | ~np.isfinite(p)).any():
        raise ValueError(f"p_values: must lie in [0, 1]; got {p.tolist()}")
    order = np.argsort(p, kind="stable")
    m = p.size
    stepped = np.minimum(1.0, (m - np.arange(m)) * p[order])  # (m - j + 1) p(j), j = 1..m
    adjusted = np.maximum.accumulate(stepped)
    out = np.empty(m)
    out[order] = adjusted
    return out.tolist()


# --- Student t quantile (scipy is not a dependency) ------------------------------------------------------

def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction for the regularized incomplete beta (modified Lentz, Numerical Recipes 6.4)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    # front = x^a (1-x)^b / (a B(a,b))
    lbeta = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    front = math.exp(lbeta + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """CDF of Student's t with df degrees of freedom."""
    # P(T <= t) = 1 - I_{df/(df+t^2)}(df/2, 1/2) / 2 for t >= 0, symmetric otherwise
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_ppf(p: float, df: float) -> float:
    """Quantile of Student's t (bisection on t_cdf; |error| < 1e-10)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p: must be in (0, 1); got {p}")
    if df <= 0:
        raise ValueError(f"df: must be > 0; got {df}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_ppf(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def mean_ci(values: Iterable[float], alpha: float = 0.05) -> tuple[float, float, float]:
    """(mean, low, high): Student-t (1 - alpha) interval of the mean over seeds (one value per seed).

    mean +- t_{1-alpha/2, n-1} * s / sqrt(n), with s the sample std (ddof=1). A single value gives (v, v, v).
    """
    x = np.asarray(list(values), dtype=np.float64)
    if x.size == 0:
        raise ValueError("values: must be non-empty")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha: must be in (0, 1); got {alpha}")
    m = float(x.mean())
    if x.size == 1:
        return m, m, m
    half = t_ppf(1.0 - alpha / 2.0, x.size - 1) * float(x.std(ddof=1)) / math.sqrt(x.size)  # t * s / sqrt(n)
    return m, m - half, m + half


def calibration_bins(predicted, passed, bins: int = 10) -> pd.DataFrame:
    """Predictions in equal-width bins over [0, 1] (clipped): per non-empty bin, the mean prediction p, the observed
    pass rate y and the count n -- a reliability diagram's points, and what the expected calibration error sums."""
    frame = pd.DataFrame({"p": [float(x) for x in predicted], "y": [float(x) for x in passed]})
    frame["bin"] = (frame["p"].clip(0, 1) * bins).astype(int).clip(upper=bins - 1)
    return frame.groupby("bin").agg(p=("p", "mean"), y=("y", "mean"), n=("y", "size"))


def auroc(scores, labels) -> float:
    """Area under the ROC curve: P(score of a random positive > a random negative), ties count 1/2 (the
    Mann-Whitney statistic). nan when one class is absent. Lists, arrays or tensors."""
    scores, labels = (x.detach().cpu().float().numpy() if hasattr(x, "detach") else x for x in (scores, labels))
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    pos, neg = scores[labels], scores[~labels]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = float((pos[:, None] > neg[None, :]).sum())
    ties = float((pos[:, None] == neg[None, :]).sum())
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))
