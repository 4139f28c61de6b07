"""The cannula tip as a point-source well (sim.physics.well_index, sim.physics.injection).

References, derived here:
- a sphere of radius r_w injecting Q into a homogeneous medium of permeability k, drained at radius R:
  p(r_w) - p(R) = mu Q / (4 pi k) (1/r_w - 1/R) (radial Darcy flow);
- the near field of a constant-viscosity source between r_w and r_e is mu Q / (4 pi k) (1/r_w - 1/r_e);
- the 7-point Laplacian's Green's function at the source, G(0) = W / (2 h k) with the simple-cubic
  Watson integral W = (1/pi^3) int_[0,pi]^3 dx dy dz / (3 - cos x - cos y - cos z), equals the
  continuous 1 / (4 pi k r_e) at r_e = h / (2 pi W). W is computed here by quadrature of its
  Laplace form W = int_0^inf (e^-t I_0(t))^3 dt (1/a = int_0^inf e^(-a t) dt, and
  (1/pi) int_0^pi e^(t cos x) dx = I_0(t)).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, special

from sim.core.grid import BoneGrid, Needle, VenousExit
from sim.physics.bone_vein_exchange import ForamenPoiseuille
from sim.physics.cure_clock import CureClock
from sim.physics.injection import BALL_FILL_STEPS, ConstantPressureCoupling, run_injection
from sim.physics.injection_control import InjectionControl
from sim.physics.kernel_cover import ball_cover
from sim.physics.rheology import CementModel
from sim.physics.well_index import (
    POINT_SOURCE_RADIUS_FACTOR,
    ball_source_correction,
    ball_source_near_field_pa,
    point_source_correction,
    point_source_near_field_pa,
    tip_kernel_radius,
)

MM = 1e-3
K = 4.0e-8  # m^2, isotropic
PHI = 0.9
MU = 50.0  # Pa s: the injected fluid and the fluid it displaces (single phase)
Q = 1.0e-7  # m^3/s
R_SPHERE = 18 * MM
R_TIP = 1.3 * MM


def sphere(
    h: float, radius: float = R_SPHERE, ball: bool = False, covered: bool = True
) -> tuple[BoneGrid, Needle]:
    """Homogeneous ball of porous cells (centres within ``radius``) drained at its rim to a constant
    pressure through one wide foramen (per-cell conductance far above the bone's), the tip at its centre;
    ``ball``: the tip's flow spread over the kernel ball as place_needle does (by each cell's covered
    share; ``covered=False``: equally over the cells whose centres lie in it), else a point source."""
    nr = int(np.ceil(radius / h)) + 1
    x = (np.arange(2 * nr + 1) - nr) * h
    xx, yy, zz = np.meshgrid(x, x, x, indexing="ij")
    porous = np.sqrt(xx**2 + yy**2 + zz**2) <= radius * (1 + 1e-12)
    rim = np.zeros_like(porous)
    for axis in range(3):
        for shift in (1, -1):
            rim |= ~np.roll(porous, shift, axis=axis)
    rim_cells = np.flatnonzero(porous & rim)
    exits = [VenousExit("rim", "lateral", rim_cells, np.zeros(3), diameter_m=20 * MM, length_m=1 * MM)]
    perm = np.zeros((3, *porous.shape))
    perm[:, porous] = K
    origin = np.full(3, -nr * h)
    bone = BoneGrid("sphere", h, origin, porous, porous.copy(), np.where(porous, PHI, 0.0), perm, exits)
    tip = np.ravel_multi_index((nr, nr, nr), porous.shape)
    tips, rho = np.array([tip]), 0.0
    if ball:
        rho = tip_kernel_radius(h, R_TIP)
        centres = np.stack([xx.ravel(), yy.ravel(), zz.ravel()], axis=-1)
        if covered:
            cover = np.where(porous.ravel(), ball_cover(centres, h, np.zeros(3), rho), 0.0)
        else:
            cover = np.where(porous.ravel() & (np.linalg.norm(centres, axis=1) <= rho), 1.0, 0.0)
        tips = np.flatnonzero(cover > 0.0)
        weights = cover[tips] / cover[tips].sum()
    else:
        weights = np.ones(1)
    needle = Needle(
        tip_cells=tips,
        tip_weights=weights,
        tip_kernel_radius_m=rho,
        tip_positions_m=np.zeros((1, 3)),
        entry_positions_m=np.zeros((1, 3)),
        path_cells=np.zeros(0, dtype=np.int64),
        inner_diameter_m=2 * R_TIP,
        length_m=0.125,
        tip_radius_m=R_TIP,
    )
    return bone, needle


@pytest.mark.parametrize("ball", [False, True], ids=["point", "ball"])
@pytest.mark.parametrize("h", [2 * MM, 1 * MM, 0.5 * MM], ids=["2mm", "1mm", "0.5mm"])
def test_needle_pressure_of_a_sphere_in_a_homogeneous_ball(h, ball):
    """Single phase (marrow viscosity = fluid viscosity): the needle pressure of the first step is
    mu Q / (4 pi k) (1/r_w - 1/R) within 5 % at 2, 1 and 0.5 mm (the grid's cells are 0.4-1.5 r_w),
    with the tip a point source in one cell or the flow spread over the kernel ball."""
    bone, needle = sphere(h, ball=ball)
    fluid = CementModel.newtonian(MU)
    clock = CureClock.for_cement(fluid, 0.0, 294.15, 310.15)
    # a target volume well inside the first step's volume: one (shortened) step, the first pressure solve
    control = InjectionControl(rate_m3_per_s=Q, target_volume_m3=Q * 1e-5, max_syringe_pressure_pa=None)
    res = run_injection(
        bone, needle, fluid, clock, MU, control, ConstantPressureCoupling(0.0, 1), method="impes",
        exchange=ForamenPoiseuille(),
    )  # fmt: skip
    assert res.stop_reason == "target_volume" and res.n_steps == 1
    assert res.injection_rate_m3_s[0] == pytest.approx(Q, rel=1e-15)
    exact = MU * Q / (4.0 * math.pi * K) * (1.0 / R_TIP - 1.0 / R_SPHERE)
    assert res.needle_pressure_pa[0] == pytest.approx(exact, rel=0.05)
    # the near field carries the part inside the tip cell: without it the cell pressure alone is off
    r_e = POINT_SOURCE_RADIUS_FACTOR * h
    near = MU * Q / (4.0 * math.pi * K) * (1.0 / R_TIP - 1.0 / r_e)
    assert abs(near) > 0.05 * exact


@pytest.mark.parametrize("r_w_mm", [0.3, 1.3, 4.0])  # tip inside / larger than the equivalent radius
@pytest.mark.parametrize("k_xyz", [(4e-8, 4e-8, 4e-8), (2e-8, 3e-8, 9e-8)])
def test_constant_viscosity_near_field_is_the_point_source_difference(r_w_mm, k_xyz):
    h, mu, q = 1.0 * MM, 37.0, 2.5e-7
    r_w, r_e = r_w_mm * MM, POINT_SOURCE_RADIUS_FACTOR * h
    k_g = float(np.prod(k_xyz)) ** (1.0 / 3.0)
    exact = q * mu / (4.0 * math.pi * k_g) * (1.0 / r_w - 1.0 / r_e)
    k = np.array(k_xyz)
    got = point_source_near_field_pa(q, h, r_w, k, lambda u: np.full_like(np.asarray(u, dtype=float), mu))
    assert got == pytest.approx(exact, rel=1e-10)
    assert q * mu * point_source_correction(h, r_w, k) == pytest.approx(exact, rel=1e-10)
    # a flow into the tip reverses the near field
    back = point_source_near_field_pa(-q, h, r_w, k, lambda u: np.full_like(np.asarray(u, dtype=float), mu))
    assert back == pytest.approx(-exact, rel=1e-10)


def test_point_source_radius_factor_is_one_over_two_pi_watson():
    w1, err1 = integrate.quad(lambda t: special.i0e(t) ** 3, 0.0, 50.0, limit=500, epsabs=1e-14)
    w2, err2 = integrate.quad(lambda t: special.i0e(t) ** 3, 50.0, np.inf, limit=500, epsabs=1e-14)
    watson = w1 + w2
    assert err1 + err2 < 1e-10
    assert watson == pytest.approx(0.505462, abs=1e-6)  # Watson 1939
    assert POINT_SOURCE_RADIUS_FACTOR == pytest.approx(1.0 / (2.0 * math.pi * watson), abs=1e-6)


@pytest.mark.parametrize("r_w_mm", [0.3, 1.3])
@pytest.mark.parametrize("k_xyz", [(4e-8, 4e-8, 4e-8), (2e-8, 3e-8, 9e-8)])
def test_constant_viscosity_ball_near_field_is_the_closed_form(r_w_mm, k_xyz):
    """Point source on the tip minus the ball source's mean over itself: Q mu/(4 pi k)(1/r_w - 6/(5 rho))."""
    mu, q, rho = 37.0, 2.5e-7, 2.0 * MM
    r_w = r_w_mm * MM
    k_g = float(np.prod(k_xyz)) ** (1.0 / 3.0)
    exact = q * mu / (4.0 * math.pi * k_g) * (1.0 / r_w - 6.0 / (5.0 * rho))
    k = np.array(k_xyz)
    const = lambda u: np.full_like(np.asarray(u, dtype=float), mu)  # noqa: E731
    assert ball_source_near_field_pa(q, rho, r_w, k, const) == pytest.approx(exact, rel=1e-10)
    assert q * mu * ball_source_correction(rho, r_w, k) == pytest.approx(exact, rel=1e-10)
    assert ball_source_near_field_pa(-q, rho, r_w, k, const) == pytest.approx(-exact, rel=1e-10)


@pytest.mark.parametrize("n", [0.4, 0.7, 1.0])
def test_power_law_ball_near_field_is_its_closed_form(n):
    """mu = c u^(n-1): g(u) = c u^n / k; the point part is c (Q/4pi)^n (r_w^(1-2n) - rho^(1-2n)) / ((2n-1) k)
    (ln(rho/r_w) at n = 1/2), the ball's mean c (Q/(4 pi rho^3))^n rho^(n+1) / ((n+4) k)."""
    c, q, rho, r_w, k = 3.0e-3, 2.0e-7, 2.0 * MM, 1.3 * MM, 4.0e-8
    a = q / (4.0 * math.pi)
    point = c * a**n * (r_w ** (1 - 2 * n) - rho ** (1 - 2 * n)) / ((2 * n - 1) * k)
    ball = c * (a / rho**3) ** n * rho ** (n + 1) / ((n + 4) * k)
    got = ball_source_near_field_pa(
        q, rho, r_w, np.full(3, k), lambda u: c * np.asarray(u, dtype=float) ** (n - 1)
    )
    assert got == pytest.approx(point - ball, rel=1e-4)


@pytest.mark.parametrize("h_mm", [0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0])
def test_tip_kernel_radius_is_fixed_on_fine_grids_and_resolved_on_coarse_ones(h_mm):
    rho = tip_kernel_radius(h_mm * MM, R_TIP)
    assert rho == pytest.approx(max(2.0 * MM, 1.5 * R_TIP, 2.0 * h_mm * MM), rel=1e-15)
    if h_mm <= 1.0:
        assert rho == pytest.approx(2.0 * MM, rel=1e-15)
    assert rho >= 2.0 * h_mm * MM and rho > R_TIP


def test_ball_kernel_fills_as_a_bolus_whatever_the_time_step():
    """Cement 100 times as viscous as the marrow, 0.6 of the ball's pore volume injected on a 1 mm grid:
    the ball's cells fill together, so the cement that has left the ball (about 0.3 % of the ball's
    volume, the fractional flow's trace) must not depend on the step. Without the ball-fill step limit
    CFL 0.8 fills the ball in one step and lets 0.86 % out, against 0.39 % at CFL 0.1. The limit is
    the same on every grid (a step fills at most cfl / BALL_FILL_STEPS of the ball): at 0.5 mm
    (about 270 cells in the ball) the trace is the 1 mm grid's within 10 % in as many steps."""
    outside, steps = {}, {}
    for h_mm, cfl in ((1.0, 0.8), (1.0, 0.1), (0.5, 0.8)):
        h = h_mm * MM
        bone, needle = sphere(h, radius=8 * MM, ball=True, covered=False)  # every tip cell in the core
        fluid = CementModel.newtonian(100.0)
        clock = CureClock.for_cement(fluid, 0.0, 294.15, 310.15)
        v_ball = PHI * h**3 * needle.tip_cells.size
        control = InjectionControl(
            rate_m3_per_s=Q, target_volume_m3=0.6 * v_ball, max_syringe_pressure_pa=None
        )
        res = run_injection(
            bone, needle, fluid, clock, 1.0, control, ConstantPressureCoupling(0.0, 1), cfl=cfl,
            exchange=ForamenPoiseuille(),
        )  # fmt: skip
        assert res.stop_reason == "target_volume"
        assert res.n_steps >= BALL_FILL_STEPS * 0.6 / cfl - 1  # at most cfl / BALL_FILL_STEPS per step
        cement = res.cement_fraction.reshape(-1) * PHI * h**3
        in_ball = np.zeros(cement.size, dtype=bool)
        in_ball[needle.tip_cells] = True
        outside[h_mm, cfl] = float(cement[~in_ball].sum()) / v_ball
        steps[h_mm, cfl] = res.n_steps
        assert float(cement.sum()) == pytest.approx(0.6 * v_ball, rel=1e-9)
    assert 0.0 < outside[1.0, 0.1] < 0.01
    assert outside[1.0, 0.8] == pytest.approx(outside[1.0, 0.1], rel=0.1)
    # the same time resolution of the fill on both grids (the old limit, cfl of one ball cell per step,
    # took 8 times as many steps at 0.5 mm)
    assert outside[0.5, 0.8] == pytest.approx(outside[1.0, 0.8], rel=0.1)
    assert steps[0.5, 0.8] <= 1.5 * steps[1.0, 0.8]


def test_covered_ball_fills_its_core_within_the_step_limit():
    """Cells the ball only cuts take less of the flow than cells inside it, so the ball-fill limit
    follows its core: the tip cells with at least half the largest source per pore volume (cover
    >= 0.5 here). Every step obeys dt <= cfl V_tip / (BALL_FILL_STEPS q) (V_tip the pore volume of
    all tip cells) until the core is full; then the limit lifts although cut cells are still filling
    (with the limit on every tip cell it would hold until the last cut cell filled)."""
    h, cfl = 1 * MM, 0.8
    bone, needle = sphere(h, radius=8 * MM, ball=True)
    cover = ball_cover(bone.cell_centers_m(needle.tip_cells), h, np.zeros(3), needle.tip_kernel_radius_m)
    fluid = CementModel.newtonian(100.0)
    clock = CureClock.for_cement(fluid, 0.0, 294.15, 310.15)
    v_tip = PHI * h**3 * needle.tip_cells.size
    v_covered = PHI * h**3 * cover.sum()
    assert 1.5 * v_covered < v_tip  # the cut shell holds most of the tip cells
    target = 2.5 * v_covered
    control = InjectionControl(rate_m3_per_s=Q, target_volume_m3=target, max_syringe_pressure_pa=None)
    limit = cfl * v_tip / (BALL_FILL_STEPS * Q)
    seen = {"core": None, "steps": []}

    def on_step(solver) -> None:
        if seen["core"] is None:
            seen["core"] = solver.graph.cell_of[np.flatnonzero(solver.ball_core)]
        s = solver.state.saturation
        seen["steps"].append(
            (bool(np.all(s[solver.ball_core] >= 0.99)), bool(np.any(s[solver.tip_mask] < 0.99)))
        )

    res = run_injection(
        bone, needle, fluid, clock, 1.0, control, ConstantPressureCoupling(0.0, 1), cfl=cfl,
        exchange=ForamenPoiseuille(), on_step=on_step,
    )  # fmt: skip
    np.testing.assert_array_equal(np.sort(seen["core"]), np.sort(needle.tip_cells[cover >= 0.5 - 1e-12]))
    assert res.stop_reason == "target_volume"
    core_full = np.array([c for c, _ in seen["steps"]])
    shell_filling = np.array([f for _, f in seen["steps"]])
    first_full = int(np.argmax(core_full))
    assert core_full.any() and np.all(res.dt_s[: first_full + 1] <= limit * (1 + 1e-9))
    # after the core is full some step exceeds the limit while a cut cell is still below 0.99
    later = np.arange(res.n_steps) > first_full
    assert np.any(later[:-1] & shell_filling[:-1] & (res.dt_s[1:] > limit * 1.01))
