"""Fuzz: every generated bad scenario file is refused by `validate` and `run` in one line, and the two
commands agree on every generated file (issue 14).

The bulk runs the CLI in-process (typer's CliRunner), a few cases as real subprocesses (a named
pipe, a run as another user). For each file: `validate`, then `run` with the simulation replaced by
a sentinel that records that the run would have started. A correct answer is exit 2, no traceback,
at most a short summary on stderr whose first line names the field as written (or the file), within
a few seconds, and `run` refusing with exactly the same message; or, for an accepted file, `validate`
exit 0 and `run` reaching the simulation.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from fuzz_inputs import FuzzCase, all_cases, materialise
from typer.testing import CliRunner

from sim.cli import app

CASES = all_cases()
MAX_LINES = 7
MAX_SECONDS = 5.0


class Started(Exception):
    """Raised in place of the simulation: the run got past every check."""


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str
    seconds: float
    exception: BaseException | None


def invoke(*args: str) -> Outcome:
    """Run the CLI in-process; exceptions other than SystemExit are returned, never raised.

    ``seconds`` is the CPU time the command took (all threads of this process): the work it did,
    whatever else the machine is busy with.
    """
    t0 = time.process_time()
    result = CliRunner().invoke(app, [str(a) for a in args])
    seconds = time.process_time() - t0
    exc = result.exception if not isinstance(result.exception, SystemExit) else None
    return Outcome(result.exit_code, result.stdout, result.stderr, seconds, exc)


@pytest.fixture(scope="module")
def case_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture
def no_simulation(monkeypatch: pytest.MonkeyPatch) -> None:
    import sim.run.pipeline

    def refuse_to_simulate(*args: object, **kwargs: object) -> None:
        raise Started()

    monkeypatch.setattr(sim.run.pipeline, "run_scenario", refuse_to_simulate)


def assert_one_line_refusal(case: FuzzCase, path: Path, out: Outcome) -> None:
    assert out.exception is None, f"{case.name}: escaped {type(out.exception).__name__}: {out.exception}"
    assert out.code == 2, f"{case.name}: exit {out.code}, stderr {out.stderr!r}"
    assert "Traceback" not in out.stdout + out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert 1 <= len(lines) <= MAX_LINES, f"{case.name}: {len(lines)} lines: {out.stderr!r}"
    assert lines[0].startswith("error: "), lines[0]
    expected = path.name if case.field == "{file}" else case.field
    assert expected in out.stderr, f"{case.name}: {expected!r} not named in {out.stderr!r}"
    assert out.seconds < MAX_SECONDS, f"{case.name}: took {out.seconds:.1f} s of CPU"


def test_at_least_200_bad_files_of_every_kind() -> None:
    bad = [c for c in CASES if c.bad]
    kinds = {c.kind.split(":")[0] for c in bad}
    assert len(bad) >= 200
    for kind in (
        "out of range", "boolean for number", "NaN", "wrong type", "unknown key", "markup string",
        "huge integer", "deep nesting", "duplicate key", "tag", "alias bomb", "broken YAML",
        "cross-field", "named pipe", "mutation",
    ):  # fmt: skip
        assert kind in kinds, kind


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_validate_and_run_agree(case: FuzzCase, case_dir: Path, tmp_path: Path, no_simulation: None) -> None:
    path = materialise(case, case_dir)
    checked = invoke("validate", path)
    run = invoke("run", path, "--out", tmp_path / "out", "--quiet")
    started = isinstance(run.exception, Started)
    assert started == (checked.code == 0), (
        f"{case.name}: validate exit {checked.code} ({checked.stderr.strip()!r}) but run "
        f"{'started' if started else f'exit {run.code} ({run.stderr.strip()!r})'}"
    )
    if case.bad:
        assert_one_line_refusal(case, path, checked)
        assert_one_line_refusal(case, path, run)
    elif case.bad is False:
        assert checked.code == 0, f"{case.name}: refused: {checked.stderr!r}"
    if checked.code != 0:
        assert_one_line_refusal(FuzzCase(case.name, case.kind, None, ""), path, checked)
        assert run.stderr == checked.stderr  # the same checks, the same words
    else:
        assert checked.exception is None and "Traceback" not in checked.stdout + checked.stderr
    assert not (tmp_path / "out").exists()  # nothing is written before (or instead of) a simulation


def test_markup_is_printed_literally(tmp_path: Path, no_simulation: None) -> None:
    cfg = tmp_path / "[/]" / "cfg [bold].yaml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text('name: "[/]"\ndescription: "[bold red]x [link=file:///y]z[/link] :thumbs_up:"\n')
    out = invoke("validate", cfg)
    assert out.code == 0 and out.exception is None, out.stderr
    assert f"valid {cfg}" in out.stdout
    assert "name: [/]" in out.stdout
    assert "description: [bold red]x [link=file:///y]z[/link] :thumbs_up:" in out.stdout
    run = invoke("run", cfg, "--out", tmp_path / "o")  # not quiet: the progress bar shows the name
    assert isinstance(run.exception, Started), run.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text('cement: {preset: "[bold red]x"}\npatient: {level: "[/x]"}\n')
    out = invoke("validate", bad)
    assert out.code == 2
    assert '"[bold red]x"' in out.stderr and '"[/x]"' in out.stderr


def test_named_pipe_in_a_real_process(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    # a pipe with no writer must not block the reader: a hang fails the test through the timeout
    res = subprocess.run(
        [sys.executable, "-m", "sim.cli", "validate", str(fifo)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "not a regular file" in res.stderr and str(fifo) in res.stderr


def test_permission_denied_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "locked" / "cfg.yaml"
    cfg.parent.mkdir()
    cfg.write_text("name: x\n")
    real_open = os.open

    def denied(path: object, *args: object, **kwargs: object) -> int:
        if str(path) == str(cfg):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", denied)
    out = invoke("validate", cfg)
    assert out.code == 2 and out.exception is None
    assert out.stderr.strip() == f"error: {cfg}: cannot read config file: permission denied"


def _other_user_can_run_python() -> str | None:
    """Why a run as 'nobody' is impossible here, or None when it is possible."""
    if os.geteuid() != 0:
        return "needs root to switch to another user"
    if shutil.which("setpriv") is None:
        return "setpriv not installed"
    probe = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            sys.executable,
            "-c",
            "import numba, pydantic, typer, sim.cli",
        ],
        capture_output=True,
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    if probe.returncode != 0:
        return f"user 'nobody' cannot import pce-sim's dependencies with {sys.executable}"
    return None


def test_unsearchable_folder_as_another_user(tmp_path: Path) -> None:
    reason = _other_user_can_run_python()
    if reason is not None:
        pytest.skip(reason)
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "cfg.yaml").write_text("name: x\n")
    locked.chmod(0o700)
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "HOME": "/nonexistent"}
    res = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m", "sim.cli",
         "validate", str(locked / "cfg.yaml")],
        capture_output=True, text=True, cwd=root, env=env, timeout=120,
    )  # fmt: skip
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "permission denied" in res.stderr


@pytest.mark.parametrize("case", [c for c in CASES if c.bad is False], ids=lambda c: c.name)
def test_accepted_edge_cases_really_run(case: FuzzCase, tmp_path: Path) -> None:
    """What validate now accepts (e.g. the pressure-mode case whose root bracket used to raise) runs."""
    import yaml

    data = yaml.safe_load(case.text or b"") or {}
    small = {"injection": {"volume_ml": 0.3, "follow_up_s": 5.0},
             "output": {"vtk": False, "fluoroscopy_png": False, "fields": False}}  # fmt: skip
    for section, values in small.items():
        data.setdefault(section, {}).update(values)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(data))
    out = invoke("run", cfg, "--out", tmp_path / "out", "--quiet")
    assert out.exception is None and out.code == 0, out.stderr
    assert (tmp_path / "out" / "summary.json").exists()
