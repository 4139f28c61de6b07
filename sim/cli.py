"""Command-line interface: ``pce-sim validate | run | sweep | report | view | bench | cohort | report-card``.

User errors (bad config, existing output folder, missing tool) print one line in red and exit
with code 2, never a traceback, before any simulation work starts: ``validate`` and ``run`` share
one preflight (:mod:`sim.run.preflight`), ``run`` checks and claims its output folder
(:mod:`sim.run.output_folder`) before simulating, and sweeps and cohorts are counted and limited
(:mod:`sim.studies.sizing`) before they are expanded. Everything the user wrote (values, names,
paths) is printed literally, never read as rich markup. ``--quiet`` silences progress bars.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

from sim.core.errors import ConfigError, PceSimError, interruption_in
from sim.core.safe_yaml import bytes_as_escapes, path_label
from sim.run.output_folder import path_as_written
from sim.studies import MAX_WORKERS

app = typer.Typer(
    name="pce-sim",
    help="Vertebroplasty cement injection -> venous leakage -> pulmonary cement embolism simulator.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err_console = Console(stderr=True)
console = Console()

QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or tables.")]


def _print_version(value: bool) -> None:
    if value:
        from sim.core.provenance import code_digest, code_label

        print(code_label())
        print(f"code digest {code_digest()}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            is_eager=True,
            callback=_print_version,
            help="Print the version, git commit and code digest (the 'code' of results.csv) and exit.",
        ),
    ] = False,
) -> None:
    """Vertebroplasty cement injection -> venous leakage -> pulmonary cement embolism simulator."""


RerunStaleOpt = Annotated[
    bool,
    typer.Option("--rerun-stale", help="On resume, run again the runs that other pce-sim code made."),
]
KeepStaleOpt = Annotated[
    bool,
    typer.Option(
        "--keep-stale",
        help="On resume, keep runs that other pce-sim code made (results.csv's 'code' says which).",
    ),
]


def other_code_policy(rerun_stale: bool, keep_stale: bool) -> str:
    """The ledger's policy for runs made by other code, from the two flags (both is an error)."""
    if rerun_stale and keep_stale:
        raise ConfigError(
            "--rerun-stale and --keep-stale: choose one (re-run the other code's runs, or keep them)"
        )
    return "rerun" if rerun_stale else "keep" if keep_stale else "refuse"


AllowLargeOpt = Annotated[
    bool,
    typer.Option("--allow-large", help="Start a study above the size limit (see the README, CLI tour)."),
]


def say(target: Console, *parts: str | tuple[str, str]) -> None:
    """Print one line built from literal text parts (``(text, style)`` for styled ones): no markup,
    no highlighting, no emoji codes, no wrapping; user values appear exactly as written."""
    target.print(Text.assemble(*parts), soft_wrap=True, highlight=False)


def fail(message: str, code: int = 2) -> None:
    """Print a one-line user error and exit without a traceback.

    Bytes of a path that are not UTF-8 (Python keeps them as surrogates, printed `\\udcff`) are shown as the
    file system has them (`\\xff`)."""
    say(err_console, ("error:", "bold red"), " ", bytes_as_escapes(message))
    raise typer.Exit(code)


def _worker_count(text: str) -> int:
    """``--workers``: digits only (Python's int() read `1_0` as 10 workers), 1 to MAX_WORKERS."""
    if not (text.isascii() and text.isdigit()):
        raise typer.BadParameter("Input should be a whole number of workers, written in digits")
    count = int(text)
    if count < 1:
        raise typer.BadParameter("Input should be greater than or equal to 1")
    if count > MAX_WORKERS:
        raise typer.BadParameter(f"Input should be less than or equal to {MAX_WORKERS}")
    return count


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn pce-sim's own errors into one clear line and exit code 2 (1 for a failing disk)."""
    try:
        yield
    except PceSimError as exc:
        fail(str(exc))
    except OSError as exc:
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        fail(f"{where}{exc.strerror or exc}", code=1)
    except KeyboardInterrupt as exc:
        _interrupted(exc)
    except Exception as exc:  # an interrupt that landed inside numba arrives as a SystemError
        interrupt = interruption_in(exc)
        if interrupt is None:
            raise
        _interrupted(interrupt)


def _interrupted(exc: KeyboardInterrupt) -> None:
    say(err_console, ("interrupted", "yellow"))
    raise typer.Exit(143 if isinstance(exc, Terminated) else 130) from None


@contextmanager
def progress_bar(description: str, quiet: bool, total: float = 1.0) -> Iterator[Callable[[float], None]]:
    """A rich progress bar; yields ``update(fraction)``. Silent with ``--quiet``."""
    if quiet:
        yield lambda fraction: None
        return
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f}%"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console, transient=False) as prog:
        task = prog.add_task(description, total=total)
        yield lambda fraction: prog.update(task, completed=min(max(fraction, 0.0), 1.0) * total)


@app.command()
def validate(
    config: Annotated[Path, typer.Argument(help="Scenario YAML file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the SI scenario as JSON.")] = False,
) -> None:
    """Validate a scenario (every check `run` makes before its first step) and print it in SI units."""
    from sim.core.config import load_scenario
    from sim.run.preflight import preflight

    with user_errors():
        scenario = load_scenario(config)
        preflight(scenario, source=path_label(config))
        si = scenario.si()
        if as_json:
            print(json.dumps(si, indent=2))
        else:
            say(console, ("valid", "green"), f" {config}  (scenario '{scenario.name}', SI units)")
            _print_tree(si)


def _print_tree(data: dict[str, Any], indent: int = 0) -> None:
    for key, value in data.items():
        if isinstance(value, dict):
            say(console, " " * indent, (str(key), "bold"), ":")
            _print_tree(value, indent + 2)
        else:
            shown = f"{value:.6g}" if isinstance(value, float) else value
            say(console, " " * indent + f"{key}: {shown}")


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="Scenario YAML file.")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Run folder to create.", parser=path_as_written)
    ] = Path("results/run"),
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing run folder.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Simulate one vertebroplasty and write the run folder (summary.json, tables, VTK).

    Order: validate the file, check --out, run the preflight (as `validate`), claim --out (a second
    run into the same folder stops here with exit 2), simulate, write atomically, release.
    """
    from sim.core.config import load_scenario
    from sim.run.output_folder import OutputClaim, check_output_folder
    from sim.run.preflight import preflight

    with user_errors():
        scenario = load_scenario(config)
        out = check_output_folder(out, overwrite, replaces=RUN_FOLDER_FILES)
        report = preflight(scenario, source=path_label(config))
        from sim.run.pipeline import run_scenario, write_run

        with OutputClaim(out):
            check_output_folder(out, overwrite, replaces=RUN_FOLDER_FILES)  # again, under the claim
            with progress_bar(f"injecting {escape(scenario.name)}", quiet) as update:
                result = run_scenario(scenario, progress=update, stages=report.stages)
            write_run(result, out, overwrite=overwrite)
        if not quiet:
            _print_summary(result.summary)
            for line in summary_reading(
                result.summary,
                scenario.fluoroscopy.frame_interval_s,
                scenario.fluoroscopy.visibility_threshold_mm3,
            ):
                say(console, line)
            say(console, ("wrote", "green"), f" {out}")


# the files that mark a folder `run` and `report-card` wrote: --overwrite replaces only such a folder
RUN_FOLDER_FILES = ("summary.json",)
REPORT_CARD_FILES = ("report_card.json",)

# a detection that moves by more than half a frame for a 1 % error in the visible volume is fragile
FRAGILE_SHIFT_FRAMES = 0.5
# a leak not seen whose visible volume peaked within this share of its threshold is as fragile: the study's
# slow leak (cohort patient 1) peaked 4.9 % apart on the 0.75 and 0.375 mm grids at cfl 0.4, unseen on one
# and seen on the other (docs/convergence.md, Session 38)
NEAR_MISS_FRACTION = 0.05


def summary_reading(
    summary: dict[str, Any], frame_interval_s: float, threshold_mm3: float | None = None
) -> list[str]:
    """How far to trust the run's two headline outputs, in words: the leaked volume's discretisation
    error as the convergence study gives it (the difference to its finest grid of the study case nearest
    the run's situation, when the run's spacing is one of the study's: a lower bound for a case that
    converges slowly), and how many
    seconds a 1 % error in the visible volume moves the detection (``detection_shift_per_percent_s``),
    flagged as fragile above half a frame (a leak grazing its visibility threshold; README, Grid
    convergence). For a leak that reached the veins and was not seen (``threshold_mm3`` given), how close
    its visible volume came to the threshold, flagged as fragile within ``NEAR_MISS_FRACTION`` of it."""
    lines = []
    err, case = summary.get("leaked_volume_rel_error_estimate"), summary.get("leaked_volume_error_case")
    h = summary.get("grid_spacing_mm")
    if isinstance(err, float) and math.isfinite(err) and case:
        lines.append(
            f"leaked volume {summary['leaked_volume_ml']:.4g} ml on the {h:g} mm grid: about "
            f"{100 * err:.1f} % from the convergence study's finest grid "
            f"(case '{case}'; README, Grid convergence)"
        )
    seen, shift = summary.get("detection_time_s"), summary.get("detection_shift_per_percent_s")
    if isinstance(seen, float) and math.isfinite(seen) and isinstance(shift, float) and math.isfinite(shift):
        fragile = shift > FRAGILE_SHIFT_FRAMES * frame_interval_s
        lines.append(
            f"leak seen at {seen:.4g} s; a 1 % error in the visible volume moves it by {shift:.2g} s "
            f"(frames every {frame_interval_s:g} s)"
            + (": fragile, the leak grazes its visibility threshold" if fragile else "")
        )
    peak = summary.get("peak_visible_leak_mm3")
    unseen = isinstance(seen, float) and math.isnan(seen)
    if unseen and threshold_mm3 and isinstance(peak, float) and peak > 0.0:
        share = peak / threshold_mm3
        lines.append(
            f"leak not seen: its visible volume peaked at {peak:.4g} mm^3, {100 * share:.1f} % of the "
            f"{threshold_mm3:.4g} mm^3 threshold"
            + (": fragile, a finer grid or step may see it" if share >= 1.0 - NEAR_MISS_FRACTION else "")
        )
    return lines


def _print_summary(summary: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title="run summary", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in summary.items():
        if isinstance(value, float):
            shown = f"{value:.4g}"
        elif isinstance(value, dict | list):
            continue
        else:
            shown = str(value)
        table.add_row(Text(key), Text(shown))
    console.print(table)


@app.command()
def sweep(
    sweep_file: Annotated[Path, typer.Argument(help="Sweep YAML file (base scenario, method, parameters).")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Sweep folder (created, or resumed).", parser=path_as_written)
    ] = Path("results/sweep"),
    workers: Annotated[
        int | None,
        typer.Option("--workers", "-w", parser=_worker_count, help="Override the executor's worker count."),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Switch a folder holding a different sweep to this one.")
    ] = False,
    skip_failed: Annotated[
        bool, typer.Option("--skip-failed", help="On resume, do not retry runs that failed before.")
    ] = False,
    runner: Annotated[
        str, typer.Option("--runner", help="Advanced: 'module:function' mapping a Scenario to a RunResult.")
    ] = "sim.run.pipeline:run_scenario",
    rerun_stale: RerunStaleOpt = False,
    keep_stale: KeepStaleOpt = False,
    allow_large: AllowLargeOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Run (or resume) a parameter sweep; record every run in OUT/ledger.sqlite and export results.csv.

    The runs are counted (and refused above the size limit without --allow-large) before the sweep
    is expanded; the count and an estimated wall time are printed first.
    """
    from rich.progress import MofNCompleteColumn

    from sim.run.output_folder import OutputClaim, check_output_folder
    from sim.studies.executors import DEFAULT_WRITER, resolve_callable
    from sim.studies.sizing import SWEEP_RUN_LIMIT, check_study_size, sweep_estimate, sweep_run_count
    from sim.studies.sweep import SWEEP_MARKERS, expand_sweep, load_sweep, run_sweep

    with user_errors():
        other_code = other_code_policy(rerun_stale, keep_stale)
        spec, base_dir = load_sweep(sweep_file)
        count = sweep_run_count(spec)
        estimate = sweep_estimate(count, workers or spec.executor.workers)
        if not quiet:
            say(console, f"sweep '{spec.name}': {count:,} runs ({spec.method}), {estimate} -> {out}")
        check_study_size(str(sweep_file), "runs", count, SWEEP_RUN_LIMIT, allow_large, estimate)
        out = check_output_folder(out, overwrite=False, resume=SWEEP_MARKERS, study="sweep to resume")
        resolve_callable(runner)
        resolve_callable(DEFAULT_WRITER)
        expansion = expand_sweep(spec, base_dir, source=path_label(sweep_file))
        n = len(expansion.points)
        if not quiet:
            for path, override in expansion.shadowed_overrides:
                say(console, f"note: parameters.{path} is swept, so overrides.{override} never reaches a run")
            if expansion.duplicates_dropped:
                say(
                    console,
                    f"{expansion.duplicates_dropped:,} of the {count:,} sampled runs repeat an earlier one "
                    f"(the same scenario) and run once: {n:,} runs",
                )
        columns = (
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("[red]{task.fields[failed]} failed"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        # the folder's claim, as a run's and a cohort's: of a run and a sweep (or two sweeps) started on
        # one new folder, one writes it and the other stops here, before its progress bar
        with OutputClaim(out), Progress(*columns, console=err_console, disable=quiet) as prog:
            check_output_folder(out, overwrite=False, resume=SWEEP_MARKERS, study="sweep to resume")
            task = prog.add_task("runs", total=n, failed=0)
            outcome = run_sweep(
                expansion,
                out,
                workers=workers,
                runner=runner,
                force=force,
                retry_failed=not skip_failed,
                other_code=other_code,
                progress=lambda finished, total, failed: prog.update(task, completed=finished, failed=failed),
            )
    if not quiet:
        say(
            console,
            (str(outcome.done), "green"),
            " done, ",
            (str(len(outcome.failed)), "red"),
            f" failed, {outcome.skipped} already finished; wrote {out / 'results.csv'}",
        )
        if outcome.lost:
            say(console, f"{outcome.lost} finished runs ran again: folder or summary.json gone or broken")
    if outcome.failed:
        for index, run_id, error in outcome.failed[:10]:
            say(err_console, f"failed: scenario {index} ({run_id}): {error}")
        if len(outcome.failed) > 10:
            say(err_console, f"... and {len(outcome.failed) - 10} more (see {out / 'results.csv'})")
        raise typer.Exit(1)


@app.command()
def report(
    folder: Annotated[Path, typer.Argument(help="Run folder (summary.json) or sweep folder (results.csv).")],
    pdf: Annotated[bool, typer.Option("--pdf", help="Also write PDF versions of the figures.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Figures (PNG, optional PDF) and report.md for a run or a sweep folder."""
    from sim.output.report import write_report

    with user_errors():
        files = write_report(folder, pdf=pdf)
    if not quiet:
        for path in files:
            say(console, ("wrote", "green"), f" {path}")


@app.command()
def cohort(
    cohort_file: Annotated[Path, typer.Argument(help="Cohort YAML file (distributions, policies).")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Cohort folder (created, or resumed).", parser=path_as_written)
    ] = Path("results/cohort"),
    n: Annotated[int | None, typer.Option("--n", min=1, help="Number of virtual patients.")] = None,
    workers: Annotated[
        int | None,
        typer.Option("--workers", "-w", parser=_worker_count, help="Override the executor's worker count."),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Switch a folder holding a different cohort to this one.")
    ] = False,
    no_sensitivity: Annotated[
        bool, typer.Option("--no-sensitivity", help="Skip the Morris/Sobol sensitivity design.")
    ] = False,
    rerun_stale: RerunStaleOpt = False,
    keep_stale: KeepStaleOpt = False,
    allow_large: AllowLargeOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Run (or resume) a virtual patient cohort under its stop policies and write OUT/cohort_report.md.

    The patients and scenarios are counted (and refused above the size limit without --allow-large)
    before any patient is sampled; the count and an estimated wall time are printed first.
    """
    from rich.progress import MofNCompleteColumn

    from sim.run.output_folder import check_output_folder
    from sim.studies.cohort import COHORT_MARKERS, load_cohort, plan_cohort, run_cohort
    from sim.studies.cohort_report import write_cohort_report
    from sim.studies.sizing import COHORT_PATIENT_LIMIT, check_study_size, cohort_counts, cohort_estimate

    with user_errors():
        other_code = other_code_policy(rerun_stale, keep_stale)
        spec, base_dir = load_cohort(cohort_file)
        n_patients = spec.n if n is None else n
        scenarios, design_rows = cohort_counts(spec, n_patients, sensitivity=not no_sensitivity)
        mean_levels = 1.0 if spec.levels is None else spec.levels.mean_count
        estimate = cohort_estimate(n_patients, workers or spec.executor.workers, design_rows, mean_levels)
        if not quiet:
            say(
                console,
                f"cohort '{spec.name}': {n_patients:,} virtual patients x {len(spec.policies)} policies"
                + (f" + {design_rows:,} sensitivity runs" if design_rows else "")
                + f", {estimate} -> {out}",
            )
        check_study_size(
            str(cohort_file),
            "patients",
            n_patients,
            COHORT_PATIENT_LIMIT,
            allow_large,
            estimate,
            scenarios + design_rows,
        )
        out = check_output_folder(out, overwrite=False, resume=COHORT_MARKERS, study="cohort to resume")
        plan = plan_cohort(
            spec, base_dir, n=n, source=path_label(cohort_file), sensitivity=not no_sensitivity
        )
        columns = (
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("[red]{task.fields[failed]} failed"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=err_console, disable=quiet) as prog:
            tasks: dict[str, Any] = {}

            def update(phase: str, finished: int, total: int, failed: int) -> None:
                if phase not in tasks:
                    tasks[phase] = prog.add_task(phase, total=total, failed=0)
                prog.update(tasks[phase], completed=finished, total=total, failed=failed)

            result = run_cohort(
                plan,
                out,
                workers=workers,
                force=force,
                sensitivity=not no_sensitivity,
                progress=update,
                other_code=other_code,
            )
        files = write_cohort_report(result, out)
    if not quiet:
        say(
            console,
            f"{len(result.arms) - len(result.failed)} of {len(result.arms)} patient-level-policy results, "
            f"{result.n_runs} runs executed now; wrote {out / 'cohort_report.md'}",
        )
        for path in files:
            say(console, ("wrote", "green"), f" {path}")
    if result.failed:
        for arm in result.failed[:10]:
            error = (arm.error or arm.status).splitlines()[0]
            say(
                err_console,
                f"failed: patient {arm.patient} level {arm.level} policy '{arm.policy}' "
                f"({arm.hash[:12]}): {error}",
            )
        if len(result.failed) > 10:
            say(err_console, f"... and {len(result.failed) - 10} more failed patient-policy results")
        raise typer.Exit(1)


@app.command()
def bench(
    quick: Annotated[bool, typer.Option("--quick", help="Small sizes; finishes in about 2 minutes.")] = False,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Folder for JSON, markdown, plot.", parser=path_as_written),
    ] = None,
    only: Annotated[
        list[str] | None,
        typer.Option(
            "--only",
            help="Run only these cases: repeat the option or separate with commas (e.g. pressure,transport).",
        ),
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """Benchmark suite: timings as ratios to same-run baselines, targets, profile (benchmarks/results/)."""
    from sim.bench import markdown_table, run_suite

    with user_errors():
        doc = run_suite(
            quick=quick,
            out_dir=out,
            only=only,
            progress=None if quiet else lambda name, i, n: say(err_console, f"[{i + 1}/{n}] {name}"),
        )
    if not quiet:
        console.print(
            Text(markdown_table(["name", "target", "value", "met"], doc["targets"])), highlight=False
        )
        for path in doc["files"]:
            say(console, ("wrote", "green"), f" {path}")


@app.command("report-card")
def report_card(
    only: Annotated[
        list[str] | None,
        typer.Option(
            "--only",
            help="Run only these experiments: repeat the option or separate with commas "
            "(e.g. habib2010,krebs2005).",
        ),
    ] = None,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Folder for report_card.md, report_card.json, figures/.",
            parser=path_as_written,
        ),
    ] = Path("results/report_card"),
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing folder.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Validation suite: the published experiments of configs/validation against the model.

    Every experiment and reference file is read and checked, and --out is checked and claimed,
    before the first run. Writes a verdict per check (a failing verdict is a result: exit 0),
    the table, a JSON document and one figure per experiment.
    """
    from rich.progress import MofNCompleteColumn

    from sim.run.output_folder import OutputClaim, check_output_folder
    from sim.validation.report_card import (
        markdown_table,
        plan_suite,
        run_suite,
        table_rows,
        write_report_card,
    )

    with user_errors():
        plans = plan_suite(only)
        out = check_output_folder(out, overwrite, replaces=REPORT_CARD_FILES)
        total = sum(p.n_runs for p in plans)
        if not quiet:
            names = ", ".join(p.spec.experiment for p in plans)
            say(err_console, f"report card: {len(plans)} experiments ({names}), {total} model runs -> {out}")
        with OutputClaim(out):
            check_output_folder(out, overwrite, replaces=REPORT_CARD_FILES)  # again, under the claim
            columns = (
                TextColumn("[progress.description]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
            )
            with Progress(*columns, console=err_console, disable=quiet) as prog:
                task = prog.add_task("runs", total=total)

                def update(label: str, done: int, n: int) -> None:
                    prog.update(task, completed=done, total=n, description=escape(label))

                card = run_suite(plans, progress=update)
            files = write_report_card(card, out, overwrite=overwrite)
    if not quiet:
        console.print(Text(markdown_table(table_rows(card))), highlight=False, soft_wrap=True)
        n_pass = sum(o.passed for o in card.outcomes)
        say(console, f"{n_pass} of {len(card.outcomes)} checks pass")
        for path in files:
            say(console, ("wrote", "green"), f" {path}")


@app.command()
def view(
    run_dir: Annotated[Path, typer.Argument(help="Run folder written by `pce-sim run`.")],
    png: Annotated[
        Path | None,
        typer.Option("--png", help="PNG to write (default RUN_DIR/view.png).", parser=path_as_written),
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --png file.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Render the standard ParaView view (vertebra + cement, veins, lungs with emboli) to PNG."""
    from sim.output.view import render_view

    with user_errors():
        out = render_view(run_dir, png, quiet=quiet, overwrite=overwrite)
        if not quiet:
            say(console, ("wrote", "green"), f" {out}")


def _option_value(param: Any, argv: list[str]) -> str | None:
    """The value the user typed for ``param`` (``--opt value``, ``--opt=value``, ``-o value``), or None."""
    opts = [o for o in getattr(param, "opts", []) or [] if o.startswith("-")]
    for i, token in enumerate(argv):
        for opt in opts:
            if token == opt and i + 1 < len(argv):
                return argv[i + 1]
            if token.startswith(opt + "="):
                return token[len(opt) + 1 :]
    return None


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the main thread is, so that it unwinds as Ctrl-C does."""


def _terminated(signum: int, frame: object) -> None:
    """SIGTERM (kill, a scheduler's time limit) ends a command as Ctrl-C does: 'interrupted', a sweep's or
    cohort's workers stopped, finished runs kept (the sweep resumes); exit 143 (128 + SIGTERM), as job
    schedulers expect, where Ctrl-C exits 130."""
    raise Terminated


def main() -> None:
    """Console-script entry point. A usage error (an unknown command or option, a bad or missing
    option value) is one line naming it, exit 2, as a bad config is; ``--help`` prints the full usage."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
        previous = signal.signal(signal.SIGTERM, _terminated)
    else:
        previous = None
    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        say(err_console, ("aborted", "bold red"))
        sys.exit(130)
    except typer.TyperException as exc:  # click's usage errors (typer's vendored click)
        message = str(exc.format_message()).strip()  # type: ignore[attr-defined]
        given = _option_value(getattr(exc, "param", None), sys.argv[1:])
        if given is not None and ": " in message:  # the value as typed (click's message leaves it out)
            from sim.core.config import shown_value

            message = message.replace(": ", f" = {shown_value(given)[1:-1]}: ", 1)
        if message:  # (none when a bare command printed its help)
            path = getattr(getattr(exc, "ctx", None), "command_path", "") or ""
            say(
                err_console, ("error:", "bold red"), f" {message}" + (f" (see {path} --help)" if path else "")
            )
        sys.exit(int(getattr(exc, "exit_code", 2)))
    except SystemExit:
        raise
    except PceSimError as exc:  # errors escaping a command body
        say(err_console, ("error:", "bold red"), f" {exc}")
        sys.exit(2)
    finally:
        if previous is not None:  # an embedding process gets its own handler back
            signal.signal(signal.SIGTERM, previous)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
