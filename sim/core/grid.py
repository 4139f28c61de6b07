"""Data contract between the bone model (`sim.physics.bone`) and the injection solver
(`sim.physics.injection`).

Plain dataclasses of numpy arrays in SI units and the patient frame (DICOM LPS, metres, origin
at the centre of the L1 body; see docs/architecture.md). Arrays are C-ordered ``(nx, ny, nz)``;
the flat cell index is ``c = (i*ny + j)*nz + k``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Yeom et al. 2003 leak classes reachable through a venous exit.
EXIT_KINDS = ("basivertebral", "anterior", "lateral")


@dataclass
class VenousExit:
    """A foramen through which blood (and cement) leaves the vertebral body.

    ``cells`` are the porous cells drained by the exit (just inside the cortex at the foramen);
    the canal through the cortex is a Poiseuille tube of ``diameter_m`` and ``length_m``, so the
    flux of a fluid of viscosity mu is ``q = pi d^4 / (128 mu L) * (p_cell - p_vein)``.
    """

    name: str
    kind: str
    cells: np.ndarray
    position_m: np.ndarray
    diameter_m: float
    length_m: float

    @property
    def poiseuille_factor_m3(self) -> float:
        """Geometric conductance pi d^4 / (128 L) in m^3 (divide by viscosity for m^3/(Pa s))."""
        return float(np.pi * self.diameter_m**4 / (128.0 * self.length_m))


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
    channel: np.ndarray | None = None  # bool: intraosseous venous channels
    cleft: np.ndarray | None = None  # bool: fracture cleft
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
    meta: dict = field(default_factory=dict)
