"""Run folders (issue 14): checked before the simulation, one writer at a time, nothing half-written
or left behind; the numba cache works for a user whose home is not writable; Dask stays quiet."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sim.cli import app
from sim.core.config import Scenario
from sim.core.errors import ConfigError
from sim.core.numba_cache import choose_numba_cache_dir
from sim.run.output_folder import (
    OutputClaim,
    check_output_folder,
    clean_leftovers,
    lock_path,
    path_as_written,
)
from sim.run.results import RunResult

ROOT = Path(__file__).resolve().parents[1]
TINY = """\
name: tiny
grid: {spacing_mm: 2.0}
injection: {volume_ml: 0.3, follow_up_s: 5.0}
output: {vtk: false, fluoroscopy_png: false, fields: false, time_series: false}
"""


class Started(Exception):
    """Raised in place of the simulation."""


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    return cfg


@pytest.fixture
def no_simulation(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    import sim.run.pipeline

    calls: list[int] = []

    def refuse(*args: object, **kwargs: object) -> None:
        calls.append(1)
        raise Started()

    monkeypatch.setattr(sim.run.pipeline, "run_scenario", refuse)
    return calls


def dead_pid() -> int:
    """A pid that no longer runs (a child that has exited and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def hidden_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def pce_sim(*args: str | Path, **kwargs: object) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "sim.cli", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        **kwargs,  # type: ignore[arg-type]
    )


# ------------------------------------------------------------------------------------ --out checks


@pytest.mark.parametrize(
    ("make", "out", "expect"),
    [
        (lambda d: (d / "afile").write_text("x"), "afile", "exists and is not a folder"),
        (lambda d: (d / "afile").write_text("x"), "afile/sub", "afile is a file, not a folder"),
        (lambda d: None, "", "not the current folder"),
        (lambda d: None, ".", "not the current folder"),
        (lambda d: None, "/proc/pce-sim-out", "under /proc"),
        (lambda d: None, "/sys/kernel/pce", "under /sys"),
        (lambda d: ((d / "full").mkdir(), (d / "full" / "x").write_text("x")), "full", "use --overwrite"),
        (lambda d: None, "..", "not a parent folder, '..'"),
        (lambda d: None, "x" * 250, "folder name too long"),
    ],
)
def test_bad_out_is_refused_before_the_simulation(
    tmp_path: Path, tiny: Path, no_simulation: list[int], monkeypatch: pytest.MonkeyPatch, make, out, expect
) -> None:
    make(tmp_path)
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    res = CliRunner().invoke(app, ["run", str(tiny), "--out", out, "--quiet"])
    assert res.exit_code == 2, res.stderr
    assert not no_simulation
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("error: --out ")
    assert expect in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_folder_holding_the_current_one_is_refused(
    tmp_path: Path, tiny: Path, no_simulation: list[int]
) -> None:
    inner = tmp_path / "work" / "here"
    inner.mkdir(parents=True)
    os.chdir(inner)
    try:
        res = CliRunner().invoke(app, ["run", str(tiny), "--out", str(tmp_path / "work"), "--overwrite"])
    finally:
        os.chdir(ROOT)
    assert res.exit_code == 2 and "holds it" in res.stderr and not no_simulation


def test_unwritable_parent_is_refused(
    tmp_path: Path, tiny: Path, no_simulation: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    parent = tmp_path / "ro"
    parent.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == parent else real_access(p, mode))
    res = CliRunner().invoke(app, ["run", str(tiny), "--out", str(parent / "new" / "out")])
    assert res.exit_code == 2 and "permission denied" in res.stderr and not no_simulation
    assert not (parent / "new").exists()


def test_overwrite_refuses_a_folder_it_could_not_delete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    (out / "theirs").mkdir(parents=True)
    (out / "theirs" / "f").write_text("x")
    real_access = os.access
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(
        os, "access", lambda p, mode: False if Path(p) == out / "theirs" else real_access(p, mode)
    )
    with pytest.raises(ConfigError, match="--overwrite cannot remove .*theirs"):
        check_output_folder(out, overwrite=True)


@pytest.mark.parametrize(
    "files",
    [
        ("thesis.tex",),
        ("ledger.sqlite", "sweep.resolved.yaml", "runs/00000/summary.json"),
        ("summary.json/x",),
        ("summary.json", "thesis.tex"),  # a summary.json that is not pce-sim's ("keep")
    ],
    ids=["foreign", "a-sweep-folder", "summary-is-a-folder", "another-tools-summary"],
)
def test_overwrite_replaces_only_a_run_folder(
    tmp_path: Path, tiny: Path, no_simulation: list[int], files: tuple[str, ...]
) -> None:
    """`run --overwrite` deleted any folder: a running sweep's (its ledger and finished runs) or a thesis."""
    out = tmp_path / "out"
    for name in files:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text("keep")
    res = CliRunner().invoke(app, ["run", str(tiny), "--out", str(out), "--overwrite", "--quiet"])
    assert res.exit_code == 2 and not no_simulation
    assert res.stderr.count("\n") == 1
    expect = "--overwrite replaces only a folder this command wrote (one holding summary.json as pce-sim "
    assert expect + "writes it); this one is not" in res.stderr
    assert all((out / name).read_text() == "keep" for name in files)


def test_a_run_of_a_study_is_not_replaced_by_a_lone_run(tmp_path: Path) -> None:
    """`run --out sweep/runs/<hash> --overwrite` replaced a run the sweep's ledger says it made."""
    run = tmp_path / "sweep" / "runs" / "0123456789ab"
    run.mkdir(parents=True)
    (run / "summary.json").write_text('{"provenance": {"pce_sim_version": "0.1"}}')
    (tmp_path / "sweep" / "ledger.sqlite").write_bytes(b"")
    with pytest.raises(
        ConfigError, match="is in the runs of the sweep or cohort in .*sweep, whose ledger owns them"
    ):
        check_output_folder(run, overwrite=True, replaces=("summary.json",))
    with pytest.raises(ConfigError, match="whose ledger owns them"):  # a new run beside them too
        check_output_folder(run.parent / "new", overwrite=False, replaces=("summary.json",))
    for overwrite in (False, True):  # the runs folder itself: it was told to use --overwrite, then refused
        with pytest.raises(ConfigError, match="is the runs folder of the sweep or cohort in .*sweep"):
            check_output_folder(run.parent, overwrite=overwrite, replaces=("summary.json",))


def test_overwrite_still_replaces_a_run_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text('{"provenance": {"pce_sim_version": "0.1"}}')
    (out / "emboli.csv").write_text("")
    assert check_output_folder(out, overwrite=True, replaces=("summary.json",)) == out
    assert check_output_folder(tmp_path / "new", overwrite=True, replaces=("summary.json",))
    (tmp_path / "empty").mkdir()
    assert check_output_folder(tmp_path / "empty", overwrite=True, replaces=("summary.json",))


def test_the_librarys_report_card_overwrite_replaces_only_a_report_card(tmp_path: Path) -> None:
    from sim.validation.report_card import write_report_card

    out = tmp_path / "card"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    with pytest.raises(ConfigError, match="one holding its report_card.json"):
        write_report_card(None, out, overwrite=True)  # type: ignore[arg-type]  # refused before it is read
    assert (out / "notes.txt").read_text() == "keep"


def test_a_run_without_a_version_of_its_own_is_still_pce_sims(tmp_path: Path) -> None:
    """A runner that sets no provenance (a library user's, a test's fake): a study must still redo its run."""
    scenario = Scenario.model_validate({"output": {"fields": False, "time_series": False}})
    result = RunResult(scenario=scenario, summary={"a": 1.0})
    out = tmp_path / "run"
    result.write(out)
    result.write(out, overwrite=True)
    assert "pce_sim_version" in json.loads((out / "summary.json").read_text())["provenance"]


def test_report_card_overwrite_replaces_only_a_report_card(tmp_path: Path) -> None:
    out = tmp_path / "card"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    res = CliRunner().invoke(app, ["report-card", "--out", str(out), "--overwrite", "--quiet"])
    assert res.exit_code == 2 and "one holding report_card.json" in res.stderr
    assert (out / "notes.txt").read_text() == "keep"


# ------------------------------------------------------------------------------------ claims


def _claim_holder(out: Path) -> subprocess.Popen:
    """Another process holding the claim on ``out`` (until killed)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[2]);"
         "from sim.run.output_folder import OutputClaim; c = OutputClaim(sys.argv[1]).acquire();"
         "print('held', flush=True); time.sleep(60)", str(out), str(ROOT)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def test_claim_is_exclusive_reentrant_and_released(tmp_path: Path) -> None:
    out = tmp_path / "out"
    holder = _claim_holder(out)
    try:
        with pytest.raises(ConfigError, match=rf"another pce-sim run \(pid {holder.pid}\) is writing"):
            OutputClaim(out).acquire()
    finally:
        holder.kill()
        holder.wait()
    # the kernel dropped the dead holder's lock: the stale lock file is taken over
    assert lock_path(out).exists()
    with OutputClaim(out):
        with OutputClaim(out):  # re-entrant within one process
            assert lock_path(out).read_text().strip() == str(os.getpid())
        assert lock_path(out).exists()
    assert not lock_path(out).exists()


def test_a_sweep_respects_a_runs_claim_on_its_folder(tmp_path: Path) -> None:
    """A sweep started on the folder a run had claimed (not yet written) took it; the run then lost
    its finished result at the write. Now the sweep stops at the claim, before its progress bar."""
    out = tmp_path / "shared"
    holder = _claim_holder(out)
    try:
        res = CliRunner().invoke(
            app, ["sweep", str(ROOT / "configs" / "sweep_smoke.yaml"), "--out", str(out)]
        )
    finally:
        holder.kill()
        holder.wait()
    assert res.exit_code == 2, res.output
    assert f"another pce-sim run (pid {holder.pid}) is writing this folder" in res.stderr
    assert res.stderr.count("\n") == 1 and not out.exists()  # no progress bar before the refusal


@pytest.mark.parametrize(
    ("out", "expect"),
    [
        ("..", "--out '..': name a new folder for the results (not a parent folder, '..')"),
        ("/", "--out '/': name a new folder for the results (not the root)"),
        (".", "--out '.': name a new folder for the results (not the current folder)"),
        ("", "--out '': name a new folder for the results (not the current folder)"),
        ("./", "--out './': name a new folder for the results (not the current folder)"),
        ("../", "--out '../': name a new folder for the results (not a parent folder, '..')"),
    ],
)
def test_folders_that_are_not_new_are_named_for_what_they_are(out: str, expect: str) -> None:
    with pytest.raises(ConfigError) as err:
        check_output_folder(path_as_written(out), overwrite=True)
    assert str(err.value) == expect


@pytest.mark.parametrize("command", ["run", "sweep", "cohort", "report-card"])
@pytest.mark.parametrize("out", ["", "./"])
def test_the_cli_prints_the_out_the_user_wrote(tiny: Path, command: str, out: str) -> None:
    """Typer made `--out ""` and `--out ./` a Path('.'), so the refusal printed '.'."""
    files = {"run": [str(tiny)], "sweep": [str(ROOT / "configs" / "sweep_smoke.yaml")]}
    files["cohort"] = [str(ROOT / "configs" / "cohort_small.yaml")]
    res = CliRunner().invoke(app, [command, *files.get(command, []), "--out", out, "--quiet"])
    assert res.exit_code == 2, res.output
    assert res.stderr == f"error: --out {out!r}: name a new folder for the results (not the current folder)\n"


def test_the_default_out_is_checked_like_a_typed_one(
    tmp_path: Path, tiny: Path, no_simulation: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Typer passes an option's default (a Path) through the parser too: it crashed the check (TypeError)."""
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["run", str(tiny), "--quiet"])
    assert isinstance(res.exception, Started), res.output  # checked, claimed, and on to the simulation
    assert no_simulation == [1]


def test_a_typed_path_survives_pickle_and_copy() -> None:
    import copy
    import pickle

    from sim.run.output_folder import written_text

    typed = path_as_written("./")
    for again in (pickle.loads(pickle.dumps(typed)), copy.deepcopy(typed), copy.copy(typed)):
        assert again == Path(".") and written_text(again) == "./"
    assert written_text(path_as_written(Path("results/run"))) == "results/run"


def test_a_png_is_refused_as_written(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "vtk").mkdir(parents=True)
    (run / "vtk" / "bone.pvd").write_text("<VTKFile/>")
    res = CliRunner().invoke(app, ["view", str(run), "--png", "", "--quiet"])
    assert res.exit_code == 2 and res.stderr.startswith("error: --png '': "), res.stderr


def test_a_dangling_link_is_named_as_one(tmp_path: Path) -> None:
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "gone")
    with pytest.raises(ConfigError, match=r"out: is a link to .*gone, which does not exist"):
        check_output_folder(link, overwrite=False)


def test_a_run_folder_gets_the_mode_of_any_new_folder(tmp_path: Path) -> None:
    """Run folders were private (0700, from mkdtemp) where sweep and cohort folders are 0755."""
    from sim.run.output_folder import make_partial_folder

    old = os.umask(0o027)
    try:
        folder = make_partial_folder(tmp_path / "run")
        probe = tmp_path / "probe"
        probe.mkdir()
    finally:
        os.umask(old)
    assert folder.name.startswith(".run.partial-")
    assert stat.S_IMODE(folder.stat().st_mode) == stat.S_IMODE(probe.stat().st_mode) == 0o750


def test_leftovers_of_dead_runs_are_cleaned_and_live_ones_kept(tmp_path: Path) -> None:
    out = tmp_path / "out"
    dead = dead_pid()
    for name in (
        f".out.partial-{dead}-abc",
        f".out.old-{dead}",
        f".out.partial-{os.getpid()}-live",
        ".other.old-1",
    ):
        (tmp_path / name).mkdir()
        (tmp_path / name / "f").write_text("x")
    removed = clean_leftovers(out)
    assert sorted(p.name for p in removed) == sorted([f".out.partial-{dead}-abc", f".out.old-{dead}"])
    assert hidden_leftovers(tmp_path) == sorted([f".out.partial-{os.getpid()}-live", ".other.old-1"])


def test_overwrite_leaves_no_old_folder_behind(tmp_path: Path) -> None:
    scenario = Scenario.model_validate({"output": {"fields": False, "time_series": False}})
    result = RunResult(
        scenario=scenario,
        summary={"a": 1.0},
        emboli={"x": []},
        fragments={"y": []},
        provenance={"pce_sim_version": "test"},
    )
    out = tmp_path / "out"
    result.write(out)
    with pytest.raises(ConfigError, match="use --overwrite"):
        result.write(out)
    (out / "extra").mkdir()
    os.chmod(out / "extra", 0o500)  # read-only folder inside: removed all the same
    result.write(out, overwrite=True)
    assert json.loads((out / "summary.json").read_text())["summary"] == {"a": 1.0}
    assert hidden_leftovers(tmp_path) == []
    assert not (out / "extra").exists()


@pytest.mark.parametrize("files", [("thesis.tex",), ("summary.json",)], ids=["foreign", "foreign-summary"])
def test_the_librarys_overwrite_replaces_only_a_run_folder(tmp_path: Path, files: tuple[str, ...]) -> None:
    """`RunResult.write(overwrite=True)` deleted any folder a library caller named (only the CLI checked)."""
    scenario = Scenario.model_validate({"output": {"fields": False, "time_series": False}})
    result = RunResult(scenario=scenario, summary={"a": 1.0}, provenance={"pce_sim_version": "test"})
    out = tmp_path / "out"
    out.mkdir()
    for name in files:
        (out / name).write_text("keep")
    with pytest.raises(ConfigError, match="overwrite replaces only a folder pce-sim wrote"):
        result.write(out, overwrite=True)
    assert all((out / name).read_text() == "keep" for name in files)
    assert hidden_leftovers(tmp_path) == []


def test_two_runs_into_one_folder_one_wins(tmp_path: Path, tiny: Path) -> None:
    out = tmp_path / "out"
    procs = [pce_sim("run", tiny, "--out", out, "--quiet") for _ in range(2)]
    results = [(*p.communicate(timeout=600), p.returncode) for p in procs]
    codes = sorted(r[2] for r in results)
    assert codes == [0, 2], results
    loser = next(r for r in results if r[2] == 2)
    assert "Traceback" not in loser[1] and loser[1].count("\n") == 1
    assert "another pce-sim run" in loser[1] or "exists and is not empty" in loser[1]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["name"] == "tiny" and (out / "config.resolved.yaml").exists()
    assert hidden_leftovers(tmp_path) == []


def test_killed_run_leaves_nothing_half_written_and_the_next_run_cleans_up(
    tmp_path: Path, tiny: Path
) -> None:
    out = tmp_path / "out"
    proc = pce_sim("run", tiny, "--out", out, "--quiet")
    deadline = time.monotonic() + 300
    while not lock_path(out).exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # while it holds the claim: simulating or writing
    proc.communicate()
    assert not out.exists() or (out / "summary.json").exists()  # absent or complete
    shutil.rmtree(out, ignore_errors=True)
    # what a writer killed while renaming leaves: its lock file, a partial and an old folder
    dead = dead_pid()
    if not lock_path(out).exists():
        lock_path(out).write_text(f"{dead}\n")
    for name in (f".out.partial-{dead}-x", f".out.old-{dead}"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "f").write_text("x")
    again = pce_sim("run", tiny, "--out", out, "--quiet")
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    assert (out / "summary.json").exists()
    assert hidden_leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------ numba cache


def test_numba_cache_dir_choice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    physics_rw = tmp_path / "physics"
    physics_rw.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    uid = os.getuid()
    # numba's own locators work: nothing to set
    assert choose_numba_cache_dir({}, physics_rw, uid) is None
    assert choose_numba_cache_dir({"NUMBA_CACHE_DIR": "/x"}, blocker, uid) is None
    assert choose_numba_cache_dir({"HOME": str(tmp_path / "home")}, blocker, uid) is None
    # in-tree and user-wide both impossible: a private folder under the temp dir
    env = {"HOME": str(blocker / "home")}
    chosen = choose_numba_cache_dir(env, blocker, uid)
    assert chosen == str(tmp_path / "tmp" / f"pce-sim-numba-{uid}")
    assert (os.stat(chosen).st_mode & 0o777) == 0o700
    # a folder of that name that others can write is never used
    os.chmod(chosen, 0o777)
    other = choose_numba_cache_dir(env, blocker, uid)
    assert other != chosen and other is not None and Path(other).parent == tmp_path / "tmp"
    # user-wide numba cache blocked by a file, ours beside it writable
    xdg = tmp_path / "xdg"
    xdg.mkdir()
    (xdg / "numba").write_text("not a folder")
    assert choose_numba_cache_dir({"XDG_CACHE_HOME": str(xdg)}, blocker, uid) == str(
        xdg / "pce-sim" / "numba"
    )


def test_numba_cache_works_when_package_and_home_are_read_only(tmp_path: Path) -> None:
    copy = tmp_path / "pkg"
    shutil.copytree(ROOT / "sim", copy / "sim", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "geometries", copy / "geometries")
    (copy / "sim" / "physics" / "__pycache__").write_text("a file: numba cannot cache next to the source")
    home_file = tmp_path / "home-is-a-file"
    home_file.write_text("x")
    (tmp_path / "tmp").mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME")}
    env.update(HOME=str(home_file / "home"), PYTHONPATH=str(copy), TMPDIR=str(tmp_path / "tmp"))
    script = (
        "import os, sim\n"
        "from sim.physics.rheology import consistency_kernel, load_cement_preset\n"
        "print(consistency_kernel(100.0, load_cement_preset('medium').as_array()))\n"
        "print(os.environ['NUMBA_CACHE_DIR'])\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr
    cache_dir = Path(res.stdout.splitlines()[-1])
    assert cache_dir == tmp_path / "tmp" / f"pce-sim-numba-{os.getuid()}"
    assert any(cache_dir.rglob("*.nbi"))  # numba really cached there


# ------------------------------------------------------------------------------------ dask logging


def test_dask_logs_are_held_at_error_and_restored() -> None:
    pytest.importorskip("dask.distributed")
    from sim.studies.executors import DASK_LOGGERS, QuietDaskLogs

    logging.getLogger("distributed.nanny").setLevel(logging.INFO)
    with QuietDaskLogs():
        assert all(logging.getLogger(n).level == logging.ERROR for n in DASK_LOGGERS)
    assert logging.getLogger("distributed.nanny").level == logging.INFO


def test_dask_cluster_start_and_close_print_nothing(tmp_path: Path) -> None:
    pytest.importorskip("dask.distributed")
    script = (
        "import socket, sys\n"
        "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        "try:\n    s.bind(('127.0.0.1', 8787)); s.listen()\nexcept OSError:\n    pass\n"
        "from sim.studies.executors import DaskExecutor\n"
        "if __name__ == '__main__':\n"
        "    ex = DaskExecutor(workers=2)\n"
        "    assert ex._client.submit(sum, [1, 2]).result() == 3\n"
        "    ex.close()\n"
    )
    path = tmp_path / "dask_quiet.py"
    path.write_text(script)
    res = subprocess.run(
        [sys.executable, str(path)], capture_output=True, text=True, cwd=ROOT, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stderr.strip() == "", res.stderr


# ------------------------------------------------------------------------- sweep and cohort folders


@pytest.mark.parametrize(
    ("command", "study_file"), [("sweep", "sweep_smoke.yaml"), ("cohort", "cohort_small.yaml")]
)
@pytest.mark.parametrize("held", ["summary.json", "notes.txt"])
def test_a_study_never_writes_into_a_folder_it_did_not_make(
    tmp_path: Path, no_simulation: list[int], command: str, study_file: str, held: str
) -> None:
    """A sweep or cohort resumes its own folder but refuses a run folder or any other non-empty folder
    (it would write its tables over the files there), in one line, before any work."""
    out = tmp_path / "taken"
    out.mkdir()
    (out / held).write_text("{}")
    res = CliRunner().invoke(app, [command, str(ROOT / "configs" / study_file), "--out", str(out), "--quiet"])
    assert res.exit_code == 2, res.stderr
    assert res.stderr.count("\n") == 1 and res.stderr.startswith(f"error: --out {out}: ")
    assert f"holds no {command} to resume" in res.stderr
    assert sorted(p.name for p in out.iterdir()) == [held] and not no_simulation


@pytest.mark.parametrize(("study", "markers"), [("sweep", "SWEEP_MARKERS"), ("cohort", "COHORT_MARKERS")])
def test_a_study_folder_is_resumable_by_any_of_its_markers(tmp_path: Path, study: str, markers: str) -> None:
    import sim.studies.cohort
    import sim.studies.sweep

    names = getattr(sim.studies.sweep if study == "sweep" else sim.studies.cohort, markers)
    assert ("ledger.sqlite" if study == "sweep" else "cohort.resolved.yaml") in names
    for name in names:
        out = tmp_path / name.strip(".")
        out.mkdir()
        (out / name).write_text("")
        (out / "results.csv").write_text("")
        assert check_output_folder(out, overwrite=False, resume=names, study=f"{study} to resume") == out
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "results.csv").write_text("")
    with pytest.raises(ConfigError, match=f"holds no {study} to resume"):
        check_output_folder(foreign, overwrite=False, resume=names, study=f"{study} to resume")


def test_a_cohort_does_not_take_over_a_sweeps_folder(tmp_path: Path, no_simulation: list[int]) -> None:
    out = tmp_path / "sweep_out"
    out.mkdir()
    for name in ("ledger.sqlite", "sweep.resolved.yaml", "results.csv"):
        (out / name).write_text("")
    res = CliRunner().invoke(
        app, ["cohort", str(ROOT / "configs" / "cohort_small.yaml"), "--out", str(out), "-q"]
    )
    assert res.exit_code == 2 and "holds no cohort to resume" in res.stderr, res.stderr


def test_bench_updates_the_current_folder_when_it_holds_bench_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "bench.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    assert check_output_folder(Path("."), overwrite=False, resume=("bench.json",), allow_current=True)
    with pytest.raises(ConfigError, match="not the current folder"):
        check_output_folder(Path("."), overwrite=False, resume=("bench.json",))


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_run_into_a_link_writes_the_folder_it_points_to(
    tmp_path: Path, tiny: Path, monkeypatch: pytest.MonkeyPatch, overwrite: bool
) -> None:
    """`run --out LINK` replaced the user's link with a folder of its own and left `.LINK.old-PID` behind."""
    import sim.run.pipeline

    quiet = {"vtk": False, "fluoroscopy_png": False, "fields": False, "time_series": False}
    fake = RunResult(scenario=Scenario.model_validate({"output": quiet}), summary={"a": 1.0})
    monkeypatch.setattr(sim.run.pipeline, "run_scenario", lambda *a, **k: fake)
    monkeypatch.setattr("sim.cli._print_summary", lambda *a: None)
    target = tmp_path / "target"
    target.mkdir()
    if overwrite:
        fake.write(target, overwrite=True)
    link = tmp_path / "link"
    link.symlink_to(target)
    args = ["run", str(tiny), "--out", str(link), "--quiet"] + (["--overwrite"] if overwrite else [])
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert link.is_symlink() and (target / "summary.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "target", "tiny.yaml"]


def test_a_study_into_a_link_claims_beside_the_link(tmp_path: Path) -> None:
    """A study writes through a link (its target's parent need not be writable); only run and report-card,
    which replace their folder, follow it."""
    target = tmp_path / "target"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target)
    assert check_output_folder(link, overwrite=False, resume=("ledger.sqlite",)) == link
    assert check_output_folder(link, overwrite=False, replaces=("summary.json",)) == target
