"""Well indices: how a thin vessel or the cannula tip exchanges with the grid cells it lies in.

A vessel of radius r_w much thinner than a cell cannot be resolved by the grid, but the pressure
field around it is known analytically: near a line source in a homogeneous medium the pressure is
logarithmic in the distance, near a point source it falls as 1/r. A well index connects the
vessel's own pressure to the cell's pressure with the right resistance for that near field, so
that the exchange does not depend on the cell size. Reservoir simulators couple wells and
embedded fractures to their grids this way (Peaceman 1978, 1983; the same formulas are in MRST's
``computeWellIndex`` and in OPM/JutulDarcy).

Line source (a vessel segment crossing a cell). For a segment along grid axis d through a cell
of sides (h_a, h_b) across it, with permeabilities (k_a, k_b) across it (Peaceman 1983, SPE J
23:531, anisotropic form):

    T_d = 2 pi sqrt(k_a k_b) L / ln(r_e / r_w),
    r_e = 0.28 sqrt( sqrt(k_b/k_a) h_a^2 + sqrt(k_a/k_b) h_b^2 ) / ( (k_b/k_a)^(1/4) + (k_a/k_b)^(1/4) ),

T in m^3 (times the fluid mobility 1/mu gives m^3/(Pa s)), r_e the radius at which the analytic
pressure equals the cell's finite-volume pressure (0.198 h for an isotropic square cell). For a
segment at an angle to the grid, the per-axis indices of its projections are combined as
T = sqrt(sum_d (L_d / L * T_d(L))^2) (the projection method of MRST and ResInsight); limiting case
(tested): a segment along an axis gives T_d exactly.

Point source (the open cannula tip). The 7-point finite-volume Laplacian's Green's function at the
source cell is G(0) = W / (2 h k), W = 0.505462 the simple-cubic Watson integral, while the
continuous field of a point source is 1/(4 pi k r): the cell pressure is the continuous pressure
at the equivalent radius r_e = 1 / (2 pi W) h = 0.31488 h. The pressure on a tip of radius r_w is
then the cell pressure plus Q mu / (4 pi k) (1/r_w - 1/r_e) (tested against a sphere in a
homogeneous block at several spacings). Anisotropy enters through k = (k_x k_y k_z)^(1/3).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from sim.core.errors import GeometryError

WATSON_SIMPLE_CUBIC = 0.505462019717326  # (1/pi^3) int_0^pi int int dx dy dz / (3 - cos x - cos y - cos z)
POINT_SOURCE_RADIUS_FACTOR = 1.0 / (
    2.0 * math.pi * WATSON_SIMPLE_CUBIC
)  # r_e / h of a point source = 0.31488


def peaceman_radius(h_a: float, h_b: float, k_a: np.ndarray, k_b: np.ndarray) -> np.ndarray:
    """Peaceman's equivalent radius (m) for a line source across a cell of sides h_a, h_b."""
    k_a = np.asarray(k_a, dtype=np.float64)
    k_b = np.asarray(k_b, dtype=np.float64)
    ratio = np.sqrt(k_b / k_a)
    num = 0.28 * np.sqrt(ratio * h_a * h_a + h_b * h_b / ratio)
    return num / (np.sqrt(ratio) + 1.0 / np.sqrt(ratio))


def line_well_index(
    lengths_m: np.ndarray, spacing_m: float, k_xyz: np.ndarray, radius_m: float | np.ndarray
) -> np.ndarray:
    """Well index T (m^3) of vessel pieces in cells: ``lengths_m`` (n, 3) are the pieces' projections
    on x, y, z, ``k_xyz`` (n, 3) the cells' permeabilities, ``radius_m`` the vessel radius.

    T = sqrt(sum_d (T_d)^2) with T_d = 2 pi sqrt(k_a k_b) L_d / ln(r_e,d / r_w) (module docstring);
    where r_e,d <= r_w (a vessel as wide as the cell) the logarithm is floored at ln(1.5) and the
    caller should resolve such a vessel instead.
    """
    lengths = np.abs(np.atleast_2d(np.asarray(lengths_m, dtype=np.float64)))
    k = np.atleast_2d(np.asarray(k_xyz, dtype=np.float64))
    r_w = np.broadcast_to(np.asarray(radius_m, dtype=np.float64), lengths.shape[:1])
    if np.any(k <= 0.0):
        raise GeometryError("line_well_index: a vessel crosses a cell with zero permeability")
    total = np.zeros(lengths.shape[0])
    h = float(spacing_m)
    for d, (a, b) in enumerate(((1, 2), (0, 2), (0, 1))):
        r_e = peaceman_radius(h, h, k[:, a], k[:, b])
        log = np.maximum(np.log(r_e / r_w), math.log(1.5))
        t_d = 2.0 * math.pi * np.sqrt(k[:, a] * k[:, b]) * lengths[:, d] / log
        total += t_d * t_d
    return np.sqrt(total)


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
    k = np.asarray(k_xyz, dtype=np.float64)
    k_g = float(np.prod(k) ** (1.0 / 3.0))
    r_e = POINT_SOURCE_RADIUS_FACTOR * float(spacing_m)
    r_w = float(tip_radius_m)
    x, w = np.polynomial.legendre.leggauss(n_points)
    a, b = math.log(r_w), math.log(r_e)
    ln_r = 0.5 * (b - a) * x + 0.5 * (b + a)
    r = np.exp(ln_r)
    u = abs(float(flow_m3_s)) / (4.0 * math.pi * r * r)
    integrand = np.asarray(viscosity(u), dtype=np.float64) * u / k_g * r  # d r = r d ln r
    return float(0.5 * (b - a) * np.dot(w, integrand)) * (1.0 if flow_m3_s >= 0 else -1.0)


def segment_cell_pieces(
    p0: np.ndarray, p1: np.ndarray, origin_m: np.ndarray, spacing_m: float, shape: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Split segment p0-p1 at the faces of a uniform grid: (flat cell index (n,), projections (n, 3)).

    ``origin_m`` is the centre of cell (0, 0, 0). The pieces' lengths add up to |p1 - p0| exactly
    (pieces outside the grid are dropped). Exact ray traversal (Amanatides & Woo 1987).
    """
    p0 = np.asarray(p0, dtype=np.float64)
    p1 = np.asarray(p1, dtype=np.float64)
    h = float(spacing_m)
    corner = np.asarray(origin_m, dtype=np.float64) - 0.5 * h
    d = p1 - p0
    # parameters where the segment crosses a grid plane, per axis
    cuts = [0.0, 1.0]
    for ax in range(3):
        if d[ax] == 0.0:
            continue
        a, b = sorted(((p0[ax] - corner[ax]) / h, (p1[ax] - corner[ax]) / h))
        planes = np.arange(math.floor(a) + 1, math.ceil(b))
        cuts.extend(((planes * h + corner[ax]) - p0[ax]) / d[ax])
    t = np.unique(np.clip(np.asarray(cuts), 0.0, 1.0))
    mid = p0 + 0.5 * (t[:-1] + t[1:])[:, None] * d
    seg = np.abs(np.diff(t))[:, None] * np.abs(d)[None, :]
    ijk = np.floor((mid - corner) / h).astype(np.int64)
    inside = np.all((ijk >= 0) & (ijk < np.asarray(shape)), axis=1) & (np.diff(t) > 0)
    flat = np.ravel_multi_index(tuple(ijk[inside].T), shape).astype(np.int64)
    return flat, seg[inside]
