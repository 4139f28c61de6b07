"""The grid-convergence study's arithmetic (benchmarks/bench_convergence.py): observed order,
Richardson estimate and the issue-15 targets, on values with known answers."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import pytest

from benchmarks.bench_convergence import _targets, observed_order, richardson

H = [0.5, 0.75, 1.0]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _default_spacing_1mm(monkeypatch):
    """The synthetic studies below are written for a 1 mm default (their late and missing grids sit
    there); the study's own default is the configuration's, checked separately."""
    import benchmarks.bench_convergence as bc

    monkeypatch.setattr(bc, "DEFAULT_SPACING_MM", 1.0)


def test_the_study_measures_its_targets_at_the_configurations_default_spacing(monkeypatch):
    """Issue 15's second target is read at the spacing a run gets when it names none."""
    import benchmarks.bench_convergence as bc
    from sim.core.config import DEFAULT_SPACING_MM, Scenario, load_scenario

    monkeypatch.undo()
    assert bc.DEFAULT_SPACING_MM == DEFAULT_SPACING_MM == Scenario().grid.spacing_mm
    assert load_scenario(ROOT / "configs" / "default.yaml").grid.spacing_mm == DEFAULT_SPACING_MM
    assert DEFAULT_SPACING_MM in bc.SPACINGS


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0])
def test_observed_order_and_estimate_recover_a_power_law(p):
    """f = c + a h^p on non-uniform spacings: order p and estimate c to round-off."""
    rows = [{"spacing_mm": h, "m": 1.7 + 0.3 * h**p} for h in (2.0, 1.5, *reversed(H))]
    assert observed_order(H, [1.7 + 0.3 * h**p for h in H]) == pytest.approx(p, rel=1e-6)
    fit = richardson(rows, "m")
    assert fit["order"] == pytest.approx(p, rel=1e-6)
    assert fit["estimate"] == pytest.approx(1.7, rel=1e-9)


def test_no_order_is_claimed_for_values_that_are_not_monotone():
    rows = [{"spacing_mm": h, "m": f} for h, f in zip(H, [1.0, 1.2, 1.1], strict=True)]
    fit = richardson(rows, "m")
    assert fit["order"] is None and fit["estimate"] == 1.0
    assert fit["uncertainty"] == pytest.approx(0.2)


def _study(leak, pressure, detect, embolised, hs=(2.0, 1.5, 1.0, 0.75, 0.5)):
    return [
        {"spacing_mm": h, "leaked_volume_ml": leak(h), "max_needle_pressure_kpa": pressure(h),
         "detection_time_s": detect(h), "embolised_volume_ml": embolised(h)}
        for h in hs
    ]  # fmt: skip


def test_targets_are_met_by_a_converged_study_and_missed_by_one_grid_that_does_not_see_the_leak():
    good = _study(
        lambda h: 1.0 + 0.01 * h**2,
        lambda h: 15.0,
        lambda h: 1.5 if h <= 1.0 else 3.0,
        lambda h: 0.8 + 0.02 * h,
    )
    targets = _targets({"a": good}, (2, 1.5, 1, 0.75, 0.5))
    assert len(targets) == 4 and all(t["met"] for t in targets), targets
    late = _study(lambda h: 1.0, lambda h: 15.0, lambda h: 2.5 if h == 1.0 else 1.5, lambda h: 0.8)
    det = [t for t in _targets({"a": late}, (2, 1.5, 1, 0.75, 0.5)) if t["name"].startswith("detection")][0]
    assert det["value"] == pytest.approx(1.0) and not det["met"]
    unseen = _study(lambda h: 1.0, lambda h: 15.0, lambda h: math.nan if h == 1.0 else 1.5, lambda h: 0.8)
    det = [t for t in _targets({"a": unseen}, (2, 1.5, 1, 0.75, 0.5)) if t["name"].startswith("detection")][0]
    assert det["value"] == math.inf and not det["met"]
    never = _study(lambda h: 1.0, lambda h: 15.0, lambda h: math.nan, lambda h: 0.0)
    assert all(t["met"] for t in _targets({"a": never}, (2, 1.5, 1, 0.75, 0.5)))
    drift = _study(
        lambda h: 1.0 + 0.1 * h, lambda h: 15.0, lambda h: 1.5, lambda h: 0.8
    )  # 0.75 vs 0.5: 2.3 %
    assert [t["met"] for t in _targets({"a": drift}, (2, 1.5, 1, 0.75, 0.5))] == [True, True, True, True]
    far = _study(lambda h: 1.0 + 0.3 * h, lambda h: 15.0, lambda h: 1.5, lambda h: 0.8)  # 0.75 vs 0.5: 6.3 %
    assert [t["met"] for t in _targets({"a": far}, (2, 1.5, 1, 0.75, 0.5))][0] is False


def test_detection_is_compared_with_the_finest_grid_on_every_grid_from_the_default_down():
    """With 0.375 mm in the study, a leak seen one second later on the 0.375 mm grid than on the
    0.5, 0.75 and 1 mm grids fails the detection target (compared with 0.5 mm it would pass), and a
    grid coarser than the default does not count."""
    hs = (2.0, 1.5, 1.0, 0.75, 0.5, 0.375)
    late_fine = _study(lambda h: 1.0, lambda h: 15.0, lambda h: 2.5 if h == 0.375 else 1.5, lambda h: 0.8, hs)
    det = [t for t in _targets({"a": late_fine}, hs) if t["name"].startswith("detection")][0]
    assert det["value"] == pytest.approx(1.0) and not det["met"]
    assert "each case's finest grid" in det["name"]
    # a case refined once more (0.25 mm, DEEPER_CASES) is compared with its own finest grid, the others
    # with theirs: one second late at 0.25 mm fails, though its 0.375 mm agrees with the coarser grids
    deeper = _study(
        lambda h: 1.0, lambda h: 15.0, lambda h: 2.5 if h == 0.25 else 1.5, lambda h: 0.8, (*hs, 0.25)
    )
    steady = _study(lambda h: 1.0, lambda h: 15.0, lambda h: 1.5, lambda h: 0.8, hs)
    det = [t for t in _targets({"a": steady, "b": deeper}, hs) if t["name"].startswith("detection")][0]
    assert det["value"] == pytest.approx(1.0) and not det["met"]
    unseen_fine = _study(
        lambda h: 1.0, lambda h: 15.0, lambda h: math.nan if h == 0.375 else 1.5, lambda h: 0.8, hs
    )
    det = [t for t in _targets({"a": unseen_fine}, hs) if t["name"].startswith("detection")][0]
    assert det["value"] == math.inf and not det["met"]
    coarse_only = _study(lambda h: 1.0, lambda h: 15.0, lambda h: 9.0 if h > 1.0 else 1.5, lambda h: 0.8, hs)
    assert all(t["met"] for t in _targets({"a": coarse_only}, hs))


def test_update_error_table_rewrites_both_tables(tmp_path):
    """`bench_convergence.py --update-yaml` rewrites the per-run error estimate's table from a study."""
    import json
    import math
    import shutil

    import yaml

    from benchmarks.bench_convergence import ROOT, update_error_table

    path = tmp_path / "convergence.yaml"
    shutil.copy(ROOT / "geometries" / "convergence.yaml", path)
    study = json.loads((ROOT / "benchmarks" / "results" / "convergence.json").read_text())
    update_error_table(study, path)
    assert path.read_text() == (ROOT / "geometries" / "convergence.yaml").read_text()  # round trip
    rows = study["studies"]["default"]
    rows[0]["leaked_volume_ml"] = 0.123456789
    rows[1]["detection_time_s"] = 7.5
    update_error_table(study, path)
    data = yaml.safe_load(path.read_text())
    assert data["leaked_volume_ml"]["default"][rows[0]["spacing_mm"]] == 0.123457
    assert data["detection_time_s"]["default"][rows[1]["spacing_mm"]] == 7.5
    seed = study["studies"]["seed case (lai2025_case)"]
    assert [data["detection_time_s"]["seed case"][r["spacing_mm"]] for r in seed] == [
        None if not math.isfinite(r["detection_time_s"]) else r["detection_time_s"] for r in seed
    ]
    # a case's extra refinement (0.25 mm) is written: its finest grid is its reference
    rows.append({**rows[-1], "spacing_mm": 0.125, "leaked_volume_ml": 9.0})
    update_error_table(study, path)
    assert yaml.safe_load(path.read_text())["leaked_volume_ml"]["default"][0.125] == 9.0
    study["studies"]["a new case"] = rows
    with pytest.raises(ValueError, match="a new case"):
        update_error_table(study, path)


# ---------------------------------------------------------------------------- time steps


def test_time_step_limit_and_error_columns_on_a_linear_law(monkeypatch):
    """f = 24.6 - 1.5 cfl (backward Euler is first order): the dt -> 0 limit is 24.6 exactly, the
    time-step error at cfl 0.8 -1.2 / 24.6, the whole error against the grid estimate beside it."""
    import benchmarks.bench_convergence as bc

    def law(c):
        return {"leaked_volume_ml": 24.6 - 1.5 * c, "max_needle_pressure_kpa": 8.0 + 0.01 * c}

    class Run:
        def __init__(self, summary):
            self.summary = summary

    seen = []

    def fake_run(scenario):
        seen.append(
            (scenario.grid.cfl, scenario.injection.max_duration_s, scenario.injection.stop_after_leak_s)
        )
        return Run(law(scenario.grid.cfl))

    monkeypatch.setattr("sim.run.pipeline.run_scenario", fake_run)
    reference = {"spacing_mm": 1.0, "cfl": 0.8, "stop_reason": "stop_signal", "injection_duration_s": 22.5,
                 **law(0.8)}  # fmt: skip
    study = bc.time_step_study({"injection": {"stop_after_leak_s": 0.0}}, reference)
    assert seen == [(0.1, 22.5, None), (0.2, 22.5, None), (0.4, 22.5, None)]
    assert study["limit"]["leaked_volume_ml"] == pytest.approx(24.6, rel=1e-12)
    assert study["order"]["leaked_volume_ml"] == pytest.approx(1.0, rel=1e-6)  # linear in the step
    grid = {
        "leaked_volume_ml": {"estimate": 20.0, "order": 1.1},
        "max_needle_pressure_kpa": {"estimate": 8.0, "order": None},
    }
    (leak, pressure) = bc.time_step_rows({"c": study}, {"c": grid})
    assert list(leak)[2:8] == ["cfl=0.8", "cfl=0.4", "cfl=0.2", "cfl=0.1", "dt->0", "order in dt"]
    assert leak["time-step error %"] == pytest.approx(-1.2 / 24.6 * 100, rel=1e-9)
    assert leak["whole error %"] == pytest.approx((24.6 - 1.2 - 20.0) / 20.0 * 100, rel=1e-9)
    assert leak["grid estimate"] == "Richardson" and pressure["grid estimate"] == "finest grid"
    # a case run at a smaller cfl is reported at its own cfl, with only the smaller ones added
    seen.clear()
    low = bc.time_step_study({}, {**reference, "cfl": 0.3, **law(0.3)})
    assert [c for c, *_ in seen] == [0.1, 0.2] and low["reference_cfl"] == 0.3
    (leak, _) = bc.time_step_rows({"c": low}, {"c": grid})
    assert leak["time-step error %"] == pytest.approx(-1.5 * 0.3 / 24.6 * 100, rel=1e-9)
    with pytest.raises(ValueError, match="two cfl numbers"):
        bc.time_step_study({}, {**reference, "cfl": 0.15})


def test_detection_is_recorded_per_cfl_and_its_spread_and_gap_read_from_the_runs(monkeypatch):
    """Detection times at every cfl, not extrapolated: the spread over the cfl numbers, NaN once a run
    does not see the leak, and the reference cfl's gap to the finest grid's detection."""
    import benchmarks.bench_convergence as bc

    seen_at = {0.8: 161.0, 0.4: 162.5, 0.2: 165.0, 0.1: 165.0}

    class Run:
        def __init__(self, summary):
            self.summary = summary

    def summary(c, never=()):
        return {
            "leaked_volume_ml": 58.0 + c,
            "max_needle_pressure_kpa": 142.0,
            "detection_time_s": math.nan if c in never else seen_at[c],
            "peak_visible_leak_mm3": 2.3 + 0.01 * c,
        }

    monkeypatch.setattr("sim.run.pipeline.run_scenario", lambda sc: Run(summary(sc.grid.cfl)))
    reference = {"spacing_mm": 0.75, "cfl": 0.8, "stop_reason": "target_volume",
                 "injection_duration_s": 167.4, **summary(0.8)}  # fmt: skip
    study = bc.time_step_study({}, reference)
    assert study["detection"]["detection_time_s"] == seen_at
    runs = [
        {"spacing_mm": 0.75, "detection_time_s": 161.0, "visibility_threshold_mm3": 2.317},
        {"spacing_mm": 0.375, "detection_time_s": 161.0, "visibility_threshold_mm3": 2.317},
    ]
    (row,) = bc.detection_step_rows({"p": study}, {"p": runs})
    assert row["spread over cfl (s)"] == 4.0 and row["gap at the scenario's cfl (s)"] == 0.0
    assert row["finest grid (mm)"] == 0.375 and row["finest grid seen at (s)"] == 161.0
    assert row["peak visible at cfl=0.1 (mm^3)"] == pytest.approx(2.301)
    assert list(row)[2:6] == [f"seen at cfl={c:g} (s)" for c in (0.8, 0.4, 0.2, 0.1)]
    monkeypatch.setattr("sim.run.pipeline.run_scenario", lambda sc: Run(summary(sc.grid.cfl, never=(0.4,))))
    (row,) = bc.detection_step_rows({"p": bc.time_step_study({}, reference)}, {"p": runs})
    assert math.isnan(row["seen at cfl=0.4 (s)"]) and math.isnan(row["spread over cfl (s)"])
    # a reference without detection figures (older callers) gives no row
    bare = {k: v for k, v in reference.items() if k not in bc.TIME_STEP_DETECTION}
    assert bc.detection_step_rows({"p": bc.time_step_study({}, bare)}, {"p": runs}) == []


def test_a_stop_that_follows_detection_is_kept_by_its_duration_and_others_are_left_alone():
    from benchmarks.bench_convergence import fixed_stop_config

    cfg = {"injection": {"stop_after_leak_s": 5.0, "volume_ml": 3.0}}
    fixed = fixed_stop_config(cfg, {"stop_reason": "stop_signal", "injection_duration_s": 12.25})
    assert fixed["injection"] == {"stop_after_leak_s": None, "volume_ml": 3.0, "max_duration_s": 12.25}
    assert cfg["injection"]["stop_after_leak_s"] == 5.0  # the case's own config is not changed
    assert fixed_stop_config(cfg, {"stop_reason": "volume", "injection_duration_s": 40.0}) == cfg


def test_stopping_at_the_reference_runs_duration_reproduces_it_exactly():
    """The separation's premise: the same run with its stop given as a duration is the same run."""
    from benchmarks.bench_convergence import ROOT, fixed_stop_config
    from sim.core.config import read_yaml, scenario_from_dict
    from sim.run.pipeline import run_scenario

    cfg = read_yaml(ROOT / "configs" / "lai2025_stop_at_detection.yaml")
    cfg["grid"] = {**cfg.get("grid", {}), "spacing_mm": 2.0}
    cfg.setdefault("output", {}).update(vtk=False, fluoroscopy_png=False, fields=False, time_series=False)
    ref = run_scenario(scenario_from_dict(cfg, source="ref")).summary
    assert ref["stop_reason"] == "stop_signal"
    reference = {"stop_reason": ref["stop_reason"], "injection_duration_s": ref["injection_duration_s"]}
    again = run_scenario(scenario_from_dict(fixed_stop_config(cfg, reference), source="fixed")).summary
    assert again["stop_reason"] != "stop_signal"
    for m in ("leaked_volume_ml", "injected_volume_ml", "max_needle_pressure_kpa", "n_emboli"):
        assert again[m] == ref[m], m


# ---------------------------------------------------------------------------- the same stop


def test_same_stop_reruns_each_grid_to_the_finest_runs_stop(monkeypatch):
    """Grids that stopped elsewhere are run again to the finest grid's stop (no stop on a leak); a run
    already stopped on the stop signal at that time is kept; the gaps are the targets' measures with
    the finest grid as the reference; a finest run that did not stop on the stop signal has nothing
    to separate."""
    import benchmarks.bench_convergence as bc

    def law(h, stop):  # leak converging as h, pressure rising with the stop time
        return {"leaked_volume_ml": 1.0 + 0.1 * h, "max_needle_pressure_kpa": 100.0 + 2.0 * stop,
                "embolised_volume_ml": 0.0}  # fmt: skip

    class Run:
        def __init__(self, summary):
            self.summary = summary

    seen = []

    def fake_run(scenario):
        inj, h = scenario.injection, scenario.grid.spacing_mm
        seen.append((h, inj.max_duration_s, inj.stop_after_leak_s))
        ended = inj.max_duration_s if h != 1.5 else 149.0  # 1.5 mm ends early (its volume reached)
        return Run({**law(h, ended), "injection_duration_s": ended})

    monkeypatch.setattr("sim.run.pipeline.run_scenario", fake_run)
    stops = {1.0: 140.0, 0.75: 146.0, 0.5: 150.0}
    runs = [
        {"spacing_mm": h, "stop_reason": "stop_signal", "injection_duration_s": t, **law(h, t)}
        for h, t in stops.items()
    ]
    runs[1]["injection_duration_s"] = 150.0  # 0.75 mm already stopped when the finest did: kept
    runs[1]["max_needle_pressure_kpa"] = 123.0
    values = bc.same_stop_study({"injection": {"stop_after_leak_s": 0.0}}, runs)
    assert seen == [(1.0, 150.0, None)]
    assert values["max_needle_pressure_kpa"] == {1.0: 400.0, 0.75: 123.0, 0.5: 400.0}
    assert values["leaked_volume_ml"][1.0] == pytest.approx(1.1)
    assert values["injection_duration_s"] == {1.0: 150.0, 0.75: 150.0, 0.5: 150.0}
    rows = bc.same_stop_rows({"c": values}, {"c": 150.0})
    leak = rows[0]
    assert leak["stop (s)"] == 150.0 and list(leak)[3:6] == ["h=1", "h=0.75", "h=0.5"]
    assert leak["ended before the stop (mm)"] is None
    assert leak["0.75 vs 0.5 %"] == pytest.approx(0.025 / 1.075 * 100, rel=1e-9)
    assert leak["1 mm vs finest %"] == pytest.approx(0.05 / 1.05 * 100, rel=1e-9)
    assert rows[1]["0.75 vs 0.5 %"] == pytest.approx(277.0 / 400.0 * 100, rel=1e-9)
    # a rerun that ends before the stop is not at the same stop: NaN, named in its row
    coarse = {
        "spacing_mm": 1.5,
        "stop_reason": "stop_signal",
        "injection_duration_s": 130.0,
        **law(1.5, 130.0),
    }
    values = bc.same_stop_study({}, [coarse, *runs])
    assert math.isnan(values["leaked_volume_ml"][1.5]) and values["injection_duration_s"][1.5] == 149.0
    assert bc.same_stop_rows({"c": values}, {"c": 150.0})[0]["ended before the stop (mm)"] == "1.5"
    runs[-1]["stop_reason"] = "target_volume"
    assert bc.same_stop_study({}, runs) is None


def test_a_missing_or_unmeasured_grid_is_not_counted_as_met():
    """A NaN value or a missing 0.75 / 0.5 / default grid gives a NaN gap, and a NaN worst case is
    not met (it was a 0 % gap before)."""
    import benchmarks.bench_convergence as bc

    runs = [{"spacing_mm": h, "m": v} for h, v in ((1.0, 1.0), (0.75, math.nan), (0.5, 1.0), (0.375, 1.0))]
    fine, default = bc._relative_gaps(runs, "m", estimate=1.0)
    assert math.isnan(fine) and default == 0.0
    assert math.isnan(bc._relative_gaps(runs[2:], "m", estimate=1.0)[1])  # no 1 mm grid
    row = bc._target("t", "<= 5 %", bc._worst([0.01, math.nan]), 0.05, True)
    assert row["met"] is False and math.isnan(row["value"]) and math.isnan(row["margin"])


def test_the_deeper_cases_get_one_more_grid_and_the_tables_keep_their_columns_in_order(monkeypatch):
    """The full study runs DEEPER_CASES at 0.25 and 0.1875 mm and no other case; the main and same-stop
    tables list every grid coarse to fine before their other columns; the cases named are study cases."""
    import benchmarks.bench_convergence as bc

    assert set(bc.DEEPER_CASES) <= set(bc.case_configs(False))
    names = ["seed case (lai2025_case)", "default", *bc.DEEPER_CASES]
    monkeypatch.setattr(bc, "case_configs", lambda quick, cfl=None: {n: {} for n in names})

    def fake_runs(cfg, spacings):
        return [
            {"spacing_mm": h, "wall_s": 0.1, "visibility_threshold_mm3": 5.0, "cfl": 0.8,
             "stop_reason": "stop_signal", "injection_duration_s": 20.0,
             **{m: 1.0 + 0.01 * h for m, _ in bc.METRICS}}
            for h in spacings
        ]  # fmt: skip

    def fake_same_stop(cfg, runs):
        v = {r["spacing_mm"]: 1.0 for r in runs}
        return {**{m: dict(v) for m in bc.SAME_STOP_METRICS}, "injection_duration_s": dict(v)}

    monkeypatch.setattr(bc, "run_case", fake_runs)
    step = {"values": {}, "limit": {}, "order": {}, "reference_cfl": 0.8}
    monkeypatch.setattr(bc, "time_step_study", lambda cfg, ref: step)
    monkeypatch.setattr(bc, "time_step_rows", lambda ts, est: [{"case": "x"}])
    monkeypatch.setattr(bc, "same_stop_study", fake_same_stop)
    section = bc.run()
    deeper = {r["case"] for r in section["rows"] if "h=0.25" in r and "h=0.1875" in r}
    assert deeper == set(bc.DEEPER_CASES)
    cols = section["columns"]
    assert cols.index("h=0.25") == cols.index("h=0.375") + 1 == cols.index("h=0.1875") - 1 and cols[-3:] == [
        "order",
        "estimate",
        "uncertainty",
    ]
    table = next(t for t in section["extra_tables"] if t["title"].startswith("The same stop"))
    tcols = table["columns"]
    assert tcols.index("h=0.25") == tcols.index("h=0.375") + 1 and tcols.index("h=0.25") < tcols.index(
        "0.75 vs 0.5 %"
    )
    # a study with its own spacings runs no extra grid
    assert not any("h=0.25" in r for r in bc.run(spacings=(2.0, 1.0, 0.75, 0.5))["rows"])


def test_parse_cfl_takes_grid_cfl_bounds_and_names_the_value_as_written():
    import benchmarks.bench_convergence as bc
    from sim.core.config import GridConfig

    assert bc.parse_cfl("0.4") == 0.4 and bc.parse_cfl("1") == 1.0 and bc.parse_cfl("0.05") == 0.05
    for text in ("0.01", "1.5", "x", "nan", "-0.4"):
        with pytest.raises(ValueError, match=rf"--cfl {re.escape(text)}: must be a number in \[0.05, 1\]"):
            bc.parse_cfl(text)
    GridConfig(cfl=bc.parse_cfl("0.05"))  # the bounds are the config's own


def test_the_study_at_another_cfl_sets_every_cases_step_and_refuses_a_bad_value(capsys, monkeypatch):
    """``--cfl`` puts every case on that step (session 38's study at the cohort's cfl 0.4); a value
    outside grid.cfl's bounds is one usage line naming it, exit 2, before any run."""
    import benchmarks.bench_convergence as bc

    own = bc.case_configs(False)
    halved = bc.case_configs(False, 0.4)
    assert set(halved) == set(own) and all(c["grid"]["cfl"] == 0.4 for c in halved.values())
    assert {c.get("grid", {}).get("cfl") for c in own.values()} != {0.4}  # the cases' own steps otherwise
    monkeypatch.setattr(bc, "run", lambda **kw: pytest.fail("ran before refusing the option"))
    for text, message in (
        ("1.5", "--cfl 1.5: must be a number in [0.05, 1]"),
        ("0.2", "--cfl 0.2: the time-step table needs two of the cfl numbers 0.4 / 0.2 / 0.1 below it; give "
         "more than 0.2 (or --quick)"),
    ):  # fmt: skip
        monkeypatch.setattr(sys, "argv", ["bench_convergence.py", "--cfl", text])
        with pytest.raises(SystemExit) as exc:
            bc.main()
        assert exc.value.code == 2
        assert capsys.readouterr().err.strip().splitlines()[-1].endswith(message)
