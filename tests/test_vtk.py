"""ParaView files (sim.output.vtk): write, read back with VTK's own XML readers, compare."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
from vtkmodules.vtkIOXML import vtkXMLImageDataReader

from sim.core.config import scenario_from_dict
from sim.core.errors import GeometryError, PceSimError
from sim.core.units import ML_M3, MM_M
from sim.output.vtk import (
    TISSUE_LABELS,
    read_pvd,
    read_vti,
    read_vtp,
    select_times,
    tree_geometry,
    write_emboli_vtp,
    write_image_data,
    write_image_series,
    write_network_vtp,
    write_pvd,
    write_run_vtk,
)
from sim.physics.fragment_set import LODGED
from sim.run.pipeline import run_scenario, write_run
from tests.helpers import LEAK_CASE


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


@pytest.fixture(scope="module")
def lai_run():
    """The seed case with the tip at the anterior nutrient vein (1 mm grid, a few seconds): an anterior
    leak, a detection, emboli in both lungs."""
    res = run_scenario(scenario_from_dict(LEAK_CASE))
    inj = res.artifacts.injection
    leaked = dict(zip(inj.exit_names, inj.exit_cement_volume_m3, strict=True))
    assert leaked["anterior_left"] > 0.0 and res.artifacts.venous.detection_time_s is not None
    emboli, tree = res.artifacts.transport.emboli, res.artifacts.tree
    lobes = {tree.lobe_names[i] for i in emboli["lobe"][emboli["status"] == LODGED]}
    assert {n[0] for n in lobes} == {"R", "L"}, lobes  # both lungs
    return res


@pytest.fixture(scope="module")
def lai_vtk(lai_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("lai") / "vtk"
    top = write_run_vtk(out, lai_run, spine=False)
    return lai_run, out, top


def test_tree_becomes_one_line_per_vessel(lai_run):
    tree = lai_run.artifacts.tree
    points, edges, diam, cells = tree_geometry(tree)
    n = tree.n_vessels
    assert edges.shape == (n, 2)
    np.testing.assert_array_equal(points[edges[:, 0]], tree.start_m)  # each vessel from its start ...
    np.testing.assert_array_equal(points[edges[:, 1]], tree.end_m)  # ... to its end
    np.testing.assert_array_equal(diam, tree.diameter_m)
    np.testing.assert_allclose(cells["baseline_flow_ml_per_s"], tree.baseline_flow_m3_s / ML_M3, rtol=1e-15)
    np.testing.assert_array_equal(cells["order"], tree.order)
    names = np.asarray(tree.lobe_names)
    lobe = tree.lobe
    assert cells["lobe"][lobe < 0].tolist() == [""] * int((lobe < 0).sum())
    assert cells["lobe"][lobe >= 0].tolist() == names[lobe[lobe >= 0]].tolist()
    assert "diameter_mm" not in cells  # written once, by the diameter argument


def _expected_kept(times, interval):
    """Output times at least ``interval`` apart, first and last always kept."""
    kept = [times[0]]
    for t in times[1:-1]:
        if t >= kept[-1] + interval * (1 - 1e-9):
            kept.append(t)
    return kept + [times[-1]] if len(times) > 1 else kept


def test_write_run_vtk_writes_a_consistent_run_folder(lai_vtk):
    result, out, top = lai_vtk
    art = result.artifacts
    bone, injection, recording = art.bone, art.injection, art.recording
    interval = result.scenario.output.vtk_interval_s
    recorded = [t for t, _ in recording.bone_snapshots]
    bone_steps = read_pvd(out / "bone.pvd")
    kept = [t for t, _ in bone_steps]
    assert kept == _expected_kept(recorded, interval)  # >= interval apart, last kept
    assert len(kept) >= 4 and len(kept) < len(recorded)  # thinned
    assert kept[-1] == pytest.approx(injection.end_time_s, rel=1e-12)
    snap = dict(recording.bone_snapshots)
    tissue = np.where(bone.porous, 2, np.where(bone.body, 1, 0))
    for code, mask in ((3, bone.channel), (4, bone.cleft)):
        if mask is not None:
            tissue[mask] = code
    tissue.ravel()[art.needle.path_cells] = 5
    for i, (t, rel) in enumerate(bone_steps):
        back = read_vti(out / rel)
        g = back["cell"]
        np.testing.assert_array_equal(g["cement_fraction"], snap[t])
        arrived = np.isfinite(g["arrival_time_s"])
        assert np.all(g["arrival_time_s"][arrived] <= t)
        assert np.array_equal(arrived, np.nan_to_num(injection.arrival_time_s, nan=np.inf) <= t)
        assert np.isnan(g["pressure_pa"]).all() == (i < len(bone_steps) - 1)
        np.testing.assert_array_equal(g["tissue"], tissue)
        assert back["field"]["tissue_labels"].tolist() == list(TISSUE_LABELS)
        assert g["permeability_m2"].shape == (*bone.porous.shape, 3)
    assert np.any(snap[kept[-1]] > 0) and not np.array_equal(snap[kept[0]], snap[kept[-1]])

    # veins: every frame's cement fill and blood flow are the run's arrays at that time
    venous, net = art.venous, art.venous.network
    lumen = 0.25 * np.pi * net.edge_diameter_m**2 * net.edge_length_m
    recorded_edges = dict(recording.edge_series())
    vein_steps = read_pvd(out / "veins.pvd")
    for t, rel in vein_steps:
        _, lines, data = read_vtp(out / rel)
        assert len(lines) == net.n_edges
        fill, q = recorded_edges[t]["cement_volume_m3"], recorded_edges[t]["blood_flow_m3_s"]
        np.testing.assert_allclose(data["cell"]["cement_fill"], np.clip(fill / lumen, 0.0, 1.0), rtol=1e-12)
        np.testing.assert_allclose(data["cell"]["blood_flow_ml_per_s"], q / ML_M3, rtol=1e-12)
    _, _, data = read_vtp(out / vein_steps[-1][1])
    assert venous.columns.fill_m3.sum() > 0.0
    np.testing.assert_allclose(
        data["cell"]["cement_fill"], np.clip(venous.columns.fill_m3 / lumen, 0.0, 1.0), rtol=1e-12
    )
    np.testing.assert_allclose(
        data["cell"]["blood_flow_ml_per_s"], venous.flow.edge_flow_m3_s / ML_M3, rtol=1e-12
    )

    # emboli: the ones lodged by each output time; fragments that never lodged are never drawn
    e = art.transport.emboli
    lodged = e["status"] == LODGED
    assert lodged.sum() >= 2
    t_last = float(e["time_s"][lodged].max())
    emb = read_pvd(out / "emboli.pvd")
    emb_times = [t for t, _ in emb]
    assert emb_times == kept + ([t_last] if t_last > kept[-1] else [])
    counts = [len(read_vtp(out / rel)[1]) for _, rel in emb]
    assert counts == [int((lodged & (e["time_s"] <= t)).sum()) for t in emb_times]
    assert np.all(np.diff(counts) >= 0) and counts[-1] == lodged.sum() and counts[0] < counts[-1]

    parts = read_pvd(top, with_parts=True)
    files = {rel for _, rel, _ in parts}
    assert {"needle.vtp", "lungs.vtp"} <= files and {rel for _, rel in bone_steps} <= files
    assert {rel for _, rel in vein_steps} <= files and {rel for _, rel in emb} <= files
    names = (out / "pce_sim_parts.txt").read_text().split()
    assert len({p for _, _, p in parts}) == len(names)
    for p, name in enumerate(names):  # block i of pce_sim.pvd is line i of the index
        if (out / f"{name}.pvd").exists():
            assert {rel for _, rel, q in parts if q == p} == {rel for _, rel in read_pvd(out / f"{name}.pvd")}
    _, lung_lines, lung_data = read_vtp(out / "lungs.vtp")
    assert len(lung_lines) == art.tree.n_vessels
    np.testing.assert_array_equal(lung_data["cell"]["order"], art.tree.order)


def test_write_run_vtk_takes_the_scenario_interval_and_skips_what_the_run_lacks(lai_run, tmp_path):
    sparse = lai_run.scenario.model_copy(deep=True)
    sparse.output.vtk_interval_s = 600.0  # longer than the injection
    write_run_vtk(tmp_path / "r", replace(lai_run, scenario=sparse), spine=False)
    recorded = [t for t, _ in lai_run.artifacts.recording.bone_snapshots]
    assert [t for t, _ in read_pvd(tmp_path / "r" / "bone.pvd")] == [recorded[0], recorded[-1]]
    # a run without emboli writes the same files (an emboli series with no emboli in any frame),
    # and the parts index still matches pce_sim.pvd
    art = lai_run.artifacts
    empty = {k: np.asarray(v)[:0] for k, v in art.transport.emboli.items()}
    no_emboli = replace(lai_run, artifacts=replace(art, transport=replace(art.transport, emboli=empty)))
    top = write_run_vtk(tmp_path / "e", no_emboli, spine=False)
    frames = read_pvd(tmp_path / "e" / "emboli.pvd")
    assert frames and all(len(read_vtp(tmp_path / "e" / rel)[1]) == 0 for _, rel in frames)
    names = (tmp_path / "e" / "pce_sim_parts.txt").read_text().split()
    assert {"bone", "veins", "lungs", "emboli"} <= set(names)
    assert sorted({p for _, _, p in read_pvd(top, with_parts=True)}) == list(range(len(names)))
    with pytest.raises(PceSimError, match="no stage objects"):
        write_run_vtk(tmp_path / "n", replace(lai_run, artifacts=None))


def test_fluoroscopy_pngs_show_dense_cement_dark(lai_run, tmp_path):
    from matplotlib.image import imread

    from sim.output.images import write_fluoroscopy_pngs, write_grayscale_png

    n, h = 64, 0.5e-3
    a = (np.arange(n) - n / 2 + 0.5) * h
    disc = np.where(np.hypot(*np.meshgrid(a, a, indexing="ij")) < 5e-3, 4e-3, 0.0)  # 4 mm of cement
    files = write_fluoroscopy_pngs(tmp_path, lai_run)
    assert sorted(p.name for p in files) == [
        "fluoroscopy_ap_detection.png",
        "fluoroscopy_ap_end.png",
        "fluoroscopy_lateral_detection.png",
        "fluoroscopy_lateral_end.png",
    ]
    img = imread(files[0])[..., :3].mean(axis=-1)
    assert img.var() > 0
    single = imread(write_grayscale_png(tmp_path / "one.png", disc, h, "disc"))[..., :3].mean(axis=-1)
    rows, cols = single.shape
    # the disc centre (middle of the axes, left of the colour bar) is darker than the field
    centre = single[rows // 2 - 3 : rows // 2 + 3, int(cols * 0.35) : int(cols * 0.45)].mean()
    assert centre < 0.2
    with pytest.raises(GeometryError, match="2-D"):
        write_grayscale_png(tmp_path / "bad.png", np.zeros(5), h, "bad")
    assert write_fluoroscopy_pngs(tmp_path, replace(lai_run, artifacts=None)) == []


def test_detection_frame_shows_the_bone_cement_that_had_arrived_by_then():
    from sim.output.images import cement_seen_by

    final = np.array([1.0, 0.8, 0.0, 0.6])
    arrival = np.array([1.0, 5.0, np.nan, 10.0])
    inj = SimpleNamespace(cement_fraction=final, arrival_time_s=arrival, end_time_s=20.0)
    np.testing.assert_array_equal(cement_seen_by(inj, 5.0), [1.0, 0.8, 0.0, 0.0])
    np.testing.assert_array_equal(cement_seen_by(inj, 0.5), [0.0, 0.0, 0.0, 0.0])
    np.testing.assert_array_equal(cement_seen_by(inj, 20.0), final)


def test_seed_case_writes_fluoroscopy_at_detection(lai_vtk, tmp_path):
    res, out, _ = lai_vtk
    venous, recording = res.artifacts.venous, res.artifacts.recording
    assert recording.columns_at_detection is not None
    # the copy is the state when the leak was seen: less cement in the veins than at the end
    assert recording.columns_at_detection.fill_m3.sum() < venous.columns.fill_m3.sum()
    # the veins as a ParaView time series: cement volume per vein grows from zero to the end state
    frames = read_pvd(out / "veins.pvd")
    times = [t for t, _ in frames]
    assert len(frames) > 3 and times[0] == 0.0 and np.all(np.diff(times) > 0)
    vol = [read_vtp(out / f)[2]["cell"]["cement_volume_mm3"].sum() for _, f in frames]
    assert vol[0] == 0.0 and vol[-1] == pytest.approx(venous.columns.total_m3() / MM_M**3, rel=1e-6)
    assert max(vol) > 0.0
    run = write_run(res, tmp_path / "run")
    names = sorted(p.name for p in run.glob("fluoroscopy_*.png"))
    assert names == [
        "fluoroscopy_ap_detection.png",
        "fluoroscopy_ap_end.png",
        "fluoroscopy_lateral_detection.png",
        "fluoroscopy_lateral_end.png",
    ]
