"""The leak-conditioning diagnostic (benchmarks/leak_conditioning.py) on analytic leak series."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks.leak_conditioning import THRESHOLD_UL, overflow_time_and_rate, per_exit_kind


def test_constant_rate_tail_has_fill_time_over_duration() -> None:
    # leak at Q from t_o = 20 s to the stop at 23 s: A = t_o / (t_s - t_o) = 20 / 3, t_o recovered
    t = np.linspace(0.0, 23.0, 461)
    q, t_on = 7.5e-9, 20.0
    v = q * np.clip(t - t_on, 0.0, None)
    t_o, rate, amp = overflow_time_and_rate(t, v, 2e-9)
    assert t_o == pytest.approx(t_on + 2e-9 / q, rel=1e-12)
    assert rate == pytest.approx(q, rel=1e-9)
    assert amp == pytest.approx(q * t_o / v[-1], rel=1e-12)
    assert amp == pytest.approx(t_o / (23.0 - t_on), rel=2e-2)  # the threshold's 0.27 s shift aside


def test_leak_from_the_start_is_barely_amplified() -> None:
    # a leak at q from t = 0: it passes the threshold at thr / q, and A = q t_o / V = thr / V is small
    t = np.linspace(0.0, 10.0, 101)
    v = 1e-9 * t
    t_o, rate, amp = overflow_time_and_rate(t, v, 2e-10)
    assert t_o == pytest.approx(0.2, rel=1e-12) and rate == pytest.approx(1e-9, rel=1e-9)
    assert amp == pytest.approx(2e-10 / 1e-8, rel=1e-9)


def test_no_crossing_to_time_gives_nan_and_bad_series_are_refused() -> None:
    t = np.linspace(0.0, 10.0, 11)
    assert all(math.isnan(x) for x in overflow_time_and_rate(t, np.zeros(11), 2e-9))  # never
    assert all(math.isnan(x) for x in overflow_time_and_rate(t, np.full(11, 5e-9), 2e-9))  # from the start
    last = np.where(t < 10.0, 0.0, 5e-9)
    assert all(math.isnan(x) for x in overflow_time_and_rate(t, last, 2e-9))  # at the last sample only
    with pytest.raises(ValueError, match="equal-length"):
        overflow_time_and_rate(t, np.zeros(5), 2e-9)
    with pytest.raises(ValueError, match="cannot fall"):
        overflow_time_and_rate(t, np.array([0, 1, 2, 3, 2, 3, 4, 5, 6, 7, 8]) * 1e-9, 2e-9)


def test_per_exit_kind_separates_a_trickle_from_an_overflow() -> None:
    """Two exits with different histories: each kind gets its own t_o, Q and A, the summed series the
    trickle's t_o (as cohort patient 0's study row did); a kind below the threshold is left out."""
    t = np.linspace(0.0, 54.0, 541)  # the venous series runs on through a 30 s follow-up after the stop
    ul = 1e-9
    stop = 24.05  # between two records (24.0, 24.1): the value at the stop is interpolated
    ramp_end = 24.1  # the venous records go on rising to the record after the stop, then stay
    trickle = 0.25 * ul * np.minimum(t, ramp_end)  # from the start: 2 microlitres at 8 s
    overflow = np.where(t > 20.0, 7.0 * ul * (np.minimum(t, ramp_end) - 20.0), 0.0)  # 28.35 by the stop
    series = {
        "t_s": t,
        "leaked_basivertebral_m3": overflow,
        "leaked_anterior_m3": trickle,
        "leaked_lateral_m3": np.full_like(t, 0.5 * THRESHOLD_UL * ul),
    }
    rows = per_exit_kind(series, stop)
    assert set(rows) == {"basivertebral", "anterior", "lateral"}
    b, a, lat = rows["basivertebral"], rows["anterior"], rows["lateral"]
    assert b["overflow_time_s"] == pytest.approx(20.0 + THRESHOLD_UL / 7.0, rel=1e-9)
    assert b["leak_rate_ul_per_s"] == pytest.approx(7.0, rel=1e-9)
    assert a["overflow_time_s"] == pytest.approx(8.0, rel=1e-9)
    assert b["leaked_ul"] == pytest.approx(7.0 * 4.05, rel=1e-9)  # interpolated at the stop
    assert a["leaked_ul"] == pytest.approx(0.25 * 24.05, rel=1e-9)
    # a kind below the threshold keeps its volume (the kinds add up to the leak) and has no t_o
    assert lat["leaked_ul"] == pytest.approx(0.5 * THRESHOLD_UL, rel=1e-9)
    assert math.isnan(lat["overflow_time_s"]) and math.isnan(lat["amplification"])
    assert per_exit_kind(series, 40.0)["basivertebral"]["leak_rate_ul_per_s"] < 3.0  # not cut: diluted
    cut = t <= 24.0
    summed = (trickle + overflow)[cut] + 0.5 * THRESHOLD_UL * ul
    t_sum, _, _ = overflow_time_and_rate(t[cut], summed, THRESHOLD_UL * ul)
    assert t_sum < 8.0  # the summed leak's t_o says nothing of the overflow at 20 s


def test_per_exit_kind_edge_cases() -> None:
    """A stop before the first record or a one-record series gives volumes and no times."""
    series = {
        "t_s": np.array([0.0]),
        **{f"leaked_{k}_m3": np.array([5e-9]) for k in ("basivertebral", "anterior", "lateral")},
    }
    one = per_exit_kind(series, 3.0)
    assert all(
        math.isnan(r["overflow_time_s"]) and r["leaked_ul"] == pytest.approx(5.0) for r in one.values()
    )
    t = np.array([1.0, 2.0, 3.0])
    ramp = {
        "t_s": t,
        **{f"leaked_{k}_m3": np.array([0.0, 3e-9, 6e-9]) for k in ("basivertebral", "anterior", "lateral")},
    }
    early = per_exit_kind(ramp, 0.5)
    assert all(math.isnan(r["overflow_time_s"]) for r in early.values())
    assert per_exit_kind(ramp, 2.5)["anterior"]["leaked_ul"] == pytest.approx(4.5)


def test_results_are_strict_json() -> None:
    """Untimed kinds are written as null (the script writes through plain_json_value), so strict JSON
    parsers read the results file."""
    import json

    from sim.studies.ledger import plain_json_value

    doc = {
        "rows": [
            {"t_o": float("nan"), "by": {"lateral": {"a": float("nan"), "v": 1.5}}, "l": [float("nan"), 2.0]}
        ]
    }
    text = json.dumps(plain_json_value(doc), allow_nan=False)
    assert json.loads(text) == {
        "rows": [{"t_o": None, "by": {"lateral": {"a": None, "v": 1.5}}, "l": [None, 2.0]}]
    }
