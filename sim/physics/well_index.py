"""The needle tip as a well: the analytic near field between the open tip and its grid cell.

A cannula tip of radius r_w (about 1.3 mm for 11G) is not resolved by the grid, but the pressure
field around a point source is known analytically: 1/r for a Newtonian fluid in a homogeneous
medium. The source goes into the one cell that contains the tip, and the needle pressure is that
cell's pressure plus the analytic near field between r_w and the radius at which the continuous
field equals the cell's finite-volume value, as reservoir simulators couple wells to their grids
(Peaceman 1978, SPE J 18:183). The veins embedded in the bone use a distributed-kernel version of
the same idea (:mod:`sim.physics.embedded_vessels`): Peaceman's single-cell line index needs
r_w < 0.2 h and would turn negative for 1-3 mm veins on 0.5-2 mm cells.

Point source. The 7-point finite-volume Laplacian's Green's function at the source cell is
G(0) = W / (2 h k), W = 0.505462 the simple-cubic Watson integral (Watson 1939, Q J Math 10:266),
while the continuous field of a point source is 1/(4 pi k r): the cell pressure is the continuous
pressure at the equivalent radius r_e = 1 / (2 pi W) h = 0.31488 h (checked against a numerical
solve to eight digits). The pressure on a tip of radius r_w is then the cell pressure plus
Q mu / (4 pi k) (1/r_w - 1/r_e) (:func:`point_source_correction`), or, for a shear-thinning cement,
the integral of mu(gamma(r)) u(r) / k from r_w to r_e with the local pore shear rate
(:func:`point_source_near_field_pa`). Anisotropy enters through k = (k_x k_y k_z)^(1/3). Limiting
cases (tested): the constant-viscosity integral equals the closed form.

Ball kernel (what the solver uses). A point source in one cell makes the tip cell's pressure grow as
1/h, and anything that exchanges with that cell sees a grid-dependent pressure: a vein whose well
kernel reaches the tip took up 37 / 41 / 29 / 32 microlitres in the first 10 s at 1 / 0.75 / 0.5 /
0.375 mm (cohort patient 2). So the tip's flow is spread over the porous cells of
the ball of radius rho = max(2 mm, 1.5 r_w, 2 h) about the tip (:func:`tip_kernel_radius`), in
proportion to their pore volume inside the ball (cells the ball's surface cuts by their covered
share, :mod:`sim.physics.kernel_cover`), so the cement starts as a uniformly filled bolus; rho is
fixed at 2 mm on every grid of 1 mm and finer, so those grids resolve the same continuous source.
Outside the ball a uniform ball source and a point source give the same field (Gauss); inside, the
ball's Darcy speed is u(r) = Q r / (4 pi rho^3). The needle pressure is the kernel's source-weighted
mean pressure plus p_point(r_w) - mean_ball(p_ball), which for a constant viscosity is Q mu / (4 pi
k) (1/r_w - 6 / (5 rho)) (:func:`ball_source_correction`: the point source gives Q mu / (4 pi k r_w)
on the tip, the ball's mean over itself is Q mu / (4 pi k) 6 / (5 rho)). For a shear-thinning cement
both radial integrals take the local pore shear rate (:func:`ball_source_near_field_pa`). Limiting
cases (tested): the closed form, a power law's closed form, and the sphere in a homogeneous ball
within 5 % at 2, 1 and 0.5 mm."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

WATSON_SIMPLE_CUBIC = 0.505462019717326  # (1/pi^3) int_0^pi int int dx dy dz / (3 - cos x - cos y - cos z)
POINT_SOURCE_RADIUS_FACTOR = 1.0 / (
    2.0 * math.pi * WATSON_SIMPLE_CUBIC
)  # r_e / h of a point source = 0.31488
TIP_KERNEL_MIN_RADIUS_M = 2.0e-3  # the ball is the same continuous source on every grid of 1 mm and finer
TIP_KERNEL_TIP_RADII = 1.5  # ... and well outside the tip itself
TIP_KERNEL_CELLS = 2.0  # ... and at least two cells wide on coarse grids (33 cells at 2 mm)


def tip_kernel_radius(spacing_m: float, tip_radius_m: float) -> float:
    """Radius rho = max(2 mm, 1.5 r_w, 2 h) of the ball over which the needle's flow enters the bone."""
    return max(
        TIP_KERNEL_MIN_RADIUS_M,
        TIP_KERNEL_TIP_RADII * float(tip_radius_m),
        TIP_KERNEL_CELLS * float(spacing_m),
    )


def _geometric_mean_k(k_xyz: np.ndarray) -> float:
    return float(np.prod(np.asarray(k_xyz, dtype=np.float64)) ** (1.0 / 3.0))


def ball_source_correction(kernel_radius_m: float, tip_radius_m: float, k_xyz: np.ndarray) -> float:
    """(1/r_w - 6/(5 rho)) / (4 pi k) in 1/m^3: times Q mu it is p(tip surface) - mean p over the ball."""
    rho, r_w = float(kernel_radius_m), float(tip_radius_m)
    return (1.0 / r_w - 1.2 / rho) / (4.0 * math.pi * _geometric_mean_k(k_xyz))


def ball_source_near_field_pa(
    flow_m3_s: float,
    kernel_radius_m: float,
    tip_radius_m: float,
    k_xyz: np.ndarray,
    viscosity: Callable[[np.ndarray], np.ndarray],
    n_points: int = 24,
) -> float:
    """p(tip surface) of a point source minus the mean pressure of the same flow spread over a ball.

    With g(u) = mu(u) u / k the pressure gradient at Darcy speed u (``viscosity`` maps a Darcy speed
    to the apparent viscosity): int_{r_w}^{rho} g(Q / (4 pi r^2)) dr (the point source between the tip
    and the ball's rim, Gauss-Legendre in ln r) minus int_0^{rho} g(Q r / (4 pi rho^3)) r^3 / rho^3 dr
    (the ball's mean pressure above its rim: the mean over the ball of int_r^rho g dr', by parts).
    For a constant viscosity it is Q mu / (4 pi k) (1/r_w - 6/(5 rho)) (:func:`ball_source_correction`).
    """
    k_g = _geometric_mean_k(k_xyz)
    rho, r_w = float(kernel_radius_m), float(tip_radius_m)
    if not rho > r_w > 0.0:
        raise ValueError(f"ball kernel radius {rho!r} must exceed the tip radius {r_w!r} > 0")
    q = abs(float(flow_m3_s))
    x, w = np.polynomial.legendre.leggauss(n_points)
    point = _point_source_drop(q, r_w, rho, k_g, viscosity, n_points)
    r_b = 0.5 * rho * (x + 1.0)
    u_b = q * r_b / (4.0 * math.pi * rho**3)
    g_b = np.asarray(viscosity(u_b), dtype=np.float64) * u_b / k_g
    ball = 0.5 * rho * float(np.dot(w, g_b * (r_b / rho) ** 3))
    return (point - ball) * (1.0 if flow_m3_s >= 0 else -1.0)


def point_source_correction(spacing_m: float, tip_radius_m: float, k_xyz: np.ndarray) -> float:
    """(1/r_w - 1/r_e) / (4 pi k) in 1/m^3: times Q mu it is p(tip surface) - p(source cell)."""
    k = np.asarray(k_xyz, dtype=np.float64)
    k_g = float(np.prod(k) ** (1.0 / 3.0))
    r_e = POINT_SOURCE_RADIUS_FACTOR * float(spacing_m)
    return (1.0 / float(tip_radius_m) - 1.0 / r_e) / (4.0 * math.pi * k_g)


def point_source_near_field_pa(
    flow_m3_s: float,
    spacing_m: float,
    tip_radius_m: float,
    k_xyz: np.ndarray,
    viscosity: Callable[[np.ndarray], np.ndarray],
    n_points: int = 24,
) -> float:
    """p(tip surface) - p(source cell) for a possibly shear-thinning fluid leaving a point source.

    Radial Darcy flow u(r) = Q / (4 pi r^2) with the apparent viscosity mu(gamma(r)) at the pore shear
    rate of that flow (``viscosity`` maps a Darcy speed to a viscosity): the integral
    int_{r_w}^{r_e} mu(u(r)) u(r) / k dr between the tip radius and the source cell's equivalent
    radius r_e = 0.31488 h (Gauss-Legendre in ln r). For a constant viscosity it is
    Q mu / (4 pi k) (1/r_w - 1/r_e) exactly (:func:`point_source_correction`).
    """
    r_e = POINT_SOURCE_RADIUS_FACTOR * float(spacing_m)
    drop = _point_source_drop(
        abs(float(flow_m3_s)), float(tip_radius_m), r_e, _geometric_mean_k(k_xyz), viscosity, n_points
    )
    return drop * (1.0 if flow_m3_s >= 0 else -1.0)


def _point_source_drop(
    q: float,
    r_in: float,
    r_out: float,
    k_g: float,
    viscosity: Callable[[np.ndarray], np.ndarray],
    n_points: int,
) -> float:
    """int_{r_in}^{r_out} mu(u) u / k dr of radial Darcy flow u = q / (4 pi r^2) (Gauss-Legendre in ln r)."""
    x, w = np.polynomial.legendre.leggauss(n_points)
    a, b = math.log(r_in), math.log(r_out)
    r = np.exp(0.5 * (b - a) * x + 0.5 * (b + a))
    u = q / (4.0 * math.pi * r * r)
    return (
        0.5 * (b - a) * float(np.dot(w, np.asarray(viscosity(u), dtype=np.float64) * u / k_g * r))
    )  # dr = r d ln r
