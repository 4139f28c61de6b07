"""Permeability laws of trabecular bone: k(phi) for the porous cells of the vertebral body.

Contract (``permeability`` seam of :mod:`sim.physics.laws`): ``transverse(phi)`` gives the
transverse permeability (m^2) of cells of porosity phi; the axial one is ``anisotropy`` times it.
"""

from __future__ import annotations

import numpy as np

from sim.core.parameters import PatientParams
from sim.physics.laws import register


def kozeny_carman(phi: np.ndarray | float) -> np.ndarray:
    """Kozeny-Carman porosity factor phi^3 / (1 - phi)^2."""
    phi = np.asarray(phi, dtype=np.float64)
    return phi**3 / (1.0 - phi) ** 2


@register("permeability", "kozeny_carman")
class KozenyCarman:
    """Kozeny-Carman permeability normalised to a measured reference.

        k_t(phi) = k_ref * KC(phi) / KC(phi_ref),   KC(phi) = phi^3 / (1 - phi)^2,   k_z = a k_t

    The Kozeny-Carman form fits trabecular bone, porosity and anisotropy explaining about 90 % of
    the variance (Kohles & Roberts 2002, J Biomech Eng; Baroud et al. 2004, J Biomech); k_ref is the
    osteoporotic lumbar value at the patient's mean porosity (4e-8 m^2, Baroud et al. 2004), a the
    axial/transverse ratio (2.05, Nauman, Fong & Keaveny 1999, Ann Biomed Eng 27:517). Limiting
    case (tested): k_t(phi_ref) = k_ref exactly; the ratio of two cells is KC(phi_1)/KC(phi_2).
    """

    def __init__(self, k_ref_m2: float, phi_ref: float, anisotropy: float):
        self.k_ref_m2, self.phi_ref, self.anisotropy = float(k_ref_m2), float(phi_ref), float(anisotropy)

    @classmethod
    def from_params(cls, patient: PatientParams) -> KozenyCarman:
        return cls(patient.permeability_ref_m2, patient.porosity_mean, patient.permeability_anisotropy)

    def transverse(self, phi: np.ndarray) -> np.ndarray:
        """Transverse permeability (m^2) of cells of porosity ``phi``."""
        return self.k_ref_m2 * (kozeny_carman(phi) / kozeny_carman(self.phi_ref))

    def tensor_diagonal(self, phi: np.ndarray) -> np.ndarray:
        """(3, ...) permeabilities along x, y (transverse) and z (axial)."""
        kt = self.transverse(phi)
        return np.stack([kt, kt, self.anisotropy * kt])
