"""A stop-policy arm finished from a copy of the never-stop run equals the arm run on its own.

The seed case at 2 mm with a reaction delay of 0.7 s: the arms that stop at detection and 2 s after
it are branched off the never-stop run (``run_with_branches``) and also run alone; every number of
their summaries, time series, emboli and fragment tables must be identical (bit for bit), apart
from the wall time. The never-stop run itself must not change by carrying branches. The arms stop
exactly at detection + delay + their stop delay, inside steps of the never-stop run (the branch takes
that step cut at its stop).
"""

from __future__ import annotations

import numpy as np
import pytest

from sim.core.config import load_scenario, scenario_from_dict
from sim.run.branching import copy_run_state, differs_only_in_stop
from sim.run.pipeline import run_scenario, run_with_branches

pytestmark = pytest.mark.slow

TIMING = {"wall_time_s"}
REACTION_DELAY_S = 0.7


def _case(stop_after_leak_s: float | None) -> dict:
    d = load_scenario("configs/lai2025_case.yaml").model_dump(mode="json")
    d["grid"].update(spacing_mm=2.0)
    d["injection"].update(volume_ml=2.0, follow_up_s=5.0, stop_after_leak_s=stop_after_leak_s)
    d["fluoroscopy"]["reaction_delay_s"] = REACTION_DELAY_S
    d["output"] = {"vtk": False, "fluoroscopy_png": False, "fields": False}
    return d


def _same(a, b, what: str) -> None:
    for key in set(a.summary) | set(b.summary):
        if key in TIMING:
            continue
        x, y = a.summary.get(key), b.summary.get(key)
        same = (x == y) or (isinstance(x, float) and isinstance(y, float) and np.isnan(x) and np.isnan(y))
        assert same, f"{what}: summary {key} {x!r} != {y!r}"
    for table in ("time_series", "emboli", "fragments"):
        ta, tb = getattr(a, table), getattr(b, table)
        assert set(ta) == set(tb), f"{what}: {table} columns"
        for col in ta:
            x, y = np.asarray(ta[col]), np.asarray(tb[col])
            nan_ok = x.dtype.kind == "f" and y.dtype.kind == "f"
            assert np.array_equal(x, y, equal_nan=nan_ok), f"{what}: {table}.{col}"


@pytest.fixture(scope="module")
def branched():
    probe = scenario_from_dict(_case(None))
    arms = {"at_detection": scenario_from_dict(_case(0.0)), "after_2s": scenario_from_dict(_case(2.0))}
    result, fired = run_with_branches(probe, arms)
    return probe, arms, result, fired


def test_branched_arms_equal_their_own_runs(branched):
    probe, arms, _, fired = branched
    assert set(fired) == set(arms)  # both stop well before the 2 ml are in
    for key, scenario in arms.items():
        alone = run_scenario(scenario)
        assert alone.summary["stop_reason"] == "stop_signal"
        assert fired[key].scenario.content_hash() == scenario.content_hash()
        _same(fired[key], alone, key)


def test_arms_stop_exactly_at_their_stop_time_inside_a_step_of_the_never_stop_run(branched):
    """Stop = detection + reaction delay + stop delay, to round-off; the never-stop run has no step
    ending there, so each arm took a step of it cut at its stop (before, an arm stopped at the end of
    the step that crossed its stop time: up to a step late)."""
    _, _, result, fired = branched
    seen = result.summary["detection_time_s"]
    assert seen is not None and seen > 0
    ends = np.asarray(result.artifacts.injection.times_s)
    # once the leak could be seen, steps end on frames: the leak is seen at a step's end
    assert np.min(np.abs(ends - seen)) < 1e-9
    for key, after in (("at_detection", 0.0), ("after_2s", 2.0)):
        stop = seen + REACTION_DELAY_S + after
        inj = fired[key].artifacts.injection
        assert inj.end_time_s == pytest.approx(stop, abs=1e-12), key
        assert fired[key].summary["stop_time_s"] == pytest.approx(stop, abs=1e-12), key
        assert np.min(np.abs(ends - stop)) > 1e-6, key  # inside a step of the never-stop run


def test_the_never_stop_run_is_unchanged_by_its_branches(branched):
    probe, _, result, fired = branched
    _same(result, run_scenario(probe), "never stop")
    # the stops differ, so the runs do: the branches are not the never-stop run
    assert result.summary["injected_volume_ml"] > max(r.summary["injected_volume_ml"] for r in fired.values())


def test_a_branch_may_only_change_the_stop_delay():
    probe = scenario_from_dict(_case(None))
    other = _case(0.0)
    other["cement"]["time_after_mixing_min"] = 4.0
    with pytest.raises(ValueError, match="cement"):
        differs_only_in_stop(probe, scenario_from_dict(other))
    differs_only_in_stop(probe, scenario_from_dict(_case(5.0)))


def test_copied_state_shares_lu_factors_and_nothing_else():
    import scipy.sparse as sp
    from scipy.sparse.linalg import splu

    lu = splu(sp.random(6, 6, density=0.5, random_state=1, format="csc") + sp.identity(6, format="csc"))
    state = {"lu": lu, "x": np.arange(3.0), "nested": [np.ones(2)]}
    copied = copy_run_state(state)
    assert copied["lu"] is lu
    assert copied["x"] is not state["x"] and np.array_equal(copied["x"], state["x"])
    copied["nested"][0][0] = 5.0
    assert state["nested"][0][0] == 1.0
    import copy

    with pytest.raises(TypeError):  # the sharing is scoped to the copy
        copy.deepcopy(lu)


def test_cohort_arms_branched_off_never_stop_runs_equal_arms_run_alone(tmp_path, monkeypatch):
    """A real cohort on the seed-case anatomy at 2 mm (leaks seen at about 1 s): the arms that come
    from branches of the never-stop runs are the arms run from t = 0, number for number."""
    from pathlib import Path

    import sim.run.pipeline as pipeline
    from sim.studies.cohort import cohort_from_dict, plan_cohort, run_cohort
    from sim.studies.executors import SerialExecutor

    root = Path(__file__).resolve().parents[1]
    spec = cohort_from_dict(
        {
            "base": "lai2025_case.yaml",
            "overrides": {
                "grid.spacing_mm": 2.0,
                "injection": {"volume_ml": 1.5, "follow_up_s": 3.0},
                "output": {"vtk": False, "fluoroscopy_png": False, "fields": False},
            },
            "n": 2,
            "seed": 3,
            "distributions": {
                "fluoroscopy.reaction_delay_s": {"dist": "uniform", "low": 0.3, "high": 1.5},
                "injection.stop_after_leak_s": {
                    "dist": "categorical",
                    "values": [1.0, None],
                    "weights": [1, 1],
                },
            },
            "policies": [
                {"name": "practice", "stop_after_leak_s": "sampled"},
                {"name": "stop_at_detection", "stop_after_leak_s": 0},
                {"name": "stop_after_2s", "stop_after_leak_s": 2},
                {"name": "never_stop", "stop_after_leak_s": None},
            ],
            "reference_policy": "stop_at_detection",
            "sensitivity": {"method": "none"},
            "bootstrap": 100,
        }
    )
    plan = plan_cohort(spec, root / "configs", source="branching test")
    alone = run_cohort(
        plan, tmp_path / "alone", executor_factory=SerialExecutor, runner=pipeline.run_scenario
    )

    calls = []
    original = pipeline.run_scenario

    def counting(scenario, *args, **kwargs):
        calls.append(scenario.content_hash())
        return original(scenario, *args, **kwargs)

    monkeypatch.setattr(pipeline, "run_scenario", counting)
    branched = run_cohort(plan, tmp_path / "branched", executor_factory=SerialExecutor)
    needed = [k for k, a in branched.arms.items() if not a.shared and a.policy != "never_stop"]
    assert len(needed) >= 4, "arms that stop before the never-stop run ends are needed to test branching"
    assert calls == []  # every such arm came from a branch of its never-stop run
    assert not (tmp_path / "branched" / ".arm_branches").exists()

    def summaries(run):
        return {
            k: {m: v for m, v in (a.summary or {}).items() if m != "wall_time_s"} for k, a in run.arms.items()
        }

    assert summaries(branched) == summaries(alone)
    for key in needed:  # the written tables too, byte for byte
        run_id = branched.arms[key].hash[:12]
        for table in ("time_series.csv", "emboli.csv", "fragments.csv"):
            a = (tmp_path / "alone" / "runs" / run_id / table).read_bytes()
            b = (tmp_path / "branched" / "runs" / run_id / table).read_bytes()
            assert a == b, f"{key} {table}"
        assert not (tmp_path / "branched" / "runs" / run_id / "fields.npz").exists()
