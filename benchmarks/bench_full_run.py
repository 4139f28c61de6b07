"""Full run end to end, second-process start-up (numba cache) and a profile of where the time goes.

Full run: the default L1 scenario at the default spacing (``DEFAULT_SPACING_MM``) with 5 ml at 0.1
ml/s injected to the end (``stop_after_leak_s: null``), venous coupling (columns, fluoroscopy,
fragmentation) and fragment transport to the lungs included, VTK off;
``sim.run.pipeline.run_scenario`` timed after a warm-up run (1 mm, 2 ml: JIT cache load and first
AMG use), min of N, wall and process CPU time. Target: <= 5 s (issue 15).

Start-up: a fresh ``python`` process importing the pipeline and running a tiny scenario
(2 mm, 0.2 ml), timed from launch to exit, once with the numba on-disk cache populated
(``cache=True``: the normal second process) and once with ``NUMBA_CACHE_DIR`` pointed at an
empty folder (every kernel compiled from scratch). ``ratio`` = cold / warm.

Profile: cProfile of one full run; cumulative time of the stage entry points and the top
functions by own time.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sim.core.config import DEFAULT_SPACING_MM

TARGET_S = 5.0  # issue 15: the 5 ml default run at the default spacing, warm, on 2 cores
FULL_RUN = {
    "grid": {"spacing_mm": DEFAULT_SPACING_MM},
    "injection": {"volume_ml": 5.0, "rate_ml_per_s": 0.1, "stop_after_leak_s": None},
    "output": {"vtk": False},
}
WARMUP = {  # large enough that the AMG path (pyamg import, first hierarchy) runs before timing
    "grid": {"spacing_mm": 1.0},
    "injection": {"volume_ml": 2.0, "rate_ml_per_s": 0.1, "stop_after_leak_s": None, "follow_up_s": 5.0},
    "output": {"vtk": False},
}
TINY = {
    "grid": {"spacing_mm": 2.0},
    "injection": {"volume_ml": 0.2, "rate_ml_per_s": 0.1, "stop_after_leak_s": None, "follow_up_s": 5.0},
    "output": {"vtk": False},
}
# (label, file suffix, function name) of the stage entry points reported by the profile
STAGES = (
    ("run_scenario (total)", "sim/run/pipeline.py", "run_scenario"),
    ("bone grid + needle", "sim/physics/bone.py", "build_vertebral_body"),
    ("venous network build", "sim/physics/venous_network.py", "build_venous_network"),
    ("injection driver", "sim/physics/injection.py", "drive_injection"),
    ("  pressure: linear solves", "sim/physics/pressure.py", "solve"),
    ("    AMG setup + preconditioner", "sim/physics/pressure.py", "_preconditioner"),
    ("    CG iterations", "sim/physics/pressure.py", "_cg"),
    ("  pressure: front assembly", "sim/physics/pressure.py", "assemble_front"),
    ("  Darcy speed per cell", "sim/physics/injection.py", "cell_darcy_speed"),
    ("  transport kernel", "sim/physics/cement_transport.py", "transport_step"),
    ("  front time step", "sim/physics/cement_transport.py", "front_time_step"),
    ("  venous coupling (accept_flux)", "sim/run/venous_system.py", "accept_flux"),
    ("    blood-flow re-solves", "sim/physics/venous_network.py", "solve_blood_flow"),
    ("venous follow-up (relax)", "sim/run/venous_system.py", "relax"),
    ("pulmonary tree build", "sim/physics/pulmonary_tree.py", "build_pulmonary_tree"),
    ("fragment transport + lodging", "sim/physics/fragment_transport.py", "transport_fragments"),
)


def scenario(overrides: dict[str, Any]):
    from sim.core.config import scenario_from_dict

    return scenario_from_dict({**overrides, "name": "bench"})


def full_run(repeat: int) -> dict[str, Any]:
    from sim.bench import min_wall_cpu
    from sim.run.pipeline import run_scenario

    run_scenario(scenario(WARMUP))  # JIT cache load / compile, first AMG use
    sc = scenario(FULL_RUN)
    wall, cpu, res = min_wall_cpu(lambda: run_scenario(sc), repeat)
    inj = res.artifacts.injection
    st = inj.solver_stats
    s = res.summary
    return {
        "case": f"L1, {DEFAULT_SPACING_MM:g} mm, 5 ml at 0.1 ml/s, to the end",
        "wall_s": wall,
        "cpu_s": cpu,
        "steps": int(inj.n_steps),
        "porous_cells": int(st["n_cells"]),
        "injection_s": float(st["wall_time_s"]),
        "pressure_s": float(st["pressure_time_s"]),
        "transport_s": float(st["transport_time_s"]),
        "amg_setups": int(st["n_setups"]),
        "leaked_ml": float(s["leaked_volume_ml"]),
        "fragments": int(s["n_fragments"]),
        "emboli": int(s["n_emboli"]),
        "mass_balance_error": float(s["mass_balance_error"]),
    }


_STARTUP_CODE = (
    "import json, sys; from sim.core.config import scenario_from_dict; "
    "from sim.run.pipeline import run_scenario; "
    "run_scenario(scenario_from_dict(json.loads(sys.argv[1])))"
)


def startup_time(cold: bool) -> float:
    """Seconds from launching a fresh interpreter to the end of a tiny run."""
    import json

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with tempfile.TemporaryDirectory(prefix="pce-numba-") as tmp:
        if cold:
            env["NUMBA_CACHE_DIR"] = tmp
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", _STARTUP_CODE, json.dumps(TINY)], cwd=root, env=env,
            capture_output=True, text=True, timeout=1800,
        )  # fmt: skip
        wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"start-up probe failed:\n{proc.stderr[-2000:]}")
    return wall


def profile_run(overrides: dict[str, Any]) -> dict[str, Any]:
    """cProfile one run; stage cumulative times and the top functions by own time."""
    from sim.run.pipeline import run_scenario

    sc = scenario(overrides)
    run_scenario(scenario(WARMUP))
    prof = cProfile.Profile()
    prof.enable()
    run_scenario(sc)
    prof.disable()
    stats = pstats.Stats(prof).stats  # {(file, line, func): (cc, nc, tt, ct, callers)}
    total = None
    stages = []
    for label, suffix, func in STAGES:
        ct = sum(v[3] for k, v in stats.items() if k[0].endswith(suffix) and k[2] == func)
        calls = sum(v[1] for k, v in stats.items() if k[0].endswith(suffix) and k[2] == func)
        if total is None:
            total = ct
        stages.append(
            {"stage": label, "calls": int(calls), "cum_s": ct, "share": ct / total if total else 0.0}
        )
    top = sorted(stats.items(), key=lambda kv: kv[1][2], reverse=True)[:15]
    root = str(Path(__file__).resolve().parents[1]) + os.sep
    hot = [
        {
            "function": f"{k[0].replace(root, '').split('site-packages/')[-1]}:{k[1]}({k[2]})",
            "calls": int(v[1]),
            "own_s": v[2],
            "cum_s": v[3],
        }
        for k, v in top
    ]
    return {"total_s": total, "stages": stages, "hot": hot}


def run(quick: bool = False) -> dict[str, Any]:
    from sim.bench import target

    row = full_run(1 if quick else 2)
    warm = min(startup_time(cold=False) for _ in range(1 if quick else 2))
    cold = startup_time(cold=True)
    prof = profile_run(FULL_RUN)
    rows = [row]
    startup = [
        {"process": "second process (numba cache warm)", "wall_s": warm, "ratio_vs_warm": 1.0},
        {"process": "cold (empty NUMBA_CACHE_DIR)", "wall_s": cold, "ratio_vs_warm": cold / warm},
    ]
    notes = [
        f"start-up, fresh interpreter to end of a tiny 2 mm run: {warm:.1f} s with the numba cache, "
        f"{cold:.1f} s compiling from scratch (x{cold / warm:.1f}): cache=True works",
        "profile (cProfile, one run, overhead included): "
        + "; ".join(
            f"{s['stage'].strip()} {s['cum_s']:.2f} s ({100 * s['share']:.0f}%)" for s in prof["stages"]
        ),
        "hottest functions by own time: "
        + "; ".join(f"{h['function']} {h['own_s']:.2f} s" for h in prof["hot"][:6]),
    ]
    return {
        "name": "full_run",
        "title": "Full run end to end (after JIT warm-up) and start-up",
        "columns": [
            "case",
            "wall_s",
            "cpu_s",
            "steps",
            "porous_cells",
            "injection_s",
            "pressure_s",
            "transport_s",
            "amg_setups",
            "leaked_ml",
            "fragments",
            "emboli",
        ],  # fmt: skip
        "rows": rows,
        "profile": prof,
        "extra_tables": [
            {
                "title": "Start-up of a second process",
                "columns": ["process", "wall_s", "ratio_vs_warm"],
                "rows": startup,
            },
            {
                "title": "Profile: stage entry points (cumulative)",
                "columns": ["stage", "calls", "cum_s", "share"],
                "rows": prof["stages"],
            },
            {
                "title": "Profile: hottest functions (own time)",
                "columns": ["function", "calls", "own_s", "cum_s"],
                "rows": prof["hot"],
            },
        ],
        "notes": notes,
        "targets": [
            target(f"full run, L1 {DEFAULT_SPACING_MM:g} mm 5 ml (wall)", row["wall_s"], TARGET_S, "s"),
        ],
    }
