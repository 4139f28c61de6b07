"""Cohort throughput: virtual patients per hour on this machine with 1 vs 2 workers (local pool, Dask).

Standalone: ``python benchmarks/bench_cohort.py [--quick] [--n 8] [--dask]`` prints one JSON
document; ``run(quick)`` returns a section for the ``pce-sim bench`` harness (sim.bench).

Full: the first ``n`` patients of configs/cohort_default.yaml (default 1 mm grid, all six stop
policies, run sharing on, no sensitivity design) in a fresh temporary folder per executor.
Quick: configs/cohort_small.yaml (2 mm, <= 1 ml). A "virtual patient" is one patient under every
policy, so patients/h counts complete rows of the policy comparison; runs/h counts pipeline runs
actually executed (arms reused from the never-stop run by the stop-policy contract cost nothing).
Workers pay their start-up (imports, numba cache load) once per pool; it is included, as in a
real cohort. Baseline: 1 worker; ``speedup`` = 1-worker wall time / this wall time.
"""

from __future__ import annotations

import os

# as `pce-sim cohort` does (sim/cli.py): one BLAS thread per process, set before numpy is imported,
# so two workers do not oversubscribe two cores when this file is run on its own
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def time_cohort(config: str, n: int, kind: str, workers: int) -> dict[str, Any]:
    from sim.studies.cohort import load_cohort, plan_cohort, run_cohort
    from sim.studies.executors import make_executor

    spec, base_dir = load_cohort(ROOT / "configs" / config)
    plan = plan_cohort(spec, base_dir, n=n, source=config)
    with tempfile.TemporaryDirectory(prefix="pce-bench-cohort-") as tmp:
        t0 = time.perf_counter()
        run = run_cohort(
            plan,
            Path(tmp) / "cohort",
            executor_factory=lambda: make_executor(kind, workers),
            sensitivity=False,
        )
        wall = time.perf_counter() - t0
    arms = len(run.arms)
    return {
        "executor": f"{kind} ({workers} worker{'s' if workers > 1 else ''})",
        "patients": n,
        "levels": sum(p.n_levels for p in plan.patients),
        "arms": arms,
        "runs": run.n_runs,
        "shared_arms": sum(a.shared for a in run.arms.values()),
        "failed": len(run.failed),
        "wall_s": wall,
        "patients_per_hour": 3600.0 * n / wall,
        "runs_per_hour": 3600.0 * run.n_runs / wall,
    }


def run(quick: bool = False, n: int | None = None, dask: bool | None = None) -> dict[str, Any]:
    """Time the cohort; ``dask=None`` adds the Dask rows when dask.distributed is installed."""
    from sim.run.pipeline import run_scenario  # noqa: F401  (JIT cache warm in this process)

    if dask is None:
        dask = importlib.util.find_spec("distributed") is not None
    config = "cohort_small.yaml" if quick else "cohort_default.yaml"
    n = n or (4 if quick else 24)
    rows = [time_cohort(config, n, "local", 1), time_cohort(config, n, "local", 2)]
    if dask:
        rows += [time_cohort(config, n, "dask", 1), time_cohort(config, n, "dask", 2)]
    base = {r["executor"].split()[0]: r["wall_s"] for r in rows if "(1 worker)" in r["executor"]}
    for r in rows:
        r["speedup"] = base[r["executor"].split()[0]] / r["wall_s"]
    best = max(r["patients_per_hour"] for r in rows)
    return {
        "name": "cohort_throughput",
        "title": f"Cohort throughput ({config}, first {n} patients, all policies, run sharing on)",
        "columns": [
            "executor",
            "patients",
            "levels",
            "arms",
            "runs",
            "shared_arms",
            "failed",
            "wall_s",
            "patients_per_hour",
            "runs_per_hour",
            "speedup",
        ],  # fmt: skip
        "rows": rows,
        "notes": [
            "speedup = 1-worker wall time / this wall time, same executor kind",
            "a patient = one virtual patient (all its levels) under every stop policy of the cohort file",
            "levels = treated levels of those patients (one run per level and policy before run sharing)",
            "issue 9 target: >= 1000 virtual patients per hour on 2 cores at the default resolution",
        ],
        "targets": [
            {
                "name": "virtual patients per hour (2 cores)",
                "target": ">= 1000 patients/h",
                "value": best,
                "unit": "patients/h",
                "met": bool(best >= 1000.0) and not quick,
                "margin": best / 1000.0,
            }
        ],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="cohort_small (2 mm grid, <= 1 ml)")
    ap.add_argument("--n", type=int, default=None, help="virtual patients (default 24; quick 4)")
    ap.add_argument("--dask", action="store_true", help="also time a Dask LocalCluster with 1 and 2 workers")
    args = ap.parse_args()
    section = run(quick=args.quick, n=args.n, dask=args.dask)
    section["machine"] = {"cpu_count": os.cpu_count(), "platform": platform.platform()}
    print(json.dumps(section, indent=2))


if __name__ == "__main__":
    main()
