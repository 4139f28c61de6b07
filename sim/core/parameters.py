"""Typed stage parameters: one frozen dataclass per stage, in SI units, built once per run.

The validated :class:`~sim.core.config.Scenario` carries clinical units in its field names
(``volume_ml``); :meth:`RunParameters.from_scenario` converts it to SI once
(:func:`sim.core.units.to_si`) and fills these dataclasses by field name (``volume_ml`` becomes
``volume_m3``). Stages receive only their own dataclass, never a dict, so a physical parameter
is added in three places: the config field (with its clinical unit and allowed range), the
dataclass field here (SI name and a comment saying what it is), and its use.

:func:`build` refuses a section whose keys and the dataclass's fields differ, so a config field
without a dataclass field (or the reverse) fails the first run and the test suite, instead of
being silently ignored.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, TypeVar

from sim.core.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class FractureCleftParams:
    """Optional intravertebral cleft: a high-permeability slab (``patient.fracture_cleft``)."""

    enabled: bool
    center_ap_fraction: float  # 0 = anterior cortex, 1 = posterior wall
    center_cc_fraction: float  # 0 = inferior, 1 = superior endplate
    thickness_m: float
    extent_fraction: float  # footprint / body half-axes
    permeability_factor: float  # k inside the cleft / k of the bone around it


@dataclass(frozen=True)
class CtAnatomyParams:
    """CT source of the anatomy (``patient.anatomy``; see :class:`sim.core.config.CtAnatomyConfig`)."""

    ct_path: str
    labels_path: str
    vertebra_label: int
    bmd_slope_mg_per_cm3_per_hu: float  # scanner calibration BMD = slope * HU + intercept
    bmd_intercept_mg_per_cm3: float
    ivc_label: int | None
    lung_lobe_labels: dict[str, int] | None


@dataclass(frozen=True)
class PatientParams:
    """Treated level and bone quality (``patient``)."""

    level: str
    porosity_mean: float  # 1 - BV/TV
    porosity_sd: float  # of the correlated random field
    porosity_correlation_m: float  # correlation length of that field
    permeability_ref_m2: float  # k at porosity_mean, transverse
    permeability_anisotropy: float  # k_axial / k_transverse
    size_scale: float  # body dimensions / tabulated morphometry
    basivertebral_foramen_width_m: float  # elliptic opening on the posterior wall
    basivertebral_foramen_height_m: float
    basivertebral_foramina: int  # 1 or 2
    intraosseous_vein_diameter_m: float  # basivertebral trunk; branches by Murray's law
    nutrient_foramen_diameter_m: float  # anterior and lateral foramina and their veins
    vein_kernel_radius_m: float  # rho_0 of the veins' well kernels (sim.physics.embedded_vessels)
    marrow_outflow_pa_s_per_m3: float  # resistance displaced marrow meets leaving the bone
    fracture_cleft: FractureCleftParams
    seed: int  # root of every random stream of the run
    anatomy: str | CtAnatomyParams = "parametric"  # "parametric" or a CT source


@dataclass(frozen=True)
class CementOverrideParams:
    """Explicit rheology parameters (``cement.overrides``); None keeps the preset's value."""

    viscosity_ref_pa_s: float | None
    reference_time_s: float | None
    setting_time_s: float | None
    divergence_exponent: float | None
    power_law_n_fresh: float | None
    power_law_n_set: float | None
    viscosity_min_pa_s: float | None
    viscosity_max_pa_s: float | None
    activation_energy_j_per_mol: float | None
    density_kg_per_m3: float | None

    def given(self) -> dict[str, float]:
        """The fields set explicitly, by SI name."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {name: float(v) for name, v in values.items() if v is not None}


@dataclass(frozen=True)
class CementParams:
    """Cement class, cure state at injection start and temperatures (``cement``)."""

    preset: str  # rheology preset of geometries/cement.yaml
    time_after_mixing_s: float  # at injection start, spent at room temperature
    room_temperature_k: float
    body_temperature_k: float
    overrides: CementOverrideParams | None  # rheology fields replacing the preset's


@dataclass(frozen=True)
class NeedleParams:
    """Cannula approach, gauge and tip position (``needle``; fractions of the body extent)."""

    approach: str
    bipedicular: bool
    side: str
    gauge: int
    cannula_length_m: float
    tip_ap_fraction: float  # 0 anterior cortex, 1 posterior wall
    tip_lateral_fraction: float  # -1 right wall, +1 left wall
    tip_cc_fraction: float  # 0 inferior, 1 superior endplate


@dataclass(frozen=True)
class InjectionParams:
    """Injection protocol (``injection``, without the stop policy)."""

    mode: str  # "rate" or "pressure" (syringe pressure held at its limit)
    rate_m3_per_s: float
    max_syringe_pressure_pa: float
    volume_m3: float  # target volume
    max_duration_s: float | None
    follow_up_s: float  # venous side watched after the injection ends


@dataclass(frozen=True)
class StopPolicyParams:
    """When the operator stops after a leak is seen (``injection.stop_after_leak_s`` and
    ``fluoroscopy.reaction_delay_s``); read by :class:`sim.physics.injection_control.StopPolicy`."""

    stop_after_leak_s: float | None  # None: never stop on a leak
    reaction_delay_s: float


@dataclass(frozen=True)
class GridParams:
    """Grid and numerics of the injection solver (``grid``)."""

    spacing_m: float
    cfl: float
    pressure_solver: str
    method: str


@dataclass(frozen=True)
class VenousEventParams:
    """A timed straining event (``veins.dynamics.events``): pressure changes added over a window."""

    kind: str  # valsalva | cough
    start_s: float
    duration_s: float
    thoracic_pa: float  # intrathoracic pressure change during the event
    abdominal_pa: float  # intra-abdominal pressure change during the event


@dataclass(frozen=True)
class VenousDynamicsParams:
    """Compliant venous network in time (``veins.dynamics``; see :mod:`sim.physics.venous_dynamics`)."""

    mode: str  # steady (one Kirchhoff solve per step, rigid veins) | compliant
    distensibility_per_pa: float  # vein wall compliance per unit volume, dV / (V dp_transmural)
    respiration_period_s: float
    thoracic_swing_pa: float  # intrathoracic pressure change at end-inspiration (signed)
    abdominal_swing_pa: float  # intra-abdominal pressure change at end-inspiration (signed)
    max_step_s: float  # longest implicit Euler substep of the venous solve
    events: tuple[VenousEventParams, ...]
    respiration_phase: float = 0.0  # fraction of a breath at injection start (0 = end-expiration)


@dataclass(frozen=True)
class VeinParams:
    """Venous anatomy and physiology (``veins``)."""

    hemiazygos_present: bool
    diameter_scale: float  # template calibres x this
    diameter_scatter: float  # lognormal sigma per edge
    cardiac_output_m3_per_s: float
    azygos_flow_m3_per_s: float
    cvp_pa: float
    azygos_erect_diameter_m: float  # azygos arch width standing (Milne 1984)
    azygos_posture_widening: float  # relative widening of the arch in the procedure's posture
    intra_abdominal_pressure_pa: float  # around the abdominal IVC in the procedure's posture
    blood_viscosity_pa_s: float
    blood_density_kg_per_m3: float
    marrow_viscosity_pa_s: float  # the fluid cement displaces in the bone
    dynamics: VenousDynamicsParams | None  # None: steady (rigid veins, e.g. hand-built parameters)


@dataclass(frozen=True)
class FluoroscopyParams:
    """Synthetic fluoroscopy that decides when a leak is seen (``fluoroscopy``)."""

    pixel_size_m: float
    views: tuple[str, ...]
    visibility_threshold_m3: float  # projected extra-vertebral cement that is seen
    min_thickness_m: float  # thinner projected cement is invisible
    frame_interval_s: float


@dataclass(frozen=True)
class FragmentationParams:
    """Shedding of tubular fragments from vein columns (``fragmentation``)."""

    length_median_m: float
    length_sigma: float  # lognormal sigma of fragment length
    branching_probability: float  # fragment is a branched cast
    strength_scale: float  # cement strength x this
    interfacial_tension_n_per_m: float = 0.02  # cement / blood [U]; law drag_vs_strength_breakup
    disturbance_ratio: float = 0.01  # initial capillary disturbance / thread radius [U]


@dataclass(frozen=True)
class LungParams:
    """Pulmonary arterial tree and lodging (``lungs``; blood and cardiac output from ``veins``)."""

    cutoff_diameter_m: float  # the tree is truncated below this vessel diameter
    deformability_margin: float  # fresh cement passes vessels down to d / (1 + margin)
    slip_factor: float  # fragment speed / mean blood speed
    posture: str
    mean_pap_pa: float
    left_atrial_pressure_pa: float
    cardiac_output_m3_per_s: float
    blood_viscosity_pa_s: float


@dataclass(frozen=True)
class OutputParams:
    """What a run writes (``output``); not physics."""

    time_series: bool
    fields: bool
    vtk: bool
    vtk_interval_s: float
    fluoroscopy_png: bool
    parquet: bool


@dataclass(frozen=True)
class LawParams:
    """Which constitutive law each seam uses (``laws``; see :mod:`sim.physics.laws`)."""

    permeability: str
    rheology: str
    exchange: str
    fragmentation: str
    lodging: str
    marrow_outflow: str


@dataclass(frozen=True)
class RunParameters:
    """Every stage's parameters of one run (SI)."""

    name: str
    patient: PatientParams
    cement: CementParams
    needle: NeedleParams
    injection: InjectionParams
    stop: StopPolicyParams
    grid: GridParams
    veins: VeinParams
    fluoroscopy: FluoroscopyParams
    fragmentation: FragmentationParams
    lungs: LungParams
    output: OutputParams
    laws: LawParams

    @classmethod
    def from_scenario(cls, scenario: Any) -> RunParameters:
        """Convert a validated Scenario to SI once and fill every stage's dataclass."""
        return cls.from_si(scenario.si())

    @classmethod
    def from_si(cls, si: dict[str, Any]) -> RunParameters:
        """From ``scenario.si()`` (a nested dict in SI units)."""
        injection, fluoroscopy = dict(si["injection"]), dict(si["fluoroscopy"])
        stop = StopPolicyParams(
            stop_after_leak_s=injection.pop("stop_after_leak_s"),
            reaction_delay_s=float(fluoroscopy.pop("reaction_delay_s")),
        )
        veins = dict(si["veins"])
        lungs = {
            **si["lungs"],
            "cardiac_output_m3_per_s": si["veins"]["cardiac_output_m3_per_s"],
            "blood_viscosity_pa_s": si["veins"]["blood_viscosity_pa_s"],
        }
        return cls(
            name=str(si.get("name", "")),
            patient=build(PatientParams, {"anatomy": "parametric", **si["patient"]}, "patient"),
            cement=build(CementParams, si["cement"], "cement"),
            needle=build(NeedleParams, si["needle"], "needle"),
            injection=build(InjectionParams, injection, "injection"),
            stop=stop,
            grid=build(GridParams, si["grid"], "grid"),
            veins=build(VeinParams, veins, "veins"),
            fluoroscopy=build(FluoroscopyParams, fluoroscopy, "fluoroscopy"),
            fragmentation=build(FragmentationParams, si["fragmentation"], "fragmentation"),
            lungs=build(LungParams, lungs, "lungs"),
            output=build(OutputParams, si["output"], "output"),
            laws=build(LawParams, si.get("laws", {}), "laws"),
        )


def build(cls: type[T], section: dict[str, Any], where: str) -> T:
    """Fill dataclass ``cls`` from an SI config section by field name (nested dataclasses too).

    Keys of ``section`` and fields of ``cls`` must match exactly: an unknown key is a config
    field no stage reads, a missing one a stage parameter no config field sets.
    """
    if not isinstance(section, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(section).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown, missing = sorted(set(section) - names), sorted(names - set(section))
    if unknown or missing:
        raise ConfigError(
            f"{where}: config and stage parameters differ "
            f"(no parameter for {unknown}, no config for {missing})"
        )
    values: dict[str, Any] = {}
    for name, value in section.items():
        kind = _dataclass_of(hints[name])
        if kind is not None and isinstance(value, dict):
            values[name] = build(kind, value, f"{where}.{name}")
        elif isinstance(value, list):
            item = _tuple_item_dataclass(hints[name])
            values[name] = tuple(
                build(item, v, f"{where}.{name}[{i}]") if item is not None else v for i, v in enumerate(value)
            )
        else:
            values[name] = value
    return cls(**values)


def _dataclass_of(annotation: Any) -> type | None:
    if dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        for arg in typing.get_args(annotation):
            found = _dataclass_of(arg)
            if found is not None:
                return found
    return None


def _tuple_item_dataclass(annotation: Any) -> type | None:
    """The dataclass D of a ``tuple[D, ...]`` field (None for tuples of plain values)."""
    if typing.get_origin(annotation) is tuple:
        args = typing.get_args(annotation)
        if args:
            return _dataclass_of(args[0])
    return None
