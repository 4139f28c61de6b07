"""One run, end to end: Scenario -> rheology -> bone -> coupled injection/veins -> fragments -> lungs.

This is the only module that reads a validated :class:`~sim.core.config.Scenario`; it converts it to
SI once (``scenario.si()``), derives one independent random stream per stage from the patient
seed (``numpy.random.SeedSequence(seed).spawn``), calls each stage with plain SI arguments, and
collects a :class:`~sim.run.results.RunResult` whose summary is in report units (ml, s, kPa, MPa).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sim.core.blas_threads import with_one_blas_thread
from sim.core.config import Scenario
from sim.core.geometry_data import load_geometry_yaml
from sim.core.grid import EXIT_KINDS, BoneGrid, Needle
from sim.core.parameters import RunParameters
from sim.core.provenance import provenance
from sim.core.units import KPA_PA, ML_M3, MM_M, MPA_PA, report_units
from sim.physics.bone import build_vertebral_body, place_needle
from sim.physics.cure_clock import CureClock
from sim.physics.fragment_set import LODGED, PASSED_DISTAL, STATUS_NAMES, FragmentSet
from sim.physics.fragment_tracks import TransitModel
from sim.physics.fragment_transport import DiameterMargin, TransportResult, transport_fragments
from sim.physics.injection import InjectionResult, InjectionSolver, StepPlan
from sim.physics.injection_control import InjectionControl, StopPolicy
from sim.physics.laws import law_class
from sim.physics.pulmonary_tree import PulmonaryTree, build_pulmonary_tree
from sim.physics.rheology import CementModel
from sim.physics.venous_network import VenousNetwork, build_venous_network
from sim.run.branching import copy_run_state, differs_only_in_stop
from sim.run.coupling import Branch, CoupledOutcome, cut_and_stop, run_coupled, stop_now
from sim.run.recorder import RunRecorder
from sim.run.results import RunArtifacts, RunResult
from sim.run.venous_system import VenousSummary, VenousSystem

# Independent random streams, one per stage (order fixed: adding a stage appends a stream).
STREAMS = ("veins", "fragmentation", "lungs", "transport", "fluoroscopy")  # the bone has named streams


def stage_rngs(seed: int) -> dict[str, np.random.Generator]:
    """One seeded Generator per stage, spawned from the patient seed."""
    children = np.random.SeedSequence(seed).spawn(len(STREAMS))
    return {name: np.random.default_rng(child) for name, child in zip(STREAMS, children, strict=True)}


@dataclass
class Stages:
    """Every stage object of a run, built and checked before its first time step."""

    params: RunParameters
    cement: CementModel
    clock: CureClock
    bone: BoneGrid
    needle: Needle
    network: VenousNetwork
    venous: VenousSystem
    solver: InjectionSolver
    tree: PulmonaryTree
    lodging: DiameterMargin
    rngs: dict[str, np.random.Generator]


Guard = Callable[[str], AbstractContextManager[None]]


@with_one_blas_thread
def build_stages(scenario: Scenario, guard: Guard | None = None) -> Stages:
    """Build the stages of ``scenario`` in the order the run uses them, with its seeded streams.

    ``guard(stage)`` (optional) wraps each build, so the preflight can turn a refusal into one line
    naming the fields that feed that stage (stages: cement, bone, needle, veins, venous_system,
    injection, lungs).
    """
    g = guard or (lambda _stage: nullcontext())
    params = RunParameters.from_scenario(scenario)
    rngs = stage_rngs(int(params.patient.seed))
    laws = params.laws
    with g("cement"):
        cement = law_class("rheology", laws.rheology).from_params(params.cement)
        c = params.cement
        clock = CureClock.for_cement(
            cement, c.time_after_mixing_s, c.room_temperature_k, c.body_temperature_k
        )
    with g("bone"):
        permeability = law_class("permeability", laws.permeability).from_params(params.patient)
        if params.patient.anatomy == "parametric":
            bone = build_vertebral_body(params.patient, params.grid.spacing_m, permeability)
        else:
            from sim.anatomy.ct_bone import build_ct_vertebral_body  # nibabel only for CT scenarios

            bone = build_ct_vertebral_body(params.patient, params.grid.spacing_m, permeability)
    with g("needle"):
        needle = place_needle(bone, params.needle)
    with g("veins"):
        ct_meta = bone.meta.get("ct", {})
        network = build_venous_network(
            params.patient.level, params.veins, rngs["veins"], ct_meta.get("ivc_diameter_m")
        )
    with g("lungs"):
        lodging = law_class("lodging", laws.lodging).from_params(params.lungs)
    with g("venous_system"):
        venous = VenousSystem(
            network,
            bone.exits,
            cement,
            clock,
            params.fluoroscopy,
            law_class("fragmentation", laws.fragmentation).from_params(params.fragmentation),
            rngs["fragmentation"],
            bone=bone,
            dynamics=params.veins.dynamics,
            transit=TransitModel(params.lungs.slip_factor, lodging, rngs["fluoroscopy"]),
        )
    with g("injection"):
        solver = InjectionSolver(
            bone,
            needle,
            cement,
            clock,
            params.veins.marrow_viscosity_pa_s,
            InjectionControl.from_params(params.injection),
            venous,
            method=params.grid.method,
            cfl=params.grid.cfl,
            pressure_solver=params.grid.pressure_solver,
            exchange=law_class("exchange", laws.exchange).from_params(),
            vein_fluid_viscosity_pa_s=params.veins.blood_viscosity_pa_s,
            marrow_outflow=law_class("marrow_outflow", laws.marrow_outflow).from_params(params.patient),
        )
    with g("lungs"):
        tree = build_pulmonary_tree(
            params.lungs, rngs["lungs"], bone.meta.get("ct", {}).get("lobe_volumes_m3")
        )
    return Stages(params, cement, clock, bone, needle, network, venous, solver, tree, lodging, rngs)


def run_scenario(
    scenario: Scenario, progress: Callable[[float], None] | None = None, stages: Stages | None = None
) -> RunResult:
    """Simulate one vertebroplasty; ``progress`` receives the injected fraction in [0, 1].

    ``stages`` are the objects :func:`build_stages` (or the preflight) built for this scenario; they
    are built here when not given. Each object holds state, so a ``Stages`` serves one run.
    """
    return run_with_branches(scenario, {}, progress, stages)[0]


@with_one_blas_thread
def run_with_branches(
    scenario: Scenario,
    branches: Mapping[str, Scenario],
    progress: Callable[[float], None] | None = None,
    stages: Stages | None = None,
) -> tuple[RunResult, dict[str, RunResult]]:
    """Run ``scenario`` and, on the way, the runs of ``branches`` that stop before it ends.

    A branch is the same scenario with another ``injection.stop_after_leak_s`` (anything else is
    refused). Until its stop policy fires, its run is this run: the policy is polled before every
    step and changes nothing until then. At the poll where it fires, the whole run state is copied
    (:func:`sim.run.branching.copy_run_state`) and the branch is finished from the copy exactly as
    its own run would be (stop, venous follow-up, fragment transport), while this run goes on. The
    branch's results are bit-identical to running it alone (tests/test_arm_branching.py), except
    ``wall_time_s``, which counts only the branch's own work after the copy.

    Returns this run's result and the results of the branches that fired, by key; a branch that
    did not fire stopped at or after this run's end, and is this run by the stop-policy contract.
    """
    wall0 = time.perf_counter()
    st = stages or build_stages(scenario)
    params, venous = st.params, st.venous
    out = params.output
    recorder = RunRecorder(bone_interval_s=out.vtk_interval_s if out.vtk else None)
    fired: dict[str, RunResult] = {}
    hooks: list[Branch] = []
    for key, other in branches.items():
        differs_only_in_stop(scenario, other)
        other_params = RunParameters.from_scenario(other)

        def on_stop(
            t: float, key: str = key, other: Scenario = other, p: RunParameters = other_params
        ) -> None:
            w0 = time.perf_counter()
            st_b, rec_b = copy_run_state((st, recorder))
            st_b.params = p
            coupled = stop_now(st_b.solver, st_b.venous, rec_b, p.injection.follow_up_s, t)
            fired[key] = _finish_run(other, st_b, rec_b, coupled, w0)

        def on_cut(
            plan: StepPlan,
            t: float,
            key: str = key,
            other: Scenario = other,
            p: RunParameters = other_params,
        ) -> None:
            w0 = time.perf_counter()
            st_b, rec_b, plan_b = copy_run_state((st, recorder, plan))
            st_b.params = p
            coupled = cut_and_stop(st_b.solver, st_b.venous, rec_b, p.injection.follow_up_s, plan_b, t)
            fired[key] = _finish_run(other, st_b, rec_b, coupled, w0)

        hooks.append(Branch(StopPolicy.from_params(other_params.stop), on_stop, on_cut))
    coupled = run_coupled(
        st.solver,
        venous,
        StopPolicy.from_params(params.stop),
        recorder,
        params.injection.follow_up_s,
        progress,
        hooks,
    )
    return _finish_run(scenario, st, recorder, coupled, wall0), fired


def _finish_run(
    scenario: Scenario, st: Stages, recorder: RunRecorder, coupled: CoupledOutcome, wall0: float
) -> RunResult:
    """Fragment transport to the lungs and the run's result, once the coupled run has ended."""
    params, venous = st.params, st.venous
    injection = coupled.injection
    transport = transport_fragments(
        venous.fragments, venous.flow_snapshot(), st.tree, st.cement, st.clock, params.lungs,
        st.rngs["transport"], st.lodging,
    )  # fmt: skip

    summary = _summary(injection, venous.summary(), coupled.stop_time_s, transport)
    h_mm = params.grid.spacing_m / MM_M
    summary["grid_spacing_mm"] = h_mm
    seen = bool(np.isfinite(summary["detection_time_s"]))
    summary["leaked_volume_rel_error_estimate"], summary["leaked_volume_error_case"] = (
        leaked_volume_error_estimate(h_mm, summary["leaked_volume_ml"], seen)
    )
    summary["wall_time_s"] = time.perf_counter() - wall0
    bone = st.bone
    return RunResult(
        scenario=scenario,
        summary=summary,
        time_series=_time_series(injection, recorder),
        emboli=emboli_table(transport),
        fragments=_fragment_table(venous.fragments),
        fields={
            "cement_fraction": injection.cement_fraction.astype(np.float32),
            "arrival_time_s": injection.arrival_time_s.astype(np.float32),
            "pressure_pa": injection.pressure_pa.astype(np.float32),
            "porosity": bone.porosity.astype(np.float32),
        },
        provenance={**provenance(int(params.patient.seed)), "input_files": scenario.input_file_digests()},
        artifacts=RunArtifacts(
            bone=bone,
            needle=st.needle,
            injection=injection,
            venous=venous,
            recording=recorder,
            tree=st.tree,
            transport=transport,
        ),
    )


def leaked_volume_error_estimate(
    spacing_mm: float, leaked_ml: float, seen: bool | None = None
) -> tuple[float, str]:
    """Relative discretisation error of a leaked volume at this spacing, from the convergence study
    (geometries/convergence.yaml), and the study case it was taken from.

    The estimate is |leaked_c(h) - leaked_c(h_ref)| / leaked_c(h_ref) of the study case c in the run's
    situation whose leak at h is nearest to ``leaked_ml`` on a log scale (the error depends on the size
    of the leak); h_ref is the case's finest grid (0.375 mm, 0.25 mm for the cases the study refines
    once more), and a case counts only at spacings coarser than its own h_ref. The situation is
    whether fluoroscopy saw the leak (``seen``) on this grid: a run that was seen and stopped is
    compared with cases seen on this grid, whose leak ends at a detection that the finer grids
    reproduce; a run that was not seen with cases not seen, whose error includes a finer grid seeing a
    threshold leak and stopping (the study's ``detection_time_s``). ``seen=None``, or no
    case in that situation, compares with every case. NaN (and '') where no case has this spacing and a
    finer one, or without a leak."""
    study = load_geometry_yaml("convergence.yaml")
    if not leaked_ml > 0.0:
        return float("nan"), ""

    missing = object()

    def at(values: dict, h: float) -> Any:
        """The table's value at spacing h (its keys are floats written in YAML), or ``missing``."""
        return next((v for k, v in values.items() if abs(float(k) - h) < 1e-9), missing)

    cases = {}
    for name, values in study["leaked_volume_ml"].items():
        h_ref = min(float(k) for k in values)  # the case's finest grid
        at_h, ref = at(values, spacing_mm), at(values, h_ref)
        if spacing_mm > h_ref + 1e-9 and at_h is not missing:
            cases[name] = (float(at_h), float(ref))
    detection = study.get("detection_time_s", {})
    if seen is not None:
        detected_at_h = {name: at(detection.get(name, {}), spacing_mm) for name in cases}
        alike = {
            name: v
            for name, v in cases.items()
            if detected_at_h[name] is not missing and (detected_at_h[name] is not None) == seen
        }
        cases = alike or cases
    if not cases:
        return float("nan"), ""
    name = min(cases, key=lambda c: abs(math.log(cases[c][0] / leaked_ml)))
    at_h, ref = cases[name]
    return abs(at_h - ref) / ref, name


def write_run(result: RunResult, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Write a run folder (tables, summary, and the VTK / PNG files the scenario asks for)."""
    writers = []
    out = result.scenario.output
    if out.vtk:
        from sim.output.vtk import write_run_vtk

        writers.append(lambda d: write_run_vtk(d / "vtk", result))
    if out.fluoroscopy_png:
        from sim.output.images import write_fluoroscopy_pngs

        writers.append(lambda d: write_fluoroscopy_pngs(d, result))
    return result.write(out_dir, overwrite=overwrite, extra_writers=writers)


def _nan(value: Any) -> float:
    return float("nan") if value is None else float(value)


def _summary(
    injection: InjectionResult, vs: VenousSummary, stop_time_s: float | None, transport: TransportResult
) -> dict[str, Any]:
    """Scalar metrics of a run in report units (ml, s, kPa, MPa, mm^3)."""
    emb = transport.emboli
    lodged = emb["status"] == LODGED
    lobe_names = transport.metrics.lobe_names
    right = np.isin(emb["lobe"], [i for i, n in enumerate(lobe_names) if n.startswith("R")])
    t = injection.times_s
    vol = injection.injected_volume_m3
    det = vs.detection_time_s
    after = float(vol[-1] - np.interp(det, t, vol, left=0.0)) if det is not None and len(t) else 0.0
    out: dict[str, Any] = {
        "stop_reason": injection.stop_reason,
        "injected_volume_ml": injection.injected_m3 / ML_M3,
        "injection_duration_s": float(injection.end_time_s),
        "leak_onset_s": _nan(vs.leak_onset_s),
        "detection_time_s": _nan(det),
        "peak_visible_leak_mm3": vs.peak_visible_m3 / MM_M**3,
        "detection_shift_per_percent_s": _nan(vs.detection_shift_per_percent_s),
        "stop_time_s": _nan(stop_time_s),
        "injected_after_detection_ml": after / ML_M3,
        "leaked_volume_ml": vs.leaked_cement_m3 / ML_M3,
        **{f"leaked_{kind}_ml": vs.leaked_by_exit_kind_m3.get(kind, 0.0) / ML_M3 for kind in EXIT_KINDS},
        "leaked_to_azygos_ml": vs.leaked_by_route_m3["azygos"] / ML_M3,
        "leaked_to_ivc_ml": vs.leaked_by_route_m3["ivc"] / ML_M3,
        "leaked_in_plexus_ml": vs.leaked_by_route_m3["plexus"] / ML_M3,
        "leaked_in_segmental_ml": vs.leaked_by_route_m3["segmental"] / ML_M3,
        "marrow_leaked_ml": vs.leaked_marrow_m3 / ML_M3,
        "cement_in_bone_ml": injection.cement_in_bone_m3 / ML_M3,
        # held in the intraosseous vein lumens at the end; plus the leak, what those veins took from the bone
        "cement_in_intraosseous_veins_ml": injection.cement_in_lumens_m3 / ML_M3,
        "cement_in_veins_ml": vs.vein_cement_m3 / ML_M3,
        "max_needle_pressure_kpa": float(np.max(injection.needle_pressure_pa, initial=0.0)) / KPA_PA,
        "max_intravertebral_pressure_kpa": float(np.nanmax(injection.intravertebral_pressure_pa, initial=0.0))
        / KPA_PA,
        "max_syringe_pressure_mpa": float(np.max(injection.syringe_pressure_pa, initial=0.0)) / MPA_PA,
        "n_fragments": int(vs.fragments_shed),
        "fragment_volume_ml": vs.fragment_volume_m3 / ML_M3,
        "n_emboli": int(lodged.sum()),
        "embolised_volume_ml": float(emb["volume_m3"][lodged].sum()) / ML_M3,
        "n_emboli_right": int((lodged & right).sum()),
        "n_emboli_left": int((lodged & ~right & (emb["lobe"] >= 0)).sum()),
        "n_passed_distal": int((emb["status"] == PASSED_DISTAL).sum()),
    }
    for i, name in enumerate(lobe_names):
        out[f"emboli_{name}"] = int((lodged & (emb["lobe"] == i)).sum())
    m = transport.metrics
    out.update(
        perfusion_loss_fraction=float(m.perfusion_lost_fraction),
        pvr_rise_fraction=float(m.pvr_rise_fraction),
        qanadli_index=int(m.qanadli_index),
        n_occluded_vessels=int(m.n_occluded),
        mass_balance_error=max(float(injection.max_mass_balance_error), float(vs.mass_balance_error)),
    )
    return out


def _time_series(injection: InjectionResult, recorder: RunRecorder) -> dict[str, np.ndarray]:
    """Injection time series in report units, with venous quantities interpolated onto its times."""
    t = injection.times_s
    vts = recorder.venous_series()

    def on_t(key: str) -> np.ndarray:
        if key not in vts or len(vts[key]) == 0:
            return np.zeros_like(t)
        return np.interp(t, vts["t_s"], vts[key])

    return {
        "t_s": t,
        "injected_volume_ml": injection.injected_volume_m3 / ML_M3,
        "injection_rate_ml_per_s": injection.injection_rate_m3_s / ML_M3,
        "needle_pressure_kpa": injection.needle_pressure_pa / KPA_PA,
        "intravertebral_pressure_kpa": injection.intravertebral_pressure_pa / KPA_PA,
        "syringe_pressure_mpa": injection.syringe_pressure_pa / MPA_PA,
        "cement_in_bone_ml": injection.cement_in_bone_series_m3 / ML_M3,
        "leaked_volume_ml": injection.cement_leaked_series_m3 / ML_M3,
        "marrow_leaked_ml": injection.marrow_leaked_series_m3 / ML_M3,
        "cement_in_veins_ml": on_t("vein_cement_m3") / ML_M3,
        "n_fragments": np.floor(on_t("fragments_shed")),
        "visible_extravertebral_mm3": on_t("visible_m3") / MM_M**3,
    }


# columns of the emboli table (transport's SI names, in file order); lobe and status as labels
EMBOLI_COLUMNS = (
    "fragment_id", "status", "volume_m3", "length_m", "diameter_m", "branched", "saddle", "vessel_id",
    "vessel_diameter_m", "lobe", "order", "time_s", "heart_arrival_s", "x_m", "y_m", "z_m",
)  # fmt: skip
FRAGMENT_COLUMNS = (
    "birth_time_s",
    "edge",
    "diameter_m",
    "length_m",
    "volume_m3",
    "cure_age_s",
    "branched",
    "status",
)


def emboli_table(transport: TransportResult) -> dict[str, np.ndarray]:
    """Emboli table (one row per fragment that reached the lungs or stopped) in report units."""
    emb = dict(transport.emboli)
    names = transport.metrics.lobe_names
    emb["lobe"] = np.array([names[i] if i >= 0 else "" for i in emb["lobe"]], dtype=object)
    emb["status"] = np.array([STATUS_NAMES.get(int(s), str(s)) for s in emb["status"]], dtype=object)
    return dict(report_units(k, emb[k]) for k in EMBOLI_COLUMNS)


def _fragment_table(fragments: FragmentSet) -> dict[str, np.ndarray]:
    cols = fragments.as_columns()
    return {"fragment_id": np.arange(len(fragments))} | dict(
        report_units(k, cols[k]) for k in FRAGMENT_COLUMNS
    )
