"""The connected marrow regions ("lumps") of the front pressure system, found block by block.

The front system (:func:`sim.physics.pressure.assemble_front`) gives every cement cell an unknown and
every connected region of the other nodes (marrow, or blood in a vein without cement) one isobaric
unknown. Finding the regions by a union-find over every face costs a pass over all faces per step,
though the cement, which is what splits regions, fills a small part of the grid.

Here the grid is cut into blocks of ``BLOCK`` ^3 cells (a vein node is a block of its own), once per
graph. A block without cement whose cells are connected through its own faces lies inside one
region, so it enters the union-find as a single node (its first cell): the blocks next to each other
are joined once per block pair, and only the faces of the blocks that hold cement (or are not
connected inside) are visited one by one. The regions are the same sets as the union-find over every
face, numbered alike (in the order of each region's first cell), so the unknowns are identical
(tested against the scipy reference, :func:`sim.physics.pressure.assemble_front_reference`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

BLOCK = 4  # cells per block edge: 64 cells, about 190 faces


@dataclass(frozen=True)
class MarrowBlocks:
    """Blocks of the graph's nodes, built once per graph by :func:`marrow_blocks` and kept on it
    (about 8 bytes per node and 10 per face: 7 MB at 0.5 mm, 55 MB at 0.25 mm for an L1 body)."""

    block_of: np.ndarray  # int64 (n,): block of each node
    first: np.ndarray  # int64 (nb,): first (lowest) node of each block
    connected: np.ndarray  # bool (nb,): the block's nodes are connected through its own faces
    pair_a: np.ndarray  # int64: blocks joined by at least one face, each pair once
    pair_b: np.ndarray
    face_ptr: np.ndarray  # CSR (nb + 1,) of the faces touching each block
    face_ids: np.ndarray


def marrow_blocks(
    shape: tuple[int, int, int], cell_of: np.ndarray, face_a: np.ndarray, face_b: np.ndarray
) -> MarrowBlocks:
    """The blocks of a graph: grid cells (extended flat index below prod(shape)) by their BLOCK^3
    block, each other node (a vein node) alone."""
    n = cell_of.shape[0]
    n_grid = int(np.prod(shape))
    grid = cell_of < n_grid
    ijk = np.unravel_index(cell_of[grid], shape)
    nbs = [-(-s // BLOCK) for s in shape]
    grid_block = (ijk[0] // BLOCK * nbs[1] + ijk[1] // BLOCK) * nbs[2] + ijk[2] // BLOCK
    _, grid_block = np.unique(grid_block, return_inverse=True)  # only blocks that hold a node
    block_of = np.empty(n, dtype=np.int64)
    block_of[grid] = grid_block
    n_grid_blocks = int(grid_block.max()) + 1 if grid_block.size else 0
    block_of[~grid] = n_grid_blocks + np.arange(int((~grid).sum()))
    nb = n_grid_blocks + int((~grid).sum())
    first = np.full(nb, n, dtype=np.int64)
    np.minimum.at(first, block_of, np.arange(n, dtype=np.int64))
    ba, bb = block_of[face_a], block_of[face_b]
    inside = ba == bb
    adj = sp.coo_matrix((np.ones(int(inside.sum())), (face_a[inside], face_b[inside])), shape=(n, n))
    _, label = connected_components(adj, directed=False)
    # a block is connected when all its nodes carry its first node's label
    connected = np.ones(nb, dtype=bool)
    np.logical_and.at(connected, block_of, label == label[first[block_of]])
    lo, hi = np.minimum(ba[~inside], bb[~inside]), np.maximum(ba[~inside], bb[~inside])
    pairs = np.unique(lo * nb + hi)
    ends = np.concatenate([ba, bb[~inside]])
    ids = np.concatenate([np.arange(face_a.size), np.flatnonzero(~inside)])
    order = np.argsort(ends, kind="stable")
    face_ptr = np.zeros(nb + 1, dtype=np.int64)
    face_ptr[1:] = np.cumsum(np.bincount(ends, minlength=nb))
    return MarrowBlocks(
        block_of=block_of,
        first=first,
        connected=connected,
        pair_a=(pairs // nb).astype(np.int64),
        pair_b=(pairs % nb).astype(np.int64),
        face_ptr=face_ptr,
        face_ids=ids[order].astype(np.int64),
    )


def front_unknowns_by_blocks(
    blocks: MarrowBlocks, face_a: np.ndarray, face_b: np.ndarray, in_cement: np.ndarray
) -> tuple[np.ndarray, int, int]:
    """Unknown of every node (cement nodes 0..nc-1 in node order, then one per connected region of
    the other nodes, in the order of each region's first node), nc and the number of regions."""
    unknown, nc, n_lumps = _unknowns_kernel(
        blocks.block_of, blocks.first, blocks.connected, blocks.pair_a, blocks.pair_b,
        blocks.face_ptr, blocks.face_ids, face_a, face_b, np.ascontiguousarray(in_cement, dtype=np.bool_),
    )  # fmt: skip
    return unknown, int(nc), int(n_lumps)


@numba.njit(cache=True)
def _find(parent, x):
    """Root of ``x`` in the union-find forest ``parent``."""
    while parent[x] != x:  # path halving
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x


@numba.njit(cache=True)
def _union(parent, a, b):
    """Join the trees of ``a`` and ``b`` under the lower root (the lower root stays a root)."""
    a = _find(parent, a)
    b = _find(parent, b)
    if a < b:
        parent[b] = a
    elif b < a:
        parent[a] = b


@numba.njit(cache=True)
def _unknowns_kernel(
    block_of, first, connected, pair_a, pair_b, face_ptr, face_ids, face_a, face_b, in_cement
):
    """:func:`front_unknowns_by_blocks` on the blocks' arrays: (unknown, nc, n_lumps)."""
    n = block_of.shape[0]
    nb = first.shape[0]
    # a block is visited face by face when it holds cement or is not connected through its own faces
    open_ = ~connected
    for i in range(n):
        if in_cement[i]:
            open_[block_of[i]] = True
    node = np.empty(n, dtype=np.int64)  # a node's representative: itself, or its closed block's first node
    for i in range(n):
        b = block_of[i]
        node[i] = i if open_[b] else first[b]
    parent = np.arange(n)
    for p in range(pair_a.shape[0]):  # two closed blocks side by side: one region
        a, b = pair_a[p], pair_b[p]
        if not open_[a] and not open_[b]:
            _union(parent, first[a], first[b])
    for b in range(nb):
        if not open_[b]:
            continue
        for j in range(face_ptr[b], face_ptr[b + 1]):
            f = face_ids[j]
            x, y = face_a[f], face_b[f]
            if in_cement[x] or in_cement[y]:
                continue
            _union(parent, node[x], node[y])
    unknown = np.empty(n, dtype=np.int64)
    nc = 0
    for i in range(n):
        if in_cement[i]:
            unknown[i] = nc
            nc += 1
    label = -np.ones(n, dtype=np.int64)
    n_lumps = 0
    for i in range(n):
        if in_cement[i]:
            continue
        r = _find(parent, node[i])
        if label[r] < 0:
            label[r] = n_lumps
            n_lumps += 1
        unknown[i] = nc + label[r]
    return unknown, nc, n_lumps
