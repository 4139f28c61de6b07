"""The same patient at every grid spacing (sim.physics.bone): anatomy in continuous space.

The default patient (fixed seed) built at 2, 1 and 0.5 mm must have the same veins, the same foramina
and the same porosity field; the grid only samples it. References are computed here from the
definitions: the exact mean of the Fourier porosity field over a cube (each mode's cube average is
cos(k.c + phi) prod_d sinc(k_d s / 2), checked against Gauss-Legendre quadrature of point values), and
the named random streams' contract (one stream per feature, independent of the others).
"""

from __future__ import annotations

import numpy as np
import pytest

import sim.physics.bone as bone_module
from sim.physics.bone import FOURIER_MODES, build_vertebral_body, feature_rng
from sim.physics.random_field import FourierField
from tests.helpers import run_params

MM = 1e-3
SPACINGS_MM = (2.0, 1.0, 0.5)
BLOCK_MM = 4.0


@pytest.fixture(scope="module")
def patient():
    return run_params().patient


@pytest.fixture(scope="module")
def bones(patient):
    return {h: build_vertebral_body(patient, h * MM) for h in SPACINGS_MM}


def porosity_field(patient) -> FourierField:
    """The patient's porosity field, drawn from its named stream as the bone model documents."""
    return FourierField.draw(
        patient.porosity_correlation_m, feature_rng(patient.seed, "porosity"), FOURIER_MODES
    )


def cube_mean(field: FourierField, centres_m: np.ndarray, side_m: float) -> np.ndarray:
    """Exact mean of g = sqrt(2/N) sum cos(k.x + phi) over cubes of side ``side_m`` at ``centres_m``."""
    c = np.atleast_2d(centres_m)
    x = field.wavevectors * (0.5 * side_m)
    shrink = np.prod(np.where(x == 0.0, 1.0, np.sin(x) / np.where(x == 0.0, 1.0, x)), axis=1)
    return np.sqrt(2.0 / field.phases.size) * (np.cos(c @ field.wavevectors.T + field.phases) @ shrink)


def overlap_average(bone, lo_mm: np.ndarray, side_mm: float) -> float:
    """Volume-weighted mean porosity over the box [lo, lo + side] (mm, body frame); NaN if it leaves
    the porous region. Cells cut by the box count with the fraction of their volume inside it."""
    h = bone.spacing_m / MM
    origin = (bone.origin_m - bone.meta["center_m"]) / MM
    weights = []
    for d in range(3):
        centre = origin[d] + h * np.arange(bone.shape[d])
        inside = np.minimum(centre + 0.5 * h, lo_mm[d] + side_mm) - np.maximum(centre - 0.5 * h, lo_mm[d])
        weights.append(np.clip(inside, 0.0, None) / h)
    w = weights[0][:, None, None] * weights[1][None, :, None] * weights[2][None, None, :]
    if not np.all(bone.porous[w > 0.0]):
        return float("nan")
    return float(np.sum(w * bone.porosity) / np.sum(w))


# ----------------------------------------------------------------------------- veins and foramina


def test_vein_tree_is_the_same_at_every_spacing(bones):
    ref = bones[SPACINGS_MM[0]].meta["veins"]
    assert len(ref) >= 10
    for h in SPACINGS_MM[1:]:
        veins = bones[h].meta["veins"]
        assert [v["name"] for v in veins] == [v["name"] for v in ref]
        for a, b in zip(ref, veins, strict=True):
            np.testing.assert_array_equal(a["start_m"], b["start_m"], err_msg=a["name"])
            np.testing.assert_array_equal(a["end_m"], b["end_m"], err_msg=a["name"])
            assert a["diameter_m"] == b["diameter_m"] and a["exchanges"] == b["exchanges"], a["name"]
    # the discretised veins keep the tree's points (junctions, foramina) where they are
    points = {tuple(v[k]) for v in ref for k in ("start_m", "end_m")}
    for h in SPACINGS_MM:
        nodes = {tuple(p) for p in bones[h].vessels.node_pos_m}
        assert points <= nodes, h


def test_foramina_are_the_same_at_every_spacing(bones):
    ref = bones[SPACINGS_MM[0]].exits
    assert {e.kind for e in ref} == {"basivertebral", "anterior", "lateral"}
    for h in SPACINGS_MM[1:]:
        exits = bones[h].exits
        assert [(e.name, e.kind) for e in exits] == [(e.name, e.kind) for e in ref]
        for a, b in zip(ref, exits, strict=True):
            np.testing.assert_array_equal(a.position_m, b.position_m, err_msg=a.name)
            assert (a.diameter_m, a.length_m) == (b.diameter_m, b.length_m), a.name
            np.testing.assert_array_equal(
                bones[SPACINGS_MM[0]].vessels.node_pos_m[a.node], bones[h].vessels.node_pos_m[b.node]
            )


# ----------------------------------------------------------------------------- porosity


def test_cube_mean_reference_is_the_quadrature_of_the_field(patient):
    """The closed-form cube mean used below equals Gauss-Legendre quadrature of the field's point values."""
    field = porosity_field(patient)
    x, w = np.polynomial.legendre.leggauss(14)
    rng = np.random.default_rng(0)
    for side in (0.5 * MM, 2.0 * MM, BLOCK_MM * MM):
        for centre in rng.uniform(-8 * MM, 8 * MM, (2, 3)):
            pts = centre + 0.5 * side * np.stack(np.meshgrid(x, x, x, indexing="ij"), axis=-1).reshape(-1, 3)
            ww = (w[:, None, None] * w[None, :, None] * w[None, None, :]).ravel() / 8.0
            quad = float(np.dot(ww, field.at(pts)))
            assert cube_mean(field, centre, side)[0] == pytest.approx(quad, abs=1e-11), side


def test_porosity_cells_are_exact_cell_means_of_one_field(bones, patient):
    """At every spacing each porous cell holds mean + sd * (mean of the same field over the cell)."""
    field = porosity_field(patient)
    rng = np.random.default_rng(1)
    for h, bone in bones.items():
        porous = np.flatnonzero(bone.porous.ravel())
        cells = rng.choice(porous, 400, replace=False)
        centres = bone.cell_centers_m(cells) - bone.meta["center_m"]
        expected = patient.porosity_mean + patient.porosity_sd * cube_mean(field, centres, h * MM)
        np.testing.assert_allclose(bone.porosity.ravel()[cells], expected, rtol=0, atol=1e-13, err_msg=h)
        # the default patient's porosity never reaches the clip bounds (0.5, 0.99): clipped = unclipped
        phi = bone.porosity[bone.porous]
        assert 0.5 < phi.min() and phi.max() < 0.99


def test_block_porosity_agrees_between_grids(bones, patient):
    """4 mm blocks inside the cancellous bone: each grid's block mean against the field's exact block mean.

    The grids put cell centres at multiples of h from the body centre across the body (x, y), so cell
    faces are not shared between 2, 1 and 0.5 mm: the blocks are aligned with the 2 mm cells (block
    means exact to round-off there) and cut the 1 and 0.5 mm cells through their centres in x and y,
    where a half cell counts with weight 1/2 at its full-cell mean. A half cell's mean differs from
    its cell's by (h/4) dg/dx and the cut half cells hold (h/2)/s of a block of side s on each face,
    so the first-order error is h^2 / (8 s) (dg/dx at one face - at the other) per axis; with
    Var(dg/dx) = 2 / l^2 for the covariance exp(-(r/l)^2) its rms is at most
    sqrt(2) * h^2 / (8 s) * 2 sqrt(2) / l = h^2 / (2 s l) (x and y together), in units of the
    porosity sd. The test allows 4 times that, and checks the h^2 convergence of the rms error.
    """
    field = porosity_field(patient)
    l_mm = patient.porosity_correlation_m / MM
    sd = patient.porosity_sd
    n_blocks, errors = 0, {h: [] for h in SPACINGS_MM}
    for x0 in np.arange(-17.0, 17.0, 2.0):  # 2 mm cell faces: odd mm in x and y, even mm in z
        for y0 in np.arange(-13.0, 13.0, 2.0):
            for z0 in np.arange(-10.0, 10.0, 2.0):
                lo = np.array([x0, y0, z0])
                means = [overlap_average(bones[h], lo, BLOCK_MM) for h in SPACINGS_MM]
                if np.any(np.isnan(means)):
                    continue
                exact = (
                    patient.porosity_mean
                    + sd * cube_mean(field, (lo + 0.5 * BLOCK_MM) * MM, BLOCK_MM * MM)[0]
                )
                n_blocks += 1
                for h, m in zip(SPACINGS_MM, means, strict=True):
                    errors[h].append(m - exact)
    assert n_blocks > 500  # blocks through the whole cancellous body
    err = {h: np.asarray(e) for h, e in errors.items()}
    # aligned with the 2 mm cells: the block mean is the mean of 8 exact cell means, to round-off
    assert np.abs(err[2.0]).max() < 1e-14
    rms = {}
    for h in (1.0, 0.5):
        bound = h**2 / (2.0 * BLOCK_MM * l_mm) * sd
        assert np.abs(err[h]).max() < 4.0 * bound, (h, np.abs(err[h]).max(), bound)
        rms[h] = float(np.sqrt(np.mean(err[h] ** 2)))
        assert rms[h] < bound, (h, rms[h], bound)
    assert rms[0.5] / rms[1.0] == pytest.approx(0.25, abs=0.08)  # the half-cell error is O(h^2)
    # the grids agree with each other to the same order (they sample one field, not one each)
    assert np.abs(err[1.0] - err[0.5]).max() < 4.0 * (1.0 + 0.25) / (2.0 * BLOCK_MM * l_mm) * sd


# ----------------------------------------------------------------------------- named random streams


def test_feature_streams_are_named_and_independent():
    a1 = feature_rng(2025, "porosity").standard_normal(8)
    a2 = feature_rng(2025, "porosity").standard_normal(8)
    np.testing.assert_array_equal(a1, a2)
    b = feature_rng(2025, "nutrient_anterior_left").standard_normal(8)
    assert not np.array_equal(a1, b)
    assert not np.array_equal(a1, feature_rng(2026, "porosity").standard_normal(8))
    # a stream does not depend on which other streams were drawn before it
    feature_rng(2025, "basivertebral_branches").standard_normal(10_000)
    np.testing.assert_array_equal(feature_rng(2025, "nutrient_anterior_left").standard_normal(8), b)


def test_renaming_one_feature_leaves_every_other_draw_unchanged(patient, monkeypatch):
    """Build the bone with the branches' stream renamed: only the branch ends move."""
    h = 2.0 * MM
    ref = build_vertebral_body(patient, h)
    original = bone_module.feature_rng

    def renamed(seed: int, feature: str) -> np.random.Generator:
        return original(seed, feature + "_renamed" if feature == "basivertebral_branches" else feature)

    monkeypatch.setattr(bone_module, "feature_rng", renamed)
    new = build_vertebral_body(patient, h)
    np.testing.assert_array_equal(new.porosity, ref.porosity)  # the porosity stream is untouched
    moved = set()
    for a, b in zip(ref.meta["veins"], new.meta["veins"], strict=True):
        assert a["name"] == b["name"]
        np.testing.assert_array_equal(a["start_m"], b["start_m"], err_msg=a["name"])
        if not np.array_equal(a["end_m"], b["end_m"]):
            moved.add(a["name"])
    assert moved and all(name.startswith("basivertebral_branch_") for name in moved), moved
