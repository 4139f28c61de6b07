"""Sweep throughput: scenarios per hour on this machine with the local process-pool executor.

A grid sweep over the stop policy (stop at detection / never) with seed replicates, each run
the default scenario on a coarse grid with a small volume (quick: 2 mm, 0.5 ml; full: 1 mm,
2 ml), written to a temporary sweep folder with its SQLite ledger and run folders (VTK and
PNG off), exactly as ``pce-sim sweep`` does. Baseline: the same sweep with the serial
(in-process) executor, so ``ratio`` = serial time / local time is the parallel speed-up on
the machine's cores (2 workers). Worker processes pay their own start-up (imports, numba
cache load) once per pool. A third row spawns the workers with one OpenBLAS thread each.
"""

from __future__ import annotations

import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def sweep_spec(quick: bool) -> dict[str, Any]:
    spacing, volume, reps = (2.0, 0.3, 2) if quick else (1.0, 2.0, 4)
    return {
        "name": "bench",
        "base": "default.yaml",
        "overrides": {
            "grid.spacing_mm": spacing,
            "injection": {"volume_ml": volume, "rate_ml_per_s": 0.1, "follow_up_s": 10.0},
            "output": {"vtk": False, "fluoroscopy_png": False, "fields": False},
        },
        "method": "grid",
        "parameters": {"injection.stop_after_leak_s": {"values": [0.0, None]}},
        "replicates": reps,
        "seed": 7,
        "executor": {"kind": "local", "workers": 2},
    }


@contextmanager
def blas_threads(n: int | None):
    """Environment for worker processes spawned inside: OpenBLAS/OpenMP/MKL thread count ``n``."""
    names = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    saved = {k: os.environ.get(k) for k in names}
    try:
        if n is not None:
            os.environ.update({k: str(n) for k in names})
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def time_sweep(
    quick: bool, kind: str, workers: int, worker_blas_threads: int | None = None
) -> dict[str, Any]:
    from sim.studies.executors import make_executor
    from sim.studies.sweep import expand_sweep, run_sweep, sweep_from_dict

    root = Path(__file__).resolve().parents[1]
    spec = sweep_from_dict(sweep_spec(quick), source="bench_sweep")
    expansion = expand_sweep(spec, root / "configs", source="bench_sweep")
    with tempfile.TemporaryDirectory(prefix="pce-bench-sweep-") as tmp:
        with blas_threads(worker_blas_threads):
            t0 = time.perf_counter()
            outcome = run_sweep(expansion, Path(tmp) / "sweep", executor=make_executor(kind, workers))
            wall = time.perf_counter() - t0
    n = len(expansion.points)
    label = f"{kind} ({workers} worker{'s' if workers > 1 else ''})"
    if worker_blas_threads is not None:
        label += f", OPENBLAS_NUM_THREADS={worker_blas_threads}"
    return {
        "executor": label,
        "scenarios": n,
        "done": int(outcome.done),
        "failed": len(outcome.failed),
        "wall_s": wall,
        "s_per_scenario": wall / n,
        "scenarios_per_hour": 3600.0 * n / wall,
    }


def run(quick: bool = False) -> dict[str, Any]:
    from sim.run.pipeline import run_scenario  # noqa: F401  (JIT cache load in this process first)

    serial = time_sweep(quick, "serial", 1)
    local = time_sweep(quick, "local", 2)
    local1 = time_sweep(quick, "local", 2, worker_blas_threads=1)
    for r in (serial, local, local1):
        r["ratio_vs_serial"] = serial["wall_s"] / r["wall_s"]
    cfg = sweep_spec(quick)["overrides"]
    return {
        "name": "sweep_throughput",
        "title": (
            f"Sweep throughput ({cfg['grid.spacing_mm']:g} mm, {cfg['injection']['volume_ml']:g} ml per "
            "scenario, ledger + run folders)"
        ),
        "columns": [
            "executor",
            "scenarios",
            "done",
            "failed",
            "wall_s",
            "s_per_scenario",
            "scenarios_per_hour",
            "ratio_vs_serial",
        ],  # fmt: skip
        "rows": [serial, local, local1],
        "notes": [
            "ratio_vs_serial = serial wall time / this executor's wall time (parallel speed-up)",
            "OpenBLAS starts one thread per core in every process; they add CPU but no speed to these "
            "sparse solves, so 2 workers x 2 BLAS threads oversubscribe 2 cores. The last row spawns the "
            "workers with OPENBLAS_NUM_THREADS=1 (the same results: a run limits BLAS to one thread itself)",
            f"grid over injection.stop_after_leak_s in {{0, null}} x {sweep_spec(quick)['replicates']} "
            "seed replicates",
        ],
        "targets": [],
    }
