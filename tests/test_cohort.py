"""Virtual patient cohorts: seeded sampling, marginals, paired policy arms, run sharing, resume, report,
and a tiny cohort end to end with the real pipeline on the local pool (via the CLI) and on Dask."""

from __future__ import annotations

import csv
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as st

import sim.studies.cohort as cohort_module
from sim.core.config import Scenario
from sim.core.errors import ConfigError
from sim.physics.injection_control import StopPolicy
from sim.run.results import RunResult
from sim.studies.cohort import (
    STOP_PATH,
    DistributionSpec,
    cohort_from_dict,
    design_inputs,
    load_cohort,
    plan_cohort,
    reuses_probe,
    run_cohort,
    run_cost,
    sample_patients,
    sensitivity_design,
    support_values,
)
from sim.studies.cohort_report import arm_table, load_targets, location_class, write_cohort_report
from sim.studies.executors import SerialExecutor

ROOT = Path(__file__).resolve().parent.parent
TINY = {"grid.spacing_mm": 2.0, "output": {"vtk": False, "fluoroscopy_png": False, "fields": False}}


def cohort(**kw):
    data = {
        "overrides": TINY,
        "n": 12,
        "seed": 5,
        "distributions": {
            "patient.level": {
                "dist": "categorical",
                "values": ["T8", "T12", "L1", "L3"],
                "weights": [1, 2, 2, 1],
            },
            "patient.porosity_mean": {"dist": "uniform", "low": 0.86, "high": 0.94},
            "injection.volume_ml": {
                "dist": "conditional",
                "given": "patient.level",
                "cases": {
                    "T*": {"dist": "uniform", "low": 1.0, "high": 3.0},
                    "*": {"dist": "uniform", "low": 3.0, "high": 8.0},
                },
            },
            "cement.preset": {"dist": "choice", "values": ["low", "medium", "high"]},
            "fluoroscopy.reaction_delay_s": {
                "dist": "truncnormal",
                "mean": 1.0,
                "sd": 0.5,
                "low": 0.2,
                "high": 3.0,
            },
            STOP_PATH: {"dist": "categorical", "values": [0.0, None], "weights": [0.7, 0.3]},
        },
        "policies": [
            {"name": "practice", "stop_after_leak_s": "sampled"},
            {"name": "stop_at_detection", "stop_after_leak_s": 0},
            {"name": "stop_after_15s", "stop_after_leak_s": 15},
            {"name": "never_stop", "stop_after_leak_s": None},
        ],
        "reference_policy": "stop_at_detection",
        "sensitivity": {"method": "none"},
        "bootstrap": 200,
    }
    data.update(kw)
    return cohort_from_dict(data)


# ---------------------------------------------------------------------------- a closed-form runner


def contract_runner(scenario: Scenario) -> RunResult:
    """Test double obeying the stop-policy contract: stop at detection + reaction delay + delay.

    Injection at a constant rate until the target volume; a leak is seen at 40% of the nominal
    duration when porosity > 0.9; emboli grow with the volume injected after detection.
    """
    rate = scenario.injection.rate_ml_per_s
    t_end = scenario.injection.volume_ml / rate
    det = 0.4 * t_end if scenario.patient.porosity_mean > 0.9 else math.nan
    policy = StopPolicy(scenario.injection.stop_after_leak_s, scenario.fluoroscopy.reaction_delay_s)
    stop_at = policy.stop_time_s(None if math.isnan(det) else det)
    stop = math.inf if stop_at is None else stop_at
    end = min(t_end, stop)
    injected = rate * end
    after = 0.0 if math.isnan(det) else max(0.0, injected - rate * det)
    thoracic = scenario.patient.level.startswith("T")
    n = int(after * 2.0) + (1 if thoracic and not math.isnan(det) else 0)
    rng = np.random.default_rng(scenario.patient.seed)
    lobes = np.array(["RUL", "RML", "RLL", "LUL", "LLL"])[rng.integers(0, 5, n)]
    emboli = {
        "status": np.array(["lodged"] * n + ["passed_distal"], dtype=object),
        "diameter_mm": np.append(2.0 + rng.random(n), 0.3),
        "order": np.append(rng.integers(10, 15, n), 5),
        "lobe": np.append(lobes, ""),
        "volume_mm3": np.append(rng.random(n) * 10.0, 0.1),
    }
    summary = {
        "injected_volume_ml": injected,
        "injection_duration_s": end,
        "detection_time_s": det,
        "injected_after_detection_ml": after,
        "leaked_basivertebral_ml": 0.0 if math.isnan(det) else 0.02,
        "leaked_anterior_ml": 0.1 * after,
        "leaked_lateral_ml": 0.0,
        "leaked_to_azygos_ml": 0.05 * after if thoracic else 0.0,
        "leaked_to_ivc_ml": 0.0 if thoracic else 0.05 * after,
        "n_emboli": n,
        "embolised_volume_ml": float(emboli["volume_mm3"][:n].sum()) / 1000.0,
        "wall_time_s": 0.0,
    }
    return RunResult(scenario=scenario, summary=summary, emboli=emboli)


def incomplete_runner(scenario: Scenario) -> RunResult:
    result = contract_runner(scenario)
    result.summary.pop("leaked_to_azygos_ml")
    return result


def serial():
    return SerialExecutor()


def _summaries(run):
    return {
        k: {m: v for m, v in (a.summary or {}).items() if m != "wall_time_s"} for k, a in run.arms.items()
    }


# ---------------------------------------------------------------------------- sampling


def test_same_seed_same_cohort_and_other_seed_differs():
    a = sample_patients(cohort(), 30)
    b = sample_patients(cohort(), 30)
    c = sample_patients(cohort(seed=6), 30)
    assert [p.inputs for p in a] == [p.inputs for p in b]
    assert [p.inputs["patient.porosity_mean"] for p in a] != [p.inputs["patient.porosity_mean"] for p in c]
    assert len({p.seed for p in a}) == 30 and {p.seed for p in a}.isdisjoint({p.seed for p in c})


def test_cohort_is_prefix_stable_and_inputs_independent():
    small = sample_patients(cohort(), 10)
    large = sample_patients(cohort(), 50)
    assert [p.inputs for p in small] == [p.inputs for p in large[:10]]
    spec = cohort()
    extra = cohort(
        distributions={
            **spec.model_dump()["distributions"],
            "veins.diameter_scale": {"dist": "uniform", "low": 0.8, "high": 1.2},
        }
    )
    with_extra = sample_patients(extra, 10)
    for p, q in zip(small, with_extra, strict=True):
        assert {k: q.inputs[k] for k in p.inputs} == p.inputs


def test_continuous_marginals_ks():
    dists = {
        "patient.porosity_mean": ({"dist": "uniform", "low": 0.86, "high": 0.94}, st.uniform(0.86, 0.08)),
        "patient.permeability_ref_m2": (
            {"dist": "loguniform", "low": 1e-8, "high": 1e-7},
            st.loguniform(1e-8, 1e-7),
        ),
        "veins.cvp_mmhg": ({"dist": "normal", "mean": 6.0, "sd": 1.5}, st.norm(6.0, 1.5)),
        "needle.tip_ap_fraction": (
            {"dist": "truncnormal", "mean": 0.35, "sd": 0.1, "low": 0.2, "high": 0.6},
            st.truncnorm(-1.5, 2.5, loc=0.35, scale=0.1),
        ),
        "veins.azygos_flow_ml_per_min": (
            {"dist": "lognormal", "median": 320.0, "sigma": 0.3},
            st.lognorm(0.3, scale=320.0),
        ),
    }
    spec = cohort(distributions={k: v[0] for k, v in dists.items()})
    pts = sample_patients(spec, 4000)
    for path, (_, ref) in dists.items():
        x = np.array([p.inputs[path] for p in pts])
        assert st.kstest(x, ref.cdf).pvalue > 1e-3, path
    tn = np.array([p.inputs["needle.tip_ap_fraction"] for p in pts])
    assert tn.min() >= 0.2 and tn.max() <= 0.6
    ln = np.array([p.inputs["veins.azygos_flow_ml_per_min"] for p in pts])
    assert np.median(ln) == pytest.approx(320.0, rel=0.03)


def test_weights_whose_sum_overflows_are_shares_as_written(recwarn):
    """Weights [1e308] * 3 took their sum to inf: every patient drew the last value, with a numpy warning."""
    huge = cohort(
        distributions={
            "patient.level": {"dist": "categorical", "values": ["T8", "T12", "L1"], "weights": [1e308] * 3}
        }
    )
    equal = cohort(
        distributions={
            "patient.level": {"dist": "categorical", "values": ["T8", "T12", "L1"], "weights": [1, 1, 1]}
        }
    )
    draws = [p.inputs["patient.level"] for p in sample_patients(huge, 300)]
    assert draws == [p.inputs["patient.level"] for p in sample_patients(equal, 300)]
    assert set(draws) == {"T8", "T12", "L1"} and not recwarn.list


def test_categorical_and_bernoulli_frequencies():
    spec = cohort(
        distributions={
            "patient.level": {"dist": "categorical", "values": ["T8", "T12", "L1"], "weights": [1, 2, 5]},
            "veins.hemiazygos_present": {"dist": "bernoulli", "p": 0.874},
        }
    )
    pts = sample_patients(spec, 5000)
    counts = Counter(p.inputs["patient.level"] for p in pts)
    obs = np.array([counts["T8"], counts["T12"], counts["L1"]])
    expected = 5000 * np.array([1, 2, 5]) / 8
    assert st.chisquare(obs, expected).pvalue > 1e-3
    k = sum(p.inputs["veins.hemiazygos_present"] for p in pts)
    assert all(isinstance(p.inputs["veins.hemiazygos_present"], bool) for p in pts)
    assert abs(k / 5000 - 0.874) < 3 * math.sqrt(0.874 * 0.126 / 5000)


def test_conditional_volume_follows_level():
    pts = sample_patients(cohort(), 400)
    for p in pts:
        v = p.inputs["injection.volume_ml"]
        if p.inputs["patient.level"].startswith("T"):
            assert 1.0 <= v <= 3.0
        else:
            assert 3.0 <= v <= 8.0
    bad = cohort().model_dump()["distributions"]
    bad["injection.volume_ml"]["cases"] = {"T*": {"dist": "uniform", "low": 1.0, "high": 2.0}}
    with pytest.raises(ConfigError, match="no case matches value 'L"):
        sample_patients(cohort(distributions=bad), 50)
    # named by the file and the field (it named neither)
    with pytest.raises(ConfigError) as err:
        plan_cohort(cohort(distributions=bad), ROOT / "configs", source="c.yaml")
    assert str(err.value).startswith(
        "c.yaml: distributions.injection.volume_ml: conditional on 'patient.level'"
    )
    assert "add a case for it or a catch-all '*'" in str(err.value)


@pytest.mark.parametrize(("keys", "shown"), [((True, False), "true, false"), ((11, None), "11, null")])
def test_case_keys_read_as_booleans_or_numbers_are_named_as_written(keys, shown):
    """`cases: {true: ..., false: ...}` was refused as `cases.1` / `cases.0`, keys the file does not have."""
    from sim.studies.cohort import DistributionSpec

    case = {"dist": "uniform", "low": 1.0, "high": 2.0}
    spec = {"dist": "conditional", "given": "veins.hemiazygos_present", "cases": {k: case for k in keys}}
    with pytest.raises(ValueError, match=f"case keys {shown} are read as YAML booleans, numbers or null"):
        DistributionSpec.model_validate(spec)


def test_policies_share_patients_and_differ_only_in_stop():
    plan = plan_cohort(cohort(), ROOT / "configs")
    for p in plan.patients:
        arms = {pol: plan.arms[(p.index, 1, pol)].model_dump(mode="json") for pol in plan.policy_names}
        seeds = {a["patient"]["seed"] for a in arms.values()}
        assert seeds == {p.seed}
        assert arms["stop_at_detection"]["injection"]["stop_after_leak_s"] == 0.0
        assert arms["never_stop"]["injection"]["stop_after_leak_s"] is None
        assert arms["practice"]["injection"]["stop_after_leak_s"] == p.inputs[STOP_PATH]
        for a in arms.values():
            a["injection"]["stop_after_leak_s"] = None
        assert all(a == arms["practice"] for a in arms.values())
        assert all(plan.shareable[(p.index, 1, pol)] for pol in plan.policy_names)


@pytest.mark.parametrize(
    "change,message",
    [
        ({"bogus": 1}, "unknown key 'bogus'"),
        ({"distributions": {"patient.levle": {"dist": "choice", "values": ["L1"]}}}, "no key 'levle'"),
        (
            {"distributions": {"patient.porosity_mean": {"dist": "uniform", "low": 0.9, "high": 0.8}}},
            "distributions.patient.porosity_mean.high = 0.8: must be greater than low = 0.9",
        ),
        ({"distributions": {"patient.porosity_mean": {"dist": "uniform", "low": 0.8}}}, "missing: high"),
        (
            {
                "distributions": {
                    "patient.porosity_mean": {"dist": "normal", "mean": 0.9, "sd": 0.1, "low": 0.5}
                }
            },
            "not low",
        ),
        (
            {
                "distributions": {
                    "patient.level": {"dist": "categorical", "values": ["L1", "L2"], "weights": [1]}
                }
            },
            "1 weights for 2",
        ),
        ({"distributions": {"patient.seed": {"dist": "choice", "values": [1, 2]}}}, "do not sample it"),
        ({"policies": [{"name": "a"}, {"name": "a"}]}, "unique"),
        ({"reference_policy": "nope"}, "reference_policy 'nope'"),
        ({"policies": [{"name": "a", "stop_after_leak_s": math.inf}]}, "policies.0.stop_after_leak_s = "),
        ({"policies": [{"name": "a", "stop_after_leak_s": math.nan}]}, "less than or equal to 3600"),
        (
            {"sensitivity": {"method": "morris", "inputs": []}},
            r"sensitivity.inputs = \[\]: List should have at least 1",
        ),
        (
            {"policies": [{"name": "a", "stop_after_leak_s": "5"}]},
            'policies.0.stop_after_leak_s = "5": Input should be a number, not a quoted string',
        ),
    ],
)
def test_invalid_cohort_files_name_the_culprit(change, message):
    with pytest.raises(ConfigError, match=message):
        cohort(**change)


def test_out_of_range_draw_names_patient_and_field():
    spec = cohort(distributions={"patient.porosity_mean": {"dist": "normal", "mean": 0.97, "sd": 0.05}})
    with pytest.raises(ConfigError, match=r"patient \d+ policy 'practice'.*patient.porosity_mean"):
        plan_cohort(spec, ROOT / "configs")


def test_a_value_no_patient_draws_is_still_checked_with_the_plan():
    """A list value with a tiny weight, or one every policy overrides, was checked only if a patient drew it
    and then with that patient's arm; every value a distribution can give is checked with the plan."""
    rare = cohort(
        distributions={
            "cement.preset": {"dist": "categorical", "values": ["low", "ultra"], "weights": [1.0, 1e-12]}
        }
    )
    assert all(pt.inputs["cement.preset"] == "low" for pt in sample_patients(rare, 12))
    with pytest.raises(
        ConfigError, match=r'distributions.cement.preset can give "ultra": cement.preset = "ultra"'
    ):
        plan_cohort(rare, ROOT / "configs")
    every_policy_sets_it = cohort(
        distributions={STOP_PATH: {"dist": "categorical", "values": [0.0, -5.0], "weights": [1, 1]}},
        policies=[{"name": "a", "stop_after_leak_s": 0}, {"name": "b", "stop_after_leak_s": None}],
        reference_policy="a",
    )
    with pytest.raises(ConfigError, match=rf"distributions.{STOP_PATH} can give -5.0"):
        plan_cohort(every_policy_sets_it, ROOT / "configs")


def test_support_values_are_the_draws_that_bound_a_distribution():
    """A uniform on [0, 1) reaches 1 - 1e-12, never 1 (a field < 1 accepts it); unbounded ones give none."""
    spec = cohort().distributions
    assert support_values(spec["cement.preset"]) == ["low", "medium", "high"]
    lo, hi = support_values(DistributionSpec(dist="uniform", low=0.0, high=1.0))
    assert lo == pytest.approx(0.0, abs=1e-11) and 1.0 - 1e-11 < hi < 1.0
    assert support_values(DistributionSpec(dist="normal", mean=0.9, sd=0.1)) == []
    assert support_values(DistributionSpec(dist="bernoulli", p=0.5)) == [True, False]
    volume = support_values(spec["injection.volume_ml"])
    assert volume == pytest.approx([1.0, 3.0, 3.0, 8.0], abs=1e-10)


def test_reuse_rule_follows_the_stop_contract():
    s = Scenario()
    s.fluoroscopy.reaction_delay_s = 1.0
    s.injection.stop_after_leak_s = 5.0
    assert reuses_probe({"detection_time_s": math.nan, "injection_duration_s": 80.0}, s)
    assert reuses_probe({"detection_time_s": 75.0, "injection_duration_s": 80.0}, s)  # 81 > 80
    assert not reuses_probe({"detection_time_s": 70.0, "injection_duration_s": 80.0}, s)  # 76 < 80
    assert not reuses_probe({"detection_time_s": 74.0, "injection_duration_s": 80.0}, s)  # exactly 80
    assert not reuses_probe({"injection_duration_s": 80.0}, s)  # metric missing: run it
    assert not reuses_probe(None, s)


def test_sensitivity_design_maps_levels_to_valid_inputs():
    spec = cohort(sensitivity={"method": "morris", "trajectories": 3, "levels": 4})
    names, design, seed = sensitivity_design(spec)
    assert names[-1] == "patient.seed" and design.shape == (3 * (len(names) + 1), len(names))
    rows = design_inputs(spec, names, design, {}, seed)
    poro = sorted({r["patient.porosity_mean"] for r in rows})
    # four Morris levels -> bin centres 1/8, 3/8, 5/8, 7/8 of the uniform range
    assert all(any(abs(v - (0.86 + 0.08 * q)) < 1e-12 for q in (0.125, 0.375, 0.625, 0.875)) for v in poro)
    assert design_inputs(spec, names, design, {}, seed) == rows


def test_a_policy_sets_each_field_once_and_merges_its_sections():
    """A policy's overrides went through set_dotted: a section replaced the base's whole section and a
    field given twice under two spellings kept the last one."""
    twice = {"name": "a", "overrides": {"grid": {"spacing_mm": 2.5}, "grid.spacing_mm": 1.5}}
    spec = cohort(n=1, policies=[twice], reference_policy="a")
    with pytest.raises(ConfigError, match="policy 'a': overrides: grid.spacing_mm is given twice"):
        plan_cohort(spec, ROOT / "configs", source="c.yaml")
    merged = cohort(n=1, policies=[{"name": "a", "overrides": {"grid": {"cfl": 0.4}}}], reference_policy="a")
    arm = plan_cohort(merged, ROOT / "configs", source="c.yaml").arms[(0, 1, "a")]
    assert arm.grid.cfl == 0.4 and arm.grid.spacing_mm == 2.0  # the base's spacing (TINY) is kept


def test_invalid_sensitivity_rows_are_refused_with_the_plan():
    """A design row outside a field's range stopped the cohort after all its patient runs (and every
    resume); the plan now validates the design, naming the file and the row."""
    lungs = {
        "lungs.mean_pap_mmhg": {"dist": "uniform", "low": 8.0, "high": 20.0},
        "lungs.left_atrial_pressure_mmhg": {"dist": "uniform", "low": 2.0, "high": 14.0},
    }
    spec = cohort(n=2, distributions=lungs, sensitivity={"method": "morris", "trajectories": 4, "levels": 4})
    patients_only = plan_cohort(spec, ROOT / "configs", source="c.yaml")  # its patients are valid
    assert patients_only.design_rows is None
    with pytest.raises(ConfigError) as err:
        plan_cohort(spec, ROOT / "configs", source="c.yaml", sensitivity=True)
    first = str(err.value).splitlines()[0]
    assert first.startswith("c.yaml: sensitivity design row ") and "lungs.mean_pap_mmhg = " in first
    assert "must be above lungs.left_atrial_pressure_mmhg" in first
    valid = cohort(n=2, sensitivity={"method": "morris", "trajectories": 2, "levels": 4})
    plan = plan_cohort(valid, ROOT / "configs", source="c.yaml", sensitivity=True)
    names, design, _seed = sensitivity_design(valid)
    assert plan.design_rows is not None and len(plan.design_rows) == design.shape[0]


# ---------------------------------------------------------------------------- running (test double)


def test_one_executor_serves_every_phase_and_dear_runs_start_first(tmp_path, monkeypatch):
    """Workers start once per cohort (not per phase); within a phase, runs start dearest first
    (run_cost), and the order does not change any result."""
    made: list = []
    started: list[str] = []

    class Recording(SerialExecutor):
        closed = False

        def submit(self, task):
            started.append(task.hash)
            return super().submit(task)

        def close(self):
            self.closed = True

    def factory():
        made.append(Recording())
        return made[-1]

    plan = plan_cohort(cohort(), ROOT / "configs")
    run = run_cohort(plan, tmp_path / "a", executor_factory=factory, runner=contract_runner)
    assert len(made) == 1 and made[0].closed
    probe_cost = {s.content_hash(): run_cost(s) for s in plan.probes.values()}
    costs = [probe_cost[h] for h in started if h in probe_cost]
    assert len(set(costs)) > 1 and costs == sorted(costs, reverse=True)
    assert started[: len(costs)] == [h for h in started if h in probe_cost]  # the never-stop phase first
    monkeypatch.setattr(cohort_module, "run_cost", lambda scenario: 0.0)  # all equal: index order
    in_order = run_cohort(plan, tmp_path / "b", executor_factory=serial, runner=contract_runner)
    assert _summaries(run) == _summaries(in_order)


def test_shared_runs_equal_full_runs_and_save_work(tmp_path):
    shared = run_cohort(
        plan_cohort(cohort(), ROOT / "configs"),
        tmp_path / "a",
        executor_factory=serial,
        runner=contract_runner,
    )
    full = run_cohort(
        plan_cohort(cohort(share_runs=False), ROOT / "configs"),
        tmp_path / "b",
        executor_factory=serial,
        runner=contract_runner,
    )
    assert not shared.failed and not full.failed
    assert _summaries(shared) == _summaries(full)
    assert any(a.shared for a in shared.arms.values())
    assert (
        shared.n_runs
        < full.n_runs
        == 12 * 4
        - sum(
            1
            for p in full.plan.patients
            if full.plan.arms[(p.index, 1, "practice")].injection.stop_after_leak_s is None
        )
        - sum(
            1
            for p in full.plan.patients
            if full.plan.arms[(p.index, 1, "practice")].injection.stop_after_leak_s == 0.0
        )
    )


def test_resume_and_growing_the_cohort_reuse_runs(tmp_path):
    run_cohort(
        plan_cohort(cohort(n=6), ROOT / "configs"), tmp_path, executor_factory=serial, runner=contract_runner
    )
    again = run_cohort(
        plan_cohort(cohort(n=6), ROOT / "configs"), tmp_path, executor_factory=serial, runner=contract_runner
    )
    assert again.n_runs == 0 and not again.failed
    grown = run_cohort(
        plan_cohort(cohort(n=9), ROOT / "configs"), tmp_path, executor_factory=serial, runner=contract_runner
    )
    fresh = run_cohort(
        plan_cohort(cohort(n=9), ROOT / "configs"),
        tmp_path / "fresh",
        executor_factory=serial,
        runner=contract_runner,
    )
    assert 0 < grown.n_runs < fresh.n_runs
    assert _summaries(grown) == _summaries(fresh)
    with pytest.raises(ConfigError, match="holds a different cohort"):
        run_cohort(
            plan_cohort(cohort(n=6, seed=99), ROOT / "configs"),
            tmp_path,
            executor_factory=serial,
            runner=contract_runner,
        )
    # fewer patients than the folder holds would rewrite its report for them: refused unless forced
    marker = (tmp_path / "cohort.resolved.yaml").read_text()
    with pytest.raises(
        ConfigError,
        match=r"holds a cohort of 9 patients; asking for 6 \(--n or the file's n\) would rewrite its report",
    ):
        run_cohort(
            plan_cohort(cohort(n=6), ROOT / "configs"),
            tmp_path,
            executor_factory=serial,
            runner=contract_runner,
        )
    assert (tmp_path / "cohort.resolved.yaml").read_text() == marker  # refused before touching the folder
    forced = run_cohort(
        plan_cohort(cohort(n=6), ROOT / "configs"),
        tmp_path,
        executor_factory=serial,
        runner=contract_runner,
        force=True,
    )
    assert forced.n_runs == 0 and len(forced.plan.patients) == 6


def test_report_tables_agree_with_the_runs(tmp_path):
    run = run_cohort(
        plan_cohort(cohort(n=30), ROOT / "configs"), tmp_path, executor_factory=serial, runner=contract_runner
    )
    files = write_cohort_report(run, tmp_path)
    names = {f.name for f in files}
    assert {
        "cohort_report.md",
        "cohort_calibration.csv",
        "cohort_policy_comparison.csv",
        "cohort_policies.png",
    } <= names
    with (tmp_path / "cohort_runs.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 30 * 4
    with (tmp_path / "cohort_incidence.csv").open() as fh:
        inc = [r for r in csv.DictReader(fh) if r["endpoint"] == "pulmonary cement embolism"]
    for r in inc:
        k = sum(int(x["n_emboli"]) >= 1 for x in rows if x["policy"] == r["policy"])
        assert int(r["k"]) == k and int(r["n"]) == 30
    # never stopping can only add emboli in the test double: paired difference >= 0 with a CI
    with (tmp_path / "cohort_policy_comparison.csv").open() as fh:
        comp = {(r["policy"], r["quantity"]): r for r in csv.DictReader(fh)}
    never = comp[("never_stop", "emboli per patient")]
    assert float(never["difference"]) > 0 and float(never["lo"]) >= 0
    assert float(comp[("stop_at_detection", "PCE incidence")]["difference"]) == 0.0
    with (tmp_path / "cohort_calibration.csv").open() as fh:
        calib = list(csv.DictReader(fh))
    assert [c["figure"] for c in calib] == [t["id"] for t in load_targets()]
    assert all(c["use"] == "held_out" for c in calib)
    text = (tmp_path / "cohort_report.md").read_text()
    for heading in ("## Calibration table", "## Policy comparison", "## Risk factors", "Venmans"):
        assert heading in text
    from sim.core.provenance import code_label, cpu_info

    assert f"Report written by {code_label()} on {cpu_info()['model']} (" in text  # which code and CPU
    # location shares: the test double's orders 10-14 map to distal/subsegmental/segmental/central
    t = arm_table(run, "never_stop")
    assert np.all(
        t["loc_central"] + t["loc_segmental"] + t["loc_subsegmental"] + t["loc_distal"] == t["n_emboli"]
    )
    assert np.all(t["right"] + t["left"] == t["n_emboli"])
    assert list(location_class(np.array([16, 14, 13, 12, 11, 10, 3]))) == [0, 0, 1, 2, 2, 3, 3]


def test_missing_metric_is_named(tmp_path):
    run = run_cohort(
        plan_cohort(cohort(n=2), ROOT / "configs"),
        tmp_path,
        executor_factory=serial,
        runner=incomplete_runner,
    )
    with pytest.raises(ConfigError, match="no metric 'leaked_to_azygos_ml'"):
        write_cohort_report(run, tmp_path)


# ---------------------------------------------------------------------------- real pipeline


@pytest.fixture(scope="module")
def local_cli_cohort(tmp_path_factory):
    from typer.testing import CliRunner

    from sim.cli import app

    out = tmp_path_factory.mktemp("cohort_local")
    res = CliRunner().invoke(
        app, ["cohort", str(ROOT / "configs" / "cohort_small.yaml"), "--out", str(out), "--n", "2", "--quiet"]
    )
    assert res.exit_code == 0, res.output
    return out


def test_a_resume_without_the_sensitivity_design_drops_its_figure(local_cli_cohort, tmp_path):
    """The earlier call's cohort_sensitivity.png stayed beside a report that says no design was run."""
    import shutil

    from typer.testing import CliRunner

    from sim.cli import app

    out = tmp_path / "cohort"
    shutil.copytree(local_cli_cohort, out)
    assert (out / "cohort_sensitivity.png").exists()
    cohort_file = str(ROOT / "configs" / "cohort_small.yaml")
    args = ["cohort", cohort_file, "--out", str(out), "--n", "2", "--no-sensitivity", "--quiet"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert not (out / "cohort_sensitivity.png").exists()
    assert "cohort_sensitivity.png" not in (out / "cohort_report.md").read_text()


def test_tiny_cohort_end_to_end_local_cli(local_cli_cohort):
    out = local_cli_cohort
    for name in (
        "cohort_report.md",
        "cohort_runs.csv",
        "cohort_sensitivity.csv",
        "ledger.sqlite",
        "cohort_policies.png",
    ):
        assert (out / name).exists(), name
    with (out / "cohort_runs.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    spec, base_dir = load_cohort(ROOT / "configs" / "cohort_small.yaml")
    n_levels = sum(p.n_levels for p in plan_cohort(spec, base_dir, n=2).patients)  # one run per level
    assert len(rows) == 2 * n_levels and all(r["status"] == "done" for r in rows)
    for r in rows:
        assert float(r["injected_volume_ml"]) <= float(r["injection.volume_ml"]) * (1 + 1e-9)
    with (out / "cohort_sensitivity.csv").open() as fh:
        sens = list(csv.DictReader(fh))
    assert {r["input"] for r in sens} == {"cement.preset", "injection.volume_ml", "patient.seed"}
    # mu* = mean |elementary effect| over the Morris trajectories (Campolongo et al. 2007), recomputed
    # by hand from the design and the outputs of the sensitivity runs
    spec, base_dir = load_cohort(ROOT / "configs" / "cohort_small.yaml")
    names, design, seed = sensitivity_design(spec)
    inputs = design_inputs(spec, names, design, plan_cohort(spec, base_dir, n=2).base, seed)
    with (out / "sensitivity" / "results.csv").open() as fh:
        by_row = {int(r["cohort.design_row"]): r for r in csv.DictReader(fh)}
    # a design row equal to an earlier one was run once, under the earlier row's index
    first = [next(q for q in range(r + 1) if inputs[q] == inputs[r]) for r in range(len(inputs))]
    outputs = {
        "embolised volume (ml)": ("embolised_volume_ml",),
        "venous leak volume (ml)": ("leaked_basivertebral_ml", "leaked_anterior_ml", "leaked_lateral_ml"),
    }
    mu_star = {(r["output"], r["input"]): float(r["mu_star"]) for r in sens}
    k = len(names)
    for label, keys in outputs.items():
        y = np.array([sum(float(by_row[first[r]][m]) for m in keys) for r in range(len(design))])
        effects: list[list[float]] = [[] for _ in names]
        for t in range(len(design) // (k + 1)):
            for r in range(t * (k + 1), (t + 1) * (k + 1) - 1):
                step = design[r + 1] - design[r]
                (j,) = np.flatnonzero(step)  # one input moves per step of a trajectory
                effects[j].append((y[r + 1] - y[r]) / step[j])
        for j, name in enumerate(names):
            assert len(effects[j]) == len(design) // (k + 1)
            hand = float(np.mean(np.abs(effects[j])))
            assert mu_star[(label, name)] == pytest.approx(hand, rel=1e-9, abs=1e-300), (label, name)


def test_tiny_cohort_on_dask_matches_local_without_sharing(local_cli_cohort, tmp_path):
    pytest.importorskip("dask.distributed")
    from sim.studies.executors import DaskExecutor

    spec, base_dir = load_cohort(ROOT / "configs" / "cohort_small.yaml")
    spec = spec.model_copy(update={"share_runs": False})
    run = run_cohort(
        plan_cohort(spec, base_dir, n=2),
        tmp_path,
        executor_factory=lambda: DaskExecutor(workers=2),
        sensitivity=False,
    )
    assert not run.failed and run.n_runs == len(run.arms) == 2 * sum(p.n_levels for p in run.plan.patients)
    with (local_cli_cohort / "cohort_runs.csv").open() as fh:
        local = {(int(r["patient"]), int(r["level"]), r["policy"]): r for r in csv.DictReader(fh)}
    for (i, k, pol), arm in run.arms.items():
        ref = local[(i, k, pol)]
        for metric in (
            "injected_volume_ml",
            "leaked_volume_ml",
            "n_emboli",
            "embolised_volume_ml",
            "detection_time_s",
        ):
            value = arm.summary[metric]
            expected = float(ref[metric]) if ref[metric] != "" else math.nan
            assert (math.isnan(expected) and (value is None or math.isnan(value))) or float(
                value
            ) == expected, metric
