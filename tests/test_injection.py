"""Tests of the 3D two-phase Darcy injection solver.

Modules: sim.physics.injection, sim.physics.pressure, sim.physics.cement_transport.

Synthetic geometries only (homogeneous spheres and boxes), so these tests do not depend on
sim.physics.bone. Analytic references:
- constant-rate point source in an infinite homogeneous medium with a piston front: front radius
  r_f = (3 Q t / (4 pi phi))^(1/3), cement pressure drop Q mu/(4 pi k) (1/r_n - 1/r_f);
- r_n of a single source cell on the 7-point TPFA lattice: the discrete Green's function at the
  origin of the simple cubic lattice is G(0) = W/2 with Watson's integral W = 0.505462
  (Watson 1939, Q J Math 10:266), so p_cell = Q mu G(0)/(k h) matches Q mu/(4 pi k r_n) for
  r_n = h / (4 pi G(0)) = 0.3149 h.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sim.core.errors import ConfigError, GeometryError, SolverError
from sim.core.grid import BoneGrid, Needle, VenousExit
from sim.physics.cement_transport import transport_step, transport_step_numpy
from sim.physics.cure_clock import CureClock
from sim.physics.injection import ConstantPressureCoupling, mixture_mobility, run_injection
from sim.physics.injection_control import InjectionControl
from sim.physics.pressure import PressureSolver
from sim.physics.rheology import CementModel
from sim.run.recorder import RunRecorder

WATSON_G0 = 0.505462 / 2.0
K = 4.0e-8
PHI = 0.9
MU_M = 0.04


def _bone(porous, perm, h, exits, phi=PHI):
    n = np.array(porous.shape)
    origin = -0.5 * (n - 1) * h
    porosity = np.where(porous, phi, 0.0)
    return BoneGrid("test", h, origin, porous, porous.copy(), porosity, perm, exits)


def _needle(shape, ijk, d=2.5e-3, length=0.125):
    c = np.ravel_multi_index(ijk, shape)
    return Needle(
        np.array([c]), np.array([1.0]), np.zeros((1, 3)), np.zeros((1, 3)), np.zeros(0, np.int64), d, length
    )


def sphere_case(radius_mm: float, h_mm: float):
    """Homogeneous isotropic ball drained at its rim by one wide exit (near-Dirichlet boundary)."""
    h = h_mm * 1e-3
    nr = int(np.ceil(radius_mm / h_mm)) + 1
    x = (np.arange(2 * nr + 1) - nr) * h
    xx, yy, zz = np.meshgrid(x, x, x, indexing="ij")
    r = np.sqrt(xx**2 + yy**2 + zz**2)
    porous = r <= radius_mm * 1e-3
    rim = np.zeros_like(porous)
    for ax in range(3):
        for sh in (1, -1):
            rim |= ~np.roll(porous, sh, axis=ax)
    cells = np.flatnonzero(porous & rim)
    exits = [VenousExit("rim", "lateral", cells, np.zeros(3), diameter_m=20e-3, length_m=1e-3)]
    perm = np.zeros((3, *porous.shape))
    perm[:, porous] = K
    return _bone(porous, perm, h, exits), _needle(porous.shape, (nr, nr, nr)), r


def box_case(n=(24, 24, 24), h_mm=1.0, exit_ijk=None, exit_kind="basivertebral"):
    """Box of porous cells inside a one-cell impermeable shell, exits at given cells."""
    h = h_mm * 1e-3
    porous = np.zeros(n, dtype=bool)
    porous[1:-1, 1:-1, 1:-1] = True
    perm = np.zeros((3, *n))
    perm[:, porous] = K
    exits = []
    for e, ijk in enumerate(exit_ijk or [(n[0] // 2, 1, n[2] // 2)]):
        cells = np.array([np.ravel_multi_index(ijk, n)])
        exits.append(VenousExit(f"exit{e}", exit_kind, cells, np.zeros(3), diameter_m=3e-3, length_m=3e-3))
    return porous, perm, h, exits


def control(volume_m3, rate=1e-7, **kw):
    kw.setdefault("max_syringe_pressure_pa", None)
    return InjectionControl(rate_m3_per_s=rate, target_volume_m3=volume_m3, **kw)


def _run(bone, needle, mu=100.0, volume=1e-6, method="front", coupling=None, **kw):
    coupling = coupling or ConstantPressureCoupling(0.0, len(bone.exits))
    ctl = kw.pop("ctl", None) or control(volume)
    cement = CementModel.newtonian(mu)
    clock = CureClock.for_cement(cement, 0.0, 294.15, 310.15)
    return run_injection(bone, needle, cement, clock, MU_M, ctl, coupling, method=method, **kw)


def analytic_needle_pressure(q, mu, r_n, r_f, r_out):
    return q * mu / (4 * np.pi * K) * (1 / r_n - 1 / r_f) + q * MU_M / (4 * np.pi * K) * (1 / r_f - 1 / r_out)


def front_radius_second_moment(res, r):
    w = res.cement_fraction
    return np.sqrt(5.0 / 3.0 * (w * r**2).sum() / w.sum())


@pytest.fixture(scope="module")
def sphere_1mm():
    bone, needle, r = sphere_case(14.0, 1.0)
    res = _run(bone, needle, mu=100.0, volume=2e-6)
    return bone, needle, r, res


# ------------------------------------------------------------------ analytic sphere


def test_sphere_front_radius_and_needle_pressure_1mm(sphere_1mm):
    bone, _, r, res = sphere_1mm
    q, v, h = 1e-7, 2e-6, bone.spacing_m
    assert res.stop_reason == "target_volume"
    r_f = (3 * v / (4 * np.pi * PHI)) ** (1 / 3)
    assert front_radius_second_moment(res, r) == pytest.approx(r_f, rel=0.05)
    # every cell well inside the analytic front is full, every cell well outside is empty
    assert res.cement_fraction[r < r_f - 2 * h].min() > 0.99
    assert res.cement_fraction[(r > r_f + 2 * h) & bone.porous].max() < 1e-3
    r_n = h / (4 * np.pi * WATSON_G0)
    expected = analytic_needle_pressure(q, 100.0, r_n, r_f, 14e-3)
    assert res.needle_pressure_pa[-1] == pytest.approx(expected, rel=0.05)
    # arrival time of a cell at radius r: t = 4 pi phi r^3 / (3 Q)
    at = res.arrival_time_s
    sel = np.isfinite(at) & (r > 3 * h) & (r < r_f - 2 * h)
    t_exact = 4 * np.pi * PHI * r[sel] ** 3 / (3 * q)
    assert abs(np.median(at[sel] / t_exact - 1.0)) < 0.05


def test_sphere_needle_pressure_history_follows_analytic(sphere_1mm):
    bone, _, _, res = sphere_1mm
    h = bone.spacing_m
    r_n = h / (4 * np.pi * WATSON_G0)
    # pressure of step i is solved at its start, with the volume injected before it
    v_start = res.injected_volume_m3 - res.injection_rate_m3_s * res.dt_s
    sel = v_start > 0.3e-6
    r_f = (3 * v_start[sel] / (4 * np.pi * PHI)) ** (1 / 3)
    expected = analytic_needle_pressure(1e-7, 100.0, r_n, r_f, 14e-3)
    np.testing.assert_allclose(res.needle_pressure_pa[sel], expected, rtol=0.05)


def test_mass_balance_every_step(sphere_1mm):
    bone, _, _, res = sphere_1mm
    assert res.max_mass_balance_error <= 1e-10
    # independent of the solver's own bookkeeping: cement volume from the returned field
    in_bone = float((res.cement_fraction * bone.porosity).sum() * bone.spacing_m**3)
    injected = res.injected_volume_m3[-1]
    assert injected == pytest.approx(2e-6, rel=1e-14)  # lands exactly on the target
    assert abs(injected - in_bone - res.exit_cement_volume_m3.sum()) <= 1e-10 * injected
    assert abs(in_bone - res.exit_marrow_volume_m3.sum()) <= 1e-10 * injected
    # per-step series: injected = in bone + leaked
    err = np.abs(res.injected_volume_m3 - res.cement_in_bone_series_m3 - res.cement_leaked_series_m3)
    assert np.all(err <= 1e-10 * res.injected_volume_m3)


@pytest.mark.slow
def test_sphere_half_mm_accuracy():
    """At 0.5 mm the same checks hold to 3 % (measured ~0.5 %, see the closing report)."""
    bone, needle, r = sphere_case(12.0, 0.5)
    res = _run(bone, needle, mu=100.0, volume=1.5e-6)
    h = bone.spacing_m
    r_f = (3 * 1.5e-6 / (4 * np.pi * PHI)) ** (1 / 3)
    assert front_radius_second_moment(res, r) == pytest.approx(r_f, rel=0.03)
    expected = analytic_needle_pressure(1e-7, 100.0, h / (4 * np.pi * WATSON_G0), r_f, 12e-3)
    assert res.needle_pressure_pa[-1] == pytest.approx(expected, rel=0.03)
    assert res.max_mass_balance_error <= 1e-10


# ------------------------------------------------------------------ front vs IMPES


@pytest.fixture(scope="module")
def front_and_impes():
    bone, needle, r = sphere_case(9.0, 1.0)
    out = {}
    for method in ("front", "impes"):
        out[method] = _run(bone, needle, mu=100.0, volume=0.5e-6, method=method)
    return bone, r, out


def test_front_agrees_with_impes(front_and_impes):
    bone, r, out = front_and_impes
    f, i = out["front"], out["impes"]
    assert i.n_steps > 5 * f.n_steps  # IMPES is limited by the inlet CFL, the front method is not
    assert f.needle_pressure_pa[-1] == pytest.approx(i.needle_pressure_pa[-1], rel=0.02)
    assert front_radius_second_moment(f, r) == pytest.approx(front_radius_second_moment(i, r), rel=0.02)
    both = np.isfinite(f.arrival_time_s) & np.isfinite(i.arrival_time_s) & (r > 2e-3)
    assert both.sum() > 100
    assert abs(np.median(f.arrival_time_s[both] / i.arrival_time_s[both] - 1.0)) < 0.05
    # same cells are cement-filled (S > 0.5) except for a thin front layer
    fs, is_ = f.cement_fraction > 0.5, i.cement_fraction > 0.5
    assert (fs ^ is_).sum() < 0.15 * is_.sum()


def test_impes_mass_balance_and_analytic(front_and_impes):
    bone, r, out = front_and_impes
    i = out["impes"]
    assert i.max_mass_balance_error <= 1e-10
    h = bone.spacing_m
    r_f = (3 * 0.5e-6 / (4 * np.pi * PHI)) ** (1 / 3)
    expected = analytic_needle_pressure(1e-7, 100.0, h / (4 * np.pi * WATSON_G0), r_f, 9e-3)
    assert i.needle_pressure_pa[-1] == pytest.approx(expected, rel=0.05)


# ------------------------------------------------------------------ transport kernel


def _random_potential_flow(rng, shape=(7, 6, 5), m_scale=1e3):
    """Faces of a box, fluxes from a random pressure field (acyclic), a source and exits."""
    porous = np.ones(shape, dtype=bool)
    from sim.physics.pressure import build_cell_graph

    perm = np.full((3, *shape), K)
    g = build_cell_graph(porous, perm, 1e-3, np.array([0]), np.array([porous.size - 1]))
    n = g.n
    p = rng.random(n)
    p[0] = 2.0  # source cell has the highest pressure
    trans = rng.random(g.n_faces) * 1e-9
    flux = trans * (p[g.face_a] - p[g.face_b])
    out_faces = np.bincount(np.where(flux > 0, g.face_a, g.face_b), weights=np.abs(flux), minlength=n)
    in_faces = np.bincount(np.where(flux > 0, g.face_b, g.face_a), weights=np.abs(flux), minlength=n)
    # close the balance of every cell: deficits are exit outflows, surpluses a source
    net = in_faces - out_faces
    exit_out = np.maximum(net, 0.0)
    source = np.maximum(-net, 0.0)
    s_old = np.clip(rng.random(n) * 1.4 - 0.2, 0.0, 1.0)
    ratio = m_scale * (0.5 + rng.random(n))
    pore = 1e-9 * (0.5 + rng.random(n))
    order = np.argsort(-p, kind="stable").astype(np.int64)
    return g, flux, source, exit_out, pore, ratio, s_old, order


@pytest.mark.parametrize("m_scale", [1.0, 1e3, 1e5, "with lumens"])
def test_numba_transport_matches_numpy_reference(m_scale):
    rng = np.random.default_rng(7)
    scale = 1e3 if m_scale == "with lumens" else m_scale
    g, flux, source, exit_out, pore, ratio, s_old, order = _random_potential_flow(rng, m_scale=scale)
    if m_scale == "with lumens":  # a third of the cells are lumen nodes (pistons, m = inf)
        ratio[rng.random(ratio.size) < 1.0 / 3.0] = np.inf
    dt = 0.7 * float(np.min(pore / np.maximum(source + exit_out + 1e-30, 1e-30)))
    dt = max(dt, 1e-3)
    s1, f1 = transport_step(
        order,
        g.cell_ptr,
        g.cell_face,
        g.cell_nbr,
        g.cell_sign,
        flux,
        source,
        exit_out,
        pore,
        ratio,
        s_old,
        dt,
    )
    s2, f2 = transport_step_numpy(g.face_a, g.face_b, flux, source, exit_out, pore, ratio, s_old, dt)
    np.testing.assert_allclose(s1, s2, rtol=0, atol=1e-12)
    np.testing.assert_allclose(f1, f2, rtol=0, atol=1e-12)
    # implicit upwind: bounded and conservative for any step
    assert s1.min() >= 0.0 and s1.max() <= 1.0 + 1e-12
    cement_out = float((exit_out * f1).sum())
    assert float((pore * (s1 - s_old)).sum()) == pytest.approx(dt * (source.sum() - cement_out), rel=1e-12)


@pytest.mark.parametrize("m_scale", [1e3, "with lumens"])
def test_numba_transport_matches_numpy_reference_with_cement_only_routes(m_scale):
    """A third of the faces carry cement only out of one side, a third of the exits too: kernel and
    reference agree, the step stays bounded and conserves cement, and without any flag it is bit for
    bit the fractional-flow step."""
    rng = np.random.default_rng(11)
    g, flux, source, exit_out, pore, ratio, s_old, order = _random_potential_flow(rng, m_scale=1e3)
    if m_scale == "with lumens":
        ratio[rng.random(ratio.size) < 1.0 / 3.0] = np.inf
    dt = max(0.7 * float(np.min(pore / np.maximum(source + exit_out + 1e-30, 1e-30))), 1e-3)
    args = (order, g.cell_ptr, g.cell_face, g.cell_nbr, g.cell_sign, flux, source)
    s0, f0 = transport_step(*args, exit_out, pore, ratio, s_old, dt)
    s_none, f_none = transport_step(
        *args, exit_out, pore, ratio, s_old, dt, np.zeros(g.n_faces, dtype=np.int8), np.zeros_like(exit_out)
    )
    assert np.array_equal(s0, s_none) and np.array_equal(f0, f_none)
    side = np.where(rng.random(g.n_faces) < 1.0 / 3.0, rng.integers(1, 3, g.n_faces), 0).astype(np.int8)
    split = rng.random(exit_out.size) < 1.0 / 3.0
    exit_only, exit_rest = np.where(split, exit_out, 0.0), np.where(split, 0.0, exit_out)
    f_only = np.zeros_like(s_old)
    s1, f1 = transport_step(*args, exit_rest, pore, ratio, s_old, dt, side, exit_only, f_only)
    s2, f2 = transport_step_numpy(
        g.face_a, g.face_b, flux, source, exit_rest, pore, ratio, s_old, dt, side, exit_only
    )
    np.testing.assert_allclose(s1, s2, rtol=0, atol=1e-12)
    np.testing.assert_allclose(f1, f2, rtol=0, atol=1e-12)
    assert not np.allclose(s1, s0)  # the flags matter
    assert s1.min() >= 0.0 and s1.max() <= 1.0 + 1e-12 and f_only.min() >= 0.0 and f_only.max() <= 1.0
    cement_out = float((exit_rest * f1).sum() + (exit_only * f_only).sum())
    assert float((pore * (s1 - s_old)).sum()) == pytest.approx(dt * (source.sum() - cement_out), rel=1e-12)


def _two_cells(s0: float, q: float, cement_only: bool, fed: bool = True):
    """A bone cell (m = 500, pore volume 1e-9 m^3, saturation s0; fed cement at q, or marrow) draining
    at q into a lumen node (a piston) that drains to an exit; the face carries cement only when asked."""
    from sim.physics.pressure import build_cell_graph

    porous = np.ones((2, 1, 1), dtype=bool)
    g = build_cell_graph(porous, np.full((3, 2, 1, 1), K), 1e-3, np.array([0]), np.array([1]))
    side = np.full(g.n_faces, 1 if cement_only else 0, dtype=np.int8)  # out of cell 0 (side a)
    f_only = np.zeros(2)
    s, f = transport_step(
        np.array([0, 1], dtype=np.int64), g.cell_ptr, g.cell_face, g.cell_nbr, g.cell_sign,
        np.full(g.n_faces, q), np.array([q if fed else 0.0, 0.0]), np.array([0.0, q]), np.array([1e-9, 1e-9]),
        np.array([500.0, np.inf]), np.array([s0, 0.0]), 1.0, side, np.zeros(2), f_only,
    )  # fmt: skip
    return s, f, f_only


def test_a_cement_only_route_carries_cement_at_the_mobility_of_the_new_saturation():
    """A half-filled bone cell fed cement at q sends q of cement into the lumen along a cement-only
    route and keeps its saturation (the upwind fractional flow would send f(0.5) = 0.2 % of it and
    fill the cell); a cell fed nothing empties into the route implicitly, S = S0 / (1 + O_c / (V S0)),
    its cement all in the lumen, never below zero whatever the step."""
    q = 0.2e-9
    s, _, f_only = _two_cells(0.5, q, cement_only=True)
    assert f_only[0] == pytest.approx(1.0, rel=1e-12)
    assert s[0] == pytest.approx(0.5, rel=1e-12) and s[1] == pytest.approx(0.2, rel=1e-12)
    s_ff, _, _ = _two_cells(0.5, q, cement_only=False)
    assert s_ff[1] < 0.01 * s[1] and s_ff[0] > 0.69
    for out in (0.01e-9, 2.0e-9, 1e-3):  # from a small to an absurdly long step
        s, _, f_only = _two_cells(0.05, out, cement_only=True, fed=False)
        expected = 0.05 / (1.0 + out / (1e-9 * 0.05))
        assert s[0] == pytest.approx(expected, rel=1e-12) and s[0] >= 0.0
        assert f_only[0] == pytest.approx(expected / 0.05, rel=1e-12)
        assert s[0] + s[1] == pytest.approx(0.05, rel=1e-12)  # the rest is in the lumen


def test_transport_piston_limit_single_column():
    """1D column, huge viscosity ratio: the cement front is a piston moving at Q/(phi A)."""
    from sim.physics.pressure import build_cell_graph

    n = 40
    porous = np.ones((n, 1, 1), dtype=bool)
    g = build_cell_graph(porous, np.full((3, n, 1, 1), K), 1e-3, np.array([0]), np.array([n - 1]))
    q = 1e-9
    flux = np.full(g.n_faces, q)
    source = np.zeros(n)
    source[0] = q
    exit_out = np.zeros(n)
    exit_out[-1] = q
    pore = np.full(n, 1e-9)
    s = np.zeros(n)
    order = np.arange(n, dtype=np.int64)
    ratio = np.full(n, 1e4)
    dt = 0.8  # cfl 0.8
    for _ in range(25):  # 20 pore volumes of cells
        s, _ = transport_step(
            order,
            g.cell_ptr,
            g.cell_face,
            g.cell_nbr,
            g.cell_sign,
            flux,
            source,
            exit_out,
            pore,
            ratio,
            s,
            dt,
        )
    assert s.sum() == pytest.approx(20.0, rel=1e-12)
    assert np.all(s[:18] > 0.999) and np.all(s[23:] < 1e-3)


@pytest.mark.parametrize("n_nodes", [3, 6, 13])
def test_lumen_chain_passes_cement_as_a_piston_on_any_chain(n_nodes):
    """A vein lumen fed cement at rate q passes none until it is full, then all of it.

    Exact piston: the cement out of the chain by time t is max(0, q t - V_lumen), whatever the
    number of nodes the lumen is split into. The porous law (m = 286, cement of 1 Pa s against
    blood) lets cement out from the first step, so the test can fail.
    """
    from sim.physics.cement_transport import fractional_flow
    from sim.physics.pressure import build_cell_graph

    porous = np.ones((n_nodes, 1, 1), dtype=bool)
    g = build_cell_graph(porous, np.full((3, n_nodes, 1, 1), K), 1e-3, np.array([0]), np.array([n_nodes - 1]))
    q, v_lumen = 1e-9, 6e-9
    flux = np.full(g.n_faces, q)
    source = np.zeros(n_nodes)
    source[0] = q
    exit_out = np.zeros(n_nodes)
    exit_out[-1] = q
    pore = np.full(n_nodes, v_lumen / n_nodes)
    order = np.arange(n_nodes, dtype=np.int64)
    dt = 0.35  # s: about a node's volume per step on the finest chain

    def out_by(ratio: float, n_steps: int) -> list[float]:
        s, out, total = np.zeros(n_nodes), [], 0.0
        for _ in range(n_steps):
            s, f = transport_step(
                order, g.cell_ptr, g.cell_face, g.cell_nbr, g.cell_sign, flux, source, exit_out, pore,
                np.full(n_nodes, ratio), s, dt,
            )  # fmt: skip
            total += dt * q * f[-1]
            out.append(total)
        return out

    steps = 30
    exact = [max(0.0, q * dt * (k + 1) - v_lumen) for k in range(steps)]
    np.testing.assert_allclose(out_by(np.inf, steps), exact, rtol=0, atol=1e-12 * v_lumen)
    before_full = int(v_lumen / (q * dt)) - 1  # the last step that ends with the lumen not yet full
    porous = out_by(286.0, steps)[before_full]
    assert porous > 1e-3 * v_lumen  # side by side, cement runs ahead of the front
    # the fractional flow of a lumen node: none until full, all once full
    np.testing.assert_array_equal(fractional_flow(np.array([0.0, 0.5, 0.999, 1.0]), np.inf), [0, 0, 0, 1])


# ------------------------------------------------------------------ physics trends


def test_higher_cement_viscosity_gives_higher_needle_pressure():
    bone, needle, _ = sphere_case(8.0, 1.0)
    p = [_run(bone, needle, mu=mu, volume=0.3e-6).needle_pressure_pa[-1] for mu in (30.0, 300.0)]
    assert p[1] > 5.0 * p[0]


def test_tip_near_exit_leaks_earlier():
    n = (30, 22, 22)
    porous, perm, h, exits = box_case(n, exit_ijk=[(15, 1, 11)])
    bone = _bone(porous, perm, h, exits)
    near = _run(bone, _needle(n, (15, 5, 11)), volume=2.5e-6)
    far = _run(bone, _needle(n, (15, 18, 11)), volume=2.5e-6)
    assert np.isfinite(near.leak_onset_s[0])
    assert not np.isfinite(far.leak_onset_s[0]) or far.leak_onset_s[0] > near.leak_onset_s[0]
    assert near.cement_leaked_m3 > far.cement_leaked_m3
    # the basivertebral exit drains marrow before any cement reaches it
    onset = np.searchsorted(near.times_s, near.leak_onset_s[0])
    assert np.all(near.exit_marrow_flux_m3_s[:onset, 0] > 0.0)


def test_high_permeability_slab_channels_cement():
    n = (26, 26, 26)
    porous, perm, h, exits = box_case(n, exit_ijk=[(13, 1, 13), (13, 24, 13), (1, 13, 13), (24, 13, 13)])
    slab = np.zeros(n, dtype=bool)
    slab[1:-1, 1:-1, 12:14] = True
    needle = _needle(n, (13, 13, 12))
    share = {}
    for name, factor in (("homogeneous", 1.0), ("slab", 20.0)):
        pk = perm.copy()
        pk[:, slab] *= factor
        res = _run(_bone(porous, pk, h, exits), needle, volume=1e-6)
        share[name] = res.cement_fraction[slab].sum() / res.cement_fraction.sum()
    slab_volume_share = slab.sum() / porous.sum()
    assert share["slab"] > 2.0 * slab_volume_share
    assert share["slab"] > 1.5 * share["homogeneous"]


def test_determinism_bit_identical():
    n = (16, 14, 12)
    porous, perm, h, exits = box_case(n, exit_ijk=[(8, 1, 6), (1, 7, 6)])
    rng = np.random.default_rng(11)
    perm = perm * np.exp(rng.normal(0.0, 0.5, size=n))[None]
    perm[:, ~porous] = 0.0
    bone = _bone(porous, perm, h, exits)
    runs = [_run(bone, _needle(n, (8, 8, 6)), volume=0.4e-6) for _ in range(2)]
    for name in (
        "cement_fraction",
        "arrival_time_s",
        "pressure_pa",
        "needle_pressure_pa",
        "exit_cement_flux_m3_s",
    ):
        np.testing.assert_array_equal(getattr(runs[0], name), getattr(runs[1], name))


# ------------------------------------------------------------------ control and stopping


@pytest.mark.parametrize("tip_radius_mm", [0.0, 0.3])
def test_pressure_limited_mode_never_exceeds_limit(tip_radius_mm):
    """The syringe pressure the run reports (with the tip's near field when the tip has a radius)
    stays at or below the limit, and sits on it where the rate was reduced."""
    import dataclasses

    bone, needle, _ = sphere_case(8.0, 1.0)
    needle = dataclasses.replace(needle, tip_radius_m=tip_radius_mm * 1e-3)
    free = _run(bone, needle, mu=100.0, volume=0.4e-6)
    limit = 0.8 * float(free.syringe_pressure_pa.max())
    ctl = control(0.4e-6, mode="pressure", max_syringe_pressure_pa=limit, max_duration_s=60.0)
    res = _run(bone, needle, mu=100.0, ctl=ctl)
    assert np.all(res.syringe_pressure_pa <= limit * (1 + 1e-9))
    assert res.injection_rate_m3_s.min() < 0.99e-7  # the limit was active
    assert res.max_mass_balance_error <= 1e-10
    # where the rate was reduced, the syringe pressure sits on the limit
    reduced = res.injection_rate_m3_s < 1e-7 * (1 - 1e-9)
    np.testing.assert_allclose(res.syringe_pressure_pa[reduced], limit, rtol=1e-6)


def test_rate_mode_stops_at_pressure_limit():
    bone, needle, _ = sphere_case(8.0, 1.0)
    free = _run(bone, needle, mu=100.0, volume=0.4e-6)
    limit = 0.5 * float(free.syringe_pressure_pa.max())
    res = _run(bone, needle, mu=100.0, ctl=control(0.4e-6, max_syringe_pressure_pa=limit))
    assert res.stop_reason == "pressure_limit"
    assert np.all(res.syringe_pressure_pa <= limit)


def test_stop_signal_max_duration_and_coupling_volumes():
    bone, needle, _ = sphere_case(8.0, 1.0)
    cp = ConstantPressureCoupling(600.0, 1)
    res = _run(bone, needle, volume=1e-6, coupling=cp, max_step_s=0.2, stop_requested=lambda t: t >= 1.5)
    assert res.stop_reason == "stop_signal"
    assert 1.5 <= res.end_time_s <= 1.7 + 1e-12
    np.testing.assert_allclose(cp.cement_volume_m3, res.exit_cement_volume_m3, rtol=1e-12, atol=1e-20)
    np.testing.assert_allclose(cp.marrow_volume_m3, res.exit_marrow_volume_m3, rtol=1e-12)
    # pressure is referenced to the venous pressure: marrow leaves, needle pressure above 600 Pa
    assert res.needle_pressure_pa.min() > 600.0
    res2 = _run(bone, needle, ctl=control(1e-6, max_duration_s=2.0))
    assert res2.stop_reason == "max_duration"
    assert res2.end_time_s == pytest.approx(2.0, rel=1e-12)
    assert res2.injected_volume_m3[-1] == pytest.approx(2.0e-7, rel=1e-12)


def test_progress_and_snapshots():
    bone, needle, _ = sphere_case(8.0, 1.0)
    seen = []
    recorder = RunRecorder(bone_interval_s=1.0)  # snapshots are the driver's: on_step, as sim.run.coupling

    def on_step(solver):
        if recorder.bone_due(solver.state.t):
            recorder.record_bone(solver.state.t, solver.cement_fraction_grid())

    res = _run(bone, needle, ctl=control(0.5e-6), progress=seen.append, on_step=on_step)
    recorder.record_bone(res.end_time_s, res.cement_fraction, final=True)
    assert seen[-1] == pytest.approx(1.0) and np.all(np.diff(seen) >= 0)
    times = [t for t, _ in recorder.bone_snapshots]
    assert times[-1] == pytest.approx(res.end_time_s) and len(times) >= 4
    assert recorder.bone_snapshots[-1][1].dtype == np.float32
    np.testing.assert_array_equal(recorder.bone_snapshots[-1][1], res.cement_fraction.astype(np.float32))


# ------------------------------------------------------------------ errors


def test_errors_name_the_culprit():
    n = (10, 10, 10)
    porous, perm, h, exits = box_case(n)
    bone = _bone(porous, perm, h, exits)
    with pytest.raises(GeometryError, match="not porous"):
        _run(bone, _needle(n, (0, 0, 0)))
    cut = porous.copy()
    cut[:, 4, :] = False  # wall between the tip and the only exit
    with pytest.raises(GeometryError, match="no venous exit"):
        _run(_bone(cut, perm, h, exits), _needle(n, (5, 7, 5)))
    with pytest.raises(ConfigError, match="method"):
        _run(bone, _needle(n, (5, 5, 5)), method="explicit")
    with pytest.raises(ConfigError, match="rate_m3_per_s"):
        _run(bone, _needle(n, (5, 5, 5)), ctl=control(1e-7, rate=0.0))
    with pytest.raises(SolverError, match="direct"):
        PressureSolver("direct")._choose(40_000)


class _SeriesResistance(ConstantPressureCoupling):
    """Constant venous pressure plus a fixed resistance in series with every exit."""

    def __init__(self, r_series, n_exits):
        super().__init__(0.0, n_exits)
        self.r_series = r_series

    def exit_resistance(self, t):
        return np.full(self.n_exits, self.r_series)


@pytest.mark.parametrize("method", ["front", "impes"])
def test_series_exit_resistance_adds_q_times_r_to_the_needle_pressure(method):
    # all injected volume leaves through the one rim exit, so a resistance R in series with it
    # (a cement column in the vein) raises every pressure in the ball by Q R
    bone, needle, _ = sphere_case(6.0, 1.0)
    q, r_series = 1e-7, 1e11
    ctl = control(0.2e-6, rate=q)
    base = _run(bone, needle, volume=0.2e-6, method=method, ctl=ctl)
    plugged = _run(bone, needle, method=method, ctl=ctl, coupling=_SeriesResistance(r_series, 1))
    shift = plugged.needle_pressure_pa[-1] - base.needle_pressure_pa[-1]
    assert shift == pytest.approx(q * r_series, rel=1e-3)
    assert plugged.exit_marrow_volume_m3[0] == pytest.approx(base.exit_marrow_volume_m3[0], rel=1e-9)


def test_amg_pressure_solve_is_bit_identical_whatever_the_global_random_state():
    # pyamg seeds its spectral-radius estimate from np.random; the setup must not depend on it
    import scipy.sparse as sp

    n = 24
    lap1 = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(n, n))
    eye = sp.identity(n)
    mat = sp.kron(sp.kron(lap1, eye), eye) + sp.kron(sp.kron(eye, lap1), eye)
    mat = (mat + sp.kron(sp.kron(eye, eye), lap1) + 1e-3 * sp.identity(n**3)).tocsr()
    rhs = np.random.default_rng(5).standard_normal(n**3)
    out = []
    for seed in (1, 2):
        np.random.seed(seed)  # noqa: NPY002  (the legacy global generator pyamg draws from)
        out.append(PressureSolver("amg").solve(mat, rhs))
        after = np.random.rand()  # noqa: NPY002
        np.random.seed(seed)  # noqa: NPY002
        assert after == np.random.rand()  # noqa: NPY002  (the caller's random state is left alone)
    assert np.array_equal(out[0], out[1])


@pytest.mark.parametrize("n_nodes", [3, 6, 13])
def test_lumen_column_conducts_poiseuille_of_its_length_on_any_chain(n_nodes):
    """A cement column of length x in a vein of length L conducts pi d^4 / (128 (mu_c x + mu_b (L - x))).

    The lumen nodes of a chain split the vein into half-edges; the column fills them from one end,
    ending inside a node. With the series (column) mobility the chain conducts the continuous column's
    value whatever the split; the porous (side-by-side) rule does not, so this test can fail.
    """
    from types import SimpleNamespace

    from sim.physics.injection import mixture_mobility
    from sim.physics.pressure import face_transmissibility

    d, length, mu_c, mu_b, x = 1.0e-3, 12.0e-3, 80.0, 3.5e-3, 5.3e-3
    edge = length / (n_nodes - 1)
    node_len = np.full(n_nodes, edge)
    node_len[[0, -1]] = 0.5 * edge
    filled_to = np.cumsum(node_len)  # the column enters at node 0
    start = filled_to - node_len
    sat = np.clip((x - start) / node_len, 0.0, 1.0)
    g_half = 2.0 * np.pi * d**4 / (128.0 * edge)  # the Poiseuille conductance of a half-edge
    graph = SimpleNamespace(
        face_a=np.arange(n_nodes - 1),
        face_b=np.arange(1, n_nodes),
        face_g_a=np.full(n_nodes - 1, g_half),
        face_g_b=np.full(n_nodes - 1, g_half),
    )
    mu_cement, mu_blood = np.full(n_nodes, mu_c), np.full(n_nodes, mu_b)
    exact = np.pi * d**4 / (128.0 * (mu_c * x + mu_b * (length - x)))

    def chain(lumen: bool) -> float:
        lam = mixture_mobility(sat, mu_cement, mu_blood, np.full(n_nodes, lumen))
        return 1.0 / float(np.sum(1.0 / face_transmissibility(graph, lam)))

    assert chain(True) == pytest.approx(exact, rel=1e-12)
    assert chain(False) > 1.1 * exact  # side by side, the partly filled node conducts like blood
    # limiting cases: an empty and a full node conduct as pure blood and pure cement, by either rule
    for lumen in (True, False):
        for s, mu in ((0.0, mu_b), (1.0, mu_c)):
            lam = mixture_mobility(np.array([s]), np.array([mu_c]), np.array([mu_b]), np.array([lumen]))
            assert lam[0] == pytest.approx(1.0 / mu, rel=1e-14)
    # a node without cement is exactly 1 / mu_resident whatever the cement's viscosity (the solver
    # evaluates the mixture where S > 0 only and takes 1 / mu_resident elsewhere, bit for bit)
    rng = np.random.default_rng(2)
    mu_any, mu_res = 10.0 ** rng.uniform(-1, 4, 50), 10.0 ** rng.uniform(-3, -1, 50)
    for lumen in (True, False):
        got = mixture_mobility(np.zeros(50), mu_any, mu_res, np.full(50, lumen))
        assert np.array_equal(got, 1.0 / mu_res)


def test_front_step_sees_a_nearly_full_lumen_node_as_feeding_its_neighbour():
    """Two lumen nodes in series, the first at S = 0.995 (above the front method's full mark): the step
    must keep the empty second node from gaining more than cfl of its volume. A piston passes nothing
    until full, so f(0.995) = 0 would hide the feed and give no limit at all (dt = inf)."""
    from sim.physics.cement_transport import front_time_step

    q, v, cfl = 1e-9, 2e-9, 0.8
    face_a, face_b = np.array([0]), np.array([1])
    s = np.array([0.995, 0.0])
    args = (face_a, face_b, np.array([q]), np.array([q, 0.0]), np.array([0.0, q]), np.full(2, v), s)
    assert front_time_step(*args, np.full(2, np.inf), cfl, 0.99) == pytest.approx(cfl * v / q, rel=1e-12)
    # the same nodes below the full mark limit the step by their own filling
    s[0] = 0.5
    assert front_time_step(*args, np.full(2, np.inf), cfl, 0.99) == pytest.approx(cfl * v / q, rel=1e-12)


def test_front_step_counts_a_lumen_node_that_fills_within_the_step_as_a_feeder():
    """A large lumen node (10 v) at S = 0.5 upstream of a small one (v), cfl 0.8. Its own limit,
    cfl 10 v / q, lets it fill after 5 v / q and spill 3 v into the small node (3 times its volume);
    it must count as full for the small node once it can fill within the step (S > 1 - cfl), so
    dt = cfl v / q. At S = 0.1 it cannot fill (0.1 + cfl < 1): the small node gets nothing and the
    large node's own filling sets dt = cfl 10 v / q."""
    from sim.physics.cement_transport import front_time_step

    q, v, cfl = 1e-9, 2e-9, 0.8
    face_a, face_b = np.array([0]), np.array([1])
    vol = np.array([10.0 * v, v])
    flux, src, exit_out = np.array([q]), np.array([q, 0.0]), np.array([0.0, q])
    m = np.full(2, np.inf)
    dt_filling = front_time_step(face_a, face_b, flux, src, exit_out, vol, np.array([0.5, 0.0]), m, cfl, 0.99)
    assert dt_filling == pytest.approx(cfl * v / q, rel=1e-12)
    dt_not = front_time_step(face_a, face_b, flux, src, exit_out, vol, np.array([0.1, 0.0]), m, cfl, 0.99)
    assert dt_not == pytest.approx(cfl * 10.0 * v / q, rel=1e-12)


def test_numba_step_kernels_equal_their_numpy_references_bit_for_bit():
    """Darcy speed per node and the front time step: the numba kernels add the same terms in the same
    order as their numpy references (np.bincount), on a box with vessel faces, lumen nodes (m = inf) at
    every fill, porous cells and zero fluxes."""
    import dataclasses

    from sim.physics.cement_transport import front_time_step, front_time_step_numpy
    from sim.physics.injection import cell_darcy_speed, cell_darcy_speed_numpy
    from sim.physics.pressure import VESSEL_FACE, build_cell_graph

    rng = np.random.default_rng(11)
    shape = (7, 6, 5)
    perm = np.full((3, *shape), 1e-9)
    graph = build_cell_graph(np.ones(shape, dtype=bool), perm, 1e-3, np.array([0]), np.array([209]))
    face_dir = graph.face_dir.copy()
    face_dir[rng.random(face_dir.size) < 0.1] = VESSEL_FACE
    graph = dataclasses.replace(graph, face_dir=face_dir)
    n, nf = graph.n, graph.face_a.size
    potential = rng.random(n)  # fluxes down a potential: acyclic, as TPFA fluxes are
    flux = 1e-9 * (potential[graph.face_a] - potential[graph.face_b])
    flux[rng.random(nf) < 0.1] = 0.0
    vein_d = np.where(rng.random(n) < 0.2, rng.uniform(0.5e-3, 2e-3, n), 0.0)
    assert np.array_equal(cell_darcy_speed(graph, flux, vein_d), cell_darcy_speed_numpy(graph, flux, vein_d))
    assert np.array_equal(cell_darcy_speed(graph, flux), cell_darcy_speed_numpy(graph, flux))
    s = np.where(rng.random(n) < 0.3, 0.0, rng.choice([0.1, 0.3, 0.95, 0.995, 1.0], n))
    m = np.where(rng.random(n) < 0.4, np.inf, rng.uniform(10.0, 1e4, n))
    src = np.where(rng.random(n) < 0.1, 1e-9, 0.0)
    exit_out = np.where(rng.random(n) < 0.1, 2e-9, 0.0)
    vol = rng.uniform(0.5e-9, 1e-9, n)
    outflow = np.bincount(np.where(flux > 0.0, graph.face_a, graph.face_b), weights=np.abs(flux), minlength=n)
    drained = exit_out + np.where(outflow > 0.0, 0.0, 1e-9)  # no closed cell: the accuracy limit decides
    s_closed = np.where(outflow > 0.0, s, 0.5)  # closed cells half full: the boundedness limit can decide
    for cfl in (0.1, 0.8, 1.0):
        for out_, s_ in ((drained, s), (exit_out, s_closed)):
            args = (graph.face_a, graph.face_b, flux, src, out_, vol, s_, m, cfl, 0.99)
            dt = front_time_step(*args)
            assert 0.0 < dt < np.inf and dt == front_time_step_numpy(*args)


def test_front_faces_passes_equal_the_whole_face_passes_bit_for_bit():
    """The front method's face passes restricted to the faces with a cement side (front_faces) give
    bit for bit what the passes over every face give: transmissibility on those faces (0 elsewhere,
    where the front system has no entry), the flux of the front system's pressure (exactly 0 between
    two marrow cells of one isobaric lump), the Darcy speed, the time step and the assembled system.
    The restriction can fail: a face outside the list that carried flux would be lost (checked)."""
    import dataclasses

    from sim.physics.cement_transport import front_time_step
    from sim.physics.injection import cell_darcy_speed
    from sim.physics.pressure import (
        VESSEL_FACE,
        assemble_front,
        build_cell_graph,
        face_transmissibility,
        front_faces,
        listed_face_flux,
    )  # fmt: skip

    rng = np.random.default_rng(5)
    shape = (9, 8, 7)
    perm = rng.uniform(0.5e-9, 2e-9, (3, *shape))
    graph = build_cell_graph(np.ones(shape, dtype=bool), perm, 1e-3, np.array([0]), np.array([503]))
    face_dir = graph.face_dir.copy()
    face_dir[rng.random(face_dir.size) < 0.1] = VESSEL_FACE
    graph = dataclasses.replace(graph, face_dir=face_dir)
    n = graph.n
    walls = np.zeros(shape, dtype=bool)
    walls[4] = True  # a cement wall cuts the marrow in two lumps, plus scattered cement cells
    in_cement = walls.ravel()[graph.cell_of] | (rng.random(n) < 0.15)
    faces = front_faces(graph, in_cement)
    side = in_cement[graph.face_a] | in_cement[graph.face_b]
    assert np.array_equal(faces, np.flatnonzero(side)) and 0 < faces.size < graph.n_faces
    mobility = np.where(rng.random(n) < 0.05, 0.0, rng.uniform(1e-4, 1.0, n)) / 0.01
    whole = face_transmissibility(graph, mobility)
    listed = face_transmissibility(graph, mobility, faces)
    assert np.array_equal(listed[faces], whole[faces]) and not listed[~side].any()
    exit_cell, exit_g = np.array([n - 1, 7]), np.array([1e-12, 2e-12])
    a = assemble_front(graph, in_cement, whole, exit_cell, exit_g)
    b = assemble_front(graph, in_cement, listed, exit_cell, exit_g, faces)
    for x, y in (
        (a.matrix.indptr, b.matrix.indptr),
        (a.matrix.indices, b.matrix.indices),
        (a.matrix.data, b.matrix.data),
    ):
        assert np.array_equal(x, y)
    p = a.cell_values(rng.uniform(0.0, 1e4, a.n_unknowns))  # one pressure per lump
    flux = whole * (p[graph.face_a] - p[graph.face_b])
    assert not flux[~side].any()  # the premise: no flux between two marrow cells
    assert np.array_equal(listed_face_flux(graph, listed, p, faces), flux)
    vein_d = np.where(rng.random(n) < 0.2, rng.uniform(0.5e-3, 2e-3, n), 0.0)
    assert np.array_equal(
        cell_darcy_speed(graph, flux, vein_d, None, faces), cell_darcy_speed(graph, flux, vein_d)
    )
    s = np.where(in_cement, rng.choice([0.1, 0.5, 0.95, 1.0], n), 0.0)
    m = rng.uniform(10.0, 1e4, n)
    src, vol = np.where(np.arange(n) == 0, 1e-9, 0.0), rng.uniform(0.5e-9, 1e-9, n)
    exit_out = np.where(rng.random(n) < 0.1, 1e-10, 0.0)
    args = (graph.face_a, graph.face_b, flux, src, exit_out, vol, s, m, 0.8, 0.99)
    assert front_time_step(*args, faces) == front_time_step(*args)
    # a source on a cell off every listed face (its fill limits the step) is still seen
    touched = np.zeros(n, dtype=bool)
    touched[graph.face_a[faces]] = touched[graph.face_b[faces]] = True
    off = np.flatnonzero(~touched)[0]
    src_off, exit_off = src.copy(), exit_out.copy()
    src_off[off], exit_off[off] = 1e-3, 0.0
    args = (graph.face_a, graph.face_b, flux, src_off, exit_off, vol, np.minimum(s, 0.95), m, 0.8, 0.99)
    assert (
        front_time_step(*args, faces)
        == front_time_step(*args)
        == pytest.approx(0.8 * vol[off] / 1e-3, rel=1e-14)
    )
    # a face left out of the list that carried flux would change the speed: the check can fail
    leaky = flux.copy()
    leaky[np.flatnonzero(~side)[0]] = 1e-9
    assert not np.array_equal(
        cell_darcy_speed(graph, leaky, None, None, faces), cell_darcy_speed(graph, leaky)
    )


def test_the_solver_moves_cement_in_vein_lumens_as_a_piston():
    """The solver marks every vein lumen node m = inf (the transport's piston law) and no porous cell:
    on the default scenario's embedded veins at 2 mm the first step's plan says so."""
    from pathlib import Path

    from sim.core.config import read_yaml, scenario_from_dict
    from sim.run.pipeline import build_stages

    cfg = read_yaml(Path(__file__).resolve().parents[1] / "configs" / "default.yaml")
    cfg["grid"]["spacing_mm"] = 2.0
    solver = build_stages(scenario_from_dict(cfg, source="test")).solver
    plan = solver.plan_step()
    vein = solver.is_vein
    assert vein.sum() > 10 and (~vein).sum() > 1000
    assert np.all(np.isinf(plan.visc_ratio[vein]))
    assert np.all(np.isfinite(plan.visc_ratio[~vein]) & (plan.visc_ratio[~vein] > 1.0))


def test_plan_step_evaluates_the_laws_where_they_matter_bit_for_bit(monkeypatch):
    """The solver evaluates the cement's viscosity on the cells that move and the mixture mobility on
    the cells that hold cement only; on a run with veins, a shear-thinning cement and the marrow
    outlet, every step's fields equal the whole-grid formulas bit for bit. The marrow outlet's rows,
    one per marrow lump, carry the summed conductance of the per-cell rows of that lump."""
    import sim.physics.injection as inj
    from sim.core.config import read_yaml, scenario_from_dict
    from sim.physics import rheology
    from sim.run.pipeline import run_scenario

    seen = {"steps": 0, "outlet": 0}
    shear_rate, transmissibility, outlet_rows = (
        inj.InjectionSolver._shear_rate,
        inj.face_transmissibility,
        inj.InjectionSolver._marrow_outlet_rows,
    )

    def spy_shear(self, speed, age_s):
        seen.update(solver=self, speed=speed.copy(), age=age_s)
        return shear_rate(self, speed, age_s)

    def spy_transmissibility(graph, lam, faces=None):
        sv = seen["solver"]
        n_idx = float(rheology.power_law_index(sv.cement, seen["age"]))
        shear = np.asarray(
            rheology.porous_shear_rate(seen["speed"], sv.k_mean, sv.phi, n_idx), dtype=np.float64
        )
        v = sv.is_vein
        shear[v] = (3.0 * n_idx + 1.0) / (4.0 * n_idx) * 8.0 * seen["speed"][v] / sv.vein_diameter[v]
        mu = np.empty(graph.n)
        rheology.viscosity_field(shear, seen["age"], sv.params, mu)
        assert np.array_equal(sv._mu_c, mu)
        s_c = np.minimum(sv.state.saturation, 1.0)
        assert np.array_equal(lam, mixture_mobility(s_c, mu, sv.mu_res, sv.is_vein))
        seen["steps"] += 1
        return transmissibility(graph, lam, faces)

    def spy_outlet(self, trans, g, ent_pv, outlet_pv, lam, lam_c, s, r_cell, unknown=None):
        out = outlet_rows(self, trans, g, ent_pv, outlet_pv, lam, lam_c, s, r_cell, unknown)
        if unknown is not None:
            per_cell = outlet_rows(self, trans.copy(), g, ent_pv, outlet_pv, lam, lam_c, s, r_cell, None)
            n_rows = self.exit_cell.size
            cells, g_cell = per_cell[1][n_rows:], per_cell[2][n_rows:]
            lumps = unknown[out[1][n_rows:]]
            summed = np.bincount(unknown[cells], weights=g_cell, minlength=int(unknown.max()) + 1)[lumps]
            assert out[2][n_rows:] == pytest.approx(summed, rel=1e-12, abs=0.0)
            assert np.array_equal(np.unique(unknown[cells]), np.sort(lumps))
            seen["outlet"] += 1
        return out

    monkeypatch.setattr(inj.InjectionSolver, "_shear_rate", spy_shear)
    monkeypatch.setattr(inj, "face_transmissibility", spy_transmissibility)
    monkeypatch.setattr(inj.InjectionSolver, "_marrow_outlet_rows", spy_outlet)
    cfg = read_yaml(str(Path(__file__).resolve().parents[1] / "configs" / "default.yaml"))
    cfg["grid"]["spacing_mm"] = 2.0
    cfg["injection"].update(volume_ml=0.4, follow_up_s=0)
    cfg.setdefault("output", {}).update(vtk=False, fluoroscopy_png=False, fields=False, time_series=False)
    run_scenario(scenario_from_dict(cfg, source="test"))
    assert seen["steps"] > 5 and seen["outlet"] == seen["steps"]
    assert seen["solver"].is_vein.any() and float(rheology.power_law_index(seen["solver"].cement, 0.0)) < 1.0


@pytest.fixture(scope="module")
def seed_case_solver_2mm():
    from sim.core.config import read_yaml, scenario_from_dict
    from sim.run.pipeline import build_stages

    cfg = read_yaml(str(Path(__file__).resolve().parents[1] / "configs" / "lai2025_case.yaml"))
    cfg.setdefault("grid", {})["spacing_mm"] = 2.0
    stages = build_stages(scenario_from_dict(cfg, source="test"))
    return stages.solver, stages.bone.vessels


def test_solver_lumen_edges_use_each_edges_own_flow_and_calibre(seed_case_solver_2mm):
    """The solver's lumen faces are the vessel edges that survive the graph's filter, in edge order; full of
    cement and carrying Q, each conducts |Q| / dp with dp the exact laminar drop of the cement over its own
    length and diameter (the cannula's Rabinowitsch-Mooney drop, written out here), also at junction nodes
    whose mean diameter is another (the node rule would fail this)."""
    from sim.physics import rheology

    solver, vessels = seed_case_solver_2mm
    graph, n_grid = solver.graph, solver.graph.n_grid
    kept = graph.compact[n_grid + np.arange(vessels.n_nodes)] >= 0
    edges = np.flatnonzero(kept[vessels.edge_a] & kept[vessels.edge_b])
    faces = solver.lumen_face
    assert faces.size == edges.size > 10
    np.testing.assert_array_equal(graph.cell_of[graph.face_a[faces]] - n_grid, vessels.edge_a[edges])
    np.testing.assert_array_equal(graph.cell_of[graph.face_b[faces]] - n_grid, vessels.edge_b[edges])
    d = vessels.edge_diameter_m[edges]
    assert np.any(solver.vein_diameter[graph.face_a[faces]] != d)  # junctions: node and edge calibres differ
    age = solver.cement.reference_time_s
    rng = np.random.default_rng(3)
    q = rng.uniform(1e-9, 2e-8, edges.size) * rng.choice([-1.0, 1.0], edges.size)
    trans = np.ones(graph.n_faces)
    solver._lumen_edges(trans, np.ones(graph.n), q, age)
    length = vessels.edge_length_m[edges]
    drop = [
        rheology.cannula_pressure_drop_pa(solver.cement, abs(x), y, z, age)
        for x, y, z in zip(q, d, length, strict=True)
    ]
    np.testing.assert_allclose(trans[faces], np.abs(q) / np.array(drop), rtol=1e-12)


def test_plan_step_keeps_the_lumen_flow_of_its_last_solve(seed_case_solver_2mm):
    """The lumens' shear rate lags by one solve: after every plan the state holds the plan's flow on the lumen
    faces (and a lumen carries cement within a few steps in the seed case)."""
    solver, _ = seed_case_solver_2mm
    moving = 0
    for _ in range(400):
        plan = solver.plan_step()
        np.testing.assert_array_equal(solver.state.lumen_flux, plan.flux[solver.lumen_face])
        moving += bool(np.any(solver.state.lumen_flux != 0.0))
        if moving >= 3:
            break
        solver.take_step(plan)
    assert moving >= 3
