"""Shared test helpers: typed stage parameters from a (partial) scenario."""

from __future__ import annotations

from typing import Any

from sim.core.config import scenario_from_dict
from sim.core.parameters import RunParameters


def run_params(**sections: Any) -> RunParameters:
    """Every stage's SI parameters of a scenario given as sections (``patient={"level": "L3"}``)."""
    return RunParameters.from_scenario(scenario_from_dict(sections))
