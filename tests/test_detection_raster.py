"""The raster-offset diagnostic (benchmarks/detection_raster.py): its offset moves the detector, its spread
summary counts what it should."""

from __future__ import annotations

import numpy as np

from benchmarks.detection_raster import raster_offset, spread
from sim.physics.fluoroscopy import LeakDetector
from tests.helpers import run_params

MM = 1e-3


def test_raster_offset_moves_every_detector_and_only_inside():
    params = run_params().fluoroscopy
    centre = np.array([1.0, 2.0, 3.0]) * MM
    plain = LeakDetector(params, centre)
    offset = np.array([0.1, 0.2, 0.3]) * MM
    with raster_offset(offset):
        moved = LeakDetector(params, centre)
    after = LeakDetector(params, centre)
    for view, det in plain.detectors.items():
        a, b = det.axes
        np.testing.assert_allclose(moved.detectors[view].origin_m - det.origin_m, offset[[a, b]], atol=1e-15)
        np.testing.assert_array_equal(after.detectors[view].origin_m, det.origin_m)


def test_spread_of_detection_times():
    assert spread([160.0, 158.5, None, 161.0]) == {
        "earliest_s": 158.5, "latest_s": 161.0, "range_s": 2.5, "never_seen": 1,
    }  # fmt: skip
    assert spread([None, float("nan")]) == {
        "earliest_s": None, "latest_s": None, "range_s": None, "never_seen": 2,
    }  # fmt: skip
