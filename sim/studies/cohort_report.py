"""Cohort report: clinical endpoints per policy with 95% CIs, risk factors, calibration, policy
comparison and global sensitivity, as CSV tables, PNG figures and ``cohort_report.md``.

Endpoints (per patient and policy arm; thresholds from the cohort file's ``endpoints:``):
- venous leak by Yeom et al. 2003 (J Bone Joint Surg Br 85:83) type: **B** = cement out of the
  basivertebral foramen (``leaked_basivertebral_ml``), **S** = out of the anterior/lateral foramina
  into segmental/paravertebral veins (``leaked_anterior_ml + leaked_lateral_ml``), each counted when
  it exceeds ``leak_min_ml``; azygos leak = ``leaked_to_azygos_ml`` above the same threshold;
- pulmonary cement embolism (PCE) = at least one lodged embolus of diameter >=
  ``embolus_min_diameter_mm`` (from the emboli table; ``n_emboli`` when no threshold is set);
- location of emboli by diameter-defined Strahler order of the lodging artery (Huang et al. 1996,
  J Appl Physiol 81:2123; order diameters in geometries/pulmonary): central = orders >= 14 (main,
  lobar; >= 7 mm), segmental = 13 (~4 mm), subsegmental = 11-12 (~1.8-2.7 mm), distal = <= 10.
  Shares pool emboli over patients with a patient-level (cluster) bootstrap CI.

Units: every table is written per patient (a patient's treated levels combined: an event counts when
any level has it, emboli, volumes and lobe counts add up, as clinical series count incidence per
patient; the clinical comparisons use this unit unless a target says ``unit: level``) and per treated
level (``*_per_level.csv``); single-level cohorts give the same numbers in both.

Intervals: proportions by Wilson or exact Clopper-Pearson (:func:`sim.studies.stats.proportion_ci`), means
and shares by seeded percentile bootstrap over patients, odds ratios by Woolf with the Haldane
correction, policy differences by paired bootstrap (same patients in both arms) with the exact
McNemar test for PCE. Metrics are read by name; a missing metric stops the report with a message
naming it and listing what the runs produced.
"""

from __future__ import annotations

import csv
import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from matplotlib.figure import Figure

from sim.core.errors import ConfigError
from sim.output.report import LOBES, STYLE
from sim.studies.cohort import SEED_PATH, CohortRun, SensitivityRun
from sim.studies.stats import (
    bootstrap_mean,
    bootstrap_ratio,
    morris_indices,
    odds_ratio_from_flags,
    paired_difference,
    proportion_ci,
    sobol_indices,
)

TARGETS_FILE = "clinical_targets.yaml"  # under geometries/ (installed as sim.geometries)
LOCATIONS = ("central", "segmental", "subsegmental", "distal")
REQUIRED = (
    "injected_volume_ml",
    "detection_time_s",
    "injected_after_detection_ml",
    "leaked_basivertebral_ml",
    "leaked_anterior_ml",
    "leaked_lateral_ml",
    "leaked_to_azygos_ml",
    "leaked_to_ivc_ml",
    "n_emboli",
    "embolised_volume_ml",
)
ARM_COLUMNS = (
    "injected_volume_ml", "embolised_volume_ml", "leaked_volume_ml", "injected_after_detection_ml",
    "leak_b", "leak_s", "leak_any", "azygos_leak", "ivc_leak", "detected", "continued", "thoracic",
    "low_viscosity", "n_levels", "n_emboli", "pce",
    *(f"loc_{k}" for k in LOCATIONS), "right", "left", *(f"lobe_{k}" for k in LOBES),
    "diameter_sum_mm", "n_sized", "order_sum", "n_ordered",
)  # fmt: skip
# How a patient's levels combine (sequential injections into one patient, emboli in the same lungs):
# amounts add up, an event counts when any level has it, patient attributes are the same at every level.
ANY_COLUMNS = frozenset(
    ("leak_b", "leak_s", "leak_any", "azygos_leak", "ivc_leak", "detected", "continued", "thoracic",
     "low_viscosity", "pce")
)  # fmt: skip
SAME_COLUMNS = frozenset(("n_levels",))
UNITS = ("patient", "level")


def location_class(order: np.ndarray) -> np.ndarray:
    """Location class index (0 central, 1 segmental, 2 subsegmental, 3 distal) per Strahler order."""
    o = np.asarray(order, dtype=np.float64)
    return np.select([o >= 14, o == 13, o >= 11], [0, 1, 2], default=3)


def _leaked_ml(summary: dict[str, Any], where: str) -> float:
    """Cement that left the bone through all foramina (basivertebral + anterior + lateral), ml."""
    return sum(_metric(summary, f"leaked_{k}_ml", where) for k in ("basivertebral", "anterior", "lateral"))


def _metric(summary: dict[str, Any], name: str, where: str) -> float:
    if name not in summary:
        known = ", ".join(sorted(summary))
        raise ConfigError(f"{where}: run summary has no metric '{name}' (it has: {known})")
    value = summary[name]
    return float("nan") if value is None else float(value)


@dataclass
class ArmTable:
    """Endpoints and covariates of one policy arm (done runs only), one row per patient (``level`` all
    0) or per treated level (``level`` 1..3), as arrays."""

    policy: str
    patient: np.ndarray
    columns: dict[str, np.ndarray]
    level: np.ndarray | None = None

    def __getitem__(self, key: str) -> np.ndarray:
        return self.columns[key]

    @property
    def n(self) -> int:
        return int(self.patient.size)

    @property
    def unit(self) -> str:
        return "patient" if self.level is None else "level"

    @property
    def keys(self) -> np.ndarray:
        """Sorted pairing key of each row (the same patient, or the same patient and level)."""
        lv = np.zeros_like(self.patient) if self.level is None else self.level
        return self.patient * 8 + lv


def _emboli_counts(
    emboli: dict[str, list[Any]] | None, summary: dict[str, Any], min_d: float, where: str
) -> dict[str, float]:
    """Visible emboli of one run: count, by location class, right/left and by lobe."""
    out = {"n": 0.0, **{k: 0.0 for k in LOCATIONS}, "right": 0.0, "left": 0.0, **{k: 0.0 for k in LOBES}}
    out.update({"d_sum": 0.0, "n_d": 0.0, "order_sum": 0.0, "n_order": 0.0})
    table = emboli or {}
    if "status" not in table:
        if min_d > 0.0:
            raise ConfigError(
                f"{where}: emboli table has no 'status' column; cannot apply embolus_min_diameter_mm"
            )
        out["n"] = _metric(summary, "n_emboli", where)
        out["right"] = float(summary.get("n_emboli_right", float("nan")))
        out["left"] = float(summary.get("n_emboli_left", float("nan")))
        for lobe in LOBES:
            out[lobe] = float(summary.get(f"emboli_{lobe}", float("nan")))
        for k in LOCATIONS:
            out[k] = float("nan")
        return out
    if "diameter_mm" in table:
        d = np.asarray(table["diameter_mm"], dtype=np.float64)
    status = np.asarray(table["status"], dtype=object)
    lodged = status == "lodged"
    if min_d > 0.0:
        if "diameter_mm" not in table:
            raise ConfigError(
                f"{where}: emboli table has no 'diameter_mm' column (needed for embolus_min_diameter_mm)"
            )
        lodged &= np.asarray(table["diameter_mm"], dtype=np.float64) >= min_d
    out["n"] = float(lodged.sum())
    if "diameter_mm" in table:
        out["d_sum"], out["n_d"] = float(d[lodged].sum()), float(lodged.sum())
    if "order" in table:
        order = np.asarray(table["order"], dtype=np.float64)[lodged]
        out["order_sum"], out["n_order"] = float(order.sum()), float(order.size)
        cls = location_class(order)
        for j, k in enumerate(LOCATIONS):
            out[k] = float((cls == j).sum())
    else:
        for k in LOCATIONS:
            out[k] = float("nan")
    if "lobe" in table:
        lobe = np.asarray(table["lobe"], dtype=object)[lodged]
        for name in LOBES:
            out[name] = float((lobe == name).sum())
        out["right"] = float(sum(out[n] for n in LOBES if n.startswith("R")))
        out["left"] = float(sum(out[n] for n in LOBES if n.startswith("L")))
    return out


def level_table(run: CohortRun, policy: str) -> ArmTable:
    """Endpoints and covariates of every treated level whose run under ``policy`` is done."""
    ep = run.plan.spec.endpoints
    rows: list[dict[str, float]] = []
    patients: list[int] = []
    levels: list[int] = []
    for pt in run.plan.patients:
        for k in range(1, pt.n_levels + 1):
            res = run.arms[(pt.index, k, policy)]
            if res.status != "done" or res.summary is None:
                continue
            s = res.summary
            where = f"patient {pt.index} level {k} policy '{policy}' (run {res.hash[:12]})"
            rows.append(
                _level_row(s, res.emboli, run.plan.arms[(pt.index, k, policy)], pt.n_levels, ep, where)
            )
            patients.append(pt.index)
            levels.append(k)
    cols = {k: np.array([r[k] for r in rows], dtype=np.float64) for k in ARM_COLUMNS}
    return ArmTable(policy, np.array(patients, dtype=np.int64), cols, np.array(levels, dtype=np.int64))


def _level_row(
    s: dict[str, Any], emboli: dict[str, list[Any]] | None, scenario: Any, n_levels: int, ep: Any, where: str
) -> dict[str, float]:
    m = {name: _metric(s, name, where) for name in REQUIRED}
    em = _emboli_counts(emboli, s, ep.embolus_min_diameter_mm, where)
    detected = math.isfinite(m["detection_time_s"])
    leak_s = m["leaked_anterior_ml"] + m["leaked_lateral_ml"]  # Yeom type S: segmental veins
    return {
        "injected_volume_ml": m["injected_volume_ml"],
        "embolised_volume_ml": m["embolised_volume_ml"],
        "leaked_volume_ml": _leaked_ml(s, where),
        "injected_after_detection_ml": m["injected_after_detection_ml"],
        "leak_b": float(m["leaked_basivertebral_ml"] > ep.leak_min_ml),
        "leak_s": float(leak_s > ep.leak_min_ml),
        "leak_any": float(m["leaked_basivertebral_ml"] + leak_s > ep.leak_min_ml),
        "azygos_leak": float(m["leaked_to_azygos_ml"] > ep.leak_min_ml),
        "ivc_leak": float(m["leaked_to_ivc_ml"] > ep.leak_min_ml),
        "detected": float(detected),
        "continued": float(detected and m["injected_after_detection_ml"] >= ep.continued_injection_min_ml),
        "thoracic": float(scenario.patient.level.startswith("T")),
        "low_viscosity": float(scenario.cement.preset == "low"),
        "n_levels": float(n_levels),
        "n_emboli": em["n"],
        "pce": float(em["n"] >= 1),
        **{f"loc_{k}": em[k] for k in LOCATIONS},
        "right": em["right"],
        "left": em["left"],
        **{f"lobe_{k}": em[k] for k in LOBES},
        "diameter_sum_mm": em["d_sum"],
        "n_sized": em["n_d"],
        "order_sum": em["order_sum"],
        "n_ordered": em["n_order"],
    }


def patient_table(levels: ArmTable, n_levels: dict[int, int]) -> ArmTable:
    """Per-patient endpoints from a level table: patients with every level done (``n_levels[i]``).

    Sequential injections into one patient: amounts (volumes, emboli counts by location, side, lobe,
    diameter sums) add up, an event (leak, detection, PCE) counts when any level has it, as clinical
    series count incidence per patient; ``n_levels`` is the patient's.
    """
    assert levels.level is not None
    rows = np.flatnonzero(levels.level >= 1)
    by: dict[int, list[int]] = {}
    for r in rows:
        by.setdefault(int(levels.patient[r]), []).append(int(r))
    complete = sorted(i for i, rs in by.items() if len(rs) == n_levels.get(i, 1))
    cols: dict[str, np.ndarray] = {}
    for name, col in levels.columns.items():
        agg = np.max if name in ANY_COLUMNS else (lambda x: x[0]) if name in SAME_COLUMNS else np.sum
        cols[name] = np.array([agg(col[by[i]]) for i in complete], dtype=np.float64)
    return ArmTable(levels.policy, np.array(complete, dtype=np.int64), cols)


def arm_table(run: CohortRun, policy: str, unit: str = "patient") -> ArmTable:
    """Endpoints of one policy arm per patient (all its levels done; the default) or per ``level``."""
    table = level_table(run, policy)
    if unit == "level":
        return table
    return patient_table(table, {pt.index: pt.n_levels for pt in run.plan.patients})


# ---------------------------------------------------------------------------- tables


LEVEL_SALT = 20_000  # bootstrap salts of per-level tables (per-patient tables keep the original salts)


def _salt(table: ArmTable) -> int:
    return 0 if table.level is None else LEVEL_SALT


def _rng(run: CohortRun, salt: int) -> np.random.Generator:
    """Seeded bootstrap stream (salt keeps tables independent and each reproducible on its own)."""
    return np.random.default_rng(np.random.SeedSequence(run.plan.spec.seed, spawn_key=(7, salt)))


def incidence_rows(run: CohortRun, tables: dict[str, ArmTable]) -> list[dict[str, Any]]:
    """Per policy: leak (any, type B, type S, azygos, IVC), detection, PCE incidence with 95% CIs,
    per patient (an event at any level) or per level, as the tables are."""
    rows = []
    for pol, t in tables.items():
        for key, label in (
            ("leak_any", "venous leak (B or S)"),
            ("leak_b", "type B leak (basivertebral)"),
            ("leak_s", "type S leak (segmental)"),
            ("azygos_leak", "azygos leak"),
            ("ivc_leak", "IVC leak"),
            ("detected", "leak seen on fluoroscopy"),
            ("pce", "pulmonary cement embolism"),
        ):
            k = int(t[key].sum()) if t.n else 0
            pr = proportion_ci(k, t.n)
            rows.append(
                {
                    "unit": t.unit,
                    "policy": pol,
                    "endpoint": label,
                    "k": k,
                    "n": t.n,
                    "p": pr.p,
                    "lo": pr.lo,
                    "hi": pr.hi,
                    "ci": pr.method,
                }
            )
    return rows


def emboli_rows(run: CohortRun, tables: dict[str, ArmTable]) -> list[dict[str, Any]]:
    """Per policy: emboli per affected patient (or level), embolised volume, embolus size, location
    (Strahler order) and side/lobe shares. Emboli are pooled over rows with a row bootstrap."""
    b = run.plan.spec.bootstrap
    rows = []
    for j, (pol, t) in enumerate(tables.items()):
        if t.n == 0:
            continue
        o = _salt(t)
        u = t.unit
        aff = t["pce"] > 0
        per = t["n_emboli"][aff]
        est = bootstrap_mean(per, _rng(run, o + 100 + j), b)
        sd = float(per.std(ddof=1)) if per.size > 1 else float("nan")
        rows.append(_est_row(pol, f"emboli per affected {u}", est, sd=sd, unit=u))
        rows.append(
            _est_row(
                pol,
                f"embolised volume per {u} (ml)",
                bootstrap_mean(t["embolised_volume_ml"], _rng(run, o + 200 + j), b),
                unit=u,
            )
        )
        rows.append(
            _est_row(
                pol,
                f"embolised volume per affected {u} (ml)",
                bootstrap_mean(t["embolised_volume_ml"][aff], _rng(run, o + 300 + j), b),
                unit=u,
            )
        )
        for name, num, den, salt in (
            ("mean embolus diameter (mm)", "diameter_sum_mm", "n_sized", 700),
            ("mean Strahler order of the lodging artery", "order_sum", "n_ordered", 750),
        ):
            if t[den].sum() > 0:
                est = bootstrap_ratio(t[num], t[den], _rng(run, o + salt + j), b)
                rows.append(_est_row(pol, name, est, unit=u))
        total = t["n_emboli"]
        for k, name in enumerate(LOCATIONS):
            col = t[f"loc_{name}"]
            if np.all(np.isfinite(col)):
                rows.append(
                    _est_row(
                        pol,
                        f"share of emboli {name}",
                        bootstrap_ratio(col, total, _rng(run, o + 400 + 10 * j + k), b),
                        unit=u,
                    )
                )
        if np.all(np.isfinite(t["right"])):
            rows.append(
                _est_row(
                    pol,
                    "share of emboli right lung",
                    bootstrap_ratio(t["right"], total, _rng(run, o + 500 + j), b),
                    unit=u,
                )
            )
        for k, lobe in enumerate(LOBES):
            col = t[f"lobe_{lobe}"]
            if np.all(np.isfinite(col)):
                rows.append(
                    _est_row(
                        pol,
                        f"share of emboli {lobe}",
                        bootstrap_ratio(col, total, _rng(run, o + 600 + 10 * j + k), b),
                        unit=u,
                    )
                )
    return rows


def _est_row(
    pol: str, label: str, est: Any, sd: float | None = None, unit: str = "patient"
) -> dict[str, Any]:
    row = {
        "unit": unit,
        "policy": pol,
        "quantity": label,
        "value": est.value,
        "lo": est.lo,
        "hi": est.hi,
        "n": est.n,
    }
    if sd is not None:
        row["sd"] = sd
    return row


def risk_factor_rows(table: ArmTable, multi_level: bool = False) -> list[dict[str, Any]]:
    """Odds ratios of PCE for the risk factors of the clinical literature (calibration arm), per
    patient (a factor present at any level; volume = the patient's total) or per level; with
    ``multi_level`` also the number of treated levels."""
    if table.n == 0:
        return []
    u = f"{table.unit}s"
    pce = table["pce"] > 0
    vol = table["injected_volume_ml"]
    det = table["detected"] > 0
    every = np.ones(table.n, bool)
    nl = table["n_levels"]
    factors = [
        ("azygos leak", table["azygos_leak"] > 0, every, f"all {u}"),
        ("IVC leak", table["ivc_leak"] > 0, every, f"all {u}"),
        ("volume > 7 ml (vs 3.5-7 ml)", vol > 7.0, vol >= 3.5, f"{u} with >= 3.5 ml"),
        ("low-viscosity cement", table["low_viscosity"] > 0, every, f"all {u}"),
        ("thoracic level", table["thoracic"] > 0, every, f"all {u}"),
        ("continued injection after detection", table["continued"] > 0, det, f"{u} with a detected leak"),
    ]
    if multi_level:
        factors += [
            ("2-3 levels treated (vs 1)", nl >= 2, every, f"all {u}"),
            ("3 levels treated (vs 1)", nl == 3, (nl == 1) | (nl == 3), f"{u} with 1 or 3 levels"),
        ]
    rows = []
    for label, exposed, subset, among in factors:
        r = odds_ratio_from_flags(exposed[subset], pce[subset])
        rows.append(
            {
                "unit": table.unit,
                "risk factor": label,
                "among": among,
                "exposed PCE": f"{r.a}/{r.a + r.b}",
                "unexposed PCE": f"{r.c}/{r.c + r.d}",
                "OR": r.odds_ratio,
                "lo": r.lo,
                "hi": r.hi,
                "haldane": r.corrected,
            }
        )
    return rows


def load_targets(path: str | Path | None = None) -> list[dict[str, Any]]:
    """Literature figures with citations (geometries/clinical_targets.yaml by default)."""
    from sim.core.geometry_data import geometry_path

    p = geometry_path(TARGETS_FILE) if path is None else Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: clinical targets file not found")
    data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    targets = data.get("targets")
    if not isinstance(targets, list):
        raise ConfigError(f"{p}: expected a 'targets' list")
    for t in targets:
        for key in ("id", "metric", "value", "source", "use"):
            if key not in t:
                raise ConfigError(f"{p}: target {t.get('id', '?')} lacks '{key}'")
        if t["use"] not in ("held_out", "input"):
            raise ConfigError(f"{p}: target {t['id']}: use must be held_out or input (got {t['use']!r})")
        if t.get("unit", "patient") not in UNITS:
            raise ConfigError(f"{p}: target {t['id']}: unit must be patient or level (got {t['unit']!r})")
    return targets


def cohort_metric(
    table: ArmTable, metric: str, rng: np.random.Generator, n_boot: int
) -> tuple[float, float, float, int]:
    """(value, lo, hi, n) of a calibration metric in one arm."""
    if table.n == 0:
        return float("nan"), float("nan"), float("nan"), 0
    pce = table["pce"] > 0
    vol = table["injected_volume_ml"]
    subsets = {
        "pce_incidence": np.ones(table.n, bool),
        "pce_incidence_volume_lt3.5": vol < 3.5,
        "pce_incidence_volume_3.5_7": (vol >= 3.5) & (vol <= 7.0),
        "pce_incidence_volume_gt7": vol > 7.0,
    }
    if metric in subsets:
        sub = subsets[metric]
        pr = proportion_ci(int(pce[sub].sum()), int(sub.sum()))
        return pr.p, pr.lo, pr.hi, pr.n
    if metric in ("leak_type_b_incidence", "leak_type_s_incidence"):
        col = table["leak_b" if metric.endswith("b_incidence") else "leak_s"]
        pr = proportion_ci(int(col.sum()), table.n)
        return pr.p, pr.lo, pr.hi, pr.n
    if metric == "emboli_per_affected_mean":
        est = bootstrap_mean(table["n_emboli"][pce], rng, n_boot)
        return est.value, est.lo, est.hi, est.n
    if metric == "or_azygos_leak":
        r = odds_ratio_from_flags(table["azygos_leak"] > 0, pce)
        return r.odds_ratio, r.lo, r.hi, r.n
    if metric == "or_three_levels_vs_one":
        nl = table["n_levels"]
        sub = (nl == 1) | (nl == 3)
        if not np.any(nl[sub] == 3):
            return float("nan"), float("nan"), float("nan"), int(sub.sum())
        r = odds_ratio_from_flags(nl[sub] == 3, pce[sub])
        return r.odds_ratio, r.lo, r.hi, r.n
    raise ConfigError(f"clinical target metric '{metric}' is unknown to the cohort report")


def calibration_rows(
    run: CohortRun, table: ArmTable | dict[str, ArmTable], targets: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Each literature figure beside pce-sim's value (calibration arm) and whether the CIs overlap.

    ``table`` is the per-patient table, or a mapping unit -> table; a target is compared per patient
    unless its ``unit`` is ``level`` (how the cited paper counted).
    """
    by_unit = table if isinstance(table, dict) else {"patient": table}
    rows = []
    for j, t in enumerate(targets):
        unit = t.get("unit", "patient")
        tab = by_unit.get(unit, by_unit["patient"])
        value, lo, hi, n = cohort_metric(tab, t["metric"], _rng(run, 800 + j), run.plan.spec.bootstrap)
        ci = t.get("ci")
        lit_lo, lit_hi = (float(ci[0]), float(ci[1])) if ci else (float(t["value"]), float(t["value"]))
        if t["use"] != "held_out":
            verdict = "input (not a check)"
        elif not (math.isfinite(lo) and math.isfinite(hi)):
            verdict = "not estimable"
        else:
            verdict = (
                "consistent"
                if lo <= lit_hi and hi >= lit_lo
                else ("pce-sim higher" if lo > lit_hi else "pce-sim lower")
            )
        rows.append(
            {
                "figure": t["id"],
                "metric": t["metric"],
                "unit": tab.unit,
                "literature": float(t["value"]),
                "literature CI": f"{lit_lo:g}-{lit_hi:g}" if ci else "",
                "source": t["source"],
                "status": t.get("status", ""),
                "use": t["use"],
                "pce-sim": value,
                "lo": lo,
                "hi": hi,
                "n": n,
                "verdict": verdict,
            }
        )
    return rows


def policy_rows(run: CohortRun, tables: dict[str, ArmTable]) -> list[dict[str, Any]]:
    """Each policy vs the reference policy on the same patients (or levels): PCE, embolised and leaked
    volume, emboli."""
    ref = run.plan.spec.reference
    b = run.plan.spec.bootstrap
    rows = []
    rt = tables[ref]
    o = _salt(rt)
    for j, (pol, t) in enumerate(tables.items()):
        common = np.intersect1d(rt.keys, t.keys)
        ir = np.searchsorted(rt.keys, common)
        it = np.searchsorted(t.keys, common)
        for k, (key, label) in enumerate(
            (
                ("pce", "PCE incidence"),
                ("embolised_volume_ml", "embolised volume (ml)"),
                ("n_emboli", f"emboli per {rt.unit}"),
                ("leaked_volume_ml", "venous leak volume (ml)"),
            )
        ):
            x, y = rt[key][ir], t[key][it]
            if key == "pce":
                x, y = x > 0, y > 0
            d = paired_difference(x, y, _rng(run, o + 1000 + 10 * j + k), b)
            rows.append(
                {
                    "unit": rt.unit,
                    "policy": pol,
                    "vs": ref,
                    "quantity": label,
                    "n paired": d.n,
                    "policy value": d.mean_treated,
                    "reference value": d.mean_reference,
                    "difference": d.difference,
                    "lo": d.lo,
                    "hi": d.hi,
                    "mcnemar p": d.mcnemar_p if d.mcnemar_p is not None else "",
                }
            )
    return rows


def sensitivity_rows(run: CohortRun) -> tuple[list[dict[str, Any]], str]:
    """Morris mu*/sigma (or Sobol S1/ST) of embolised volume, PCE and venous leak volume.

    Returns the rows and '' or the reason they were not computed.
    """
    sens: SensitivityRun | None = run.sensitivity
    if sens is None:
        return [], "no sensitivity design was run"
    if sens.failed:
        return [], f"{len(sens.failed)} of {len(sens.results)} sensitivity runs failed; indices not computed"
    min_d = run.plan.spec.endpoints.embolus_min_diameter_mm
    y_vol, y_pce, y_leak = [], [], []
    for h in sens.hashes:
        r = sens.results[h]
        s = r.summary or {}
        where = f"sensitivity run {h[:12]}"
        y_vol.append(_metric(s, "embolised_volume_ml", where))
        y_pce.append(float(_emboli_counts(r.emboli, s, min_d, where)["n"] >= 1))
        y_leak.append(_leaked_ml(s, where))
    rows = []
    for label, y in (
        ("embolised volume (ml)", np.array(y_vol)),
        ("PCE (0/1)", np.array(y_pce)),
        ("venous leak volume (ml)", np.array(y_leak)),
    ):
        if sens.method == "morris":
            idx = morris_indices(sens.names, sens.design, y, sens.levels, sens.seed)
            for j, name in enumerate(sens.names):
                rows.append(
                    {
                        "output": label,
                        "input": name,
                        "mu_star": idx["mu_star"][j],
                        "mu_star_conf": idx["mu_star_conf"][j],
                        "mu": idx["mu"][j],
                        "sigma": idx["sigma"][j],
                    }
                )
        else:
            idx = sobol_indices(sens.names, y, sens.seed)
            for j, name in enumerate(sens.names):
                rows.append(
                    {
                        "output": label,
                        "input": name,
                        "S1": idx["S1"][j],
                        "S1_conf": idx["S1_conf"][j],
                        "ST": idx["ST"][j],
                        "ST_conf": idx["ST_conf"][j],
                    }
                )
    return rows, ""


def runs_table(run: CohortRun) -> dict[str, list[Any]]:
    """One row per (patient, level, policy): inputs, run id, status, shared flag and every summary metric
    (the ``level`` column only in multi-level cohorts)."""
    multi = run.plan.multi_level
    names = [n for n in run.plan.input_names if not n.startswith("cohort.")]
    metric_names: list[str] = []
    for res in run.arms.values():
        for k, v in (res.summary or {}).items():
            if k not in metric_names and not isinstance(v, dict | list):
                metric_names.append(k)
    head = ("patient", "level", "policy") if multi else ("patient", "policy")
    cols: dict[str, list[Any]] = {k: [] for k in (*head, "run_id", "status", "shared", *names, *metric_names)}
    for (i, k, pol), res in run.arms.items():
        inputs = run.plan.patients[i].levels[k - 1]
        cols["patient"].append(i)
        if multi:
            cols["level"].append(k)
        cols["policy"].append(pol)
        cols["run_id"].append(res.hash[:12])
        cols["status"].append(res.status)
        cols["shared"].append(int(res.shared))
        for n in names:
            cols[n].append(inputs.get(n) if n != SEED_PATH else int(inputs[SEED_PATH]))
        for n in metric_names:
            cols[n].append((res.summary or {}).get(n))
    return cols


# ---------------------------------------------------------------------------- files


def endpoint_table(tables: dict[str, ArmTable]) -> dict[str, list[Any]]:
    """One row per (patient or level, policy): the endpoint columns the report's figures come from."""
    first = next(iter(tables.values()), None)
    head = ["patient"] if first is None or first.level is None else ["patient", "level"]
    cols: dict[str, list[Any]] = {k: [] for k in (*head, "policy", *ARM_COLUMNS)}
    for pol, t in tables.items():
        cols["patient"].extend(int(i) for i in t.patient)
        if "level" in cols:
            cols["level"].extend(int(k) for k in t.level)  # type: ignore[union-attr]
        cols["policy"].extend([pol] * t.n)
        for name in ARM_COLUMNS:
            cols[name].extend(float(v) for v in t[name])
    return cols


def _write_rows(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    names: list[str] = []
    for r in rows:
        for k in r:
            if k not in names:
                names.append(k)
    tmp = path.with_name(f".{path.name}.partial")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(names)
        for r in rows:
            w.writerow([_cell(r.get(k)) for k in names])
    os.replace(tmp, path)
    return path


def _cell(v: Any) -> Any:
    """CSV cell: exact float text, plain ints, empty for missing."""
    if v is None:
        return ""
    if isinstance(v, np.generic):
        v = v.item()
    return repr(v) if isinstance(v, float) else v


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return "" if v is None else ("yes" if v else "no")
    if isinstance(v, float | np.floating):
        if not math.isfinite(v):
            return "n/a"
        return f"{v:.3g}"
    return str(v)


def _ci(row: dict[str, Any], key: str, pct: bool = False) -> str:
    v, lo, hi = row[key], row["lo"], row["hi"]
    if not math.isfinite(v):
        return "n/a"
    f = (lambda x: f"{100 * x:.1f}%") if pct else _fmt
    return f"{f(v)} ({f(lo)}-{f(hi)})" if math.isfinite(lo) else f(v)


def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) if not isinstance(c, str) else c for c in r) + " |" for r in rows]
    return lines + [""]


def policy_figure(inc: list[dict[str, Any]], emb: list[dict[str, Any]], policies: list[str]) -> Figure:
    """PCE incidence and mean embolised volume per policy with 95% CIs."""
    import matplotlib

    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(7.5, 3.2))
        ax1, ax2 = fig.subplots(1, 2)
        x = np.arange(len(policies))
        for ax, rows, key, title, scale in (
            (
                ax1,
                [r for r in inc if r["endpoint"] == "pulmonary cement embolism"],
                "p",
                "PCE incidence (%)",
                100.0,
            ),
            (
                ax2,
                [r for r in emb if r["quantity"] == "embolised volume per patient (ml)"],
                "value",
                "embolised volume per patient (ml)",
                1.0,
            ),
        ):
            by = {r["policy"]: r for r in rows}
            v = np.array([by[p][key] if p in by else np.nan for p in policies]) * scale
            lo = np.array([by[p]["lo"] if p in by else np.nan for p in policies]) * scale
            hi = np.array([by[p]["hi"] if p in by else np.nan for p in policies]) * scale
            err = np.vstack([np.nan_to_num(v - lo), np.nan_to_num(hi - v)])
            ax.bar(x, np.nan_to_num(v), color="#2e75b6", alpha=0.8)
            ax.errorbar(x, np.nan_to_num(v), yerr=np.maximum(err, 0.0), fmt="none", ecolor="k", capsize=3)
            ax.set_xticks(x, policies, rotation=30, ha="right")
            ax.set_title(title)
        return fig


def sensitivity_figure(rows: list[dict[str, Any]], method: str) -> Figure:
    """Horizontal bars of Morris mu* (or Sobol ST) per input, one panel per output."""
    import matplotlib

    key, conf = ("mu_star", "mu_star_conf") if method == "morris" else ("ST", "ST_conf")
    outputs = list(dict.fromkeys(r["output"] for r in rows))
    with matplotlib.rc_context(STYLE):
        n_in = max(4, len(rows) // max(1, len(outputs)))
        # one row of panels; the input names need room on the left of every panel
        fig = Figure(figsize=(4.2 * len(outputs), 0.35 * n_in + 1.2))
        axes = np.atleast_1d(fig.subplots(1, len(outputs)))
        for ax, out in zip(axes, outputs, strict=True):
            sub = [r for r in rows if r["output"] == out]
            sub.sort(key=lambda r: r[key])
            y = np.arange(len(sub))
            ax.barh(
                y, [r[key] for r in sub], xerr=[r[conf] for r in sub], color="#c55a11", alpha=0.8, capsize=2
            )
            ax.set_yticks(y, [r["input"] for r in sub])
            ax.set_title(f"{out}\n{'Morris mu*' if method == 'morris' else 'Sobol total index'}")
        return fig


def write_cohort_report(
    run: CohortRun, out_dir: str | Path, targets_path: str | Path | None = None
) -> list[Path]:
    """Write the CSV tables, PNG figures and cohort_report.md of a finished cohort into ``out_dir``.

    Tables per patient (a patient's levels combined: the clinical papers' unit) keep their names
    (cohort_incidence.csv, ...); the same tables per treated level end in ``_per_level.csv``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec = run.plan.spec
    multi = run.plan.multi_level
    policies = run.plan.policy_names
    n_levels = {pt.index: pt.n_levels for pt in run.plan.patients}
    by_level = {p: level_table(run, p) for p in policies}
    by_unit = {
        "patient": {p: patient_table(t, n_levels) for p, t in by_level.items()},
        "level": by_level,
    }
    calib_tables = {u: by_unit[u][spec.calibration] for u in UNITS}
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for unit in UNITS:
        tables = by_unit[unit]
        results[unit] = {
            "incidence": incidence_rows(run, tables),
            "emboli": emboli_rows(run, tables),
            "risk_factors": risk_factor_rows(tables[spec.calibration], multi),
            "policy_comparison": policy_rows(run, tables),
        }
    calib = calibration_rows(run, calib_tables, load_targets(targets_path))
    sens, sens_note = sensitivity_rows(run)
    files = []
    from sim.studies.ledger import write_csv

    write_csv(out / "cohort_runs.csv", runs_table(run))
    files.append(out / "cohort_runs.csv")
    write_csv(out / "cohort_patients.csv", endpoint_table(by_unit["patient"]))
    write_csv(out / "cohort_levels.csv", endpoint_table(by_unit["level"]))
    files += [out / "cohort_patients.csv", out / "cohort_levels.csv"]
    for unit, suffix in (("patient", ""), ("level", "_per_level")):
        for stem, rows in results[unit].items():
            files.append(_write_rows(out / f"cohort_{stem}{suffix}.csv", rows))
    files.append(_write_rows(out / "cohort_calibration.csv", calib))
    files.append(_write_rows(out / "cohort_sensitivity.csv", sens))
    pat = results["patient"]
    fig = policy_figure(pat["incidence"], pat["emboli"], policies)
    fig.savefig(out / "cohort_policies.png")
    files.append(out / "cohort_policies.png")
    if sens:
        sensitivity_figure(sens, run.sensitivity.method).savefig(out / "cohort_sensitivity.png")  # type: ignore[union-attr]
        files.append(out / "cohort_sensitivity.png")
    else:  # a resume without the design: an earlier call's figure would show what the report disowns
        (out / "cohort_sensitivity.png").unlink(missing_ok=True)
    md = _markdown(run, by_unit, results, calib, sens, sens_note)
    (out / "cohort_report.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    files.append(out / "cohort_report.md")
    return files


def _levels_text(run: CohortRun) -> list[str]:
    """The multi-level paragraph of the report: levels per patient and how they combine."""
    lv = run.plan.spec.levels
    if lv is None:
        return []
    counts = Counter(pt.n_levels for pt in run.plan.patients)
    n_pat = len(run.plan.patients)
    split = ", ".join(f"{k} level{'s' if k > 1 else ''}: {counts[k]}" for k in sorted(counts))
    shared = [p for p in run.plan.spec.distributions if p not in lv.per_level and p != "patient.level"]
    total = sum(k * c for k, c in counts.items())
    return [
        "## Treated levels",
        "",
        f"{total} treated levels in {n_pat} patients ({total / max(1, n_pat):.2f} per patient; {split}). "
        "Count "
        f"{_dist_text(lv.count)}, spacing {_dist_text(lv.gap)} vertebrae beyond the levels already "
        f"chosen, within T5-L5. {lv.source.strip()}".rstrip(),
        "",
        "Drawn per level: patient.level, patient.seed"
        + "".join(f", {p}" for p in lv.per_level if p != "patient.level")
        + ". Shared by a patient's levels: "
        + (", ".join(shared) or "(none)")
        + ".",
        "",
        "The levels are injected one after another; each is an ordinary run, and a patient's results "
        "combine as the clinical series count them: a leak, detection or PCE counts when any level "
        "has it, emboli, volumes and lobe counts add up (all levels' emboli lodge in the same lungs). "
        "Emboli already lodged do not change the pulmonary flows that route the next level's "
        "fragments (not modelled): by Murray's law an artery of diameter d carries (d / 22 mm)^3 of "
        "the main pulmonary artery's flow (0.08 % at 2 mm, 0.6 % at 4 mm), so a patient's few emboli "
        "divert well under 1 % of it. Per-level figures "
        "treat levels as independent; a patient's levels share its veins and operator, so per-level "
        "intervals are somewhat narrow. Per-patient rows need every level of the patient done.",
        "",
    ]


def _made_by() -> str:
    """Which code and CPU wrote the report (a run's bits are the same on one machine, not across CPUs)."""
    from sim.core.provenance import code_label, cpu_info

    cpu = cpu_info()
    simd = ", ".join(cpu["simd"]) or "no SIMD extension listed"
    return (
        f"Report written by {code_label()} on {cpu['model']} ({simd}); each run's summary.json names the CPU "
        "it ran on (`provenance.cpu`)."
    )


def _markdown(run, by_unit, results, calib, sens, sens_note) -> list[str]:  # noqa: ANN001
    spec = run.plan.spec
    multi = run.plan.multi_level
    units = UNITS if multi else ("patient",)
    tables = by_unit["patient"]
    n_pat = len(run.plan.patients)
    n_failed = len(run.failed)
    n_shared = sum(a.shared for a in run.arms.values())

    def rows_of(kind: str) -> list[dict[str, Any]]:
        return [r for u in units for r in results[u][kind]]

    inc, emb, risk, comp = (rows_of(k) for k in ("incidence", "emboli", "risk_factors", "policy_comparison"))
    md = [
        f"# Virtual cohort '{spec.name}'",
        "",
        spec.description.strip(),
        "",
        f"{n_pat} virtual patients x {len(tables)} policies (seed {spec.seed}); "
        f"{n_failed} arm(s) without a result; {n_shared} arm result(s) reused from the never-stop "
        "run (no leak seen, or the stop would have come after the injection ended: identical by "
        f"the stop-policy contract). Calibration and risk factors use policy '{spec.calibration}'; "
        f"policy differences are paired against '{spec.reference}'.",
        "",
        _made_by(),
        "",
        f"Endpoints: leak counted above {spec.endpoints.leak_min_ml:g} ml (type B basivertebral, "
        "type S anterior/lateral foramina, Yeom 2003); PCE = >= 1 lodged embolus"
        + (
            f" of diameter >= {spec.endpoints.embolus_min_diameter_mm:g} mm"
            if spec.endpoints.embolus_min_diameter_mm
            else ""
        )
        + ". Proportions: Wilson 95% CI, exact Clopper-Pearson when n < 40 or < 5 events; means "
        f"and shares: patient bootstrap ({spec.bootstrap} resamples, seeded).",
        "",
        "## Cohort inputs",
        "",
    ]
    md += _md_table(
        ["input", "distribution", "source"],
        [[p, _dist_text(d), d.source or ""] for p, d in spec.distributions.items()],
    )
    md += _levels_text(run)
    md += ["## Incidence per policy", ""]
    md += _md_table(
        ["per", "policy", "endpoint", "k/n", "% (95% CI)", "CI"],
        [
            [r["unit"], r["policy"], r["endpoint"], f"{r['k']}/{r['n']}", _ci(r, "p", True), r["ci"]]
            for r in inc
        ],
    )
    md += ["## Emboli per policy", ""]
    md += _md_table(
        ["per", "policy", "quantity", "value (95% CI)", "SD", "n"],
        [[r["unit"], r["policy"], r["quantity"], _ci(r, "value"), _fmt(r.get("sd")), r["n"]] for r in emb],
    )
    md += [f"## Risk factors for PCE (policy '{spec.calibration}')", ""]
    md += _md_table(
        ["per", "risk factor", "among", "exposed PCE", "unexposed PCE", "OR (95% CI)", "Haldane"],
        [
            [
                r["unit"],
                r["risk factor"],
                r["among"],
                r["exposed PCE"],
                r["unexposed PCE"],
                _ci(r, "OR"),
                r["haldane"],
            ]
            for r in risk
        ],
    )
    md += [
        f"## Calibration table (policy '{spec.calibration}')",
        "",
        "No pce-sim parameter was tuned to any of these figures: all are held out (see "
        "geometries/clinical_targets.yaml). Each figure is compared per patient (a patient's levels "
        "combined) unless the paper counted per level (column 'per'). "
        "'consistent' = the two 95% intervals overlap (a point value "
        "without a published CI is treated as an interval of zero width).",
        "",
    ]
    md += _md_table(
        ["figure", "per", "literature", "pce-sim (95% CI)", "n", "use", "verdict", "source"],
        [
            [
                r["figure"],
                r["unit"],
                _fmt(r["literature"]) + (f" ({r['literature CI']})" if r["literature CI"] else ""),
                _ci(r, "pce-sim"),
                r["n"],
                r["use"],
                r["verdict"],
                r["source"],
            ]
            for r in calib
        ],
    )
    md += [f"## Policy comparison (paired, same patients; reference '{spec.reference}')", ""]
    md += _md_table(
        ["per", "policy", "quantity", "policy", "reference", "difference (95% CI)", "McNemar p", "n"],
        [
            [
                r["unit"],
                r["policy"],
                r["quantity"],
                _fmt(r["policy value"]),
                _fmt(r["reference value"]),
                _ci(r, "difference"),
                _fmt(r["mcnemar p"]) if r["mcnemar p"] != "" else "",
                r["n paired"],
            ]
            for r in comp
        ],
    )
    md += ["![policies](cohort_policies.png)", "", "## Global sensitivity", ""]
    s = run.sensitivity
    if sens and s is not None:
        n_runs = len(set(s.hashes))
        if s.method == "morris":
            md += [
                "Morris elementary effects (Morris 1991; mu* after Campolongo 2007) via SALib: "
                f"{spec.sensitivity.trajectories} trajectories x {len(s.names) + 1} points, "
                f"{spec.sensitivity.levels} levels, {n_runs} distinct runs under policy '{s.policy}'. "
                "Inputs enter through their inverse CDFs (effects are per quantile step), so mu* "
                "ranks inputs on a common scale; patient.seed stands for the anatomy/random-field "
                "noise. Morris was chosen over Sobol because Sobol needs N(k+2) runs (>= 1000 here) "
                "for stable indices; PCE is binary, so its mu* is the mean probability change per step.",
                "",
            ]
            md += _md_table(
                ["output", "input", "mu*", "mu* CI half-width", "sigma"],
                [[r["output"], r["input"], r["mu_star"], r["mu_star_conf"], r["sigma"]] for r in sens],
            )
        else:
            md += [f"Sobol indices (Saltelli design, {n_runs} distinct runs under policy '{s.policy}').", ""]
            md += _md_table(
                ["output", "input", "S1", "S1 conf", "ST", "ST conf"],
                [[r["output"], r["input"], r["S1"], r["S1_conf"], r["ST"], r["ST_conf"]] for r in sens],
            )
        md += ["![sensitivity](cohort_sensitivity.png)", ""]
    else:
        md += [f"Not computed: {sens_note}.", ""]
    if run.failed:
        md += ["## Runs without a result", ""]
        md += _md_table(
            ["patient", "level", "policy", "run", "status", "error"],
            [
                [
                    a.patient,
                    a.level,
                    a.policy,
                    a.hash[:12],
                    a.status,
                    (a.error or "").splitlines()[0] if a.error else "",
                ]
                for a in run.failed[:50]
            ],
        )
    md += [
        "Tables: cohort_runs.csv (one row per run: patient, level and policy), cohort_patients.csv and "
        "cohort_levels.csv (endpoints per patient / per level and policy), cohort_incidence.csv, "
        "cohort_emboli.csv, cohort_risk_factors.csv, cohort_policy_comparison.csv (per patient) and the "
        "same with _per_level, cohort_calibration.csv, cohort_sensitivity.csv.",
    ]
    return md


def _dist_text(d: Any) -> str:
    if d.dist == "conditional":
        cases = "; ".join(f"{k}: {_dist_text(c)}" for k, c in (d.cases or {}).items())
        return f"given {d.given}: {cases}"
    params = {
        k: v
        for k, v in d.model_dump().items()
        if k not in ("dist", "source", "cases", "given") and v is not None
    }
    return f"{d.dist}(" + ", ".join(f"{k}={v}" for k, v in params.items()) + ")"
