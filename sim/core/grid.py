"""Data contract between the bone model (`sim.physics.bone`) and the injection solver
(`sim.physics.injection`).

Plain dataclasses of numpy arrays in SI units and the patient frame (DICOM LPS, metres, origin
at the centre of the L1 body; see docs/architecture.md). Arrays are C-ordered ``(nx, ny, nz)``;
the flat cell index is ``c = (i*ny + j)*nz + k``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

# Yeom et al. 2003 leak classes reachable through a venous exit.
EXIT_KINDS = ("basivertebral", "anterior", "lateral")


@dataclass(frozen=True)
class VesselSegment:
    """A straight piece of intraosseous vein between two points of a :class:`VesselTree`."""

    name: str
    start: int  # point index
    end: int  # point index
    diameter_m: float
    exchanges: bool  # False where the vein runs in a cortical canal (no contact with the marrow)


@dataclass(frozen=True)
class VesselTree:
    """Intraosseous veins in continuous space: points, straight segments between them, the point of
    each foramen (where the vein leaves the bone and joins the venous network) and the mouths of
    canals that open into the marrow (a disc of the given radius at a point)."""

    points_m: np.ndarray  # (n_points, 3), patient frame
    segments: tuple[VesselSegment, ...]
    exits: dict[str, int]  # foramen name -> point index
    openings: dict[int, float] = field(default_factory=dict)  # point -> radius of a canal mouth (m)


@dataclass
class EmbeddedVessels:
    """A :class:`VesselTree` discretised on a grid: nodes, node-node edges, node-cell connections."""

    node_pos_m: np.ndarray  # (nv, 3)
    node_length_m: np.ndarray  # (nv,) vein length a node stands for
    node_diameter_m: np.ndarray  # (nv,)
    edge_a: np.ndarray  # (ne,) node indices
    edge_b: np.ndarray
    edge_length_m: np.ndarray  # (ne,) centre to centre
    edge_diameter_m: np.ndarray  # (ne,)
    well_node: np.ndarray  # (nw,) node of each node-cell connection
    well_cell: np.ndarray  # (nw,) flat grid index of its cell
    well_index_m3: np.ndarray  # (nw,) T_c = WI w_c (times a mobility 1/(Pa s) gives m^3/(Pa s))
    exit_node: dict[str, int]  # foramen name -> node
    kernel_radius_m: float

    @property
    def n_nodes(self) -> int:
        return int(self.node_pos_m.shape[0])

    @property
    def node_volume_m3(self) -> np.ndarray:
        """Lumen volume of each node, pi d^2 / 4 L."""
        return 0.25 * np.pi * self.node_diameter_m**2 * self.node_length_m

    def edge_conductance_m3(self) -> np.ndarray:
        """Poiseuille factor pi d^4 / (128 L) of every node-node edge (m^3; divide by mu)."""
        return np.pi * self.edge_diameter_m**4 / (128.0 * self.edge_length_m)


@dataclass
class VenousExit:
    """A foramen through which blood (and cement) leaves the vertebral body.

    With intraosseous veins embedded in the bone (``BoneGrid.vessels``) the foramen is the vein
    node ``node`` at the outer opening; ``cells`` are then the porous cells that vein drains. A bone
    without veins (synthetic test geometries) drains ``cells`` directly through a Poiseuille tube of
    ``diameter_m`` and ``length_m``: ``q = pi d^4 / (128 mu L) * (p_cell - p_vein)``.
    """

    name: str
    kind: str
    cells: np.ndarray
    position_m: np.ndarray
    diameter_m: float
    length_m: float
    node: int = -1  # vein node of the foramen in BoneGrid.vessels (-1: none)

    @property
    def poiseuille_factor_m3(self) -> float:
        """Geometric conductance pi d^4 / (128 L) in m^3 (divide by viscosity for m^3/(Pa s))."""
        return float(np.pi * self.diameter_m**4 / (128.0 * self.length_m))


class BodyOutline(Protocol):
    """The vertebral body in continuous space, for what must not depend on the grid spacing.

    Its X-ray silhouette decides which pixels hide a small leak behind the body
    (:mod:`sim.physics.fluoroscopy`); the grid's body cells (which include a one-cell shell around the
    porous bone) would move that edge outwards by up to about a cell: 0.7 mm at 1 mm, 2.2 mm at 2 mm.
    Its centre is where the C-arm is centred (the detector's pixel raster is placed about it), so the
    raster too is the same on every grid.
    """

    center_m: np.ndarray  # (3,) patient frame: the body's centre in continuous space

    def silhouette(self, ray_axis: int, u_m: np.ndarray, v_m: np.ndarray) -> np.ndarray:
        """Bool (len(u), len(v)): does the ray along patient axis ``ray_axis`` through the image
        point (u, v) cross the body? u and v are patient coordinates (m) along the two other axes,
        in increasing axis order."""
        ...

    def bounds_m(self) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi): patient-frame corners of a box that holds the whole body, so its silhouette is
        empty outside the box's projection on every view (lets a view skip the empty image)."""
        ...


@dataclass(frozen=True, eq=False)  # ndarray fields: identity, not elementwise, equality
class MaskOutline:
    """A body given as a voxel mask at its own resolution (a CT segmentation on the CT's working grid:
    axis-aligned, spacing the scan's finest voxel edge), independent of the simulation grid: voxel
    (i, j, k) is the cube of side ``spacing_m`` centred at ``origin_m + (i, j, k) * spacing_m``
    (patient frame). Its centre is the mask's centroid."""

    projections: tuple[np.ndarray, np.ndarray, np.ndarray]  # mask.any(axis=0), (axis=1), (axis=2)
    origin_m: np.ndarray
    spacing_m: float
    center_m: np.ndarray

    @classmethod
    def from_mask(cls, mask: np.ndarray, origin_m: np.ndarray, spacing_m: float) -> MaskOutline:
        m = np.asarray(mask, dtype=bool)
        origin = np.asarray(origin_m, dtype=np.float64)
        # an empty mask (no body) is centred on its box
        index = np.argwhere(m).mean(axis=0) if m.any() else 0.5 * (np.array(m.shape) - 1.0)
        centroid = origin + index * float(spacing_m)
        return cls((m.any(axis=0), m.any(axis=1), m.any(axis=2)), origin, float(spacing_m), centroid)

    def bounds_m(self) -> tuple[np.ndarray, np.ndarray]:
        """The mask's box: a point is read from voxel rint((p - origin) / spacing), so points up to half
        a voxel beyond the outer voxel centres read the mask."""
        n = np.array([self.projections[1].shape[0], *self.projections[0].shape], dtype=np.float64)
        return self.origin_m - 0.5 * self.spacing_m, self.origin_m + (n - 0.5) * self.spacing_m

    def silhouette(self, ray_axis: int, u_m: np.ndarray, v_m: np.ndarray) -> np.ndarray:
        a, b = (k for k in range(3) if k != ray_axis)
        plane = self.projections[ray_axis]
        iu = np.rint((np.asarray(u_m) - self.origin_m[a]) / self.spacing_m).astype(np.int64)
        iv = np.rint((np.asarray(v_m) - self.origin_m[b]) / self.spacing_m).astype(np.int64)
        ok_u = np.flatnonzero((iu >= 0) & (iu < plane.shape[0]))
        ok_v = np.flatnonzero((iv >= 0) & (iv < plane.shape[1]))
        out = np.zeros((len(iu), len(iv)), dtype=bool)
        out[np.ix_(ok_u, ok_v)] = plane[np.ix_(iu[ok_u], iv[ok_v])]
        return out


@dataclass
class BoneGrid:
    """Rasterised vertebral body: where cement can go and how easily."""

    level: str
    spacing_m: float
    origin_m: np.ndarray  # patient-frame centre of cell (0, 0, 0)
    porous: np.ndarray  # bool (nx, ny, nz): cancellous bone, channels, cleft (cement can enter)
    body: np.ndarray  # bool (nx, ny, nz): everything inside the outer contour, cortex included
    porosity: np.ndarray  # float64 (nx, ny, nz), 0 where not porous
    permeability: np.ndarray  # float64 (3, nx, ny, nz): kx, ky, kz in m^2, 0 where not porous
    exits: list[VenousExit]
    channel: np.ndarray | None = None  # bool: cells a vein's well kernel reaches (for pictures)
    cleft: np.ndarray | None = None  # bool: fracture cleft
    vessels: EmbeddedVessels | None = None  # intraosseous veins as 1D nodes coupled to the cells
    outline: BodyOutline | None = None  # the body in continuous space (its X-ray silhouette)
    meta: dict = field(default_factory=dict)  # dimensions, sources, etc.

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.porous.shape)  # type: ignore[return-value]

    @property
    def n_cells(self) -> int:
        return int(np.prod(self.shape))

    @property
    def cell_volume_m3(self) -> float:
        return self.spacing_m**3

    def cell_centers_m(self, flat: np.ndarray) -> np.ndarray:
        """Patient-frame centres (n, 3) of flat cell indices."""
        ijk = np.stack(np.unravel_index(np.asarray(flat), self.shape), axis=-1)
        return self.origin_m[None, :] + ijk * self.spacing_m

    def pore_volume_m3(self) -> float:
        return float(self.porosity.sum() * self.cell_volume_m3)


@dataclass
class Needle:
    """Cannula(s) in the body: where cement enters and what the cannula costs in pressure."""

    tip_cells: np.ndarray  # flat indices of source cells (all tips)
    tip_weights: np.ndarray  # share of the injected flow per tip cell (sums to 1)
    tip_positions_m: np.ndarray  # (n_tips, 3)
    entry_positions_m: np.ndarray  # (n_tips, 3): where each cannula enters the bone (for drawing)
    path_cells: np.ndarray  # flat indices occupied by the cannula shaft (not porous)
    inner_diameter_m: float
    length_m: float
    tip_radius_m: float = 0.0  # radius of the open tip for the well correction (0: no correction)
    # radius of the ball over which each tip's flow enters (sim.physics.well_index.tip_kernel_radius);
    # 0: the tip cells are point sources (one cell per tip) with the point-source near field
    tip_kernel_radius_m: float = 0.0
    tip_cannula: np.ndarray | None = None  # which cannula each tip cell belongs to (None: all one cannula)
    meta: dict = field(default_factory=dict)
