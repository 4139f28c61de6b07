"""One run, end to end: Scenario -> rheology -> bone -> coupled injection/veins -> fragments -> lungs.

This is the only module that reads a validated :class:`~sim.core.config.Scenario`; it converts it to
SI once (``scenario.si()``), derives one independent random stream per stage from the patient
seed (``numpy.random.SeedSequence(seed).spawn``), calls each stage with plain SI arguments, and
collects a :class:`~sim.run.results.RunResult` whose summary is in report units (ml, s, kPa, MPa).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sim.core.config import Scenario
from sim.core.provenance import provenance
from sim.core.units import ML_M3, MM_M, MPA_PA
from sim.run.results import RunResult

# Independent random streams, one per stage (order fixed: adding a stage appends a stream).
STREAMS = ("bone", "veins", "fragmentation", "lungs", "transport")
LOBES = ("RUL", "RML", "RLL", "LUL", "LLL")


def stage_rngs(seed: int) -> dict[str, np.random.Generator]:
    """One seeded Generator per stage, spawned from the patient seed."""
    children = np.random.SeedSequence(seed).spawn(len(STREAMS))
    return {name: np.random.default_rng(child) for name, child in zip(STREAMS, children, strict=True)}


def run_scenario(scenario: Scenario, progress: Callable[[float], None] | None = None) -> RunResult:
    """Simulate one vertebroplasty; ``progress`` receives the injected fraction in [0, 1]."""
    from sim.physics.bone import build_vertebral_body, place_needle
    from sim.physics.fragment_transport import transport_fragments
    from sim.physics.injection import InjectionControl, run_injection
    from sim.physics.pulmonary_tree import build_pulmonary_tree
    from sim.physics.rheology import cement_model_from_si, equivalent_age_s
    from sim.physics.venous_network import build_venous_network
    from sim.run.venous_system import VenousSystem

    wall0 = time.perf_counter()
    si = scenario.si()
    rngs = stage_rngs(int(si["patient"]["seed"]))
    level = si["patient"]["level"]

    cement = cement_model_from_si(si["cement"])
    age0 = equivalent_age_s(cement, si["cement"]["time_after_mixing_s"], si["cement"]["room_temperature_k"])
    body_t = si["cement"]["body_temperature_k"]

    bone = build_vertebral_body(level, si["patient"], si["grid"]["spacing_m"], rngs["bone"])
    needle = place_needle(bone, si["needle"])
    network = build_venous_network(level, si["veins"], rngs["veins"])
    venous = VenousSystem(
        network,
        bone.exits,
        cement=cement,
        cement_age_at_start_s=age0,
        body_temperature_k=body_t,
        fluoroscopy_si=si["fluoroscopy"],
        fragmentation_si=si["fragmentation"],
        stop_after_leak_s=si["injection"]["stop_after_leak_s"],
        rng=rngs["fragmentation"],
        bone=bone,
        room_temperature_k=si["cement"]["room_temperature_k"],
    )
    inj_si = si["injection"]
    control = InjectionControl(
        mode=inj_si["mode"],
        rate_m3_per_s=inj_si["rate_m3_per_s"],
        max_syringe_pressure_pa=inj_si["max_syringe_pressure_pa"],
        target_volume_m3=inj_si["volume_m3"],
        max_duration_s=inj_si["max_duration_s"],
        age_at_start_s=age0,
        body_temperature_k=body_t,
        room_temperature_k=si["cement"]["room_temperature_k"],
        snapshot_interval_s=si["output"]["vtk_interval_s"] if si["output"]["vtk"] else None,
    )
    injection = run_injection(
        bone,
        needle,
        cement,
        si["veins"]["marrow_viscosity_pa_s"],
        control,
        venous,
        method=si["grid"]["method"],
        cfl=si["grid"]["cfl"],
        pressure_solver=si["grid"]["pressure_solver"],
        progress=progress,
    )
    venous.finish(injection.end_time_s, inj_si["follow_up_s"])

    # The tree carries the same cardiac output and blood as the venous side.
    lungs_si = {
        **si["lungs"],
        "cardiac_output_m3_per_s": si["veins"]["cardiac_output_m3_per_s"],
        "blood_viscosity_pa_s": si["veins"]["blood_viscosity_pa_s"],
    }
    tree = build_pulmonary_tree(lungs_si, rngs["lungs"])
    transport = transport_fragments(
        venous.fragments, venous.flow_snapshot(), tree, cement, body_t, lungs_si, rngs["transport"]
    )

    summary = _summary(injection, venous, transport)
    summary["wall_time_s"] = time.perf_counter() - wall0
    result = RunResult(
        scenario=scenario,
        summary=summary,
        time_series=_time_series(injection, venous),
        emboli=_emboli_table(transport),
        fragments=_fragment_table(venous.fragments),
        fields={
            "cement_fraction": injection.cement_fraction.astype(np.float32),
            "arrival_time_s": injection.arrival_time_s.astype(np.float32),
            "pressure_pa": injection.pressure_pa.astype(np.float32),
            "porosity": bone.porosity.astype(np.float32),
        },
        provenance=provenance(int(si["patient"]["seed"])),
        artifacts={
            "bone": bone,
            "needle": needle,
            "injection": injection,
            "venous": venous,
            "tree": tree,
            "transport": transport,
        },
    )
    return result


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


def _summary(injection: Any, venous: Any, transport: Any) -> dict[str, Any]:
    """Scalar metrics of a run in report units (ml, s, kPa, MPa, mm^3)."""
    from sim.physics.fragment_set import LODGED, PASSED_DISTAL

    vs = venous.summary()
    emb = transport.emboli
    lodged = emb["status"] == LODGED
    lobe_names = transport.metrics.lobe_names
    right = np.isin(emb["lobe"], [i for i, n in enumerate(lobe_names) if n.startswith("R")])
    t = injection.times_s
    vol = injection.injected_volume_m3
    det = vs["detection_time_s"]
    after = float(vol[-1] - np.interp(det, t, vol, left=0.0)) if det is not None and len(t) else 0.0
    out: dict[str, Any] = {
        "stop_reason": injection.stop_reason,
        "injected_volume_ml": injection.injected_m3 / ML_M3,
        "injection_duration_s": float(injection.end_time_s),
        "leak_onset_s": _nan(vs["leak_onset_s"]),
        "detection_time_s": _nan(det),
        "stop_time_s": _nan(vs["stop_time_s"]),
        "injected_after_detection_ml": after / ML_M3,
        "leaked_volume_ml": vs["leaked_cement_m3"] / ML_M3,
        "leaked_basivertebral_ml": vs.get("leaked_basivertebral_m3", 0.0) / ML_M3,
        "leaked_anterior_ml": vs.get("leaked_anterior_m3", 0.0) / ML_M3,
        "leaked_lateral_ml": vs.get("leaked_lateral_m3", 0.0) / ML_M3,
        "leaked_to_azygos_ml": vs["route_azygos_m3"] / ML_M3,
        "leaked_to_ivc_ml": vs["route_ivc_m3"] / ML_M3,
        "leaked_in_plexus_ml": vs["route_plexus_m3"] / ML_M3,
        "leaked_in_segmental_ml": vs["route_segmental_m3"] / ML_M3,
        "marrow_leaked_ml": vs["leaked_marrow_m3"] / ML_M3,
        "cement_in_bone_ml": injection.cement_in_bone_m3 / ML_M3,
        "cement_in_veins_ml": vs["vein_cement_m3"] / ML_M3,
        "max_needle_pressure_kpa": float(np.max(injection.needle_pressure_pa, initial=0.0)) / 1e3,
        "max_syringe_pressure_mpa": float(np.max(injection.syringe_pressure_pa, initial=0.0)) / MPA_PA,
        "n_fragments": int(vs["fragments_shed"]),
        "fragment_volume_ml": vs["fragment_volume_m3"] / ML_M3,
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
        mass_balance_error=max(float(injection.max_mass_balance_error), float(vs["mass_balance_error"])),
    )
    return out


def _time_series(injection: Any, venous: Any) -> dict[str, np.ndarray]:
    """Injection time series in report units, with venous quantities interpolated onto its times."""
    t = injection.times_s
    vts = venous.time_series()

    def on_t(key: str) -> np.ndarray:
        if key not in vts or len(vts[key]) == 0:
            return np.zeros_like(t)
        return np.interp(t, vts["t_s"], vts[key])

    return {
        "t_s": t,
        "injected_volume_ml": injection.injected_volume_m3 / ML_M3,
        "injection_rate_ml_per_s": injection.injection_rate_m3_s / ML_M3,
        "needle_pressure_kpa": injection.needle_pressure_pa / 1e3,
        "syringe_pressure_mpa": injection.syringe_pressure_pa / MPA_PA,
        "cement_in_bone_ml": injection.cement_in_bone_series_m3 / ML_M3,
        "leaked_volume_ml": injection.cement_leaked_series_m3 / ML_M3,
        "marrow_leaked_ml": injection.marrow_leaked_series_m3 / ML_M3,
        "cement_in_veins_ml": on_t("vein_cement_m3") / ML_M3,
        "n_fragments": np.floor(on_t("fragments_shed")),
        "visible_extravertebral_mm3": on_t("visible_m3") / MM_M**3,
    }


def _emboli_table(transport: Any) -> dict[str, np.ndarray]:
    """Emboli table (one row per fragment that reached the lungs or stopped) in report units."""
    from sim.physics.fragment_set import STATUS_NAMES

    emb = transport.emboli
    names = transport.metrics.lobe_names
    lobe = np.array([names[i] if i >= 0 else "" for i in emb["lobe"]], dtype=object)
    status = np.array([STATUS_NAMES.get(int(s), str(s)) for s in emb["status"]], dtype=object)
    return {
        "fragment_id": emb["fragment_id"],
        "status": status,
        "volume_mm3": emb["volume_m3"] / MM_M**3,
        "length_mm": emb["length_m"] / MM_M,
        "diameter_mm": emb["diameter_m"] / MM_M,
        "branched": emb["branched"],
        "saddle": emb["saddle"],
        "vessel_id": emb["vessel_id"],
        "vessel_diameter_mm": emb["vessel_diameter_m"] / MM_M,
        "lobe": lobe,
        "order": emb["order"],
        "time_s": emb["time_s"],
        "heart_arrival_s": emb["heart_arrival_s"],
        "x_mm": emb["x_m"] / MM_M,
        "y_mm": emb["y_m"] / MM_M,
        "z_mm": emb["z_m"] / MM_M,
    }


def _fragment_table(fragments: Any) -> dict[str, np.ndarray]:
    return {
        "fragment_id": np.arange(len(fragments)),
        "birth_time_s": fragments.birth_time_s,
        "edge": fragments.edge,
        "diameter_mm": fragments.diameter_m / MM_M,
        "length_mm": fragments.length_m / MM_M,
        "volume_mm3": fragments.volume_m3 / MM_M**3,
        "cure_age_s": fragments.cure_age_s,
        "branched": fragments.branched,
        "status": fragments.status,
    }
