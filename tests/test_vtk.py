"""ParaView files (sim.output.vtk): write, read back with VTK's own XML readers, compare."""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest
from vtkmodules.vtkIOXML import vtkXMLImageDataReader

from sim.core.errors import GeometryError, PceSimError
from sim.output.vtk import (
    network_geometry,
    read_pvd,
    read_vti,
    read_vtp,
    select_times,
    write_emboli_vtp,
    write_image_data,
    write_image_series,
    write_network_vtp,
    write_pvd,
    write_run_vtk,
)


def _header(path) -> str:
    """The XML header of a VTK file (everything before the appended binary block)."""
    raw = path.read_bytes()
    start = raw.index(b"<AppendedData")
    return raw[: raw.index(b">", start) + 1].decode()


def test_image_data_round_trip_every_dtype_and_vector(tmp_path):
    rng = np.random.default_rng(0)
    shape = (4, 3, 5)  # all different: a transposed ravel would not survive
    arrays = {
        "f64": rng.random(shape),
        "f32": rng.random(shape).astype(np.float32),
        "mask": rng.random(shape) > 0.5,
        "label": rng.integers(0, 7, shape).astype(np.int64),
        "k_m2": rng.random((3, *shape)),
        "nan_outside": np.where(rng.random(shape) > 0.3, rng.random(shape), np.nan),
    }
    h, origin = 1.5e-3, np.array([-0.02, 0.01, -0.005])
    path = write_image_data(tmp_path / "g.vti", arrays, h, origin, time_s=12.5)
    back = read_vti(path)
    assert back["shape"] == shape
    np.testing.assert_allclose(back["spacing_mm"], [1.5, 1.5, 1.5])
    # origin_m is the centre of cell (0,0,0); VTK's origin is that cell's corner, in mm
    np.testing.assert_allclose(back["origin_mm"], (origin - h / 2) * 1e3)
    for name in ("f64", "f32", "label", "nan_outside"):
        np.testing.assert_array_equal(back["cell"][name], arrays[name])
        assert back["cell"][name].dtype == arrays[name].dtype
    np.testing.assert_array_equal(back["cell"]["mask"], arrays["mask"].astype(np.uint8))
    np.testing.assert_array_equal(back["cell"]["k_m2"], np.moveaxis(arrays["k_m2"], 0, -1))
    assert back["field"]["TimeValue"][0] == 12.5
    head = _header(path)
    assert 'compressor="vtkZLibDataCompressor"' in head and 'format="appended"' in head
    assert 'encoding="raw"' in head and 'header_type="UInt64"' in head


def test_image_cells_sit_at_their_patient_frame_centres(tmp_path):
    """Independent of read_vti: ask VTK which cell contains the centre of cell (i, j, k)."""
    shape = (5, 4, 3)
    flat = np.arange(np.prod(shape), dtype=np.float64).reshape(shape)
    h, origin = 2e-3, np.array([0.1, -0.2, 0.05])
    path = write_image_data(tmp_path / "c.vti", {"idx": flat}, h, origin)
    reader = vtkXMLImageDataReader()
    reader.SetFileName(str(path))
    reader.Update()
    img = reader.GetOutput()
    values = img.GetCellData().GetArray("idx")
    for ijk in [(0, 0, 0), (4, 0, 0), (0, 3, 0), (0, 0, 2), (3, 2, 1), (4, 3, 2)]:
        centre_mm = (origin + np.array(ijk) * h) * 1e3
        found, pcoords = [0, 0, 0], [0.0, 0.0, 0.0]
        assert img.ComputeStructuredCoordinates(centre_mm, found, pcoords) == 1
        np.testing.assert_allclose(pcoords, 0.5)  # the centre, not a corner
        assert values.GetValue(img.ComputeCellId(found)) == flat[ijk]


def test_image_data_rejects_mismatched_arrays(tmp_path):
    with pytest.raises(GeometryError, match="'b'"):
        write_image_data(
            tmp_path / "x.vti", {"a": np.zeros((3, 3, 3)), "b": np.zeros((3, 3, 4))}, 1e-3, [0, 0, 0]
        )
    with pytest.raises(GeometryError, match="spacing"):
        write_image_data(tmp_path / "x.vti", {"a": np.zeros((3, 3, 3))}, 0.0, [0, 0, 0])


def test_image_series_pvd_lists_every_step_in_time_order(tmp_path):
    shape = (3, 4, 2)
    times = [0.0, 2.5, 5.0, 9.75]
    frames = ({"c": np.full(shape, t)} for t in times)  # a generator, as a solver would stream it
    pvd = write_image_series(tmp_path, "bone", times, frames, 1e-3, [0, 0, 0])
    entries = read_pvd(pvd)
    assert [t for t, _ in entries] == times
    for t, rel in entries:
        back = read_vti(tmp_path / rel)
        assert back["field"]["TimeValue"][0] == t
        np.testing.assert_array_equal(back["cell"]["c"], np.full(shape, t))
    with pytest.raises(GeometryError, match="increase"):
        write_image_series(tmp_path, "bad", [0.0, 2.0, 1.0], [{"c": np.zeros(shape)}] * 3, 1e-3, [0, 0, 0])
    with pytest.raises(GeometryError, match="3 times but 2 frames"):
        write_image_series(tmp_path, "short", [0.0, 1.0, 2.0], [{"c": np.zeros(shape)}] * 2, 1e-3, [0, 0, 0])


def test_pvd_parts_and_relative_paths(tmp_path):
    path = write_pvd(tmp_path / "a.pvd", [(0.0, "x/a_0.vtp", 0), (1.5, "b.vtp", 1)])
    assert read_pvd(path, with_parts=True) == [(0.0, "x/a_0.vtp", 0), (1.5, "b.vtp", 1)]
    with pytest.raises(GeometryError, match="relative"):
        write_pvd(tmp_path / "b.pvd", [(0.0, str(tmp_path / "abs.vtp"))])
    with pytest.raises(PceSimError, match="no such"):
        read_pvd(tmp_path / "missing.pvd")


def test_network_edges_round_trip_with_labels_and_radius(tmp_path):
    pts = np.array([[0, 0, 0], [0.01, 0, 0], [0.01, 0.02, 0], [0.01, 0, 0.03]], dtype=float)
    edges = np.array([[0, 1], [1, 2], [1, 3]])
    diam = np.array([4e-3, 2e-3, 3e-3])
    cells = {"kind": np.array(["azygos", "segmental", "azygos"]), "flow_ml_per_s": np.array([1.0, -0.4, 0.6])}
    path = write_network_vtp(
        tmp_path / "n.vtp", pts, edges, cells, {"node_id": np.arange(4)}, diameter_m=diam
    )
    points, lines, data = read_vtp(path)
    np.testing.assert_allclose(points, pts * 1e3)
    assert [ln.tolist() for ln in lines] == edges.tolist()
    labels = data["field"]["kind_labels"]
    assert [labels[c] for c in data["cell"]["kind"]] == cells["kind"].tolist()
    np.testing.assert_array_equal(data["cell"]["flow_ml_per_s"], cells["flow_ml_per_s"])
    np.testing.assert_allclose(data["cell"]["diameter_mm"], diam * 1e3)
    # a shared node carries the radius of the widest vessel meeting there
    np.testing.assert_allclose(data["point"]["radius_mm"], [2.0, 2.0, 1.0, 1.5])
    np.testing.assert_array_equal(data["point"]["node_id"], np.arange(4))
    assert 'compressor="vtkZLibDataCompressor"' in _header(path)


def test_network_polylines_keep_their_vertices(tmp_path):
    polys = [np.array([[0, 0, 0], [0, 0, 0.01], [0.005, 0, 0.02]]), np.array([[0.1, 0, 0], [0.1, 0.01, 0]])]
    path = write_network_vtp(tmp_path / "p.vtp", None, polys, diameter_m=np.array([2e-3, 6e-3]))
    points, lines, data = read_vtp(path)
    assert [len(ln) for ln in lines] == [3, 2]
    for poly, ln in zip(polys, lines, strict=True):
        np.testing.assert_allclose(points[ln], poly * 1e3)
    np.testing.assert_allclose(data["point"]["radius_mm"], [1, 1, 1, 3, 3])
    with pytest.raises(GeometryError, match="polyline 0"):
        write_network_vtp(tmp_path / "bad.vtp", None, [np.zeros((1, 3))])
    with pytest.raises(GeometryError, match="edge 1"):
        write_network_vtp(tmp_path / "bad.vtp", np.zeros((2, 3)), np.array([[0, 1], [1, 5]]))


def test_emboli_segments_have_the_fragment_geometry(tmp_path):
    rng = np.random.default_rng(3)
    n = 25
    centers = rng.normal(size=(n, 3)) * 0.05
    dirs = rng.normal(size=(n, 3))
    dirs[0] = 0.0  # unknown axis -> drawn along z
    lengths = rng.uniform(2e-3, 15e-3, n)
    diams = rng.uniform(1e-3, 5e-3, n)
    path = write_emboli_vtp(
        tmp_path / "e.vtp", centers, dirs, lengths, diams, {"lobe": np.array(["RLL"] * n)}
    )
    points, lines, data = read_vtp(path)
    a, b = points[[ln[0] for ln in lines]], points[[ln[1] for ln in lines]]
    np.testing.assert_allclose(np.linalg.norm(b - a, axis=1), lengths * 1e3, rtol=1e-12)
    np.testing.assert_allclose(0.5 * (a + b), centers * 1e3, atol=1e-12)
    unit = dirs[1:] / np.linalg.norm(dirs[1:], axis=1, keepdims=True)
    np.testing.assert_allclose((b - a)[1:] / (lengths[1:, None] * 1e3), unit, atol=1e-12)
    np.testing.assert_allclose((b - a)[0], [0, 0, lengths[0] * 1e3])
    np.testing.assert_allclose(data["cell"]["diameter_mm"], diams * 1e3)
    np.testing.assert_allclose(data["point"]["radius_mm"], np.repeat(diams, 2) * 500)


def test_select_times_keeps_first_last_and_spacing():
    t = [0.0, 0.4, 1.0, 1.2, 2.1, 2.5, 3.05]
    keep = select_times(t, 1.0)
    assert keep == [0, 2, 4, 6]
    assert all(t[b] - t[a] >= 1.0 - 1e-12 for a, b in zip(keep[:-2], keep[1:-1], strict=True))
    assert select_times(t, None) == list(range(len(t)))
    assert select_times([], 1.0) == []


def test_parent_format_tree_becomes_one_line_per_vessel():
    tree = SimpleNamespace(
        node_pos_m=np.array([[0, 0, 0], [0, 0, -0.01], [0.01, 0, -0.02], [-0.01, 0, -0.02]], dtype=float),
        parent=np.array([-1, 0, 1, 1]),
        diameter_m=np.array([9e-3, 8e-3, 5e-3, 6e-3]),
        lobe=np.array(["trunk", "trunk", "L", "R"]),
        flow_m3_s=np.array([2.0, 2.0, 0.8, 1.2]) * 1e-6,
    )
    points, edges, diam, cells = network_geometry(tree)
    assert edges.tolist() == [[0, 1], [1, 2], [1, 3]]
    np.testing.assert_allclose(diam, [8e-3, 5e-3, 6e-3])  # each vessel is named by its distal node
    np.testing.assert_allclose(cells["flow_ml_per_s"], [2.0, 0.8, 1.2])
    assert cells["lobe"].tolist() == ["trunk", "L", "R"]
    assert "diameter_mm" not in cells  # written once, by the diameter argument


def _synthetic_run():
    """A 1 mm box 'bone' with a growing cement sphere, a 3-edge vein graph, a tree and emboli."""
    shape = (12, 10, 8)
    h = 1e-3
    origin = np.array([-5.5e-3, -4.5e-3, -3.5e-3])
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    r = np.linalg.norm(origin + ijk * h, axis=-1)
    porous = r < 4.2e-3
    bone = SimpleNamespace(
        level="L1",
        spacing_m=h,
        origin_m=origin,
        porous=porous,
        body=r < 5.2e-3,
        porosity=np.where(porous, 0.9, 0.0),
        permeability=np.stack([np.where(porous, 4e-8, 0.0)] * 3),
    )
    times = np.array([1.0, 1.6, 2.0, 2.4, 3.0, 4.0])
    snaps = [(t, (r < 1e-3 * t).astype(np.float32)) for t in times]
    injection = SimpleNamespace(
        snapshots=snaps,
        cement_fraction=snaps[-1][1],
        arrival_time_s=np.where(r < 4e-3, r / 1e-3, np.nan),
        pressure_pa=np.where(porous, 1000.0 - r / 1e-3, np.nan),
        spacing_m=h,
        origin_m=origin,
    )
    network = SimpleNamespace(
        node_pos_m=np.array([[0, 0.006, 0], [0.01, 0.01, 0], [0.01, 0.01, 0.05], [0.0, 0.02, 0.05]]),
        edge_u=np.array([0, 1, 2]),
        edge_v=np.array([1, 2, 3]),
        edge_diameter_m=np.array([2e-3, 3e-3, 4e-3]),
        edge_length_m=np.array([0.011, 0.05, 0.022]),
        edge_kind=np.array(["segmental", "azygos", "azygos"]),
        polylines=None,
    )
    lumen = 0.25 * np.pi * network.edge_diameter_m**2 * network.edge_length_m
    venous = SimpleNamespace(
        network=network,
        flow=SimpleNamespace(edge_flow_m3_s=np.array([1e-6, 2e-6, -3e-6])),
        columns=SimpleNamespace(
            fill_m3=np.array([1.0, 0.25, 0.0]) * lumen, col_diameter_m=network.edge_diameter_m
        ),
    )
    tree = SimpleNamespace(
        node_pos_m=np.array([[0, -0.09, 0.17], [0.03, -0.08, 0.16], [-0.03, -0.08, 0.16]]),
        parent=np.array([-1, 0, 0]),
        diameter_m=np.array([0.028, 0.02, 0.02]),
        order=np.array([15, 14, 14]),
    )
    emboli = {
        "position_m": np.array([[0.03, -0.08, 0.15], [-0.03, -0.08, 0.15], [0.0, 0.0, 0.0]]),
        "length_m": np.array([8e-3, 5e-3, 4e-3]),
        "diameter_m": np.array([3e-3, 2e-3, 1e-3]),
        "lodge_time_s": np.array([1.5, 3.5, np.nan]),  # the third never lodged
        "lobe": np.array(["LLL", "RLL", ""]),
    }
    return bone, injection, venous, tree, emboli, times


def test_write_run_vtk_writes_a_consistent_run_folder(tmp_path):
    bone, injection, venous, tree, emboli, times = _synthetic_run()
    top = write_run_vtk(tmp_path, bone=bone, injection=injection, venous=venous, tree=tree, emboli=emboli,
                        interval_s=0.9, spine=False)  # fmt: skip
    bone_steps = read_pvd(tmp_path / "bone.pvd")
    kept = [t for t, _ in bone_steps]
    assert kept == [1.0, 2.0, 3.0, 4.0]  # >= 0.9 s apart, last kept
    snap = dict(injection.snapshots)
    for i, (t, rel) in enumerate(bone_steps):
        g = read_vti(tmp_path / rel)["cell"]
        np.testing.assert_array_equal(g["cement_fraction"], snap[t])
        arrived = np.isfinite(g["arrival_time_s"])
        assert np.all(g["arrival_time_s"][arrived] <= t)
        assert np.array_equal(arrived, np.nan_to_num(injection.arrival_time_s, nan=np.inf) <= t)
        assert np.isnan(g["pressure_pa"]).all() == (i < len(bone_steps) - 1)
        np.testing.assert_array_equal(g["tissue"], np.where(bone.porous, 2, np.where(bone.body, 1, 0)))
        assert g["permeability_m2"].shape == (*bone.porous.shape, 3)

    points, lines, data = read_vtp(tmp_path / "veins.vtp")
    np.testing.assert_allclose(data["cell"]["cement_fill"], [1.0, 0.25, 0.0])
    np.testing.assert_allclose(data["cell"]["blood_flow_ml_per_s"], [1.0, 2.0, -3.0])
    assert len(lines) == 3

    emb = read_pvd(tmp_path / "emboli.pvd")
    counts = [len(read_vtp(tmp_path / rel)[1]) for _, rel in emb]
    assert [t for t, _ in emb] == [1.0, 2.0, 3.0, 4.0]
    assert counts == [0, 1, 1, 2]  # lodged by each time; the unlodged one is never drawn

    parts = read_pvd(top, with_parts=True)
    files = {rel for _, rel, _ in parts}
    assert {"veins.vtp", "lungs.vtp"} <= files and {rel for _, rel in bone_steps} <= files
    assert len({p for _, _, p in parts}) == len((tmp_path / "pce_sim_parts.txt").read_text().split())
    _, lung_lines, lung_data = read_vtp(tmp_path / "lungs.vtp")
    assert len(lung_lines) == 2 and lung_data["cell"]["order"].tolist() == [14, 14]


def test_write_run_vtk_accepts_a_run_result_and_partial_inputs(tmp_path):
    bone, injection, venous, tree, emboli, _ = _synthetic_run()
    result = SimpleNamespace(
        artifacts={"bone": bone, "injection": injection, "venous": venous},
        scenario=SimpleNamespace(output=SimpleNamespace(vtk_interval_s=10.0)),
        emboli={},
    )
    write_run_vtk(tmp_path / "r", result, spine=False)
    assert [t for t, _ in read_pvd(tmp_path / "r" / "bone.pvd")] == [1.0, 4.0]
    assert not (tmp_path / "r" / "emboli.pvd").exists() and not (tmp_path / "r" / "lungs.pvd").exists()
    # only emboli (no time column): one file at t = 0
    emboli.pop("lodge_time_s")
    write_run_vtk(tmp_path / "e", emboli=emboli)
    assert read_pvd(tmp_path / "e" / "emboli.pvd") == [(0.0, "emboli.vtp")]
    assert re.search(r"part=\"0\"", (tmp_path / "e" / "pce_sim.pvd").read_text())


def test_fluoroscopy_pngs_show_dense_cement_dark(tmp_path):
    from matplotlib.image import imread

    from sim.output.images import write_fluoroscopy_pngs, write_grayscale_png

    n, h = 64, 0.5e-3
    a = (np.arange(n) - n / 2 + 0.5) * h
    disc = np.where(np.hypot(*np.meshgrid(a, a, indexing="ij")) < 5e-3, 4e-3, 0.0)  # 4 mm of cement
    det = SimpleNamespace(origin_m=np.array([a[0] - h / 2] * 2), pixel_size_m=h)
    venous = SimpleNamespace(
        detector=SimpleNamespace(detectors={"lateral": det, "ap": det}),
        fluoroscopy_image=lambda view, cf: disc if cf is not None else 0 * disc,
        detection_time_s=12.0,
    )
    injection = SimpleNamespace(snapshots=[(5.0, np.ones(3)), (20.0, np.ones(3))], end_time_s=20.0)
    files = write_fluoroscopy_pngs(
        tmp_path, SimpleNamespace(artifacts={"venous": venous, "injection": injection})
    )
    assert sorted(p.name for p in files) == ["fluoroscopy_ap_end.png", "fluoroscopy_lateral_end.png"]
    img = imread(files[0])[..., :3].mean(axis=-1)
    assert img.var() > 0
    single = imread(write_grayscale_png(tmp_path / "one.png", disc, h, "disc"))[..., :3].mean(axis=-1)
    rows, cols = single.shape
    # the disc centre (middle of the axes, left of the colour bar) is darker than the field
    centre = single[rows // 2 - 3 : rows // 2 + 3, int(cols * 0.35) : int(cols * 0.45)].mean()
    assert centre < 0.2
    with pytest.raises(GeometryError, match="2-D"):
        write_grayscale_png(tmp_path / "bad.png", np.zeros(5), h, "bad")
    assert write_fluoroscopy_pngs(tmp_path, SimpleNamespace(artifacts={})) == []


def test_detection_frame_shows_the_bone_cement_that_had_arrived_by_then():
    from sim.output.images import _snapshot_at

    final = np.array([1.0, 0.8, 0.0, 0.6])
    arrival = np.array([1.0, 5.0, np.nan, 10.0])
    inj = SimpleNamespace(cement_fraction=final, arrival_time_s=arrival, end_time_s=20.0, snapshots=[])
    np.testing.assert_array_equal(_snapshot_at(inj, 5.0), [1.0, 0.8, 0.0, 0.0])
    np.testing.assert_array_equal(_snapshot_at(inj, 0.5), [0.0, 0.0, 0.0, 0.0])
    np.testing.assert_array_equal(_snapshot_at(inj, 20.0), final)


def test_seed_case_writes_fluoroscopy_at_detection(tmp_path):
    from sim.core.config import load_scenario
    from sim.run.pipeline import run_scenario, write_run

    sc = load_scenario("configs/lai2025_case.yaml")
    sc.output.vtk = False
    res = run_scenario(sc)
    venous = res.artifacts["venous"]
    assert venous.columns_at_detection is not None
    # the copy is the state when the leak was seen: less cement in the veins than at the end
    assert venous.columns_at_detection.fill_m3.sum() < venous.columns.fill_m3.sum()
    # the veins as a ParaView time series: cement volume per vein grows from zero to the end state
    from sim.output.vtk import read_pvd, read_vtp, write_run_vtk

    write_run_vtk(tmp_path / "vtk", res)
    frames = read_pvd(tmp_path / "vtk" / "veins.pvd")
    times = [t for t, _ in frames]
    assert len(frames) > 3 and times[0] == 0.0 and np.all(np.diff(times) > 0)
    vol = [read_vtp(tmp_path / "vtk" / f)[2]["cell"]["cement_volume_mm3"].sum() for _, f in frames]
    assert vol[0] == 0.0 and vol[-1] == pytest.approx(1e9 * venous.columns.total_m3(), rel=1e-6)
    assert max(vol) > 0.0
    out = write_run(res, tmp_path / "run")
    names = sorted(p.name for p in out.glob("fluoroscopy_*.png"))
    assert names == [
        "fluoroscopy_ap_detection.png",
        "fluoroscopy_ap_end.png",
        "fluoroscopy_lateral_detection.png",
        "fluoroscopy_lateral_end.png",
    ]
