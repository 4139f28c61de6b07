"""How much a case's detection time depends on where the C-arm's pixel raster falls on the anatomy.

A leak is seen when the extra-vertebral cement's visible volume passes a threshold; the visible volume
counts the pixels (0.3 mm by default) whose projected cement is at least ``min_thickness`` thick, each
over the share of its area outside the body's silhouette (:mod:`sim.physics.fluoroscopy`; until session
33 a pixel was hidden or shown whole by its centre). Which pixels pass the thickness depends on where the
raster falls relative to a vein: a 1 mm vein seen side-on covers two or three pixels above 0.5 mm of
cement, and a vein that runs along the silhouette's edge is cut by it differently from pixel to pixel.
Where the C-arm is centred to a fraction of a pixel is not known in any patient, so
the spread of detection times over sub-pixel offsets is the part of a detection time the model cannot
resolve, whatever the grid; the convergence study's detection target (one frame between grids) is only
meaningful for a case whose spread is below a frame.

The script runs each case at one grid spacing with the image centre moved by ``k / n`` of a pixel
along each patient axis (k = 0 .. n - 1; every view's raster shifts by that fraction along both its image
axes) and reports the detection time and peak visible volume of each offset. The run is otherwise
identical: the injection's steps do not depend on what is seen until the leak is seen
(:meth:`sim.run.venous_system.VenousSystem.step_end`).

    python benchmarks/detection_raster.py --out benchmarks/results/detection_raster.json
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
CASES = (
    "seed case (lai2025_case)",
    "default",
    "cohort patient 0",
    "cohort patient 1",
    "cohort patient 2",
)
SPACING_MM = 0.75
N_OFFSETS = 10


@contextmanager
def raster_offset(offset_m: np.ndarray) -> Iterator[None]:
    """Every :class:`~sim.physics.fluoroscopy.LeakDetector` made inside is centred ``offset_m`` (patient
    frame, 3-vector) away from where the run puts it."""
    from sim.physics import fluoroscopy

    original = fluoroscopy.LeakDetector.__init__
    shift = np.asarray(offset_m, dtype=np.float64)

    def shifted(self: Any, params: Any, center_m: np.ndarray, *args: Any, **kwargs: Any) -> None:
        original(self, params, np.asarray(center_m, dtype=np.float64) + shift, *args, **kwargs)

    fluoroscopy.LeakDetector.__init__ = shifted  # type: ignore[method-assign]
    try:
        yield
    finally:
        fluoroscopy.LeakDetector.__init__ = original  # type: ignore[method-assign]


def spread(times_s: list[float | None]) -> dict[str, Any]:
    """Earliest and latest detection over the offsets and how many offsets never see the leak."""
    seen = [t for t in times_s if t is not None and math.isfinite(t)]
    return {
        "earliest_s": min(seen) if seen else None,
        "latest_s": max(seen) if seen else None,
        "range_s": (max(seen) - min(seen)) if seen else None,
        "never_seen": len(times_s) - len(seen),
    }


def run(cases: tuple[str, ...], spacing_mm: float, n_offsets: int) -> dict[str, Any]:
    """One row per case: detection time and peak visible volume per raster offset."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.bench_convergence import case_configs
    from sim.core.config import scenario_from_dict
    from sim.core.parameters import RunParameters
    from sim.run.pipeline import run_scenario

    configs = case_configs(False)
    rows = []
    for name in cases:
        cfg = copy.deepcopy(configs[name])
        cfg.setdefault("grid", {})["spacing_mm"] = spacing_mm
        scenario = scenario_from_dict(cfg, source=f"detection_raster {name}")
        pixel_m = RunParameters.from_scenario(scenario).fluoroscopy.pixel_size_m  # SI from the one conversion
        threshold = float(scenario.fluoroscopy.visibility_threshold_mm3)
        frame = float(scenario.fluoroscopy.frame_interval_s)
        times: list[float | None] = []
        peaks: list[float] = []
        t0 = time.perf_counter()
        for k in range(n_offsets):
            with raster_offset(np.full(3, k / n_offsets * pixel_m)):
                summary = run_scenario(scenario).summary
            t = summary["detection_time_s"]
            times.append(None if t is None or not math.isfinite(t) else float(t))
            peaks.append(float(summary["peak_visible_leak_mm3"]))
        row = {
            "case": name,
            "spacing_mm": spacing_mm,
            "threshold_mm3": threshold,
            "frame_interval_s": frame,
            "offsets_px": [k / n_offsets for k in range(n_offsets)],
            "detection_time_s": times,
            "peak_visible_mm3": peaks,
            **spread(times),
            "wall_s": time.perf_counter() - t0,
        }
        rows.append(row)
        shown = ", ".join("never" if t is None else f"{t:g}" for t in times)
        print(f"{name}: seen at {shown} s; peak visible {min(peaks):.3g}-{max(peaks):.3g} mm^3", flush=True)
    from sim.core.provenance import code_label, git_hash

    return {"git": git_hash(ROOT), "code": code_label(), "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated case names")
    parser.add_argument("--spacing", type=float, default=SPACING_MM, help="grid spacing, mm")
    parser.add_argument("--offsets", type=int, default=N_OFFSETS, help="offsets per pixel")
    parser.add_argument("--out", type=Path, default=None, help="write the rows here as JSON")
    args = parser.parse_args(argv)
    doc = run(tuple(args.cases.split(",")), args.spacing, args.offsets)
    if args.out is not None:
        from sim.studies.ledger import plain_json_value  # NaN -> null: strict JSON

        args.out.write_text(json.dumps(plain_json_value(doc), indent=1, allow_nan=False) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
