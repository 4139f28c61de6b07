"""ParaView opens what sim.output.vtk writes, and `render_view` draws the standard view headless.

Needs ParaView's pvpython/pvbatch (CI installs Debian's paraview, python3-paraview and xvfb);
without them the ParaView tests are skipped with the reason printed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from types import SimpleNamespace

import numpy as np
import pytest

from sim.core.errors import PceSimError
from sim.output.view import STATE_SCRIPT, render_view
from sim.output.vtk import read_pvd, write_run_vtk

PVPYTHON = shutil.which("pvpython")
needs_paraview = pytest.mark.skipif(
    PVPYTHON is None,
    reason="ParaView (pvpython) not installed: apt-get install paraview python3-paraview xvfb",
)


def _run_objects(rng: np.random.Generator):
    """A small run in the patient frame: ellipsoidal body with a cement ball, veins, a lung tree, emboli."""
    h = 1.5e-3
    shape = (28, 22, 18)
    origin = -0.5 * (np.array(shape) - 1) * h
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    x = origin + ijk * h
    q = (x[..., 0] / 0.02) ** 2 + (x[..., 1] / 0.016) ** 2 + (x[..., 2] / 0.012) ** 2
    porous = q < 0.8
    bone = SimpleNamespace(
        level="L1",
        spacing_m=h,
        origin_m=origin,
        porous=porous,
        body=q < 1.0,
        porosity=np.where(porous, 0.9, 0.0),
        permeability=np.stack([np.where(porous, 4e-8, 0)] * 3),
    )
    centre = np.array([0.0, -0.006, 0.0])
    r = np.linalg.norm(x - centre, axis=-1)
    times = np.linspace(2.0, 60.0, 8)
    radius = lambda t: 0.0105 * (t / times[-1]) ** (1 / 3)  # noqa: E731  (sphere, constant rate)
    snaps = [(float(t), ((r < radius(t)) & porous).astype(np.float32)) for t in times]
    injection = SimpleNamespace(
        snapshots=snaps,
        cement_fraction=snaps[-1][1],
        arrival_time_s=np.where(porous, r, np.nan),
        pressure_pa=np.where(porous, 2e3, np.nan),
    )
    # veins: a paravertebral chain on each side up to an azygos-like trunk and a right atrium
    nodes = [
        [-0.03, 0.0, -0.05],
        [-0.03, 0.0, 0.0],
        [-0.03, 0.0, 0.05],
        [-0.02, -0.01, 0.12],
        [-0.035, -0.08, 0.14],
        [0.03, 0.0, -0.05],
        [0.03, 0.0, 0.0],
        [0.03, 0.0, 0.05],
        [0.0, -0.02, 0.0],
    ]
    edges = [(0, 1), (1, 2), (2, 3), (3, 4), (5, 6), (6, 7), (7, 3), (8, 1), (8, 6)]
    network = SimpleNamespace(
        node_pos_m=np.array(nodes),
        edge_u=np.array([e[0] for e in edges]),
        edge_v=np.array([e[1] for e in edges]),
        edge_diameter_m=np.full(len(edges), 4e-3),
        edge_length_m=np.full(len(edges), 0.05),
        polylines=None,
        edge_kind=np.array(["plexus"] * 7 + ["exit"] * 2),
    )
    fill = np.zeros(len(edges))
    fill[[7, 0]] = [1.0, 0.5]
    venous = SimpleNamespace(
        network=network,
        columns=SimpleNamespace(
            fill_m3=fill * np.pi / 4 * 16e-6 * 0.05, col_diameter_m=network.edge_diameter_m
        ),
    )
    # lungs: two symmetric 5-generation trees from a trunk
    pos, parent, diam = [[0.005, -0.09, 0.17], [0.005, -0.08, 0.19]], [-1, 0], [0.028, 0.028]
    stack = [(1, np.array([s, 0.2, -0.3]), 0.02, 1) for s in (-1.0, 1.0)]
    while stack:
        i, d, dia, g = stack.pop()
        for turn in (-0.6, 0.6):
            nd = d + turn * np.array([0.3, 0.0, 1.0]) + rng.normal(0, 0.1, 3)
            nd /= np.linalg.norm(nd)
            pos.append(list(np.array(pos[i]) + 0.035 * 0.8**g * nd))
            parent.append(i)
            diam.append(dia)
            if g < 5:
                stack.append((len(pos) - 1, nd, dia * 0.79, g + 1))
    tree = SimpleNamespace(node_pos_m=np.array(pos), parent=np.array(parent), diameter_m=np.array(diam))
    leaves = np.flatnonzero(np.array(diam) < 0.009)[:6]
    p0, p1 = tree.node_pos_m[tree.parent[leaves]], tree.node_pos_m[leaves]
    emboli = {
        "position_m": 0.5 * (p0 + p1),
        "direction": p1 - p0,
        "length_m": np.full(leaves.size, 8e-3),
        "diameter_m": tree.diameter_m[leaves],
        "lodge_time_s": np.linspace(20, 55, leaves.size),
    }
    needle = SimpleNamespace(
        tip_positions_m=np.array([[0.002, -0.006, 0.0]]),
        entry_positions_m=np.array([[0.012, 0.016, 0.004]]),
        length_m=0.1,
        inner_diameter_m=2.7e-3,
    )
    return dict(bone=bone, injection=injection, venous=venous, tree=tree, emboli=emboli, needle=needle)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("run") / "vtk"
    write_run_vtk(d, **_run_objects(np.random.default_rng(7)), interval_s=5.0)
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
def test_pvpython_reads_every_collection(run_dir, tmp_path):
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
    assert len(bone_times) == 8
    assert {
        "cement_fraction",
        "arrival_time_s",
        "pressure_pa",
        "porosity",
        "permeability_m2",
        "body",
        "tissue",
    } <= set(got["bone.pvd"]["cell"])
    assert got["bone.pvd"]["n_cells"] == 28 * 22 * 18
    assert {"diameter_mm", "cement_fill", "kind"} <= set(got["veins.pvd"]["cell"])
    assert "radius_mm" in got["veins.pvd"]["point"] and got["veins.pvd"]["n_cells"] == 9
    assert "radius_mm" in got["lungs.pvd"]["point"]
    assert got["emboli.pvd"]["times"] == pytest.approx(bone_times)
    assert got["emboli.pvd"]["n_cells"] == 6  # all lodged by the last step
    # the top collection plays the whole run: every bone step, all objects as blocks
    assert got["pce_sim.pvd"]["times"][-len(bone_times) :] == pytest.approx(bone_times)
    assert got["pce_sim.pvd"]["n_cells"] > 28 * 22 * 18


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
