"""How big a study is, counted before anything is expanded, and how long it would take.

A sweep's runs are counted from its spec alone (grid: the product of the ``values`` list lengths;
lhs / random: ``samples``; times ``replicates``) and a cohort's from ``n``, its policies and its
sensitivity design, so a 10^12-run grid is refused in microseconds instead of being built.

Limits (README, "CLI tour"):

- :data:`SWEEP_RUN_LIMIT` runs per sweep and :data:`COHORT_PATIENT_LIMIT` virtual patients per
  cohort without ``--allow-large`` (about 17 and 4 hours on 2 workers at the benchmarked run time);
- :data:`MAX_SCENARIOS` scenarios per study, always: every scenario is validated and held in memory
  (about 12 kB and 1.5 ms each) before the first run starts, so larger studies must be split.

The time estimate uses the benchmark results (``benchmarks/results/bench.json``: the full run at
the default spacing for sweeps, the measured patients per hour for cohorts) when present, else
:data:`DEFAULT_RUN_SECONDS` per run.
"""

from __future__ import annotations

import json
import math
from decimal import Decimal
from pathlib import Path
from typing import Any

from sim.core.errors import ConfigError

SWEEP_RUN_LIMIT = 20_000
COHORT_PATIENT_LIMIT = 10_000
MAX_SCENARIOS = 200_000
DEFAULT_RUN_SECONDS = 3.0  # one default run (the default spacing) on one core, start-up included
ALLOW_FLAG = "--allow-large"
BENCH_FILE = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "bench.json"


def _bench(path: Path | None = None) -> dict[str, Any] | None:
    try:
        doc = json.loads((path or BENCH_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _section_rows(doc: dict[str, Any] | None, name: str) -> list[dict[str, Any]]:
    for section in (doc or {}).get("sections", []) or []:
        if isinstance(section, dict) and section.get("name") == name:
            return [r for r in section.get("rows", []) if isinstance(r, dict)]
    return []


def seconds_per_run(path: Path | None = None) -> tuple[float, str]:
    """Wall seconds of one run on one worker, and where the number comes from."""
    for row in _section_rows(_bench(path), "full_run"):
        wall = row.get("wall_s")
        if isinstance(wall, int | float) and math.isfinite(wall) and wall > 0.0:
            return float(wall), "benchmark full run"
    return DEFAULT_RUN_SECONDS, f"{DEFAULT_RUN_SECONDS:g} s per run"


def patients_per_hour(workers: int, path: Path | None = None) -> tuple[float, str] | None:
    """Benchmarked cohort throughput of the local pool with the closest worker count, if measured."""
    best = None
    for row in _section_rows(_bench(path), "cohort_throughput"):
        label = str(row.get("executor", ""))
        pph = row.get("patients_per_hour")
        if not label.startswith("local") or not isinstance(pph, int | float) or not pph > 0:
            continue
        digits = "".join(ch for ch in label if ch.isdigit())
        w = int(digits) if digits else 1
        if best is None or abs(w - workers) < abs(best[0] - workers):
            best = (w, float(pph))
    if best is None:
        return None
    w, pph = best
    return pph * max(1, workers) / w, f"benchmark cohort, {w} worker{'s' if w > 1 else ''}"


def format_duration(seconds: float) -> str:
    """Rough human duration: 40 s, 12 min, 3.5 h, 6 days, 2.1e+05 years."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    if seconds < 3 * 365 * 86400:
        return f"{seconds / 86400:.0f} days"
    return f"{seconds / (365 * 86400):.2g} years"


def sweep_run_count(spec: Any) -> int:
    """Runs a sweep spec expands to (before dropping repeated sampled points), without expanding it."""
    if spec.method == "grid":
        points = math.prod(len(p.values or ()) for p in spec.parameters.values())
    else:
        points = int(spec.samples or 0)
    return points * int(spec.replicates)


def sweep_estimate(count: int, workers: int) -> str:
    """``about 3.2 h on 2 workers (benchmark full run)``."""
    per_run, source = seconds_per_run()
    seconds = count * per_run / max(1, workers)
    return f"about {format_duration(seconds)} on {workers} worker{'s' if workers > 1 else ''} ({source})"


def cohort_counts(spec: Any, n: int, sensitivity: bool) -> tuple[int, int]:
    """(patient-level-policy scenarios incl. never-stop probes, sensitivity design rows) of a cohort of n.

    With ``levels:`` every treated level is a run per policy; the level counts of the first n patients
    are drawn exactly (one uniform per patient; the expected count above a million patients).
    """
    levels = getattr(spec, "levels", None)
    if levels is None:
        runs = int(n)  # integers: a float count printed 200,000,000,000,000,009,529,458,694 for 2e26
    elif n > 1_000_000:  # the expected count, in decimal: a float product prints a float's last digits
        runs = math.ceil(Decimal(n) * Decimal(f"{levels.mean_count:.6f}"))
    else:
        runs = sum(levels.counts(spec.seed, n))
    scenarios = runs * (len(spec.policies) + (1 if spec.share_runs else 0))
    rows = 0
    s = spec.sensitivity
    if sensitivity and s.method != "none":
        k = len(s.inputs if s.inputs is not None else spec.distributions) + 1  # + the patient-seed input
        rows = s.trajectories * (k + 1) if s.method == "morris" else s.base_samples * (k + 2)
    return scenarios, rows


def cohort_estimate(n: int, workers: int, sensitivity_rows: int, levels: float = 1.0) -> str:
    """``about 25 min on 2 workers (benchmark cohort, 2 workers)``; ``levels`` = mean treated levels
    per patient (the benchmark counts single-level patients, so its time scales with it)."""
    measured = patients_per_hour(workers)
    per_run, source = seconds_per_run()
    if measured is not None:
        pph, source = measured
        seconds = 3600.0 * n * levels / pph
    else:
        seconds = 1.5 * n * levels * per_run / max(1, workers)  # never-stop probe + the arms it cannot share
    seconds += sensitivity_rows * per_run / max(1, workers)
    return f"about {format_duration(seconds)} on {workers} worker{'s' if workers > 1 else ''} ({source})"


def check_study_size(
    source: str,
    what: str,
    count: int,
    limit: int,
    allow_large: bool,
    estimate: str,
    scenarios: int | None = None,
) -> None:
    """Refuse a study above ``limit`` (unless ``allow_large``) or above MAX_SCENARIOS (always)."""
    scenarios = count if scenarios is None else scenarios
    if scenarios > MAX_SCENARIOS:
        raise ConfigError(
            f"{source}: {count:,} {what} ({scenarios:,} scenarios, {estimate}): more than {MAX_SCENARIOS:,} "
            "scenarios cannot be validated and held in memory at once (about 12 kB each); split the study"
        )
    if count > limit and not allow_large:
        raise ConfigError(
            f"{source}: {count:,} {what} ({estimate}) exceed the limit of {limit:,} {what}; "
            f"pass {ALLOW_FLAG} to start it anyway"
        )
