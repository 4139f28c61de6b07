"""One figure per experiment: the model next to the published data and its error bars.

Panels follow the checks: all ``ratio_sd`` checks share a panel (published ratio +- the accepted
SDs, model ratio), each ``range`` check gets one (published value, accepted range shaded, the
scored model group filled and the other groups of the same quantity hollow), ``ratio_factor`` one
(log scale, the accepted factor as an error bar), the ``overlap`` checks of one sample one (the
model sample as dots with its percentile interval, each published mean +- SD and +- z SD), each
``contains`` check one (the model curve over the swept parameter, the published value as a line),
each ``greater`` check one (the two model values). A leakage experiment adds the model's leaked
volume per group. Model: red; published data: black.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from sim.core.units import ML_M3
from sim.validation.experiments import REDUCTION_BAND, REDUCTION_BAND_NEWTONIAN, ModelOutput
from sim.validation.references import CheckSpec, ReferenceSet
from sim.validation.verdicts import CheckOutcome, sample_interval

MODEL = "tab:red"
DATA = "black"


def _verdict_title(ax: Any, text: str, outcomes: list[CheckOutcome]) -> None:
    marks = " ".join(o.verdict for o in outcomes)
    lines = [w for part in text.split("\n") for w in textwrap.wrap(part, 52)]
    ax.set_title("\n".join([*lines, marks]), fontsize=8.5)


def _ratio_panel(ax: Any, checks: list[CheckSpec], outcomes: list[CheckOutcome]) -> None:
    x = np.arange(len(checks))
    for i, o in enumerate(outcomes):
        n = o.numbers
        r, lo, hi = n["reference_ratio"], n["low"], n["high"]
        ax.errorbar(i - 0.08, r, yerr=[[r - lo], [hi - r]], fmt="o", color=DATA, capsize=4,
                    label="published ratio ± accepted SD" if i == 0 else None)  # fmt: skip
        ax.plot(i + 0.08, n["model_ratio"], "D", color=MODEL, label="pce-sim" if i == 0 else None)
    ax.axhline(1.0, color="0.7", lw=0.8, zorder=0)
    ax.set_xticks(x)
    ax.set_xticklabels([c.title.replace(", ", ",\n", 1) for c in checks], fontsize=7)
    ax.set_ylabel("ratio of leaked cement")
    ax.legend(fontsize=7, loc="best")
    _verdict_title(ax, "ratios between groups", outcomes)


def _range_panel(
    ax: Any, check: CheckSpec, outcome: CheckOutcome, refs: ReferenceSet, out: ModelOutput
) -> None:
    ref = refs.references[check.references[0]]
    n = outcome.numbers
    ax.axhspan(n["low"], n["high"], color="0.9", label="accepted range")
    ax.plot(0, ref.value, "o", color=DATA, label="published")
    ax.plot(1, n["model"], "D", color=MODEL, label="pce-sim (scored)")
    group, quantity = check.models[0].split(".", 1)
    others = [
        (r.group, r.quantities[quantity]) for r in out.runs if r.group != group and quantity in r.quantities
    ]
    for j, (name, value) in enumerate(others):
        ax.plot(1.0 + 0.15 * (j + 1), value / ref.si_factor, "D", mfc="white", color=MODEL,
                label="pce-sim, other groups (not scored)" if j == 0 else None)  # fmt: skip
        ax.annotate(name, (1.0 + 0.15 * (j + 1), value / ref.si_factor), fontsize=6, xytext=(3, 3),
                    textcoords="offset points")  # fmt: skip
    ax.set_xlim(-0.6, 1.6 + 0.15 * len(others))
    ax.set_xticks([0, 1])
    ax.set_xticklabels(["published", "pce-sim"], fontsize=8)
    ax.set_ylabel(f"{check.references[0].replace('_', ' ')} ({ref.units})", fontsize=8)
    if n["high"] / max(n["low"], 1e-300) > 20:
        ax.set_yscale("log")
    ax.legend(fontsize=6.5, loc="best")
    _verdict_title(ax, check.title, [outcome])


def _factor_panel(ax: Any, check: CheckSpec, outcome: CheckOutcome) -> None:
    n = outcome.numbers
    r = n["reference_ratio"]
    ax.errorbar(0, r, yerr=[[r - n["low"]], [n["high"] - r]], fmt="o", color=DATA, capsize=4,
                label=f"published, accepted within x/÷ {n['factor']:g}")  # fmt: skip
    ax.plot(1, n["model_ratio"], "D", color=MODEL, label="pce-sim")
    ax.set_yscale("log")
    ax.set_xlim(-0.6, 1.6)
    ax.set_xticks([0, 1])
    ax.set_xticklabels(["published", "pce-sim"], fontsize=8)
    ax.set_ylabel("ratio")
    ax.legend(fontsize=7, loc="best")
    _verdict_title(ax, check.title, [outcome])


def _overlap_panel(ax: Any, checks: list[CheckSpec], outcomes: list[CheckOutcome], refs: ReferenceSet,
                   out: ModelOutput) -> None:  # fmt: skip
    first = refs.references[checks[0].references[0]]
    factor, units = first.si_factor, first.units
    samples = np.asarray(out.samples[checks[0].models[0]], dtype=np.float64) / factor
    rng = np.random.default_rng(0)  # jitter of the dots only
    groups = [r.inputs.get("preset", "") for r in out.runs]
    for preset, marker in (("medium", "o"), ("high", "s"), ("low", "^")):
        sel = np.array([g == preset for g in groups])
        if sel.any():
            ax.plot(0.15 * rng.uniform(-1, 1, sel.sum()), samples[sel], marker, color=MODEL, alpha=0.6, ms=4,
                    mfc="none", label=f"pce-sim runs, {preset}")  # fmt: skip
    lo, hi = sample_interval(list(samples), checks[0].percentiles)
    med = float(np.median(samples))
    p_lo, p_hi = checks[0].percentiles
    ax.errorbar(0.35, med, yerr=[[med - lo], [hi - med]], fmt="D", color=MODEL, capsize=4,
                label=f"pce-sim median, P{p_lo:g}-P{p_hi:g}")  # fmt: skip
    for i, c in enumerate(checks):
        ref = refs.references[c.references[0]]
        sd = ref.sd or 0.0
        x = 1.0 + 0.4 * i
        ax.errorbar(x, ref.value, yerr=c.z * sd, fmt="none", color="0.6", capsize=3)
        ax.errorbar(x, ref.value, yerr=sd, fmt="o", color=DATA, capsize=4,
                    label=f"published mean ± SD (grey ± {c.z:g} SD)" if i == 0 else None)  # fmt: skip
        ax.annotate(
            c.name.split("_")[-1], (x, ref.value), fontsize=6.5, xytext=(4, -10), textcoords="offset points"
        )
    for name, ref in refs.references.items():
        if ref.sd is None and ref.units == units and all(name not in c.references for c in checks):
            ax.axhline(ref.value, color=DATA, ls=":", lw=1, label=f"published {name.replace('_', ' ')}")
    ax.set_xlim(-0.5, 1.5 + 0.4 * len(checks))
    ax.set_xticks([0.15, 1.0 + 0.2 * (len(checks) - 1)])
    ax.set_xticklabels(["pce-sim", "patients"], fontsize=8)
    ax.set_ylabel(f"peak syringe pressure ({units})")
    ax.set_yscale("log")
    ax.legend(fontsize=6, loc="lower right")
    _verdict_title(ax, "peak syringe pressure distributions", outcomes)


def _contains_panel(
    ax: Any, check: CheckSpec, outcome: CheckOutcome, refs: ReferenceSet, out: ModelOutput
) -> None:
    ref = refs.references[check.references[0]]
    key = check.models[0]  # the scored band: the cement's or the Newtonian fluid's
    for name, curve in out.curves.items():
        if not name.startswith(REDUCTION_BAND) or "y" not in curve:
            continue
        y = np.asarray(curve["y"]) / ref.si_factor
        label = curve.get("label", [name])[0]
        newtonian = name == REDUCTION_BAND_NEWTONIAN
        colour = "tab:blue" if newtonian else MODEL
        if name == key:
            ax.plot(curve["x"], y, "-", color=colour, lw=2, label=f"pce-sim, {label}")
        elif newtonian or name == REDUCTION_BAND:
            ax.plot(curve["x"], y, "--", color=colour, lw=1.2, label=f"pce-sim, {label} (not scored)")
        else:
            ax.plot(curve["x"], y, ":", color=MODEL, lw=1, label=f"pce-sim, preset {label} (not scored)")
    ax.axhline(ref.value, color=DATA, lw=1.2, label=f"published ({ref.value:g} {ref.units})")
    ax.set_xlabel("proximal (widened) fraction of the cannula length")
    ax.set_ylabel(f"delivery pressure reduction ({ref.units})")
    ax.legend(fontsize=6.5, loc="lower right")
    _verdict_title(ax, check.title, [outcome])


def _greater_panel(ax: Any, check: CheckSpec, outcome: CheckOutcome) -> None:
    n = outcome.numbers
    ax.bar([0, 1], [n["model_first"], n["model_second"]], color=[MODEL, "tab:pink"])
    ax.set_xticks([0, 1])
    ax.set_xticklabels([m.split(".")[0] for m in check.models], fontsize=8)
    ax.set_ylabel(f"pce-sim ({outcome.units})")
    _verdict_title(ax, f"{check.title}\npublished: {check.finding}", [outcome])


def _leak_panel(ax: Any, out: ModelOutput) -> None:
    names = [r.group for r in out.runs]
    vols = [r.quantities["leaked_volume_m3"] / ML_M3 for r in out.runs]
    colors = ["tab:orange" if r.inputs.get("preset") == "low" else "tab:purple" for r in out.runs]
    ax.bar(range(len(names)), vols, color=colors)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, fontsize=7, rotation=30)
    ax.set_ylabel("pce-sim leaked volume (ml)")
    ax.set_title("pce-sim leak per group (orange low, purple high preset)", fontsize=8.5)


def plot_experiment(refs: ReferenceSet, out: ModelOutput, outcomes: list[CheckOutcome], path: Path,
                    title: str) -> Path:  # fmt: skip
    """Draw the experiment's figure (panels as in the module docstring) to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_name = {o.name: o for o in outcomes}
    checks = refs.checks
    panels: list[Any] = []
    ratio = [c for c in checks if c.rule == "ratio_sd"]
    if ratio:
        panels.append(lambda ax: _ratio_panel(ax, ratio, [by_name[c.name] for c in ratio]))
    overlap = [c for c in checks if c.rule == "overlap"]
    if overlap:
        panels.append(lambda ax: _overlap_panel(ax, overlap, [by_name[c.name] for c in overlap], refs, out))
    for c in checks:
        o = by_name[c.name]
        if c.rule == "range":
            panels.append(lambda ax, c=c, o=o: _range_panel(ax, c, o, refs, out))
        elif c.rule == "ratio_factor":
            panels.append(lambda ax, c=c, o=o: _factor_panel(ax, c, o))
        elif c.rule == "contains":
            panels.append(lambda ax, c=c, o=o: _contains_panel(ax, c, o, refs, out))
        elif c.rule == "greater":
            panels.append(lambda ax, c=c, o=o: _greater_panel(ax, c, o))
    if out.kind == "leakage":
        panels.append(lambda ax: _leak_panel(ax, out))
    from matplotlib.ticker import FuncFormatter

    width = max(4.3 * len(panels), 6.0)
    fig, axes = plt.subplots(1, len(panels), figsize=(width, 4.2), dpi=110, squeeze=False)
    for draw, ax in zip(panels, axes[0], strict=True):
        draw(ax)
        ax.grid(True, alpha=0.3, which="both")
        if ax.get_yscale() == "log":  # plain numbers, minor labels at 2 and 5 x a power of ten
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
            ax.yaxis.set_minor_formatter(
                FuncFormatter(lambda v, _pos: f"{v:g}" if f"{v:e}"[0] in "25" else "")
            )
            ax.tick_params(axis="y", which="minor", labelsize=7)
    fig.suptitle("\n".join(textwrap.wrap(title, int(13 * width))), fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
