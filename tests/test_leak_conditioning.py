"""The leak-conditioning diagnostic (benchmarks/leak_conditioning.py) on analytic leak series."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks.leak_conditioning import overflow_time_and_rate


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


def test_leak_from_the_start_is_not_amplified() -> None:
    t = np.linspace(0.0, 10.0, 101)
    v = 1e-9 * t
    t_o, rate, amp = overflow_time_and_rate(t, v, 0.0)
    assert t_o == 0.0 and rate == pytest.approx(1e-9) and amp == 0.0


def test_no_overflow_gives_nan_and_bad_series_is_refused() -> None:
    t = np.linspace(0.0, 10.0, 11)
    assert all(math.isnan(x) for x in overflow_time_and_rate(t, np.zeros(11), 2e-9))
    with pytest.raises(ValueError, match="equal-length"):
        overflow_time_and_rate(t, np.zeros(5), 2e-9)
