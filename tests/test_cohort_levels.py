"""Patients with several treated levels: seeded level sampling (prefix-stable, level 1 as in a
single-level cohort), the clustering rule, shared vs per-level inputs, per-patient aggregation of a
patient's levels, run sharing per level, and the per-level and per-patient report tables."""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter

import numpy as np
import pytest

from sim.core.errors import ConfigError
from sim.studies.cohort import (
    MAX_GAP,
    SPINE_LEVELS,
    load_cohort,
    next_level,
    plan_cohort,
    run_cohort,
    sample_patients,
)
from sim.studies.cohort_report import (
    ARM_COLUMNS,
    ArmTable,
    arm_table,
    patient_table,
    write_cohort_report,
)
from tests.test_cohort import ROOT, cohort, contract_runner, serial

PER_LEVEL = ["patient.porosity_mean", "injection.volume_ml"]
LEVELS = {
    "count": {"dist": "categorical", "values": [1, 2, 3], "weights": [0.35, 0.40, 0.25]},
    "gap": {"dist": "categorical", "values": [1, 2, 3], "weights": [0.6, 0.25, 0.15]},
    "per_level": PER_LEVEL,
}


def multi(**kw):
    return cohort(levels=kw.pop("levels", LEVELS), **kw)


def _all_inputs(patients):
    return [[dict(x) for x in p.levels] for p in patients]


# ---------------------------------------------------------------------------- sampling


def test_levels_are_seeded_prefix_stable_and_keep_level_one():
    a = sample_patients(multi(), 40)
    assert _all_inputs(a) == _all_inputs(sample_patients(multi(), 40))
    assert _all_inputs(sample_patients(multi(), 12)) == _all_inputs(a[:12])
    assert _all_inputs(sample_patients(multi(seed=6), 40)) != _all_inputs(a)
    # level 1 is the single-level cohort's patient, draw for draw
    single = sample_patients(cohort(), 40)
    assert [p.inputs for p in a] == [p.inputs for p in single]
    assert all(p.n_levels == 1 for p in single)
    # adding a distribution leaves every other draw of every level unchanged
    spec = multi()
    extra = multi(
        distributions={
            **spec.model_dump()["distributions"],
            "veins.diameter_scale": {"dist": "uniform", "low": 0.8, "high": 1.2},
        }
    )
    for p, q in zip(a, sample_patients(extra, 40), strict=True):
        assert p.n_levels == q.n_levels
        for x, y in zip(p.levels, q.levels, strict=True):
            assert {k: y[k] for k in x} == x
            assert y["veins.diameter_scale"] == q.inputs["veins.diameter_scale"]  # shared
    # another count distribution moves no other draw: a level present in both cohorts is the same
    fewer = multi(levels={**LEVELS, "count": {"dist": "categorical", "values": [1, 2], "weights": [1, 1]}})
    for p, q in zip(a, sample_patients(fewer, 40), strict=True):
        n = min(p.n_levels, q.n_levels)
        assert p.levels[:n] == q.levels[:n]


def test_levels_distinct_clustered_within_t5_l5():
    gaps = Counter()
    pts = sample_patients(multi(), 3000)
    for p in pts:
        names = [x["patient.level"] for x in p.levels]
        idx = [SPINE_LEVELS.index(v) for v in names]  # raises if outside T5..L5
        assert 1 <= p.n_levels <= 3 and len(set(idx)) == len(idx)
        for k in range(1, len(idx)):
            before = idx[:k]
            # a further level extends the cluster outwards by its gap (1 = adjacent), never inside it
            gap = idx[k] - max(before) if idx[k] > max(before) else min(before) - idx[k]
            assert 1 <= gap <= 3
            gaps[gap] += 1
        seeds = [x["patient.seed"] for x in p.levels]
        assert len(set(seeds)) == len(seeds)
    counts = np.array([p.n_levels for p in pts])
    expected = 0.35 + 2 * 0.40 + 3 * 0.25
    se = counts.std() / np.sqrt(counts.size)
    assert abs(counts.mean() - expected) < 4 * se
    assert gaps[1] > gaps[2] > gaps[3] > 0


def test_next_level_turns_at_the_ends_of_the_spine():
    t5, l5 = 0, len(SPINE_LEVELS) - 1
    assert next_level([t5], 1, 0.9) == 1  # cranial of T5 does not exist: caudal instead
    assert next_level([l5], 2, 0.1) == l5 - 2  # caudal of L5 does not exist: cranial instead
    assert next_level([5, 6], 1, 0.1) == 7 and next_level([5, 6], 1, 0.9) == 4
    # the widest allowed cluster still fits on one side
    assert 0 <= next_level([6, 6 + MAX_GAP], MAX_GAP, 0.1) < len(SPINE_LEVELS)


def test_shared_and_per_level_inputs():
    pts = sample_patients(multi(), 400)
    differ = Counter()
    for p in pts:
        for x in p.levels[1:]:
            for path in ("cement.preset", "fluoroscopy.reaction_delay_s", "injection.stop_after_leak_s"):
                assert x[path] == p.inputs[path], path
            for path in PER_LEVEL:
                differ[path] += x[path] != p.inputs[path]
            v = x["injection.volume_ml"]  # per-level conditional: follows that level's own level
            assert (1.0 <= v <= 3.0) if x["patient.level"].startswith("T") else (3.0 <= v <= 8.0)
    multi_levels = sum(p.n_levels - 1 for p in pts)
    assert all(differ[path] == multi_levels for path in PER_LEVEL)


@pytest.mark.parametrize(
    "levels,message",
    [
        ({**LEVELS, "per_level": ["patient.porosity_mean"]}, "conditional on the per-level 'patient.level'"),
        ({**LEVELS, "per_level": [*PER_LEVEL, "veins.cvp_mmhg"]}, "'veins.cvp_mmhg' has no distribution"),
        ({**LEVELS, "count": {"dist": "choice", "values": [1, 4]}}, r"integers 1..3"),
        ({**LEVELS, "count": {"dist": "uniform", "low": 1, "high": 3}}, "categorical or choice"),
        ({**LEVELS, "gap": {"dist": "choice", "values": [0, 1]}}, r"integers 1..6"),
        ({**LEVELS, "per_level": [*PER_LEVEL, "patient.seed"]}, "per level already"),
    ],
)
def test_invalid_levels_name_the_culprit(levels, message):
    with pytest.raises(ConfigError, match=message):
        multi(levels=levels)


def test_single_level_cohort_keeps_its_fingerprint_and_runs():
    spec = cohort()
    plan = plan_cohort(spec, ROOT / "configs")
    doc = spec.model_dump(mode="json")
    for key in ("n", "executor", "levels"):
        doc.pop(key)
    blob = json.dumps({"spec": doc, "base": plan.base}, sort_keys=True, separators=(",", ":"))
    assert plan.fingerprint == hashlib.sha256(blob.encode()).hexdigest()
    assert set(plan.arms) == {(p.index, 1, pol) for p in plan.patients for pol in plan.policy_names}
    assert "cohort.level" not in plan.input_names
    mplan = plan_cohort(multi(), ROOT / "configs")
    assert mplan.fingerprint != plan.fingerprint and "cohort.level" in mplan.input_names
    for p in mplan.patients:  # level 1 of the multi-level patient is the single-level patient's run
        for pol in plan.policy_names:
            assert mplan.arms[(p.index, 1, pol)].content_hash() == plan.arms[(p.index, 1, pol)].content_hash()


def test_default_cohort_files_have_levels():
    from sim.studies.sizing import cohort_counts

    for name, mean in (("cohort_default.yaml", 1.9), ("cohort_small.yaml", 1.9)):
        spec, base_dir = load_cohort(ROOT / "configs" / name)
        assert spec.levels is not None and spec.levels.mean_count == pytest.approx(mean)
        plan = plan_cohort(spec, base_dir, n=5)
        assert len(plan.arms) == len(spec.policies) * sum(p.n_levels for p in plan.patients)
        # the size check counts one run per treated level and policy, plus a probe per level
        assert cohort_counts(spec, 5, sensitivity=False)[0] == len(plan.arms) + len(plan.probes)


def test_the_size_check_counts_in_integers():
    """A float count printed 200,000,000,000,000,009,529,458,694 scenarios for 10^26 patients."""
    from sim.studies.sizing import cohort_counts

    spec, _ = load_cohort(ROOT / "configs" / "cohort_small.yaml")
    single = spec.model_copy(update={"levels": None})
    per_patient = len(spec.policies) + (1 if spec.share_runs else 0)
    assert cohort_counts(single, 10**26, sensitivity=False)[0] == 10**26 * per_patient
    # with levels (1.9 per patient) the expected count, in decimal: 1.9e26 levels, not a float's digits
    assert cohort_counts(spec, 10**26, sensitivity=False)[0] == 19 * 10**25 * per_patient


def test_growing_a_multi_level_cohort_reuses_runs(tmp_path):
    def summaries(run):
        return {k: {m: v for m, v in a.summary.items() if m != "wall_time_s"} for k, a in run.arms.items()}

    def go(n, folder):
        plan = plan_cohort(multi(n=n), ROOT / "configs")
        return run_cohort(plan, folder, executor_factory=serial, runner=contract_runner)

    go(6, tmp_path / "c")
    assert go(6, tmp_path / "c").n_runs == 0
    grown, fresh = go(10, tmp_path / "c"), go(10, tmp_path / "fresh")
    assert 0 < grown.n_runs < fresh.n_runs and summaries(grown) == summaries(fresh)


# ---------------------------------------------------------------------------- aggregation


def test_patient_table_combines_levels_as_clinical_series_count():
    rng = np.random.default_rng(3)
    patient = np.array([0, 1, 1, 2, 2, 2, 3, 3])
    level = np.array([1, 1, 2, 1, 2, 3, 1, 2])
    n_levels = {0: 1, 1: 2, 2: 3, 3: 3}  # patient 3 misses its third level: left out
    cols = {k: rng.random(patient.size) for k in ARM_COLUMNS}
    cols["n_emboli"] = np.array([0, 0, 2, 1, 0, 4, 5, 0], dtype=float)
    cols["pce"] = (cols["n_emboli"] >= 1).astype(float)
    cols["azygos_leak"] = np.array([0, 1, 0, 0, 0, 0, 1, 1], dtype=float)
    cols["n_levels"] = np.array([n_levels[i] for i in patient], dtype=float)
    t = patient_table(ArmTable("p", patient, cols, level), n_levels)
    assert list(t.patient) == [0, 1, 2] and t.unit == "patient"
    assert list(t["pce"]) == [0.0, 1.0, 1.0]  # PCE if any level embolised
    assert list(t["n_emboli"]) == [0.0, 2.0, 5.0]  # emboli per patient = sum over levels
    assert list(t["azygos_leak"]) == [0.0, 1.0, 0.0]
    assert list(t["n_levels"]) == [1.0, 2.0, 3.0]
    for name in ("embolised_volume_ml", "injected_volume_ml", "lobe_RLL", "diameter_sum_mm"):
        assert t[name][2] == pytest.approx(cols[name][3:6].sum())


# ---------------------------------------------------------------------------- running (test double)


def test_run_sharing_per_level_and_report_tables(tmp_path):
    shared = run_cohort(
        plan_cohort(multi(n=20), ROOT / "configs"),
        tmp_path / "a",
        executor_factory=serial,
        runner=contract_runner,
    )
    full = run_cohort(
        plan_cohort(multi(n=20, share_runs=False), ROOT / "configs"),
        tmp_path / "b",
        executor_factory=serial,
        runner=contract_runner,
    )
    assert not shared.failed and not full.failed

    def strip(run):
        return {k: {m: v for m, v in a.summary.items() if m != "wall_time_s"} for k, a in run.arms.items()}

    assert strip(shared) == strip(full) and shared.n_runs < full.n_runs
    assert any(a.shared and a.level > 1 for a in shared.arms.values())
    n_level_runs = sum(p.n_levels for p in shared.plan.patients)
    assert len(shared.arms) == 4 * n_level_runs

    files = {f.name for f in write_cohort_report(shared, tmp_path / "a")}
    for stem in ("incidence", "emboli", "risk_factors", "policy_comparison"):
        assert {f"cohort_{stem}.csv", f"cohort_{stem}_per_level.csv"} <= files
    assert {"cohort_patients.csv", "cohort_levels.csv", "cohort_runs.csv"} <= files

    def read(name):
        return list(csv.DictReader((tmp_path / "a" / name).open()))

    runs = read("cohort_runs.csv")
    assert len(runs) == 4 * n_level_runs and {r["level"] for r in runs} >= {"1", "2"}
    for pol in shared.plan.policy_names:
        by_patient: dict[int, list[int]] = {}
        for r in runs:
            if r["policy"] == pol:
                by_patient.setdefault(int(r["patient"]), []).append(int(r["n_emboli"]))
        inc = {(r["endpoint"]): r for r in read("cohort_incidence.csv") if r["policy"] == pol}
        inc_l = {(r["endpoint"]): r for r in read("cohort_incidence_per_level.csv") if r["policy"] == pol}
        pce = inc["pulmonary cement embolism"]
        assert int(pce["n"]) == 20 and pce["unit"] == "patient"
        assert int(pce["k"]) == sum(any(n >= 1 for n in v) for v in by_patient.values())
        pce_l = inc_l["pulmonary cement embolism"]
        assert int(pce_l["n"]) == n_level_runs and pce_l["unit"] == "level"
        assert int(pce_l["k"]) == sum(n >= 1 for v in by_patient.values() for n in v)
        t = arm_table(shared, pol)
        assert list(t["n_emboli"]) == [float(sum(by_patient[i])) for i in sorted(by_patient)]
    patients = read("cohort_patients.csv")
    levels = read("cohort_levels.csv")
    assert len(patients) == 4 * 20 and len(levels) == 4 * n_level_runs
    risk = {(r["unit"], r["risk factor"]) for r in read("cohort_risk_factors.csv")}
    assert {
        ("patient", "IVC leak"),
        ("patient", "azygos leak"),
        ("patient", "2-3 levels treated (vs 1)"),
    } <= risk
    calib = {r["figure"]: r for r in read("cohort_calibration.csv")}
    assert calib["josr2021_or_three_levels"]["unit"] == "patient"
    text = (tmp_path / "a" / "cohort_report.md").read_text()
    assert "## Treated levels" in text and "| level |" in text and "| patient |" in text


def test_single_level_report_per_level_equals_per_patient(tmp_path):
    run = run_cohort(
        plan_cohort(cohort(n=15), ROOT / "configs"), tmp_path, executor_factory=serial, runner=contract_runner
    )
    write_cohort_report(run, tmp_path)

    def read(name):
        return list(csv.DictReader((tmp_path / name).open()))

    def strip(rows):
        return [{k: v for k, v in r.items() if k != "unit"} for r in rows]

    assert strip(read("cohort_incidence.csv")) == strip(read("cohort_incidence_per_level.csv"))
    assert "level" not in read("cohort_runs.csv")[0]
    assert "## Treated levels" not in (tmp_path / "cohort_report.md").read_text()
