"""Command-line interface: ``pce-sim validate | run | sweep | report | view | bench | cohort``.

User errors (bad config, existing output folder, missing tool) print one line in red and exit
with code 2, never a traceback. ``--quiet`` silences progress bars.
"""

from __future__ import annotations

import os

# One BLAS thread per process: OpenBLAS's second thread gains nothing on our sparse solves, slows
# runs when the other core is busy, and makes results depend on the thread count in the last bits.
# Set before numpy is imported; sweep/cohort workers inherit it.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import json  # noqa: E402
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from sim.core.errors import PceSimError

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


def fail(message: str, code: int = 2) -> None:
    """Print a one-line user error and exit without a traceback."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn pce-sim's own errors into one clear line and exit code 2."""
    try:
        yield
    except PceSimError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        raise typer.Exit(130) from None


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
    """Validate a scenario and print it resolved, in SI units."""
    from sim.core.config import load_scenario

    with user_errors():
        scenario = load_scenario(config)
        si = scenario.si()
        if as_json:
            print(json.dumps(si, indent=2))
        else:
            console.print(f"[green]valid[/] {config}  (scenario '{scenario.name}', SI units)")
            _print_tree(si)


def _print_tree(data: dict[str, Any], indent: int = 0) -> None:
    for key, value in data.items():
        if isinstance(value, dict):
            console.print(" " * indent + f"[bold]{key}[/]:")
            _print_tree(value, indent + 2)
        else:
            shown = f"{value:.6g}" if isinstance(value, float) else value
            console.print(" " * indent + f"{key}: {shown}", highlight=False)


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="Scenario YAML file.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder to create.")] = Path("results/run"),
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing run folder.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Simulate one vertebroplasty and write the run folder (summary.json, tables, VTK)."""
    from sim.core.config import load_scenario

    with user_errors():
        scenario = load_scenario(config)  # validate before importing the (JIT-heavy) solvers
        from sim.run.pipeline import run_scenario, write_run

        if out.exists() and any(out.iterdir()) and not overwrite:
            fail(f"{out}: output folder exists and is not empty (use --overwrite to replace it)")
        with progress_bar(f"injecting {scenario.name}", quiet) as update:
            result = run_scenario(scenario, progress=update)
        write_run(result, out, overwrite=overwrite)
        if not quiet:
            _print_summary(result.summary)
            console.print(f"[green]wrote[/] {out}")


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
        table.add_row(key, shown)
    console.print(table)


@app.command()
def sweep(
    sweep_file: Annotated[Path, typer.Argument(help="Sweep YAML file (base scenario, method, parameters).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Sweep folder (created, or resumed).")] = Path(
        "results/sweep"
    ),
    workers: Annotated[
        int | None, typer.Option("--workers", "-w", min=1, help="Override the executor's worker count.")
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
    quiet: QuietOpt = False,
) -> None:
    """Run (or resume) a parameter sweep; record every run in OUT/ledger.sqlite and export results.csv."""
    from rich.progress import MofNCompleteColumn

    from sim.studies.sweep import load_expansion, run_sweep

    with user_errors():
        expansion = load_expansion(sweep_file)
        n = len(expansion.points)
        if not quiet:
            console.print(f"sweep '{expansion.spec.name}': {n} scenarios ({expansion.spec.method}) -> {out}")
        columns = (
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("[red]{task.fields[failed]} failed"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=err_console, disable=quiet) as prog:
            task = prog.add_task("runs", total=n, failed=0)
            outcome = run_sweep(
                expansion,
                out,
                workers=workers,
                runner=runner,
                force=force,
                retry_failed=not skip_failed,
                progress=lambda finished, total, failed: prog.update(task, completed=finished, failed=failed),
            )
    if not quiet:
        console.print(
            f"[green]{outcome.done}[/] done, [red]{len(outcome.failed)}[/] failed, "
            f"{outcome.skipped} already finished; wrote {out / 'results.csv'}"
        )
    if outcome.failed:
        for index, run_id, error in outcome.failed[:10]:
            line = f"failed: scenario {index} ({run_id}): {error}"
            err_console.print(line, highlight=False, soft_wrap=True)
        if len(outcome.failed) > 10:
            err_console.print(f"... and {len(outcome.failed) - 10} more (see {out / 'results.csv'})")
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
            console.print(f"[green]wrote[/] {path}", highlight=False, soft_wrap=True)


@app.command()
def cohort(
    cohort_file: Annotated[Path, typer.Argument(help="Cohort YAML file (distributions, policies).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Cohort folder (created, or resumed).")] = Path(
        "results/cohort"
    ),
    n: Annotated[int | None, typer.Option("--n", min=1, help="Number of virtual patients.")] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", "-w", min=1, help="Override the executor's worker count.")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Switch a folder holding a different cohort to this one.")
    ] = False,
    no_sensitivity: Annotated[
        bool, typer.Option("--no-sensitivity", help="Skip the Morris/Sobol sensitivity design.")
    ] = False,
    quiet: QuietOpt = False,
) -> None:
    """Run (or resume) a virtual patient cohort under its stop policies and write OUT/cohort_report.md."""
    from rich.progress import MofNCompleteColumn

    from sim.studies.cohort import load_cohort, plan_cohort, run_cohort
    from sim.studies.cohort_report import write_cohort_report

    with user_errors():
        spec, base_dir = load_cohort(cohort_file)
        plan = plan_cohort(spec, base_dir, n=n, source=str(cohort_file))
        if not quiet:
            console.print(
                f"cohort '{spec.name}': {len(plan.patients)} virtual patients x {len(spec.policies)} "
                f"policies -> {out}"
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
                plan, out, workers=workers, force=force, sensitivity=not no_sensitivity, progress=update
            )
        files = write_cohort_report(result, out)
    if not quiet:
        console.print(
            f"{len(result.arms) - len(result.failed)} of {len(result.arms)} patient-policy results, "
            f"{result.n_runs} runs executed now; wrote {out / 'cohort_report.md'}",
            highlight=False,
            soft_wrap=True,
        )
        for path in files:
            console.print(f"[green]wrote[/] {path}", highlight=False, soft_wrap=True)
    if result.failed:
        for arm in result.failed[:10]:
            error = (arm.error or arm.status).splitlines()[0]
            err_console.print(
                f"failed: patient {arm.patient} policy '{arm.policy}' ({arm.hash[:12]}): {error}",
                highlight=False,
                soft_wrap=True,
            )
        raise typer.Exit(1)


@app.command()
def bench(
    quick: Annotated[bool, typer.Option("--quick", help="Small sizes; finishes in about 2 minutes.")] = False,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Folder for JSON, markdown, plot.")] = None,
    only: Annotated[
        list[str] | None, typer.Option("--only", help="Run only these cases (e.g. pressure, transport).")
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
            progress=None if quiet else lambda name, i, n: err_console.print(f"[{i + 1}/{n}] {name}"),
        )
    if not quiet:
        console.print(markdown_table(["name", "target", "value", "met"], doc["targets"]), highlight=False)
        for path in doc["files"]:
            console.print(f"[green]wrote[/] {path}", highlight=False, soft_wrap=True)


@app.command()
def view(
    run_dir: Annotated[Path, typer.Argument(help="Run folder written by `pce-sim run`.")],
    png: Annotated[
        Path | None, typer.Option("--png", help="PNG to write (default RUN_DIR/view.png).")
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """Render the standard ParaView view (vertebra + cement, veins, lungs with emboli) to PNG."""
    from sim.output.view import render_view

    with user_errors():
        out = render_view(run_dir, png, quiet=quiet)
        if not quiet:
            console.print(f"[green]wrote[/] {out}")


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except SystemExit:
        raise
    except PceSimError as exc:  # errors escaping a command body
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
