"""Cohort statistics: proportions, odds ratios, bootstrap and paired differences, global sensitivity.

Every interval is two-sided at level ``conf`` (default 0.95).

- **Wilson score interval** for a binomial proportion (Wilson 1927, JASA 22:209; recommended over
  the Wald interval by Brown, Cai & DasGupta 2001, Stat Sci 16:101):
  ``(p + z^2/2n +- z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)`` with ``p = k/n``.
- **Clopper-Pearson exact interval** (Clopper & Pearson 1934, Biometrika 26:404), equal to the beta
  quantiles ``lo = B(a/2; k, n-k+1)``, ``hi = B(1-a/2; k+1, n-k)`` (0 and 1 at k = 0 and k = n).
  Both intervals are computed by ``scipy.stats.binomtest(k, n).proportion_ci``; the formulas above
  are checked against it in ``tests/test_stats.py``.
  :func:`proportion_ci` uses it when n < 40 or fewer than 5 successes or failures (where Wilson's
  normal approximation is weakest), otherwise Wilson.
- **Odds ratio with the Woolf (logit) interval** (Woolf 1955, Ann Hum Genet 19:251):
  ``OR = ad/(bc)``, ``SE(ln OR) = sqrt(1/a + 1/b + 1/c + 1/d)``, interval ``exp(ln OR +- z SE)``.
  When any cell is zero the Haldane-Anscombe correction adds 0.5 to every cell (Haldane 1956,
  Ann Hum Genet 20:309).
- **Bootstrap percentile intervals** (Efron & Tibshirani 1993, ch. 13), resampling units (patients)
  with replacement from an explicit ``numpy.random.Generator`` (``scipy.stats.bootstrap``, method
  ``percentile``, :func:`percentile_bootstrap`); paired differences resample the
  same patient indices for both arms, so within-patient correlation is kept. Ratios of sums
  (e.g. the share of emboli in segmental arteries, pooled over patients) are bootstrapped by
  patient too (cluster bootstrap), because emboli of one patient are not independent.
- **McNemar exact test** for paired binary outcomes: a two-sided binomial test on the discordant
  pairs (McNemar 1947, Psychometrika 12:153).
- **Morris elementary effects** (Morris 1991, Technometrics 33:161; mu* of Campolongo, Cariboni &
  Saltelli 2007, Environ Model Softw 22:1509) and **Sobol indices** (Saltelli 2002 / Saltelli et al.
  2010 estimators) via SALib (Herman & Usher 2017, JOSS 2:97); designs are made in the unit
  hypercube and mapped by the caller through each input's inverse CDF.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as _st

from sim.core.errors import ConfigError

EXACT_BELOW_N = 40
EXACT_BELOW_COUNT = 5


def _z(conf: float) -> float:
    if not 0.0 < conf < 1.0:
        raise ConfigError(f"confidence level {conf}: must be between 0 and 1")
    return float(_st.norm.ppf(0.5 + conf / 2.0))


def _check_counts(k: int, n: int) -> None:
    if n < 0 or k < 0 or k > n:
        raise ConfigError(f"proportion {k}/{n}: need 0 <= k <= n")


@dataclass(frozen=True)
class Proportion:
    """k successes out of n with a confidence interval."""

    k: int
    n: int
    lo: float
    hi: float
    method: str

    @property
    def p(self) -> float:
        return self.k / self.n if self.n else float("nan")


def wilson_ci(k: int, n: int, conf: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for k/n (nan, nan when n = 0), by ``scipy.stats.binomtest``."""
    _check_counts(k, n)
    if n == 0:
        return float("nan"), float("nan")
    _z(conf)
    ci = _st.binomtest(int(k), int(n)).proportion_ci(confidence_level=conf, method="wilson")
    return max(0.0, float(ci.low)), min(1.0, float(ci.high))


def clopper_pearson_ci(k: int, n: int, conf: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval for k/n (nan, nan when n = 0), by ``scipy.stats.binomtest``.

    SciPy finds the limits as roots of the binomial tails (``brentq``, absolute tolerance 2e-12)
    rather than from beta quantiles; the two agree to that tolerance.
    """
    _check_counts(k, n)
    if n == 0:
        return float("nan"), float("nan")
    _z(conf)
    ci = _st.binomtest(int(k), int(n)).proportion_ci(confidence_level=conf, method="exact")
    return float(ci.low), float(ci.high)


def proportion_ci(k: int, n: int, conf: float = 0.95, method: str = "auto") -> Proportion:
    """k/n with a Wilson or exact interval; ``auto`` = exact when n < 40 or min(k, n-k) < 5."""
    k, n = int(k), int(n)
    if method == "auto":
        small = n < EXACT_BELOW_N or min(k, n - k) < EXACT_BELOW_COUNT
        method = "clopper-pearson" if small else "wilson"
    if method == "wilson":
        lo, hi = wilson_ci(k, n, conf)
    elif method == "clopper-pearson":
        lo, hi = clopper_pearson_ci(k, n, conf)
    else:
        raise ConfigError(f"proportion CI method '{method}': allowed: auto, wilson, clopper-pearson")
    return Proportion(k, n, lo, hi, method)


@dataclass(frozen=True)
class OddsRatio:
    """Odds ratio of a 2x2 table [[a, b], [c, d]] (rows exposed/unexposed, columns event/no event)."""

    a: int
    b: int
    c: int
    d: int
    odds_ratio: float
    lo: float
    hi: float
    corrected: bool

    @property
    def n(self) -> int:
        return self.a + self.b + self.c + self.d


def odds_ratio(a: int, b: int, c: int, d: int, conf: float = 0.95) -> OddsRatio:
    """OR = ad/bc with the Woolf logit interval; Haldane +0.5 on every cell when any cell is 0.

    a = exposed with event, b = exposed without, c = unexposed with event, d = unexposed without.
    A table with an empty row or column (no exposed, no unexposed, no events or no non-events)
    has no estimable OR: nan is returned.
    """
    cells = [int(a), int(b), int(c), int(d)]
    if min(cells) < 0:
        raise ConfigError(f"2x2 table {cells}: counts must be non-negative")
    a, b, c, d = cells
    if a + b == 0 or c + d == 0 or a + c == 0 or b + d == 0:
        return OddsRatio(a, b, c, d, float("nan"), float("nan"), float("nan"), False)
    corrected = min(cells) == 0
    fa, fb, fc, fd = (x + 0.5 for x in cells) if corrected else (float(x) for x in cells)
    log_or = math.log(fa * fd / (fb * fc))
    se = math.sqrt(1.0 / fa + 1.0 / fb + 1.0 / fc + 1.0 / fd)
    z = _z(conf)
    return OddsRatio(
        a, b, c, d, math.exp(log_or), math.exp(log_or - z * se), math.exp(log_or + z * se), corrected
    )


def odds_ratio_from_flags(exposed: np.ndarray, event: np.ndarray, conf: float = 0.95) -> OddsRatio:
    """Odds ratio from per-patient boolean exposure and event arrays."""
    x = np.asarray(exposed, dtype=bool)
    y = np.asarray(event, dtype=bool)
    if x.shape != y.shape:
        raise ConfigError(f"exposure and event arrays differ in shape: {x.shape} vs {y.shape}")
    return odds_ratio(
        int((x & y).sum()), int((x & ~y).sum()), int((~x & y).sum()), int((~x & ~y).sum()), conf
    )


# ---------------------------------------------------------------------------- bootstrap


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a (bootstrap) confidence interval."""

    value: float
    lo: float
    hi: float
    n: int


def percentile_bootstrap(
    data: tuple[np.ndarray, ...],
    statistic: Callable[..., np.ndarray],
    rng: np.random.Generator,
    n_boot: int,
    conf: float,
) -> tuple[float, float]:
    """Percentile interval of ``statistic`` over paired unit resamples, by ``scipy.stats.bootstrap``.

    ``data`` holds equal-length arrays over the same units; each resample draws unit indices
    ``rng.integers(0, n, (n_boot, n))`` and applies them to every array (``paired=True``), and
    ``statistic(*arrays, axis=-1)`` must be vectorised. Resamples whose statistic is not finite
    (e.g. a ratio whose resampled denominator is 0) are left out of the quantiles. With a single
    unit every resample is that unit, so the interval collapses to the statistic's value.
    """
    _z(conf)
    if n_boot < 1:
        raise ConfigError(f"bootstrap resamples = {n_boot}: need at least 1")
    arrays = tuple(np.asarray(a, dtype=np.float64) for a in data)
    if arrays[0].size < 2:  # scipy needs two units; one unit has one resample
        value = float(statistic(*arrays, axis=-1))
        return (value, value) if math.isfinite(value) else (float("nan"), float("nan"))
    with warnings.catch_warnings():
        # scipy warns when a quantile is nan; non-finite resamples are handled below
        warnings.simplefilter("ignore", _st.DegenerateDataWarning)
        res = _st.bootstrap(
            arrays,
            statistic,
            n_resamples=n_boot,
            vectorized=True,
            paired=True,
            confidence_level=conf,
            method="percentile",
            random_state=rng,
        )
    dist = np.asarray(res.bootstrap_distribution)
    if np.all(np.isfinite(dist)):
        return float(res.confidence_interval.low), float(res.confidence_interval.high)
    finite = dist[np.isfinite(dist)]
    if finite.size == 0:
        return float("nan"), float("nan")
    alpha = (1.0 - conf) / 2.0
    lo, hi = np.quantile(finite, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def _mean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis)


def _ratio_of_sums(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    den = np.sum(b, axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0.0, np.sum(a, axis=axis) / np.where(den > 0.0, den, 1.0), np.nan)


def bootstrap_mean(
    values: Sequence[float] | np.ndarray, rng: np.random.Generator, n_boot: int = 2000, conf: float = 0.95
) -> Estimate:
    """Mean with a percentile bootstrap interval (nan when there are no values)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    lo, hi = percentile_bootstrap((x,), _mean, rng, n_boot, conf)
    return Estimate(float(x.mean()), lo, hi, int(x.size))


def bootstrap_ratio(
    numer: Sequence[float] | np.ndarray,
    denom: Sequence[float] | np.ndarray,
    rng: np.random.Generator,
    n_boot: int = 2000,
    conf: float = 0.95,
) -> Estimate:
    """sum(numer)/sum(denom) over units, with a cluster (unit) bootstrap percentile interval."""
    a = np.asarray(numer, dtype=np.float64)
    b = np.asarray(denom, dtype=np.float64)
    if a.shape != b.shape:
        raise ConfigError(f"ratio numerator and denominator differ in shape: {a.shape} vs {b.shape}")
    if a.size == 0 or b.sum() <= 0.0:
        return Estimate(float("nan"), float("nan"), float("nan"), int(a.size))
    lo, hi = percentile_bootstrap((a, b), _ratio_of_sums, rng, n_boot, conf)
    return Estimate(float(a.sum() / b.sum()), lo, hi, int(a.size))


@dataclass(frozen=True)
class PairedDifference:
    """Mean of (treated - reference) over the same units, with a bootstrap interval."""

    mean_reference: float
    mean_treated: float
    difference: float
    lo: float
    hi: float
    n: int
    mcnemar_p: float | None = None  # exact McNemar p value (binary outcomes only)
    discordant: tuple[int, int] | None = None  # (treated only, reference only) for binary outcomes


def paired_difference(
    reference: Sequence[float] | np.ndarray,
    treated: Sequence[float] | np.ndarray,
    rng: np.random.Generator,
    n_boot: int = 2000,
    conf: float = 0.95,
) -> PairedDifference:
    """Paired difference of means (treated - reference) with a paired percentile bootstrap interval.

    Boolean inputs are treated as binary outcomes: the difference is a difference of proportions and
    the exact McNemar p value on the discordant pairs is attached.
    """
    binary = np.asarray(reference).dtype == bool and np.asarray(treated).dtype == bool
    x = np.asarray(reference, dtype=np.float64)
    y = np.asarray(treated, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ConfigError(f"paired arrays must be 1-D and equal in length: {x.shape} vs {y.shape}")
    if x.size == 0:
        nan = float("nan")
        return PairedDifference(nan, nan, nan, nan, nan, 0)
    diff = y - x
    lo, hi = percentile_bootstrap((diff,), _mean, rng, n_boot, conf)
    p_value = discordant = None
    if binary:
        only_t = int(((y > 0) & (x == 0)).sum())
        only_r = int(((x > 0) & (y == 0)).sum())
        discordant = (only_t, only_r)
        p_value = mcnemar_exact(only_t, only_r)
    return PairedDifference(
        float(x.mean()), float(y.mean()), float(diff.mean()), lo, hi, int(x.size), p_value, discordant
    )


def mcnemar_exact(n10: int, n01: int) -> float:
    """Two-sided exact McNemar p value from the two discordant counts (1.0 when both are 0)."""
    m = int(n10) + int(n01)
    if m == 0:
        return 1.0
    return float(_st.binomtest(int(n10), m, 0.5, alternative="two-sided").pvalue)


# ---------------------------------------------------------------------------- sensitivity


def salib_problem(names: Sequence[str]) -> dict[str, Any]:
    """A SALib problem over the unit hypercube (inputs are mapped through their inverse CDFs)."""
    return {"num_vars": len(names), "names": list(names), "bounds": [[0.0, 1.0]] * len(names)}


def _salib() -> Any:
    try:
        import SALib  # noqa: F401
    except ImportError as exc:
        raise ConfigError("sensitivity analysis needs SALib: pip install 'pce-sim[sensitivity]'") from exc
    return SALib


def morris_design(names: Sequence[str], trajectories: int, levels: int, seed: int) -> np.ndarray:
    """Morris one-at-a-time trajectories in [0, 1]^k, shape (trajectories * (k + 1), k)."""
    _salib()
    from SALib.sample import morris as morris_sample

    if levels < 2 or levels % 2:
        raise ConfigError(f"Morris levels = {levels}: must be an even number >= 2")
    if trajectories < 2:
        raise ConfigError(f"Morris trajectories = {trajectories}: need at least 2")
    return np.asarray(
        morris_sample.sample(salib_problem(names), trajectories, num_levels=levels, seed=seed), dtype=float
    )


def morris_indices(
    names: Sequence[str], design: np.ndarray, y: np.ndarray, levels: int, seed: int, conf: float = 0.95
) -> dict[str, np.ndarray]:
    """Morris mu, mu* (mean |elementary effect|), sigma and the bootstrap CI half-width of mu*."""
    _salib()
    from SALib.analyze import morris as morris_analyze

    y = np.asarray(y, dtype=np.float64)
    if not np.all(np.isfinite(y)):
        raise ConfigError("Morris analysis: outputs contain NaN (a design run failed or lacks the metric)")
    res = morris_analyze.analyze(
        salib_problem(names), np.asarray(design), y, conf_level=conf, num_levels=levels, seed=seed
    )
    return {k: np.asarray(res[k], dtype=float) for k in ("mu", "mu_star", "sigma", "mu_star_conf")}


def sobol_design(names: Sequence[str], base_samples: int, seed: int) -> np.ndarray:
    """Saltelli/Sobol' design without second-order terms, shape (base_samples * (k + 2), k)."""
    _salib()
    from SALib.sample import sobol as sobol_sample

    if base_samples < 2 or base_samples & (base_samples - 1):
        raise ConfigError(f"Sobol base_samples = {base_samples}: must be a power of 2 (>= 2)")
    return np.asarray(
        sobol_sample.sample(salib_problem(names), base_samples, calc_second_order=False, seed=seed),
        dtype=float,
    )


def sobol_indices(
    names: Sequence[str], y: np.ndarray, seed: int, conf: float = 0.95
) -> dict[str, np.ndarray]:
    """First-order (S1) and total (ST) Sobol indices with their CI half-widths."""
    _salib()
    from SALib.analyze import sobol as sobol_analyze

    y = np.asarray(y, dtype=np.float64)
    if not np.all(np.isfinite(y)):
        raise ConfigError("Sobol analysis: outputs contain NaN (a design run failed or lacks the metric)")
    if np.ptp(y) == 0.0:
        zeros = np.zeros(len(names))
        return {"S1": zeros, "S1_conf": zeros, "ST": zeros, "ST_conf": zeros}
    res = sobol_analyze.analyze(salib_problem(names), y, calc_second_order=False, conf_level=conf, seed=seed)
    return {k: np.asarray(res[k], dtype=float) for k in ("S1", "S1_conf", "ST", "ST_conf")}
