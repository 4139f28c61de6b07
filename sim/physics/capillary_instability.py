"""Capillary (Rayleigh-Plateau) instability of a viscous thread in another viscous liquid (Tomotika 1935).

A cylindrical thread of radius R and viscosity eta_in in an unbounded liquid of viscosity eta_out,
interfacial tension gamma, creeping flow. An axisymmetric disturbance r = R + delta exp(i k z + q t)
grows when its dimensionless wavenumber x = k R is below 1, at the rate

    q(x, lam) = gamma / (eta_out R) * g(x, lam),        lam = eta_in / eta_out,

Tomotika's result (Tomotika 1935, Proc R Soc Lond A 150:322), written here as the 4 x 4 linear
system it comes from: Stokes stream functions psi_in = [A r I1(kr) + B r^2 I0(kr)] e^{ikz} inside
and psi_out = [C r K1(kr) + D r^2 K0(kr)] e^{ikz} outside; continuity of both velocity components and
of the shear stress at r = R, and the normal stress jump gamma (k^2 - 1/R^2) delta of the perturbed
Laplace pressure; the kinematic condition u_r(R) = q delta gives q. (Tomotika writes the same rate
as q = gamma (1 - x^2) Phi(x, lam) / (2 eta_out R).)

The fastest-growing mode x_m(lam) sets the wavelength 2 pi R / x_m of the break-up, i.e. the size of
the drops. Checks (tests/test_breakup.py): lam = 1 gives x_m = 0.56 and 2 g_m = 0.071 (Tomotika's
table, quoted by Stone 1994, Annu Rev Fluid Mech 26:65); lam -> infinity tends to Weber's long-wave
rate of a viscous thread in a passive medium, q -> gamma / (6 eta_in R) (1 - x^2) (Weber 1931,
Z Angew Math Mech 11:136), with x_m -> 0 as lam grows (drops much larger than the thread).
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import i0, i1, k0, k1


def growth_rate(x: float, viscosity_ratio: float) -> float:
    """Dimensionless growth rate g = q eta_out R / gamma of wavenumber x = k R > 0; lam = eta_in / eta_out."""
    k = float(x)
    lam = float(viscosity_ratio)
    if not (k > 0.0 and lam > 0.0):
        raise ValueError(f"growth_rate: x = {x}, viscosity_ratio = {viscosity_ratio}: both must be > 0")
    b_i0, b_i1, b_k0, b_k1 = i0(k), i1(k), k0(k), k1(k)
    j = 1j
    # rows: u_r, u_z, shear stress continuity; normal stress jump = k^2 - 1 (R = gamma = eta_out = delta = 1)
    ki, kk = k * b_i1, k * b_k1  # k I1(k), k K1(k)
    m = np.array(
        [
            [-j * ki, -j * k * b_i0, j * kk, j * k * b_k0],
            [k * b_i0, 2.0 * b_i0 + ki, k * b_k0, kk - 2.0 * b_k0],
            [
                2.0 * lam * k * ki,
                2.0 * lam * k * (k * b_i0 + b_i1),
                -2.0 * k * kk,
                -2.0 * k * (k * b_k0 - b_k1),
            ],
            [
                2.0 * j * lam * k * (k * b_i0 - b_i1),
                2.0 * j * lam * k * ki,
                2.0 * j * k * (k * b_k0 + b_k1),
                2.0 * j * k * kk,
            ],
        ],
        dtype=np.complex128,
    )
    rhs = np.array([0.0, 0.0, 0.0, k * k - 1.0], dtype=np.complex128)
    a, b, _, _ = np.linalg.solve(m, rhs)
    return float((-j * k * (a * b_i1 + b * b_i0)).real)


def fastest_mode(viscosity_ratio: float) -> tuple[float, float]:
    """(x_m, g_m): wavenumber and dimensionless rate of the fastest-growing mode (Tomotika)."""
    lam = float(viscosity_ratio)
    # x_m ~ lam^-1/4 for a thick thread: bracket the search in log x
    res = minimize_scalar(
        lambda s: -growth_rate(math.exp(s), lam), bounds=(math.log(1e-4), math.log(0.999)), method="bounded",
        options={"xatol": 1e-7},
    )  # fmt: skip
    x_m = math.exp(float(res.x))
    return x_m, growth_rate(x_m, lam)


LOG10_LAM_MIN, LOG10_LAM_MAX, LAM_POINTS = -2.0, 10.0, 97


@cache
def fastest_mode_table() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(log10 lam, log x_m, log g_m) on a grid of viscosity ratios 1e-2..1e10 (computed once per process)."""
    log_lam = np.linspace(LOG10_LAM_MIN, LOG10_LAM_MAX, LAM_POINTS)
    modes = [fastest_mode(10.0**v) for v in log_lam]
    return log_lam, np.log([m[0] for m in modes]), np.log([m[1] for m in modes])


def fastest_mode_interp(viscosity_ratio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x_m and g_m for an array of viscosity ratios (log-log interpolation, clipped to the table)."""
    log_lam, log_x, log_g = fastest_mode_table()
    v = np.clip(np.log10(np.asarray(viscosity_ratio, dtype=np.float64)), LOG10_LAM_MIN, LOG10_LAM_MAX)
    return np.exp(np.interp(v, log_lam, log_x)), np.exp(np.interp(v, log_lam, log_g))
