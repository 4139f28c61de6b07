"""Tests of the marrow-outflow law (sim.physics.marrow_outflow) and its use by the injection solver.

Limiting cases: R_M = 0 is the model without the law (bit-identical); with the whole injected
volume leaving as marrow through one exit, the intravertebral pressure rises by exactly Q R_M and
does not depend on the cement; the split between a leak exit next to the needle and the marrow's
far exit is viscosity-free without R_M (Newtonian cement) and favours the thin cement with it
(the viscosity-ratio argument of Bohner et al. 2003).
"""

from __future__ import annotations

import numpy as np
import pytest

from sim.core.config import scenario_from_dict
from sim.core.errors import ConfigError
from sim.core.parameters import RunParameters
from sim.physics.marrow_outflow import LumpedMarrowOutlet
from tests.test_injection import _bone, _needle, _run, box_case, control, sphere_case

Q = 1e-7  # m^3/s (6 ml/min)


def test_outlet_spread_by_volume_adds_up_to_one_resistance():
    w = np.array([0.2, 0.3, 0.5])
    g = LumpedMarrowOutlet(1e10).outlet_conductance(w)
    # the cells of one isobaric marrow region in parallel: exactly R_M
    assert 1.0 / g.sum() == pytest.approx(1e10, rel=1e-12)
    assert g[2] / g[0] == pytest.approx(2.5, rel=1e-12)
    with pytest.raises(ValueError, match="R_M = 0"):
        LumpedMarrowOutlet(0.0).outlet_conductance(w)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_bad_resistance_is_refused(bad):
    with pytest.raises(ConfigError, match="marrow outflow resistance"):
        LumpedMarrowOutlet(bad)


def test_config_field_is_converted_once_to_si():
    scenario = scenario_from_dict({"patient": {"marrow_outflow_kpa_per_ml_per_min": 1.7}})
    params = RunParameters.from_scenario(scenario)
    # 1.7 kPa per ml/min = 1.7e3 Pa / (1e-6/60 m^3/s)
    assert params.patient.marrow_outflow_pa_s_per_m3 == pytest.approx(1.7e3 * 60.0 / 1e-6, rel=1e-12)
    assert params.laws.marrow_outflow == "lumped_outlet"


@pytest.fixture(scope="module")
def ball():
    return sphere_case(8.0, 1.0)  # the rim 8 mm out: no smeared cement reaches the exit


def test_zero_resistance_reproduces_the_model_without_the_law(ball):
    bone, needle, _ = ball
    ctl = control(0.3e-6, rate=Q)
    a = _run(bone, needle, volume=0.3e-6, ctl=ctl)
    b = _run(bone, needle, volume=0.3e-6, ctl=ctl, marrow_outflow=LumpedMarrowOutlet(0.0))
    np.testing.assert_array_equal(a.needle_pressure_pa, b.needle_pressure_pa)
    np.testing.assert_array_equal(a.cement_fraction, b.cement_fraction)
    np.testing.assert_array_equal(a.intravertebral_pressure_pa, b.intravertebral_pressure_pa)


@pytest.mark.parametrize("method", ["front", "impes"])
def test_intravertebral_pressure_rises_by_q_times_r(ball, method):
    # the one rim exit drains only marrow: every pressure in the ball rises by Q R_M
    bone, needle, _ = ball
    r_m = 1e11
    ctl = control(0.3e-6, rate=Q)
    base = _run(bone, needle, volume=0.3e-6, method=method, ctl=ctl)
    loaded = _run(bone, needle, method=method, ctl=ctl, marrow_outflow=LumpedMarrowOutlet(r_m))
    rise = loaded.intravertebral_pressure_pa[-1] - base.intravertebral_pressure_pa[-1]
    assert rise == pytest.approx(Q * r_m, rel=1e-3)
    assert loaded.needle_pressure_pa[-1] - base.needle_pressure_pa[-1] == pytest.approx(Q * r_m, rel=1e-3)
    assert loaded.exit_marrow_volume_m3[0] == pytest.approx(base.exit_marrow_volume_m3[0], rel=1e-9)


def test_intravertebral_pressure_does_not_depend_on_the_cement(ball):
    bone, needle, _ = ball
    ctl = control(0.3e-6, rate=Q)
    law = LumpedMarrowOutlet(1e11)
    thin = _run(bone, needle, mu=10.0, ctl=ctl, marrow_outflow=law)
    thick = _run(bone, needle, mu=1000.0, ctl=ctl, marrow_outflow=law)
    assert thick.needle_pressure_pa[-1] > 20.0 * thin.needle_pressure_pa[-1] - 20.0 * Q * 1e11
    ivp_thin, ivp_thick = thin.intravertebral_pressure_pa[-1], thick.intravertebral_pressure_pa[-1]
    assert ivp_thin == pytest.approx(ivp_thick, rel=1e-3)


def _leak_fraction(mu: float, r_m: float) -> float:
    n = (17, 17, 17)
    porous, perm, h, exits = box_case(n, exit_ijk=[(8, 8, 11), (1, 1, 1)])
    bone = _bone(porous, perm, h, exits)
    needle = _needle(n, (8, 8, 8))
    vol = 1.0e-6
    res = _run(bone, needle, mu=mu, ctl=control(vol, rate=Q), marrow_outflow=LumpedMarrowOutlet(r_m))
    return float(res.exit_cement_volume_m3[0]) / vol


def test_marrow_resistance_makes_the_thin_cement_leak_more():
    # without R_M the split of a Newtonian cement between the exit 3 mm from the tip and the bone is
    # viscosity-free (the marrow's own resistance is negligible). With R_M the displaced marrow loads
    # the bone route only: the leak does not rise with viscosity and tends to the viscosity-free split as
    # the cement's own resistance outgrows R_M (measured: 0.058, 0.058, 0.054, 0.029 vs 0.028 free; before
    # the exit carried cement only, December 2026, the exit cell passed its marrow out through the exit
    # at the cement's mobility, bypassing R_M, filled faster and opened the route sooner: 0.207, 0.111,
    # 0.040, 0.029)
    mus = (10.0, 100.0, 1000.0, 1.0e4)
    free = [_leak_fraction(mu, 0.0) for mu in mus]
    assert free[0] > 0.01
    assert max(free) == pytest.approx(min(free), rel=0.05)
    loaded = [_leak_fraction(mu, 1e11) for mu in mus]
    assert all(a >= 0.99 * b for a, b in zip(loaded, loaded[1:], strict=False))
    assert loaded[1] > 1.5 * loaded[-1]
    assert loaded[0] > 1.8 * free[0]
    assert loaded[-1] == pytest.approx(free[-1], rel=0.15)


def test_routes_open_smoothly_as_the_cement_arrives():
    # a route to a vein conducts with the cell's cement mobility, continuous in the saturation: the
    # needle pressure of a leaking thin cement settles as without the law (a binary open/shut switch
    # made it jump by about 20 % from step to step)
    n = (17, 17, 17)
    porous, perm, h, exits = box_case(n, exit_ijk=[(8, 8, 11), (1, 1, 1)])
    bone, needle = _bone(porous, perm, h, exits), _needle(n, (8, 8, 8))
    for r_m in (0.0, 1e11):
        res = _run(bone, needle, mu=10.0, ctl=control(1e-6, rate=Q), marrow_outflow=LumpedMarrowOutlet(r_m),
                   max_step_s=0.05)  # fmt: skip
        tail = res.needle_pressure_pa[-10:]
        assert np.std(tail) < 0.01 * np.mean(tail), r_m


@pytest.mark.parametrize("method", ["front", "impes"])
def test_filling_the_whole_bone_leaves_the_marrow_a_way_out(method):
    # once no cell is pure marrow, the outlet spreads over the marrow still in partly filled cells
    n = (8, 8, 8)
    porous, perm, h, exits = box_case(n, exit_ijk=[(4, 1, 4)])
    bone, needle = _bone(porous, perm, h, exits), _needle(n, (4, 4, 4))
    vol = 0.98 * float(porous.sum()) * 0.9 * h**3
    res = _run(bone, needle, method=method, ctl=control(vol, rate=Q), marrow_outflow=LumpedMarrowOutlet(1e11))
    assert res.stop_reason == "target_volume"
    assert res.max_mass_balance_error < 1e-10


def test_outlet_rows_summed_per_marrow_lump_give_the_per_cell_system():
    """The front method drains each marrow lump through one outlet row on its first cell, with the
    summed conductance of its cells' rows: the same matrix and right-hand side as a row per cell (to
    round-off), so the same pressures; the first cells and volumes are those of each unknown, and
    once no cell is pure marrow the partly filled cells drain their marrow, pore volume x (1 - S)."""
    from sim.physics.injection import CEMENT_CELL_MIN_S, _marrow_outlet_volumes
    from sim.physics.pressure import PressureSolver, assemble_front, front_unknowns
    from tests.test_pressure import Problem, box_3d

    perm, tip, exits = box_3d(seed=4)
    rng = np.random.default_rng(8)
    prob = Problem(perm, tip, exits, [1000.0, 1200.0], mobility=lambda g: rng.uniform(0.01, 1.0, g.n))
    graph, n = prob.graph, prob.graph.n
    walls = np.zeros(graph.shape, dtype=bool)
    walls[3] = walls[:, 5] = True  # four marrow lumps
    s = np.where(walls.ravel()[graph.cell_of] | (rng.random(n) < 0.2), rng.uniform(0.2, 1.0, n), 0.0)
    in_cement = s > CEMENT_CELL_MIN_S
    unknown, nc, n_lumps = front_unknowns(graph, in_cement)
    assert n_lumps >= 4
    is_grid, no_tip = np.ones(n, dtype=bool), np.zeros(n, dtype=bool)
    pore = rng.uniform(0.5e-9, 1e-9, n)
    law = LumpedMarrowOutlet(2e11)
    per_cell, first_cell = _marrow_outlet_volumes(np.arange(n), is_grid, no_tip, s, pore, CEMENT_CELL_MIN_S)
    assert np.array_equal(per_cell, np.where(in_cement, 0.0, pore)) and np.array_equal(
        first_cell[~in_cement], np.flatnonzero(~in_cement)
    )
    per_lump, first = _marrow_outlet_volumes(unknown, is_grid, no_tip, s, pore, CEMENT_CELL_MIN_S)
    rows = np.flatnonzero(per_lump > 0.0)
    assert np.array_equal(rows, nc + np.arange(n_lumps))
    for u in rows:  # the lump's volume and its first cell
        assert per_lump[u] == pytest.approx(pore[unknown == u].sum(), rel=1e-14)
        assert first[u] == np.flatnonzero(unknown == u)[0]
    cells = np.flatnonzero(per_cell > 0.0)
    g_cell = law.outlet_conductance(per_cell[cells] / per_cell[cells].sum())
    g_lump = law.outlet_conductance(per_lump[rows] / per_lump[rows].sum())
    pv_out = -150.0
    systems = []
    for c, g in ((cells, g_cell), (first[rows], g_lump)):
        row_cell, row_g = np.concatenate([prob.ent.cell, c]), np.concatenate([prob.g, g])
        row_pv = np.concatenate([prob.pv, np.full(c.size, pv_out)])
        sys_ = assemble_front(graph, in_cement, prob.trans, row_cell, row_g, None, (unknown, nc, n_lumps))
        systems.append((sys_, sys_.rhs(prob.source, row_g, row_pv)))
    (a, ba), (b, bb) = systems
    assert np.array_equal(a.matrix.indices, b.matrix.indices)
    assert b.matrix.data == pytest.approx(a.matrix.data, rel=1e-13, abs=0.0)
    assert bb == pytest.approx(ba, rel=1e-13, abs=1e-13 * np.abs(ba).max())
    pa = a.cell_values(PressureSolver("direct").solve(a.matrix, ba))
    pb = b.cell_values(PressureSolver("direct").solve(b.matrix, bb))
    assert pb == pytest.approx(pa, rel=0.0, abs=1e-10 * np.ptp(pa))
    # no pure marrow left: the marrow in the partly filled cells, pore volume x (1 - S)
    full = np.clip(s + 0.5, 0.0, 1.0)
    vol, first_full = _marrow_outlet_volumes(
        np.arange(n), is_grid, no_tip, np.maximum(full, 1e-3), pore, CEMENT_CELL_MIN_S
    )
    assert vol == pytest.approx(pore * (1.0 - np.maximum(full, 1e-3)), rel=1e-14, abs=0.0)
    assert np.array_equal(first_full[vol > 0.0], np.flatnonzero(vol > 0.0))
