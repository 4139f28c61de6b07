"""Bone-to-vein exchange laws: how the porous cells next to a foramen drain into its vein.

Contract (``exchange`` seam of :mod:`sim.physics.laws`): ``entries(exits, graph)`` returns one row
per (porous cell, exit) connection: the compact cell index, the exit index and a geometric
conductance factor ``G`` (m^3), so that with the two-phase mobility lambda (1/(Pa s)) of the cell
and the series resistance R (Pa s/m^3) of a cement column already in the vein, the flow out is

    q = (p_cell - p_vein) / (1 / (G lambda) + n_cells R),

n_cells being the number of cells the exit's flow is split over (R is the exit's, in parallel over
its cells). The injection solver assembles these rows into its pressure system.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.core.grid import VenousExit
from sim.physics.laws import register
from sim.physics.pressure import CellGraph


@dataclass(frozen=True)
class ExitEntries:
    """Cell-exit connections of a bone: compact cell, exit index, geometric conductance (m^3)."""

    cell: np.ndarray
    exit: np.ndarray
    conductance_m3: np.ndarray
    cells_per_exit: np.ndarray  # float, number of rows of each exit


@register("exchange", "foramen_poiseuille")
class ForamenPoiseuille:
    """The foramen as a Poiseuille tube shared equally by the porous cells at its inner opening.

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

    def entries(self, exits: list[VenousExit], graph: CellGraph) -> ExitEntries:
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
