"""Tests of the vertebral body model (sim.physics.bone), its data files and the random field.

Expected values come from the YAML data and closed-form geometry (areas by quadrature of the
analytic section), the random-field covariance model, or symmetry; never from a previous run.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy import integrate, ndimage

from sim.core.config import LEVELS
from sim.core.errors import GeometryError
from sim.core.parameters import RunParameters
from sim.physics.bone import (
    build_vertebral_body,
    load_cannula,
    load_vertebra,
    place_needle,
)
from sim.physics.kernel_cover import ball_cover
from sim.physics.permeability import KozenyCarman, RodArray, kozeny_carman, rod_network
from sim.physics.random_field import FourierField
from tests.helpers import run_params

FACE6 = ndimage.generate_binary_structure(3, 1)


@pytest.fixture(scope="module")
def si() -> RunParameters:
    return run_params()


@pytest.fixture(scope="module")
def l1_1mm(si):
    return build_vertebral_body(replace(si.patient, level="L1", seed=7), 1.0e-3)


@pytest.fixture(scope="module")
def l1_half_mm(si):
    return build_vertebral_body(replace(si.patient, level="L1", seed=7), 0.5e-3)


def _section_area(width: float, depth: float, dfrac: float, rfrac: float, inset: float = 0.0) -> float:
    """Analytic area of the kidney section (ellipse minus posterior disc), re-derived here."""
    a, b = 0.5 * width - inset, 0.5 * depth - inset
    radius0 = rfrac * width
    yc = 0.5 * depth - dfrac * depth + radius0
    radius = radius0 + inset

    def chord(x: float) -> float:
        top = b * np.sqrt(max(1 - (x / a) ** 2, 0.0))
        if abs(x) < radius:
            top = min(top, yc - np.sqrt(radius**2 - x**2))
        return max(top + b * np.sqrt(max(1 - (x / a) ** 2, 0.0)), 0.0)

    return integrate.quad(chord, -a, a, points=[-radius, radius], limit=200)[0]


def _tip_expected(dims: dict, scale: float, ap: float, lat: float, cc: float) -> np.ndarray:
    """Tip position from the fractions, from the YAML dimensions (independent of sim.physics.bone)."""
    a = 0.5 * scale * dims["width_m"]
    b = 0.5 * scale * dims["depth_m"]
    depth = scale * dims["depth_m"]
    radius = dims["concavity_radius_fraction"] * scale * dims["width_m"]
    yc = b - dims["concavity_depth_fraction"] * depth + radius
    x = lat * a
    y_ant = -b * np.sqrt(1 - (x / a) ** 2)
    y_post = b * np.sqrt(1 - (x / a) ** 2)
    if abs(x) < radius:
        y_post = min(y_post, yc - np.sqrt(radius**2 - x**2))
    height = scale * dims["height_m"]
    return np.array([x, y_ant + ap * (y_post - y_ant), dims["z_center_m"] - 0.5 * height + cc * height])


def _in_inner_shape(bone, dims: dict, scale: float = 1.0) -> np.ndarray:
    """Cells whose centre lies in the cancellous shape, re-derived from the YAML dimensions."""
    t, te = dims["cortical_thickness_m"], dims["endplate_thickness_m"]
    width, depth, height = (scale * dims[k] for k in ("width_m", "depth_m", "height_m"))
    a, b = 0.5 * width - t, 0.5 * depth - t
    radius0 = dims["concavity_radius_fraction"] * width
    yc = 0.5 * depth - dims["concavity_depth_fraction"] * depth + radius0
    p = bone.cell_centers_m(np.arange(bone.n_cells)) - bone.meta["center_m"]
    inside = (p[:, 0] / a) ** 2 + (p[:, 1] / b) ** 2 <= 1.0
    inside &= p[:, 0] ** 2 + (p[:, 1] - yc) ** 2 >= (radius0 + t) ** 2
    inside &= np.abs(p[:, 2]) <= 0.5 * height - te
    return inside.reshape(bone.shape)


def _segment_distance(pts: np.ndarray, p0: np.ndarray, p1: np.ndarray) -> np.ndarray:
    d = p1 - p0
    s = np.clip((pts - p0) @ d / (d @ d), 0.0, 1.0)
    return np.linalg.norm(pts - (p0 + s[:, None] * d), axis=1)


def _vein(bone, name: str) -> dict:
    return next(v for v in bone.meta["veins"] if v["name"] == name)


def _canal_cells(bone, dims: dict, scale: float = 1.0) -> np.ndarray:
    """Cancellous-shape cells that are not porous: the basivertebral canal cut out of the marrow.

    Asserts that they all lie in the canal: within its radius (or half a cell diagonal, the voxel
    chain of a thin canal) of its axis, from the cortex to its inner end.
    """
    cut = np.flatnonzero((_in_inner_shape(bone, dims, scale) & ~bone.porous).ravel())
    canal = _vein(bone, "basivertebral_canal")
    p_out, p_in = canal["start_m"], canal["end_m"]
    outward = (p_out - p_in) / np.linalg.norm(p_out - p_in)
    reach = max(0.5 * canal["diameter_m"], 0.5 * np.sqrt(3.0) * bone.spacing_m) + 1e-12
    dist = _segment_distance(
        bone.cell_centers_m(cut), p_in, p_out + 2.0 * outward * dims["cortical_thickness_m"]
    )
    assert np.all(dist <= reach), f"{int(np.sum(dist > reach))} non-porous cells outside the canal"
    return cut


# ------------------------------------------------------------------------------------ data


def test_vertebra_data_complete_and_z_positions_consistent():
    dims = {lev: load_vertebra(lev) for lev in LEVELS}
    for lev, d in dims.items():
        for key in (
            "width_m",
            "depth_m",
            "height_m",
            "cortical_thickness_m",
            "pedicle_width_m",
        ):
            assert d[key] > 0, (lev, key)
            assert d["sources"][key].startswith("["), (lev, key)
        assert 0.1e-3 < d["cortical_thickness_m"] < 0.5e-3
        assert d["width_m"] > d["depth_m"] > d["height_m"] * 0.6
    # z of each centre = sum of half heights and disc heights from L1 (origin).
    assert dims["L1"]["z_center_m"] == 0.0
    for upper, lower in zip(LEVELS[:-1], LEVELS[1:], strict=True):
        gap = 0.5 * dims[upper]["height_m"] + dims[upper]["disc_below_m"] + 0.5 * dims[lower]["height_m"]
        assert dims[upper]["z_center_m"] - dims[lower]["z_center_m"] == pytest.approx(gap, abs=0.02e-3)
    # parameters.md [TB] ranges for T12/L1: width 40-45, depth 30-35, height 24-28 mm.
    for lev in ("T12", "L1"):
        assert 40e-3 <= dims[lev]["width_m"] <= 45e-3
        assert 30e-3 <= dims[lev]["depth_m"] <= 35e-3
        assert 22e-3 <= dims[lev]["height_m"] <= 28e-3
    # Egwu 2019 [S] cross-check: T9 posterior height 20.46 +- 3.08 mm.
    assert abs(dims["T9"]["height_posterior_m"] - 20.46e-3) < 3.08e-3


def test_cannula_data():
    chart_od = {11: 3.048e-3, 13: 2.413e-3, 15: 1.829e-3}  # Stubs gauge chart
    for gauge, od in chart_od.items():
        c = load_cannula(gauge)
        assert c["outer_diameter_m"] == pytest.approx(od)
        assert c["inner_diameter_regular_wall_m"] < c["inner_diameter_m"] < c["outer_diameter_m"]
    with pytest.raises(GeometryError, match="gauge"):
        load_cannula(12)
    with pytest.raises(GeometryError, match="X9"):
        load_vertebra("X9")


# ------------------------------------------------------------------------------------ geometry


@pytest.mark.parametrize("level", ["T7", "L1", "L4"])
def test_volumes_match_analytic(level, si):
    d = load_vertebra(level)
    width, depth, height = d["width_m"], d["depth_m"], d["height_m"]
    dfrac, rfrac = d["concavity_depth_fraction"], d["concavity_radius_fraction"]
    v_outer = _section_area(width, depth, dfrac, rfrac) * height
    t, te = d["cortical_thickness_m"], d["endplate_thickness_m"]
    v_inner = _section_area(width, depth, dfrac, rfrac, inset=t) * (height - 2 * te)
    for h, tol_porous in ((1.0e-3, 0.04), (0.5e-3, 0.025)):
        bone = build_vertebral_body(replace(si.patient, level=level, seed=1), h)
        assert bone.meta["isolated_porous_cells_removed"] == 0
        canal = _canal_cells(bone, d).size
        v_porous = (bone.porous.sum() + canal) * h**3
        assert v_porous == pytest.approx(v_inner, rel=tol_porous), (level, h)
        v_body = bone.body.sum() * h**3
        if h <= 0.5e-3:
            assert v_body == pytest.approx(v_outer, rel=0.03), (level, h)
        else:
            # 1 mm cannot resolve a 0.3 mm cortex: the >= 1-cell shell lies outside the outer
            # surface, so the body exceeds the analytic volume by less than one cell layer.
            a, b = 0.5 * width, 0.5 * depth
            perimeter = np.pi * (3 * (a + b) - np.sqrt((3 * a + b) * (a + 3 * b)))
            surface = 2 * v_outer / height + perimeter * height
            assert v_outer * 0.98 < v_body < v_outer + surface * h, (level, h)


def test_cortex_encloses_porous(l1_1mm, l1_half_mm):
    for bone in (l1_1mm, l1_half_mm):
        porous, body = bone.porous, bone.body
        assert not np.any(porous & ~body)
        # Every face neighbour of a porous cell is inside the body: no porous cell touches the outside.
        grown = ndimage.binary_dilation(porous, structure=FACE6)
        assert not np.any(grown & ~body)
        # Nothing porous on the grid boundary, and a non-body margin all around.
        for axis in range(3):
            for end in (0, -1):
                assert not np.take(porous, end, axis=axis).any()
                assert not np.take(body, end, axis=axis).any()
        # Non-porous cells carry no porosity or permeability.
        assert np.all(bone.porosity[~porous] == 0.0)
        assert np.all(bone.permeability[:, ~porous] == 0.0)
        assert np.all(bone.porosity[porous] > 0.0)
        # The basivertebral canal is shell (body, not porous), and it is the only hole in the marrow.
        canal = _canal_cells(bone, load_vertebra("L1"))
        assert canal.size > 0
        assert np.all(body.reshape(-1)[canal]) and not np.any(porous.reshape(-1)[canal])
        # One drained porous component: every porous cell is connected to an exit.
        labels, n = ndimage.label(porous, structure=FACE6)
        assert n == 1


def test_exits_on_correct_faces(l1_1mm, l1_half_mm):
    for bone in (l1_1mm, l1_half_mm):
        h = bone.spacing_m
        center = bone.meta["center_m"]
        a, b = 0.5 * bone.meta["width_m"], 0.5 * bone.meta["depth_m"]
        by_name = {e.name: e for e in bone.exits}
        assert set(by_name) == {
            "basivertebral",
            "anterior_left",
            "anterior_right",
            "lateral_left",
            "lateral_right",
        }
        vessels = bone.vessels
        for e in bone.exits:
            assert e.cells.size >= 1 and np.all(bone.porous.reshape(-1)[e.cells])
            assert e.diameter_m > 0 and e.length_m > 0
            # the foramen is the vein node at the outer opening; it lies in the cortex, so it does not
            # exchange with the marrow itself; the cells it drains are well cells of its vein
            assert 0 <= e.node < vessels.n_nodes and vessels.exit_node[e.name] == e.node
            np.testing.assert_allclose(vessels.node_pos_m[e.node], e.position_m, rtol=0, atol=1e-15)
            assert e.node not in set(vessels.well_node.tolist())
            assert np.all(np.isin(e.cells, vessels.well_cell))
        bv = by_name["basivertebral"]
        assert bv.kind == "basivertebral"
        rel = bv.position_m - center
        assert abs(rel[0]) < 1e-12 and rel[1] > 0.7 * b  # posterior wall, midline
        assert abs(rel[2]) < 0.05 * bone.meta["height_m"] + h  # mid-height
        ctr = bone.cell_centers_m(bv.cells) - center
        assert abs(ctr[:, 0].mean()) <= 0.5 * h and np.all(ctr[:, 1] > 0)  # midline, posterior half
        for side, sign in (("left", 1.0), ("right", -1.0)):
            ant = by_name[f"anterior_{side}"]
            assert ant.kind == "anterior"
            p = ant.position_m - center
            assert p[1] < -0.5 * b and np.sign(p[0]) == sign
            assert np.all((bone.cell_centers_m(ant.cells) - center)[:, 1] < 0)
            lat = by_name[f"lateral_{side}"]
            assert lat.kind == "lateral"
            q = lat.position_m - center
            assert abs(q[0]) == pytest.approx(a, rel=1e-9) and np.sign(q[0]) == sign
            assert np.all(sign * (bone.cell_centers_m(lat.cells) - center)[:, 0] > 0.8 * a)


# ------------------------------------------------------------------------------------ fields


def test_random_field_statistics_and_correlation_length():
    """Point values of the Fourier-mode field: unit variance and the covariance exp(-(r/l)^2)."""
    h, ell = 1.0, 4.0
    rng = np.random.default_rng(11)
    lags = np.arange(1, 7)
    rho = np.zeros(len(lags))
    fields = [
        FourierField.draw(ell, rng, 2048).on_grid(np.zeros(3), h, (80, 80, 80), cell_average=False)
        for _ in range(3)
    ]
    for f in fields:
        for i, lag in enumerate(lags):
            for axis in range(3):
                a = np.moveaxis(f, axis, 0)
                rho[i] += np.mean(a[lag:] * a[:-lag]) / (9.0 * np.mean(f * f))
    # Least-squares fit of ln rho = -(lag/l)^2 over the lags where rho > 0.05.
    ok = rho > 0.05
    slope = np.sum(lags[ok] ** 2 * -np.log(rho[ok])) / np.sum(lags[ok] ** 4)
    ell_fit = 1.0 / np.sqrt(slope)
    assert ell_fit == pytest.approx(ell, rel=0.08)
    # Mean and variance: N_eff = V / (pi^1.5 l^3) independent blobs per field.
    n_eff = 3 * 80**3 / (np.pi**1.5 * ell**3)
    allf = np.stack(fields)
    assert abs(allf.mean()) < 4.0 / np.sqrt(n_eff)
    assert allf.var() == pytest.approx(1.0, abs=4.0 * np.sqrt(2.0 / n_eff))


def test_porosity_field_matches_targets(si):
    patient = replace(si.patient, porosity_mean=0.88, porosity_sd=0.03, porosity_correlation_m=2.0e-3, seed=5)
    bone = build_vertebral_body(replace(patient, level="L3"), 1.0e-3)
    phi = bone.porosity[bone.porous]  # veins no longer change the marrow's porosity: every cell counts
    assert phi.min() >= 0.5 and phi.max() <= 0.99
    vol = bone.porous.sum() * 1e-9
    n_eff = vol / (np.pi**1.5 * (2.0e-3) ** 3)
    assert abs(phi.mean() - 0.88) < 4.0 * 0.03 / np.sqrt(n_eff)
    # cell averages of a field with l = 2 h have ~6 % less spread than point values (sinc^2 filter)
    assert phi.std() == pytest.approx(0.03, rel=max(0.15, 4.0 / np.sqrt(2.0 * n_eff)))


def test_permeability_normalisation_and_anisotropy(l1_1mm, si):
    """Every porous cell has the default (rod-network) law's k of its porosity, k_z = a k_x."""
    p = si.patient
    k_ref, phi_ref = p.permeability_ref_m2, p.porosity_mean
    assert KozenyCarman.from_params(p).transverse(np.array([phi_ref]))[0] == k_ref
    assert RodArray.from_params(p).transverse(np.array([phi_ref]))[0] == k_ref
    assert kozeny_carman(0.9) == pytest.approx(0.729 / 0.01)
    # every porous cell, the ones around the veins included: veins are 1D vessels, not cells
    porous = l1_1mm.porous
    assert l1_1mm.channel.sum() > 20
    kx, ky, kz = (l1_1mm.permeability[c][porous] for c in range(3))
    np.testing.assert_array_equal(kx, ky)
    np.testing.assert_allclose(kz / kx, p.permeability_anisotropy, rtol=1e-13)
    phi = l1_1mm.porosity[porous]
    np.testing.assert_allclose(kx, k_ref * rod_network(phi) / rod_network(phi_ref), rtol=1e-12)


def _check_embedded_veins(bone, patient) -> None:
    """Well connections of the embedded veins: porous cells within each vein's kernel, positive indices."""
    h = bone.spacing_m
    rho_0 = patient.vein_kernel_radius_m
    v = bone.vessels
    n_well = v.well_cell.size
    assert n_well > 20
    assert np.all(v.well_index_m3 > 0.0) and np.all(np.isfinite(v.well_index_m3))
    porous = bone.porous.ravel()
    # channel marks exactly the porous cells a vein's kernel reaches
    well = np.zeros(bone.n_cells, dtype=bool)
    well[v.well_cell] = True
    np.testing.assert_array_equal(bone.channel.ravel(), well & porous)
    # distance of every well cell to the nearest exchanging vein, in units of that vein's kernel radius
    ctr = bone.cell_centers_m(v.well_cell)
    reach = np.full(n_well, np.inf)
    exchanging = [s for s in bone.meta["veins"] if s["exchanges"]]
    assert {s["name"] for s in exchanging} >= {"basivertebral_trunk", "nutrient_anterior_left"}
    for seg in exchanging:
        rho = max(1.5 * seg["diameter_m"], rho_0, 2.0 * h)  # max(3 r_w, rho_0, 2 h)
        # a cell the kernel cuts (sim.physics.kernel_cover) has its centre within half a cell diagonal
        cut = _segment_distance(ctr, seg["start_m"], seg["end_m"]) - 0.5 * np.sqrt(3.0) * h
        reach = np.minimum(reach, cut / rho)
        # every exchanging vein is connected to the marrow along it
        near_mid = np.linalg.norm(ctr - 0.5 * (seg["start_m"] + seg["end_m"]), axis=1) <= rho
        assert near_mid.any(), seg["name"]
    # canal mouths: a hemispherical kernel of radius max(2 a, 2 h) around the canal's inner end
    a_mouth = 0.5 * np.sqrt(patient.basivertebral_foramen_width_m * patient.basivertebral_foramen_height_m)
    for seg in bone.meta["veins"]:
        if seg["name"].endswith("_canal"):
            rho = max(2.0 * a_mouth, rho_0, 2.0 * h)
            cut = np.linalg.norm(ctr - seg["end_m"], axis=1) - 0.5 * np.sqrt(3.0) * h
            reach = np.minimum(reach, cut / rho)
    assert np.all(reach <= 1.0 + 1e-9), f"{int(np.sum(reach > 1 + 1e-9))} well cells beyond the kernel"
    assert bone.meta["well_kernel_radius_m"] == pytest.approx(max(2.0 * a_mouth, rho_0, 2.0 * h), rel=1e-12)
    # veins in cortical canals and foramina (no kernel) exchange nothing along their length
    for seg in bone.meta["veins"]:
        if seg["exchanges"]:
            continue
        on = _segment_distance(v.node_pos_m, seg["start_m"], seg["end_m"]) < 1e-12
        ends = (np.linalg.norm(v.node_pos_m - seg["start_m"], axis=1) < 1e-12) | (
            np.linalg.norm(v.node_pos_m - seg["end_m"], axis=1) < 1e-12
        )
        interior = np.flatnonzero(on & ~ends)
        assert not np.any(np.isin(interior, v.well_node)), seg["name"]
    # the node-node edges: neighbours at most one cell apart, Poiseuille factors positive
    assert np.all(v.edge_length_m <= h * (1 + 1e-9)) and np.all(v.edge_conductance_m3() > 0.0)


def test_embedded_veins_reach_only_porous_cells_in_their_kernel(l1_1mm, l1_half_mm, si):
    for bone in (l1_1mm, l1_half_mm):
        _check_embedded_veins(bone, si.patient)


def test_vein_kernel_radius_is_the_patients(si):
    """patient.vein_kernel_radius_mm is rho_0 of every vein and canal-mouth kernel: a wider kernel spreads
    the same veins' exchange over more cells, none beyond it (the same checks as at the 2 mm default)."""
    narrow = build_vertebral_body(replace(si.patient, vein_kernel_radius_m=2.0e-3), 1.0e-3)
    wide_patient = replace(si.patient, vein_kernel_radius_m=4.0e-3)
    wide = build_vertebral_body(wide_patient, 1.0e-3)
    _check_embedded_veins(wide, wide_patient)
    assert wide.vessels.well_cell.size > 2 * narrow.vessels.well_cell.size
    np.testing.assert_array_equal(wide.porous, narrow.porous)  # the anatomy itself is the same
    # the needle's shaft is carved out of the marrow: channel still marks exactly the porous well cells
    bone = build_vertebral_body(replace(si.patient, level="L1", seed=7), 1.0e-3)
    place_needle(bone, replace(si.needle, tip_ap_fraction=0.6, tip_lateral_fraction=0.0))
    _check_embedded_veins(bone, si.patient)


def test_fracture_cleft(si):
    base = replace(si.patient, level="L1")
    cleft_cfg = replace(base.fracture_cleft, enabled=True, permeability_factor=50.0)
    with_cleft = replace(base, fracture_cleft=cleft_cfg)
    b0 = build_vertebral_body(replace(base, level="L1", seed=3), 1.0e-3)
    b1 = build_vertebral_body(replace(with_cleft, level="L1", seed=3), 1.0e-3)
    assert b0.cleft is None and b1.cleft is not None and b1.cleft.sum() > 50
    c = b1.cleft
    np.testing.assert_allclose(b1.permeability[:, c], 50.0 * b0.permeability[:, c], rtol=1e-13)
    assert np.all(b1.porosity[c] > b0.porosity[c])
    np.testing.assert_array_equal(b1.permeability[:, ~c], b0.permeability[:, ~c])


def test_determinism(si):
    a = build_vertebral_body(replace(si.patient, level="T10", seed=42), 1.0e-3)
    b = build_vertebral_body(replace(si.patient, level="T10", seed=42), 1.0e-3)
    c = build_vertebral_body(replace(si.patient, level="T10", seed=43), 1.0e-3)
    np.testing.assert_array_equal(a.porosity, b.porosity)
    np.testing.assert_array_equal(a.permeability, b.permeability)
    np.testing.assert_array_equal(a.channel, b.channel)
    for name in ("node_pos_m", "well_node", "well_cell", "well_index_m3", "edge_a", "edge_b"):
        np.testing.assert_array_equal(getattr(a.vessels, name), getattr(b.vessels, name))
    for ea, eb in zip(a.exits, b.exits, strict=True):
        np.testing.assert_array_equal(ea.cells, eb.cells)
    assert not np.array_equal(a.porosity, c.porosity)
    assert not np.array_equal(a.vessels.node_pos_m, c.vessels.node_pos_m)  # jittered vein ends


# ------------------------------------------------------------------------------------ needle


@pytest.mark.parametrize(
    "approach,side,ap,lat,cc",
    [
        ("transpedicular", "left", 0.35, 0.15, 0.5),
        ("transpedicular", "right", 0.3, -0.3, 0.4),
        ("extrapedicular", "left", 0.4, -0.05, 0.6),
    ],
)
def test_needle_tip_at_requested_fractions(approach, side, ap, lat, cc, si):
    bone = build_vertebral_body(replace(si.patient, level="L2", seed=0), 1.0e-3)
    needle_si = replace(
        si.needle,
        approach=approach,
        side=side,
        tip_ap_fraction=ap,
        tip_lateral_fraction=lat,
        tip_cc_fraction=cc,
    )
    needle = place_needle(bone, needle_si)
    expected = _tip_expected(load_vertebra("L2"), 1.0, ap, lat, cc)
    np.testing.assert_allclose(needle.tip_positions_m[0], expected, atol=1e-12)
    centres = bone.cell_centers_m(needle.tip_cells)
    nearest = np.min(np.linalg.norm(centres - expected, axis=1))
    assert nearest <= 0.5 * np.sqrt(3) * bone.spacing_m
    r_in = 0.5 * load_cannula(11)["inner_diameter_m"]
    # the open tip's flow enters the porous cells of the kernel ball around it (2 mm at 1 mm), in
    # proportion to their pore volume inside the ball; the well radius is the cannula's inner radius
    rho = max(2.0e-3, 1.5 * r_in, 2.0 * bone.spacing_m)
    assert needle.tip_kernel_radius_m == pytest.approx(rho, rel=1e-15)
    assert needle.tip_radius_m == pytest.approx(r_in, rel=1e-15)
    h = bone.spacing_m
    flat = np.flatnonzero(bone.porous.reshape(-1))
    cover = ball_cover(bone.cell_centers_m(flat), h, expected, rho)
    np.testing.assert_array_equal(
        np.sort(needle.tip_cells), np.sort(flat[cover > 0])
    )  # every porous cell it cuts
    phi_cover = bone.porosity.reshape(-1)[flat] * cover
    order = np.argsort(flat[cover > 0])
    np.testing.assert_allclose(
        needle.tip_weights, (phi_cover[cover > 0] / phi_cover.sum())[order], rtol=1e-12
    )
    # the covered volume is the ball's (porous cells only: a shaft cell or cortex inside takes its share)
    assert cover.sum() * h**3 <= 4.0 / 3.0 * np.pi * rho**3 * 1.01
    assert needle.tip_weights.sum() == pytest.approx(1.0, abs=1e-14)
    assert np.all(needle.tip_cannula == 0)
    assert np.all(bone.porous.reshape(-1)[needle.tip_cells])
    # Shaft removed from the porous set, inside the body, disjoint from the tip.
    assert needle.path_cells.size > 5
    assert not np.any(bone.porous.reshape(-1)[needle.path_cells])
    assert np.all(bone.body.reshape(-1)[needle.path_cells])
    assert np.intersect1d(needle.path_cells, needle.tip_cells).size == 0
    # the shaft is carved only up to 3 outer radii behind the tip (the well's near field stays marrow)
    clear = 3.0 * 0.5 * load_cannula(11)["outer_diameter_m"]
    to_tip = np.linalg.norm(bone.cell_centers_m(needle.path_cells) - expected, axis=1)
    assert to_tip.min() >= clear - 0.5 * np.sqrt(3.0) * bone.spacing_m
    # The shaft comes from the requested side (posterior half, entry on that side).
    entry_rel = needle.entry_positions_m[0] - bone.meta["center_m"]
    assert np.sign(entry_rel[0]) == (1.0 if side == "left" else -1.0) and entry_rel[1] > 0
    for e in bone.exits:
        assert np.all(bone.porous.reshape(-1)[e.cells])


def test_extrapedicular_enters_more_laterally(si):
    entries = {}
    for approach in ("transpedicular", "extrapedicular"):
        bone = build_vertebral_body(replace(si.patient, level="T9", seed=0), 1.0e-3)
        n = place_needle(bone, replace(si.needle, approach=approach, tip_lateral_fraction=0.0))
        entries[approach] = n.meta["cannulas"][0]
    assert entries["extrapedicular"]["medial_angle_deg"] > entries["transpedicular"]["medial_angle_deg"]


def test_bipedicular_mirrored_and_weights(si):
    bone = build_vertebral_body(replace(si.patient, level="L1", seed=9), 1.0e-3)
    needle = place_needle(bone, replace(si.needle, bipedicular=True, tip_lateral_fraction=0.3))
    assert needle.tip_weights.sum() == pytest.approx(1.0, abs=1e-14)
    tips = needle.tip_positions_m - bone.meta["center_m"]
    assert tips.shape == (2, 3)
    np.testing.assert_allclose(tips[0] * [-1, 1, 1], tips[1], atol=1e-12)
    centres = bone.cell_centers_m(needle.tip_cells) - bone.meta["center_m"]
    left = centres[:, 0] > 0
    assert needle.tip_weights[left].sum() == pytest.approx(0.5, abs=1e-14)
    mirrored = np.round(centres[left] * [-1, 1, 1] / bone.spacing_m).astype(int)
    right = np.round(centres[~left] / bone.spacing_m).astype(int)
    assert sorted(map(tuple, mirrored)) == sorted(map(tuple, right))
    entries = needle.entry_positions_m - bone.meta["center_m"]
    assert entries[0][0] == pytest.approx(-entries[1][0], abs=1e-12)


def test_bad_tip_raises(si):
    bone = build_vertebral_body(replace(si.patient, level="L1", seed=0), 1.0e-3)
    with pytest.raises(GeometryError, match="tip"):
        place_needle(bone, replace(si.needle, tip_cc_fraction=0.0))  # on the inferior endplate
    with pytest.raises(GeometryError, match="tip"):
        place_needle(
            bone, replace(si.needle, tip_ap_fraction=1.0, tip_lateral_fraction=0.0)
        )  # posterior wall


def test_half_mm_grid_pore_volume_matches_1mm(si, l1_1mm, l1_half_mm):
    assert l1_half_mm.n_cells > 2.5e5
    assert l1_half_mm.pore_volume_m3() == pytest.approx(l1_1mm.pore_volume_m3(), rel=0.04)
    bone = build_vertebral_body(replace(si.patient, level="L1", seed=8), 0.5e-3)
    n = place_needle(bone, si.needle)
    # the tip's kernel is the same 2 mm ball at 0.5 mm as at 1 mm (about 268 cells inside, the cut
    # shell besides); the shaft is many cells
    assert n.tip_kernel_radius_m == pytest.approx(2.0e-3, rel=1e-15)
    cover = ball_cover(bone.cell_centers_m(n.tip_cells), 0.5e-3, n.tip_positions_m[0], 2.0e-3)
    assert np.all(cover > 0.0) and n.path_cells.size > 100
    assert abs(cover.sum() - 4.0 / 3.0 * np.pi * 4.0**3) <= 30


def test_size_scale_scales_volume(si):
    base = build_vertebral_body(replace(si.patient, level="L2", seed=4), 0.5e-3)
    big = build_vertebral_body(replace(si.patient, size_scale=1.2, level="L2", seed=4), 0.5e-3)
    # Outer volume scales as s^3 (cortex thickness is not scaled, so compare the outer body).
    assert big.body.sum() / base.body.sum() == pytest.approx(1.2**3, rel=0.03)
    np.testing.assert_allclose(big.meta["center_m"], base.meta["center_m"])


def test_scalar_chord_is_the_array_forms_difference_bit_for_bit():
    """The section area's quadrature uses BodyShape.chord; it must equal posterior_y - anterior_y
    (clipped at 0) exactly, in and outside the posterior disc and beyond the body."""
    from sim.physics.bone import BodyShape

    rng = np.random.default_rng(7)
    for _ in range(40):
        shape = BodyShape.from_dims(
            rng.uniform(0.03, 0.06),
            rng.uniform(0.02, 0.04),
            0.025,
            rng.uniform(0.1, 0.3),
            rng.uniform(0.1, 0.4),
        )
        for x in rng.uniform(-1.1 * shape.a, 1.1 * shape.a, 200):
            want = max(float(shape.posterior_y(x) - shape.anterior_y(x)), 0.0)
            assert shape.chord(float(x)) == want
