"""Where leaked cement is torn off must not depend on the injection time step.

The venous side checks the column tips at least once per shed piece length of travel
(``VenousSystem.accept_flux``). Checked once per injection step instead, a long step carried the seed
case's column out of the plexus into the segmental vein before it was torn off (0.27 ml at CFL 0.8 vs
0.03 ml at CFL 0.2 on this 2 mm case); the split must now agree between the two steps.
"""

from __future__ import annotations

import pytest

from sim.core.config import load_scenario, scenario_from_dict
from sim.run.pipeline import run_scenario

pytestmark = pytest.mark.slow


def _seed_case(cfl: float) -> dict:
    d = load_scenario("configs/lai2025_case.yaml").model_dump(mode="json")
    d["grid"].update(cfl=cfl, spacing_mm=2.0)
    d["injection"].update(volume_ml=2.0, follow_up_s=5.0)
    d["output"] = {"vtk": False, "fluoroscopy_png": False, "fields": False}
    return run_scenario(scenario_from_dict(d)).summary


def test_leak_route_does_not_depend_on_the_time_step():
    long_steps, short_steps = _seed_case(0.8), _seed_case(0.2)
    leaked = short_steps["leaked_volume_ml"]
    assert long_steps["leaked_volume_ml"] == pytest.approx(leaked, rel=0.05)
    # the split between the routes: the share of the leak in each agrees within 2 points (the total's
    # own first-order time error, 2.6 % at CFL 0.8 on this 2 mm grid with the tip's ball kernel, 0.3 %
    # at 1 mm, is the 5 % above)
    for route in ("leaked_in_segmental_ml", "leaked_in_plexus_ml"):
        share_long = long_steps[route] / long_steps["leaked_volume_ml"]
        assert share_long == pytest.approx(short_steps[route] / leaked, abs=0.02), route
