"""One runner per experiment kind: scenarios from an :class:`ExperimentSpec`, model quantities in SI.

Every run is a pce-sim scenario: the experiment's ``base`` with one group's overrides merged in
(nested mappings, as in a scenario file), ``grid.spacing_mm`` set to the experiment's
``grid_spacing_mm``, and no VTK or fluoroscopy PNG output. It is checked with
:func:`sim.run.preflight.preflight` (the checks ``pce-sim run`` makes) and run with
:func:`sim.run.pipeline.run_scenario`. From each run, :func:`run_quantities` takes (SI):

- ``leaked_volume_m3``: cement that left the bone through the venous exits (``leaked_volume_ml``);
  ``leaked_mass_kg`` = that volume x the cement's density (the preset's, or its override);
- ``needle_pressure_max_pa``: peak pressure on the needle tip's surface (``max_needle_pressure_kpa``);
  this pressure is gauge (relative to the atmosphere) and includes the static venous pressure the
  marrow drains against (``venous_pressure_pa``, CVP plus the venous network's drop, about 0.69 kPa
  by default); ``needle_pressure_rise_pa`` = max over the steps of (needle pressure - that venous
  pressure): the rise of the intraosseous pressure at the tip over its pre-injection value;
- ``intravertebral_pressure_rise_pa``: max over the steps of (the marrow's pressure - that venous
  pressure): what a transducer in the marrow away from the cement, zeroed before injection, reads
  (summary ``max_intravertebral_pressure_kpa``; set by the marrow-outflow law,
  :mod:`sim.physics.marrow_outflow`);
- ``syringe_pressure_max_pa``: peak syringe pressure = needle pressure + cannula drop
  (``max_syringe_pressure_mpa``); ``cannula_share`` = 1 - needle / syringe pressure at the step of
  the peak syringe pressure.

Kinds. ``leakage`` and ``intravertebral_pressure`` run their groups (the latter first sets the
injected volume to ``fill_fraction_of_body`` x the vertebral body's volume when given);
``syringe_pressure`` adds the full factorial ``sampling`` as groups and returns the sample of peak
syringe pressures and its medians before and after ``late_after_mixing_s``; ``cannula`` runs its
group for the cannula's share and computes the delivery-pressure reduction of a stepped cannula
(proximal bore widened by ``proximal_diameter_factor`` over a fraction f of the length) with
:func:`sim.physics.rheology.cannula_pressure_drop_pa` on the two segments in series, over the range
of f, for the scenario's cement and for a Newtonian fluid.
"""

from __future__ import annotations

import copy
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sim.core.config import Scenario, scenario_from_dict
from sim.core.errors import ConfigError
from sim.core.units import KPA_PA, ML_M3, MPA_PA
from sim.studies.sweep import set_dotted
from sim.validation.references import ExperimentSpec

Progress = Callable[[str], None]  # called with the label of each run before it starts

GROUP_QUANTITIES = (
    "leaked_volume_m3",
    "leaked_mass_kg",
    "injected_volume_m3",
    "needle_pressure_max_pa",
    "needle_pressure_rise_pa",
    "intravertebral_pressure_rise_pa",
    "venous_pressure_pa",
    "syringe_pressure_max_pa",
    "cannula_share",
)
SYRINGE_SAMPLE = "peak_syringe_pressure_pa"
EARLY_MEDIAN = "early.median_syringe_pressure_max_pa"
LATE_MEDIAN = "late.median_syringe_pressure_max_pa"
REDUCTION_BAND = "delivery_pressure_reduction"
REDUCTION_BAND_NEWTONIAN = "delivery_pressure_reduction_newtonian"


@dataclass
class RunRow:
    """One model run: its group, the inputs that distinguish it, its quantities (SI)."""

    group: str
    inputs: dict[str, Any]
    quantities: dict[str, float]
    stop_reason: str
    wall_time_s: float


@dataclass
class ModelOutput:
    """What an experiment's runs produced, in SI: named values, samples, bands, curves, the runs."""

    experiment: str
    kind: str
    grid_spacing_mm: float
    values: dict[str, float] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=dict)
    bands: dict[str, tuple[float, float]] = field(default_factory=dict)
    curves: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    runs: list[RunRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------- scenarios


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` merged in, section by section (neither is modified)."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _label(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def group_overrides(spec: ExperimentSpec) -> dict[str, dict[str, Any]]:
    """Every group's overrides: the written groups, then the sampling's factorial points."""
    groups = {name: copy.deepcopy(o) for name, o in spec.groups.items()}
    if spec.sampling:
        keys = list(spec.sampling)
        for combo in itertools.product(*(spec.sampling[k] for k in keys)):
            overrides: dict[str, Any] = {}
            for key, value in zip(keys, combo, strict=True):
                set_dotted(overrides, key, value)
            name = "_".join(_label(v) for v in combo)
            if name in groups:
                raise ConfigError(f"{spec.experiment}: sampling point {name!r} repeats a group name")
            groups[name] = overrides
    return groups


def body_volume_m3(level: str, size_scale: float = 1.0) -> float:
    """Volume of the vertebral body (cortex included) of ``level``, exactly as the bone builder shapes it."""
    from sim.physics.bone import BodyShape, load_vertebra

    dims = load_vertebra(level)
    outer = BodyShape.from_dims(
        size_scale * dims["width_m"],
        size_scale * dims["depth_m"],
        size_scale * dims["height_m"],
        dims["concavity_depth_fraction"],
        dims["concavity_radius_fraction"],
    )
    return float(outer.volume())


def scenarios(spec: ExperimentSpec, source: str) -> dict[str, Scenario]:
    """The validated scenario of every group (errors name the file, the group and the field)."""
    out: dict[str, Scenario] = {}
    forced = {
        "grid": {"spacing_mm": spec.grid_spacing_mm},
        "output": {"vtk": False, "fluoroscopy_png": False},
    }
    for name, overrides in group_overrides(spec).items():
        where = f"{source}: groups.{name}"
        data = merge(merge(spec.base, overrides), forced)
        data.setdefault("name", f"{spec.experiment}_{name}")
        if spec.fill_fraction_of_body is not None:
            first = scenario_from_dict(data, source=where)
            volume_m3 = spec.fill_fraction_of_body * body_volume_m3(
                first.patient.level, first.patient.size_scale
            )
            data = merge(data, {"injection": {"volume_ml": volume_m3 / ML_M3}})
        out[name] = scenario_from_dict(data, source=where)
    return out


def count_runs(spec: ExperimentSpec) -> int:
    """How many model runs the experiment makes."""
    return len(group_overrides(spec))


# ---------------------------------------------------------------------------- one run


def run_quantities(result: Any, density_kg_per_m3: float) -> dict[str, float]:
    """The validation quantities (SI) of one :class:`~sim.run.results.RunResult` (module docstring)."""
    s = result.summary
    inj = result.artifacts.injection
    pn = np.asarray(inj.needle_pressure_pa, dtype=np.float64)
    pm = np.asarray(inj.intravertebral_pressure_pa, dtype=np.float64)
    ps = np.asarray(inj.syringe_pressure_pa, dtype=np.float64)
    pv_steps = np.asarray(inj.exit_pressure_pa, dtype=np.float64)
    pv = pv_steps.mean(axis=1) if pv_steps.ndim == 2 and pv_steps.shape[1] else np.zeros_like(pn)
    leaked = float(s["leaked_volume_ml"]) * ML_M3
    if ps.size:
        i = int(np.argmax(ps))
        share = 1.0 - pn[i] / ps[i] if ps[i] > 0.0 else float("nan")
    else:
        share = float("nan")
    return {
        "leaked_volume_m3": leaked,
        "leaked_mass_kg": leaked * density_kg_per_m3,
        "injected_volume_m3": float(s["injected_volume_ml"]) * ML_M3,
        "needle_pressure_max_pa": float(s["max_needle_pressure_kpa"]) * KPA_PA,
        "needle_pressure_rise_pa": float(np.max(pn - pv)) if pn.size else 0.0,
        "intravertebral_pressure_rise_pa": float(np.nanmax(pm - pv)) if pm.size else 0.0,
        "venous_pressure_pa": float(pv.mean()) if pv.size else float("nan"),
        "syringe_pressure_max_pa": float(s["max_syringe_pressure_mpa"]) * MPA_PA,
        "cannula_share": float(share),
    }


def _inputs(scenario: Scenario) -> dict[str, Any]:
    c, inj, n = scenario.cement, scenario.injection, scenario.needle
    return {
        "preset": c.preset,
        "time_after_mixing_min": c.time_after_mixing_min,
        "rate_ml_per_s": inj.rate_ml_per_s,
        "volume_ml": inj.volume_ml,
        "tip_ap_fraction": n.tip_ap_fraction,
        "tip_lateral_fraction": n.tip_lateral_fraction,
        "cleft": scenario.patient.fracture_cleft.enabled,
    }


def run_group(name: str, scenario: Scenario, source: str) -> RunRow:
    """Preflight and run one group's scenario; its quantities (SI)."""
    from sim.run.pipeline import run_scenario
    from sim.run.preflight import preflight

    t0 = time.perf_counter()
    report = preflight(scenario, source=f"{source}: groups.{name}")
    density = float(report.stages.cement.density_kg_per_m3)
    result = run_scenario(scenario, stages=report.stages)
    return RunRow(
        group=name,
        inputs=_inputs(scenario),
        quantities=run_quantities(result, density),
        stop_reason=str(result.summary["stop_reason"]),
        wall_time_s=time.perf_counter() - t0,
    )


def _run_groups(spec: ExperimentSpec, source: str, progress: Progress | None) -> ModelOutput:
    out = ModelOutput(spec.experiment, spec.kind, spec.grid_spacing_mm)
    for name, scenario in scenarios(spec, source).items():
        if progress is not None:
            progress(name)
        row = run_group(name, scenario, source)
        out.runs.append(row)
        for key, value in row.quantities.items():
            out.values[f"{name}.{key}"] = value
    return out


# ---------------------------------------------------------------------------- runners by kind


def run_leakage(spec: ExperimentSpec, source: str, progress: Progress | None = None) -> ModelOutput:
    """Leaked cement per group (Habib et al. 2010): every group's quantities."""
    return _run_groups(spec, source, progress)


def run_intravertebral_pressure(
    spec: ExperimentSpec, source: str, progress: Progress | None = None
) -> ModelOutput:
    """Needle-tip pressure rise per group (Reidy et al. 2003, Li et al. 2015)."""
    out = _run_groups(spec, source, progress)
    if spec.fill_fraction_of_body is not None:
        out.notes.append(
            f"injected volume = {spec.fill_fraction_of_body:g} x the vertebral body volume "
            f"({out.runs[0].inputs['volume_ml']:.2f} ml)"
        )
    return out


def run_syringe_pressure(spec: ExperimentSpec, source: str, progress: Progress | None = None) -> ModelOutput:
    """Peak syringe pressures over the factorial sampling (Krebs et al. 2005), early and late medians."""
    out = _run_groups(spec, source, progress)
    peaks = [r.quantities["syringe_pressure_max_pa"] for r in out.runs]
    out.samples[SYRINGE_SAMPLE] = peaks
    split = float(spec.late_after_mixing_s or 0.0)
    late = [
        r.quantities["syringe_pressure_max_pa"]
        for r in out.runs
        if r.inputs["time_after_mixing_min"] * 60.0 > split
    ]
    early = [
        r.quantities["syringe_pressure_max_pa"]
        for r in out.runs
        if r.inputs["time_after_mixing_min"] * 60.0 <= split
    ]
    out.values[EARLY_MEDIAN] = float(np.median(early)) if early else float("nan")
    out.values[LATE_MEDIAN] = float(np.median(late)) if late else float("nan")
    out.notes.append(f"{len(early)} runs started at or before {split:g} s after mixing, {len(late)} after")
    return out


def stepped_cannula_reduction(
    cement: Any, flow_m3_s: float, inner_diameter_m: float, length_m: float, age_s: float,
    diameter_factor: float, proximal_fraction: float,
) -> float:  # fmt: skip
    """1 - dp(stepped) / dp(uniform): the proximal ``proximal_fraction`` of the length widened by
    ``diameter_factor``, the two segments in series (fully developed flow in each, entrance effects
    of the step neglected), each from :func:`sim.physics.rheology.cannula_pressure_drop_pa`."""
    from sim.physics.rheology import cannula_pressure_drop_pa

    f = float(proximal_fraction)
    if not 0.0 <= f <= 1.0:
        raise ConfigError(f"proximal_fraction = {f}: must be in [0, 1]")
    uniform = cannula_pressure_drop_pa(cement, flow_m3_s, inner_diameter_m, length_m, age_s)
    stepped = 0.0
    if f > 0.0:
        stepped += cannula_pressure_drop_pa(
            cement, flow_m3_s, diameter_factor * inner_diameter_m, f * length_m, age_s
        )
    if f < 1.0:
        stepped += cannula_pressure_drop_pa(cement, flow_m3_s, inner_diameter_m, (1.0 - f) * length_m, age_s)
    return 1.0 - stepped / uniform


def run_cannula(spec: ExperimentSpec, source: str, progress: Progress | None = None) -> ModelOutput:
    """The cannula's share of the syringe pressure (a run) and the stepped cannula's pressure
    reduction over the proximal fraction range (Baroud & Steffen 2005)."""
    from sim.core.parameters import RunParameters
    from sim.physics.bone import load_cannula
    from sim.physics.laws import law_class
    from sim.physics.rheology import (
        CementModel,
        cannula_pressure_drop_pa,
        equivalent_age_s,
        load_cement_preset,
        power_law_index,
    )

    out = _run_groups(spec, source, progress)
    cs = spec.cannula
    assert cs is not None  # the spec's validator guarantees it for this kind
    scenario = next(iter(scenarios(spec, source).values()))
    params = RunParameters.from_scenario(scenario)
    cement = law_class("rheology", params.laws.rheology).from_params(params.cement)
    d_in = float(load_cannula(int(params.needle.gauge))["inner_diameter_m"])
    length = float(params.needle.cannula_length_m)
    q = float(params.injection.rate_m3_per_s)
    t_mix, t_room = float(params.cement.time_after_mixing_s), float(params.cement.room_temperature_k)
    lo, hi = cs.proximal_fraction_range
    fractions = [float(f) for f in np.linspace(lo, hi, cs.points)]

    def curve(model: Any) -> list[float]:
        age = equivalent_age_s(model, t_mix, t_room)
        return [
            stepped_cannula_reduction(model, q, d_in, length, age, cs.proximal_diameter_factor, f)
            for f in fractions
        ]

    main = curve(cement)
    newtonian = curve(CementModel.newtonian(1.0))
    out.curves["proximal_fraction"] = {"x": fractions}
    out.curves[REDUCTION_BAND] = {
        "x": fractions,
        "y": main,
        "label": [f"{cement.name} (the experiment's cement)"],
    }
    out.curves[REDUCTION_BAND_NEWTONIAN] = {"x": fractions, "y": newtonian, "label": ["Newtonian fluid"]}
    for preset in cs.sensitivity_presets:  # the presets as shipped, same age after mixing
        model = load_cement_preset(preset)
        out.curves[f"{REDUCTION_BAND}_{preset}"] = {"x": fractions, "y": curve(model), "label": [preset]}
    out.bands[REDUCTION_BAND] = (min(main), max(main))
    out.bands[REDUCTION_BAND_NEWTONIAN] = (min(newtonian), max(newtonian))
    age0 = equivalent_age_s(cement, t_mix, t_room)
    out.values["cannula.uniform_pressure_drop_pa"] = float(
        cannula_pressure_drop_pa(cement, q, d_in, length, age0)
    )
    out.values["cannula.power_law_index"] = float(power_law_index(cement, age0))
    out.notes.append(
        f"cannula {d_in * 1e3:.2f} mm x {length * 1e3:.0f} mm, flow {q / ML_M3 * 60:.1f} ml/min, "
        f"cement '{cement.name}' at the syringe's age at injection start, power-law index "
        f"n = {out.values['cannula.power_law_index']:.2f}; proximal fraction {lo:g}-{hi:g} "
        f"({cs.points} points)"
    )
    if not math.isfinite(out.bands[REDUCTION_BAND][0]):
        raise ConfigError(f"{source}: the stepped cannula's reduction is not finite")
    return out


RUNNERS: dict[str, Callable[[ExperimentSpec, str, Progress | None], ModelOutput]] = {
    "leakage": run_leakage,
    "intravertebral_pressure": run_intravertebral_pressure,
    "syringe_pressure": run_syringe_pressure,
    "cannula": run_cannula,
}


def run_experiment(spec: ExperimentSpec, source: str, progress: Progress | None = None) -> ModelOutput:
    """Run the experiment with the runner of its kind."""
    return RUNNERS[spec.kind](spec, source, progress)


def model_keys(spec: ExperimentSpec) -> tuple[set[str], set[str], set[str]]:
    """The value, sample and band names the experiment will produce (checked before any run)."""
    values = {f"{g}.{q}" for g in group_overrides(spec) for q in GROUP_QUANTITIES}
    samples: set[str] = set()
    bands: set[str] = set()
    if spec.kind == "syringe_pressure":
        samples.add(SYRINGE_SAMPLE)
        values |= {EARLY_MEDIAN, LATE_MEDIAN}
    if spec.kind == "cannula":
        bands |= {REDUCTION_BAND, REDUCTION_BAND_NEWTONIAN}
        values |= {"cannula.uniform_pressure_drop_pa", "cannula.power_law_index"}
    return values, samples, bands
