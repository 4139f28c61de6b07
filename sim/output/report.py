"""Report figures and a markdown summary for one run folder or one sweep folder (headless).

Run folder (``summary.json`` + ``time_series.csv`` + ``emboli.csv``):
- ``timeline``: needle (and syringe) pressure and injected / leaked / intravenous cement volume vs
  time, with leak onset, fluoroscopic detection and injection stop marked;
- ``emboli_sizes``: histograms of emboli diameter, length and aspect ratio (length/diameter);
- ``lobes``: emboli count and volume per pulmonary lobe.

Sweep folder (``results.csv`` + ``emboli.csv`` from :mod:`sim.studies.sweep`):
- ``emboli_vs_stop_delay`` / ``emboli_vs_volume``: emboli count and embolised volume vs the delay
  between leak detection and stop and vs the injected volume, as median and interquartile range
  over replicates (and over any other swept inputs), one series per value of the other input;
- ``lobes``: emboli per lobe per run (mean and standard deviation over runs);
- ``emboli_sizes``: pooled size histograms.

Figures are drawn on :class:`matplotlib.figure.Figure` objects (Agg canvas, no display and no global
backend change), written as PNG (and PDF on request) to ``<folder>/report/`` with ``report.md``.
Columns are read by name and any of them may be missing (a figure or row is then skipped or
shows NaN), so the report follows the pipeline's outputs as they evolve.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from sim.core.config import STOP_AFTER_LEAK_PATH
from sim.core.errors import ConfigError
from sim.core.labels import LOBE_NAMES
from sim.run.output_folder import check_report_folder, writer_of

LOBES = LOBE_NAMES
LOBE_COLORS = {"RUL": "#1f4e79", "RML": "#2e75b6", "RLL": "#9dc3e6", "LUL": "#c55a11", "LLL": "#f4b183"}
SERIES_COLORS = ("#1f4e79", "#c55a11", "#548235", "#7030a0", "#bf9000", "#2e75b6")
STOP_DELAY = STOP_AFTER_LEAK_PATH
VOLUME = "injection.volume_ml"
STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "savefig.dpi": 150,
    "figure.constrained_layout.use": True,
}
UNITS = (
    ("_ml", "ml"),
    ("_mm3", "mm³"),
    ("_mm", "mm"),
    ("_kpa", "kPa"),
    ("_mpa", "MPa"),
    ("_s", "s"),
    ("_fraction", "fraction"),
)


# ---------------------------------------------------------------------------- reading

RUN_SUMMARY_KEY = "stop_reason"  # every run's summary.json holds it
SWEEP_TABLE_KEY = "run_id"  # every sweep's results.csv has this column


def read_table(path: Path) -> dict[str, np.ndarray]:
    """CSV as columns: numeric columns float (empty cells NaN), other columns object arrays."""
    if not path.exists():
        return {}
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"{path}: cannot read the table ({exc})") from None
    if not rows:
        return {}
    header, body = rows[0], [r for r in rows[1:] if r]
    out: dict[str, np.ndarray] = {}
    for i, name in enumerate(header):
        cells = [r[i] if i < len(r) else "" for r in body]
        try:
            out[name] = np.array([float(c) if c != "" else math.nan for c in cells], dtype=float)
        except ValueError:
            out[name] = np.array([c if c != "" else None for c in cells], dtype=object)
    return out


def _number(value: Any) -> float:
    try:
        return math.nan if value is None else float(value)
    except (TypeError, ValueError):
        return math.nan


def _column(table: dict[str, np.ndarray], name: str, n: int) -> np.ndarray:
    """A numeric column, or NaN when absent or not numeric."""
    col = table.get(name)
    if col is None:
        return np.full(n, math.nan)
    if col.dtype == object:
        return np.array([_number(v) for v in col])
    return col.astype(float)


def _nrows(table: dict[str, np.ndarray]) -> int:
    return max((len(v) for v in table.values()), default=0)


def unit_of(name: str) -> str:
    for suffix, unit in UNITS:
        if name.endswith(suffix):
            return unit
    return ""


def _label(name: str) -> str:
    base = name.rsplit(".", 1)[-1]
    for suffix, _ in UNITS:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    unit = unit_of(name)
    text = base.replace("_", " ")
    return f"{text} ({unit})" if unit and unit != "fraction" else text


# ---------------------------------------------------------------------------- statistics


def spread(values: np.ndarray) -> tuple[float, float, float, int]:
    """Median, 25th and 75th percentile and count of the finite values (NaN when none)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan, math.nan, math.nan, 0
    q25, q50, q75 = np.percentile(v, [25.0, 50.0, 75.0])
    return float(q50), float(q25), float(q75), int(v.size)


def _fmt(value: float, digits: int = 3) -> str:
    if value is None or not np.isfinite(value):
        return "n/a"
    if value != 0 and (abs(value) >= 1e4 or abs(value) < 1e-3):
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}g}"


def _fmt_spread(values: np.ndarray) -> str:
    med, q25, q75, n = spread(values)
    if n == 0:
        return "n/a"
    return f"{_fmt(med)} [{_fmt(q25)}–{_fmt(q75)}]" if n > 1 else _fmt(med)


# ---------------------------------------------------------------------------- figure plumbing


def _save(fig: Figure, out_dir: Path, stem: str, pdf: bool) -> list[Path]:
    paths = [out_dir / f"{stem}.png"]
    fig.savefig(paths[0])
    if pdf:
        paths.append(out_dir / f"{stem}.pdf")
        fig.savefig(paths[1])
    return paths


def _empty_panel(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)


def _mark_events(ax: Any, summary: dict[str, Any], with_labels: bool) -> None:
    events = (
        ("leak_onset_s", "leak onset", "0.45", ":"),
        ("detection_time_s", "leak detected", "#d62728", "--"),
        ("stop_time_s", "injection stopped", "black", "-."),
    )
    for key, label, color, style in events:
        t = _number(summary.get(key))
        if np.isfinite(t):
            ax.axvline(t, color=color, linestyle=style, linewidth=1.0, label=label if with_labels else None)


# ---------------------------------------------------------------------------- single run


def load_run(folder: Path) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Summary dict, time series and emboli table of a run folder."""
    path = folder / "summary.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: bad JSON, or bytes that are not UTF-8
        raise ConfigError(f"{path}: cannot read run summary ({exc})") from None
    summary = doc.get("summary", doc) if isinstance(doc, dict) else None
    if not isinstance(summary, dict) or RUN_SUMMARY_KEY not in summary:
        raise ConfigError(f"{path}: not a pce-sim run summary (no '{RUN_SUMMARY_KEY}' in it)")
    return summary, read_table(folder / "time_series.csv"), read_table(folder / "emboli.csv")


def timeline_figure(summary: dict[str, Any], ts: dict[str, np.ndarray]) -> Figure:
    """Needle/syringe pressure and injected/leaked/intravenous volume vs time, events marked."""
    fig = Figure(figsize=(6.5, 5.0))
    ax_p, ax_v = fig.subplots(2, 1, sharex=True)
    n = _nrows(ts)
    t = _column(ts, "t_s", n)
    if n == 0 or not np.isfinite(t).any():
        _empty_panel(ax_p, "no time series in this run")
        _empty_panel(ax_v, "")
        return fig
    p = _column(ts, "needle_pressure_kpa", n)
    ax_p.plot(t, p, color="#1f4e79", label="needle (intraosseous)")
    ax_p.set_ylabel("needle pressure (kPa)")
    handles, labels = ax_p.get_legend_handles_labels()
    syringe = _column(ts, "syringe_pressure_mpa", n)
    if np.isfinite(syringe).any():
        ax_s = ax_p.twinx()
        ax_s.plot(t, syringe, color="#c55a11", linewidth=1.0, label="syringe")
        ax_s.set_ylabel("syringe pressure (MPa)", color="#c55a11")
        ax_s.tick_params(axis="y", colors="#c55a11")
        ax_s.spines["right"].set_visible(True)
        ax_s.grid(False)
        h2, l2 = ax_s.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    _mark_events(ax_p, summary, with_labels=True)
    h3, l3 = ax_p.get_legend_handles_labels()
    extra = [(h, lab) for h, lab in zip(h3, l3, strict=True) if lab not in labels]
    ax_p.legend(handles + [h for h, _ in extra], labels + [lab for _, lab in extra], loc="upper left")
    ax_p.set_title("Injection pressure")
    series = (
        ("injected_volume_ml", "injected", "#1f4e79", "-"),
        ("leaked_volume_ml", "leaked out of the vertebral body", "#d62728", "-"),
        ("cement_in_veins_ml", "in veins (columns)", "#c55a11", "--"),
    )
    for key, label, color, style in series:
        v = _column(ts, key, n)
        if np.isfinite(v).any():
            ax_v.plot(t, v, color=color, linestyle=style, label=label)
    _mark_events(ax_v, summary, with_labels=False)
    ax_v.set_xlabel("time from injection start (s)")
    ax_v.set_ylabel("cement volume (ml)")
    ax_v.set_title("Cement volumes")
    if ax_v.get_legend_handles_labels()[0]:
        ax_v.legend(loc="upper left")
    return fig


def size_histogram_figure(emboli: dict[str, np.ndarray], title: str) -> Figure:
    """Histograms of emboli diameter, length and length/diameter (tubular shape when > 3)."""
    fig = Figure(figsize=(7.5, 2.8))
    axes = fig.subplots(1, 3)
    n = _nrows(emboli)
    d = _column(emboli, "diameter_mm", n)
    length = _column(emboli, "length_mm", n)
    with np.errstate(divide="ignore", invalid="ignore"):
        aspect = length / d
    panels = (
        (d, "diameter (mm)", "#1f4e79"),
        (length, "length (mm)", "#2e75b6"),
        (aspect, "length / diameter", "#c55a11"),
    )
    for ax, (values, xlabel, color) in zip(axes, panels, strict=True):
        v = values[np.isfinite(values)]
        if v.size == 0:
            _empty_panel(ax, "no emboli")
            ax.set_xlabel(xlabel)
            continue
        ax.hist(
            v, bins=min(30, max(5, int(np.sqrt(v.size)) + 1)), color=color, edgecolor="white", linewidth=0.5
        )
        ax.axvline(
            float(np.median(v)),
            color="black",
            linestyle="--",
            linewidth=1.0,
            label=f"median {_fmt(np.median(v))}",
        )
        ax.set_xlabel(xlabel)
        ax.set_ylabel("emboli (count)")
        ax.legend(loc="upper right")
    if np.isfinite(aspect).any():
        axes[2].axvline(3.0, color="0.4", linestyle=":", linewidth=1.0, label="tubular: L/D > 3")
        axes[2].legend(loc="upper right")
    fig.suptitle(title)
    return fig


def _lobe_counts(emboli: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-lobe emboli count and volume (mm^3) from an emboli table with a 'lobe' column."""
    lobes = emboli.get("lobe")
    counts = np.zeros(len(LOBES))
    volumes = np.zeros(len(LOBES))
    if lobes is None:
        return counts, volumes
    vol = _column(emboli, "volume_mm3", len(lobes))
    for i, lobe in enumerate(LOBES):
        hit = np.array([str(x) == lobe for x in lobes], dtype=bool)
        counts[i] = hit.sum()
        volumes[i] = np.nansum(vol[hit]) if hit.any() else 0.0
    return counts, volumes


def lobes_run_figure(summary: dict[str, Any], emboli: dict[str, np.ndarray]) -> Figure:
    """Emboli count and volume per lobe for one run."""
    counts, volumes = _lobe_counts(emboli)
    if not counts.any():
        counts = np.array([_number(summary.get(f"emboli_{lobe}")) for lobe in LOBES])
        counts = np.nan_to_num(counts)
    fig = Figure(figsize=(6.5, 2.8))
    ax_n, ax_v = fig.subplots(1, 2)
    colors = [LOBE_COLORS[lobe] for lobe in LOBES]
    ax_n.bar(LOBES, counts, color=colors)
    ax_n.set_ylabel("emboli (count)")
    ax_n.set_title("Emboli per lobe")
    ax_v.bar(LOBES, volumes, color=colors)
    ax_v.set_ylabel("embolised volume (mm³)")
    ax_v.set_title("Cement volume per lobe")
    for ax in (ax_n, ax_v):
        ax.set_xlabel("lobe (R = right, L = left lung)")
    return fig


RUN_KEYS = (
    "injected_volume_ml",
    "injection_duration_s",
    "stop_reason",
    "leak_onset_s",
    "detection_time_s",
    "stop_time_s",
    "injected_after_detection_ml",
    "leaked_volume_ml",
    "leaked_to_azygos_ml",
    "leaked_to_ivc_ml",
    "max_needle_pressure_kpa",
    "max_syringe_pressure_mpa",
    "n_fragments",
    "n_emboli",
    "n_emboli_right",
    "n_emboli_left",
    "embolised_volume_ml",
    "perfusion_loss_fraction",
    "pvr_rise_fraction",
    "qanadli_index",
    "mass_balance_error",
    "wall_time_s",
)


def report_run(folder: Path, out_dir: Path, pdf: bool = False) -> list[Path]:
    """Figures and report.md for one run folder."""
    summary, ts, emboli = load_run(folder)
    out_dir.mkdir(parents=True, exist_ok=True)  # only once the inputs are read
    files: list[Path] = []
    with matplotlib.rc_context(STYLE):
        files += _save(timeline_figure(summary, ts), out_dir, "timeline", pdf)
        files += _save(size_histogram_figure(emboli, "Pulmonary cement emboli"), out_dir, "emboli_sizes", pdf)
        files += _save(lobes_run_figure(summary, emboli), out_dir, "lobes", pdf)
    lines = [f"# pce-sim run report: {folder.name}", "", "| metric | value | unit |", "|---|---:|---|"]
    for key in RUN_KEYS:
        if key in summary:
            value = summary[key]
            shown = _fmt(_number(value), 4) if not isinstance(value, str) else value
            lines.append(f"| {key} | {shown} | {unit_of(key)} |")
    n = _nrows(emboli)
    if n:
        d, length = _column(emboli, "diameter_mm", n), _column(emboli, "length_mm", n)
        with np.errstate(divide="ignore", invalid="ignore"):
            tubular = np.nanmean(length / d > 3.0) if np.isfinite(d).any() else math.nan
        lines += ["", f"Emboli: {n}; fraction tubular (length/diameter > 3): {_fmt(tubular)}."]
    lines += ["", "## Figures", ""]
    lines += [f"![{p.stem}]({p.name})" for p in files if p.suffix == ".png"]
    md = out_dir / "report.md"
    md.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [*files, md]


# ---------------------------------------------------------------------------- sweep


def _group_keys(values: np.ndarray) -> list[float]:
    """Distinct values, finite ascending then NaN (NaN = 'never' for the stop delay)."""
    finite = sorted({float(v) for v in values if np.isfinite(v)})
    return finite + ([math.nan] if np.isnan(values).any() else [])


def _same(a: np.ndarray, key: float) -> np.ndarray:
    return np.isnan(a) if np.isnan(key) else np.isclose(a, key, rtol=1e-12, atol=0.0)


def _key_text(key: float, nan_text: str) -> str:
    return nan_text if np.isnan(key) else _fmt(key)


def spread_plot(
    ax: Any,
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray | None,
    group_label: Callable[[float], str],
    nan_x_text: str = "n/a",
) -> None:
    """Median and IQR of y per distinct x (binned into quantiles when x is continuous), per group."""
    ok = np.isfinite(y)
    x, y = x[ok], y[ok]
    groups = None if groups is None else groups[ok]
    if y.size == 0:
        _empty_panel(ax, "no finished run reports this metric")
        return
    xs = _group_keys(x)
    binned = len(xs) > 12
    if binned:
        edges = np.unique(np.nanquantile(x, np.linspace(0.0, 1.0, 7)))
        centres = 0.5 * (edges[:-1] + edges[1:])
        xi = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, len(centres) - 1)
        positions, ticks = centres, None
    else:
        finite = [k for k in xs if np.isfinite(k)]
        step = (finite[-1] - finite[0]) / max(len(finite) - 1, 1) if len(finite) > 1 else 1.0
        nan_pos = (finite[-1] + 1.5 * step) if finite else 0.0
        positions = np.array([k if np.isfinite(k) else nan_pos for k in xs])
        ticks = [_key_text(k, nan_x_text) for k in xs]
    group_keys = [math.nan] if groups is None else _group_keys(groups)
    width = (np.ptp(positions) if len(positions) > 1 else 1.0) * 0.012
    for g_i, gk in enumerate(group_keys):
        in_group = np.ones(y.size, dtype=bool) if groups is None else _same(groups, gk)
        color = SERIES_COLORS[g_i % len(SERIES_COLORS)]
        offset = (g_i - (len(group_keys) - 1) / 2) * width * 2
        med, lo, hi, px = [], [], [], []
        for p_i, pos in enumerate(positions):
            sel = in_group & ((xi == p_i) if binned else _same(x, xs[p_i]))
            m, q25, q75, count = spread(y[sel])
            if count:
                med.append(m)
                lo.append(m - q25)
                hi.append(q75 - m)
                px.append(pos + offset)
            jitter = np.full(int(sel.sum()), pos + offset)
            ax.scatter(jitter, y[sel], s=7, color=color, alpha=0.35, linewidths=0)
        label = None if groups is None else group_label(gk)
        ax.errorbar(px, med, yerr=[lo, hi], color=color, marker="o", markersize=4, capsize=2.5, label=label)
    if ticks is not None:
        ax.set_xticks(positions, ticks)
    if groups is not None:
        ax.legend(loc="best")


def _stop_text(delay: float) -> str:
    if np.isnan(delay):
        return "never stopped"
    return "stopped at detection" if delay == 0 else f"stopped {_fmt(delay)} s after detection"


def _volume_text(volume: float) -> str:
    return "volume n/a" if np.isnan(volume) else f"{_fmt(volume)} ml planned"


def _sweep_groups(results: dict[str, np.ndarray], name: str, n: int) -> np.ndarray | None:
    """A swept input used to split series when it takes 2 to 6 distinct values."""
    if name not in results:
        return None
    col = _column(results, name, n)
    k = len(_group_keys(col))
    return col if 2 <= k <= 6 else None


def sweep_metric_figure(
    results: dict[str, np.ndarray],
    x: np.ndarray,
    xlabel: str,
    groups: np.ndarray | None,
    group_label: Callable[[float], str],
    title: str,
    nan_x_text: str = "n/a",
) -> Figure:
    """Emboli count and embolised volume (median, IQR, runs) vs one input."""
    n = _nrows(results)
    fig = Figure(figsize=(7.5, 3.2))
    axes = fig.subplots(1, 2)
    for ax, key, ylabel in (
        (axes[0], "n_emboli", "pulmonary emboli (count)"),
        (axes[1], "embolised_volume_ml", "embolised cement volume (ml)"),
    ):
        spread_plot(ax, x, _column(results, key, n), groups, group_label, nan_x_text)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
    fig.suptitle(f"{title}: median and interquartile range (dots: single runs)")
    return fig


def lobes_sweep_figure(results: dict[str, np.ndarray], emboli: dict[str, np.ndarray]) -> Figure:
    """Emboli per lobe per finished run: mean and standard deviation over runs."""
    n = _nrows(results)
    done = np.array([s == "done" for s in results.get("status", np.array(["done"] * n, dtype=object))])
    ids = results.get("run_id", np.array([str(i) for i in range(n)], dtype=object))[done]
    per_run = np.zeros((len(ids), len(LOBES)))
    e_ids = emboli.get("run_id")
    e_lobes = emboli.get("lobe")
    if e_ids is not None and e_lobes is not None:
        row_of = {str(r): i for i, r in enumerate(ids)}
        for rid, lobe in zip(e_ids, e_lobes, strict=True):
            if str(rid) in row_of and str(lobe) in LOBES:
                per_run[row_of[str(rid)], LOBES.index(str(lobe))] += 1
    else:
        for j, lobe in enumerate(LOBES):
            per_run[:, j] = np.nan_to_num(_column(results, f"emboli_{lobe}", n)[done])
    fig = Figure(figsize=(5.0, 3.0))
    ax = fig.subplots()
    if len(ids) == 0:
        _empty_panel(ax, "no finished runs")
        return fig
    mean = per_run.mean(axis=0)
    sd = per_run.std(axis=0, ddof=1) if len(ids) > 1 else np.zeros(len(LOBES))
    yerr = np.vstack([np.minimum(sd, mean), sd])  # counts are >= 0: clip the lower whisker at zero
    ax.bar(LOBES, mean, yerr=yerr, capsize=3, color=[LOBE_COLORS[lobe] for lobe in LOBES])
    ax.set_xlabel("lobe (R = right, L = left lung)")
    ax.set_ylabel("emboli per run (mean ± sd)")
    total = per_run.sum()
    right = per_run[:, :3].sum() / total if total else math.nan
    ax.set_title(f"Lobar distribution over {len(ids)} runs (right lung {_fmt(100 * right)} % of emboli)")
    return fig


SWEEP_KEYS = (
    "injected_volume_ml",
    "injected_after_detection_ml",
    "leaked_volume_ml",
    "n_emboli",
    "embolised_volume_ml",
    "perfusion_loss_fraction",
)


def report_sweep(folder: Path, out_dir: Path, pdf: bool = False) -> list[Path]:
    """Figures and report.md for a sweep folder."""
    results = read_table(folder / "results.csv")
    emboli = read_table(folder / "emboli.csv")
    n = _nrows(results)
    if results and SWEEP_TABLE_KEY not in results:
        raise ConfigError(
            f"{folder / 'results.csv'}: not a pce-sim sweep table (no '{SWEEP_TABLE_KEY}' column)"
        )
    if n == 0:
        raise ConfigError(f"{folder / 'results.csv'}: no runs to report (run `pce-sim sweep` first)")
    out_dir.mkdir(parents=True, exist_ok=True)  # only once the inputs are read
    status = results.get("status", np.array(["done"] * n, dtype=object))
    done = np.array([s == "done" for s in status])
    stop_groups = _sweep_groups(results, STOP_DELAY, n)
    vol_groups = _sweep_groups(results, VOLUME, n)
    files: list[Path] = []
    notes: list[str] = []
    with matplotlib.rc_context(STYLE):
        if STOP_DELAY in results:
            x_delay, delay_label = _column(results, STOP_DELAY, n), "stop delay after leak detection (s)"
        else:
            x_delay = _column(results, "stop_time_s", n) - _column(results, "detection_time_s", n)
            delay_label = "stop time − detection time (s)"
        if np.isfinite(x_delay).any() or STOP_DELAY in results:
            fig = sweep_metric_figure(
                results, x_delay, delay_label, vol_groups, _volume_text, "Emboli vs stop delay", "never"
            )
            files += _save(fig, out_dir, "emboli_vs_stop_delay", pdf)
        else:
            notes.append("No stop delay in this sweep: the stop-delay figure is omitted.")
        if VOLUME in results:
            x_vol, vol_label = _column(results, VOLUME, n), "planned cement volume (ml)"
        else:
            x_vol, vol_label = _column(results, "injected_volume_ml", n), "injected cement volume (ml)"
        if np.isfinite(x_vol).any():
            fig = sweep_metric_figure(
                results,
                x_vol,
                vol_label,
                stop_groups,
                _stop_text,
                "Emboli vs volume",
            )
            files += _save(fig, out_dir, "emboli_vs_volume", pdf)
        else:
            notes.append("No injected volume in the results: the volume figure is omitted.")
        files += _save(lobes_sweep_figure(results, emboli), out_dir, "lobes", pdf)
        files += _save(
            size_histogram_figure(emboli, "Pulmonary cement emboli, all runs"), out_dir, "emboli_sizes", pdf
        )
    md = out_dir / "report.md"
    md.write_text("\n".join(_sweep_markdown(folder, results, done, n, notes, files)) + "\n", encoding="utf-8")
    return [*files, md]


def _sweep_markdown(
    folder: Path,
    results: dict[str, np.ndarray],
    done: np.ndarray,
    n: int,
    notes: list[str],
    files: list[Path],
) -> list[str]:
    status = results.get("status", np.array(["done"] * n, dtype=object))
    n_failed = int(sum(s == "failed" for s in status))
    lines = [
        f"# pce-sim sweep report: {folder.name}",
        "",
        f"{n} scenarios: {int(done.sum())} done, {n_failed} failed, "
        f"{n - int(done.sum()) - n_failed} not run.",
        "Values are median [interquartile range] over the finished runs of each group.",
        "",
    ]
    keys = [k for k in SWEEP_KEYS if k in results]
    group_cols = [
        (c, title, nan)
        for c, title, nan in ((STOP_DELAY, "stop delay (s)", "never"), (VOLUME, "planned volume (ml)", "n/a"))
        if c in results and len(_group_keys(_column(results, c, n)[done])) <= 12
    ]
    header = [t for _, t, _ in group_cols] or ["runs"]
    header += ["n", *[_label(k) for k in keys]]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    groups: list[tuple[list[str], np.ndarray]] = [([], done)] if group_cols else [(["all"], done)]
    for col, _, nan_text in group_cols:  # one row per combination of the grouped inputs
        g = _column(results, col, n)
        groups = [
            (names + [_key_text(k, nan_text)], sel & _same(g, k))
            for names, sel in groups
            for k in _group_keys(g[done])
        ]
    for names, sel in groups:
        if not sel.any():
            continue
        cells = [*names, str(int(sel.sum()))] + [_fmt_spread(_column(results, k, n)[sel]) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    if n_failed:
        lines += ["", "## Failed runs", ""]
        errors = results.get("error", np.array([None] * n, dtype=object))
        ids = results.get("run_id", np.array([""] * n, dtype=object))
        for i in np.flatnonzero([s == "failed" for s in status])[:20]:
            lines.append(f"- `{ids[i]}`: {errors[i]}")
    lines += ["", *notes, "", "## Figures", ""]
    lines += [f"![{p.stem}]({p.name})" for p in files if p.suffix == ".png"]
    return lines


# ---------------------------------------------------------------------------- entry point


def write_report(folder: str | Path, pdf: bool = False, out_dir: str | Path | None = None) -> list[Path]:
    """Report a run folder (``summary.json``) or a sweep folder (``results.csv``) into ``<folder>/report``."""
    src = Path(folder)
    if not src.is_dir():
        raise ConfigError(f"{src}: not a folder (expected a run or sweep folder)")
    out = Path(out_dir) if out_dir is not None else src / "report"
    check_report_folder(out)
    if (src / "results.csv").exists():
        return report_sweep(src, out, pdf)
    if (src / "summary.json").exists():
        return report_run(src, out, pdf)
    if (src / "ledger.sqlite").exists():  # a sweep or cohort before its first tables: running, or stopped
        writer = writer_of(src)
        if writer is None and src.is_symlink():  # a study started on the folder the link names
            writer = writer_of(src.resolve())
        if writer is not None:
            who = f" (pid {writer})" if writer else ""
            raise ConfigError(
                f"{src}: a sweep or cohort still running{who}, without its results.csv yet; report it after "
                "its first export"
            )
        raise ConfigError(
            f"{src}: a sweep or cohort folder without its results.csv yet (it stopped before its first "
            "export); resume it with the same command, then report it"
        )
    raise ConfigError(f"{src}: neither a run folder (summary.json) nor a sweep folder (results.csv)")
