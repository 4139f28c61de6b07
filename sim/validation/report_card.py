"""The report card: plan the suite, run it, write ``report_card.md``, ``report_card.json`` and figures.

:func:`plan_suite` reads and checks every selected experiment before anything runs (both files,
the model outputs the checks name, every group's scenario), so bad input stops at once with one
line. :func:`run_suite` runs the experiments in order and evaluates their checks;
:func:`write_report_card` writes the folder the way run folders are written
(:mod:`sim.run.output_folder`): claimed by a lock file, written to a hidden
``.<name>.partial-<pid>-*`` sibling and renamed into place, an existing non-empty folder replaced
only with ``overwrite``. A failing verdict is a result, not an error.
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sim.core.units import KPA_PA, ML_M3, MPA_PA
from sim.run.output_folder import OutputClaim, check_replaceable, make_partial_folder
from sim.run.results import replace_dir
from sim.validation.experiments import ModelOutput, count_runs, model_keys, run_experiment, scenarios
from sim.validation.figures import plot_experiment
from sim.validation.references import ExperimentSpec, ReferenceSet, load_pair, select
from sim.validation.verdicts import CheckOutcome, check_model_names, evaluate, finite_json, fmt

FIGURES = "figures"
MARKDOWN = "report_card.md"
JSON = "report_card.json"
TABLE_COLUMNS = ("experiment", "check", "published", "pce-sim", "accepted", "verdict")

SuiteProgress = Callable[[str, int, int], None]  # (label of the run starting, runs done, runs in all)


@dataclass
class ExperimentPlan:
    """One experiment, read and checked, ready to run."""

    spec: ExperimentSpec
    refs: ReferenceSet
    spec_path: Path
    ref_path: Path
    n_runs: int


@dataclass
class ExperimentReport:
    """An experiment's model output and verdicts."""

    plan: ExperimentPlan
    output: ModelOutput
    outcomes: list[CheckOutcome]
    elapsed_s: float

    @property
    def name(self) -> str:
        return self.plan.spec.experiment

    @property
    def passed(self) -> bool:
        """Every check of the experiment passes."""
        return all(o.passed for o in self.outcomes)


@dataclass
class ReportCard:
    """The suite's result."""

    experiments: list[ExperimentReport] = field(default_factory=list)
    started_utc: str = ""
    git: str | None = None
    total_s: float = 0.0

    @property
    def outcomes(self) -> list[CheckOutcome]:
        return [o for e in self.experiments for o in e.outcomes]


# ---------------------------------------------------------------------------- plan and run


def plan_suite(only: list[str] | None = None, folder: Path | None = None) -> list[ExperimentPlan]:
    """Read and check the selected experiments (ConfigError, one line, on the first bad input)."""
    plans = []
    for name in select(only, folder):
        spec, refs, spec_path, ref_path = load_pair(name, folder)
        check_model_names(refs, model_keys(spec), ref_path)
        scenarios(spec, str(spec_path))  # every group's scenario validates before anything runs
        plans.append(ExperimentPlan(spec, refs, spec_path, ref_path, count_runs(spec)))
    return plans


def run_suite(plans: list[ExperimentPlan], progress: SuiteProgress | None = None) -> ReportCard:
    """Run every planned experiment and evaluate its checks."""
    from sim.core.provenance import git_hash

    card = ReportCard(started_utc=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), git=git_hash())
    total = sum(p.n_runs for p in plans)
    done = 0
    t_suite = time.perf_counter()
    for plan in plans:
        name = plan.spec.experiment

        def step(label: str, name: str = name) -> None:
            nonlocal done
            if progress is not None:
                progress(f"{name}: {label}", done, total)
            done += 1

        t0 = time.perf_counter()
        output = run_experiment(plan.spec, str(plan.spec_path), step)
        outcomes = evaluate(plan.refs, output)
        card.experiments.append(ExperimentReport(plan, output, outcomes, time.perf_counter() - t0))
    if progress is not None:
        progress("done", done, total)
    card.total_s = time.perf_counter() - t_suite
    return card


# ---------------------------------------------------------------------------- tables and documents


def verdict_text(outcome: CheckOutcome) -> str:
    """PASS, or FAIL with how far the model is from acceptance."""
    return "PASS" if outcome.passed else f"FAIL ({outcome.miss_text})"


def table_rows(card: ReportCard) -> list[dict[str, str]]:
    """One row per check: experiment, check, published, pce-sim, accepted, verdict."""
    return [
        {
            "experiment": e.name,
            "check": o.title,
            "published": o.reference_text,
            "pce-sim": o.model_text,
            "accepted": o.acceptance_text,
            "verdict": verdict_text(o),
        }
        for e in card.experiments
        for o in e.outcomes
    ]


def markdown_table(rows: list[dict[str, str]], columns: tuple[str, ...] = TABLE_COLUMNS) -> str:
    """A GitHub markdown table of ``rows`` (cells with '|' escaped)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(c, "")).replace("|", "\\|") for c in columns) + " |")
    return "\n".join(lines)


def _runs_table(out: ModelOutput) -> str:
    rows = []
    for r in out.runs:
        q = r.quantities
        rows.append(
            {
                "group": r.group,
                "cement": f"{r.inputs['preset']}, {r.inputs['time_after_mixing_min']:g} min",
                "rate (ml/s)": fmt(r.inputs["rate_ml_per_s"]),
                "injected (ml)": fmt(q["injected_volume_m3"] / ML_M3),
                "leaked (ml)": fmt(q["leaked_volume_m3"] / ML_M3),
                "needle-tip rise (kPa)": fmt(q["needle_pressure_rise_pa"] / KPA_PA),
                "syringe peak (MPa)": fmt(q["syringe_pressure_max_pa"] / MPA_PA),
                "cannula share": fmt(q["cannula_share"]),
                "stop": r.stop_reason,
            }
        )
    columns = tuple(rows[0]) if rows else ()
    return markdown_table(rows, columns)


def markdown(card: ReportCard, figures: dict[str, str]) -> str:
    """The report card as markdown: summary, the table, then one section per experiment."""
    outcomes = card.outcomes
    n_pass = sum(o.passed for o in outcomes)
    n_runs = sum(len(e.output.runs) for e in card.experiments)
    spacings = sorted({e.plan.spec.grid_spacing_mm for e in card.experiments})
    parts = [
        "# pce-sim validation report card",
        "",
        f"{card.started_utc}, git {card.git or '?'}; {len(card.experiments)} experiments, "
        f"{n_runs} model runs at grid spacing {', '.join(f'{s:g}' for s in spacings)} mm, "
        f"{card.total_s:.0f} s. "
        f"**{n_pass} of {len(outcomes)} checks pass**; experiments passing every check: "
        + (", ".join(e.name for e in card.experiments if e.passed) or "none")
        + ". Experiments, analogues and acceptance rules: docs/validation.md.",
        "",
        markdown_table(table_rows(card)),
        "",
    ]
    for e in card.experiments:
        spec, refs = e.plan.spec, e.plan.refs
        parts += [f"## {e.name}: {spec.title}", "", refs.citation, ""]
        parts += [f"Model quantity: {spec.measured_as}", ""]
        if e.name in figures:
            parts += [f"![{e.name}]({figures[e.name]})", ""]
        parts += [_runs_table(e.output), ""]
        for note in e.output.notes:
            parts.append(f"- {note}")
        for q in refs.qualitative:
            state = "scored" if q.scored else "not scored"
            parts.append(f"- Published, {state}: {q.finding}" + (f" ({q.why})" if q.why else ""))
        parts += ["", "Assumptions:", ""]
        parts += [f"- {a}" for a in spec.assumptions]
        parts.append("")
    return "\n".join(parts)


def to_json(card: ReportCard, figures: dict[str, str]) -> dict[str, Any]:
    """The report card as a JSON-ready document (SI model values, display-unit verdict numbers)."""
    experiments = []
    for e in card.experiments:
        out = e.output
        experiments.append(
            {
                "experiment": e.name,
                "title": e.plan.spec.title,
                "kind": e.plan.spec.kind,
                "citation": e.plan.refs.citation,
                "config": str(e.plan.spec_path),
                "references_file": str(e.plan.ref_path),
                "grid_spacing_mm": e.plan.spec.grid_spacing_mm,
                "verdict": "PASS" if e.passed else "FAIL",
                "checks": [o.as_dict() for o in e.outcomes],
                "references": {k: v.model_dump() for k, v in e.plan.refs.references.items()},
                "qualitative": [q.model_dump() for q in e.plan.refs.qualitative],
                "measured_as": e.plan.spec.measured_as,
                "assumptions": list(e.plan.spec.assumptions),
                "model_si": {
                    "values": out.values,
                    "samples": out.samples,
                    "bands": {k: list(v) for k, v in out.bands.items()},
                    "curves": out.curves,
                },
                "runs": [
                    {
                        "group": r.group,
                        "inputs": r.inputs,
                        "quantities_si": r.quantities,
                        "stop_reason": r.stop_reason,
                        "wall_time_s": r.wall_time_s,
                    }
                    for r in out.runs
                ],  # fmt: skip
                "notes": out.notes,
                "figure": figures.get(e.name),
                "elapsed_s": e.elapsed_s,
            }
        )
    outcomes = card.outcomes
    return finite_json(
        {
            "suite": "pce-sim report-card",
            "started_utc": card.started_utc,
            "git": card.git,
            "total_s": card.total_s,
            "checks": len(outcomes),
            "passed": sum(o.passed for o in outcomes),
            "failed": sum(not o.passed for o in outcomes),
            "table": table_rows(card),
            "experiments": experiments,
        }
    )


# ---------------------------------------------------------------------------- writing


def write_report_card(card: ReportCard, out_dir: str | Path, overwrite: bool = False) -> list[Path]:
    """Write report_card.md, report_card.json and figures/<experiment>.png atomically into ``out_dir``."""
    out = Path(out_dir)
    with OutputClaim(out):
        check_replaceable(out, JSON, overwrite)
        tmp = make_partial_folder(out)
        try:
            (tmp / FIGURES).mkdir()
            figures: dict[str, str] = {}
            for e in card.experiments:
                rel = f"{FIGURES}/{e.name}.png"
                plot_experiment(e.plan.refs, e.output, e.outcomes, tmp / rel, e.plan.spec.title)
                figures[e.name] = rel
            (tmp / MARKDOWN).write_text(markdown(card, figures), encoding="utf-8")
            with (tmp / JSON).open("w", encoding="utf-8") as fh:
                json.dump(to_json(card, figures), fh, indent=2)
                fh.write("\n")
            replace_dir(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return [out / MARKDOWN, out / JSON, *(out / f for f in figures.values())]
