"""Bone-to-vein exchange laws: how the bone drains into the venous network at its foramina.

Contract (``exchange`` seam of :mod:`sim.physics.laws`): ``entries(exits, graph)`` returns one row
per (graph node, exit) connection: the compact node index, the exit index and a geometric
conductance factor ``G`` (m^3), so that with the mobility lambda (1/(Pa s)) of the node (two-phase in a
bone cell, a cement column in a vein lumen, :func:`sim.physics.injection.mixture_mobility`)
and the series resistance R (Pa s/m^3) of a cement column already in the vein outside, the flow out
is

    q = (p_node - p_vein) / (1 / (G lambda) + n R),

n being the number of nodes the exit's flow is split over (R is the exit's, in parallel over its
nodes). The injection solver assembles these rows into its pressure system.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.core.errors import GeometryError
from sim.core.grid import EmbeddedVessels, VenousExit
from sim.physics.laws import register
from sim.physics.pressure import CellGraph


@dataclass(frozen=True)
class ExitEntries:
    """Cell-exit connections of a bone: compact cell, exit index, geometric conductance (m^3)."""

    cell: np.ndarray
    exit: np.ndarray
    conductance_m3: np.ndarray
    cells_per_exit: np.ndarray  # float, number of rows of each exit


FORAMEN_PIN = 1.0e6  # foramen drain / its vein pieces' conductance (numerical: pins the node's pressure)


@register("exchange", "embedded_veins")
class EmbeddedVeinExchange:
    """Intraosseous veins embedded in the bone; each foramen is the vein node at its outer opening.

    The veins are nodes of the pressure graph (:mod:`sim.physics.embedded_vessels`: Poiseuille
    between nodes, a well index to the porous cells around them), so the bone-vein exchange happens
    along the veins, independent of the grid. The foramen node sits at the opening and drains into
    the venous network with no resistance of its own (a conductance FORAMEN_PIN times that of its
    vein pieces, pinning it to the venous pressure to 1e-6), so a canal of any discretisation
    conducts its Poiseuille value. Limiting cases (tested): the exchange of one vein in a
    homogeneous block matches the analytic line source at every spacing; a canal conducts
    pi d^4 / (128 L).
    """

    @classmethod
    def from_params(cls) -> EmbeddedVeinExchange:
        return cls()

    def entries(self, exits: list[VenousExit], graph: CellGraph, vessels: EmbeddedVessels) -> ExitEntries:
        n_grid = graph.n_grid
        nodes = np.array([n_grid + ex.node for ex in exits], dtype=np.int64)
        cell = graph.compact[nodes]
        if np.any(cell < 0):
            bad = exits[int(np.flatnonzero(cell < 0)[0])].name
            raise GeometryError(f"foramen '{bad}' is not connected to the needle's region of the bone")
        v = np.array([ex.node for ex in exits], dtype=np.int64)
        # the foramen node sits at the opening: it drains with (effectively) no resistance of its own,
        # FORAMEN_PIN times the conductance of its vein pieces, so the canal conducts its Poiseuille value
        g_edges = vessels.edge_conductance_m3()
        g = np.zeros(v.size)
        for i, node in enumerate(v):
            touching = (vessels.edge_a == node) | (vessels.edge_b == node)
            g[i] = FORAMEN_PIN * float(g_edges[touching].max())
        return ExitEntries(
            cell=cell,
            exit=np.arange(len(exits), dtype=np.int64),
            conductance_m3=g,
            cells_per_exit=np.ones(len(exits)),
        )


class ForamenPoiseuille:
    """The foramen as a Poiseuille tube shared equally by the porous cells at its inner opening.

    For bones without embedded veins (synthetic test geometries): exits drain their ``cells``.

    G_e = pi d^4 / (128 L) for a foramen of diameter d and length L (Hagen-Poiseuille), split
    equally over the e's reachable cells (G_e / n_e each), each multiplied by its cell's mobility.
    No resistance of the bone between the cell centres and the opening is added, so the exchange
    depends on how many cells the opening touches (a grid effect; see the well-model law).
    Limiting case (tested): with uniform mobility lambda the exit's total conductance is
    G_e lambda whatever the number of cells.
    """

    @classmethod
    def from_params(cls) -> ForamenPoiseuille:
        return cls()

    def entries(
        self, exits: list[VenousExit], graph: CellGraph, vessels: EmbeddedVessels | None = None
    ) -> ExitEntries:
        cells, ids, geo = [], [], []
        for e, ex in enumerate(exits):
            cc = graph.compact[np.asarray(ex.cells, dtype=np.int64)]
            cc = cc[cc >= 0]
            cells.append(cc)
            ids.append(np.full(cc.size, e, dtype=np.int64))
            geo.append(np.full(cc.size, ex.poiseuille_factor_m3 / max(cc.size, 1)))
        exit_id = np.concatenate(ids)
        return ExitEntries(
            cell=np.concatenate(cells),
            exit=exit_id,
            conductance_m3=np.concatenate(geo),
            cells_per_exit=np.bincount(exit_id, minlength=len(exits)).astype(np.float64),
        )
