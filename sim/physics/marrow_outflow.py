"""Marrow-outflow laws: the resistance the displaced marrow meets on its way out of the vertebral body.

Contract (``marrow_outflow`` seam of :mod:`sim.physics.laws`): ``outlet_conductance(volume_share)``
gives the conductances (m^3/(Pa s)) through which the marrow cells, weighted by their share of the
marrow's pore volume, drain to the venous pressure; ``resistance_pa_s_per_m3`` is R_M. The injection
solver closes the marrow's other ways into the veins when R_M > 0.

Why the model needs it. Every cubic millimetre of cement injected displaces one of marrow. In
intact cadaver vertebrae the intravertebral pressure during injection of Simplex P at 3 ml/min
reaches 6.83 kPa (Reidy et al. 2003, Spine 28:1534; transducer at the posterior wall), and 5.09 kPa
in vertebrae whose core was replaced by a tumour-like paste (Li et al. 2015, J Orthop Surg Res
10:20, 20 % fill, no void). A Newtonian marrow of 0.04 Pa s draining through the foramina and the
trabecular pores would need about 1e-3 of that (foramen ~5e6 Pa s/m^3, Darcy ~1e7 Pa s/m^3): the
measured pressure says that displacing marrow out of the body is about 1e4 times harder than the
pores and veins alone explain. Marrow is a soft tissue of fat cells in a stroma, not a free liquid
(porcine yellow marrow is elastic, E 0.25-25 kPa, J Mech Behav Biomed Mater 2015;50:299); where
exactly the resistance sits (cortical micro-channels, sinusoid walls, the tissue itself) is not
measured. It matters for leakage because cement that has reached a vein lumen does not pay it:
the displaced marrow loads the bone route only, so a thin cement (small resistance of its own)
is pushed towards the open route, a thick one barely notices (the viscosity-ratio argument of
Bohner et al. 2003, Biomaterials 24:2721, and Baroud et al. 2006, Spine 31:2562, who built a
bone-surrogate leakage model on it).

The ``lumped_outlet`` law. Displaced marrow does not enter the vein lumens the model resolves: the
faces of bone cells to the embedded veins, and exits on bone cells, conduct with the cell's cement
mobility only (continuous in the saturation: a route opens as the cement arrives, nothing toggles
between steps). The marrow leaves through an outlet of resistance R_M spread over the pure-marrow
cells by pore volume: a cell of volume share w_i drains to the mean venous pressure through
w_i / R_M, so a marrow region at one pressure (the ``front`` method's isobaric lump) sees exactly R_M;
once no cell is pure marrow, the outlet is spread over the cells by their marrow volume. The marrow
drained by the outlet is booked to the exits in proportion to their conductance. The transport sends
cement along these routes, as their conductance says (:mod:`sim.physics.cement_transport`,
cement-only routes; until December 2026 it sent the cell's upwind fractional flow, so a front cell
passed mostly marrow into the lumens at the cement's mobility, bypassing R_M). Then

    p_marrow - p_venous = Q_marrow R_M,

the intravertebral pressure rise is Q R_M while no cement leaves, whatever the cement. R_M is
patient data (``patient.marrow_outflow_kpa_per_ml_per_min``, the pressure rise per ml/min of
marrow displaced); the default 2.28 kPa/(ml/min) = 1.37e11 Pa s/m^3 is Reidy et al. 2003's
6.83 kPa at 3 ml/min, the one intact-bone datum, so the intravertebral pressure of intact bone is
a calibration of this law, not a test of it. It is a cadaver value at room temperature, where
marrow is about 10 times more viscous than at 37 C (Bryant 1989, bovine marrow); the value in a
living patient is therefore [U] and sampled in the cohort.

Limiting cases (tested): R_M = 0 is the model without the law (the marrow drains through the
veins, bit-identical runs); with no leak the marrow pressure rises by exactly Q R_M and does not
depend on the cement's viscosity; a Newtonian cement's split between a leak next to the needle and
the bone is viscosity-free without R_M and tends to that split again as the cement's own resistance
outgrows R_M, the thin cement leaking more.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.core.errors import ConfigError
from sim.core.parameters import PatientParams
from sim.physics.laws import register


@register("marrow_outflow", "lumped_outlet")
@dataclass(frozen=True)
class LumpedMarrowOutlet:
    """Marrow leaves the bone through one lumped resistance R_M (Pa s/m^3); see the module docstring."""

    resistance_pa_s_per_m3: float = 0.0

    def __post_init__(self) -> None:
        r = self.resistance_pa_s_per_m3
        if not (isinstance(r, int | float) and np.isfinite(r) and r >= 0.0):
            raise ConfigError(f"marrow outflow resistance = {r}: must be a finite number >= 0 Pa s/m^3")

    @classmethod
    def from_params(cls, patient: PatientParams) -> LumpedMarrowOutlet:
        return cls(float(patient.marrow_outflow_pa_s_per_m3))

    def outlet_conductance(self, volume_share: np.ndarray) -> np.ndarray:
        """The outlet spread over marrow cells by volume share w (summing to 1): w / R_M, m^3/(Pa s)."""
        if self.resistance_pa_s_per_m3 == 0.0:
            raise ValueError("lumped_outlet: R_M = 0 has no outlet; the marrow leaves through the veins")
        return np.asarray(volume_share, dtype=np.float64) / self.resistance_pa_s_per_m3
