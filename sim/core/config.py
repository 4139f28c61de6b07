"""Validated scenario configuration (pydantic v2), loaded from YAML.

A :class:`Scenario` describes one simulated vertebroplasty: patient and bone, cement,
needle, injection protocol, numerical grid, venous anatomy, fluoroscopic leak detection,
fragmentation, pulmonary tree and outputs. Fields carry clinical units in their names
(``volume_ml``, ``spacing_mm``); :func:`sim.core.units.to_si` converts them in one place.

Unknown keys are rejected (typos are errors, not silently ignored). Every numeric field
declares its allowed range (booleans are not numbers here: ``volume_ml: true`` is an error), and
:func:`format_validation_error` turns a pydantic error into one line naming the field path, the
bad value and what is allowed. Checks that involve several fields (cement overrides against the
preset they modify, pulmonary pressures, the tree cutoff against the segmental arteries) run in
:meth:`Scenario._consistent` and name the field the user wrote. YAML files are read by
:mod:`sim.core.safe_yaml` (regular files only, size, depth, alias, tag and duplicate-key bounds).
Checks that need the anatomy (needle tip, venous flows, pulmonary tree) are in
:mod:`sim.run.preflight`.

Defaults describe a typical lumbar PVP: L1 osteoporotic body (porosity 0.90, reference
permeability 4e-8 m^2 from Baroud et al. 2004), medium-viscosity PMMA injected from 6 min
after mixing through a unipedicular 11G transpedicular cannula at 0.05 ml/s up to 4 ml,
stopping as soon as a venous leak is seen (stop_after_leak_s = 0).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from sim.core.errors import ConfigError
from sim.core.geometry_data import load_geometry_yaml
from sim.core.safe_yaml import Literals, key_text, literal_text, path_label, read_yaml_file, shown_text

LEVELS: tuple[str, ...] = (
    "T5", "T6", "T7", "T8", "T9", "T10", "T11", "T12", "L1", "L2", "L3", "L4", "L5",
)  # fmt: skip
Level = Literal["T5", "T6", "T7", "T8", "T9", "T10", "T11", "T12", "L1", "L2", "L3", "L4", "L5"]


def _is_number(annotation: Any) -> bool:
    """True when a field annotation takes a float or int (not a bool, not a Literal)."""
    if annotation in (float, int):
        return True
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return False
    if origin is Annotated:
        return _is_number(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return any(_is_number(a) for a in typing.get_args(annotation))
    return False


def _union_members(annotation: Any) -> list[Any]:
    """The alternatives of an annotation, Annotated and Optional layers removed."""
    while typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [m for a in typing.get_args(annotation) for m in _union_members(a)]
    return [annotation]


def _accepts_text(annotation: Any, text: str) -> bool:
    """True when the annotation takes this very string: a ``str`` alternative, or a Literal holding it
    (``'5'`` is not ``'sampled'``, so a stop policy's quoted number is refused, not read as 5.0)."""
    for member in _union_members(annotation):
        if member is str:
            return True
        if typing.get_origin(member) is Literal and text in typing.get_args(member):
            return True
    return False


def _text_for_number(text: str) -> str | None:
    """What to tell a user whose number arrived as text (None: text that is not a number at all).

    YAML 1.1 reads `09` (a leading zero, not octal) and `inf` / `nan` as text, quoted or not, so only a
    text that reads as a plain number was quoted by the user."""
    if _LEADING_ZERO.fullmatch(text):
        return ": write it without the leading zero"
    if text.strip().lstrip("+-").lower() in ("inf", "infinity", "nan"):
        return ": YAML writes infinity .inf and not-a-number .nan"
    if _reads_as_number(text):
        return ", not a quoted string (write it without quotes)"
    return None


def _reads_as_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _holds_numbers(annotation: Any) -> bool:
    """True when an alternative of the annotation is a list, tuple or mapping of numbers."""
    for member in _union_members(annotation):
        origin = typing.get_origin(member)
        args = [a for a in typing.get_args(member) if a is not Ellipsis]
        if origin in (list, tuple) and args and all(_is_number(a) for a in args):
            return True
        if origin is dict and len(args) == 2 and _is_number(args[1]):
            return True
    return False


def _is_flag(annotation: Any) -> bool:
    """True when the annotation is ``bool`` (or ``bool | None``)."""
    members = _union_members(annotation)
    return bool in members and all(m in (bool, type(None)) for m in members)


StopAfterLeakS = Annotated[float, Field(ge=0.0, le=3600.0)]  # seconds from detection to the stop (or null)
_LEADING_ZERO = re.compile(r"[-+]?0[0-9_]*[89][0-9_]*")  # not octal, so YAML 1.1 text: `09`, `-0089`


class NoBoolForNumber(BaseModel):
    """Values keep their YAML type: a boolean is never taken for a number (pydantic's lax mode would
    read ``true`` as 1), a quoted string never for a number (``'1.0'``) nor anything but true/false for
    a flag (``'yes'``, ``0``)."""

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_number(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name) if info.field_name is not None else None
        if field is None:
            return value
        if _is_number(field.annotation):
            if isinstance(value, bool):
                raise PydanticCustomError("bool_for_number", "Input should be a number, not a boolean")
            if isinstance(value, str) and not _accepts_text(field.annotation, value):
                advice = _text_for_number(value)
                if advice is not None:
                    raise PydanticCustomError("text_for_number", f"Input should be a number{advice}")
        elif _is_flag(field.annotation) and value is not None and not isinstance(value, bool):
            raise PydanticCustomError("flag", "Input should be true or false")
        elif _holds_numbers(field.annotation):
            items = (
                value.values()
                if isinstance(value, dict)
                else value
                if isinstance(value, list | tuple)
                else ()
            )
            if any(isinstance(v, bool) for v in items):
                raise PydanticCustomError("bool_for_number", "Input should hold numbers, not booleans")
            advice = next((a for v in items if isinstance(v, str) and (a := _text_for_number(v))), None)
            if advice is not None:
                raise PydanticCustomError("text_for_number", f"Input should hold numbers{advice}")
        return value


class StrictModel(NoBoolForNumber):
    """Base model of the scenario: unknown keys are errors, values are validated on assignment too,
    and a boolean is never a number."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class FractureCleftConfig(StrictModel):
    """Optional fluid-filled fracture cleft (intravertebral vacuum cleft), a high-permeability slab."""

    enabled: bool = False
    center_ap_fraction: Annotated[float, Field(ge=0.0, le=1.0)] = 0.45
    center_cc_fraction: Annotated[float, Field(ge=0.0, le=1.0)] = 0.7
    thickness_mm: Annotated[float, Field(gt=0.0, le=10.0)] = 2.0
    extent_fraction: Annotated[float, Field(gt=0.0, le=1.0)] = 0.6
    permeability_factor: Annotated[float, Field(ge=1.0, le=1.0e4)] = 50.0


class CtAnatomyConfig(StrictModel):
    """Patient-specific anatomy from a CT volume and its label map (NIfTI, read by nibabel).

    ``ct_path`` and ``labels_path`` are NIfTI files (``.nii`` or ``.nii.gz``) on the same voxel grid
    (same shape and affine), paths relative to the working directory; ``vertebra_label`` is the
    label value of the treated vertebra (the whole bone: body and posterior elements). The CT is
    in Hounsfield units; BMD = bmd_slope * HU + bmd_intercept is the scanner's calibration (from a
    phantom when the scan has one; the defaults are a phantomless approximation, [U], see
    ``sim.anatomy.ct_bone``). ``ivc_label`` (optional) sets the IVC calibre from its label;
    ``lung_lobe_labels`` (optional, lobe name -> label value) sets the lobar perfusion shares from
    the lobe volumes. See docs/ct_anatomy.md.
    """

    ct_path: Annotated[str, Field(min_length=1, max_length=4096)]
    labels_path: Annotated[str, Field(min_length=1, max_length=4096)]
    vertebra_label: Annotated[int, Field(ge=1, le=65535)]
    bmd_slope_mg_per_cm3_per_hu: Annotated[float, Field(ge=0.5, le=2.0)] = 1.0
    bmd_intercept_mg_per_cm3: Annotated[float, Field(ge=-100.0, le=100.0)] = 0.0
    ivc_label: Annotated[int, Field(ge=1, le=65535)] | None = None
    lung_lobe_labels: (
        dict[Literal["RUL", "RML", "RLL", "LUL", "LLL"], Annotated[int, Field(ge=1, le=65535)]] | None
    ) = None

    @field_validator("ivc_label", "lung_lobe_labels")
    @classmethod
    def _labels_name_different_structures(cls, value: Any, info: ValidationInfo) -> Any:
        """One label value is one structure: the vertebra, the IVC and each lobe need their own."""
        taken = {v: k for k, v in info.data.items() if k in ("vertebra_label", "ivc_label") and v is not None}
        if info.field_name == "ivc_label" and value in taken:
            raise ValueError(f"also the {taken[value]}'s value; each structure needs its own label value")
        if info.field_name == "lung_lobe_labels" and value is not None:
            lobes: dict[int, str] = {}
            for lobe, label in value.items():
                other = taken.get(label) or lobes.get(label)
                if other is not None:
                    raise ValueError(
                        f"{lobe} = {label} is also the {other}'s value; each structure needs its own "
                        "label value"
                    )
                lobes[label] = f"{lobe} lobe"
        return value


def _anatomy_kind(value: Any) -> str:
    """``parametric`` for a name, ``ct`` for a mapping (so errors name the CT fields, not both forms)."""
    return "ct" if isinstance(value, dict | CtAnatomyConfig) else "parametric"


VEIN_KERNEL_RADIUS_DEFAULT_MM = 2.0


class PatientConfig(StrictModel):
    """Patient anatomy and bone quality of the treated vertebral body.

    ``anatomy``: ``parametric`` (the tabulated rounded body of ``level`` with a random porosity
    field around ``porosity_mean``) or a CT source (:class:`CtAnatomyConfig`). With a CT, the body,
    its porosity and the placement of its foramina come from the scan; ``level`` still selects the
    morphometry table's pedicle, channel and venous data, ``porosity_mean`` and
    ``permeability_ref_m2`` stay the permeability law's reference point, and ``porosity_sd``,
    ``porosity_correlation_mm`` and ``size_scale`` are not used. The parametric default is left out
    of the dumped scenario, so parametric scenarios keep their content hash.
    """

    anatomy: Annotated[
        Annotated[Literal["parametric"], Tag("parametric")] | Annotated[CtAnatomyConfig, Tag("ct")],
        Discriminator(_anatomy_kind),
    ] = "parametric"

    level: Level = "L1"
    porosity_mean: Annotated[float, Field(ge=0.5, le=0.99)] = 0.90
    # The porosity field's spread and length are not measured [U]: the defaults are the centres of the
    # cohort's ranges (sd uniform 0.005-0.025, length log-uniform 3-15 mm; docs/reference_values.md).
    porosity_sd: Annotated[float, Field(ge=0.0, le=0.2)] = 0.015
    porosity_correlation_mm: Annotated[float, Field(ge=0.5, le=20.0)] = 6.7
    permeability_ref_m2: Annotated[float, Field(ge=1.0e-11, le=1.0e-6)] = 4.0e-8
    permeability_anisotropy: Annotated[float, Field(ge=1.0, le=5.0)] = 2.0
    size_scale: Annotated[float, Field(ge=0.7, le=1.3)] = 1.0
    # Basivertebral foramen (elliptic opening on the posterior wall): 7.8 +- 1.6 mm wide, 5.4 +- 1.1 mm
    # high in osteoporotic fracture patients (He, Wang, Li 2023, CT of 107 patients); one foramen in
    # 45 %, two in 37 % of vertebrae (Tzika et al. 2021). Two foramina share the width side by side.
    basivertebral_foramen_width_mm: Annotated[float, Field(ge=1.0, le=15.0)] = 7.8
    basivertebral_foramen_height_mm: Annotated[float, Field(ge=1.0, le=12.0)] = 5.4
    basivertebral_foramina: Annotated[int, Field(ge=1, le=2)] = 1
    # Calibre of the basivertebral trunk inside the body (branches by Murray's law) and of the
    # anterior/lateral nutrient foramina and their veins: not measured [U], cohort ranges.
    intraosseous_vein_diameter_mm: Annotated[float, Field(ge=0.3, le=4.0)] = 1.5
    nutrient_foramen_diameter_mm: Annotated[float, Field(ge=0.3, le=3.0)] = 1.0
    # Radius about an intraosseous vein's axis over which its exchange with the bone is spread (the well
    # kernel, sim.physics.embedded_vessels): the zone next to the vein wall where the bone is not yet a
    # Darcy continuum, within 3-5 trabeculae of an interface (Harrigan et al. 1988), 2-6 mm [U]. Left out of
    # the dumped scenario at its default, so scenarios written before the field keep their content hash.
    vein_kernel_radius_mm: Annotated[float, Field(ge=2.0, le=6.0)] = VEIN_KERNEL_RADIUS_DEFAULT_MM
    # Intravertebral pressure rise per ml/min of marrow displaced (sim.physics.marrow_outflow):
    # 2.28 = 6.83 kPa at 3 ml/min in intact cadaver vertebrae (Reidy et al. 2003); 0 = marrow leaves freely.
    marrow_outflow_kpa_per_ml_per_min: Annotated[float, Field(ge=0.0, le=20.0)] = 2.28
    fracture_cleft: FractureCleftConfig = FractureCleftConfig()
    seed: Annotated[int, Field(ge=0, le=2**63 - 1)] = 2025

    @model_serializer(mode="wrap")
    def _omit_parametric_anatomy(self, handler: Any) -> Any:
        data = handler(self)
        if isinstance(data, dict) and data.get("anatomy") == "parametric":
            data.pop("anatomy")
        if isinstance(data, dict) and data.get("vein_kernel_radius_mm") == VEIN_KERNEL_RADIUS_DEFAULT_MM:
            data.pop("vein_kernel_radius_mm")
        return data


class CementOverrides(StrictModel):
    """Explicit rheology parameters; any field given replaces the preset's value."""

    viscosity_ref_pa_s: Annotated[float, Field(gt=0.0, le=1.0e5)] | None = None
    reference_time_min: Annotated[float, Field(ge=0.0, le=60.0)] | None = None
    setting_time_min: Annotated[float, Field(gt=0.0, le=60.0)] | None = None
    divergence_exponent: Annotated[float, Field(gt=0.0, le=10.0)] | None = None
    power_law_n_fresh: Annotated[float, Field(gt=0.05, le=1.0)] | None = None
    power_law_n_set: Annotated[float, Field(gt=0.05, le=1.0)] | None = None
    viscosity_min_pa_s: Annotated[float, Field(gt=0.0, le=1.0e5)] | None = None
    viscosity_max_pa_s: Annotated[float, Field(gt=0.0, le=1.0e7)] | None = None
    activation_energy_kj_per_mol: Annotated[float, Field(ge=0.0, le=200.0)] | None = None
    density_kg_per_m3: Annotated[float, Field(ge=900.0, le=2500.0)] | None = None


class CementConfig(StrictModel):
    """PMMA cement: viscosity class preset, cure state at injection start, temperatures."""

    preset: Literal["low", "medium", "high"] = "medium"
    time_after_mixing_min: Annotated[float, Field(ge=0.0, le=30.0)] = 6.0
    room_temperature_c: Annotated[float, Field(ge=10.0, le=35.0)] = 21.0
    body_temperature_c: Annotated[float, Field(ge=30.0, le=42.0)] = 37.0
    overrides: CementOverrides | None = None


class NeedleConfig(StrictModel):
    """Cannula: approach, gauge and tip position inside the vertebral body.

    Tip fractions are of the body's extent: ``tip_ap_fraction`` 0 = anterior cortex,
    1 = posterior wall; ``tip_lateral_fraction`` -1 = patient right wall, +1 = left wall;
    ``tip_cc_fraction`` 0 = inferior endplate, 1 = superior endplate.
    """

    approach: Literal["transpedicular", "extrapedicular"] = "transpedicular"
    bipedicular: bool = False
    side: Literal["left", "right"] = "left"
    gauge: Literal[11, 13, 15] = 11
    cannula_length_mm: Annotated[float, Field(ge=50.0, le=250.0)] = 125.0
    tip_ap_fraction: Annotated[float, Field(ge=0.05, le=0.95)] = 0.35
    tip_lateral_fraction: Annotated[float, Field(ge=-0.9, le=0.9)] = 0.15
    tip_cc_fraction: Annotated[float, Field(ge=0.1, le=0.9)] = 0.5


# The stop policy's field as a dotted config path: what a cohort's policy arms set, what an arm
# branched off a never-stop run may differ in, and what reports group sweeps by.
STOP_AFTER_LEAK_PATH = "injection.stop_after_leak_s"


class InjectionConfig(StrictModel):
    """Injection protocol and stop policy.

    ``stop_after_leak_s``: stop injecting this many seconds after a venous leak is detected
    on fluoroscopy; 0 is the recommended clinical practice; null means never stop on a leak
    (inject the whole target volume).
    """

    mode: Literal["rate", "pressure"] = "rate"
    rate_ml_per_s: Annotated[
        float,
        Field(
            ge=0.001,
            le=2.0,
            description="Injection rate (clinical 0.02-0.3 ml/s). Below 1 microlitre per second the cannula "
            "flow underflows the wall-stress solve.",
        ),
    ] = 0.05
    max_syringe_pressure_mpa: Annotated[float, Field(gt=0.0, le=50.0)] = 10.0
    volume_ml: Annotated[float, Field(gt=0.0, le=20.0)] = 4.0
    max_duration_s: (
        Annotated[
            float,
            Field(
                ge=1e-3,
                le=3600.0,
                description="Longest injection (s). At least a millisecond: a syringe stroke takes seconds, "
                "and a step of 1e-9 s is below the venous solve's round-off.",
            ),
        ]
        | None
    ) = None
    stop_after_leak_s: StopAfterLeakS | None = 0.0
    follow_up_s: Annotated[float, Field(ge=0.0, le=3600.0)] = 60.0


# The default grid spacing (issue 15: the spacing whose leaked volume and needle pressure lie within 10 %
# of the Richardson estimate in the convergence study, benchmarks/results/convergence.json). Since the
# twelfth pass 1 mm misses that (cohort patient 0's leak 14.4 % above its estimate) and 0.75 mm meets it
# (worst 3.5 %, patient 2); the default 5 ml run takes 1.7 s warm at 0.75 mm against 1.0 s at 1 mm.
DEFAULT_SPACING_MM = 0.75


class GridConfig(StrictModel):
    """Uniform Cartesian grid of the vertebral body and the injection solver's numerics."""

    spacing_mm: Annotated[float, Field(ge=0.15, le=4.0)] = DEFAULT_SPACING_MM
    cfl: Annotated[
        float,
        Field(
            ge=0.05,
            le=1.0,
            description="Fraction of a cell's pore volume the front may fill per step. The step count "
            "grows as 1/cfl (a 1 mm, 4 ml run takes about 700 steps at 0.05); below 0.05 runs take "
            "hours without a more accurate answer.",
        ),
    ] = 0.8
    pressure_solver: Literal["auto", "amg", "direct", "cg", "iccg"] = "auto"
    method: Literal["front", "impes"] = "front"


# Pressure change (mmHg) and duration (s) of a straining event by kind when the config does not give
# them. Valsalva lying down: IVC and lumbar intraosseous pressure reach about 90 mmHg (Spine 1981;6:159),
# held 15 s as in the standard manoeuvre (TB); cough: a short intrathoracic and abdominal pulse,
# amplitude and duration [U] (50-250 mmHg, 0.2-0.5 s).
EVENT_DEFAULTS: dict[str, dict[str, float]] = {
    "valsalva": {"thoracic_mmhg": 90.0, "abdominal_mmhg": 90.0, "duration_s": 15.0},
    "cough": {"thoracic_mmhg": 100.0, "abdominal_mmhg": 100.0, "duration_s": 0.3},
}


class VenousEventConfig(StrictModel):
    """A timed straining event: intrathoracic and intra-abdominal pressure rise over a window."""

    kind: Literal["valsalva", "cough"]
    start_s: Annotated[float, Field(ge=0.0, le=3600.0)]
    duration_s: Annotated[float, Field(gt=0.0, le=60.0)]  # left out: by kind (EVENT_DEFAULTS)
    thoracic_mmhg: Annotated[float, Field(ge=-50.0, le=300.0)]
    abdominal_mmhg: Annotated[float, Field(ge=-50.0, le=300.0)]

    @model_validator(mode="before")
    @classmethod
    def _kind_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("kind"), str) and data["kind"] in EVENT_DEFAULTS:
            data = {**EVENT_DEFAULTS[data["kind"]], **{k: v for k, v in data.items() if v is not None}}
        elif isinstance(data, dict):
            # a missing or unknown kind is the one problem: the fields it would default are not also
            # reported missing (these stand-ins are never used, the kind fails validation)
            data = {**EVENT_DEFAULTS["valsalva"], **data}
        return data


class VenousDynamicsConfig(StrictModel):
    """Venous network in time (``compliant``, the default: vein wall capacitance, extramural pressures,
    breathing and straining, see ``sim.physics.venous_dynamics``) or one steady Kirchhoff solve per step
    with rigid veins (``steady``)."""

    mode: Literal["steady", "compliant"] = "compliant"
    # dV / (V dp_transmural): systemic veins 0.03-0.05 /mmHg (TB); vertebral veins [U] 0.005-0.05
    distensibility_per_mmhg: Annotated[float, Field(ge=0.0, le=0.2)] = 0.04
    respiration_period_s: Annotated[float, Field(ge=1.0, le=30.0)] = 4.0
    # where in a breath the injection starts (0 = end-expiration, 0.5 = end-inspiration); pressures are
    # changes from that instant, whose venous state is the steady solve
    respiration_phase: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    # pressure change at end-inspiration; spontaneous breathing: pleural -5 -> -8 cmH2O (TB) = -2.2 mmHg;
    # mechanical ventilation: positive
    thoracic_swing_mmhg: Annotated[float, Field(ge=-30.0, le=30.0)] = -2.2
    abdominal_swing_mmhg: Annotated[float, Field(ge=-30.0, le=30.0)] = 1.5
    # longest implicit Euler substep of the venous solve: the network relaxes in < 0.1 s (its slowest
    # RC time at 0.04 /mmHg), so 0.1 s resolves a breath; events are never stepped over
    max_step_s: Annotated[float, Field(ge=1.0e-4, le=1.0)] = 0.1
    events: Annotated[list[VenousEventConfig], Field(max_length=100)] = []


class VeinsConfig(StrictModel):
    """Venous anatomy and physiology (boundary flows and pressures)."""

    hemiazygos_present: bool = True
    diameter_scale: Annotated[float, Field(ge=0.5, le=2.0)] = 1.0
    diameter_scatter: Annotated[float, Field(ge=0.0, le=0.5)] = 0.0
    cardiac_output_l_per_min: Annotated[float, Field(ge=2.0, le=12.0)] = 5.0
    azygos_flow_ml_per_min: Annotated[float, Field(ge=50.0, le=1500.0)] = 320.0
    cvp_mmhg: Annotated[float, Field(ge=0.0, le=25.0)] = 5.0
    # posture of the procedure (prone), see geometries/veins/README.md "Posture"
    azygos_erect_diameter_mm: Annotated[float, Field(ge=2.0, le=12.0)] = 5.14
    azygos_posture_widening: Annotated[float, Field(ge=0.0, le=2.5)] = 0.5
    intra_abdominal_pressure_mmhg: Annotated[float, Field(ge=0.0, le=40.0)] = 7.8
    blood_viscosity_pa_s: Annotated[float, Field(ge=0.002, le=0.01)] = 0.0035
    blood_density_kg_per_m3: Annotated[float, Field(ge=1000.0, le=1100.0)] = 1055.0
    marrow_viscosity_pa_s: Annotated[float, Field(ge=0.01, le=1.0)] = 0.04
    dynamics: VenousDynamicsConfig = VenousDynamicsConfig()


class FluoroscopyConfig(StrictModel):
    """Synthetic fluoroscopy used to decide when a venous leak is seen."""

    pixel_size_mm: Annotated[float, Field(ge=0.05, le=5.0)] = 0.3
    views: Annotated[list[Literal["lateral", "ap"]], Field(min_length=1, max_length=2)] = ["lateral", "ap"]
    visibility_threshold_mm3: Annotated[float, Field(ge=0.0, le=1000.0)] = 5.0
    min_thickness_mm: Annotated[float, Field(ge=0.0, le=10.0)] = 0.5
    frame_interval_s: Annotated[
        float,
        Field(
            ge=0.02,
            le=10.0,
            description="Time between fluoroscopy frames. Pulsed fluoroscopy runs at most 30 frames/s; "
            "the bound is 50 frames/s. The follow-up after the injection takes one step per frame, and "
            "follow_up_s / frame_interval_s may not exceed 20,000 steps (about half a minute).",
        ),
    ] = 0.5
    reaction_delay_s: Annotated[float, Field(ge=0.0, le=60.0)] = 0.0


class FragmentationConfig(StrictModel):
    """Shedding of tubular cement fragments from venous cement columns."""

    length_median_mm: Annotated[float, Field(gt=0.0, le=200.0)] = 8.0
    length_sigma: Annotated[float, Field(ge=0.0, le=2.0)] = 0.6
    branching_probability: Annotated[float, Field(ge=0.0, le=1.0)] = 0.3
    strength_scale: Annotated[float, Field(gt=0.0, le=100.0)] = 1.0
    interfacial_tension_mn_per_m: Annotated[
        float,
        Field(
            gt=0.0,
            le=100.0,
            description="Cement dough / blood interfacial tension (law drag_vs_strength_breakup). "
            "Unmeasured [U]: 5-35 mN/m (PMMA-water from PMMA's surface energy, less with plasma proteins).",
        ),
    ] = 20.0
    disturbance_ratio: Annotated[
        float,
        Field(
            gt=0.0,
            lt=1.0,
            description="Initial amplitude of the capillary disturbance on a cement thread over its radius "
            "(law drag_vs_strength_breakup): a thread pinches off after ln(1/ratio) e-foldings [U] 1e-3-0.1.",
        ),
    ] = 0.01


class LungsConfig(StrictModel):
    """Pulmonary arterial tree and fragment lodging."""

    cutoff_diameter_mm: Annotated[
        float,
        Field(
            ge=0.25,
            le=5.0,
            description="Smallest arteries of the pulmonary tree. The vessel count grows as cutoff^-3 "
            "(about 14,000 at 0.5 mm, 110,000 at 0.25 mm, built in under a second); finer trees take "
            "minutes and gigabytes. Must also be below half the smallest segmental artery (2.1 mm).",
        ),
    ] = 0.5
    deformability_margin: Annotated[float, Field(ge=0.0, le=1.0)] = 0.2
    slip_factor: Annotated[float, Field(gt=0.0, le=1.5)] = 0.9
    posture: Literal["prone", "supine", "upright"] = "prone"
    mean_pap_mmhg: Annotated[float, Field(ge=5.0, le=60.0)] = 14.0
    left_atrial_pressure_mmhg: Annotated[float, Field(ge=0.0, le=30.0)] = 8.0


class LawsConfig(StrictModel):
    """Which constitutive law each physics seam uses, by name (see ``sim.physics.laws``)."""

    permeability: Literal["rod_array", "kozeny_carman"] = "rod_array"
    rheology: Literal["power_law_cure"] = "power_law_cure"
    exchange: Literal["embedded_veins"] = "embedded_veins"
    fragmentation: Literal["drag_vs_strength", "drag_vs_strength_breakup"] = "drag_vs_strength_breakup"
    lodging: Literal["diameter_margin"] = "diameter_margin"
    marrow_outflow: Literal["lumped_outlet"] = "lumped_outlet"


class OutputConfig(StrictModel):
    """What a run writes besides ``summary.json``."""

    time_series: bool = True
    fields: bool = True
    vtk: bool = True
    vtk_interval_s: Annotated[
        float,
        Field(
            ge=0.1,
            le=600.0,
            description="Time between VTK snapshots of the cement field; each holds the whole grid, and "
            "at most one is taken per injection step.",
        ),
    ] = 5.0
    fluoroscopy_png: bool = True
    parquet: bool = False


class Scenario(StrictModel):
    """One simulated vertebroplasty, from cement mixing to emboli in the lungs."""

    name: str = "default"
    description: str = ""
    patient: PatientConfig = PatientConfig()
    cement: CementConfig = CementConfig()
    needle: NeedleConfig = NeedleConfig()
    injection: InjectionConfig = InjectionConfig()
    grid: GridConfig = GridConfig()
    veins: VeinsConfig = VeinsConfig()
    fluoroscopy: FluoroscopyConfig = FluoroscopyConfig()
    fragmentation: FragmentationConfig = FragmentationConfig()
    lungs: LungsConfig = LungsConfig()
    laws: LawsConfig = LawsConfig()
    output: OutputConfig = OutputConfig()

    @model_validator(mode="after")
    def _consistent(self) -> Scenario:
        problem = _cement_problem(self.cement) or _lungs_problem(self.lungs) or _work_problem(self)
        if problem is None and self.needle.bipedicular and self.needle.approach == "extrapedicular":
            problem = "needle.bipedicular = true: not supported with needle.approach = 'extrapedicular'"
        if problem is not None:
            raise PydanticCustomError("scenario_consistency", problem)
        return self

    def si(self) -> dict[str, Any]:
        """The scenario as a nested dict in SI units (see :mod:`sim.core.units`)."""
        from sim.core.units import to_si

        data = self.model_dump(mode="json")
        # the dump leaves the kernel radius out at its default (PatientConfig); the stages need it
        data["patient"].setdefault("vein_kernel_radius_mm", self.patient.vein_kernel_radius_mm)
        return to_si(data)

    def content_hash(self) -> str:
        """Stable SHA-256 of the resolved scenario (keys sorted), used to key sweep ledgers.

        A CT anatomy adds the SHA-256 of its image files' bytes (:mod:`sim.core.input_files`), so the
        key names the scan, not only its path; a scenario without input files hashes its config alone.
        """
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        files = self.input_file_digests()
        if files:
            blob += "|input files:" + json.dumps(files, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    def input_file_digests(self) -> dict[str, str]:
        """{dotted field: SHA-256 of the file it names} for the files a run reads (a CT and its labels)."""
        from sim.core.input_files import anatomy_file_digests

        anatomy = self.patient.anatomy
        return anatomy_file_digests(anatomy.model_dump() if isinstance(anatomy, CtAnatomyConfig) else None)


# ---------------------------------------------------------------------------- cross-field checks

# Cement override fields (clinical units) -> (SI preset parameter, factor to SI, unit shown).
_CEMENT_OVERRIDE_SI: dict[str, tuple[str, float, str]] = {
    "viscosity_ref_pa_s": ("viscosity_ref_pa_s", 1.0, "Pa s"),
    "reference_time_min": ("reference_time_s", 60.0, "min"),
    "setting_time_min": ("setting_time_s", 60.0, "min"),
    "divergence_exponent": ("divergence_exponent", 1.0, ""),
    "power_law_n_fresh": ("power_law_n_fresh", 1.0, ""),
    "power_law_n_set": ("power_law_n_set", 1.0, ""),
    "viscosity_min_pa_s": ("viscosity_min_pa_s", 1.0, "Pa s"),
    "viscosity_max_pa_s": ("viscosity_max_pa_s", 1.0, "Pa s"),
    "activation_energy_kj_per_mol": ("activation_energy_j_per_mol", 1.0e3, "kJ/mol"),
    "density_kg_per_m3": ("density_kg_per_m3", 1.0, "kg/m^3"),
}
# (lower field, upper field, strict): the rheology model needs lower < upper (strict) or <=.
_CEMENT_PAIRS = (
    ("reference_time_min", "setting_time_min", True),
    ("power_law_n_set", "power_law_n_fresh", False),
    ("viscosity_min_pa_s", "viscosity_max_pa_s", True),
)


@functools.lru_cache(maxsize=1)
def cement_preset_parameters() -> dict[str, dict[str, float]]:
    """SI rheology parameters of each cement preset (``geometries/cement.yaml``)."""
    data = load_geometry_yaml("cement.yaml")
    presets = data.get("presets", {}) if isinstance(data, dict) else {}
    return {
        str(name): {str(k): float(v) for k, v in (entry or {}).get("parameters", {}).items()}
        for name, entry in presets.items()
    }


@functools.lru_cache(maxsize=1)
def max_lung_cutoff_mm() -> float:
    """Largest allowed pulmonary tree cutoff: half the mean order-13 (segmental) artery diameter."""
    table = load_geometry_yaml("pulmonary/pulmonary_arteries.yaml")["huang1996_orders"]
    entry = table.get(13, table.get("13"))
    return 0.5 * float(entry[0])


def _num(value: float) -> str:
    return f"{value:g}"


def _cement_problem(cement: CementConfig) -> str | None:
    """The first override that makes the preset's rheology inconsistent, named as written."""
    o = cement.overrides
    if o is None:
        return None
    preset = cement_preset_parameters().get(cement.preset, {})
    given = {name: getattr(o, name) for name in _CEMENT_OVERRIDE_SI if getattr(o, name) is not None}
    if not given:
        return None

    def value(name: str) -> float | None:
        if name in given:
            return float(given[name])
        si_name, factor, _ = _CEMENT_OVERRIDE_SI[name]
        return preset[si_name] / factor if si_name in preset else None

    for lower, upper, strict in _CEMENT_PAIRS:
        lo, hi = value(lower), value(upper)
        if lo is None or hi is None or (lo < hi if strict else lo <= hi):
            continue
        unit = _CEMENT_OVERRIDE_SI[lower][2]
        unit = f" {unit}" if unit else ""
        if upper in given and lower not in given:
            return (
                f"cement.overrides.{upper} = {_num(hi)}: must be {'above' if strict else 'at least'} "
                f"{lower} of preset '{cement.preset}' ({_num(lo)}{unit}; override {lower} too)"
            )
        other = (
            f"cement.overrides.{upper} = {_num(hi)}"
            if upper in given
            else f"{upper} of preset '{cement.preset}' ({_num(hi)}{unit})"
        )
        return f"cement.overrides.{lower} = {_num(lo)}: must be {'below' if strict else 'at most'} {other}"
    return None


def _lungs_problem(lungs: LungsConfig) -> str | None:
    """Pulmonary pressures and cutoff the tree builder would refuse, named as written."""
    cutoff_max = max_lung_cutoff_mm()
    if not lungs.cutoff_diameter_mm < cutoff_max:
        return (
            f"lungs.cutoff_diameter_mm = {_num(lungs.cutoff_diameter_mm)}: must be below "
            f"{_num(cutoff_max)} mm (half the smallest segmental artery)"
        )
    if not lungs.mean_pap_mmhg > lungs.left_atrial_pressure_mmhg:
        mpap, lap = lungs.mean_pap_mmhg, lungs.left_atrial_pressure_mmhg
        written = lungs.model_fields_set
        if "left_atrial_pressure_mmhg" in written and "mean_pap_mmhg" not in written:
            return (
                f"lungs.left_atrial_pressure_mmhg = {_num(lap)}: must be below lungs.mean_pap_mmhg "
                f"({_num(mpap)}, the default); blood must flow from the pulmonary artery to the left atrium"
            )
        return (
            f"lungs.mean_pap_mmhg = {_num(mpap)}: must be above lungs.left_atrial_pressure_mmhg "
            f"({_num(lap)}); blood must flow from the pulmonary artery to the left atrium"
        )
    return None


# After the injection the venous side is stepped once per fluoroscopy frame for follow_up_s; with cement
# in the veins a step costs about 1.7 ms (a blood-flow solve), so 180,000 steps took 5 minutes.
MAX_FOLLOW_UP_STEPS = 20_000
FOLLOW_UP_STEP_S = 1.7e-3


def _work_problem(scenario: Scenario) -> str | None:
    """Combinations whose step count would make a run take minutes for nothing, with the estimate."""
    follow_up, frame = scenario.injection.follow_up_s, scenario.fluoroscopy.frame_interval_s
    steps = math.ceil(follow_up / frame)
    if steps > MAX_FOLLOW_UP_STEPS:
        minutes = steps * FOLLOW_UP_STEP_S / 60.0
        return (
            f"injection.follow_up_s = {_num(follow_up)} with fluoroscopy.frame_interval_s = {_num(frame)}: "
            f"{steps:,} follow-up steps (one per frame, about {minutes:.0f} min); allowed: at most "
            f"{MAX_FOLLOW_UP_STEPS:,} (follow_up_s / frame_interval_s)"
        )
    return None


# ---------------------------------------------------------------------------- errors


def _location_step(current: Any, part: Any) -> tuple[bool, Any, Any]:
    """One step of a location through an annotation: (whether ``part`` is a field of one of its models,
    a list index or a mapping key; the annotation it leads to; the field's FieldInfo, or None)."""
    for member in _union_members(current):
        origin = typing.get_origin(member)
        if isinstance(member, type) and issubclass(member, BaseModel):
            if isinstance(part, str) and part in member.model_fields:
                info = member.model_fields[part]
                return True, info.annotation, info
        elif origin in (list, tuple, set, frozenset) and isinstance(part, int):
            args = typing.get_args(member)
            return True, args[0] if args else Any, None
        elif origin is dict:
            args = typing.get_args(member)
            return True, args[1] if len(args) == 2 else Any, None
    return False, current, None


def _field_info(model: type[BaseModel], loc: tuple[Any, ...]) -> Any:
    """Walk ``loc`` (a :func:`user_location`: fields, list indices, mapping keys) through nested models
    and return the FieldInfo of the last field, if any (None when a part is no field)."""
    current: Any = model
    info = None
    for part in loc:
        found, current, field = _location_step(current, part)
        if not found:
            return None
        info = field or info
    return info


def _unwrap_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _unwrap_model(arg)
        if found is not None:
            return found
    return None


def _allowed_text(info: Any) -> str:
    """Human description of a field's allowed values from its annotation and constraints."""
    if info is None:
        return ""
    ann = info.annotation
    metas = list(info.metadata)  # constraints on the field itself, then inside Optional[Annotated]
    for arg in (ann, *getattr(ann, "__args__", ())):
        for meta in getattr(arg, "__metadata__", ()):
            metas.extend([meta, *getattr(meta, "metadata", [])])
    lo = hi = None
    lo_op = hi_op = ""
    for meta in metas:
        for attr, op in (("ge", ">="), ("gt", ">")):
            if getattr(meta, attr, None) is not None:
                lo, lo_op = getattr(meta, attr), op
        for attr, op in (("le", "<="), ("lt", "<")):
            if getattr(meta, attr, None) is not None:
                hi, hi_op = getattr(meta, attr), op
    parts = []
    if lo is not None:
        parts.append(f"{lo_op} {lo:g}" if isinstance(lo, float) else f"{lo_op} {lo}")
    if hi is not None:
        parts.append(f"{hi_op} {hi:g}" if isinstance(hi, float) else f"{hi_op} {hi}")
    if parts:
        text = "allowed: " + " and ".join(parts)
        if type(None) in getattr(ann, "__args__", ()):
            text += " (or null)"
        return text
    choices = getattr(ann, "__args__", None)
    if choices and all(isinstance(c, str | int) for c in choices) and "Literal" in str(ann):
        return "allowed: one of " + ", ".join(repr(c) for c in choices)
    return ""


MAX_ERROR_LINES = 5


def shown_value(value: Any, limit: int = 60) -> str:
    """A user value as one literal line (JSON for scalars, never escaped non-ASCII), cut to ``limit``."""
    if isinstance(value, str | int | float | bool | type(None)):
        text = json.dumps(value, ensure_ascii=False)
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, default=repr)
        except (TypeError, ValueError, RecursionError):
            text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def summarise_lines(lines: list[str], limit: int = MAX_ERROR_LINES, what: str = "problems") -> str:
    """The first ``limit`` lines, then one line counting the rest."""
    if len(lines) <= limit:
        return "\n".join(lines)
    return "\n".join([*lines[:limit], f"... and {len(lines) - limit} more {what}"])


def user_location(root: type[BaseModel], loc: tuple[Any, ...], keep_last: bool = False) -> tuple[Any, ...]:
    """``loc`` as the user wrote it: the field names, list indices and mapping keys along the models,
    without pydantic's labels of union branches (``ct``, ``float``, ``literal['sampled']``, ...).
    ``keep_last`` keeps a final part that names no field (an unknown key)."""
    out: list[Any] = []
    current: Any = root
    for i, part in enumerate(loc):
        found, current, _ = _location_step(current, part)
        if found or (keep_last and i == len(loc) - 1):
            out.append(part)  # otherwise a union branch's label
    return tuple(out)


def format_validation_error(
    exc: ValidationError,
    source: str = "config",
    root: type[BaseModel] | None = None,
    literals: Literals | None = None,
) -> str:
    """One line per problem (at most MAX_ERROR_LINES, then a count):
    ``source: field.path = value: message (allowed: ...)``, the path as the user wrote it in a file of
    ``root`` (the Scenario by default; the sweep and cohort files pass theirs), the value as written
    where ``literals`` (from the file's loader) hold it, else as JSON. A value that fails every branch
    of a union gets one line with the branches' messages."""
    model = Scenario if root is None else root
    lines: list[str] = []
    by_path: dict[str, int] = {}  # a path's line, to merge the messages of a union's branches
    for err in exc.errors():
        raw = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        if len(raw) >= 2 and raw[-1] == "[key]":  # a bad key: pydantic writes None as "None", True as 1
            raw = (*raw[:-2], key_text(err.get("input")))
        kind = err.get("type", "")
        loc = user_location(model, raw, keep_last=kind == "extra_forbidden")
        path = shown_value(".".join(key_text(p) for p in loc), 80)[1:-1] if loc else "(top level)"
        value = err.get("input")
        msg = str(err.get("msg", "invalid"))
        if kind == "scenario_consistency":
            lines.append(f"{source}: {msg}")
            continue
        if kind == "extra_forbidden":
            parent_info = _field_info(model, loc[:-1]) if len(loc) > 1 else None
            parent = model if len(loc) <= 1 else _unwrap_model(getattr(parent_info, "annotation", None))
            known = ", ".join(parent.model_fields) if parent is not None else ""
            lines.append(
                f"{source}: unknown key '{path}'" + (f" (known keys here: {known})" if known else "")
            )
            continue
        if not loc:  # a check of the whole file: its message says what, the file is not a value to print
            lines.append(f"{source}: {msg.removeprefix('Value error, ')}")
            continue
        if kind == "missing":
            where = (
                shown_value(".".join(key_text(p) for p in loc[:-1]), 80)[1:-1]
                if len(loc) > 1
                else "(top level)"
            )
            lines.append(f"{source}: {where}: required key '{loc[-1]}' is missing")
            continue
        msg = re.sub(r" or instance of \w+", "", msg.removeprefix("Value error, "))
        named = re.match(r"'(\w+)' (.*)", msg)
        named = named if named and isinstance(value, dict) and named.group(1) in value else None
        if named:  # a check of one key of a mapping: `x = {"high": inf}: 'high' must ...` -> `x.high = 1e400`
            key = named.group(1)
            loc, path, value = (*loc, key), f"{path}.{key}", value[key]
            msg = re.sub(r" \(got [^)]*\)$", "", named.group(2))  # the value is shown, as written, before it
            if isinstance(value, list):
                items = [literal_text(literals, (*loc, i), v) or shown_value(v) for i, v in enumerate(value)]
                value_text = "[" + ", ".join(items) + "]"
                lines.append(f"{source}: {path} = {value_text}: {msg}")
                continue
        if path in by_path:  # another branch of the same union
            i = by_path[path]
            if msg not in lines[i]:
                lines[i] += f"; or {msg}"
            continue
        info = _field_info(model, loc)
        allowed = _allowed_text(info)
        written = literal_text(literals, loc, value)
        line = (
            f"{source}: {path} = {shown_value(value) if written is None else shown_text(written, 60)}: {msg}"
        )
        if allowed and not msg.startswith("Input should be '") and not named:  # the mapping's, not the key's
            line += f" ({allowed})"
        forms = [m for m in _union_members(getattr(info, "annotation", None)) if isinstance(m, type)]
        mapping = next((m for m in forms if issubclass(m, BaseModel)), None)
        if mapping is not None and not isinstance(value, dict):
            line += f" (or a mapping with keys {', '.join(mapping.model_fields)})"
        by_path[path] = len(lines)
        lines.append(line)
    return summarise_lines(lines)


def scenario_from_dict(data: Any, source: str = "config", literals: Literals | None = None) -> Scenario:
    """Validate a mapping as a Scenario; raise ConfigError with one line per problem (``literals``: the
    file's text as written, :func:`sim.core.safe_yaml.load_yaml_text`)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping of sections, got {type(data).__name__}")
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source, literals=literals)) from None


def read_yaml(path: str | Path, literals: Literals | None = None) -> Any:
    """Read a user YAML file (see :mod:`sim.core.safe_yaml`); every problem is one-line ConfigError."""
    return read_yaml_file(path, literals=literals)


def load_scenario(path: str | Path) -> Scenario:
    """Load and validate a scenario YAML file."""
    literals: Literals = {}
    data = read_yaml(path, literals)
    return scenario_from_dict(data, source=path_label(path), literals=literals)
