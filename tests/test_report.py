"""Report: figures and report.md for run and sweep folders, headless, robust to missing columns."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sim.core.config import scenario_from_dict
from sim.core.errors import ConfigError
from sim.output.report import _lobe_counts, read_table, spread, write_report
from sim.run.results import RunResult
from sim.studies.ledger import write_csv

REPO = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def synthetic_run(folder: Path, with_emboli: bool = True) -> Path:
    """A run folder with analytic curves: constant-rate injection, leak from t = 10 s."""
    scenario = scenario_from_dict({"output": {"vtk": False, "fluoroscopy_png": False}})
    t = np.linspace(0.0, 80.0, 161)
    ts = {
        "t_s": t,
        "injected_volume_ml": 0.05 * t,
        "needle_pressure_kpa": 5.0 + np.sqrt(t),
        "syringe_pressure_mpa": 1.0 + 0.01 * t,
        "leaked_volume_ml": 0.004 * np.maximum(t - 10.0, 0.0),
        "cement_in_veins_ml": 0.003 * np.maximum(t - 10.0, 0.0),
        "n_fragments": np.floor(np.maximum(t - 20.0, 0.0) / 5.0),
    }
    lobes = np.array(["RUL", "RLL", "RLL", "LUL", "LLL", "RML", "RLL"])
    emboli = (
        {
            "fragment_id": np.arange(7),
            "volume_mm3": np.full(7, 10.0),
            "length_mm": np.array([8.0, 10.0, 12.0, 6.0, 9.0, 7.0, 15.0]),
            "diameter_mm": np.full(7, 1.5),
            "lobe": lobes,
        }
        if with_emboli
        else {}
    )
    summary = {
        "injected_volume_ml": 4.0,
        "stop_reason": "volume",
        "leak_onset_s": 10.0,
        "detection_time_s": 12.5,
        "stop_time_s": 80.0,
        "n_emboli": 7 if with_emboli else 0,
        "embolised_volume_ml": 0.07 if with_emboli else 0.0,
        "perfusion_loss_fraction": float("nan"),
    }
    RunResult(scenario, summary, time_series=ts, emboli=emboli).write(folder)
    return folder


def check_files(files: list[Path], stems: set[str]) -> None:
    assert {p.stem for p in files if p.suffix == ".png"} == stems
    for p in files:
        assert p.stat().st_size > 1000 or p.suffix == ".md", p
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == PNG_MAGIC


def test_run_report_figures_and_markdown(tmp_path):
    run = synthetic_run(tmp_path / "run")
    files = write_report(run, pdf=True)
    check_files(files, {"timeline", "emboli_sizes", "lobes"})
    assert {p.suffix for p in files} == {".png", ".pdf", ".md"}
    md = (run / "report" / "report.md").read_text()
    assert "| n_emboli | 7 |" in md and "| detection_time_s | 12.5 | s |" in md
    assert "fraction tubular (length/diameter > 3): 1" in md  # every length >= 6 mm = 4 diameters
    assert "![timeline](timeline.png)" in md


def test_run_without_emboli_or_optional_columns(tmp_path):
    run = synthetic_run(tmp_path / "run", with_emboli=False)
    (run / "time_series.csv").write_text("t_s,injected_volume_ml\n0.0,0.0\n1.0,0.05\n")
    files = write_report(run)
    check_files(files, {"timeline", "emboli_sizes", "lobes"})


def test_lobe_counts_and_spread_are_exact():
    emboli = {
        "lobe": np.array(["RUL", "RLL", "RLL", "LLL"], dtype=object),
        "volume_mm3": np.array([1.0, 2.0, 3.0, 4.0]),
    }
    counts, volumes = _lobe_counts(emboli)
    assert counts.tolist() == [1, 0, 2, 0, 1] and volumes.tolist() == [1.0, 0.0, 5.0, 0.0, 4.0]
    med, q25, q75, n = spread(np.array([4.0, 1.0, np.nan, 3.0, 2.0]))
    assert (med, q25, q75, n) == (2.5, 1.75, 3.25, 4)  # linear-interpolation quartiles of 1..4
    assert np.isnan(spread(np.array([np.nan]))[0])


def test_read_table_keeps_missing_cells_as_nan(tmp_path):
    path = tmp_path / "t.csv"
    write_csv(path, {"a": [1.0, None, 3.0], "b": ["x", None, "z"]})
    table = read_table(path)
    assert np.isnan(table["a"][1]) and table["a"][2] == 3.0
    assert table["b"].tolist() == ["x", None, "z"]


def _sweep_folder(folder: Path, with_stop: bool = True) -> Path:
    """results.csv + emboli.csv as written by a sweep: 2 volumes x (stop 0 s / never) x 3 replicates."""
    folder.mkdir(parents=True)
    rows: dict[str, list] = {k: [] for k in ("index", "run_id", "status", "injection.volume_ml")}
    if with_stop:
        rows["injection.stop_after_leak_s"] = []
    rows.update({"injected_volume_ml": [], "n_emboli": [], "embolised_volume_ml": [], "error": []})
    emboli: dict[str, list] = {"run_id": [], "lobe": [], "diameter_mm": [], "length_mm": []}
    i = 0
    for volume in (2.0, 4.0):
        for stop in (0.0, None):
            for rep in range(3):
                n = int(volume) * (1 if stop == 0.0 else 5) + rep
                failed = volume == 4.0 and stop is None and rep == 2
                rows["index"].append(i)
                rows["run_id"].append(f"run{i:03d}")
                rows["status"].append("failed" if failed else "done")
                rows["injection.volume_ml"].append(volume)
                if with_stop:
                    rows["injection.stop_after_leak_s"].append(stop)
                rows["injected_volume_ml"].append(None if failed else volume)
                rows["n_emboli"].append(None if failed else n)
                rows["embolised_volume_ml"].append(None if failed else 0.01 * n)
                rows["error"].append("SolverError: test" if failed else None)
                if not failed:
                    for k in range(n):
                        emboli["run_id"].append(f"run{i:03d}")
                        emboli["lobe"].append(("RUL", "RML", "RLL", "LUL", "LLL")[k % 5])
                        emboli["diameter_mm"].append(1.0 + 0.1 * k)
                        emboli["length_mm"].append(5.0 + k)
                i += 1
    write_csv(folder / "results.csv", rows)
    write_csv(folder / "emboli.csv", emboli)
    return folder


def test_sweep_report_groups_by_stop_delay(tmp_path):
    folder = _sweep_folder(tmp_path / "sweep")
    files = write_report(folder)
    check_files(files, {"emboli_vs_stop_delay", "emboli_vs_volume", "lobes", "emboli_sizes"})
    md = (folder / "report" / "report.md").read_text()
    assert "12 scenarios: 11 done, 1 failed, 0 not run." in md
    # stop at detection: n = volume + rep -> {2,3,4,4,5,6}: median 4; never: 5*volume + rep, one run failed
    # one row per (stop delay, volume); stop at detection, 2 ml: n = 2 + rep -> 2, 3, 4
    assert "| 0 | 2 | 3 | 2 [2–2] | 3 [2.5–3.5] | 0.03 [0.025–0.035] |" in md
    assert "| never | 4 | 2 | 4 [4–4] | 20.5 [20.2–20.8] |" in md  # n = 5 * 4 + rep, rep 2 failed
    assert "run011" in md and "SolverError: test" in md


def test_sweep_report_without_stop_delay_column(tmp_path):
    folder = _sweep_folder(tmp_path / "sweep", with_stop=False)
    files = write_report(folder)
    assert (folder / "report" / "emboli_vs_volume.png") in files
    md = (folder / "report" / "report.md").read_text()
    assert "| 2 | 6 | 2 [2–2] |" in md and "| 4 | 5 | 4 [4–4] |" in md


def test_report_rejects_other_folders(tmp_path):
    with pytest.raises(ConfigError, match="neither a run folder"):
        write_report(tmp_path)
    with pytest.raises(ConfigError, match="not a folder"):
        write_report(tmp_path / "missing")
    (tmp_path / "ledger.sqlite").write_bytes(b"")  # a sweep killed before its first export
    with pytest.raises(ConfigError, match="without its results.csv yet .*resume it with the same command"):
        write_report(tmp_path)


def test_report_on_a_study_still_running_says_so(tmp_path):
    """It was told the sweep had stopped and to resume it, which the live sweep's claim then refused."""
    from sim.run.output_folder import OutputClaim

    (tmp_path / "ledger.sqlite").write_bytes(b"")
    with OutputClaim(tmp_path):
        with pytest.raises(ConfigError, match=rf"a sweep or cohort still running \(pid {os.getpid()}\)"):
            write_report(tmp_path)


def test_report_through_a_link_to_a_running_study_says_so(tmp_path):
    from sim.run.output_folder import OutputClaim

    target = tmp_path / "study"
    target.mkdir()
    (target / "ledger.sqlite").write_bytes(b"")
    link = tmp_path / "link"
    link.symlink_to(target)
    with OutputClaim(target):
        with pytest.raises(ConfigError, match="still running"):
            write_report(link)


@pytest.mark.parametrize("kind", ["file", "dangling link", "proc"])
def test_report_checks_its_folder_before_drawing(tmp_path, kind):
    """A file, a dangling link or /proc where report/ goes gave exit 1 and a bare errno text after drawing."""
    run = synthetic_run(tmp_path / "run")
    target = run / "report"
    if kind == "file":
        target.write_text("keep")
    elif kind == "dangling link":
        target.symlink_to(tmp_path / "gone")
    else:
        target.symlink_to("/proc/self")
    expect = {"file": "is not a folder", "dangling link": "which does not exist", "proc": "under /proc"}
    with pytest.raises(ConfigError, match=expect[kind]):
        write_report(run)
    assert not any(p.suffix == ".png" for p in run.rglob("*.png"))


def test_cli_report_headless(tmp_path):
    run = synthetic_run(tmp_path / "run")
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "MPLBACKEND", "WAYLAND_DISPLAY")}
    res = subprocess.run(
        [sys.executable, "-m", "sim.cli", "report", str(run), "--pdf"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert (run / "report" / "timeline.pdf").stat().st_size > 1000
    bad = subprocess.run(
        [sys.executable, "-m", "sim.cli", "report", str(tmp_path / "nothing")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


@pytest.mark.parametrize(
    ("name", "content", "expect"),
    [
        ("summary.json", b'{"a": "\xff"}', "cannot read run summary"),
        ("summary.json", b"[1, 2]", "not a pce-sim run summary"),
        ("summary.json", b"{}", "not a pce-sim run summary"),
        ("results.csv", b"a,b\n1,2\n", "not a pce-sim sweep table"),
        ("results.csv", b"run_id,x\n\xff\xfe,1\n", "cannot read the table"),
    ],
)
def test_report_refuses_what_is_not_a_run_or_sweep_in_one_line(tmp_path, name, content, expect):
    from typer.testing import CliRunner

    from sim.cli import app

    folder = tmp_path / "f"
    folder.mkdir()
    (folder / name).write_bytes(content)
    res = CliRunner().invoke(app, ["report", str(folder), "--quiet"])
    assert res.exit_code == 2, res.output
    assert res.stderr.count("\n") == 1 and expect in res.stderr
    assert sorted(p.name for p in folder.iterdir()) == [name]  # nothing made
