"""Benchmark harness behind ``pce-sim bench [--quick] [--out DIR]``.

Each benchmark case lives in ``benchmarks/bench_*.py`` of the source checkout and exposes
``run(quick: bool) -> dict`` returning a *section*: ``{"name", "title", "columns", "rows",
"notes", "targets"}`` where ``rows`` is a list of flat dicts (one table row each) and
``targets`` a list of ``{"name", "target", "value", "unit", "met"}``. Timings are the minimum
of N repeats (:func:`min_time`), and every case reports RATIOS against a baseline measured in
the same run (numpy reference, sparse direct solve, serial executor, ...), so numbers from
different machines can be compared without comparing clocks.

The harness adds machine information (CPU model, cores, load, library versions), writes
``bench[_quick].json`` and ``bench[_quick].md`` to the output folder and draws the log-log
injection scaling plot (``scaling.png``) when the scaling case ran.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sim.core.errors import ConfigError
from sim.core.provenance import cpu_info, cpu_model, git_hash
from sim.run.output_folder import check_output_folder

# Order of the suite (module names in benchmarks/).
CASES: tuple[str, ...] = (
    "bench_transport",
    "bench_pressure",
    "bench_network",
    "bench_fragment_rates",
    "bench_scaling",
    "bench_full_run",
    "bench_sweep",
    "bench_cohort",
    "bench_convergence",
)
# files a results folder of this suite holds; a non-empty folder with none of them is not one
BENCH_MARKERS = ("bench.json", "bench_quick.json")


def repo_root() -> Path:
    """The source checkout holding ``benchmarks/`` (the suite is not shipped in the wheel)."""
    # the checkout the package came from (editable install), else the working directory
    candidates = (Path(__file__).resolve().parents[1], Path.cwd())
    root = next((c for c in candidates if (c / "benchmarks" / "__init__.py").exists()), candidates[0])
    if not (root / "benchmarks" / "__init__.py").exists():
        raise ConfigError(
            f"pce-sim bench needs the source checkout: {root / 'benchmarks'} not found "
            "(run from a git clone of pce-sim, installed with pip install -e .)"
        )
    return root


def min_time(fn: Callable[[], Any], repeat: int = 3) -> tuple[float, Any]:
    """Minimum wall time (s) of ``repeat`` calls of ``fn`` and the last call's result."""
    if repeat < 1:
        raise ConfigError(f"min_time: repeat must be >= 1, got {repeat}")
    best, out = math.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def min_wall_cpu(fn: Callable[[], Any], repeat: int = 3) -> tuple[float, float, Any]:
    """Minimum wall time and minimum process CPU time (s) of ``repeat`` calls, and the last result.

    CPU time is the better clock on a shared machine (other processes stretch wall time but not
    this process's CPU time); for single-threaded kernels the two agree on an idle machine.
    """
    if repeat < 1:
        raise ConfigError(f"min_wall_cpu: repeat must be >= 1, got {repeat}")
    wall, cpu, out = math.inf, math.inf, None
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        out = fn()
        wall = min(wall, time.perf_counter() - t0)
        cpu = min(cpu, time.process_time() - c0)
    return wall, cpu, out


def target(name: str, value: float, limit: float, unit: str, below: bool = True) -> dict[str, Any]:
    """A performance target: met when ``value <= limit`` (``below``) or ``value >= limit``."""
    met = bool(value <= limit) if below else bool(value >= limit)
    return {
        "name": name,
        "target": f"{'<=' if below else '>='} {limit:g} {unit}",
        "value": float(value),
        "unit": unit,
        "met": met,
        "margin": float(value / limit) if limit else float("nan"),
    }


def _simd(machine: dict[str, Any]) -> str:
    """' (AVX2, FMA3)': the SIMD paths that set a result's last bits (README, Performance), '' if none."""
    return f" ({', '.join(machine['simd'])})" if machine.get("simd") else ""


def machine_info() -> dict[str, Any]:
    """CPU, cores, load and the versions that matter for the timings."""
    import numba
    import numpy
    import pyamg
    import scipy

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "simd": cpu_info()["simd"],
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "numba": numba.__version__,
        "pyamg": pyamg.__version__,
        "numba_threads": numba.config.NUMBA_NUM_THREADS,
        "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
    }
    try:
        import openpnm

        info["openpnm"] = openpnm.__version__
    except ImportError:
        info["openpnm"] = None
    try:
        info["load_average_1min"] = os.getloadavg()[0]
    except OSError:
        info["load_average_1min"] = None
    try:
        mem = Path("/proc/meminfo").read_text().split("\n")[0].split()[1]
        info["memory_gb"] = round(int(mem) / 1024**2, 1)
    except (OSError, IndexError, ValueError):
        info["memory_gb"] = None
    return info


def run_suite(
    quick: bool = False,
    out_dir: str | Path | None = None,
    only: list[str] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Run the benchmark cases, write JSON + markdown (+ scaling plot) and return the document.

    ``only`` selects cases by name (``transport``, ``pressure``, ... or the full module names);
    ``progress(name, i, n)`` is called before each case.
    """
    root = repo_root()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    cases = _select(only)
    out = Path(out_dir) if out_dir is not None else root / "benchmarks" / "results"
    # before any case runs: a folder this suite writes, holding its results already or nothing
    check_output_folder(
        out, overwrite=False, resume=BENCH_MARKERS, study="benchmark results to update", allow_current=True
    )
    out.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "suite": "pce-sim bench",
        "mode": "quick" if quick else "full",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git": git_hash(root),
        "machine": machine_info(),
        "sections": [],
    }
    t_suite = time.perf_counter()
    for i, name in enumerate(cases):
        if progress is not None:
            progress(name, i, len(cases))
        module = importlib.import_module(f"benchmarks.{name}")
        load = _load_average()
        t0 = time.perf_counter()
        section = module.run(quick=quick)
        section["elapsed_s"] = time.perf_counter() - t0
        section["load_average_start"] = load
        section["measured"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        doc["sections"].append(section)
    doc["total_s"] = time.perf_counter() - t_suite
    stem = "bench_quick" if quick else "bench"
    if only:
        _merge_previous(doc, out / f"{stem}.json")
    doc["targets"] = [t for s in doc["sections"] for t in s.get("targets", [])]
    (out / f"{stem}.json").write_text(json.dumps(doc, indent=2, default=_json_default) + "\n")
    (out / f"{stem}.md").write_text(to_markdown(doc))
    scaling = next((s for s in doc["sections"] if s["name"] == "injection_scaling"), None)
    if scaling is not None and len(scaling["rows"]) >= 2:
        plot_scaling(scaling, out / ("scaling_quick.png" if quick else "scaling.png"))
    doc["files"] = [str(out / f"{stem}.json"), str(out / f"{stem}.md")]
    return doc


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _merge_previous(doc: dict[str, Any], path: Path) -> None:
    """With ``--only``: keep the other cases' sections of an earlier document of the same mode."""
    if not path.exists():
        return
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return
    fresh = {s["name"] for s in doc["sections"]}
    kept = [s for s in old.get("sections", []) if s.get("name") not in fresh]
    order = {n: i for i, n in enumerate(s["name"] for s in old.get("sections", []))}
    doc["sections"] = sorted(kept + doc["sections"], key=lambda s: order.get(s["name"], len(order)))
    doc["merged_from"] = old.get("started")


def _select(only: list[str] | None) -> list[str]:
    if only is None:
        return list(CASES)
    picked = []
    keys = [k.strip() for item in only for k in item.split(",") if k.strip()]
    if not keys:
        raise ConfigError(
            f"--only {','.join(only)!r}: name at least one case ({', '.join(c[6:] for c in CASES)})"
        )
    for key in keys:  # a case's name, or the start of one name (`--only a` picked every case holding an 'a')
        hits = [c for c in CASES if key in (c, c[6:])] or [c for c in CASES if c[6:].startswith(key)]
        if not hits:
            raise ConfigError(f"bench: unknown case {key!r}; known: {', '.join(c[6:] for c in CASES)}")
        if len(hits) > 1:
            names = ", ".join(c[6:] for c in hits)
            raise ConfigError(f"bench: --only {key!r} starts several cases ({names}); name one")
        picked += [h for h in hits if h not in picked]
    return [c for c in CASES if c in picked]


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        a = abs(value)
        if a == 0.0:
            return "0"
        if a >= 1e5 or a < 1e-3:
            return f"{value:.3g}"
        if a >= 100:  # a tenth kept where there is one (a detection at 162.5 s is not 162 s)
            return f"{value:,.0f}" if round(value, 1) == round(value) else f"{value:,.1f}"
        return f"{value:.3g}"
    if value is None:
        return "–"
    return str(value)


def markdown_table(columns: list[str], rows: list[dict[str, Any]]) -> str:
    """A GitHub markdown table of ``rows`` restricted to ``columns``."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def to_markdown(doc: dict[str, Any]) -> str:
    """The whole benchmark document as markdown (machine, targets, one table per case)."""
    m = doc["machine"]
    parts = [
        f"# pce-sim benchmarks ({doc['mode']})",
        "",
        f"{doc['started']}, git {doc.get('git') or '?'}; {m['cpu']}{_simd(m)}, {m['cores']} cores, "
        f"{m.get('memory_gb')} GB, load average {_fmt(m.get('load_average_1min'))} at start; "
        f"Python {m['python']}, numpy {m['numpy']}, scipy {m['scipy']}, numba {m['numba']}, "
        f"pyamg {m['pyamg']}, OpenPNM {m.get('openpnm') or 'not installed'}. "
        f"Suite wall time {doc['total_s']:.0f} s"
        + (f" (other sections kept from the run of {doc['merged_from']})" if doc.get("merged_from") else "")
        + ". Timings are min-of-N wall times; ratios are against a baseline measured in the same run "
        "(compare ratios across machines, not clocks). Each section shows the machine's load average "
        f"when it started; BLAS threads: OPENBLAS_NUM_THREADS={m.get('openblas_threads') or 'unset'}.",
        "",
    ]
    if doc.get("targets"):
        parts += ["## Targets", ""]
        parts.append(
            markdown_table(
                ["name", "target", "value", "unit", "met", "margin"],
                [dict(t, margin=t["margin"]) for t in doc["targets"]],
            )
        )
        parts.append("")
    for s in doc["sections"]:
        when = f"measured {s['measured']}, " if s.get("measured") else ""
        load = s.get("load_average_start")
        parts += [f"## {s['title']}", ""]
        if when or load is not None:
            parts += [f"_{when}load average {_fmt(load)} at start, {s.get('elapsed_s', 0.0):.0f} s_", ""]
        parts += [markdown_table(s["columns"], s["rows"]), ""]
        for extra in s.get("extra_tables", []):
            parts += [f"### {extra['title']}", "", markdown_table(extra["columns"], extra["rows"]), ""]
        for note in s.get("notes", []):
            parts.append(f"- {note}")
        if s.get("notes"):
            parts.append("")
    return "\n".join(parts)


def fit_exponent(x: list[float], y: list[float]) -> float:
    """Least-squares slope of log y against log x (scaling exponent)."""
    import numpy as np

    lx, ly = np.log(np.asarray(x, dtype=float)), np.log(np.asarray(y, dtype=float))
    return float(np.polyfit(lx, ly, 1)[0])


def plot_scaling(section: dict[str, Any], path: Path) -> Path:
    """Log-log plot of injection wall time (and time per step) against reachable porous cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = section["rows"]
    cells = [r["porous_cells"] for r in rows]
    fig, ax = plt.subplots(figsize=(5.5, 4.0), dpi=120)
    ax.loglog(cells, [r["wall_s"] for r in rows], "o-", label="injection wall time (s)")
    if all("cpu_s" in r for r in rows):
        ax.loglog(cells, [r["cpu_s"] for r in rows], "^-", label="injection CPU time (s)")
    ax.loglog(cells, [r["ms_per_step"] / 1e3 for r in rows], "s--", label="time per step (s)")
    for r in rows:
        ax.annotate(f"{r['spacing_mm']:g} mm", (r["porous_cells"], r["wall_s"]), textcoords="offset points",
                    xytext=(4, 6), fontsize=8)  # fmt: skip
    exp = section.get("exponent_wall")
    title = "Injection scaling" + (f" (wall ~ cells^{exp:.2f})" if exp is not None else "")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("reachable porous cells")
    ax.set_ylabel("seconds")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
