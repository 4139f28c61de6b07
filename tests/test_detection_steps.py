"""The step-sequence diagnostic (benchmarks/detection_steps.py): its patch lets the injection's steps end
where the solver puts them and only inside, its scenarios differ only in the breathing swings."""

from __future__ import annotations

import numpy as np

from benchmarks.detection_steps import column_split, steps_not_on_frames, without_breathing
from sim.run.venous_system import VenousSystem
from tests.test_columns import make_system


def test_steps_not_on_frames_returns_the_step_end_and_only_inside():
    vs = make_system("L1", visibility_threshold_m3=0.0)  # the leak can be seen from the first cement
    vs.detector.next_frame_s = 0.5
    assert vs.step_end(0.0, 1.2, 1e-9) == 0.5  # shortened to the frame
    with steps_not_on_frames():
        assert vs.step_end(0.0, 1.2, 1e-9) == 1.2
    assert vs.step_end(0.0, 1.2, 1e-9) == 0.5
    assert VenousSystem.step_end.__name__ == "step_end"


def test_without_breathing_changes_only_the_swings():
    cfg = {"veins": {"dynamics": {"thoracic_swing_mmhg": -2.2, "max_step_s": 0.1}}, "grid": {"cfl": 0.8}}
    out = without_breathing(cfg)
    swings = {"thoracic_swing_mmhg": 0.0, "abdominal_swing_mmhg": 0.0}
    assert out["veins"]["dynamics"] == {**swings, "max_step_s": 0.1}
    assert out["grid"] == cfg["grid"] and cfg["veins"]["dynamics"]["thoracic_swing_mmhg"] == -2.2


def test_column_split_lists_the_edges_holding_cement():
    assert column_split(np.array([0.0, 2e-9, 0.0, 5e-10])) == {"1": 2.0, "3": 0.5}
