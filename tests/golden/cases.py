"""The golden cases: which scenarios are stored and how each is run (shared by refresh and test)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# name -> (source, detail): a scenario file, or a patient of the default cohort (clinical practice)
CASES: dict[str, tuple[str, object]] = {
    "lai2025_case": ("scenario", "configs/lai2025_case.yaml"),
    "lai2025_stop_at_detection": ("scenario", "configs/lai2025_stop_at_detection.yaml"),
    "default": ("scenario", "configs/default.yaml"),
    "cohort_patient_0": ("cohort", 0),
    "cohort_patient_1": ("cohort", 1),
    "cohort_patient_2": ("cohort", 2),
}
COHORT_FILE = "configs/cohort_default.yaml"
COHORT_POLICY = "clinical_practice"


def golden_scenario(name: str):
    """The scenario of a golden case, built from today's config files (as the refresh stores it)."""
    from sim.core.config import load_scenario

    kind, detail = CASES[name]
    if kind == "scenario":
        return load_scenario(ROOT / str(detail))
    from sim.studies.cohort import load_cohort, plan_cohort

    spec, base_dir = load_cohort(ROOT / COHORT_FILE)
    plan = plan_cohort(spec, base_dir, n=int(detail) + 1, source=COHORT_FILE)
    return plan.arms[(int(detail), 1, COHORT_POLICY)]  # level 1 of the patient


def golden_run(scenario):
    """Run a scenario the way the golden results were made (no files written)."""
    from sim.run.pipeline import run_scenario

    scenario = scenario.model_copy(deep=True)
    scenario.output.vtk = False
    scenario.output.fluoroscopy_png = False
    return run_scenario(scenario)
