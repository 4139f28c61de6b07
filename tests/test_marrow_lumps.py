"""The block-wise search of the front system's marrow regions (sim.physics.marrow_lumps) against a
direct one (scipy's connected components over every marrow-marrow face): the same regions, numbered
alike, on grids whose blocks are cut by cement walls, hold enclosed pockets, are not connected inside,
and carry extra (vein) nodes of their own."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from sim.physics.marrow_lumps import BLOCK, front_unknowns_by_blocks, marrow_blocks
from sim.physics.pressure import _grid_faces


def _reference(n, face_a, face_b, in_cement):
    keep = ~in_cement[face_a] & ~in_cement[face_b]
    adj = sp.coo_matrix((np.ones(int(keep.sum())), (face_a[keep], face_b[keep])), shape=(n, n))
    _, label = connected_components(adj, directed=False)
    unknown = np.empty(n, dtype=np.int64)
    nc = int(in_cement.sum())
    unknown[in_cement] = np.arange(nc)
    seen: dict[int, int] = {}
    for i in np.flatnonzero(~in_cement):  # regions in the order of their first node
        unknown[i] = nc + seen.setdefault(int(label[i]), len(seen))
    return unknown, nc, len(seen)


def _graph(rng, shape, porous_share, n_extra):
    """Compact nodes: the porous cells of a random mask, then ``n_extra`` extra nodes (extended flat
    indices past the grid, like vein nodes) each tied to a few random cells and to each other."""
    porous = rng.random(shape) < porous_share
    a, b, _ = _grid_faces(porous)
    n_grid = int(np.prod(shape))
    cells = np.flatnonzero(porous.ravel())
    cell_of = np.concatenate([cells, n_grid + np.arange(n_extra)])
    compact = -np.ones(n_grid + n_extra, dtype=np.int64)
    compact[cell_of] = np.arange(cell_of.size)
    fa, fb = [compact[a]], [compact[b]]
    for v in range(n_extra):
        node = cells.size + v
        fa.append(rng.choice(cells.size, 3, replace=False))
        fb.append(np.full(3, node))
        if v:
            fa.append(np.array([node - 1]))
            fb.append(np.array([node]))
    return cell_of, np.concatenate(fa).astype(np.int64), np.concatenate(fb).astype(np.int64)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_block_search_finds_the_regions_of_the_direct_search(seed):
    rng = np.random.default_rng(seed)
    shape = (17, 13, 11)
    cell_of, face_a, face_b = _graph(rng, shape, 0.97 if seed % 2 else 0.8, 6 * seed)
    n = cell_of.size
    blocks = marrow_blocks(shape, cell_of, face_a, face_b)
    if seed % 2 == 0:  # a sparse porous mask: blocks not connected inside exist and are searched face by face
        assert not blocks.connected.all()
    grid = np.zeros(shape, dtype=bool)
    grid[8] = True  # a wall across the grid
    grid[2:7, 2:7, 2:7] = True  # a shell around a pocket
    grid[3:6, 3:6, 3:6] = False
    n_grid = int(np.prod(shape))
    walls = np.zeros(n, dtype=bool)
    on_grid = cell_of < n_grid
    walls[on_grid] = grid.ravel()[cell_of[on_grid]]
    masks = [
        walls | (rng.random(n) < 0.02),
        rng.random(n) < 0.3,
        np.zeros(n, dtype=bool),
        np.ones(n, dtype=bool),
        ~walls & (rng.random(n) < 0.5),
    ]
    for in_cement in masks:
        got = front_unknowns_by_blocks(blocks, face_a, face_b, in_cement)
        want = _reference(n, face_a, face_b, in_cement)
        assert got[1:] == want[1:]
        assert np.array_equal(got[0], want[0])
    # the wall and the shell cut the marrow into at least three regions (both sides, the pocket),
    # unless extra nodes tie them together
    if seed == 0:
        assert front_unknowns_by_blocks(blocks, face_a, face_b, masks[0])[2] >= 3


def test_blocks_cover_every_node_once_and_list_every_face():
    rng = np.random.default_rng(9)
    shape = (9, 10, 5)
    cell_of, face_a, face_b = _graph(rng, shape, 1.0, 3)
    blocks = marrow_blocks(shape, cell_of, face_a, face_b)
    n = cell_of.size
    counts = np.bincount(blocks.block_of)
    assert counts.max() <= BLOCK**3 and counts[-3:].tolist() == [1, 1, 1]  # an extra node is a block alone
    assert np.array_equal(blocks.first, [np.flatnonzero(blocks.block_of == b)[0] for b in range(counts.size)])
    for b in range(counts.size):
        listed = set(blocks.face_ids[blocks.face_ptr[b] : blocks.face_ptr[b + 1]].tolist())
        touching = set(
            np.flatnonzero((blocks.block_of[face_a] == b) | (blocks.block_of[face_b] == b)).tolist()
        )
        assert listed == touching
    assert n == blocks.block_of.size and blocks.connected.all()  # a full grid: every block connected inside
