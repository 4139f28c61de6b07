"""Acceptance rules: model and published numbers in, a verdict with its numbers out.

Rules (``rule`` of a check in a reference file; reference values converted to SI with their
units, shown in the reference's units):

- ``ratio_sd``: the model ratio m1/m2 lies within ``k_sd`` propagated SDs of the published ratio
  r = a/b. The SD of r is propagated to first order from the two groups' SDs, taken as
  independent: sd_r = r sqrt((sd_a/a)^2 + (sd_b/b)^2) (delta method; the SDs are the spread of the
  specimens, not standard errors). Used where a bench geometry is not reproducible and only
  relative effects can be compared.
- ``range``: the model value lies in [low, high] (in the reference's units).
- ``overlap``: the distributions overlap: the model sample's central interval between the
  ``percentiles`` (5th and 95th by default; linear interpolation between order statistics) and
  the published mean +- z SD (z = 1.645: the central 90 % of a normal with that mean and SD)
  intersect.
- ``contains``: the published value lies inside the model's band (e.g. the reduction over a
  range of an unpublished geometric parameter).
- ``ratio_factor``: the model ratio lies within a factor ``factor`` of the published ratio (for
  numbers published without an SD).
- ``greater``: a published direction: model value 1 > model value 2.

Every outcome says by how much a failing check misses (distance to the acceptance interval, in
the displayed units).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sim.core.errors import ConfigError
from sim.validation.experiments import ModelOutput
from sim.validation.references import UNIT_SI, CheckSpec, ReferenceNumber, ReferenceSet


@dataclass
class CheckOutcome:
    """The verdict of one check, with the numbers behind it (display units)."""

    experiment: str
    name: str
    rule: str
    title: str
    passed: bool
    reference_text: str
    model_text: str
    acceptance_text: str
    miss: float  # distance outside the acceptance interval (0 when passed), in ``units``
    units: str
    numbers: dict[str, Any] = field(default_factory=dict)
    miss_phrase: str = ""  # the rule's own wording of the miss (else "<miss> <units> above/below")

    @property
    def verdict(self) -> str:
        """PASS or FAIL."""
        return "PASS" if self.passed else "FAIL"

    @property
    def miss_text(self) -> str:
        """How far a failing check is from acceptance ('' when it passes)."""
        if self.passed:
            return ""
        if not math.isfinite(self.miss):
            return "not computable"
        if self.miss_phrase:
            return self.miss_phrase
        unit = "" if self.units in ("1", "") else f" {self.units}"
        side = "above" if self.miss > 0 else "below"
        return f"{fmt(abs(self.miss))}{unit} {side} the accepted interval"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (non-finite numbers become None)."""
        out = asdict(self)
        out["verdict"] = self.verdict
        out["miss_text"] = self.miss_text
        return finite_json(out)


def finite_json(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, inf) replaced by None, recursively (for JSON)."""
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def fmt(x: float, digits: int = 3) -> str:
    """A number with ``digits`` significant digits (no exponent between 1e-3 and 1e5)."""
    if x is None or not math.isfinite(x):
        return "n/a"
    if x == 0.0:
        return "0"
    a = abs(x)
    if a >= 1e5 or a < 1e-3:
        return f"{x:.{digits - 1}e}"
    decimals = max(digits - 1 - int(math.floor(math.log10(a))), 0)
    return f"{x:.{decimals}f}"


# ---------------------------------------------------------------------------- the arithmetic


def ratio_sd(a: float, sd_a: float, b: float, sd_b: float) -> tuple[float, float]:
    """Ratio a/b and its first-order (delta-method) SD for independent a and b."""
    if b == 0.0:
        raise ZeroDivisionError("ratio_sd: denominator b = 0")
    r = a / b
    rel_a = sd_a / a if a != 0.0 else math.inf
    return r, abs(r) * math.sqrt(rel_a**2 + (sd_b / b) ** 2)


def interval_miss(x: float, lo: float, hi: float) -> float:
    """Signed distance of ``x`` outside [lo, hi]: 0 inside, > 0 above, < 0 below; NaN stays NaN."""
    if not math.isfinite(x):
        return math.nan
    if x > hi:
        return x - hi
    if x < lo:
        return x - lo
    return 0.0


def intervals_gap(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Signed gap between intervals a and b: 0 when they intersect, > 0 when a lies above b."""
    if a[0] > b[1]:
        return a[0] - b[1]
    if a[1] < b[0]:
        return a[1] - b[0]
    return 0.0


def sample_interval(samples: list[float], percentiles: tuple[float, float]) -> tuple[float, float]:
    """Percentile interval of a sample (linear interpolation between order statistics)."""
    arr = np.asarray(samples, dtype=np.float64)
    if arr.size == 0 or not np.all(np.isfinite(arr)):
        return math.nan, math.nan
    lo, hi = np.percentile(arr, list(percentiles))
    return float(lo), float(hi)


# ---------------------------------------------------------------------------- rules


def _model_value(out: ModelOutput, name: str) -> float:
    return float(out.values.get(name, math.nan))


def _outcome(exp: str, check: CheckSpec, passed: bool, **kw: Any) -> CheckOutcome:
    return CheckOutcome(exp, check.name, check.rule, check.title, bool(passed), **kw)


def _check_ratio_sd(
    exp: str, check: CheckSpec, refs: dict[str, ReferenceNumber], out: ModelOutput
) -> CheckOutcome:
    a, b = (refs[n] for n in check.references)
    r, sd = ratio_sd(
        a.value * a.si_factor, (a.sd or 0.0) * a.si_factor, b.value * b.si_factor, (b.sd or 0.0) * b.si_factor
    )
    num, den = (_model_value(out, n) for n in check.models)
    m = num / den if den != 0.0 else math.nan
    lo, hi = r - check.k_sd * sd, r + check.k_sd * sd
    miss = interval_miss(m, lo, hi)
    return _outcome(
        exp, check, math.isfinite(m) and miss == 0.0,
        reference_text=f"{fmt(r, 2)} ± {fmt(sd, 2)}",
        model_text=fmt(m),
        acceptance_text=f"within {check.k_sd:g} SD: {fmt(lo)} to {fmt(hi)}",
        miss=miss, units="1",
        numbers={"reference_ratio": r, "reference_sd": sd, "model_ratio": m, "model_numerator_si": num,
                 "model_denominator_si": den, "low": lo, "high": hi, "k_sd": check.k_sd},
    )  # fmt: skip


def _check_range(
    exp: str, check: CheckSpec, refs: dict[str, ReferenceNumber], out: ModelOutput
) -> CheckOutcome:
    ref = refs[check.references[0]]
    x = _model_value(out, check.models[0]) / ref.si_factor
    lo, hi = float(check.low), float(check.high)  # type: ignore[arg-type]
    miss = interval_miss(x, lo, hi)
    return _outcome(
        exp, check, math.isfinite(x) and miss == 0.0,
        reference_text=f"{fmt(ref.value)} {ref.units}" + (f" ± {fmt(ref.sd)}" if ref.sd is not None else ""),
        model_text=f"{fmt(x)} {ref.units}",
        acceptance_text=f"{fmt(lo)} to {fmt(hi)} {ref.units}",
        miss=miss, units=ref.units,
        numbers={"reference": ref.value, "model": x, "low": lo, "high": hi},
    )  # fmt: skip


def _check_overlap(
    exp: str, check: CheckSpec, refs: dict[str, ReferenceNumber], out: ModelOutput
) -> CheckOutcome:
    ref = refs[check.references[0]]
    name = check.models[0]
    factor = ref.si_factor
    samples = [v / factor for v in out.samples.get(name, [])]
    p_lo, p_hi = sample_interval(samples, check.percentiles)
    sd = ref.sd or 0.0
    r_lo, r_hi = ref.value - check.z * sd, ref.value + check.z * sd
    gap = intervals_gap((p_lo, p_hi), (r_lo, r_hi)) if math.isfinite(p_lo) else math.nan
    pl, ph = (f"P{q:g}" for q in check.percentiles)
    median = float(np.median(samples)) if samples else math.nan
    return _outcome(
        exp, check, math.isfinite(gap) and gap == 0.0,
        reference_text=f"{fmt(ref.value)} ± {fmt(sd)} {ref.units}",
        model_text=f"{pl}–{ph} {fmt(p_lo)}–{fmt(p_hi)} {ref.units} (median {fmt(median)}, n {len(samples)})",
        acceptance_text=f"overlaps mean ± {check.z:g} SD: {fmt(r_lo)}–{fmt(r_hi)} {ref.units}",
        miss=gap, units=ref.units,
        miss_phrase=f"the model interval lies {fmt(abs(gap))} {ref.units} {'above' if gap > 0 else 'below'}",
        numbers={"reference_mean": ref.value, "reference_sd": sd, "reference_low": r_lo,
                 "reference_high": r_hi, "model_low": p_lo, "model_high": p_hi, "model_median": median,
                 "n": len(samples), "percentiles": list(check.percentiles), "z": check.z},
    )  # fmt: skip


def _check_contains(
    exp: str, check: CheckSpec, refs: dict[str, ReferenceNumber], out: ModelOutput
) -> CheckOutcome:
    ref = refs[check.references[0]]
    band = out.bands.get(check.models[0], (math.nan, math.nan))
    lo, hi = band[0] / ref.si_factor, band[1] / ref.si_factor
    miss = interval_miss(ref.value, lo, hi)
    return _outcome(
        exp, check, math.isfinite(lo) and miss == 0.0,
        reference_text=f"{fmt(ref.value)} {ref.units}",
        model_text=f"{fmt(lo)}–{fmt(hi)} {ref.units}",
        acceptance_text="published value inside the model band",
        miss=-miss if math.isfinite(miss) else miss, units=ref.units,
        numbers={"reference": ref.value, "model_low": lo, "model_high": hi},
        miss_phrase=(
            f"the band ends {fmt(abs(miss))} {ref.units} below the published value" if miss > 0
            else f"the band starts {fmt(abs(miss))} {ref.units} above the published value"
        ),
    )  # fmt: skip


def _check_ratio_factor(
    exp: str, check: CheckSpec, refs: dict[str, ReferenceNumber], out: ModelOutput
) -> CheckOutcome:
    a, b = (refs[n] for n in check.references)
    r = (a.value * a.si_factor) / (b.value * b.si_factor)
    num, den = (_model_value(out, n) for n in check.models)
    m = num / den if den != 0.0 else math.nan
    f = float(check.factor)  # type: ignore[arg-type]
    lo, hi = r / f, r * f
    miss = interval_miss(m, lo, hi)
    return _outcome(
        exp, check, math.isfinite(m) and miss == 0.0,
        reference_text=fmt(r),
        model_text=fmt(m),
        acceptance_text=f"within a factor {f:g}: {fmt(lo)} to {fmt(hi)}",
        miss=miss, units="1",
        numbers={"reference_ratio": r, "model_ratio": m, "low": lo, "high": hi, "factor": f,
                 "model_numerator_si": num, "model_denominator_si": den},
    )  # fmt: skip


def _check_greater(
    exp: str, check: CheckSpec, refs: dict[str, ReferenceNumber], out: ModelOutput
) -> CheckOutcome:
    big, small = (_model_value(out, n) for n in check.models)
    units = _display_units(check.models[0])
    factor = UNIT_SI[units]
    a, b = big / factor, small / factor
    passed = math.isfinite(a) and math.isfinite(b) and a > b
    return _outcome(
        exp, check, passed,
        reference_text=check.finding,
        model_text=f"{fmt(a)} vs {fmt(b)}" + ("" if units == "1" else f" {units}"),
        acceptance_text="first > second",
        miss=0.0 if passed else (b - a), units=units,
        numbers={"model_first": a, "model_second": b},
    )  # fmt: skip


def _display_units(name: str) -> str:
    if name.endswith("_pa"):
        return "MPa" if "syringe" in name else "kPa"
    if name.endswith("_m3"):
        return "ml"
    if name.endswith("_kg"):
        return "g"
    return "1"


RULES = {
    "ratio_sd": _check_ratio_sd,
    "range": _check_range,
    "overlap": _check_overlap,
    "contains": _check_contains,
    "ratio_factor": _check_ratio_factor,
    "greater": _check_greater,
}


def check_model_names(
    refs: ReferenceSet, keys: tuple[set[str], set[str], set[str]], source: str | Path
) -> None:
    """Refuse a check naming a model output the experiment does not produce (before any run)."""
    values, samples, bands = keys
    for i, check in enumerate(refs.checks):
        pool = samples if check.rule == "overlap" else bands if check.rule == "contains" else values
        what = "sample" if check.rule == "overlap" else "band" if check.rule == "contains" else "value"
        for name in check.models:
            if name not in pool:
                shown = ", ".join(sorted(pool)[:8]) + (", ..." if len(pool) > 8 else "")
                raise ConfigError(
                    f"{source}: checks[{i}].model: {name!r} is not a model {what} of {refs.experiment} "
                    f"(known: {shown})"
                )


def evaluate(refs: ReferenceSet, out: ModelOutput) -> list[CheckOutcome]:
    """Every check of ``refs`` against the model output."""
    return [RULES[c.rule](refs.experiment, c, refs.references, out) for c in refs.checks]
