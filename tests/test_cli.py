"""The real `pce-sim` command: exit codes and one-line errors without tracebacks."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


def pce_sim(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sim.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_help_everywhere():
    for args in (["--help"], ["validate", "--help"], ["run", "--help"]):
        res = pce_sim(*args)
        assert res.returncode == 0, res.stderr
        assert "Usage" in res.stdout


def test_validate_prints_si():
    res = pce_sim("validate", "configs/default.yaml", "--json")
    assert res.returncode == 0, res.stderr
    assert '"volume_m3": 4e-06' in res.stdout


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("patient: {porosity_mean: 1.3}\n", "patient.porosity_mean = 1.3"),
        ("injection: {volume_ml: -2}\n", "injection.volume_ml = -2"),
        ("patient: {levle: L1}\n", "unknown key 'patient.levle'"),
        ("grid: {spacing_mm: [1, 2]}\n", "grid.spacing_mm"),
        ("patient: {level: L1\n", "YAML syntax error"),
        ("injection: {max_duration_s: 1.0e-9}\n", "injection.max_duration_s = 1.0e-9"),
    ],
)
def test_bad_config_one_line_exit_2(tmp_path, text, expect):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    for command in ("validate", "run"):
        args = [command, str(cfg)] + (["--out", str(tmp_path / "o"), "--quiet"] if command == "run" else [])
        res = pce_sim(*args)
        assert res.returncode == 2, (command, res.stdout, res.stderr)
        assert "Traceback" not in res.stderr + res.stdout
        assert expect in res.stderr
        assert len(res.stderr.strip().splitlines()) <= 2


def test_missing_file_exit_2(tmp_path):
    res = pce_sim("validate", str(tmp_path / "missing.yaml"))
    assert res.returncode == 2
    assert "not found" in res.stderr and "Traceback" not in res.stderr


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    key=st.sampled_from(["porosity_mean", "seed", "level", "size_scale", "nonsense"]),
    value=st.one_of(st.floats(allow_nan=True), st.text(max_size=6), st.integers(), st.none()),
)
def test_hypothesis_invalid_patient_values_never_traceback(tmp_path, key, value):
    import yaml

    cfg = tmp_path / "h.yaml"
    cfg.write_text(yaml.safe_dump({"patient": {key: value}}))
    res = pce_sim("validate", str(cfg))
    assert res.returncode in (0, 2)
    assert "Traceback" not in res.stderr + res.stdout


def test_importing_sim_pins_one_blas_thread_unless_the_user_chose():
    """Results depend on OpenBLAS's thread count in the last bits: ``import sim`` sets one thread before
    numpy loads, so library use, the CLI and workers run alike; a user's own setting is kept."""
    import os
    import subprocess
    import sys

    code = "import os, sim, numpy; print(os.environ['OPENBLAS_NUM_THREADS'])"
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert got.stdout.strip() == "1"
    env["OPENBLAS_NUM_THREADS"] = "3"
    got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert got.stdout.strip() == "3"


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["nosuch"], "No such command 'nosuch'. (see "),
        (["run", "--bogus", "x"], "No such option: --bogus"),
        (
            ["sweep", "configs/sweep_smoke.yaml", "--workers", "0"],
            "Invalid value for '--workers' / '-w' = 0: ",
        ),
        (
            ["sweep", "configs/sweep_smoke.yaml", "--workers=1e9"],
            "Invalid value for '--workers' / '-w' = 1e9: ",
        ),
        (["cohort", "configs/cohort_small.yaml", "--n", "abc"], "Invalid value for '--n' = abc: "),
        (
            ["sweep", "configs/sweep_smoke.yaml", "--workers", "2147483648"],
            "Invalid value for '--workers' / '-w' = 2147483648: Input should be less than or equal to 1024",
        ),
        (
            ["cohort", "configs/cohort_small.yaml", "--workers", "5000"],
            "Invalid value for '--workers' / '-w' = 5000: Input should be less than or equal to 1024",
        ),
        (["run"], "Missing argument 'config'."),
        (
            ["sweep", "configs/sweep_smoke.yaml", "--workers", "1_0"],  # int() read it as 10 workers
            "Invalid value for '--workers' / '-w' = 1_0: Input should be a whole number of workers",
        ),
        (["sweep", "configs/sweep_smoke.yaml", "--workers", " 2"], "Input should be a whole number"),
    ],
)
def test_usage_errors_are_one_line_exit_2(args, expect):
    """The console script reports click's usage errors in one line, not a boxed usage text."""
    from pathlib import Path

    res = pce_sim(*args, cwd=Path(__file__).resolve().parents[1])
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1, res.stderr
    assert expect in res.stderr and "Traceback" not in res.stderr and not res.stdout


def test_a_bare_command_prints_its_help_only():
    res = pce_sim()
    assert res.returncode == 2 and "Usage" in res.stdout and not res.stderr


def test_the_summary_reading_gives_the_leaks_error_and_flags_a_fragile_detection():
    from sim.cli import summary_reading

    base = {"leaked_volume_ml": 0.0588, "grid_spacing_mm": 0.75, "leaked_volume_rel_error_estimate": 0.006}
    base["leaked_volume_error_case"] = "cohort patient 1"
    grazing = {**base, "detection_time_s": 161.0, "detection_shift_per_percent_s": 0.57}
    lines = summary_reading(grazing, 0.5)
    assert lines[0] == (
        "leaked volume 0.0588 ml on the 0.75 mm grid: about 0.6 % from the convergence study's finest grid "
        "(case 'cohort patient 1'; README, Grid convergence)"
    )
    assert lines[1].startswith("leak seen at 161 s; a 1 % error in the visible volume moves it by 0.57 s")
    assert lines[1].endswith(": fragile, the leak grazes its visibility threshold")
    steep = {**grazing, "detection_shift_per_percent_s": 0.004}
    assert not summary_reading(steep, 0.5)[1].endswith("threshold")
    assert summary_reading(steep, 0.005)[1].endswith("threshold")  # half a frame is the line
    unseen = {**base, "detection_time_s": float("nan"), "detection_shift_per_percent_s": float("nan")}
    assert len(summary_reading(unseen, 0.5)) == 1
    off_study = {**unseen, "leaked_volume_rel_error_estimate": float("nan"), "leaked_volume_error_case": ""}
    assert summary_reading(off_study, 0.5) == []


def test_the_summary_reading_says_how_near_an_unseen_leak_came_to_its_threshold():
    """An unseen leak's peak against the threshold, fragile within NEAR_MISS_FRACTION (5 %) of it; a run
    whose leak left nothing visible, or a call without the threshold, says nothing about it."""
    from sim.cli import NEAR_MISS_FRACTION, summary_reading

    unseen = {"leaked_volume_ml": 0.0515, "detection_time_s": float("nan"), "peak_visible_leak_mm3": 2.211}
    near = summary_reading(unseen, 0.5, 2.317)
    assert near == [
        "leak not seen: its visible volume peaked at 2.211 mm^3, 95.4 % of the 2.317 mm^3 threshold"
        ": fragile, a finer grid or step may see it"
    ]
    edge = (1.0 - NEAR_MISS_FRACTION) * 2.317
    assert summary_reading({**unseen, "peak_visible_leak_mm3": edge}, 0.5, 2.317)[0].endswith("see it")
    below = summary_reading({**unseen, "peak_visible_leak_mm3": 0.999 * edge}, 0.5, 2.317)
    assert below == [
        "leak not seen: its visible volume peaked at 2.199 mm^3, 94.9 % of the 2.317 mm^3 threshold"
    ]
    assert summary_reading({**unseen, "peak_visible_leak_mm3": 0.0}, 0.5, 2.317) == []
    assert summary_reading(unseen, 0.5) == []
    seen = {**unseen, "detection_time_s": 158.5, "peak_visible_leak_mm3": 2.3195}
    assert summary_reading(seen, 0.5, 2.317) == []  # a seen leak's reading is its detection shift


def test_main_runs_in_any_thread_and_gives_sigterm_back():
    """main() set its SIGTERM handler from any thread (ValueError outside the main one) and kept it."""
    import signal
    import threading

    from sim.cli import main

    before = signal.getsignal(signal.SIGTERM)
    codes: list[object] = []

    def call() -> None:
        sys.argv = ["pce-sim", "--help"]
        try:
            main()
        except SystemExit as exc:
            codes.append(exc.code)

    worker = threading.Thread(target=call)
    worker.start()
    worker.join()
    call()
    assert codes == [0, 0] and signal.getsignal(signal.SIGTERM) is before


def _wrapped(interrupt: KeyboardInterrupt) -> SystemError:
    """What numba raises when a signal handler's interrupt lands inside a compiled function."""
    try:
        try:
            raise interrupt
        except KeyboardInterrupt as inner:
            text = "CPUDispatcher(<function ic0_cg>) returned a result with an exception set"
            raise SystemError(text) from inner
    except SystemError as outer:
        return outer


@pytest.mark.parametrize(("signal_name", "code"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_an_interrupt_inside_numba_is_an_interruption(signal_name: str, code: int) -> None:
    """Ctrl-C or SIGTERM landing in a numba kernel came back as a SystemError: a traceback and exit 1."""
    import typer

    from sim.cli import Terminated, user_errors
    from sim.core.errors import interruption_in

    interrupt = Terminated() if signal_name == "SIGTERM" else KeyboardInterrupt()
    wrapped = _wrapped(interrupt)
    assert interruption_in(wrapped) is interrupt and interruption_in(SystemError("other")) is None
    with pytest.raises(typer.Exit) as exit_info:
        with user_errors():
            raise wrapped
    assert exit_info.value.exit_code == code
    with pytest.raises(SystemError, match="other"):  # a real failure stays one
        with user_errors():
            raise SystemError("other")


def test_an_interrupt_inside_numba_stops_a_serial_study_instead_of_failing_its_run(tmp_path) -> None:
    """The serial executor recorded the wrapped Ctrl-C as the run's failure and went on with the sweep."""
    from sim.core.config import scenario_from_dict
    from sim.studies.executors import RunTask, execute_task

    scenario = scenario_from_dict({"grid": {"spacing_mm": 2.0}}, source="test")
    config = scenario.model_dump(mode="json")
    task = RunTask(scenario.content_hash(), config, str(tmp_path / "run"), _interrupted_run)
    with pytest.raises(KeyboardInterrupt):
        execute_task(task)
    assert not (tmp_path / "run").exists()


def _interrupted_run(scenario: object) -> None:
    raise _wrapped(KeyboardInterrupt())


def test_a_path_that_is_not_utf8_is_shown_as_its_bytes(tmp_path):
    """A non-UTF-8 byte in a path was printed as Python's surrogate, `\\udcff`."""
    import os

    name = os.fsdecode(b"\xff.yaml")
    res = pce_sim("validate", name, cwd=tmp_path)
    assert res.returncode == 2 and res.stderr == "error: \\xff.yaml: config file not found\n", res.stderr


@pytest.mark.parametrize(
    ("raw", "shown"), [("a\nb.yaml", "a\\nb.yaml"), ("tab\there.yaml", "tab\\there.yaml")]
)
def test_a_path_with_a_control_character_stays_on_one_line(tmp_path, raw, shown):
    """A newline in a file name broke the one-line refusal in two."""
    res = pce_sim("validate", raw, cwd=tmp_path)
    assert res.returncode == 2 and res.stderr == f"error: {shown}: config file not found\n", res.stderr
    (tmp_path / raw).write_text("grid: {spacing_mm: -1}\n")
    res = pce_sim("validate", raw, cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.startswith(f"error: {shown}: grid.spacing_mm = -1")
    assert res.stderr.count("\n") == 1, res.stderr
