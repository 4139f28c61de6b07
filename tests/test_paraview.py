"""ParaView opens what sim.output.vtk writes, and `render_view` draws the standard view headless.

Needs ParaView's pvpython/pvbatch (CI installs Debian's paraview, python3-paraview and xvfb);
without them the ParaView tests are skipped with the reason printed.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

from sim.core.config import scenario_from_dict
from sim.core.errors import PceSimError
from sim.output.view import STATE_SCRIPT, render_view
from sim.output.vtk import read_pvd, select_times, write_run_vtk
from sim.physics.fragment_set import LODGED
from sim.run.pipeline import run_scenario
from tests.helpers import LEAK_CASE

PVPYTHON = shutil.which("pvpython")
needs_paraview = pytest.mark.skipif(
    PVPYTHON is None,
    reason="ParaView (pvpython) not installed: apt-get install paraview python3-paraview xvfb",
)


@pytest.fixture(scope="module")
def run():
    """A small real run (the seed case with the tip at the anterior nutrient vein, 1 mm grid, see
    ``tests.helpers.LEAK_CASE``): cement in the body, a venous leak, emboli in both lungs."""
    res = run_scenario(scenario_from_dict(LEAK_CASE))
    assert (res.artifacts.transport.emboli["status"] == LODGED).sum() >= 2
    return res


@pytest.fixture(scope="module")
def run_dir(run, tmp_path_factory):
    d = tmp_path_factory.mktemp("run") / "vtk"
    write_run_vtk(d, run)
    return d.parent


_PROBE = """
import json, sys
from paraview.simple import PVDReader, XMLPolyDataReader
out = {}
for path in sys.argv[1:]:
    r = PVDReader(FileName=path)
    t = list(r.TimestepValues) if r.TimestepValues else []
    r.UpdatePipeline(t[-1] if t else 0.0)
    info = r.GetDataInformation()
    out[path.split("/")[-1]] = {"times": t, "cell": sorted(r.CellData.keys()),
                                "point": sorted(r.PointData.keys()), "n_cells": info.GetNumberOfCells()}
print("JSON:" + json.dumps(out))
"""


@needs_paraview
def test_pvpython_reads_every_collection(run, run_dir, tmp_path):
    vtk = run_dir / "vtk"
    script = tmp_path / "probe.py"
    script.write_text(_PROBE)
    names = ["bone.pvd", "veins.pvd", "lungs.pvd", "emboli.pvd", "pce_sim.pvd"]
    proc = subprocess.run(
        [PVPYTHON, str(script), *[str(vtk / n) for n in names]], capture_output=True, text=True, timeout=120
    )
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("JSON:")), None)
    assert line is not None, proc.stderr[-2000:]
    got = json.loads(line[5:])
    bone_times = [t for t, _ in read_pvd(vtk / "bone.pvd")]
    assert got["bone.pvd"]["times"] == pytest.approx(bone_times)
    art = run.artifacts
    recorded = [t for t, _ in art.recording.bone_snapshots]
    assert len(bone_times) == len(select_times(recorded, run.scenario.output.vtk_interval_s)) >= 4
    assert {
        "cement_fraction",
        "arrival_time_s",
        "pressure_pa",
        "porosity",
        "permeability_m2",
        "body",
        "tissue",
    } <= set(got["bone.pvd"]["cell"])
    n_bone_cells = int(np.prod(art.bone.shape))
    assert got["bone.pvd"]["n_cells"] == n_bone_cells
    assert {"diameter_mm", "cement_fill", "kind"} <= set(got["veins.pvd"]["cell"])
    assert "radius_mm" in got["veins.pvd"]["point"]
    assert got["veins.pvd"]["n_cells"] == art.venous.network.n_edges
    assert "radius_mm" in got["lungs.pvd"]["point"]
    emboli = art.transport.emboli
    lodged = emboli["status"] == LODGED
    t_last = float(emboli["time_s"][lodged].max())
    late = [t_last] if t_last > bone_times[-1] else []
    assert got["emboli.pvd"]["times"] == pytest.approx(bone_times + late)
    assert got["emboli.pvd"]["n_cells"] == lodged.sum() >= 2  # all lodged by the last step
    # the top collection plays the whole run: every bone step, all objects as blocks
    top_times = got["pce_sim.pvd"]["times"]
    assert all(any(t == pytest.approx(u) for u in top_times) for t in bone_times)
    assert got["pce_sim.pvd"]["n_cells"] > n_bone_cells


def _png(path):
    from matplotlib.image import imread

    return imread(path)


@needs_paraview
def test_render_standard_view_to_png(run_dir, tmp_path):
    png = render_view(run_dir, tmp_path / "view.png", quiet=True, size=(900, 500))
    img = _png(png)
    assert img.shape[:2] == (500, 900)
    rgb = img[..., :3]
    assert rgb.var() > 0
    # bright yellow emboli and white cement are drawn (background is near-black blue)
    yellow = (rgb[..., 0] > 0.8) & (rgb[..., 1] > 0.6) & (rgb[..., 2] < 0.35)
    white = (rgb > 0.8).all(axis=-1)
    assert yellow.sum() > 20 and white.sum() > 20


@needs_paraview
def test_render_degrades_without_lungs_and_emboli(run_dir, tmp_path):
    vtk = tmp_path / "vtk"
    shutil.copytree(run_dir / "vtk", vtk)
    for name in ("emboli.pvd", "lungs.pvd", "lungs.vtp", "needle.vtp"):
        (vtk / name).unlink()
    shutil.rmtree(vtk / "emboli")
    png = render_view(tmp_path, None, quiet=True, size=(600, 400))
    assert png == tmp_path.resolve() / "view.png"
    assert _png(png)[..., :3].var() > 0


def test_missing_paraview_and_missing_files_are_clear_errors(tmp_path, monkeypatch):
    (tmp_path / "vtk").mkdir()
    with pytest.raises(PceSimError, match="no ParaView files"):
        render_view(tmp_path)
    (tmp_path / "vtk" / "bone.pvd").write_text("<VTKFile/>")
    monkeypatch.setenv("PCE_SIM_PARAVIEW", "pvbatch-that-does-not-exist")
    with pytest.raises(PceSimError, match="not an executable"):
        render_view(tmp_path)
    monkeypatch.delenv("PCE_SIM_PARAVIEW")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(PceSimError, match="ParaView is not installed"):
        render_view(tmp_path)


def test_state_script_ships_inside_the_package():
    assert STATE_SCRIPT.is_file() and STATE_SCRIPT.parent.name == "paraview"
    assert "def build(" in STATE_SCRIPT.read_text()


@pytest.mark.parametrize(
    ("png", "expect"),
    [
        ("run", "is a folder"),
        ("/proc/pce-view.png", "under /proc"),
        ("afile/view.png", "afile is a file, not a folder"),
        ("view.jpg", "name a file ending in .png"),
        (".png", "'.png': name a file with a name before .png, e.g. view.png"),
        ("out/.PNG", "name a file with a name before .png"),
        ("exists.png", "exists.png: exists (use --overwrite to replace it, or name another file)"),
    ],
)
def test_a_bad_png_is_refused_before_paraview_renders(tmp_path, monkeypatch, png, expect):
    """`view --png` is checked first: one line naming --png, exit 2, ParaView never started."""
    from typer.testing import CliRunner

    import sim.output.view
    from sim.cli import app

    started = []
    monkeypatch.setattr(sim.output.view, "paraview_executable", lambda: started.append(1) or "pvbatch")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run" / "vtk").mkdir(parents=True)
    (tmp_path / "run" / "vtk" / "bone.pvd").write_text("<VTKFile/>")
    (tmp_path / "afile").write_text("x")
    (tmp_path / "exists.png").write_text("precious")
    result = CliRunner().invoke(app, ["view", "run", "--png", png, "--quiet"])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: --png ") and result.stderr.count("\n") == 1, result.stderr
    assert expect in result.stderr and not started


def test_a_render_replaces_the_png_only_when_it_succeeded(tmp_path, monkeypatch):
    """`view` deleted the PNG before ParaView drew (a failed render lost it) and said 'wrote' twice."""
    from typer.testing import CliRunner

    import sim.output.view
    from sim.cli import app

    monkeypatch.chdir(tmp_path)
    (tmp_path / "run" / "vtk").mkdir(parents=True)
    (tmp_path / "run" / "vtk" / "bone.pvd").write_text("<VTKFile/>")
    target = tmp_path / "exists.png"
    target.write_text("precious")

    def failing(run_dir, vtk_dir, png, *args):
        png.write_text("half")
        raise PceSimError("ParaView could not render")

    monkeypatch.setattr(sim.output.view, "_render", failing)
    result = CliRunner().invoke(app, ["view", "run", "--png", "exists.png", "--overwrite"])
    assert result.exit_code == 2 and target.read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists.png", "run"]  # no partial file left

    def drawing(run_dir, vtk_dir, png, *args):
        png.write_bytes(b"\x89PNG new")

    monkeypatch.setattr(sim.output.view, "_render", drawing)
    result = CliRunner().invoke(app, ["view", "run", "--png", "exists.png", "--overwrite"])
    assert result.exit_code == 0, result.output
    assert target.read_bytes() == b"\x89PNG new" and result.stdout.count("wrote") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists.png", "run"]
