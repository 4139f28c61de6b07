"""The published experiments, run for real (configs/validation, 0.75 mm): every verdict must PASS.

Each experiment runs once per session (33 model runs, about 1.5-3 min on 2 cores) and every check
is its own test. Checks the current physics fails are marked ``xfail(strict=True)`` with what fails
and by how much (issue 16): when the physics is fixed they XPASS, the strict marker turns that into
a failure, and the marker has to be removed.
"""

from __future__ import annotations

import pytest

from sim.validation.report_card import ExperimentPlan, plan_suite
from sim.validation.verdicts import CheckOutcome, evaluate

pytestmark = pytest.mark.slow

_OUTCOMES: dict[str, dict[str, CheckOutcome]] = {}


def _outcomes(experiment: str) -> dict[str, CheckOutcome]:
    if experiment not in _OUTCOMES:
        from sim.validation.experiments import run_experiment

        (plan,) = plan_suite([experiment])
        assert isinstance(plan, ExperimentPlan)
        output = run_experiment(plan.spec, str(plan.spec_path))
        _OUTCOMES[experiment] = {o.name: o for o in evaluate(plan.refs, output)}
    return _OUTCOMES[experiment]


def _xfail(reason: str) -> pytest.MarkDecorator:
    return pytest.mark.xfail(strict=True, reason=f"issue 16: {reason}")


CHECKS = [
    pytest.param("baroud2005", "cannula_share", id="baroud2005-cannula_share"),
    pytest.param("baroud2005", "stepped_cannula_reduction", id="baroud2005-stepped_cannula_reduction"),
    pytest.param(
        "baroud2006", "cement_stepped_cannula_reduction", id="baroud2006-cement_stepped_cannula_reduction"
    ),
    pytest.param("habib2010", "pressure_high_over_low_at_3.5", id="habib2010-pressure_high_over_low_at_3.5"),
    pytest.param("habib2010", "low_9.5_over_low_3.5", id="habib2010-low_9.5_over_low_3.5"),
    pytest.param("habib2010", "high_over_low_at_3.5", id="habib2010-high_over_low_at_3.5"),
    pytest.param("habib2010", "high_6.5_over_high_3.5", id="habib2010-high_6.5_over_high_3.5"),
    pytest.param("krebs2005", "peak_overlaps_1.8mm", id="krebs2005-peak_overlaps_1.8mm"),
    pytest.param("krebs2005", "peak_overlaps_3mm", id="krebs2005-peak_overlaps_3mm"),
    pytest.param("krebs2005", "late_higher_than_early", id="krebs2005-late_higher_than_early"),
    pytest.param("li2015", "no_void_pressure_in_range", id="li2015-no_void_pressure_in_range"),
    pytest.param("reidy2003", "intact_pressure_in_range", id="reidy2003-intact_pressure_in_range"),
]  # fmt: skip


@pytest.mark.parametrize(("experiment", "check"), CHECKS)
def test_published_experiment_verdict_passes(experiment: str, check: str) -> None:
    outcome = _outcomes(experiment)[check]
    assert outcome.passed, (
        f"{experiment} {outcome.title}: pce-sim {outcome.model_text}, published {outcome.reference_text}, "
        f"accepted {outcome.acceptance_text}: {outcome.miss_text}"
    )


def test_every_check_is_covered() -> None:
    """A check added to a reference file needs its test here (with or without an xfail marker)."""
    listed = {(p.values[0], p.values[1]) for p in CHECKS}
    shipped = {(p.spec.experiment, c.name) for p in plan_suite(None) for c in p.refs.checks}
    assert listed == shipped
