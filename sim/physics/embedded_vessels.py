"""Intraosseous veins as 1D vessels embedded in the 3D bone grid, exchanging through a well model.

The basivertebral veins and the nutrient veins of the vertebral body are a few millimetres wide, as
wide as the grid's cells or wider, and they decide where cement leaves the body. Rasterising them
as high-permeability cells makes the leak depend on how many cells a vein happens to cover. Here
each vein is a chain of 1D nodes (Poiseuille conductance pi d^4 / (128 L) between neighbours, lumen
volume pi d^2 / 4 L per node) that exchanges with the porous cells around it through a well index,
as reservoir simulators couple wells to grids; the foramen at the end of a vein is a node with its
own pressure, drained by the venous network outside the bone.

Well model (distributed kernel). A vein of radius r_w carrying an exchange q per unit length
(positive out of the vein) in a homogeneous medium of permeability k (across the vein) has
p(r) = p_w - q mu / (2 pi k) ln(r / r_w). The exchange of a vein piece of length L is spread
uniformly over the cylinder of kernel radius rho about its axis: each porous cell takes the share
w_c of the kernel's volume inside it (:mod:`sim.physics.kernel_cover`; cut cells by their covered
part, so the kernel's volume and its overlap with the needle's ball no longer jump by cells; before
December 2026 whole cells by their centres), through a two-point connection T_c = WI w_c between
the cell and the nearer of the piece's two end nodes, with

    WI = 2 pi k_perp L / (ln(rho / r_w) - 1/4),   rho = max(3 r_w, rho_0, 2 h),   rho_0 = 2 mm.

For a source spread uniformly over the disc of radius rho the mean pressure over the disc exceeds
the pressure at rho by q mu / (8 pi k), hence the -1/4; the line-source field outside rho is
unchanged (the distributed-source well model of Koch, Helmig & Schneider 2020, J Comput Phys
410:109369, with a uniform kernel). With two-point connections the total exchange is WI (p_w - mean
p_c), the same as the kernel's, while every connection keeps a positive transmissibility, so the
pressure matrix stays an SPD M-matrix and fluxes run down the pressure gradient (the transport
sweep needs that). k_perp = sqrt(k_x k_y k_z / (t . K t)) for a vein along the unit vector t in the
diagonal permeability K (sqrt(k_x k_y) for a vein along z). The kernel is part of the model, not of
the grid: its radius is fixed (rho_0, 2 mm by default, or 3 r_w for a wider vein, so that
ln(rho / r_w) - 1/4 > 0), and grids with h <= rho / 2 resolve the same kernel, so refining them converges
to one continuous problem (in distributed-source well models the kernel width is a parameter of the model,
Koch et al. 2020). Cement leaves the bone into a vein from the cells of its kernel, so rho
also sets how close the front must come to a vein before the vein takes cement; rho_0 is the patient's
``vein_kernel_radius_mm`` [U], 2 mm by default: about two trabecular spacings of osteoporotic vertebral
bone (Tb.Sp about 0.7-1.2 mm [TB]), the scale below which the bone is not a Darcy continuum. Harrigan,
Jasty, Mann & Harris (1988, J Biomech 21:269) put that zone at three to five trabeculae from an interface,
2-6 mm here, so the default is at the narrow end of the range. It matters for small leaks: at 1 mm, rho_0
= 3 mm moved cohort patient 0's leak from 15.3 to 26.5 microlitres and patient 2's overflow from 19.7 to
17.9 s, the seed case's 1.47 ml by 0.9 % (session 19). The cohort samples it per level, uniform 2-6 mm.
On coarser grids (h > 1 mm) rho = 2 h keeps at least the
cells within two cell sizes in the kernel; those grids solve a slightly different problem. Before
December 2026 rho = max(3 r_w, 2 h), which changed the problem between 1, 0.75 and 0.5 mm (rho 2, 1.5
and 1.43 mm for a 0.95 mm vein) and kept small leaks from converging.
Checked against the analytic line source in a homogeneous block at 2, 1 and 0.5 mm
(tests/test_embedded_vessels.py); the lumen region inside r_w is still counted as bone matrix (a
few per cent of the body's pore volume for 1-2 mm veins). Along the vein each piece's kernel is the
cylinder piece between its two nodes: every sub-cell midpoint of the vein's cylinder goes to the
piece its axial position falls in (:func:`sim.physics.kernel_cover.piece_covers`, one pass per
vein), so the pieces share out each cell exactly; before December 2026 a cell belonged to the piece
its centre projected onto, and a piece whose slab held no cell centre (a vein along a grid axis whose
length is not a whole number of cells) lost its share of the well index (4.8 % of a 20.5 mm vein
along z at 1 mm). A piece's well index goes to its porous kernel cells (a kernel cut by cortex
gives the cut share to the piece's other cells); connections of one node to one cell from
neighbouring pieces are merged.

Canal mouths. A wide canal (the basivertebral canal, 5-8 mm) whose walls are cortical exchanges
only through its mouth, a disc of radius a facing the marrow. A disc on a no-flow wall conducts
4 k a (the classical disc-source resistance 1/(4 k a)), the conductance of a hemispherical source of
radius r_eq = 2 a / pi. Spread uniformly over the porous part of the ball of radius rho = max(2 a, rho_0,
2 h) about its centre (a hemispherical kernel, cells by their covered share; rho_0 is its floor too),
the mean kernel pressure is
p(rho) + q mu / (10 pi k rho) for a half-space point source, so WI = 2 pi k / (1 / r_eq - 6 / (5 rho))
(the spherical analogue of the line kernel above), again as positive two-point connections.
"""

from __future__ import annotations

import math

import numpy as np

from sim.core.errors import GeometryError
from sim.core.grid import EmbeddedVessels, VesselTree
from sim.physics.kernel_cover import ball_cover, piece_covers

KERNEL_RADII = 3.0  # rho >= this many vessel radii (ln(rho / r_w) - 1/4 > 0 needs > 1.28)
KERNEL_CELLS = 2.0  # rho >= this many cell sizes (enough cells in the kernel on coarse grids)
CUT_CELL_REACH = 0.5 * math.sqrt(3.0)  # a cell whose centre is this many h outside can still be cut
KERNEL_MIN_RADIUS_M = 2.0e-3  # rho_0's default (patient.vein_kernel_radius_mm; module docstring) [U]


def kernel_radius(radius_m: float, spacing_m: float, min_radius_m: float = KERNEL_MIN_RADIUS_M) -> float:
    """rho = max(3 r_w, rho_0, 2 h): independent of h for h <= rho_0 / 2 (module docstring)."""
    return max(KERNEL_RADII * float(radius_m), float(min_radius_m), KERNEL_CELLS * float(spacing_m))


def perpendicular_permeability(k_xyz: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """sqrt(k_x k_y k_z / (t . K t)) of cells (n, 3) for a vein along unit vector ``direction``."""
    k = np.atleast_2d(np.asarray(k_xyz, dtype=np.float64))
    t = np.asarray(direction, dtype=np.float64)
    along = k @ (t * t)
    return np.sqrt(np.prod(k, axis=1) / along)


def embed(
    tree: VesselTree,
    origin_m: np.ndarray,
    spacing_m: float,
    porous: np.ndarray,
    permeability: np.ndarray,
    kernel_min_radius_m: float,
) -> EmbeddedVessels:
    """Discretise ``tree`` on the grid (nodes about one cell apart) and connect it to the porous cells.

    Every point of the tree is a node (junctions and foramina included); each segment gets interior
    nodes so that neighbours are at most one cell size apart. A node stands for half of each of its
    edges. The exchange of each edge that ``exchanges`` is spread over the porous cells its kernel
    (the cylinder piece of radius rho between its nodes) covers, each weighted by its covered share
    (cut cells included; :mod:`sim.physics.kernel_cover`), and connected to the nearer end node;
    a node's connections to one cell are merged into one. ``kernel_min_radius_m`` is rho_0 (the patient's
    ``vein_kernel_radius_mm``), the floor of every vein and canal-mouth kernel radius.
    """
    h = float(spacing_m)
    origin = np.asarray(origin_m, dtype=np.float64)
    shape = porous.shape
    pts = np.asarray(tree.points_m, dtype=np.float64)
    node_pos: list[np.ndarray] = [p for p in pts]
    edges: list[tuple[int, int, float, bool]] = []  # (a, b, diameter, exchanges)
    chains: list[np.ndarray] = []  # the nodes of each segment, start to end
    for seg in tree.segments:
        p0, p1 = pts[seg.start], pts[seg.end]
        length = float(np.linalg.norm(p1 - p0))
        if not length > 0.0:
            raise GeometryError(f"intraosseous vein '{seg.name}' has zero length")
        if not seg.diameter_m > 0.0:
            raise GeometryError(f"intraosseous vein '{seg.name}': diameter {seg.diameter_m} m must be > 0")
        n_pieces = max(1, math.ceil(length / h - 1e-9))
        chain = [seg.start]
        for i in range(1, n_pieces):
            node_pos.append(p0 + (p1 - p0) * (i / n_pieces))
            chain.append(len(node_pos) - 1)
        chain.append(seg.end)
        chains.append(np.array(chain, dtype=np.int64))
        for a, b in zip(chain[:-1], chain[1:], strict=True):
            edges.append((a, b, float(seg.diameter_m), bool(seg.exchanges)))
    pos = np.array(node_pos)
    nv = pos.shape[0]
    ea = np.array([e[0] for e in edges], dtype=np.int64)
    eb = np.array([e[1] for e in edges], dtype=np.int64)
    ed = np.array([e[2] for e in edges])
    el = np.linalg.norm(pos[eb] - pos[ea], axis=1)

    def per_node(weights: np.ndarray) -> np.ndarray:  # half of every edge to each of its two nodes
        return np.bincount(ea, weights=0.5 * weights, minlength=nv) + np.bincount(
            eb, weights=0.5 * weights, minlength=nv
        )

    node_len = per_node(el)
    # the node's lumen is its half-edges' lumens: the diameter whose cross-section times the node's length
    # is their volume, sum pi d^2 / 4 l (the rms of the half-edges' diameters, weighted by length)
    node_d = np.sqrt(per_node(el * ed**2) / np.maximum(node_len, 1e-300))

    kflat = permeability.reshape(3, -1)
    porous_flat = porous.ravel()
    rho_max = 0.0
    w_node, w_cell, w_val = [], [], []
    for seg, chain in zip(tree.segments, chains, strict=True):
        if not seg.exchanges:
            continue
        p0, p1 = pts[seg.start], pts[seg.end]
        length = float(np.linalg.norm(p1 - p0))
        n_pieces = chain.size - 1
        piece_len = length / n_pieces
        r_w = 0.5 * float(seg.diameter_m)
        rho = kernel_radius(r_w, h, kernel_min_radius_m)
        rho_max = max(rho_max, rho)
        t = (p1 - p0) / length
        flat, ctr = _cells_near_segment(p0, p1, rho + CUT_CELL_REACH * h, origin, h, shape)
        flat_ok = porous_flat[flat]
        flat, ctr = flat[flat_ok], ctr[flat_ok]
        if flat.size == 0:
            continue
        # one pass over the segment: each sub-cell goes to the piece its axial position falls in
        cell, piece, cover = piece_covers(ctr, h, p0, p1, rho, n_pieces)
        if cell.size == 0:
            continue
        # a piece's whole well index over its porous kernel cells by covered share, each cell
        # connected to the nearer of the piece's two nodes
        s_in_piece = (ctr[cell] - p0) @ t - piece * piece_len
        node = np.where(s_in_piece < 0.5 * piece_len, chain[piece], chain[piece + 1])
        piece_cover = np.bincount(piece, weights=cover, minlength=n_pieces)
        k_perp = perpendicular_permeability(kflat[:, flat[cell]].T, t)
        denom = math.log(rho / r_w) - 0.25
        w_node.append(node.astype(np.int64))
        w_cell.append(flat[cell])
        w_val.append(2.0 * math.pi * k_perp * piece_len / denom * cover / piece_cover[piece])
    for point, a in tree.openings.items():
        rho = max(2.0 * a, float(kernel_min_radius_m), KERNEL_CELLS * h)
        rho_max = max(rho_max, rho)
        centre = pos[point]
        flat, ctr = _cells_near_segment(centre, centre, rho + CUT_CELL_REACH * h, origin, h, shape)
        cover = ball_cover(ctr, h, centre, rho)
        near = porous_flat[flat] & (cover > 0.0)
        cells, cover = flat[near], cover[near]
        if cells.size == 0:
            continue
        k_mean = np.prod(kflat[:, cells], axis=0) ** (1.0 / 3.0)
        r_eq = 2.0 * a / math.pi
        wi = 2.0 * math.pi * k_mean / (1.0 / r_eq - 6.0 / (5.0 * rho)) * (cover / cover.sum())
        w_node.append(np.full(cells.size, point, dtype=np.int64))
        w_cell.append(cells)
        w_val.append(wi)
    well_node, well_cell, well_index = _merge_connections(w_node, w_cell, w_val, porous.size)
    exit_node = {}
    for name, point in tree.exits.items():
        if not 0 <= point < pts.shape[0]:
            raise GeometryError(f"foramen '{name}': point index {point} outside the vessel tree")
        exit_node[name] = int(point)
    return EmbeddedVessels(
        node_pos_m=pos,
        node_length_m=node_len,
        node_diameter_m=node_d,
        edge_a=ea,
        edge_b=eb,
        edge_length_m=el,
        edge_diameter_m=ed,
        well_node=well_node,
        well_cell=well_cell,
        well_index_m3=well_index,
        exit_node=exit_node,
        kernel_radius_m=rho_max,
    )


def _merge_connections(
    nodes: list[np.ndarray], cells: list[np.ndarray], values: list[np.ndarray], n_cells: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One connection per (vein node, cell), its well indices summed (parallel conductances), in
    (node, cell) order."""
    if not nodes:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0)
    node, cell, value = np.concatenate(nodes), np.concatenate(cells), np.concatenate(values)
    key, inverse = np.unique(node * n_cells + cell, return_inverse=True)
    return key // n_cells, key % n_cells, np.bincount(inverse, weights=value, minlength=key.size)


def _cells_near_segment(
    p0: np.ndarray, p1: np.ndarray, radius: float, origin: np.ndarray, h: float, shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices and centres of the grid cells in the bounding box of the segment widened by ``radius``."""
    lo = np.minimum(p0, p1) - radius
    hi = np.maximum(p0, p1) + radius
    lo_i = np.clip(np.ceil((lo - origin) / h - 1e-9).astype(np.int64), 0, np.array(shape) - 1)
    hi_i = np.clip(np.floor((hi - origin) / h + 1e-9).astype(np.int64), 0, np.array(shape) - 1)
    if np.any(hi_i < lo_i):
        return np.empty(0, np.int64), np.empty((0, 3))
    axes = [np.arange(lo_i[d], hi_i[d] + 1) for d in range(3)]
    ii, jj, kk = np.meshgrid(*axes, indexing="ij")
    ijk = np.stack([ii.ravel(), jj.ravel(), kk.ravel()], axis=-1)
    flat = np.ravel_multi_index(tuple(ijk.T), shape).astype(np.int64)
    return flat, origin + ijk * h
