"""Validated scenario configuration (pydantic v2), loaded from YAML.

A :class:`Scenario` describes one simulated vertebroplasty: patient and bone, cement,
needle, injection protocol, numerical grid, venous anatomy, fluoroscopic leak detection,
fragmentation, pulmonary tree and outputs. Fields carry clinical units in their names
(``volume_ml``, ``spacing_mm``); :func:`sim.core.units.to_si` converts them in one place.

Unknown keys are rejected (typos are errors, not silently ignored). Every numeric field
declares its allowed range, and :func:`format_validation_error` turns a pydantic error into
one line naming the field path, the bad value and what is allowed.

Defaults describe a typical lumbar PVP: L1 osteoporotic body (porosity 0.90, reference
permeability 4e-8 m^2 from Baroud et al. 2004), medium-viscosity PMMA injected from 6 min
after mixing through a unipedicular 11G transpedicular cannula at 0.05 ml/s up to 4 ml,
stopping as soon as a venous leak is seen (stop_after_leak_s = 0).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sim.core.errors import ConfigError

LEVELS: tuple[str, ...] = (
    "T5", "T6", "T7", "T8", "T9", "T10", "T11", "T12", "L1", "L2", "L3", "L4", "L5",
)  # fmt: skip
Level = Literal["T5", "T6", "T7", "T8", "T9", "T10", "T11", "T12", "L1", "L2", "L3", "L4", "L5"]


class StrictModel(BaseModel):
    """Base model: unknown keys are errors, values are validated on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class FractureCleftConfig(StrictModel):
    """Optional fluid-filled fracture cleft (intravertebral vacuum cleft), a high-permeability slab."""

    enabled: bool = False
    center_ap_fraction: Annotated[float, Field(ge=0.0, le=1.0)] = 0.45
    center_cc_fraction: Annotated[float, Field(ge=0.0, le=1.0)] = 0.7
    thickness_mm: Annotated[float, Field(gt=0.0, le=10.0)] = 2.0
    extent_fraction: Annotated[float, Field(gt=0.0, le=1.0)] = 0.6
    permeability_factor: Annotated[float, Field(ge=1.0, le=1.0e4)] = 50.0


class PatientConfig(StrictModel):
    """Patient anatomy and bone quality of the treated vertebral body."""

    level: Level = "L1"
    porosity_mean: Annotated[float, Field(ge=0.5, le=0.99)] = 0.90
    porosity_sd: Annotated[float, Field(ge=0.0, le=0.2)] = 0.02
    porosity_correlation_mm: Annotated[float, Field(ge=0.5, le=20.0)] = 3.0
    permeability_ref_m2: Annotated[float, Field(ge=1.0e-11, le=1.0e-6)] = 4.0e-8
    permeability_anisotropy: Annotated[float, Field(ge=1.0, le=5.0)] = 2.0
    size_scale: Annotated[float, Field(ge=0.7, le=1.3)] = 1.0
    # Basivertebral foramen (elliptic opening on the posterior wall): 7.8 +- 1.6 mm wide, 5.4 +- 1.1 mm
    # high in osteoporotic fracture patients (He, Wang, Li 2023, CT of 107 patients); one foramen in
    # 45 %, two in 37 % of vertebrae (Tzika et al. 2021).
    basivertebral_foramen_width_mm: Annotated[float, Field(ge=1.0, le=15.0)] = 7.8
    basivertebral_foramen_height_mm: Annotated[float, Field(ge=1.0, le=12.0)] = 5.4
    basivertebral_foramina: Annotated[int, Field(ge=1, le=2)] = 1
    # Calibre of the basivertebral trunk inside the body (branches by Murray's law) and of the
    # anterior/lateral nutrient foramina and their veins: not measured [U], cohort ranges.
    intraosseous_vein_diameter_mm: Annotated[float, Field(ge=0.3, le=4.0)] = 1.5
    nutrient_foramen_diameter_mm: Annotated[float, Field(ge=0.3, le=3.0)] = 1.0
    fracture_cleft: FractureCleftConfig = FractureCleftConfig()
    seed: Annotated[int, Field(ge=0, le=2**63 - 1)] = 2025


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


class InjectionConfig(StrictModel):
    """Injection protocol and stop policy.

    ``stop_after_leak_s``: stop injecting this many seconds after a venous leak is detected
    on fluoroscopy; 0 is the recommended clinical practice; null means never stop on a leak
    (inject the whole target volume).
    """

    mode: Literal["rate", "pressure"] = "rate"
    rate_ml_per_s: Annotated[float, Field(gt=0.0, le=2.0)] = 0.05
    max_syringe_pressure_mpa: Annotated[float, Field(gt=0.0, le=50.0)] = 10.0
    volume_ml: Annotated[float, Field(gt=0.0, le=20.0)] = 4.0
    max_duration_s: Annotated[float, Field(gt=0.0, le=3600.0)] | None = None
    stop_after_leak_s: Annotated[float, Field(ge=0.0, le=3600.0)] | None = 0.0
    follow_up_s: Annotated[float, Field(ge=0.0, le=3600.0)] = 60.0


class GridConfig(StrictModel):
    """Uniform Cartesian grid of the vertebral body and the injection solver's numerics."""

    spacing_mm: Annotated[float, Field(ge=0.25, le=4.0)] = 1.0
    cfl: Annotated[float, Field(gt=0.0, le=1.0)] = 0.8
    pressure_solver: Literal["auto", "amg", "direct", "cg"] = "auto"
    method: Literal["front", "impes"] = "front"


class VeinsConfig(StrictModel):
    """Venous anatomy and physiology (boundary flows and pressures)."""

    hemiazygos_present: bool = True
    diameter_scale: Annotated[float, Field(ge=0.5, le=2.0)] = 1.0
    diameter_scatter: Annotated[float, Field(ge=0.0, le=0.5)] = 0.0
    cardiac_output_l_per_min: Annotated[float, Field(ge=2.0, le=12.0)] = 5.0
    azygos_flow_ml_per_min: Annotated[float, Field(ge=50.0, le=1500.0)] = 320.0
    cvp_mmhg: Annotated[float, Field(ge=0.0, le=25.0)] = 5.0
    blood_viscosity_pa_s: Annotated[float, Field(ge=0.002, le=0.01)] = 0.0035
    blood_density_kg_per_m3: Annotated[float, Field(ge=1000.0, le=1100.0)] = 1055.0
    marrow_viscosity_pa_s: Annotated[float, Field(ge=0.01, le=1.0)] = 0.04


class FluoroscopyConfig(StrictModel):
    """Synthetic fluoroscopy used to decide when a venous leak is seen."""

    pixel_size_mm: Annotated[float, Field(ge=0.05, le=5.0)] = 0.3
    views: list[Literal["lateral", "ap"]] = ["lateral", "ap"]
    visibility_threshold_mm3: Annotated[float, Field(ge=0.0, le=1000.0)] = 5.0
    min_thickness_mm: Annotated[float, Field(ge=0.0, le=10.0)] = 0.5
    frame_interval_s: Annotated[float, Field(gt=0.0, le=10.0)] = 0.5
    reaction_delay_s: Annotated[float, Field(ge=0.0, le=60.0)] = 0.0


class FragmentationConfig(StrictModel):
    """Shedding of tubular cement fragments from venous cement columns."""

    length_median_mm: Annotated[float, Field(gt=0.0, le=200.0)] = 8.0
    length_sigma: Annotated[float, Field(ge=0.0, le=2.0)] = 0.6
    branching_probability: Annotated[float, Field(ge=0.0, le=1.0)] = 0.3
    strength_scale: Annotated[float, Field(gt=0.0, le=100.0)] = 1.0


class LungsConfig(StrictModel):
    """Pulmonary arterial tree and fragment lodging."""

    cutoff_diameter_mm: Annotated[float, Field(ge=0.02, le=5.0)] = 0.5
    deformability_margin: Annotated[float, Field(ge=0.0, le=1.0)] = 0.2
    slip_factor: Annotated[float, Field(gt=0.0, le=1.5)] = 0.9
    posture: Literal["prone", "supine", "upright"] = "prone"
    mean_pap_mmhg: Annotated[float, Field(ge=5.0, le=60.0)] = 14.0
    left_atrial_pressure_mmhg: Annotated[float, Field(ge=0.0, le=30.0)] = 8.0


class LawsConfig(StrictModel):
    """Which constitutive law each physics seam uses, by name (see ``sim.physics.laws``)."""

    permeability: Literal["kozeny_carman"] = "kozeny_carman"
    rheology: Literal["power_law_cure"] = "power_law_cure"
    exchange: Literal["embedded_veins"] = "embedded_veins"
    fragmentation: Literal["drag_vs_strength"] = "drag_vs_strength"
    lodging: Literal["diameter_margin"] = "diameter_margin"


class OutputConfig(StrictModel):
    """What a run writes besides ``summary.json``."""

    time_series: bool = True
    fields: bool = True
    vtk: bool = True
    vtk_interval_s: Annotated[float, Field(gt=0.0, le=600.0)] = 5.0
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
        o = self.cement.overrides
        if o is not None and o.viscosity_min_pa_s and o.viscosity_max_pa_s:
            if o.viscosity_min_pa_s >= o.viscosity_max_pa_s:
                raise ValueError(
                    "cement.overrides.viscosity_min_pa_s must be below viscosity_max_pa_s "
                    f"(got {o.viscosity_min_pa_s} >= {o.viscosity_max_pa_s})"
                )
        if self.needle.bipedicular and self.needle.approach == "extrapedicular":
            raise ValueError("needle.bipedicular with approach 'extrapedicular' is not supported")
        return self

    def si(self) -> dict[str, Any]:
        """The scenario as a nested dict in SI units (see :mod:`sim.core.units`)."""
        from sim.core.units import to_si

        return to_si(self.model_dump(mode="json"))

    def content_hash(self) -> str:
        """Stable SHA-256 of the resolved scenario (keys sorted), used to key sweep ledgers."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


# ---------------------------------------------------------------------------- errors


def _field_info(model: type[BaseModel], loc: tuple[Any, ...]) -> Any:
    """Walk ``loc`` through nested models and return the FieldInfo of the last key, if any."""
    current: Any = model
    info = None
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return info
        if part not in current.model_fields:
            return None
        info = current.model_fields[part]
        ann = info.annotation
        current = _unwrap_model(ann)
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


def format_validation_error(exc: ValidationError, source: str = "config") -> str:
    """One line per problem: ``source: field.path = value: message (allowed: ...)``."""
    lines = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        path = ".".join(str(p) for p in loc) or "(top level)"
        value = err.get("input")
        kind = err.get("type", "")
        if kind == "extra_forbidden":
            parent = _unwrap_model(_field_info(Scenario, loc[:-1]).annotation) if len(loc) > 1 else Scenario
            known = ", ".join(parent.model_fields) if parent is not None else ""
            lines.append(f"{source}: unknown key '{path}' (known keys here: {known})")
            continue
        msg = err.get("msg", "invalid")
        allowed = _allowed_text(_field_info(Scenario, loc))
        shown = json.dumps(value) if isinstance(value, str | int | float | bool | type(None)) else repr(value)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        line = f"{source}: {path} = {shown}: {msg}"
        if allowed and not msg.startswith("Input should be '"):
            line += f" ({allowed})"
        lines.append(line)
    return "\n".join(lines)


def scenario_from_dict(data: Any, source: str = "config") -> Scenario:
    """Validate a mapping as a Scenario; raise ConfigError with one line per problem."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping of sections, got {type(data).__name__}")
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def read_yaml(path: str | Path) -> Any:
    """Read a YAML file, turning missing files and syntax errors into ConfigError."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: config file not found")
    if p.is_dir():
        raise ConfigError(f"{p}: is a directory, expected a YAML file")
    try:
        with p.open("r", encoding="utf-8") as fh:
            return yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{p}: YAML syntax error{where}: {problem}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read config: {exc}") from None


def load_scenario(path: str | Path) -> Scenario:
    """Load and validate a scenario YAML file."""
    return scenario_from_dict(read_yaml(path), source=str(path))
