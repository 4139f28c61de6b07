"""Cohort statistics against hand-computed textbook cases and defining properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as st

from sim.core.errors import ConfigError
from sim.studies.stats import (
    bootstrap_mean,
    bootstrap_ratio,
    clopper_pearson_ci,
    mcnemar_exact,
    morris_design,
    morris_indices,
    odds_ratio,
    odds_ratio_from_flags,
    paired_difference,
    proportion_ci,
    sobol_design,
    sobol_indices,
    wilson_ci,
)

Z = 1.959963984540054


def test_wilson_vertos2_by_hand():
    # VERTOS II: 14/54 with PCE, published 95% CI 16-39% (Venmans 2010).
    # p = 0.259259; z^2 = 3.841459; denom = 1 + z^2/54 = 1.071138
    # centre = (0.259259 + 3.841459/108) / 1.071138 = 0.275248
    # half = z sqrt(p(1-p)/54 + z^2/(4*54^2)) / denom = 1.959964 * 0.0623355 / 1.071138 = 0.114061
    lo, hi = wilson_ci(14, 54)
    assert lo == pytest.approx(0.275248 - 0.114061, abs=3e-6)
    assert hi == pytest.approx(0.275248 + 0.114061, abs=3e-6)
    assert round(100 * lo) == 16 and round(100 * hi) == 39  # the paper's interval


def test_wilson_edges_and_symmetry():
    lo, hi = wilson_ci(0, 20)
    assert lo == 0.0
    # k = 0: upper limit = z^2/n / (1 + z^2/n) = 3.841459/20 / 1.192073 = 0.161125
    assert hi == pytest.approx((Z**2 / 20) / (1 + Z**2 / 20), rel=1e-12)
    a = wilson_ci(3, 17)
    b = wilson_ci(14, 17)
    assert a[0] == pytest.approx(1 - b[1]) and a[1] == pytest.approx(1 - b[0])
    assert math.isnan(wilson_ci(0, 0)[0])


def test_clopper_pearson_textbook_values():
    # k = 0, n = 10: upper = 1 - 0.025^(1/10) = 0.308497 (closed form), lower = 0
    lo, hi = clopper_pearson_ci(0, 10)
    assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** (1 / 10), rel=1e-10)
    # 1/10: the classic exact interval 0.0025-0.4450
    lo, hi = clopper_pearson_ci(1, 10)
    assert lo == pytest.approx(0.00253, abs=1e-5) and hi == pytest.approx(0.44502, abs=1e-5)
    assert clopper_pearson_ci(10, 10) == (pytest.approx(0.025 ** (1 / 10)), 1.0)


@pytest.mark.parametrize("k,n", [(1, 7), (5, 30), (23, 244), (60, 61)])
def test_clopper_pearson_defining_tail_property(k, n):
    # By definition P(X >= k | p = lo) = alpha/2 and P(X <= k | p = hi) = alpha/2.
    lo, hi = clopper_pearson_ci(k, n)
    assert st.binom.sf(k - 1, n, lo) == pytest.approx(0.025, rel=1e-6)
    assert st.binom.cdf(k, n, hi) == pytest.approx(0.025, rel=1e-6)


def test_proportion_ci_switches_to_exact_for_small_counts():
    assert proportion_ci(2, 100).method == "clopper-pearson"
    assert proportion_ci(10, 30).method == "clopper-pearson"
    big = proportion_ci(23, 244)
    assert big.method == "wilson" and big.p == pytest.approx(0.094, abs=5e-4)
    with pytest.raises(ConfigError, match="0 <= k <= n"):
        proportion_ci(5, 3)
    with pytest.raises(ConfigError, match="method"):
        proportion_ci(1, 3, method="wald")


def test_odds_ratio_woolf_by_hand():
    # a=10 b=20 c=5 d=40: OR = 10*40/(20*5) = 4; SE = sqrt(1/10+1/20+1/5+1/40) = sqrt(0.375) = 0.612372
    # CI = exp(ln 4 -+ 1.959964 * 0.612372) = (1.204502, 13.283495)
    r = odds_ratio(10, 20, 5, 40)
    assert r.odds_ratio == pytest.approx(4.0, rel=1e-12)
    assert (r.lo, r.hi) == (pytest.approx(1.204502, rel=1e-6), pytest.approx(13.283495, rel=1e-6))
    assert not r.corrected


def test_odds_ratio_haldane_correction():
    # a=5 b=0 c=2 d=10 has a zero cell: +0.5 each -> OR = 5.5*10.5/(0.5*2.5) = 46.2
    # SE = sqrt(1/5.5 + 1/0.5 + 1/2.5 + 1/10.5) = 1.636171 -> CI (1.870383, 1141.178)
    r = odds_ratio(5, 0, 2, 10)
    assert r.corrected and r.odds_ratio == pytest.approx(46.2)
    assert r.lo == pytest.approx(1.870383, rel=1e-6) and r.hi == pytest.approx(1141.178, rel=1e-6)
    assert math.isnan(odds_ratio(0, 0, 3, 4).odds_ratio)  # nobody exposed: not estimable


def test_odds_ratio_from_flags_builds_the_table():
    exposed = np.array([1, 1, 1, 0, 0, 0, 0, 1], bool)
    event = np.array([1, 0, 1, 1, 0, 0, 0, 1], bool)
    r = odds_ratio_from_flags(exposed, event)
    assert (r.a, r.b, r.c, r.d) == (3, 1, 1, 3)
    assert r.odds_ratio == pytest.approx(9.0)


def test_bootstrap_is_seeded_and_sane():
    x = np.random.default_rng(3).normal(10.0, 2.0, 400)
    a = bootstrap_mean(x, np.random.default_rng(11), 1000)
    b = bootstrap_mean(x, np.random.default_rng(11), 1000)
    c = bootstrap_mean(x, np.random.default_rng(12), 1000)
    assert a == b and (a.lo, a.hi) != (c.lo, c.hi)
    # percentile CI close to the normal-theory CI mean +- 1.96 s/sqrt(n)
    half = Z * x.std(ddof=1) / math.sqrt(x.size)
    assert a.lo == pytest.approx(x.mean() - half, abs=0.25 * half)
    assert a.hi == pytest.approx(x.mean() + half, abs=0.25 * half)
    const = bootstrap_mean(np.full(7, 2.5), np.random.default_rng(0), 200)
    assert (const.value, const.lo, const.hi) == (2.5, 2.5, 2.5)


def test_bootstrap_ratio_of_sums():
    num = np.array([1.0, 2.0, 0.0, 3.0])
    r = bootstrap_ratio(num, num, np.random.default_rng(0), 300)
    assert (r.value, r.lo, r.hi) == (1.0, 1.0, 1.0)
    r = bootstrap_ratio(np.array([1.0, 1.0]), np.array([2.0, 2.0]), np.random.default_rng(0), 300)
    assert r.value == 0.5 and r.lo == 0.5 and r.hi == 0.5
    assert math.isnan(bootstrap_ratio(np.zeros(3), np.zeros(3), np.random.default_rng(0)).value)


def test_paired_difference_and_mcnemar():
    ref = np.zeros(6, bool)
    trt = np.ones(6, bool)
    d = paired_difference(ref, trt, np.random.default_rng(1), 500)
    assert (d.difference, d.lo, d.hi) == (1.0, 1.0, 1.0)
    assert d.discordant == (6, 0)
    assert d.mcnemar_p == pytest.approx(2 * 0.5**6)  # exact two-sided binomial on 6 discordant pairs
    assert mcnemar_exact(0, 5) == pytest.approx(0.0625)
    assert mcnemar_exact(0, 0) == 1.0
    # pairing: a constant shift has a zero-width interval even with noisy values
    x = np.random.default_rng(2).normal(0.0, 5.0, 50)
    d = paired_difference(x, x + 0.3, np.random.default_rng(1), 500)
    assert d.difference == pytest.approx(0.3) and d.lo == pytest.approx(0.3) and d.hi == pytest.approx(0.3)
    assert paired_difference(x, x, np.random.default_rng(5), 100) == paired_difference(
        x, x, np.random.default_rng(5), 100
    )


def test_morris_recovers_linear_effects():
    # y = 2 u0 + 0 u1 - 0.5 u2: every elementary effect of u_i equals its coefficient
    names = ["a", "b", "c"]
    X = morris_design(names, trajectories=6, levels=4, seed=1)
    y = 2.0 * X[:, 0] - 0.5 * X[:, 2]
    idx = morris_indices(names, X, y, levels=4, seed=1)
    assert idx["mu_star"] == pytest.approx([2.0, 0.0, 0.5], abs=1e-9)
    assert idx["sigma"] == pytest.approx([0.0, 0.0, 0.0], abs=1e-9)
    with pytest.raises(ConfigError, match="NaN"):
        morris_indices(names, X, np.full(len(X), np.nan), levels=4, seed=1)


def test_sobol_additive_function():
    # y = u0 + 2 u1 with u uniform: Var = 1/12 + 4/12, so S1 = ST = (0.2, 0.8)
    names = ["u0", "u1"]
    X = sobol_design(names, 1024, seed=3)
    idx = sobol_indices(names, X[:, 0] + 2.0 * X[:, 1], seed=3)
    assert idx["S1"] == pytest.approx([0.2, 0.8], abs=0.05)
    assert idx["ST"] == pytest.approx([0.2, 0.8], abs=0.05)
    with pytest.raises(ConfigError, match="power of 2"):
        sobol_design(names, 100, seed=0)


# ---------------------------------------------------------------------------- scipy vs the hand formulas
# The intervals are computed by scipy (binomtest(...).proportion_ci, bootstrap); the hand formulas they
# replaced are kept here as independent references.


def wilson_by_hand(k: int, n: int, conf: float) -> tuple[float, float]:
    """Wilson (1927): (p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n), clipped to [0, 1]."""
    z = st.norm.ppf(0.5 + conf / 2.0)
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2.0 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def clopper_pearson_by_beta(k: int, n: int, conf: float) -> tuple[float, float]:
    """Clopper & Pearson (1934) from beta quantiles B(a/2; k, n-k+1), B(1-a/2; k+1, n-k)."""
    alpha = 1.0 - conf
    lo = 0.0 if k == 0 else st.beta.ppf(alpha / 2.0, k, n - k + 1)
    hi = 1.0 if k == n else st.beta.ppf(1.0 - alpha / 2.0, k + 1, n - k)
    return lo, hi


def bootstrap_by_hand(arrays, statistic, seed: int, n_boot: int, conf: float) -> tuple[float, float]:
    """Percentile bootstrap (Efron & Tibshirani 1993): resample units, drop non-finite statistics."""
    idx = np.random.default_rng(seed).integers(0, arrays[0].size, size=(n_boot, arrays[0].size))
    theta = statistic(*[a[idx] for a in arrays])
    theta = theta[np.isfinite(theta)]
    lo, hi = np.quantile(theta, [0.5 - conf / 2.0, 0.5 + conf / 2.0])
    return float(lo), float(hi)


@pytest.mark.parametrize("conf", [0.8, 0.95, 0.99])
def test_wilson_equals_the_score_formula(conf):
    """scipy's Wilson interval is the score formula of Wilson 1927 to round-off, every k of n."""
    for n in (1, 2, 7, 40, 54, 244):
        for k in sorted({*range(0, n + 1, max(1, n // 20)), n - 1, n} - {-1}):
            lo, hi = wilson_ci(k, n, conf)
            ref = wilson_by_hand(k, n, conf)
            assert (lo, hi) == (pytest.approx(ref[0], abs=1e-15), pytest.approx(ref[1], abs=1e-15)), (k, n)
            assert proportion_ci(k, n, conf, method="wilson").lo == lo


@pytest.mark.parametrize("conf", [0.9, 0.95])
def test_clopper_pearson_equals_beta_quantiles(conf):
    """scipy's exact interval equals the beta-quantile form to its root-finding tolerance (2e-12)."""
    for n in (1, 5, 30, 244):
        for k in sorted({*range(0, n + 1, max(1, n // 20)), n - 1, n} - {-1}):
            lo, hi = clopper_pearson_ci(k, n, conf)
            ref = clopper_pearson_by_beta(k, n, conf)
            assert lo == pytest.approx(ref[0], abs=1e-11) and hi == pytest.approx(ref[1], abs=1e-11), (k, n)
            assert (k > 0) or lo == 0.0
            assert (k < n) or hi == 1.0


def test_bootstrap_mean_and_paired_difference_equal_the_hand_bootstrap():
    """Same unit draws as rng.integers(0, n, (B, n)); percentile interval of the resampled means."""
    x = np.random.default_rng(4).lognormal(0.0, 1.0, 37)
    y = x + np.random.default_rng(5).normal(0.2, 0.5, 37)
    for conf, n_boot in ((0.95, 999), (0.9, 250)):
        est = bootstrap_mean(x, np.random.default_rng(8), n_boot, conf)
        ref = bootstrap_by_hand((x,), lambda a: a.mean(axis=1), 8, n_boot, conf)
        assert est.value == x.mean()
        assert (est.lo, est.hi) == (pytest.approx(ref[0], rel=1e-13), pytest.approx(ref[1], rel=1e-13))
        d = paired_difference(x, y, np.random.default_rng(9), n_boot, conf)
        ref = bootstrap_by_hand((y - x,), lambda a: a.mean(axis=1), 9, n_boot, conf)
        assert (d.lo, d.hi) == (pytest.approx(ref[0], rel=1e-13), pytest.approx(ref[1], rel=1e-13))


def test_bootstrap_ratio_equals_the_hand_cluster_bootstrap_with_empty_resamples():
    """Ratio of sums resampled by unit; resamples with no denominator at all are left out."""
    # 4 units, one with a denominator: ~(3/4)^4 = 32% of resamples have none (ratio undefined)
    numer = np.array([0.0, 0.0, 2.0, 0.0])
    denom = np.array([0.0, 0.0, 5.0, 0.0])
    numer2 = np.array([1.0, 0.0, 2.0, 0.0, 3.0, 0.0])
    denom2 = np.array([2.0, 0.0, 5.0, 1.0, 4.0, 0.0])

    def ratio(a, b):
        den = b.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, a.sum(axis=1) / np.where(den > 0, den, 1.0), np.nan)

    for a, b in ((numer, denom), (numer2, denom2)):
        est = bootstrap_ratio(a, b, np.random.default_rng(21), 800)
        ref = bootstrap_by_hand((a, b), ratio, 21, 800, 0.95)
        assert est.value == a.sum() / b.sum()
        assert (est.lo, est.hi) == (pytest.approx(ref[0], rel=1e-13), pytest.approx(ref[1], rel=1e-13))
    single = bootstrap_ratio([3.0], [4.0], np.random.default_rng(0), 50)  # one unit: one resample
    assert (single.value, single.lo, single.hi) == (0.75, 0.75, 0.75)
    with pytest.raises(ConfigError, match="resamples"):
        bootstrap_mean([1.0, 2.0], np.random.default_rng(0), 0)
    with pytest.raises(ConfigError, match="confidence level"):
        bootstrap_mean([1.0, 2.0], np.random.default_rng(0), 10, conf=1.5)
