"""How strongly a case's leaked volume amplifies an error in *when* its leak starts.

The convergence study (``bench_convergence.py``) judges the leaked volume V at the injection's stop.
For a case whose leak is the short tail of a long fill (cohort patient 2: the intraosseous vein lumens
take cement for about 20 s, overflow through the foramina and the injection stops at detection, about
3 s later), V = integral of the leak rate Q from the overflow time t_o to the stop t_s, so

    dV / V = -(Q t_o / V) * (dt_o / t_o) = -A * (dt_o / t_o),   A = Q t_o / V.

A relative error of the overflow time (a grid error of the uptake that fills the lumens) is
multiplied by the amplification A in the leaked volume. Limiting cases: a leak that starts at t = 0
has A = 0 (V = Q t_s does not depend on any fill time); a leak that runs at a constant rate from t_o
has A = t_o / (t_s - t_o), the fill time over the leak's duration.

This holds with the stop t_s fixed. A stop at detection is not: it falls on a fluoroscopy frame, so an
overflow that moves the detecting frame moves t_s by a whole frame interval and V by about Q times that
interval, whatever A is. The script therefore holds every case's stop where its run on the first spacing
stopped (``bench_convergence.fixed_stop_config``, as the convergence study's time-step table does). With
2 mm kernels patient 2 was seen at 21.5 s on every grid from 1 mm, so that was the stop its own runs
made; with its drawn 2.16 mm kernel the 1 mm run sees it at 21.0 s and the finer ones at 21.5 s, so
the study's leaks differ from these fixed-stop ones by about Q times 0.5 s.

Here t_o is the time the leaked volume first exceeds a fixed threshold (``THRESHOLD_UL``, the same on
every grid), Q the mean leak rate from then to the stop. A case may leak through several kinds of exit
with different histories (cohort patient 0 with a 3.22 mm kernel: a nutrient vein trickles from the
start and sets t_o, while most of its leak is the basivertebral veins' overflow ten seconds later), so
each row also gives t_o, Q and A per exit kind (basivertebral / anterior / lateral) from the venous
side's cumulative cement received through that kind of exit. The script runs the cases of the convergence
study at the given spacings and reports t_o, Q, V and A, so a reader can see which part of a leak's grid
error is the overflow time and which the rate.

    python benchmarks/leak_conditioning.py --out benchmarks/results/leak_conditioning.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
THRESHOLD_UL = 2.0  # microlitres: the leak "has started" once this much cement is out of the bone
CASES = ("cohort patient 2", "cohort patient 0", "seed case (lai2025_case)")
SPACINGS = (1.0, 0.75, 0.5, 0.375)


def overflow_time_and_rate(
    times_s: np.ndarray, leaked_m3: np.ndarray, threshold_m3: float
) -> tuple[float, float, float]:
    """(t_o, Q, A) of a cumulative leak series: the time it first exceeds ``threshold_m3`` (linear
    between samples), the mean rate from then to the last sample and the amplification Q t_o / V.

    NaN for all three when the leak never exceeds the threshold, exceeds it only at the last sample, or
    already at the first (no crossing to time). A cumulative leak cannot fall: a series that does is
    refused.
    """
    t = np.asarray(times_s, dtype=np.float64)
    v = np.asarray(leaked_m3, dtype=np.float64)
    if t.shape != v.shape or t.size < 2:
        raise ValueError(f"times and leaked volumes must be equal-length series, got {t.shape} and {v.shape}")
    if np.any(np.diff(v) < -1e-12 * max(float(np.max(np.abs(v))), 1e-300)):
        raise ValueError("a cumulative leaked volume cannot fall")
    above = np.flatnonzero(v > threshold_m3)
    nan = float("nan")
    if above.size == 0 or above[0] == 0 or above[0] == t.size - 1:
        return nan, nan, nan
    i = int(above[0])
    t_o = float(np.interp(threshold_m3, v[i - 1 : i + 1], t[i - 1 : i + 1]))
    rate = (float(v[-1]) - threshold_m3) / (float(t[-1]) - t_o)
    return t_o, rate, rate * t_o / float(v[-1])


def leak_timing(times_s: np.ndarray, leaked_m3: np.ndarray) -> dict[str, float]:
    """A cumulative leak's volume at its last sample and its t_o, Q and A (microlitres, s; NaN where
    :func:`overflow_time_and_rate` has no crossing to time, or the series has a single sample)."""
    nan = float("nan")
    v = np.asarray(leaked_m3, dtype=np.float64)
    t_o, rate, amp = (
        (nan, nan, nan) if v.size < 2 else overflow_time_and_rate(times_s, v, THRESHOLD_UL * 1e-9)
    )
    return {
        "leaked_ul": float(v[-1]) * 1e9,
        "overflow_time_s": t_o,
        "leak_rate_ul_per_s": rate * 1e9,
        "amplification": amp,
    }


def _timing_text(k: dict[str, float]) -> str:
    return (
        f"V {k['leaked_ul']:.3f} ul, t_o {k['overflow_time_s']:.3f} s, "
        f"Q {k['leak_rate_ul_per_s']:.3f} ul/s, A {k['amplification']:.2f}"
    )


def per_exit_kind(venous_series: dict[str, np.ndarray], stop_s: float) -> dict[str, dict[str, float]]:
    """Leaked volume, t_o, Q and A of every exit kind by the injection's stop ``stop_s`` (microlitres,
    s); t_o, Q and A are NaN for a kind that does not pass ``THRESHOLD_UL``, so the kinds add up to the
    whole leak.

    ``venous_series`` is :meth:`sim.run.recorder.RunRecorder.venous_series`: ``t_s`` and one
    ``leaked_<kind>_m3`` series per exit kind. It runs on through the follow-up after the stop, so it
    is cut at ``stop_s`` (the last value interpolated there), as the injection's leak series ends.
    """
    from sim.core.grid import EXIT_KINDS

    t_all = np.asarray(venous_series["t_s"], dtype=np.float64)
    keep = t_all < stop_s
    t = np.append(t_all[keep], stop_s)
    out: dict[str, dict[str, float]] = {}
    for kind in EXIT_KINDS:
        v_all = np.asarray(venous_series[f"leaked_{kind}_m3"], dtype=np.float64)
        out[kind] = leak_timing(t, np.append(v_all[keep], np.interp(stop_s, t_all, v_all)))
    return out


def run(cases: tuple[str, ...], spacings: tuple[float, ...]) -> dict[str, Any]:
    """The diagnostic for ``cases`` at ``spacings``: one row per case and spacing."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.bench_convergence import case_configs, fixed_stop_config
    from sim.core.config import scenario_from_dict
    from sim.run.pipeline import run_scenario

    configs = case_configs(False)
    rows = []
    for name in cases:
        reference = None
        for h in spacings:
            cfg = copy.deepcopy(configs[name])
            cfg.setdefault("grid", {})["spacing_mm"] = h
            if reference is not None:
                cfg = fixed_stop_config(cfg, reference)
            t0 = time.perf_counter()
            result = run_scenario(scenario_from_dict(cfg, source=f"leak_conditioning {name} h={h}"))
            if reference is None:
                reference = result.summary
            inj = result.artifacts.injection
            whole = leak_timing(np.asarray(inj.times_s), np.asarray(inj.cement_leaked_series_m3))
            by_kind = per_exit_kind(result.artifacts.recording.venous_series(), float(inj.times_s[-1]))
            rows.append({
                "case": name,
                "spacing_mm": h,
                **whole,
                "stop_s": float(inj.times_s[-1]),
                "stop_reason": str(result.summary["stop_reason"]),
                "by_exit_kind": by_kind,
                "wall_s": time.perf_counter() - t0,
            })  # fmt: skip
            print(f"{name}, {h:g} mm: {_timing_text(whole)}", flush=True)
            for kind, k in by_kind.items():
                if k["leaked_ul"] > 0.0:
                    print(f"    {kind}: {_timing_text(k)}", flush=True)
    from sim.core.provenance import code_label, git_hash

    return {"threshold_ul": THRESHOLD_UL, "git": git_hash(ROOT), "code": code_label(), "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated case names")
    spacings = ",".join(f"{h:g}" for h in SPACINGS)
    parser.add_argument("--spacings", default=spacings, help="mm, comma-separated")
    parser.add_argument("--out", type=Path, default=None, help="write the rows here as JSON")
    args = parser.parse_args(argv)
    doc = run(tuple(args.cases.split(",")), tuple(float(x) for x in args.spacings.split(",")))
    if args.out is not None:
        from sim.studies.ledger import plain_json_value  # NaN -> null: strict JSON

        args.out.write_text(json.dumps(plain_json_value(doc), indent=1, allow_nan=False) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
