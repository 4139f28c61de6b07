"""Permeability laws of trabecular bone: k(phi) for the porous cells of the vertebral body.

Contract (``permeability`` seam of :mod:`sim.physics.laws`): ``transverse(phi)`` gives the
transverse permeability (m^2) of cells of porosity phi; the axial one is ``anisotropy`` times it.
Both laws are normalised to the patient's measured reference, k_t(phi_ref) = k_ref, and differ only
in how k changes with porosity inside one vertebra.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Protocol

import numpy as np

from sim.core.parameters import PatientParams
from sim.physics.laws import law_class, register

DEFAULT_PERMEABILITY_LAW = "rod_array"  # LawsConfig.permeability's default (a test keeps them equal)


def kozeny_carman(phi: np.ndarray | float) -> np.ndarray:
    """Kozeny-Carman porosity factor phi^3 / (1 - phi)^2."""
    phi = np.asarray(phi, dtype=np.float64)
    return phi**3 / (1.0 - phi) ** 2


def rod_array_parallel(c: np.ndarray | float) -> np.ndarray:
    """k / a^2 of flow along a cell of parallel rods of radius a, solid fraction c (Happel 1959).

    (-ln c - 3/2 + 2 c - c^2 / 2) / (4 c): the exact Stokes flow in Happel's free-surface cell.
    """
    c = np.asarray(c, dtype=np.float64)
    return (-np.log(c) - 1.5 + 2.0 * c - 0.5 * c * c) / (4.0 * c)


def rod_array_transverse(c: np.ndarray | float) -> np.ndarray:
    """k / a^2 of flow across a cell of parallel rods of radius a, solid fraction c (Happel 1959).

    (-ln c - (1 - c^2) / (1 + c^2)) / (8 c).
    """
    c = np.asarray(c, dtype=np.float64)
    return (-np.log(c) - (1.0 - c * c) / (1.0 + c * c)) / (8.0 * c)


def rod_network(phi: np.ndarray | float) -> np.ndarray:
    """k / a^2 of an isotropic 3D network of rods of radius a at porosity phi.

    A third of the rods lie along the flow and two thirds across it, and their resistances add
    (Jackson & James 1986): a^2 / k = (1/3) a^2 / k_par + (2/3) a^2 / k_perp, each from Happel's
    cell (:func:`rod_array_parallel`, :func:`rod_array_transverse`) at c = 1 - phi.
    """
    c = 1.0 - np.asarray(phi, dtype=np.float64)
    return 1.0 / ((1.0 / 3.0) / rod_array_parallel(c) + (2.0 / 3.0) / rod_array_transverse(c))


class PermeabilityLaw(Protocol):
    """What the bone builders need of a permeability law."""

    anisotropy: float

    def transverse(self, phi: np.ndarray) -> np.ndarray: ...

    def tensor_diagonal(self, phi: np.ndarray) -> np.ndarray: ...


class _NormalisedLaw(ABC):
    """k_t(phi) = k_ref * f(phi) / f(phi_ref), k_z = a k_t, for the porosity factor f of a subclass."""

    @staticmethod
    @abstractmethod
    def factor(phi: np.ndarray | float) -> np.ndarray:
        """The law's porosity factor f(phi) (k up to a constant)."""

    def __init__(self, k_ref_m2: float, phi_ref: float, anisotropy: float):
        self.k_ref_m2, self.phi_ref, self.anisotropy = float(k_ref_m2), float(phi_ref), float(anisotropy)
        self._f_ref = float(self.factor(self.phi_ref))

    @classmethod
    def from_params(cls, patient: PatientParams) -> _NormalisedLaw:
        return cls(patient.permeability_ref_m2, patient.porosity_mean, patient.permeability_anisotropy)

    def transverse(self, phi: np.ndarray) -> np.ndarray:
        """Transverse permeability (m^2) of cells of porosity ``phi``."""
        return self.k_ref_m2 * (self.factor(phi) / self._f_ref)

    def tensor_diagonal(self, phi: np.ndarray) -> np.ndarray:
        """(3, ...) permeabilities along x, y (transverse) and z (axial)."""
        kt = self.transverse(phi)
        return np.stack([kt, kt, self.anisotropy * kt])


@register("permeability", "kozeny_carman")
class KozenyCarman(_NormalisedLaw):
    """Kozeny-Carman permeability normalised to a measured reference.

        k_t(phi) = k_ref * KC(phi) / KC(phi_ref),   KC(phi) = phi^3 / (1 - phi)^2,   k_z = a k_t

    The capillary-bundle law of packed beds, with a constant Kozeny factor; it fits trabecular bone
    cores, porosity and anisotropy explaining about 90 % of the variance (Kohles & Roberts 2002,
    J Biomech Eng 124:521; Baroud et al. 2004, J Biomech 37:189). k_ref is the osteoporotic lumbar
    value at the patient's mean porosity (4e-8 m^2, Baroud et al. 2004), a the axial/transverse
    ratio (2.05, Nauman, Fong & Keaveny 1999, Ann Biomed Eng 27:517). Limiting case (tested):
    k_t(phi_ref) = k_ref exactly; the ratio of two cells is KC(phi_1)/KC(phi_2). Before session 31
    the default; at porosity 0.99 it makes bone 44 times as permeable as at 0.939 (see
    :class:`RodArray` for why that over-predicts).
    """

    @staticmethod
    def factor(phi: np.ndarray | float) -> np.ndarray:
        return kozeny_carman(phi)


@register("permeability", "rod_array")
class RodArray(_NormalisedLaw):
    """Permeability of a sparse 3D network of trabecular rods, normalised to a measured reference.

        k_t(phi) = k_ref * N(phi) / N(phi_ref),   k_z = a k_t,
        N(phi) = k / r^2 = 1 / ((1/3) / N_par(c) + (2/3) / N_perp(c)),   c = 1 - phi,
        N_par(c) = (-ln c - 3/2 + 2c - c^2/2) / (4c),   N_perp(c) = (-ln c - (1 - c^2)/(1 + c^2)) / (8c)

    Physics: osteoporotic vertebral cancellous bone is a network of thin rods (the lumbar spine is
    the most rod-like of the sites measured by Hildebrand et al. 1999, J Bone Miner Res 14:1167),
    and porous media of rods are fibrous media, whose Kozeny factor is not constant but rises with
    porosity above about 0.7 (Jackson & James 1986, Can J Chem Eng 64:364, from the fibrous-bed data
    they review), so Kozeny-Carman over-predicts the most porous spots. N_par and N_perp are
    Happel's (1959, AIChE J 5:174) exact Stokes solutions for flow along and across a cell of
    rods; the isotropic network adds the resistances of its rods along (1/3) and across (2/3) the
    flow (Jackson & James 1986). The rod radius r is the same in every cell of one vertebra, as
    Kozeny-Carman's specific surface is, so it cancels in the normalisation; k_ref and a are
    Kozeny-Carman's (Baroud et al. 2004; Nauman, Fong & Keaveny 1999). At the reference the two
    laws agree; over porosity 0.939 -> 0.99 this one rises 12.5 times where Kozeny-Carman rises 44.

    Limiting cases (tested): k_t(phi_ref) = k_ref exactly; dilute rods (c -> 0, the Stokes drag of
    isolated rods): N c -> (3/20)(-ln c - 1.1), the form of Jackson & James's dilute law, whose
    constant is 0.931; no pore space (c -> 1): N -> 0 as (1 - c)^3.
    """

    @staticmethod
    def factor(phi: np.ndarray | float) -> np.ndarray:
        return rod_network(phi)


def default_permeability(patient: PatientParams) -> PermeabilityLaw:
    """The default permeability law (``laws.permeability``) for ``patient``."""
    return law_class("permeability", DEFAULT_PERMEABILITY_LAW).from_params(patient)
