"""Marrow-outflow laws: the resistance the displaced marrow meets on its way out of the vertebral body.

Contract (``marrow_outflow`` seam of :mod:`sim.physics.laws`): ``series_factor(g_total)`` is the
factor by which the injection solver scales the conductances of all routes marrow takes out of the
bone (in parallel, total ``g_total`` in m^3/(Pa s)) so that the law's resistance sits in series with
them; ``resistance_pa_s_per_m3`` is that resistance.

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

The ``lumped_outlet`` law. Marrow leaves a bone cell that is not (yet) cement through the cell's
faces to the embedded veins (their well index) and through any exit on a bone cell. These routes,
conductances g_i in parallel, are put in series with one lumped resistance R_M:

    g_i' = g_i / (1 + R_M * sum_j g_j),

exact for a marrow region at one pressure draining into veins at one pressure (the ``front``
method's isobaric marrow lump; the vein lumens conduct blood freely to the foramina, which share
one static venous pressure). A bone cell whose flow is at least CEMENT_ROUTE_FLOW cement (its cement
mobility over its total mobility; with cement 1e3-1e5 times more viscous than marrow, only cells
behind the front) reaches its veins freely: the cement has arrived at the vein wall. The switch
per cell is binary on purpose: a continuous split would let the marrow share of a half-filled
cell, which carries almost all of its flow, pass R_M for free. Then

    p_marrow - p_venous = Q_marrow (R_M + 1/sum g_j),

the intravertebral pressure rise is Q R_M while no cement leaves, whatever the cement. R_M is
patient data (``patient.marrow_outflow_kpa_per_ml_per_min``, the pressure rise per ml/min of
marrow displaced); the default 2.28 kPa/(ml/min) = 1.37e11 Pa s/m^3 is Reidy et al. 2003's
6.83 kPa at 3 ml/min, the one intact-bone datum, so the intravertebral pressure of intact bone is
a calibration of this law, not a test of it. It is a cadaver value at room temperature, where
marrow is about 10 times more viscous than at 37 C (Bryant 1989, bovine marrow); the value in a
living patient is therefore [U] and sampled in the cohort.

Limiting cases (tested): R_M = 0 leaves every conductance, so every run, unchanged; with one
marrow exit and no leak the pressure of the whole bone rises by exactly Q R_M; the rise does not
depend on the cement's viscosity.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.core.errors import ConfigError
from sim.core.parameters import PatientParams
from sim.physics.laws import register

CEMENT_ROUTE_FLOW = 0.5  # a bone cell whose flow is at least this fraction cement reaches its veins freely


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

    def series_factor(self, g_total: float) -> float:
        """1 / (1 + R_M g_total): the scale of each parallel marrow route's conductance (1 if none)."""
        if not (np.isfinite(g_total) and g_total >= 0.0):
            raise ValueError(f"marrow route conductance {g_total}: must be finite and >= 0")
        return 1.0 / (1.0 + self.resistance_pa_s_per_m3 * g_total)
