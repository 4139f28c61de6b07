"""Pressure equation of the cement injection: TPFA on porous cells, SPD systems, linear solvers.

Equation. Incompressible two-phase Darcy flow, div(lambda grad p) = -q, with total mobility
lambda = k (S/mu_c + (1-S)/mu_m) (per-direction permeability k, Aziz & Settari 1979; in the vein lumens the
series column mobility of :func:`sim.physics.injection.mixture_mobility`). Two-point
flux approximation on the uniform grid of spacing h between porous cells a, b sharing a face:

    F_ab = T_ab (p_a - p_b),   T_ab = 1 / (1 / (g_a lambda_a) + 1 / (g_b lambda_b)),   g = 2 h k_d,

the series conductance of two half cells of area h^2 and length h/2 (g in m^3; lambda_rel in
1/(Pa s)). Non-porous cells are no-flow. Intraosseous veins embedded in the bone
(:mod:`sim.physics.embedded_vessels`) are further nodes of the same graph, numbered after the grid
cells: a vein-vein face has g = 2 pi d^4 / (128 L) on each side (Hagen-Poiseuille halves), a
vein-cell face the well index on the cell's side and an infinite conductance on the vein's (the
near-vessel resistance is all in the matrix), so T = WI lambda_cell.

The needle adds the injected flow q to its tip cell; venous exits drain their nodes through Robin
terms q_e = g_e (p_node - p_vein,e) whose conductances the exchange law gives
(:mod:`sim.physics.bone_vein_exchange`).

Each row is a cell's volume balance, so the matrix is a symmetric M-matrix, positive definite
when a Robin exit is reachable. Pressures are solved as p - p_shift (p_shift = mean venous
pressure), which keeps the right-hand side of the order of the injected flow: the residual
then bounds the volume imbalance directly (mass balance is checked to 1e-10 by the driver).

Two systems are assembled: the full one on every reachable porous cell (the IMPES reference)
and the reduced "front" system, where every connected marrow region (cells with no cement) is
lumped into a single isobaric unknown. With mu_c >> mu_m the marrow pressure varies by
~mu_m/mu_c of the cement pressure drop, so the lump is accurate to that order while the
system shrinks to the cement-filled cells (cf. the vented fill-factor scheme of resin transfer
moulding, e.g. Bruschke & Advani 1990, Polym Compos 11:398).

Solvers (OpenPNM-style: one ``solve(A, b, x0)``): "direct" (SuperLU; refused above 3e4
unknowns, 3D fill-in makes it slow), "amg" (pyamg smoothed aggregation as CG preconditioner,
hierarchy reused while the iteration count stays low, Bell, Olson & Schroder 2022, JOSS 7:4142),
"cg" (Jacobi-preconditioned CG), "iccg" (CG preconditioned by an incomplete Cholesky factorisation,
:mod:`sim.physics.incomplete_cholesky`), "auto" (direct for small systems; else amg where a hierarchy
can be reused, iccg where it cannot up to 200k unknowns, amg above).
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numba
import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from scipy.sparse.csgraph import connected_components

from sim.core.errors import GeometryError, SolverError
from sim.core.grid import EmbeddedVessels
from sim.physics.incomplete_cholesky import csr_index_arrays, ic0_cg, ic0_factor
from sim.physics.marrow_lumps import MarrowBlocks, front_unknowns_by_blocks, marrow_blocks

DIRECT_MAX_UNKNOWNS = 30_000
AUTO_DIRECT_BELOW = 1_500
ACCEPT_RESIDUAL = 1e-6  # largest true relative residual a pressure solve may return
REFINEMENTS = 2  # correction solves on the true residual before a solve is refused
# a solve whose relative residual stays above ACCEPT_RESIDUAL is still accepted when that residual is at most
# RELAXED_RESIDUAL and its normwise backward error at most ACCEPT_BACKWARD_ERROR (about 5 units of round-off):
# see backward_error
RELAXED_RESIDUAL = 1e-4
ACCEPT_BACKWARD_ERROR = 1e-15
# 'auto' for systems whose AMG hierarchy cannot be reused (the front method's cement block changes
# at every step, so every solve would pay a set-up): IC(0)-CG up to this many unknowns, AMG above
# (unmeasured there). Jacobi-CG was 1.43x faster than AMG on whole runs of 6 cohort patients (1 mm);
# IC(0)-CG needs 3-7x fewer iterations than Jacobi-CG at a factorisation of a few matvecs (ratios in
# benchmarks/bench_pressure.py). On the largest systems measured, cohort patient 1's 7.5 ml at 0.5 and
# 0.375 mm (about 70k and 160k cement cells), IC(0)-CG took 52 / 194 s against AMG's 163 / about 3,100 s
# per run, with the same results to 1e-10 (session 20; the cap was 60k before). Systems with a fixed block
# (impes) keep AMG with hierarchy reuse.
AUTO_CG_BELOW_WITHOUT_REUSE = 200_000
SOLVERS = ("auto", "amg", "direct", "cg", "iccg")


VESSEL_FACE = 3  # face_dir of faces that are not grid faces (vein-vein, vein-cell)


@dataclass
class CellGraph:
    """Reachable nodes in compact numbering (porous cells, then vein nodes) and their faces.

    Nodes carry an extended flat index: a grid cell its flat index ``c``, vein node ``v`` the index
    ``n_grid + v`` (``n_grid`` = number of grid cells), so sources and exits can name either.
    """

    shape: tuple[int, int, int]
    spacing_m: float
    cell_of: np.ndarray  # int64 (n,): compact -> extended flat index
    compact: np.ndarray  # int64 (n_grid + n_vessel_nodes,): extended flat index -> compact, -1 if none
    face_a: np.ndarray  # int64 (nf,)
    face_b: np.ndarray  # int64 (nf,)
    face_dir: np.ndarray  # int8 (nf,): 0 x, 1 y, 2 z, VESSEL_FACE otherwise
    face_g_a: np.ndarray  # float64 (nf,): geometric half conductance on a's side (m^3; inf allowed)
    face_g_b: np.ndarray
    # CSR adjacency per cell (see sim.physics.cement_transport): built from face_a / face_b, so a graph
    # whose faces are replaced needs it rebuilt (front_faces reads it)
    cell_ptr: np.ndarray
    cell_face: np.ndarray
    cell_nbr: np.ndarray
    cell_sign: np.ndarray
    n_isolated: int  # porous cells not connected to the needle tip (excluded)
    # the blocks of the marrow-region search (sim.physics.marrow_lumps), built on first use; not an
    # init field, so dataclasses.replace never carries blocks over to changed faces
    _marrow_blocks: MarrowBlocks | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def n(self) -> int:
        return int(self.cell_of.shape[0])

    @property
    def n_faces(self) -> int:
        return int(self.face_a.shape[0])

    @property
    def n_grid(self) -> int:
        """Number of cells of the grid (extended flat indices below it are grid cells)."""
        return int(np.prod(self.shape))

    @property
    def is_grid_cell(self) -> np.ndarray:
        """bool (n,): the node is a grid cell (not a vein node)."""
        return self.cell_of < self.n_grid


def _grid_faces(porous: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat index pairs (a, b) of face-adjacent porous cells and the face direction."""
    shape = porous.shape
    flat = np.arange(porous.size, dtype=np.int64).reshape(shape)
    a_list, b_list, d_list = [], [], []
    for d in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[d] = slice(0, -1)
        hi[d] = slice(1, None)
        both = porous[tuple(lo)] & porous[tuple(hi)]
        a_list.append(flat[tuple(lo)][both])
        b_list.append(flat[tuple(hi)][both])
        d_list.append(np.full(int(both.sum()), d, dtype=np.int8))
    return np.concatenate(a_list), np.concatenate(b_list), np.concatenate(d_list)


def build_cell_graph(
    porous: np.ndarray,
    permeability: np.ndarray,
    spacing_m: float,
    seed_cells: np.ndarray,
    exit_cells: np.ndarray,
    vessels: EmbeddedVessels | None = None,
) -> CellGraph:
    """Compact graph of the porous cells and vein nodes connected to ``seed_cells`` (the needle tips).

    ``seed_cells`` and ``exit_cells`` are extended flat indices (see :class:`CellGraph`). Raises
    GeometryError when a tip is not porous or when no exit is reachable from a tip (incompressible
    cement would have nowhere to push the marrow).
    """
    porous = np.asarray(porous, dtype=bool)
    h = float(spacing_m)
    n_grid = porous.size
    n_vessel = 0 if vessels is None else vessels.n_nodes
    seed_cells = np.asarray(seed_cells, dtype=np.int64)
    flat_porous = porous.ravel()
    grid_seed = seed_cells[seed_cells < n_grid]
    if np.any(~flat_porous[grid_seed]):
        bad = grid_seed[~flat_porous[grid_seed]]
        raise GeometryError(f"needle tip cells {bad.tolist()[:5]} are not porous (cement cannot enter)")
    a, b, d = _grid_faces(porous)
    kflat = permeability.reshape(3, -1)
    g_a = 2.0 * h * kflat[d, a]
    g_b = 2.0 * h * kflat[d, b]
    if vessels is not None and n_vessel:
        ok = flat_porous[vessels.well_cell]
        g_edge = 2.0 * vessels.edge_conductance_m3()
        a = np.concatenate([a, n_grid + vessels.edge_a, vessels.well_cell[ok]])
        b = np.concatenate([b, n_grid + vessels.edge_b, n_grid + vessels.well_node[ok]])
        d = np.concatenate([d, np.full(vessels.edge_a.size + int(ok.sum()), VESSEL_FACE, dtype=np.int8)])
        g_a = np.concatenate([g_a, g_edge, vessels.well_index_m3[ok]])
        g_b = np.concatenate([g_b, g_edge, np.full(int(ok.sum()), np.inf)])
    nodes = np.concatenate([np.flatnonzero(flat_porous), n_grid + np.arange(n_vessel)])
    tmp = -np.ones(n_grid + n_vessel, dtype=np.int64)
    tmp[nodes] = np.arange(nodes.size)
    adj = sp.coo_matrix((np.ones(a.size), (tmp[a], tmp[b])), shape=(nodes.size,) * 2)
    _, labels = connected_components(adj, directed=False)
    keep_labels = np.unique(labels[tmp[seed_cells]])
    keep = np.isin(labels, keep_labels)
    exit_cells = np.asarray(exit_cells, dtype=np.int64)
    for lab in keep_labels:
        comp = nodes[labels == lab]
        if not np.any(np.isin(exit_cells, comp)):
            raise GeometryError(
                f"no venous exit is reachable from the needle tip region ({comp.size} porous cells "
                "connected to the tip, none drained by an exit): the cement could not displace marrow"
            )
    cell_of = nodes[keep]
    compact = -np.ones(n_grid + n_vessel, dtype=np.int64)
    compact[cell_of] = np.arange(cell_of.size)
    fk = (compact[a] >= 0) & (compact[b] >= 0)
    fa, fb, fd = compact[a][fk], compact[b][fk], d[fk]
    ga, gb = g_a[fk], g_b[fk]
    if np.any(ga <= 0.0) or np.any(gb <= 0.0):
        bad = cell_of[fa[ga <= 0.0]] if np.any(ga <= 0.0) else cell_of[fb[gb <= 0.0]]
        raise GeometryError(f"porous cells with non-positive permeability, e.g. flat index {int(bad[0])}")
    n = cell_of.size
    nf = fa.size
    ends = np.concatenate([fa, fb])
    order = np.argsort(ends, kind="stable")
    cell_ptr = np.zeros(n + 1, dtype=np.int64)
    cell_ptr[1:] = np.cumsum(np.bincount(ends, minlength=n))
    faces = np.concatenate([np.arange(nf), np.arange(nf)])[order]
    nbrs = np.concatenate([fb, fa])[order]
    signs = np.concatenate([np.ones(nf), -np.ones(nf)])[order]
    return CellGraph(
        shape=tuple(porous.shape),
        spacing_m=h,
        cell_of=cell_of,
        compact=compact,
        face_a=np.ascontiguousarray(fa),
        face_b=np.ascontiguousarray(fb),
        face_dir=fd,
        face_g_a=np.ascontiguousarray(ga, dtype=np.float64),
        face_g_b=np.ascontiguousarray(gb, dtype=np.float64),
        cell_ptr=cell_ptr,
        cell_face=np.ascontiguousarray(faces, dtype=np.int64),
        cell_nbr=np.ascontiguousarray(nbrs, dtype=np.int64),
        cell_sign=np.ascontiguousarray(signs, dtype=np.float64),
        n_isolated=int(nodes.size - n),
    )


def face_transmissibility(
    graph: CellGraph, mobility_rel: np.ndarray, faces: np.ndarray | None = None
) -> np.ndarray:
    """Series conductance 1 / (1/(g_a lambda_a) + 1/(g_b lambda_b)) of every face (m^3/(Pa s)).

    With ``faces`` (ascending indices, e.g. :func:`front_faces`) only those faces are computed, the
    others are 0: one numba pass over the listed faces, each value bit for bit the array formula's.
    """
    if faces is not None:
        return _listed_transmissibility(
            graph.face_a, graph.face_b, graph.face_g_a, graph.face_g_b,
            np.ascontiguousarray(mobility_rel, dtype=np.float64), faces,
        )  # fmt: skip
    with np.errstate(divide="ignore"):
        inv = 1.0 / (graph.face_g_a * mobility_rel[graph.face_a]) + 1.0 / (
            graph.face_g_b * mobility_rel[graph.face_b]
        )
    return 1.0 / inv


@numba.njit(cache=True, error_model="numpy")
def _listed_transmissibility(face_a, face_b, g_a, g_b, mobility, faces):
    out = np.zeros(face_a.shape[0])
    for k in range(faces.shape[0]):
        f = faces[k]
        inv = 1.0 / (g_a[f] * mobility[face_a[f]]) + 1.0 / (g_b[f] * mobility[face_b[f]])
        out[f] = 1.0 / inv
    return out


def front_faces(graph: CellGraph, in_cement: np.ndarray) -> np.ndarray:
    """Ascending indices of the faces with a cement cell on at least one side.

    In the front system these are the only faces that matter: a face between two marrow cells lies
    inside one isobaric region (one lump, one pressure), so it has no matrix entry and its flux is
    exactly 0 whatever its transmissibility. Passes that only read such faces' fluxes (the Darcy
    speed, the time step, the transport's active set) can skip the rest bit for bit.
    """
    if graph.cell_ptr[-1] != 2 * graph.n_faces:
        raise ValueError(
            f"front_faces: the graph's adjacency lists hold {int(graph.cell_ptr[-1])} entries for "
            f"{graph.n_faces} faces (expected twice as many): rebuilt faces need rebuilt lists"
        )
    cement = np.flatnonzero(in_cement)
    return _front_face_kernel(graph.n_faces, graph.cell_ptr, graph.cell_face, cement)


@numba.njit(cache=True)
def _front_face_kernel(nf, cell_ptr, cell_face, cement_cells):
    """Ascending indices of the faces in the adjacency lists of ``cement_cells``: marked, then read
    back in face order."""
    mark = np.zeros(nf, dtype=np.bool_)
    m = 0
    for c in cement_cells:
        for j in range(cell_ptr[c], cell_ptr[c + 1]):
            f = cell_face[j]
            if not mark[f]:
                mark[f] = True
                m += 1
    out = np.empty(m, dtype=np.int64)
    k = 0
    for f in range(nf):
        if mark[f]:
            out[k] = f
            k += 1
    return out


def listed_face_flux(
    graph: CellGraph, trans: np.ndarray, pressure: np.ndarray, faces: np.ndarray
) -> np.ndarray:
    """T (p_a - p_b) on the listed faces, 0 on the others (bit for bit the array formula there)."""
    return _listed_flux(
        graph.face_a, graph.face_b, trans, np.ascontiguousarray(pressure, dtype=np.float64), faces
    )


@numba.njit(cache=True)
def _listed_flux(face_a, face_b, trans, pressure, faces):
    out = np.zeros(face_a.shape[0])
    for k in range(faces.shape[0]):
        f = faces[k]
        out[f] = trans[f] * (pressure[face_a[f]] - pressure[face_b[f]])
    return out


@dataclass
class PressureSystem:
    """An assembled SPD pressure system and the map from cells to its unknowns.

    Full system: one unknown per cell. Front system: cement cells first (``n_block`` of them),
    then one isobaric unknown per connected marrow region ("lump").
    """

    matrix: sp.csr_matrix
    unknown_of_cell: np.ndarray  # int64 (n,)
    n_block: int  # leading unknowns that are single cells (AMG block)
    exit_unknown: np.ndarray  # int64: unknown of each exit entry

    @property
    def n_unknowns(self) -> int:
        return int(self.matrix.shape[0])

    def rhs(self, source: np.ndarray, exit_cond: np.ndarray, exit_p_shifted: np.ndarray) -> np.ndarray:
        """Right-hand side: cell sources (m^3/s) + Robin exit terms g * (p_vein - p_shift).

        The sources are summed over the cells that have one (a few needle cells): the zeros of the
        others add nothing, so the sums are bit for bit those over every cell."""
        nu = self.n_unknowns
        with_source = np.flatnonzero(source)
        return np.bincount(
            self.unknown_of_cell[with_source], weights=source[with_source], minlength=nu
        ) + np.bincount(self.exit_unknown, weights=exit_cond * exit_p_shifted, minlength=nu)

    def cell_values(self, x: np.ndarray) -> np.ndarray:
        return x[self.unknown_of_cell]

    def initial_guess(self, cell_p: np.ndarray) -> np.ndarray:
        """Each unknown's mean of ``cell_p`` over its cells (the previous solve's pressures)."""
        return _unknown_means(
            self.n_unknowns, self.unknown_of_cell, np.ascontiguousarray(cell_p, dtype=np.float64)
        )


@numba.njit(cache=True)
def _unknown_means(nu, unknown, cell_p):
    """Mean of ``cell_p`` over the cells of each of the ``nu`` unknowns (0 for an unknown without
    cells), summed in cell order as np.bincount adds its weights: bit for bit
    bincount(unknown, p) / max(count, 1)."""
    total = np.zeros(nu)
    count = np.zeros(nu, dtype=np.int64)
    for i in range(unknown.shape[0]):
        total[unknown[i]] += cell_p[i]
        count[unknown[i]] += 1
    for u in range(nu):
        total[u] /= max(count[u], 1)
    return total


def _laplacian(nu, ua, ub, trans, ue, exit_cond) -> sp.csr_matrix:
    rows = np.concatenate([ua, ub, ua, ub, ue])
    cols = np.concatenate([ua, ub, ub, ua, ue])
    vals = np.concatenate([trans, trans, -trans, -trans, exit_cond])
    return sp.csr_matrix((vals, (rows, cols)), shape=(nu, nu))


def assemble_full(
    graph: CellGraph, trans: np.ndarray, exit_cell: np.ndarray, exit_cond: np.ndarray
) -> PressureSystem:
    """Full TPFA system on every reachable cell (IMPES reference)."""
    n = graph.n
    mat = _laplacian(n, graph.face_a, graph.face_b, trans, exit_cell, exit_cond)
    return PressureSystem(mat, np.arange(n, dtype=np.int64), n, exit_cell)


def front_unknowns(graph: CellGraph, in_cement: np.ndarray) -> tuple[np.ndarray, int, int]:
    """The front system's unknown of every cell (cement cells 0..nc-1 in cell order, then one per
    connected marrow region, in the order of each region's first cell), nc and the number of
    regions: :func:`sim.physics.marrow_lumps.front_unknowns_by_blocks`, blocks built once per graph."""
    if graph._marrow_blocks is None:
        graph._marrow_blocks = marrow_blocks(graph.shape, graph.cell_of, graph.face_a, graph.face_b)
    return front_unknowns_by_blocks(graph._marrow_blocks, graph.face_a, graph.face_b, in_cement)


@numba.njit(cache=True)
def _front_csr(
    nu: int,
    unknown: np.ndarray,
    face_a: np.ndarray,
    face_b: np.ndarray,
    trans: np.ndarray,
    exit_cell: np.ndarray,
    exit_cond: np.ndarray,
    faces: np.ndarray,
):
    """CSR arrays (sorted columns, duplicates summed) of the front Laplacian: +T on both diagonals
    and -T off them for every face with a cement side (``faces``, ascending), +g on the diagonal of
    every exit row."""
    nf = faces.shape[0]
    count = np.zeros(nu + 1, dtype=np.int64)
    for k in range(nf):
        f = faces[k]
        ua, ub = unknown[face_a[f]], unknown[face_b[f]]
        if ua == ub:  # inside one marrow region (cement cells have an unknown each)
            continue
        count[ua + 1] += 1
        count[ub + 1] += 1
    start = np.cumsum(count)
    fill = start[:-1].copy()
    raw_col = np.empty(start[-1], dtype=np.int64)
    raw_val = np.empty(start[-1])
    diag = np.zeros(nu)
    for k in range(nf):
        f = faces[k]
        ua, ub = unknown[face_a[f]], unknown[face_b[f]]
        if ua == ub:
            continue
        t = trans[f]
        diag[ua] += t
        diag[ub] += t
        raw_col[fill[ua]] = ub
        raw_val[fill[ua]] = -t
        fill[ua] += 1
        raw_col[fill[ub]] = ua
        raw_val[fill[ub]] = -t
        fill[ub] += 1
    for e in range(exit_cell.shape[0]):
        diag[unknown[exit_cell[e]]] += exit_cond[e]
    # merge duplicate columns row by row (a cell with two faces on one marrow region), add the diagonal
    indptr = np.zeros(nu + 1, dtype=np.int64)
    indices = np.empty(start[-1] + nu, dtype=np.int64)
    data = np.empty(start[-1] + nu)
    slot = -np.ones(nu, dtype=np.int64)
    k = 0
    for r in range(nu):
        row0 = k
        slot[r] = k
        indices[k] = r
        data[k] = diag[r]
        k += 1
        for j in range(start[r], start[r + 1]):
            c = raw_col[j]
            if slot[c] >= 0:
                data[slot[c]] += raw_val[j]
            else:
                slot[c] = k
                indices[k] = c
                data[k] = raw_val[j]
                k += 1
        for j in range(row0, k):
            slot[indices[j]] = -1
        # sort the row by column: insertion sort in place (rows hold a few entries; the columns are
        # distinct after the merge, so any correct sort gives the same row)
        for j in range(row0 + 1, k):
            c, v = indices[j], data[j]
            i = j - 1
            while i >= row0 and indices[i] > c:
                indices[i + 1] = indices[i]
                data[i + 1] = data[i]
                i -= 1
            indices[i + 1] = c
            data[i + 1] = v
        indptr[r + 1] = k
    return indptr, indices[:k].copy(), data[:k].copy()


def assemble_front(
    graph: CellGraph,
    in_cement: np.ndarray,
    trans: np.ndarray,
    exit_cell: np.ndarray,
    exit_cond: np.ndarray,
    faces: np.ndarray | None = None,
    unknowns: tuple[np.ndarray, int, int] | None = None,
) -> PressureSystem:
    """Front system: cement cells + one isobaric unknown per connected marrow region.

    Faces between two marrow cells drop out (their region is isobaric); faces between a cement
    cell and a marrow cell couple the cell to its region's lump; exits of marrow cells drain the
    lump. Row sums are the same volume balances as in the full system, so conservation is exact.
    Assembled by numba kernels on the flat face arrays (regions by a union-find over blocks of cells,
    :mod:`sim.physics.marrow_lumps`; CSR rows merged in place); :func:`assemble_front_reference` is
    the same system by scipy, for the tests.
    ``faces`` and ``unknowns``: :func:`front_faces` and :func:`front_unknowns` of ``in_cement``
    when the caller has them.
    """
    if faces is None:
        faces = front_faces(graph, in_cement)
    unknown, nc, n_lumps = front_unknowns(graph, in_cement) if unknowns is None else unknowns
    nu = nc + n_lumps
    indptr, indices, data = _front_csr(
        nu,
        unknown,
        graph.face_a,
        graph.face_b,
        np.ascontiguousarray(trans, dtype=np.float64),
        np.ascontiguousarray(exit_cell, dtype=np.int64),
        np.ascontiguousarray(exit_cond, dtype=np.float64),
        faces,
    )
    mat = sp.csr_matrix((data, indices, indptr), shape=(nu, nu))
    mat.has_sorted_indices = True
    mat.has_canonical_format = True
    return PressureSystem(mat, unknown, nc, unknown[exit_cell])


def assemble_front_reference(
    graph: CellGraph,
    in_cement: np.ndarray,
    trans: np.ndarray,
    exit_cell: np.ndarray,
    exit_cond: np.ndarray,
) -> PressureSystem:
    """:func:`assemble_front` by scipy (connected_components, COO to CSR): the tests' reference."""
    n = graph.n
    fa, fb = graph.face_a, graph.face_b
    mm = ~in_cement[fa] & ~in_cement[fb]
    cement_cells = np.flatnonzero(in_cement)
    nc = cement_cells.size
    marrow_cells = np.flatnonzero(~in_cement)
    unknown = -np.ones(n, dtype=np.int64)
    unknown[cement_cells] = np.arange(nc)
    n_lumps = 0
    if marrow_cells.size:
        loc = -np.ones(n, dtype=np.int64)
        loc[marrow_cells] = np.arange(marrow_cells.size)
        adj = sp.coo_matrix(
            (np.ones(int(mm.sum())), (loc[fa[mm]], loc[fb[mm]])), shape=(marrow_cells.size,) * 2
        )
        n_lumps, labels = connected_components(adj, directed=False)
        unknown[marrow_cells] = nc + labels
    keep = ~mm
    ue = unknown[exit_cell]
    mat = _laplacian(nc + n_lumps, unknown[fa[keep]], unknown[fb[keep]], trans[keep], ue, exit_cond)
    return PressureSystem(mat, unknown, nc, ue)


@dataclass
class SolverStats:
    """Counters of a PressureSolver (exposed in InjectionResult.solver_stats)."""

    n_solves: int = 0
    n_iterations: int = 0
    n_setups: int = 0
    n_direct: int = 0
    setup_time_s: float = 0.0
    solve_time_s: float = 0.0
    max_relative_residual: float = 0.0
    max_unknowns: int = 0
    n_refinements: int = 0  # correction solves on the true residual (PressureSolver.solve)
    n_ic_fallbacks: int = 0  # iccg solves whose IC(0) factor broke down and which ran Jacobi-CG
    history: list = field(default_factory=list)

    def as_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "history"}
        return d


AMG_SETUP_SEED = 20251125

# Smoothed aggregation for the cell block.
# - strength theta 0.05: cement and marrow mobilities differ by orders of magnitude, so with
#   pyamg's default (theta 0, every coupling strong) aggregates straddle the cement front and CG
#   needs about 36 V-cycles to reach rtol 1e-12; dropping couplings below 5 % of the diagonal
#   scale halves that (33 captured cohort systems: 35.9 -> 17.6 iterations per solve).
# - max_coarse 300 with a sparse LU there (800-3000 were slower on whole cohort runs).
# - local (row-sum) weighting of the Jacobi prolongation smoother: no spectral-radius estimate.
AMG_OPTIONS: dict = {
    "symmetry": "symmetric",
    "strength": ("symmetric", {"theta": 0.05}),
    "max_coarse": 300,
    "coarse_solver": "splu",
    "smooth": ("jacobi", {"omega": 4.0 / 3.0, "weighting": "local"}),
}


def _bsr_sum_duplicates_vectorised(original):
    """An exact, vectorised ``sum_duplicates`` for scipy BSR matrices without duplicate blocks.

    pyamg's 'local' Jacobi weighting takes ``abs()`` of each coarse operator, a BSR matrix from a
    sparse product; scipy canonicalises it with a Python loop over the block rows (about a tenth
    of a cohort run). A product has no duplicate blocks, so after sorting the indices the matrix
    is already canonical: this checks that with array operations and only falls back to scipy's
    loop when a row does repeat a column (nothing is summed differently, results are bit-identical).
    """

    def sum_duplicates(self) -> None:
        if self.has_canonical_format:
            return
        self.sort_indices()
        starts = np.zeros(self.indices.size, dtype=bool)
        starts[self.indptr[:-1][self.indptr[:-1] < self.indices.size]] = True
        repeats = (self.indices[1:] == self.indices[:-1]) & ~starts[1:]
        if repeats.any():
            original(self)
            return
        self.has_canonical_format = True

    return sum_duplicates


@contextmanager
def _canonical_bsr_fast_path():
    """Use :func:`_bsr_sum_duplicates_vectorised` while a pyamg hierarchy is built, then restore."""
    from scipy.sparse import _bsr

    base = _bsr._bsr_base
    original = base.sum_duplicates
    base.sum_duplicates = _bsr_sum_duplicates_vectorised(original)
    try:
        yield
    finally:
        base.sum_duplicates = original


def _seeded_amg_setup(mat: sp.csr_matrix):
    """Smoothed-aggregation hierarchy that is the same in every process.

    pyamg estimates the spectral radius for its Jacobi prolongation smoother by power iteration
    from ``np.random.rand`` (the global, entropy-seeded generator), so the hierarchy, and with it
    the last bits of every pressure, changed from process to process. The setup runs on a fixed
    seed and the caller's global random state is restored afterwards.
    """
    import pyamg

    # pyamg draws from the legacy global generator; there is no Generator to pass it
    state = np.random.get_state()  # noqa: NPY002
    try:
        np.random.seed(AMG_SETUP_SEED)  # noqa: NPY002
        with _canonical_bsr_fast_path():
            ml = pyamg.smoothed_aggregation_solver(mat, **AMG_OPTIONS)
    finally:
        np.random.set_state(state)  # noqa: NPY002
    # pyamg keeps the levels as 1x1-block BSR matrices, whose Gauss-Seidel and matvec kernels are about
    # four times slower than the CSR ones; the same operators in CSR halve the V-cycle's cost
    for level in ml.levels:
        for name in ("A", "P", "R"):
            if hasattr(level, name) and sp.issparse(getattr(level, name)):
                setattr(level, name, getattr(level, name).tocsr())
    return ml


def backward_error(mat: sp.spmatrix, x: np.ndarray, b: np.ndarray, r: np.ndarray | None = None) -> float:
    """Normwise backward error of x as a solution of A x = b (Rigal & Gaches 1967, J ACM 14:543; Higham
    2002, Accuracy and Stability of Numerical Algorithms, thm 7.1), in the infinity norm:

        eta = ||b - A x|| / (||A|| ||x|| + ||b||),

    the smallest relative perturbation of A and b of which x is the exact solution. The relative residual
    ||b - A x|| / ||b|| cannot fall below about eps ||A|| ||x|| / ||b||, which on systems whose
    mobilities span 14 orders of magnitude (a fracture cleft 1e4 times as permeable as the bone, a wide
    Kozeny-Carman porosity field: ||A|| ||x|| / ||b|| ~ 5e13) can lie above the 1e-6 acceptance whatever
    the solver. On such systems eta alone does not tell a good solution from a bad one (x = 1 on an
    isobaric chain has eta 2.5e-15 and a relative residual of 1.4), so the solver accepts a residual above
    1e-6 only up to RELAXED_RESIDUAL (1e-4, where the pressures' own error is about as large) and with eta
    at round-off (the two fuzzed configs: residuals 1.2e-6 and 1.8e-5, eta 1e-19). Limiting cases (tested):
    0 for the exact solution, 1 for x = 0, NaN for a non-finite x."""
    if r is None:
        r = b - mat @ x
    a_norm = float(abs(mat).sum(axis=1).max()) if mat.shape[0] else 0.0
    den = a_norm * float(np.abs(x).max(initial=0.0)) + float(np.abs(b).max(initial=0.0))
    num = float(np.abs(r).max(initial=0.0))
    if not (math.isfinite(den) and math.isfinite(num)):
        return math.nan
    return num / den if den > 0.0 else 0.0


class PressureSolver:
    """SPD solve ``A x = b`` by direct, AMG-CG (hierarchy reuse), IC(0)-CG or Jacobi-CG.

    ``block`` (optional) is the number of leading unknowns forming the sparse cell block; the
    trailing unknowns (marrow lumps, dense rows) are then preconditioned by their diagonal and
    the AMG hierarchy is built on the cell block only. ``method='auto'``: a sparse LU up to
    AUTO_DIRECT_BELOW unknowns; then AMG-CG, or, when the caller's systems change structure at every
    solve (``reuses_hierarchy=False``), IC(0)-CG up to AUTO_CG_BELOW_WITHOUT_REUSE unknowns (Jacobi-CG
    when its factorisation breaks down, which an M-matrix's cannot).
    """

    def __init__(
        self, method: str = "auto", rtol: float = 1e-12, max_iter: int = 2000, reuses_hierarchy: bool = True
    ):
        if method not in SOLVERS:
            raise SolverError(f"unknown pressure_solver {method!r}; choose one of {', '.join(SOLVERS)}")
        self.method = method
        self.reuses_hierarchy = reuses_hierarchy
        self.rtol = rtol
        self.max_iter = max_iter
        self.stats = SolverStats()
        self._ml = None
        self._ml_key: tuple | None = None
        self._ml_iters = 0
        self._setup_iters = 0

    def _choose(self, n: int) -> str:
        if self.method == "auto":
            if n <= AUTO_DIRECT_BELOW:
                return "direct"
            return "iccg" if not self.reuses_hierarchy and n <= AUTO_CG_BELOW_WITHOUT_REUSE else "amg"
        if self.method == "direct" and n > DIRECT_MAX_UNKNOWNS:
            raise SolverError(
                f"pressure_solver='direct' refused for {n} unknowns (> {DIRECT_MAX_UNKNOWNS}): sparse direct "
                "solves of 3D grids this size are slow; use 'amg' or 'auto'"
            )
        return self.method

    def solve(
        self,
        mat: sp.csr_matrix,
        rhs: np.ndarray,
        x0: np.ndarray | None = None,
        block: int | None = None,
        key: tuple | None = None,
    ) -> np.ndarray:
        """Solve for one or several right-hand sides (columns of ``rhs``)."""
        n = mat.shape[0]
        self.stats.max_unknowns = max(self.stats.max_unknowns, n)
        rhs2 = rhs.reshape(n, -1)
        x0s = None if x0 is None else x0.reshape(n, -1)
        kind = self._choose(n)
        t0 = time.perf_counter()
        prec = lu = None
        if kind == "direct":
            lu = spla.splu(mat.tocsc())
            out = lu.solve(np.ascontiguousarray(rhs2))
            self.stats.n_direct += 1
        else:
            fallbacks = self.stats.n_ic_fallbacks
            prec = self._preconditioner(mat, kind, block, key)
            if self.stats.n_ic_fallbacks > fallbacks:
                kind = "cg after an IC(0) breakdown"
            out = np.empty_like(rhs2)
            for c in range(rhs2.shape[1]):
                guess = None if x0s is None else x0s[:, min(c, x0s.shape[1] - 1)]
                out[:, c] = self._named_cg(mat, rhs2[:, c], guess, prec, kind)
        self.stats.n_solves += rhs2.shape[1]
        for c in range(rhs2.shape[1]):
            bn = np.linalg.norm(rhs2[:, c])
            if bn > 0.0:
                r = rhs2[:, c] - mat @ out[:, c]
                res = np.linalg.norm(r) / bn
                # CG's recursively updated residual drifts from the true one on badly scaled systems
                # (mobilities 1e12 apart: a pinned foramen next to a cement column in a vein lumen),
                # so it can stop at rtol while the true residual is above the acceptance. Iterative
                # refinement: correction solves on the true residual (one brought 1.5e-6 to 2.6e-10
                # on a captured cohort system). Solves that pass at once are untouched. A sparse LU's
                # round-off on such systems (a cleft 1e4 times as permeable as the bone, a wide
                # Kozeny-Carman porosity field) is refined the same way with its own factors (Wilkinson's
                # iterative refinement; Higham 2002, Accuracy and Stability of Numerical Algorithms, ch. 12).
                for _ in range(REFINEMENTS if prec is not None or lu is not None else 0):
                    if np.isfinite(res) and res <= ACCEPT_RESIDUAL:
                        break
                    out[:, c] += lu.solve(r) if lu is not None else self._named_cg(mat, r, None, prec, kind)
                    self.stats.n_refinements += 1
                    r = rhs2[:, c] - mat @ out[:, c]
                    res = np.linalg.norm(r) / bn
                self.stats.max_relative_residual = max(self.stats.max_relative_residual, float(res))
                if ACCEPT_RESIDUAL < res <= RELAXED_RESIDUAL and (
                    backward_error(mat, out[:, c], rhs2[:, c], r) <= ACCEPT_BACKWARD_ERROR
                ):
                    continue  # as exact as the floating point allows (see backward_error)
                if not np.isfinite(res) or res > ACCEPT_RESIDUAL:
                    raise SolverError(
                        f"pressure solve ({kind}, {n} unknowns) did not converge: relative residual {res:.2e}"
                    )
        self.stats.solve_time_s += time.perf_counter() - t0
        return out.reshape(rhs.shape)

    def _preconditioner(self, mat, kind, block, key):
        n = mat.shape[0]
        nb = n if block is None else block
        if kind == "iccg":
            csr = sp.csr_matrix(mat)  # canonical for the kernels: sorted, duplicates summed
            if not csr.has_canonical_format:
                csr = csr.copy()
                csr.sum_duplicates()
            indptr, indices = csr_index_arrays(csr.indptr, csr.indices)
            data = np.ascontiguousarray(csr.data, dtype=np.float64)
            lu, diag_pos, ok = ic0_factor(indptr, indices, data)
            if ok:
                return _IC0(indptr, indices, data, lu, diag_pos)
            self.stats.n_ic_fallbacks += 1
            kind = "cg"
        if kind == "cg" or nb < 50:
            d = mat.diagonal()
            if np.any(d <= 0.0):
                raise SolverError(
                    f"pressure matrix has a non-positive diagonal at unknown {int(np.argmin(d))}"
                )
            inv = 1.0 / d
            return spla.LinearOperator((n, n), matvec=lambda x: inv * x.ravel(), dtype=np.float64)
        full_key = (key, nb)
        stale = self._ml is None or self._ml_key != full_key or key is None
        if stale or self._ml_iters > max(15, 2 * self._setup_iters):
            t0 = time.perf_counter()
            cell_block = mat[:nb, :nb].tocsr() if nb < n else mat
            self._ml = _seeded_amg_setup(cell_block)
            self.stats.setup_time_s += time.perf_counter() - t0
            self.stats.n_setups += 1
            self._ml_key = full_key
            self._setup_iters = 10**6
        ml_prec = self._ml.aspreconditioner(cycle="V")
        if nb == n:
            return ml_prec
        tail_inv = 1.0 / mat.diagonal()[nb:]

        def apply(x):
            x = x.ravel()
            y = np.empty_like(x)
            y[:nb] = ml_prec @ x[:nb]
            y[nb:] = tail_inv * x[nb:]
            return y

        return spla.LinearOperator((n, n), matvec=apply, dtype=np.float64)

    def _named_cg(self, mat, b, x0, prec, kind: str):
        """:meth:`_cg`, its failure naming the solve's kind (whether CG ends on huge numbers or on NaN,
        which depends on the CPU's rounding, the message is the same)."""
        try:
            return self._cg(mat, b, x0, prec)
        except SolverError as exc:
            raise SolverError(f"pressure solve ({kind}): {exc}") from None

    def _cg(self, mat, b, x0, prec):
        if isinstance(prec, _IC0):
            return self._ic0_cg(mat, b, x0, prec)
        count = [0]

        def cb(_xk):
            count[0] += 1

        bn = np.linalg.norm(b)
        if bn == 0.0:
            return np.zeros_like(b)
        x, info = spla.cg(mat, b, x0=x0, rtol=self.rtol, atol=0.0, maxiter=self.max_iter, M=prec, callback=cb)
        self.stats.n_iterations += count[0]
        self._ml_iters = count[0]
        if getattr(self, "_setup_iters", 0) == 10**6:
            self._setup_iters = count[0]
        if info != 0:
            res = np.linalg.norm(b - mat @ x) / bn
            if not res <= 1e-9:  # NaN fails too
                raise SolverError(
                    f"pressure CG did not reach rtol {self.rtol:g} in {self.max_iter} iterations "
                    f"({mat.shape[0]} unknowns, relative residual {res:.2e})"
                )
        return x

    def _ic0_cg(self, mat, b, x0, ic: _IC0):
        bn = np.linalg.norm(b)
        if bn == 0.0:
            return np.zeros_like(b)
        b = np.ascontiguousarray(b, dtype=np.float64)
        x0 = np.zeros_like(b) if x0 is None else np.ascontiguousarray(x0, dtype=np.float64)
        x, iterations, converged = ic0_cg(
            ic.indptr, ic.indices, ic.data, ic.lu, ic.diag_pos, b, x0, self.rtol, self.max_iter
        )
        self.stats.n_iterations += iterations
        if not converged:
            res = np.linalg.norm(b - mat @ x) / bn
            if not res <= 1e-9:
                why = f"in {self.max_iter} iterations" if iterations >= self.max_iter else "(CG broke down)"
                raise SolverError(
                    f"pressure IC(0)-CG did not reach rtol {self.rtol:g} {why} "
                    f"({mat.shape[0]} unknowns, relative residual {res:.2e})"
                )
        return x


@dataclass(frozen=True)
class _IC0:
    """An IC(0) factor of one matrix (:func:`sim.physics.incomplete_cholesky.ic0_factor`) and the matrix."""

    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    lu: np.ndarray
    diag_pos: np.ndarray
