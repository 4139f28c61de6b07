"""Grid convergence of the virtual cohort's headline incidences: the same patients on two or more grids.

Standalone (about an hour for 150 patients at 1 and 0.75 mm on one worker; not part of
``pce-sim bench``)::

    python benchmarks/cohort_grid_study.py --n 150 --spacings 1,0.75 --out results/cohort_grid

``--cfl X`` runs every grid at ``grid.cfl`` X (folders ``h1_cfl0p4`` ...), to tell the grid's error from the
time step's: the cohort's step is a fixed share of a cell, so it shrinks with the spacing.

The single-case convergence study (``bench_convergence.py``) measures the discretisation error of one
run's leak; a clinician reads the cohort's incidences (venous leak, leak seen, PCE per stop policy),
and a run whose visible cement sits near the fluoroscopy threshold can flip between seen and not seen
from one grid to the next. This study answers how much of the cohort's headline moves with the grid.
For every spacing it writes a copy of the cohort file whose base scenario differs only in
``grid.spacing_mm`` (``cohort_h<spacing>.yaml`` in the output folder) and runs it with ``pce-sim
cohort`` (resumable; sensitivity design off). Patient i has the same inputs and seeds on every grid
(a cohort of n patients is the first n of any larger one), so the grids are compared patient by
patient against the finest: for each binary endpoint the incidence on each grid, the paired
difference (coarse - finest) with a paired percentile bootstrap interval, the discordant patients
(event on one grid only) and the exact McNemar p value; for volumes and emboli the paired mean
difference. A grid whose paired difference is small against the cohort's own sampling interval is
converged for the cohort's purpose even where single threshold cases are not.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
POLICIES = ("clinical_practice", "stop_at_detection", "never_stop")
BINARY = (("leak_any", "venous leak"), ("detected", "leak seen"), ("pce", "PCE"))
CONTINUOUS = (
    ("leaked_volume_ml", "leaked volume (ml)"),
    ("embolised_volume_ml", "embolised volume (ml)"),
    ("n_emboli", "emboli"),
)
BOOTSTRAP = 2000
STUDY_SEED_KEY = 17  # spawn_key of the bootstrap stream, from the cohort's seed


def spacing_tag(spacing_mm: float) -> str:
    """Folder-safe name of a spacing: 0.75 -> 'h0p75'."""
    return "h" + f"{spacing_mm:g}".replace(".", "p")


def derived_cohort_file(cohort_file: Path, spacing_mm: float, out: Path) -> Path:
    """Write the cohort file with ``grid.spacing_mm`` set in its overrides; return its path."""
    return derive_cohort(cohort_file, "grid", "spacing_mm", float(spacing_mm), spacing_tag(spacing_mm), out)


def derive_cohort(cohort_file: Path, section: str, field: str, value: float, tag: str, out: Path) -> Path:
    """Write the cohort file with ``section.field`` set to ``value`` in its overrides, as
    ``<out>/cohort_<tag>.yaml`` (a relative base made absolute); return its path."""
    import yaml

    from sim.core.config import read_yaml

    data = read_yaml(cohort_file)
    if data.get("base") is not None and not Path(data["base"]).is_absolute():
        data["base"] = str((cohort_file.parent / data["base"]).resolve())
    overrides = data.setdefault("overrides", {})
    overrides.setdefault(section, {})[field] = value
    data["name"] = f"{data.get('name', 'cohort')}_{tag}"
    path = out / f"cohort_{tag}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_cohort(cohort_file: Path, folder: Path, n: int, workers: int) -> None:
    """Run (or resume) one grid's cohort with the CLI; its errors stop the study."""
    cmd = [sys.executable, "-m", "sim.cli", "cohort", str(cohort_file), "-o", str(folder), "--n", str(n)]
    cmd += ["-w", str(workers), "--no-sensitivity", "--allow-large", "-q"]
    done = subprocess.run(cmd, cwd=ROOT)
    if done.returncode != 0:  # the CLI has said why on stderr, in one line
        raise SystemExit(done.returncode)


def read_patients(folder: Path) -> dict[str, dict[str, np.ndarray]]:
    """cohort_patients.csv as {policy: {column: values ordered by patient}}."""
    rows: dict[str, list[dict[str, str]]] = {}
    with open(folder / "cohort_patients.csv", newline="") as f:
        for row in csv.DictReader(f):
            rows.setdefault(row["policy"], []).append(row)
    out: dict[str, dict[str, np.ndarray]] = {}
    for policy, items in rows.items():
        items.sort(key=lambda r: int(r["patient"]))
        out[policy] = {k: np.array([float(r[k]) for r in items]) for k in items[0] if k != "policy"}
    return out


def compare_grids(
    tables: dict[float, dict[str, dict[str, np.ndarray]]], seed: int, n_boot: int = BOOTSTRAP
) -> list[dict[str, Any]]:
    """One row per (policy, endpoint): the value on every grid and each grid's paired difference
    to the finest grid (95 % bootstrap interval; for binary endpoints the discordant patients and the
    exact McNemar p value)."""
    from sim.studies.stats import paired_difference

    spacings = sorted(tables, reverse=True)
    finest = spacings[-1]
    rows = []
    for policy in POLICIES:
        if any(policy not in tables[h] for h in spacings):
            continue
        ref = tables[finest][policy]
        for h in spacings:
            if not np.array_equal(tables[h][policy]["patient"], ref["patient"]):
                raise ValueError(f"grid {h:g} mm holds other patients than {finest:g} mm")
        for key, label in BINARY + CONTINUOUS:
            binary = (key, label) in BINARY
            row: dict[str, Any] = {"policy": policy, "endpoint": label, "reference_mm": finest}
            for h in spacings:
                values = tables[h][policy][key]
                row[f"{h:g} mm"] = float(np.mean(values > 0) if binary else np.mean(values))
                if h == finest:
                    continue
                rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(STUDY_SEED_KEY,)))
                a = ref[key] > 0 if binary else ref[key]
                b = values > 0 if binary else values
                d = paired_difference(a, b, rng, n_boot)
                row[f"diff {h:g} mm"] = d.difference
                row[f"ci {h:g} mm"] = [d.lo, d.hi]
                if binary:
                    row[f"discordant {h:g} mm"] = list(d.discordant)
                    row[f"mcnemar_p {h:g} mm"] = d.mcnemar_p
            rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]], spacings: list[float], n: int) -> str:
    """The comparison as a markdown table (incidences in %, differences in points)."""
    finest = min(spacings)
    coarse = [h for h in sorted(spacings, reverse=True) if h != finest]
    head = ["policy", "endpoint"] + [f"{h:g} mm" for h in sorted(spacings, reverse=True)]
    for h in coarse:
        head += [f"{h:g} - {finest:g} mm (95 % CI)", f"only {h:g} / only {finest:g} mm"]
    lines = [f"{n} patients, paired.", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        binary = r["endpoint"] in {label for _, label in BINARY}
        scale, unit = (100.0, " %") if binary else (1.0, "")
        cells = [r["policy"], r["endpoint"]]
        cells += [f"{scale * r[f'{h:g} mm']:.3g}{unit}" for h in sorted(spacings, reverse=True)]
        for h in coarse:
            lo, hi = r[f"ci {h:g} mm"]
            cells.append(f"{scale * r[f'diff {h:g} mm']:+.3g} ({scale * lo:+.3g} to {scale * hi:+.3g})")
            cells.append("{} / {}".format(*r[f"discordant {h:g} mm"]) if binary else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cohort", type=Path, default=ROOT / "configs" / "cohort_default.yaml")
    ap.add_argument("--n", type=int, default=150)
    ap.add_argument("--spacings", default="1,0.75", help="comma-separated grid spacings (mm)")
    ap.add_argument("--out", type=Path, default=Path("results") / "cohort_grid")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--cfl", default=None, help="grid.cfl of every grid (default: the cohort's)")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))

    spacings = sorted({float(s) for s in args.spacings.split(",")}, reverse=True)
    if len(spacings) < 2:
        raise SystemExit("cohort_grid_study: --spacings needs at least two grids, e.g. 1,0.75")
    cfl = None
    if args.cfl is not None:  # every grid at one time-step number: the grid's error without the step's
        from benchmarks.bench_convergence import parse_cfl

        try:
            cfl = parse_cfl(args.cfl)
        except ValueError as exc:
            raise SystemExit(f"cohort_grid_study: {exc}") from None
    args.out.mkdir(parents=True, exist_ok=True)
    cohort, tag, say = args.cohort, spacing_tag, "cohort on the {:g} mm grid"
    if cfl is not None:
        suffix = "_cfl" + f"{cfl:g}".replace(".", "p")
        cohort = derive_cohort(args.cohort, "grid", "cfl", cfl, suffix[1:], args.out)

        def tag(h: float) -> str:
            return spacing_tag(h) + suffix

        say = f"cohort on the {{:g}} mm grid at cfl {cfl:g}"
    run_paired_study(
        cohort, args.n, args.workers, args.out, spacings, ("grid", "spacing_mm"), tag,
        say, "cohort_grid_study", "spacings_mm",
    )  # fmt: skip


def run_paired_study(
    cohort: Path,
    n: int,
    workers: int,
    out: Path,
    values: list[float],
    field: tuple[str, str],
    tag: Callable[[float], str],
    say: str,
    name: str,
    values_key: str,
) -> None:
    """Run the cohort once per value of ``field`` (section, name) and compare the same patients against the
    smallest value: ``<out>/<name>.json`` and ``.md`` (the grid study and the kernel study)."""
    from sim.studies.cohort import load_cohort

    spec, _ = load_cohort(cohort)
    tables = {}
    for v in values:
        folder = out / tag(v)
        print(f"{say.format(v)} -> {folder}", flush=True)
        derived = derive_cohort(cohort.resolve(), field[0], field[1], v, tag(v), out)
        run_cohort(derived, folder, n, workers)
        tables[v] = read_patients(folder)
    rows = compare_grids(tables, spec.seed)
    from sim.core.provenance import cpu_info, git_hash

    # the machine too: a re-run on another CPU may differ in the last bits (README, Performance)
    doc = {
        "cohort": repo_path(cohort),
        "n": n,
        values_key: values,
        "rows": rows,
        "git": git_hash(),
        "cpu": cpu_info(),
    }
    (out / f"{name}.json").write_text(json.dumps(doc, indent=1))
    table = markdown(rows, values, n)
    (out / f"{name}.md").write_text(table)
    print(table)


def repo_path(path: Path) -> str:
    """A file as the repository names it (relative to its root), so a stored study names no machine's folders;
    a file outside the repository keeps its path."""
    try:
        return Path(path).resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


if __name__ == "__main__":
    main()
