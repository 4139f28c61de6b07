"""Preflight: every check a run makes before its first time step, without the time steps.

``pce-sim validate`` and ``pce-sim run`` both call :func:`preflight`, so ``validate`` accepts
exactly the scenarios ``run`` can start. The scenario model (:mod:`sim.core.config`) already
refuses what can be decided from the fields alone; what needs the anatomy is decided here by
building the stage objects with the pipeline's own builder (:func:`sim.run.pipeline.build_stages`),
with the same seeded streams, in the same order: the cement model, the vertebral body and the
needle, the venous network and the coupled venous system, the injection solver (its graph and exit
checks; it is not stepped), and the pulmonary tree. The pipeline uses the same builder, so the
wiring cannot drift, and ``pce-sim run`` reuses the built objects. The builds take about 1 s at
1 mm and 3 s at 0.25 mm.

A stage that refuses becomes one line naming the fields the user wrote that feed it, with their
values, e.g. ``cfg.yaml: veins.blood_viscosity_pa_s = 0.01: ...``; the best-known refusals are
rephrased in the user's units with the allowed range.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel

from sim.core.config import Scenario, shown_value
from sim.core.errors import ConfigError, PceSimError

# Fields (dotted, as written in a scenario) that feed each stage, most likely culprit first.
PATIENT_FIELDS = (
    "patient.anatomy",
    "patient.level",
    "patient.size_scale",
    "patient.basivertebral_foramen_width_mm",
    "patient.basivertebral_foramen_height_mm",
    "patient.intraosseous_vein_diameter_mm",
    "patient.nutrient_foramen_diameter_mm",
    "patient.vein_kernel_radius_mm",
    "patient.fracture_cleft",
    "patient.porosity_mean",
    "patient.porosity_sd",
    "patient.porosity_correlation_mm",
    "grid.spacing_mm",
)
NEEDLE_FIELDS = (
    "needle.tip_ap_fraction",
    "needle.tip_lateral_fraction",
    "needle.tip_cc_fraction",
    "needle.approach",
    "needle.bipedicular",
    "needle.side",
    "needle.gauge",
    "patient.level",
    "patient.size_scale",
    "grid.spacing_mm",
)
VEINS_FIELDS = (
    "veins.cardiac_output_l_per_min",
    "veins.azygos_flow_ml_per_min",
    "veins.diameter_scale",
    "veins.diameter_scatter",
    "veins.hemiazygos_present",
    "patient.level",
)
VENOUS_SYSTEM_FIELDS = ("fluoroscopy", "fragmentation", *VEINS_FIELDS)
INJECTION_FIELDS = ("injection", "grid", "cement", "needle")
LUNGS_FIELDS = (
    "veins.blood_viscosity_pa_s",
    "veins.cardiac_output_l_per_min",
    "lungs.mean_pap_mmhg",
    "lungs.left_atrial_pressure_mmhg",
    "lungs.cutoff_diameter_mm",
    "lungs.posture",
)
MAX_NAMED_FIELDS = 3


@dataclass
class PreflightReport:
    """What the preflight built: sizes of the stage objects and the time it took."""

    bone_cells: int = 0
    porous_cells: int = 0
    tip_cells: int = 0
    exits: int = 0
    venous_edges: int = 0
    tree_vessels: int = 0
    follow_up_steps: int = 0
    wall_time_s: float = 0.0
    stages: Any = None  # sim.run.pipeline.Stages: the built objects, for the run that follows


def written_fields(scenario: Scenario) -> dict[str, Any]:
    """Every leaf field the user wrote (dotted path -> value), from pydantic's ``model_fields_set``."""
    out: dict[str, Any] = {}

    def walk(model: BaseModel, prefix: str) -> None:
        for name in model.model_fields_set:
            value = getattr(model, name)
            path = f"{prefix}{name}"
            if isinstance(value, BaseModel):
                walk(value, path + ".")
            else:
                out[path] = value

    walk(scenario, "")
    return out


def _named(scenario: Scenario, candidates: tuple[str, ...]) -> str:
    """``a.b = v, c.d = w`` for the candidate fields (or sections) the user wrote, else the sections."""
    written = written_fields(scenario)
    hits: list[str] = []
    for cand in candidates:
        for path, value in written.items():
            if (path == cand or path.startswith(cand + ".")) and not any(
                h.startswith(path + " = ") for h in hits
            ):
                hits.append(f"{path} = {shown_value(value)}")
    if hits:
        more = len(hits) - MAX_NAMED_FIELDS
        return ", ".join(hits[:MAX_NAMED_FIELDS]) + (f" (and {more} more)" if more > 0 else "")
    sections = list(dict.fromkeys(c.split(".")[0] for c in candidates))
    return " / ".join(sections[:2]) + " (defaults)"


_FIELD_NOTE = re.compile(r"\s*\(([a-z_]+(?:\.[a-z_0-9]+)+)\)")


def _own_field(message: str, scenario: Scenario, candidates: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
    """A refusal that names the one field at fault in parentheses, ``... no such file
    (patient.anatomy.ct_path)``, is reported on that field alone (not on every field of the stage the
    user wrote), the note dropped; so is one that starts with the file of exactly one of the stage's
    fields (``<ct_path>: not a readable NIfTI image``)."""
    written = written_fields(scenario)
    notes = [m for m in _FIELD_NOTE.finditer(message) if m.group(1) in written]
    if len(notes) == 1:
        field, message = notes[0].group(1), message[: notes[0].start()] + message[notes[0].end() :]
    else:
        # a refusal that starts with one field's file (an unreadable or malformed CT or label map) is
        # that field's, not every field of the stage
        files = [
            name
            for name, value in written.items()
            if any(name == c or name.startswith(c + ".") for c in candidates)
            and isinstance(value, str)
            and value
            and message.startswith(f"{value}: ")
        ]
        if notes or len(files) != 1:
            return message, candidates
        field = files[0]
    value = written[field]
    # the line prints the value already, unless it is too long to print whole
    if isinstance(value, str) and message.startswith(f"{value}: ") and not shown_value(value).endswith("..."):
        message = message[len(value) + 2 :]
    return message, (field,)


@contextmanager
def _stage(source: str, scenario: Scenario, candidates: tuple[str, ...]) -> Iterator[None]:
    """Turn a stage's refusal into one ConfigError line naming the user's fields."""
    try:
        yield
    except PceSimError as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        message, candidates = _own_field(message, scenario, candidates)
        line = _rephrase(message, scenario) or f"{_named(scenario, candidates)}: {message}"
        raise ConfigError(f"{source}: {line}") from None
    except (ArithmeticError, ValueError, IndexError) as exc:  # a stage that breaks on extreme values
        text = str(exc).splitlines()[0] if str(exc) else ""
        raise ConfigError(
            f"{source}: {_named(scenario, candidates)}: the simulation cannot be set up with these values "
            f"({type(exc).__name__}: {text})"
        ) from None


def _number(pattern: str, text: str) -> float | None:
    match = re.search(pattern, text)
    try:
        return float(match.group(1)) if match else None
    except ValueError:
        return None


def _rephrase(message: str, scenario: Scenario) -> str | None:
    """The best-known stage refusals, in the user's fields and units with what is allowed."""
    v, lungs = scenario.veins, scenario.lungs
    num = r"([-+0-9.eE]+)"
    if message.startswith("veins.azygos_flow") and "cannot be reached" in message:
        floor = _number(rf"put {num} m3/s", message)
        allowed = f" (allowed here: above {floor * 6.0e7:.0f} ml/min)" if floor is not None else ""
        return (
            f"veins.azygos_flow_ml_per_min = {shown_value(v.azygos_flow_ml_per_min)}: cannot be reached: "
            f"lumbar, plexus and IVC drainage alone send more through the azygos arch{allowed}"
        )
    if message.startswith("veins: cardiac output") and "smaller than" in message:
        return (
            f"veins.cardiac_output_l_per_min = {shown_value(v.cardiac_output_l_per_min)}: smaller than the "
            f"upper-body and segmental inflows it must carry with veins.azygos_flow_ml_per_min = "
            f"{shown_value(v.azygos_flow_ml_per_min)}; raise the cardiac output or lower the azygos flow"
        )
    if message.startswith("pulmonary tree: conduit resistance"):
        conduit = _number(rf"conduit resistance {num}", message)
        target = _number(rf"target PVR {num}", message)
        culprit = next(
            (c for c in LUNGS_FIELDS if c in written_fields(scenario)), "veins.blood_viscosity_pa_s"
        )
        value = shown_value(written_fields(scenario).get(culprit, v.blood_viscosity_pa_s))
        allowed = ""
        if conduit and target and conduit > 0.0:
            mu_max = 0.9 * target / conduit * v.blood_viscosity_pa_s
            # target = (mPAP - LAP) / CO: the conduits need conduit / 0.9 of it
            drop = lungs.mean_pap_mmhg - lungs.left_atrial_pressure_mmhg
            pap_min = lungs.left_atrial_pressure_mmhg + drop * conduit / (0.9 * target)
            allowed = (
                f" (allowed with these settings: veins.blood_viscosity_pa_s below {mu_max:.3g}, or "
                f"lungs.mean_pap_mmhg above {pap_min:.4g})"
            )
        return (
            f"{culprit} = {value}: the pulmonary arteries down to {lungs.cutoff_diameter_mm:g} mm alone "
            "would resist more than the pulmonary pressure drop over the cardiac output allows, leaving "
            f"nothing for the capillary beds{allowed}"
        )
    return None


STAGE_FIELDS = {
    "cement": ("cement",),
    "bone": PATIENT_FIELDS,
    "needle": NEEDLE_FIELDS,
    "veins": VEINS_FIELDS,
    "venous_system": VENOUS_SYSTEM_FIELDS,
    "injection": INJECTION_FIELDS,
    "lungs": LUNGS_FIELDS,
}


def preflight(scenario: Scenario, source: str = "config") -> PreflightReport:
    """Build every stage object a run builds before its time loop (:func:`sim.run.pipeline.build_stages`).

    Raises ConfigError (one line naming the user's fields) when a stage refuses; returns the sizes
    and the built stages (``report.stages``), which ``pce-sim run`` hands to the simulation.
    """
    from sim.run.pipeline import build_stages

    t0 = time.perf_counter()
    stages = build_stages(scenario, guard=lambda stage: _stage(source, scenario, STAGE_FIELDS[stage]))
    p = stages.params
    report = PreflightReport(
        bone_cells=int(stages.bone.n_cells),
        porous_cells=int(np.count_nonzero(stages.bone.porous)),
        tip_cells=int(np.size(stages.needle.tip_cells)),
        exits=len(stages.venous.exits),
        venous_edges=int(stages.venous.network.n_edges),
        tree_vessels=int(stages.tree.n_vessels),
        follow_up_steps=math.ceil(p.injection.follow_up_s / p.fluoroscopy.frame_interval_s),
        stages=stages,
    )
    report.wall_time_s = time.perf_counter() - t0
    return report
