"""Shared test helpers: typed stage parameters from a (partial) scenario."""

from __future__ import annotations

from typing import Any

from sim.core.config import scenario_from_dict
from sim.core.parameters import RunParameters


def run_params(**sections: Any) -> RunParameters:
    """Every stage's SI parameters of a scenario given as sections (``patient={"level": "L3"}``)."""
    return RunParameters.from_scenario(scenario_from_dict(sections))


# The Lai et al. 2025 seed case (configs/lai2025_case.yaml: L1 of a 69-year-old, low-viscosity cement
# 3 min after mixing, 6 ml at 0.1 ml/s, injection not stopped at the leak) with the cannula's tip at the
# left anterior nutrient vein, near its foramen, a 1.2 mm nutrient foramen and paravertebral veins 1.3
# times the template calibre, on the 1 mm grid: an anterior leak seen on fluoroscopy and emboli in
# both lungs, independent of how the shipped config places its needle. Its porosity field is the seed
# case's until session 34 (sd 0.02, correlation 3 mm), pinned so the tests built on it keep their case.
LEAK_CASE = {
    "name": "lai2025_leak_at_the_nutrient_vein",
    "patient": {
        "level": "L1", "porosity_mean": 0.92, "porosity_sd": 0.02, "permeability_ref_m2": 4.0e-8,
        "permeability_anisotropy": 2.0, "nutrient_foramen_diameter_mm": 1.2, "seed": 69,
        "porosity_correlation_mm": 3.0,
    },
    "cement": {"preset": "low", "time_after_mixing_min": 3.0},
    "needle": {
        "approach": "transpedicular", "bipedicular": False, "side": "left", "gauge": 11,
        "tip_ap_fraction": 0.05, "tip_lateral_fraction": 0.46, "tip_cc_fraction": 0.5,
    },
    "injection": {
        "mode": "rate", "rate_ml_per_s": 0.1, "volume_ml": 6.0, "stop_after_leak_s": None, "follow_up_s": 120,
    },
    "veins": {"diameter_scale": 1.3},
    "grid": {"spacing_mm": 1.0},
    "output": {"vtk": True, "vtk_interval_s": 5.0},
}  # fmt: skip


def transit_model(seed: int = 0, params: RunParameters | None = None):
    """How fragments move in the fluoroscopy image (default lungs section, a seeded stream)."""
    import numpy as np

    from sim.physics.fragment_tracks import TransitModel
    from sim.physics.fragment_transport import DiameterMargin

    lungs = (params or run_params()).lungs
    rng = np.random.default_rng([seed, 1])  # not the stream a test seeds with ``seed`` itself
    return TransitModel(lungs.slip_factor, DiameterMargin.from_params(lungs), rng)
