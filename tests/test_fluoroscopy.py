"""Synthetic fluoroscopy and leak detection: exact projected volumes, thresholds, detection timing."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from sim.core.grid import BoneGrid, VenousExit
from sim.physics.cure_clock import CureClock
from sim.physics.fluoroscopy import (
    Detector,
    LeakDetector,
    body_hidden_share,
    body_silhouette,
    column_samples,
    fragment_samples,
    make_detector,
    project_bone,
    project_points,
    visible_volume_m3,
)
from sim.physics.fragmentation import DragVsStrength
from sim.physics.injection import LEAK_ONSET_M3
from sim.physics.injection_control import StopPolicy
from sim.physics.rheology import load_cement_preset
from sim.physics.vein_columns import CementColumns
from sim.physics.venous_network import (
    build_venous_network,
    edge_conductance,
    network_from_edges,
    solve_blood_flow,
)
from sim.run.venous_system import VenousSystem
from tests.helpers import run_params, transit_model

MM = 1e-3
ROOT = Path(__file__).resolve().parents[1]


def fluoro_si(**over):
    return replace(run_params().fluoroscopy, **over)


def straight_column(d=2 * MM, length=0.04):
    """One straight vein along z, completely filled with cement."""
    pos = np.array([[0.0, 0.0, length / 2], [0.0, 0.0, -length / 2]])
    net = network_from_edges(pos, [0], [1], [d], [1e-6, 0.0], right_atrium=1)
    cols = CementColumns.empty(net)
    bf = solve_blood_flow(net)
    cols.push(0, 0.25 * np.pi * d**2 * length, d, bf.edge_flow_m3_s, edge_conductance(net))
    return net, cols


def box_bone(h=1 * MM, n=(30, 24, 20), porosity=0.5):
    nx, ny, nz = n
    origin = -0.5 * (np.array(n) - 1) * h
    body = np.ones(n, dtype=bool)
    return BoneGrid(
        level="L1", spacing_m=h, origin_m=origin, porous=body.copy(), body=body,
        porosity=np.full(n, porosity), permeability=np.full((3, *n), 1e-8), exits=[],
    )  # fmt: skip


def test_projected_volume_is_exact():
    rng = np.random.default_rng(0)
    det = make_detector("lateral", np.zeros(3), 0.02, 0.25 * MM)
    pts = rng.uniform(-0.01, 0.01, (200, 3))
    rad = rng.uniform(0.05 * MM, 2 * MM, 200)  # includes radii below the pixel size
    vol = rng.uniform(1e-10, 1e-9, 200)
    img = project_points(det, pts, rad, vol)
    assert img.sum() * det.pixel_size_m**2 == pytest.approx(vol.sum(), rel=1e-12)


@pytest.mark.parametrize("view", ["lateral", "ap"])
def test_cylinder_seen_side_on_has_its_diameter_as_peak_thickness(view):
    d = 2 * MM
    net, cols = straight_column(d)
    det = make_detector(view, np.zeros(3), 0.03, 0.05 * MM)
    img = project_points(det, *column_samples(cols, 0.025 * MM))
    assert img.sum() * det.pixel_size_m**2 == pytest.approx(cols.total_m3(), rel=1e-12)
    mid = img[:, img.shape[1] // 2]
    assert mid.max() == pytest.approx(d, rel=0.03)  # chord through the axis = diameter
    # width of the shadow = diameter
    assert (mid > 0).sum() * det.pixel_size_m == pytest.approx(d, rel=0.1)


def test_bone_projection_thickness_and_silhouette():
    bone = box_bone()
    frac = np.zeros(bone.shape)
    frac[10:20, 8:16, 5:15] = 1.0  # a 10 x 8 x 10 mm cement block
    det = make_detector("lateral", np.zeros(3), 0.02, 0.5 * MM)
    thick, mask = project_bone(det, bone, frac)
    # along x the block is 10 cells of porosity 0.5 and 1 mm: 5 mm of cement
    assert thick.max() == pytest.approx(10 * 0.5 * MM, rel=1e-12)
    assert mask.sum() * det.pixel_size_m**2 == pytest.approx(24 * 20 * MM**2, rel=0.1)
    det_ap = make_detector("ap", np.zeros(3), 0.02, 0.5 * MM)
    assert project_bone(det_ap, bone, frac)[0].max() == pytest.approx(8 * 0.5 * MM, rel=1e-12)


def test_min_thickness_and_body_shadow_hide_cement():
    thin_net, thin = straight_column(d=0.3 * MM)
    det = LeakDetector(fluoro_si(min_thickness_m=0.5 * MM, visibility_threshold_m3=0.0), np.zeros(3))
    assert det.visible_m3(thin) == 0.0
    det_lo = LeakDetector(fluoro_si(min_thickness_m=0.1 * MM, visibility_threshold_m3=0.0), np.zeros(3))
    assert det_lo.visible_m3(thin) > 0.5 * thin.total_m3()
    # a 2 mm column inside the vertebral body's silhouette is hidden when the bone is known
    _, thick = straight_column(d=2 * MM, length=0.015)
    open_det = LeakDetector(fluoro_si(), np.zeros(3))
    shadow_det = LeakDetector(fluoro_si(), np.zeros(3), bone=box_bone())
    assert open_det.visible_m3(thick) > 0.5 * thick.total_m3()
    assert shadow_det.visible_m3(thick) == 0.0
    assert visible_volume_m3(np.full((2, 2), 1 * MM), 1 * MM, 0.5 * MM) == pytest.approx(4e-9)


def system(threshold_m3, seed=1, bone=None):
    params = run_params()
    fluoro = replace(params.fluoroscopy, visibility_threshold_m3=threshold_m3)
    net = build_venous_network("L2", params.veins, np.random.default_rng(seed))
    exits = [
        VenousExit(
            name=n,
            kind=n.split("_")[0],
            cells=np.zeros(0, dtype=np.int64),
            position_m=net.node_pos_m[net.exit_nodes[n]],
            diameter_m=2.5e-3,
            length_m=2e-3,
        )  # fmt: skip
        for n in ("basivertebral", "anterior_right")
    ]
    cem = load_cement_preset("medium")
    clock = CureClock.for_cement(cem, 360.0, 294.15, 310.15)
    return VenousSystem(net, exits, cem, clock, fluoro, DragVsStrength(params.fragmentation),
                        np.random.default_rng(seed), bone, transit=transit_model(seed))  # fmt: skip


def run(vs, leak_start=10.0, t_max=40.0, dt=0.2, rate=5e-9):
    t = 0.0
    while t < t_max - 1e-9:
        q = np.array([0.0, rate if t >= leak_start - 1e-9 else 0.0])
        vs.accept_flux(t, dt, q, np.zeros(2))
        t += dt


def test_no_detection_before_cement_leaves_the_body():
    vs = system(5e-9)
    run(vs, leak_start=10.0)
    # onset: the exit's cumulative cement passes LEAK_ONSET_M3, inside the step where it does
    assert vs.leak_onset_s == pytest.approx(10.0 + LEAK_ONSET_M3 / 5e-9, rel=1e-12)
    assert vs.detection_time_s is not None and vs.detection_time_s >= vs.leak_onset_s
    frames_t = np.asarray(vs.detector.frames_t)
    frames_v = np.asarray(vs.detector.frames_visible_m3)
    assert np.all(frames_v[frames_t < 10.0] == 0.0)
    # the frame interval sets the detection times
    assert vs.detection_time_s / vs.detector.frame_interval_s == pytest.approx(
        round(vs.detection_time_s / vs.detector.frame_interval_s)
    )


def test_a_frame_sees_the_columns_of_its_own_time_whatever_the_step():
    """Frames inside a long step are taken when the pushed cement reaches them, not at the step's end.

    The same constant leak pushed in steps of 0.1 s and of 1.3 s (the injection's steps reach a
    second at 1 mm) is seen on the same frame, with the same visible volume on every frame before it.
    Taking the frames at the end of the step (before December 2026) saw a 1.3 s step's cement up to
    2.6 frames early.
    """
    seen, vols = [], []
    for dt in (0.1, 1.3):
        vs = system(2e-8)
        run(vs, leak_start=0.0, t_max=30.0, dt=dt)
        seen.append(vs.detection_time_s)
        vols.append(dict(zip(vs.detector.frames_t, vs.detector.frames_visible_m3, strict=True)))
    assert seen[0] is not None and seen[0] == seen[1]
    common = sorted(set(vols[0]) & set(vols[1]))
    assert len(common) >= 10
    np.testing.assert_allclose(
        [vols[1][f] for f in common], [vols[0][f] for f in common], rtol=0.02, atol=1e-12
    )


def test_a_short_step_late_in_a_run_pushes_exactly_its_volume():
    """The pieces of a step's push add up to its volume exactly, however short the step is against t.

    Pieces of vol * h / dt with h from differences of times add up to vol (t_new - t) / dt, which at
    t = 40.3 s and dt = 1 ms is off by a few 1e-12 of vol: the venous mass check (1e-12) refused it.
    """
    vs = system(2e-8)
    vs.accept_flux(0.0, 40.3, np.zeros(2), np.zeros(2))  # no leak for 40.3 s
    t = 40.3
    for dt in (1.0e-3, 7.0e-4, 1.3e-3):  # the first leaking steps are short
        vs.accept_flux(t, dt, np.array([0.0, 2e-7]), np.zeros(2))
        t += dt
        assert vs.mass_balance_error() <= 1e-13


def test_larger_threshold_detects_later():
    times = []
    for thr in (2e-9, 2e-8, 6e-8):
        vs = system(thr)
        run(vs, leak_start=5.0, t_max=60.0)
        assert vs.detection_time_s is not None
        times.append(vs.detection_time_s)
    assert times[0] <= times[1] < times[2]
    vs = system(1e-6)  # more than will ever leak here
    run(vs, leak_start=5.0, t_max=20.0)
    # no leak seen, so even an operator who stops as soon as one is seen never stops
    policy = StopPolicy(stop_after_leak_s=0.0, reaction_delay_s=run_params().stop.reaction_delay_s)
    assert vs.detection_time_s is None and not policy.should_stop(1e9, vs.detection_time_s)


def test_image_accessor_views():
    vs = system(5e-9)
    run(vs, leak_start=0.0, t_max=10.0)
    for view in ("lateral", "ap"):
        img = vs.detector.image(view, vs.columns)
        px = vs.detector.pixel_size_m
        # everything that leaked is inside the 20 cm field of view
        assert img.sum() * px**2 == pytest.approx(vs.columns.total_m3(), rel=1e-9)
        det = vs.detector.detectors[view]
        assert det.pixel_size_m == px
        a0, b0 = (float(v) for v in det.origin_m)
        a1, b1 = a0 + det.shape[0] * px, b0 + det.shape[1] * px
        assert (a1 - a0) == pytest.approx(img.shape[0] * px) and (b1 - b0) == pytest.approx(img.shape[1] * px)
        assert a0 < 0.0 < a1  # the field of view is centred on the treated level


def _one_fragment(net, volume, length=0.008):
    d = np.sqrt(volume / (0.25 * np.pi * length))
    e = np.array([0])
    return fragment_samples(
        net, e, np.array([0.02]), np.array([d]), np.array([length]), np.array([volume]), 1e-4
    )


def test_fragment_samples_hold_the_fragment_volume():
    net, _cols = straight_column()
    pts, rad, vol, tan = _one_fragment(net, 6e-9)
    assert vol.sum() == pytest.approx(6e-9, rel=1e-12)
    assert np.all(np.abs(pts[:, 2]) <= 0.004 + 1e-12)  # centred 20 mm from u, 8 mm long
    assert np.allclose(np.abs(tan[:, 2]), 1.0)
    det = make_detector("lateral", np.zeros(3), 0.05, 0.3 * MM)
    img = project_points(det, pts, rad, vol, tan)
    assert img.sum() * det.pixel_size_m**2 == pytest.approx(6e-9, rel=1e-9)


def test_fragments_in_the_veins_are_drawn_with_the_columns():
    """Limiting case: without fragments the visible volume is the columns'; a fragment at rest beside
    a column adds its own visible volume to every frame from its birth on."""
    from sim.physics.fragment_tracks import FragmentTracks
    from sim.physics.fragment_transport import venous_routing
    from sim.physics.venous_network import flow_snapshot

    net, cols = straight_column()
    det = LeakDetector(fluoro_si(visibility_threshold_m3=1.0, frame_interval_s=0.5), np.zeros(3))
    det.tracks = FragmentTracks(net)
    det.update(0.0, cols)
    alone = det.frames_visible_m3[-1]
    assert alone == pytest.approx(cols.total_m3(), rel=0.05)
    # a second, still vein 20 mm beside the column's, with a fragment born on it at 0.2 s
    pos = np.array([[0.0, 0.0, 0.02], [0.0, 0.0, -0.02], [0.0, 0.02, 0.0], [0.0, 0.03, 0.0]])
    both = network_from_edges(
        pos, [0, 2, 3], [1, 3, 1], [2 * MM] * 3, [1e-6, 0.0, 0.0, 0.0], 1
    )  # 2-3-1: no flow
    cols2 = CementColumns.empty(both)
    cols2.push(0, cols.total_m3(), 2 * MM, solve_blood_flow(both).edge_flow_m3_s, edge_conductance(both))
    tr = FragmentTracks(both)
    route = venous_routing(flow_snapshot(both, solve_blood_flow(both)), 0.9)
    d, length = 1.13 * MM, 8 * MM
    vol = 0.25 * np.pi * d**2 * length
    tr.add(route, 1, np.array([1]), np.array([0.005]), np.array([d]), np.array([length]),
           np.array([vol]), np.zeros(1), np.array([0.2]), np.full((1, 4), 0.5))  # fmt: skip
    det2 = LeakDetector(fluoro_si(visibility_threshold_m3=1.0, frame_interval_s=0.5), np.zeros(3))
    det2.tracks = tr
    det2.update(2.0, cols2)
    assert det2.frames_visible_m3[0] == pytest.approx(alone, rel=1e-9)  # born at 0.2 s
    np.testing.assert_allclose(det2.frames_visible_m3[1:], alone + vol, rtol=0.02)


# ----------------------------------------------------------------------------- body silhouette


def _brute_silhouette(outline, ray, u, v, n=40001):
    """Does the ray through (u, v) meet the body? Sampled along the ray (reference)."""
    shape, c = outline.shape, outline.center_m
    a, b = (k for k in range(3) if k != ray)
    t = c[ray] + np.linspace(-0.03, 0.03, n)
    out = np.zeros((len(u), len(v)), dtype=bool)
    for i, ui in enumerate(u):
        for j, vj in enumerate(v):
            p = np.empty((n, 3))
            p[:, ray], p[:, a], p[:, b] = t, ui, vj
            out[i, j] = shape.inside(p - c).any()
    return out


@pytest.mark.parametrize("ray", [0, 1, 2])
def test_shape_silhouette_is_the_closed_form_of_the_body(ray):
    """The closed-form silhouette of the kidney-shaped body equals brute-force sampling along each
    ray, and without the posterior disc it is the ellipse's extent (|y| <= b along x, |x| <= a
    along y)."""
    from sim.physics.bone import BodyShape, ShapeOutline

    c = np.array([1.0, -2.0, 3.0]) * MM
    a, b = (k for k in range(3) if k != ray)
    u = c[a] + np.linspace(-25, 25, 41) * MM + 0.013 * MM
    v = c[b] + np.linspace(-16, 16, 9) * MM + 0.011 * MM
    shapes = (
        BodyShape.from_dims(44 * MM, 32 * MM, 26 * MM, 0.15, 0.3),  # the kidney shape: disc centre outside
        BodyShape(22 * MM, 16 * MM, 13 * MM, 20 * MM, 0.0),  # disc centre inside: two lateral horns
        BodyShape(22 * MM, 16 * MM, 13 * MM, 12 * MM, 9 * MM),  # disc cutting the posterior half
    )
    for shape in shapes:
        outline = ShapeOutline(shape, c)
        got = outline.silhouette(ray, u, v)
        assert np.array_equal(got, _brute_silhouette(outline, ray, u, v))
        assert 0 < got.sum() < got.size
    horns = ShapeOutline(shapes[1], c).silhouette(ray, u, v)
    if ray == 1:  # seen from the front, the horns leave a gap at the midline
        assert not horns[np.argmin(np.abs(u - c[0]))].any()
    plain = ShapeOutline(BodyShape(22 * MM, 16 * MM, 13 * MM, 0.0, 20 * MM), c)
    sil = plain.silhouette(ray, u, v)
    du, dv = u - c[a], v - c[b]
    if ray == 2:
        expected = (du[:, None] / (22 * MM)) ** 2 + (dv[None, :] / (16 * MM)) ** 2 <= 1.0
    else:
        half = 16 * MM if ray == 0 else 22 * MM
        expected = (np.abs(du) <= half)[:, None] & (np.abs(dv) <= 13 * MM)[None, :]
    assert np.array_equal(sil, expected)


def test_body_silhouette_is_the_same_on_every_grid():
    """The pixels that hide a leak behind the body do not move with the grid (issue 15): the grid's
    body cells would put the edge up to about a cell out (the seed case's lateral view: 614 pixels
    more at 1 mm, 216 fewer at 0.5 mm), hiding the first millimetres of a leaving vein."""
    from sim.core.config import read_yaml, scenario_from_dict
    from sim.core.parameters import RunParameters
    from sim.physics.bone import build_vertebral_body
    from sim.physics.fluoroscopy import VIEW_AXES, _on_detector, body_silhouette

    cfg = read_yaml(ROOT / "configs" / "lai2025_case.yaml")
    patient = RunParameters.from_scenario(scenario_from_dict(cfg)).patient
    bones = [build_vertebral_body(patient, h * MM) for h in (2.0, 1.0, 0.5)]
    center = np.asarray(bones[0].meta["center_m"])
    for view in ("lateral", "ap"):
        det = make_detector(view, center, 0.1, 0.3 * MM)
        sil = [body_silhouette(det, b) for b in bones]
        assert all(np.array_equal(s, sil[0]) for s in sil[1:])
        cells = [_on_detector(det, b, b.body.any(axis=VIEW_AXES[view][0]), False) for b in bones]
        assert not np.array_equal(cells[0], cells[2])  # what the cells would have given
        assert (cells[2] ^ sil[0]).sum() < (cells[0] ^ sil[0]).sum()  # and they converge to it
        detector = LeakDetector(fluoro_si(views=(view,)), center, bones[1])
        share = body_hidden_share(det, bones[0])
        assert np.array_equal(detector.hidden[view], share)  # the detector hides by area share
        assert all(np.array_equal(body_hidden_share(det, b), share) for b in bones[1:])


def test_detector_raster_is_the_same_on_every_grid():
    """The C-arm is centred on the body's continuous outline, so the pixel raster (and with it every
    pixel's thickness against ``min_thickness``) is the same on every grid (issue 15). It was centred on the
    body cells' centroid, which moves with the grid (0.01 to 0.03 mm, a tenth of a 0.3 mm pixel): cohort
    patient 1's visible volume, a vein hugging the silhouette's edge, changed by 8 % with it."""
    from sim.core.config import read_yaml, scenario_from_dict
    from sim.core.parameters import RunParameters
    from sim.physics.bone import build_vertebral_body

    cfg = read_yaml(ROOT / "configs" / "lai2025_case.yaml")
    patient = RunParameters.from_scenario(scenario_from_dict(cfg)).patient
    bones = [build_vertebral_body(patient, h * MM) for h in (2.0, 1.0, 0.5)]
    origins = []
    for b in bones:
        vs = system(5e-9, bone=b)
        origins.append({v: d.origin_m for v, d in vs.detector.detectors.items()})
        centre = np.asarray(b.outline.center_m)
        for det in vs.detector.detectors.values():  # the field of view is centred on the outline
            a, c = det.axes
            mid = det.origin_m + 0.5 * np.array(det.shape) * det.pixel_size_m
            np.testing.assert_allclose(mid, centre[[a, c]], rtol=0, atol=1e-15)
    assert all(np.array_equal(o[v], origins[0][v]) for o in origins[1:] for v in o)
    # what the body cells' centroid would have given: a raster that moves with the grid
    cells = [b.cell_centers_m(np.flatnonzero(b.body.ravel())).mean(axis=0) for b in bones]
    assert max(abs(c[1] - cells[2][1]) for c in cells) > 1e-6


def test_ct_outline_is_centred_on_its_mask_s_centroid():
    """A CT body's outline is centred on its segmentation's centroid (the scan's grid, not the run's)."""
    from sim.core.grid import MaskOutline

    mask = np.zeros((5, 4, 3), dtype=bool)
    mask[1:4, 0:2, 2] = True  # centroid index (2, 0.5, 2)
    out = MaskOutline.from_mask(mask, np.array([1.0, 2.0, 3.0]), 0.5)
    np.testing.assert_allclose(out.center_m, [2.0, 2.25, 4.0], rtol=0, atol=1e-15)
    empty = MaskOutline.from_mask(np.zeros((3, 5, 1), dtype=bool), np.zeros(3), 1.0)
    np.testing.assert_allclose(empty.center_m, [1.0, 2.0, 0.0], rtol=0, atol=0)


def test_detection_shift_per_percent_of_a_linear_rise_and_its_edge_cases():
    """A visible volume rising linearly at r per second shifts the crossing by 0.01 V_th / r per per cent of
    error, over any window; a leak not seen has none; a flat last stretch is infinitely ill-conditioned."""
    from sim.physics.fluoroscopy import RISE_WINDOW_S, detection_shift_per_percent_s

    dt, rate, threshold = 0.5, 0.05e-9, 2.317e-9
    frames = [rate * dt * k for k in range(0, 100)]
    seen = [v for v in frames if v <= threshold] + [next(v for v in frames if v > threshold)]
    assert detection_shift_per_percent_s(seen, threshold, dt) == pytest.approx(
        0.01 * threshold / rate, rel=1e-9
    )
    assert detection_shift_per_percent_s(seen[-2:], threshold, dt) == pytest.approx(0.01 * threshold / rate)
    # one pixel passing the visible thickness in the last frame does not dominate the 2 s window
    jump = [*seen[:-1], seen[-1] + 0.1e-9]
    assert RISE_WINDOW_S == 2.0
    n = int(RISE_WINDOW_S / dt)
    assert detection_shift_per_percent_s(jump, threshold, dt) == pytest.approx(
        0.01 * threshold / ((jump[-1] - jump[-1 - n]) / (n * dt))
    )
    assert detection_shift_per_percent_s(seen[:-1], threshold, dt) is None  # not seen
    assert detection_shift_per_percent_s([threshold * 2], threshold, dt) is None  # no frame before it
    assert detection_shift_per_percent_s([threshold * 2] * 5, threshold, dt) == float("inf")


def _rectangle_body(shift_y_m: float = 0.0):
    """A body whose lateral silhouette is |y - shift| <= 16 mm, |z| <= 13 mm (no posterior disc)."""
    from types import SimpleNamespace

    from sim.physics.bone import BodyShape, ShapeOutline

    shape = BodyShape(22 * MM, 16 * MM, 13 * MM, 0.0, 20 * MM)
    return SimpleNamespace(outline=ShapeOutline(shape, np.array([0.0, shift_y_m, 0.0])))


def test_hidden_share_of_a_pixel_is_its_covered_area():
    """Limiting cases of the area rule: one sub-sample is the centre rule; pixels wholly inside or
    outside are 1 or 0; an edge through a row of pixel centres hides half of each; the total hidden
    area is the silhouette's area within the detector to 1/8 of a pixel per edge pixel."""
    body = _rectangle_body()
    h = 0.3 * MM
    det = Detector(
        view="lateral", origin_m=np.array([16 * MM - 10.5 * h, -15 * MM]), shape=(20, 120), pixel_size_m=h
    )
    assert np.array_equal(
        body_hidden_share(det, body, subsamples=1), body_silhouette(det, body).astype(float)
    )
    share = body_hidden_share(det, body)
    z = det.pixel_centers()[1]
    inside_z = np.abs(z) <= 13 * MM - h
    assert np.all(share[:10][:, inside_z] == 1.0) and np.all(share[11:] == 0.0)
    np.testing.assert_allclose(
        share[10][inside_z], 0.5, rtol=0, atol=1e-12
    )  # pixel 10 is centred on y = 16 mm
    covered = (16 * MM - det.origin_m[0]) * 26 * MM  # the rectangle's part of the detector
    edge_pixels = 20 + 2 * 10
    assert abs(share.sum() * h * h - covered) <= edge_pixels * h * h / 8
    with pytest.raises(ValueError, match="subsamples"):
        body_hidden_share(det, body, subsamples=0)


def test_visible_volume_along_the_body_edge_does_not_depend_on_the_raster():
    """Cement of uniform thickness over a detector the silhouette's edge crosses: its visible volume is the
    uncovered area times the thickness to 1/16 of a pixel row wherever the edge falls between pixel
    centres (the body moved by tenths of a pixel), where hiding whole pixels by their centres is off by up
    to a full row of pixels (issue 15: cohort patient 1's vein along the lateral edge, seen up to 30 s
    apart over such shifts of the C-arm)."""
    h, t0 = 0.3 * MM, 1 * MM
    rows = 40  # pixel rows along the edge (z), all within |z| <= 13 mm
    det = Detector(view="lateral", origin_m=np.array([10 * MM, -6 * MM]), shape=(30, rows), pixel_size_m=h)
    img = np.full(det.shape, t0)
    row = rows * h * h * t0  # one column of pixels along the edge
    err_share, err_centre = [], []
    for k in range(10):
        shift = 0.1 * k * h
        body = _rectangle_body(shift)
        exact = t0 * (30 * h - (16 * MM + shift - det.origin_m[0])) * rows * h  # uncovered area x thickness
        err_share.append(visible_volume_m3(img, h, 0.5 * MM, body_hidden_share(det, body)) - exact)
        err_centre.append(visible_volume_m3(img, h, 0.5 * MM, body_silhouette(det, body)) - exact)
    assert max(abs(e) for e in err_share) <= row / 16 * (1 + 1e-9)
    assert max(err_centre) - min(err_centre) >= 0.8 * row  # the centre rule: a whole row in or out


def test_hidden_share_does_not_depend_on_the_block_size(monkeypatch):
    """The share is evaluated in blocks of pixel rows; any block size, including a partial last block and
    one row at a time, gives the same bits, with an outline and with the body cells of a hand-made grid."""
    from sim.physics import fluoroscopy

    body = _rectangle_body(0.013 * MM)
    cells = box_bone()
    h = 0.3 * MM
    det = Detector(view="lateral", origin_m=np.array([8 * MM, -15 * MM]), shape=(37, 101), pixel_size_m=h)
    whole = [body_hidden_share(det, b) for b in (body, cells)]
    for share in whole:  # both edges of both bodies cross the detector
        assert np.any((share > 0) & (share < 1)) and np.any(share == 0) and np.any(share == 1)
    for rows in (1, 5, 7):  # rows per block
        monkeypatch.setattr(fluoroscopy, "_HIDDEN_BLOCK", rows * 101 * 64)
        for b, ref in zip((body, cells), whole, strict=True):
            assert np.array_equal(body_hidden_share(det, b), ref)


def test_hidden_share_window_changes_no_value(monkeypatch):
    """The share is evaluated only over the pixels the body's box can reach; the whole detector gives
    the same bits for the parametric outline (both views), a CT-like mask outline (a blob touching its
    box's edges) and the cells of a hand-made grid, so the box holds every pixel the body covers."""
    from types import SimpleNamespace

    from sim.core.config import read_yaml, scenario_from_dict
    from sim.core.grid import MaskOutline
    from sim.core.parameters import RunParameters
    from sim.physics import fluoroscopy
    from sim.physics.bone import build_vertebral_body

    cfg = read_yaml(ROOT / "configs" / "lai2025_case.yaml")
    patient = RunParameters.from_scenario(scenario_from_dict(cfg)).patient
    bone = build_vertebral_body(patient, 1.0 * MM)
    centre = np.asarray(bone.meta["center_m"])
    idx = np.indices((30, 24, 20)).astype(float)
    blob = ((idx[0] - 14.5) / 15.0) ** 2 + ((idx[1] - 11.5) / 12.0) ** 2 + ((idx[2] - 9.5) / 10.0) ** 2 <= 1.0
    blob[0, 12, 10] = blob[29, 0, 0] = True  # single voxels on the box's faces and corner
    mask = SimpleNamespace(outline=MaskOutline.from_mask(blob, centre - 0.007, 0.5 * MM))
    cases = [(bone, "lateral"), (bone, "ap"), (mask, "lateral"), (mask, "ap"), (box_bone(), "lateral")]
    windowed = [body_hidden_share(make_detector(v, centre, 0.03, 0.3 * MM), b) for b, v in cases]
    monkeypatch.setattr(fluoroscopy, "_body_window", lambda det, bone: ((0, det.shape[0]), (0, det.shape[1])))
    for (b, v), share in zip(cases, windowed, strict=True):
        whole = body_hidden_share(make_detector(v, centre, 0.03, 0.3 * MM), b)
        assert whole.any() and np.array_equal(share, whole), v
    far = make_detector("lateral", centre + 0.2, 0.03, 0.3 * MM)  # a field of view beside the body
    assert not body_hidden_share(far, bone).any()
