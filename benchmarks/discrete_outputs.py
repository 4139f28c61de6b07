"""Grid convergence of the study's two discrete outputs as ensembles over the draws that make them discrete.

Issue 15's third and fourth targets compare, between grids, a detection time (the first 0.5 s frame whose
visible volume passes the case's threshold) and an embolised volume (a sum of whole fragments). Both are
step functions of the continuous state: a leak whose visible volume stays within a few per cent of its
threshold is seen seconds apart or not at all (cohort patient 1), and a column that sheds three or four
pieces of about 0.8 mm^3 embolises 25 % more or less (cohort patient 0). A grid study of one draw of a
step function cannot converge in the usual sense; the distribution of the output over the draws that
sit on the step can. This script runs, for one case on several grids, K members that differ only in one
such draw:

* ``--draw fragments``: the fragmentation stream (the plug lengths the break-up law draws,
  :mod:`sim.physics.fragmentation`); member 0 keeps the case's own stream (it is the study's run), member
  k > 0 takes ``default_rng(SeedSequence([seed, k]))``. The anatomy and every other stream are the case's.
* ``--draw phase``: where in a breath the injection starts (``veins.dynamics.respiration_phase``, [U] and
  drawn uniform over a breath by the cohort); member k starts at (phase_0 + k / K) mod 1, member 0 at the
  case's own phase.
* ``--draw joint``: both at once, member k with the phase of ``phase`` and the stream of ``fragments``
  (member 0 is the case itself): a sample of the two [U] inputs together, stratified over the breath. Where
  a fragment's birth depends on the breath (a thread tip breaks when its free length passes the critical
  length set by the blood speed, which breathing modulates), neither draw alone spans the output's spread.

Per grid it reports the members' mean, standard deviation and standard error of the embolised volume and
of the number of emboli, the share of members whose leak is seen, and the detection times with their mean;
and between each grid and the finest, the relative difference of the mean embolised volume and the
difference of the mean detection time (over the members seen on both grids' lists), each with the standard
error of that difference (members of one grid are treated as independent draws, so the two grids' errors
add in quadrature; for the stratified phases that is an upper bound).

    python benchmarks/discrete_outputs.py --case "cohort patient 0" --draw fragments \
        --spacings 1,0.75,0.5 --members 12 --out benchmarks/results/discrete_outputs_fragments.json
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DRAWS = ("fragments", "phase", "joint")


@contextmanager
def fragmentation_stream(member: int) -> Iterator[None]:
    """Inside, a run's fragmentation stream is member ``member``'s (member 0: the run's own stream).

    Every other stream is spawned from the patient seed as always, so the anatomy, the veins, the lungs
    and the fluoroscope are the same for every member.
    """
    import sim.run.pipeline as pipeline

    original = pipeline.stage_rngs

    def member_rngs(seed: int) -> dict[str, np.random.Generator]:
        rngs = original(seed)
        if member:
            rngs["fragmentation"] = np.random.default_rng(np.random.SeedSequence([int(seed), int(member)]))
        return rngs

    pipeline.stage_rngs = member_rngs  # type: ignore[assignment]
    try:
        yield
    finally:
        pipeline.stage_rngs = original  # type: ignore[assignment]


def phase_member(cfg: dict[str, Any], member: int, members: int) -> dict[str, Any]:
    """The scenario with the breath started ``member / members`` of a period after the case's phase."""
    out = copy.deepcopy(cfg)
    dyn = out.setdefault("veins", {}).setdefault("dynamics", {})
    phase0 = float(dyn.get("respiration_phase", 0.0))
    dyn["respiration_phase"] = math.fmod(phase0 + member / members, 1.0)
    return out


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per grid: the members' statistics; against the finest grid: the difference of mean embolised volume."""
    by_h: dict[float, list[dict[str, Any]]] = {}
    for r in rows:
        by_h.setdefault(float(r["spacing_mm"]), []).append(r)
    grids: dict[str, dict[str, Any]] = {}
    for h in sorted(by_h, reverse=True):
        rs = by_h[h]
        n = len(rs)
        ev = np.array([r["embolised_volume_ml"] for r in rs], dtype=np.float64) * 1e3
        ne = np.array([r["n_emboli"] for r in rs], dtype=np.float64)
        seen = [r["detection_time_s"] for r in rs if r["detection_time_s"] is not None]
        sd = float(ev.std(ddof=1)) if n > 1 else math.nan
        counts = np.unique(ne, return_counts=True)
        grids[f"{h:g}"] = {
            "members": n,
            "embolised_microlitres_mean": float(ev.mean()),
            "embolised_microlitres_sd": sd,
            "embolised_microlitres_se": sd / math.sqrt(n) if n > 1 else math.nan,
            "emboli_mean": float(ne.mean()),
            "emboli_counts": {str(int(k)): int(v) for k, v in zip(*counts, strict=True)},
            "seen_share": len(seen) / n,
            "detection_time_s": sorted(seen),
            "detection_mean_s": float(np.mean(seen)) if seen else math.nan,
            "detection_se_s": (
                float(np.std(seen, ddof=1) / math.sqrt(len(seen))) if len(seen) > 1 else math.nan
            ),
            "leaked_microlitres_mean": float(np.mean([r["leaked_volume_ml"] for r in rs])) * 1e3,
        }
    finest = min(by_h)
    ref = grids[f"{finest:g}"]
    for key, g in grids.items():
        if float(key) == finest:
            continue
        if ref["detection_time_s"] and g["detection_time_s"]:
            g["detection_vs_finest_s"] = g["detection_mean_s"] - ref["detection_mean_s"]
            g["detection_vs_finest_se_s"] = math.hypot(g["detection_se_s"], ref["detection_se_s"])
            seen_both = _paired_differences(
                [r for r in by_h[float(key)] if r["detection_time_s"] is not None],
                [r for r in by_h[finest] if r["detection_time_s"] is not None],
                "detection_time_s",
            )
            if seen_both.size > 1:  # members seen on both grids, each against itself
                g["detection_vs_finest_paired_s"] = float(seen_both.mean())
                se_both = seen_both.std(ddof=1) / math.sqrt(seen_both.size)
                g["detection_vs_finest_paired_se_s"] = float(se_both)
                g["detection_seen_on_both"] = int(seen_both.size)
        if ref["embolised_microlitres_mean"] == 0.0:
            continue
        diff = g["embolised_microlitres_mean"] - ref["embolised_microlitres_mean"]
        se = math.hypot(g["embolised_microlitres_se"], ref["embolised_microlitres_se"])
        g["embolised_vs_finest_pct"] = 100.0 * diff / ref["embolised_microlitres_mean"]
        g["embolised_vs_finest_se_pct"] = 100.0 * se / ref["embolised_microlitres_mean"]
        paired = _paired_differences(by_h[float(key)], by_h[finest], "embolised_volume_ml")
        if paired.size > 1:  # member k has the same draws on every grid: the paired difference's error
            se_paired_microlitres = 1e3 * paired.std(ddof=1) / math.sqrt(paired.size)  # rows hold ml
            g["embolised_vs_finest_paired_se_pct"] = float(
                100.0 * se_paired_microlitres / ref["embolised_microlitres_mean"]
            )
    return {"finest_mm": finest, "grids": grids}


def _paired_differences(rows: list[dict[str, Any]], ref_rows: list[dict[str, Any]], key: str) -> np.ndarray:
    """``key`` of each member minus the same member's on the reference grid (members both grids ran)."""
    ref = {r["member"]: r[key] for r in ref_rows if "member" in r}
    return np.array([r[key] - ref[r["member"]] for r in rows if r.get("member") in ref], dtype=np.float64)


def run(
    case: str, spacings: tuple[float, ...], members: int, draw: str, cfl: float | None = None
) -> dict[str, Any]:
    """Every member on every grid (at ``grid.cfl`` = ``cfl`` where given); one row per run."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.bench_convergence import case_configs
    from sim.core.config import scenario_from_dict
    from sim.run.pipeline import run_scenario

    if draw not in DRAWS:
        raise SystemExit(f"--draw {draw!r}: must be one of {', '.join(DRAWS)}")
    base = copy.deepcopy(case_configs(False)[case])
    rows = []
    for h in spacings:
        for k in range(members):
            cfg = phase_member(base, k, members) if draw in ("phase", "joint") else copy.deepcopy(base)
            cfg.setdefault("grid", {})["spacing_mm"] = h
            if cfl is not None:
                cfg["grid"]["cfl"] = cfl
            scenario = scenario_from_dict(cfg, source=f"discrete_outputs {case} h={h} member {k}")
            t0 = time.perf_counter()
            with fragmentation_stream(k if draw in ("fragments", "joint") else 0):
                s = run_scenario(scenario).summary
            t = s["detection_time_s"]
            row = {
                "spacing_mm": h,
                "member": k,
                "respiration_phase": float(scenario.veins.dynamics.respiration_phase),
                "detection_time_s": None if t is None or not math.isfinite(t) else float(t),
                "peak_visible_mm3": float(s["peak_visible_leak_mm3"]),
                "leaked_volume_ml": float(s["leaked_volume_ml"]),
                "n_emboli": int(s["n_emboli"]),
                "embolised_volume_ml": float(s["embolised_volume_ml"]),
                "wall_s": time.perf_counter() - t0,
            }
            rows.append(row)
            print(
                f"h {h} member {k}: {row['n_emboli']} emboli, {1e3 * row['embolised_volume_ml']:.3f} "
                f"microlitres embolised, seen at {row['detection_time_s']}, peak visible "
                f"{row['peak_visible_mm3']:.3f} mm^3 ({row['wall_s']:.0f} s)",
                flush=True,
            )
    from sim.core.provenance import code_label, git_hash

    return {
        "git": git_hash(ROOT),
        "code": code_label(),
        "case": case,
        "draw": draw,
        "members": members,
        "spacings_mm": list(spacings),
        "cfl": cfl,
        "summary": summarise(rows),
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="cohort patient 0", help="a case of the convergence study")
    parser.add_argument("--draw", default="fragments", choices=DRAWS, help="which draw the members differ in")
    parser.add_argument("--spacings", default="1,0.75,0.5", help="comma-separated spacings, mm")
    parser.add_argument("--members", type=int, default=12, help="members per grid (>= 2)")
    parser.add_argument("--cfl", default=None, help="grid.cfl of every run (default: the case's)")
    parser.add_argument("--out", type=Path, default=None, help="write the rows and summary here as JSON")
    args = parser.parse_args(argv)
    if args.members < 2:
        parser.error(f"--members {args.members}: must be at least 2")
    cfl = None
    if args.cfl is not None:
        sys.path.insert(0, str(ROOT))
        from benchmarks.bench_convergence import parse_cfl

        try:
            cfl = parse_cfl(args.cfl)
        except ValueError as exc:
            parser.error(str(exc))
    spacings = tuple(float(h) for h in args.spacings.split(","))
    doc = run(args.case, spacings, args.members, args.draw, cfl)
    text = json.dumps(doc["summary"], indent=1)
    print(text)
    if args.out is not None:
        from sim.studies.ledger import plain_json_value  # NaN -> null: strict JSON

        args.out.write_text(json.dumps(plain_json_value(doc), indent=1, allow_nan=False) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
