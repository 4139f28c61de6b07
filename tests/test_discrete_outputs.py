"""The ensemble diagnostic of the discrete outputs (benchmarks/discrete_outputs.py): its members differ only
in the draw they name, and its statistics are the members' mean, spread and difference to the finest grid."""

from __future__ import annotations

import math

import numpy as np
import pytest

import sim.run.pipeline as pipeline
from benchmarks.discrete_outputs import fragmentation_stream, phase_member, summarise


def _first_draws(rngs: dict[str, np.random.Generator]) -> dict[str, float]:
    return {name: float(g.random()) for name, g in rngs.items()}


def test_fragmentation_stream_changes_only_that_stream_and_member_0_is_the_run_itself():
    own = _first_draws(pipeline.stage_rngs(20250901))
    with fragmentation_stream(0):
        assert _first_draws(pipeline.stage_rngs(20250901)) == own
    draws = []
    for member in (1, 2):
        with fragmentation_stream(member):
            d = _first_draws(pipeline.stage_rngs(20250901))
        assert {k: v for k, v in d.items() if k != "fragmentation"} == {
            k: v for k, v in own.items() if k != "fragmentation"
        }
        draws.append(d["fragmentation"])
    assert len({own["fragmentation"], *draws}) == 3  # three different fragmentation streams
    assert _first_draws(pipeline.stage_rngs(20250901)) == own  # restored on exit


def test_fragmentation_stream_is_restored_after_an_error():
    original = pipeline.stage_rngs
    with pytest.raises(RuntimeError), fragmentation_stream(3):
        raise RuntimeError("run failed")
    assert pipeline.stage_rngs is original


def test_phase_members_cover_a_breath_from_the_case_phase_and_leave_the_case_alone():
    cfg = {"veins": {"dynamics": {"respiration_phase": 0.75, "thoracic_swing_mmhg": -2.2}}}
    phases = [phase_member(cfg, k, 4)["veins"]["dynamics"]["respiration_phase"] for k in range(4)]
    assert phases == pytest.approx([0.75, 0.0, 0.25, 0.5])
    assert cfg["veins"]["dynamics"]["respiration_phase"] == 0.75
    assert phase_member({}, 1, 4)["veins"]["dynamics"]["respiration_phase"] == pytest.approx(0.25)


def _row(h: float, ml: float, n: int, seen: float | None) -> dict:
    """One member's summary fields as the script records them."""
    return {
        "spacing_mm": h,
        "embolised_volume_ml": ml,
        "n_emboli": n,
        "detection_time_s": seen,
        "leaked_volume_ml": 0.01,
    }


def test_summarise_gives_member_statistics_and_the_difference_to_the_finest_grid():
    rows = [
        _row(1.0, 3e-3, 4, 22.5),
        _row(1.0, 4e-3, 5, None),
        _row(0.5, 2e-3, 3, 22.0),
        _row(0.5, 2e-3, 3, 22.5),
    ]
    out = summarise(rows)
    assert out["finest_mm"] == 0.5
    coarse, fine = out["grids"]["1"], out["grids"]["0.5"]
    assert coarse["embolised_microlitres_mean"] == pytest.approx(3.5)
    assert coarse["embolised_microlitres_sd"] == pytest.approx(math.sqrt(0.5))
    assert coarse["embolised_microlitres_se"] == pytest.approx(0.5)
    assert coarse["emboli_counts"] == {"4": 1, "5": 1} and coarse["seen_share"] == 0.5
    assert fine["detection_time_s"] == [22.0, 22.5] and fine["embolised_microlitres_se"] == 0.0
    assert coarse["embolised_vs_finest_pct"] == pytest.approx(75.0)
    assert coarse["embolised_vs_finest_se_pct"] == pytest.approx(25.0)
    assert "embolised_vs_finest_pct" not in fine


def test_paired_error_uses_the_same_members_on_both_grids():
    """Members with the same draws on both grids: the paired difference's spread, not the grids' spreads."""
    rows = []
    for k, (coarse, fine) in enumerate([(3e-3, 2e-3), (5e-3, 4e-3), (4e-3, 3e-3)]):
        rows.append({**_row(1.0, coarse, 4, 22.5 + k), "member": k})
        rows.append({**_row(0.5, fine, 3, 22.0 + k), "member": k})
    coarse = summarise(rows)["grids"]["1"]
    assert coarse["embolised_vs_finest_pct"] == pytest.approx(100.0 / 3.0)
    assert coarse["embolised_vs_finest_paired_se_pct"] == pytest.approx(0.0, abs=1e-9)  # every member +1
    assert coarse["embolised_vs_finest_se_pct"] > 10.0
    assert coarse["detection_vs_finest_s"] == pytest.approx(0.5)
    assert coarse["detection_vs_finest_paired_s"] == pytest.approx(0.5)
    assert coarse["detection_vs_finest_paired_se_s"] == pytest.approx(0.0, abs=1e-12)
    assert coarse["detection_seen_on_both"] == 3
    assert coarse["detection_mean_s"] == pytest.approx(23.5)


def test_summarise_without_member_keys_has_no_paired_error():
    rows = [_row(1.0, 3e-3, 4, None), _row(1.0, 4e-3, 5, None)]
    rows += [_row(0.5, 2e-3, 3, None), _row(0.5, 3e-3, 3, None)]
    coarse = summarise(rows)["grids"]["1"]
    assert "embolised_vs_finest_paired_se_pct" not in coarse
    assert "detection_vs_finest_s" not in coarse and math.isnan(coarse["detection_mean_s"])
