"""The virtual cohort's headline incidences with the veins' well-kernel radius changed: the same patients.

``patient.vein_kernel_radius_mm`` (rho_0, 2 mm by default) is [U]: the zone by a vein wall where the bone
is not a Darcy continuum, three to five trabeculae after Harrigan et al. (1988, J Biomech 21:269), about
2-6 mm. Before it is sampled in the cohort, this study measures how much the cohort's headline moves with
it: for every radius it writes a copy of the cohort file whose base scenario differs only in that field
(``cohort_r<radius>.yaml`` in the output folder), runs it with ``pce-sim cohort`` (resumable; sensitivity
design off), and compares the patients pairwise against the smallest radius, exactly as the grid study
does (``cohort_grid_study.py``: incidences, paired differences with bootstrap intervals, discordant
patients; its tables label the radii in mm)::

    python benchmarks/cohort_kernel_study.py --n 150 --radii 2,3 --out results/cohort_kernel
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.cohort_grid_study import run_paired_study  # noqa: E402


def radius_tag(radius_mm: float) -> str:
    """Folder-safe name of a radius: 2.5 -> 'r2p5'."""
    return "r" + f"{radius_mm:g}".replace(".", "p")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cohort", type=Path, default=ROOT / "configs" / "cohort_default.yaml")
    ap.add_argument("--n", type=int, default=150)
    ap.add_argument("--radii", default="2,3", help="comma-separated kernel radii (mm), 2-6")
    ap.add_argument("--out", type=Path, default=Path("results") / "cohort_kernel")
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    radii = sorted({float(r) for r in args.radii.split(",")}, reverse=True)
    if len(radii) < 2:
        raise SystemExit("cohort_kernel_study: --radii needs at least two values, e.g. 2,3")
    args.out.mkdir(parents=True, exist_ok=True)
    run_paired_study(
        args.cohort, args.n, args.workers, args.out, radii, ("patient", "vein_kernel_radius_mm"), radius_tag,
        "cohort with a {:g} mm vein kernel", "cohort_kernel_study", "vein_kernel_radii_mm",
    )  # fmt: skip


if __name__ == "__main__":
    main()
