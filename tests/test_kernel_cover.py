"""Cut-cell shares of the well kernels (sim.physics.kernel_cover): covered volumes and their order.

- Conserved volume: the shares of a ball and of a cylinder, summed over the grid, give 4/3 pi rho^3
  and pi rho^2 L whatever the offset of the kernel from the cell centres.
- Order: the error of the summed shares (and of a two-kernel overlap) falls with refinement, while
  whole-cell membership (centres inside) keeps an error of the order of a cell's share.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from sim.physics.kernel_cover import ball_cover, piece_covers, segment_cover

RHO = 2.0e-3


def _grid(h: float, half: float, offset: np.ndarray) -> np.ndarray:
    n = int(math.ceil(half / h)) + 1
    ax = (np.arange(-n, n + 1) * h)[:, None] + offset[None, :]
    xx, yy, zz = np.meshgrid(ax[:, 0], ax[:, 1], ax[:, 2], indexing="ij")
    return np.stack([xx.ravel(), yy.ravel(), zz.ravel()], axis=-1)


@pytest.mark.parametrize("h", [1.0e-3, 0.75e-3, 0.5e-3])
@pytest.mark.parametrize("offset", [(0.0, 0.0, 0.0), (0.31, 0.17, 0.43), (0.5, 0.5, 0.5)])
def test_ball_cover_sums_to_the_ball_volume(h, offset):
    ctr = _grid(h, RHO + h, np.array(offset) * h)
    cover = ball_cover(ctr, h, np.zeros(3), RHO)
    assert np.all((cover >= 0.0) & (cover <= 1.0))
    assert cover.sum() * h**3 == pytest.approx(4.0 / 3.0 * math.pi * RHO**3, rel=1e-2)
    # cells entirely inside have share 1, cells entirely outside 0
    d = np.linalg.norm(ctr, axis=1)
    assert np.all(cover[d + 0.87 * h <= RHO] == 1.0) and np.all(cover[d - 0.87 * h >= RHO] == 0.0)


@pytest.mark.parametrize("h", [1.0e-3, 0.5e-3])
@pytest.mark.parametrize("offset", [(0.0, 0.0), (0.31, 0.17), (0.5, 0.5)])
def test_segment_cover_sums_to_the_cylinder_volume(h, offset):
    """A cylinder piece along z, 4 mm of whole cell layers, through a generic point of the
    cross-section: its shares sum to pi rho^2 4 mm, and cells outside the piece get none."""
    ctr = _grid(h, 4.5e-3, np.array([offset[0], offset[1], 0.5]) * h)
    cover = segment_cover(ctr, h, np.zeros(3), np.array([0.0, 0.0, 4.0e-3]), RHO)
    assert np.all((cover >= 0.0) & (cover <= 1.0))
    assert cover.sum() * h**3 == pytest.approx(math.pi * RHO**2 * 4.0e-3, rel=1e-2)
    assert np.all(cover[(ctr[:, 2] < 0.0) | (ctr[:, 2] > 4.0e-3)] == 0.0)


def test_overlap_of_ball_and_cylinder_converges_where_centre_membership_does_not():
    """The volume a 2 mm ball shares with a 2 mm cylinder 2 mm away: the covered shares converge to
    the fine-grid value (error falling with h), the centre test misses it by several per cent at 1 mm."""
    direction = np.array([0.0, 0.6, 0.8])
    axis_point = np.array([2.0e-3, 0.0, 0.0])
    h_ref = 0.125e-3
    ctr = _grid(h_ref, 4.0e-3, np.array([0.5, 0.5, 0.5]) * h_ref)
    # a piece that crosses the whole box stands for the infinite cylinder
    start, end = axis_point - 8.0e-3 * direction, axis_point + 8.0e-3 * direction
    ref = np.sum(ball_cover(ctr, h_ref, np.zeros(3), RHO) * segment_cover(ctr, h_ref, start, end, RHO))
    ref *= h_ref**3
    err_cover, err_centre = [], []
    for h in (1.0e-3, 0.5e-3):
        ctr = _grid(h, 4.0e-3, np.array([0.37, 0.11, 0.23]) * h)
        ball = ball_cover(ctr, h, np.zeros(3), RHO)
        cyl = segment_cover(ctr, h, start, end, RHO)
        err_cover.append(abs(np.sum(ball * cyl) * h**3 / ref - 1.0))
        rel = ctr - axis_point
        d_line = np.linalg.norm(rel - (rel @ direction)[:, None] * direction, axis=1)
        centre = (np.linalg.norm(ctr, axis=1) <= RHO) & (d_line <= RHO)
        err_centre.append(abs(np.sum(centre) * h**3 / ref - 1.0))
    assert err_cover[0] < 0.03 and err_cover[1] < 0.01
    assert err_cover[1] < err_cover[0]
    assert err_centre[0] > 2.0 * err_cover[0]


def test_degenerate_inputs():
    """No cells give no shares; a zero-length piece is refused instead of silently covering nothing."""
    assert ball_cover(np.empty(0), 1.0e-3, np.zeros(3), RHO).shape == (0,)
    assert segment_cover(np.empty((0, 3)), 1.0e-3, np.zeros(3), np.array([0.0, 0.0, 1.0e-3]), RHO).shape == (
        0,
    )
    with pytest.raises(ValueError, match="non-zero"):
        segment_cover(np.zeros((1, 3)), 1.0e-3, np.zeros(3), np.zeros(3), RHO)


@pytest.mark.parametrize("h", [1.0e-3, 0.5e-3])
def test_cylinder_pieces_sum_to_the_piece_volume_and_share_out_each_cell(h):
    """An oblique 4 mm cylinder piece: its covered shares sum to pi rho^2 L within 1 %; split into
    n pieces shorter than a cell, every piece has cells, each piece holds about pi rho^2 L / n, and each
    cell's shares over the pieces add up to its share of the whole piece (each sub-cell counted once)."""
    direction = np.array([1.0, 2.0, 2.0]) / 3.0
    start = np.array([0.37, -0.21, 0.13]) * h - 2.0e-3 * direction
    end = start + 4.0e-3 * direction
    ctr = _grid(h, 5.0e-3, np.zeros(3))
    whole = segment_cover(ctr, h, start, end, RHO)
    assert whole.sum() * h**3 == pytest.approx(math.pi * RHO**2 * 4.0e-3, rel=1e-2)
    n = int(math.ceil(4.0e-3 / h)) + 3  # pieces shorter than a cell
    cell, piece, share = piece_covers(ctr, h, start, end, RHO, n)
    per_piece = np.bincount(piece, weights=share, minlength=n) * h**3
    assert np.all(per_piece > 0.0)
    assert per_piece == pytest.approx(np.full(n, math.pi * RHO**2 * 4.0e-3 / n), rel=0.15)
    np.testing.assert_allclose(np.bincount(cell, weights=share, minlength=ctr.shape[0]), whole, atol=1e-12)


def test_piece_covers_refuses_a_zero_length_or_no_pieces():
    with pytest.raises(ValueError, match="non-zero length"):
        piece_covers(np.zeros((1, 3)), 1.0e-3, np.zeros(3), np.zeros(3), RHO)
    with pytest.raises(ValueError, match="n_pieces"):
        piece_covers(np.zeros((1, 3)), 1.0e-3, np.zeros(3), np.ones(3) * 1e-3, RHO, 0)
