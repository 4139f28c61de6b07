"""Cement columns: fill, overflow, flow-proportional split, hydraulics, routes, coupled mass balance."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from sim.core.errors import SolverError
from sim.core.grid import VenousExit
from sim.core.units import MMHG_PA
from sim.physics.cure_clock import CureClock
from sim.physics.fragmentation import DragVsStrength
from sim.physics.rheology import CementModel, age_rate, equivalent_age_s, load_cement_preset
from sim.physics.vein_columns import CementColumns, adjacency, back_pressure, midstep_resistance, push_kernel
from sim.physics.venous_network import (
    build_venous_network,
    edge_conductance,
    network_from_edges,
    solve_blood_flow,
)
from sim.run.recorder import RunRecorder
from sim.run.venous_system import VenousSystem
from tests.helpers import run_params, transit_model

MM = 1e-3


def chain(diams, inflow=1e-6):
    """Straight chain 0 -> 1 -> ... -> n (atrium), 10 mm per edge."""
    n = len(diams)
    pos = np.array([[0.0, 0.0, 0.01 * (n - i)] for i in range(n + 1)])
    infl = np.zeros(n + 1)
    infl[0] = inflow
    return network_from_edges(pos, np.arange(n), np.arange(1, n + 1), np.asarray(diams), infl, right_atrium=n)


def push(net, cols, node, vol, feed):
    bf = solve_blood_flow(net)
    return cols.push(node, vol, feed, bf.edge_flow_m3_s, edge_conductance(net))


def test_chain_fills_in_order_and_conserves_volume():
    net = chain([2 * MM, 2 * MM, 2 * MM])
    cols = CementColumns.empty(net)
    cap = 0.25 * np.pi * (2 * MM) ** 2 * 0.01
    push(net, cols, 0, 1.5 * cap, 2 * MM)
    assert cols.fill_m3[:3] == pytest.approx([cap, 0.5 * cap, 0.0], rel=1e-12)
    assert cols.fill_length_m()[1] == pytest.approx(0.005, rel=1e-12)
    assert cols.is_full()[0] and not cols.is_full()[1]
    push(net, cols, 0, 1.0 * cap, 2 * MM)
    assert cols.total_m3() == pytest.approx(2.5 * cap, rel=1e-14)
    assert cols.fill_m3[2] == pytest.approx(0.5 * cap, rel=1e-12)
    assert np.all(cols.entry_end[:3] == 0)


def test_split_follows_blood_outflow():
    # node 0 feeds node 1, which splits into edges to 2 and 3 (both draining to the atrium 4)
    pos = np.array([[0, 0, 0.03], [0, 0, 0.02], [-0.01, 0, 0.01], [0.01, 0, 0.01], [0, 0, 0.0]], dtype=float)
    d = np.array([3, 3, 3, 2, 3]) * MM
    net = network_from_edges(pos, [0, 1, 1, 2, 3], [1, 2, 3, 4, 4], d, [1e-6, 0, 0, 0, 0], right_atrium=4)
    bf = solve_blood_flow(net)
    cols = CementColumns.empty(net)
    cap0 = 0.25 * np.pi * d[0] ** 2 * net.edge_length_m[0]
    vol = cap0 + 1e-9
    cols.push(0, vol, 3 * MM, bf.edge_flow_m3_s, edge_conductance(net))
    share = bf.edge_flow_m3_s[1] / (bf.edge_flow_m3_s[1] + bf.edge_flow_m3_s[2])
    assert cols.fill_m3[1] == pytest.approx(1e-9 * share, rel=1e-12)
    assert cols.fill_m3[2] == pytest.approx(1e-9 * (1 - share), rel=1e-12)
    assert cols.total_m3() == pytest.approx(vol, rel=1e-14)


def test_thread_in_wide_vein_and_resistance():
    net = chain([2 * MM, 10 * MM])
    cols = CementColumns.empty(net)
    cap0 = 0.25 * np.pi * (2 * MM) ** 2 * 0.01
    push(net, cols, 0, 1.5 * cap0, 2 * MM)
    assert cols.col_diameter_m[:2] == pytest.approx([2 * MM, 2 * MM])
    assert cols.full_bore()[0] and not cols.full_bore()[1]
    mu_c = np.full(net.n_edges, 100.0)
    extra = cols.extra_resistance(mu_c)
    assert extra[0] == pytest.approx(128 * (100.0 - 0.0035) * 0.01 / (np.pi * (2 * MM) ** 4), rel=1e-12)
    assert extra[1] == 0.0  # a thread leaves the lumen open


def test_back_pressure_series_and_split():
    r = np.array([2.0, 3.0, 5.0])
    # series: the whole volume passes every edge -> sum R q
    assert back_pressure(np.array([1.0, 1.0, 1.0]), r, 1.0, 0.5) == pytest.approx((2 + 3 + 5) * 2.0)
    # root then 30/70 split: q (R0 + R1 f1^2 + R2 f2^2)
    v = np.array([1.0, 0.3, 0.7])
    assert back_pressure(v, r, 1.0, 1.0) == pytest.approx(2 + 3 * 0.09 + 5 * 0.49)
    # a denormal exit volume whose product with dt underflows: no pressure, not 0/0
    assert back_pressure(np.array([1e-320, 0.0, 0.0]), r, 1e-320, 0.05) == 0.0


def test_kernel_matches_interpreted_reference():
    net = build_venous_network("T9", run_params().veins, np.random.default_rng(0))
    bf = solve_blood_flow(net)
    g = edge_conductance(net)
    ptr, ae, ao, asg = adjacency(net)
    outs = []
    for fn in (push_kernel, push_kernel.py_func):
        fill = np.zeros(net.n_edges)
        cd = np.zeros(net.n_edges)
        ee = np.full(net.n_edges, -1, dtype=np.int8)
        th = np.zeros(net.n_edges)
        blocked = np.zeros(net.n_edges, dtype=np.bool_)
        blocked[net.pump_edge] = True
        for node in net.exit_nodes.values():
            fn(node, 2e-7, 2.5e-3, ptr, ae, ao, asg, bf.edge_flow_m3_s, g, net.edge_diameter_m,
               net.edge_length_m, blocked, fill, cd, ee, th, 1_000_000)  # fmt: skip
        outs.append((fill, cd, ee, th))
    for a, b in zip(*outs, strict=True):
        assert np.array_equal(a, b)
    assert outs[0][0].sum() == pytest.approx(5 * 2e-7, rel=1e-13)


SUPINE = {"azygos_posture_widening": 1.05, "intra_abdominal_pressure_pa": 2.7 * MMHG_PA}
PRONE = {"intra_abdominal_pressure_pa": 10.0 * MMHG_PA}


@pytest.mark.parametrize(
    ("level", "hemi", "posture", "reach", "never"),
    [
        ("T8", True, SUPINE, "azygos", "ivc"),
        ("T6", False, SUPINE, "azygos", "ivc"),
        ("L3", True, SUPINE, "ivc", None),
        ("L4", False, SUPINE, "ivc", None),
        ("T8", True, PRONE, "azygos", "ivc"),
        # prone, the abdominal pressure lifts the IVC above the azygos: lumbar cement goes up the
        # plexus and the ascending lumbar veins to the azygos (Batson's route)
        ("L3", True, PRONE, "azygos", "ivc"),
    ],
)
def test_route_by_level(level, hemi, posture, reach, never):
    veins = replace(run_params().veins, hemiazygos_present=hemi, **posture)
    net = build_venous_network(level, veins, np.random.default_rng(0))
    bf = solve_blood_flow(net)
    for exit_name in ("anterior_left", "anterior_right"):
        cols = CementColumns.empty(net)
        cols.push(net.exit_nodes[exit_name], 1.0e-6, 2.5e-3, bf.edge_flow_m3_s, edge_conductance(net))
        by_route = cols.volume_by_route()
        assert by_route[reach] > 0.0, (exit_name, by_route)
        if never is not None:
            assert by_route[never] == 0.0
        assert sum(by_route.values()) == pytest.approx(1.0e-6, rel=1e-13)


def synthetic_exits(net, d=2.5e-3):
    kinds = {
        "basivertebral": "basivertebral",
        "anterior_left": "anterior",
        "anterior_right": "anterior",
        "lateral_left": "lateral",
        "lateral_right": "lateral",
    }
    return [
        VenousExit(
            name=n,
            kind=k,
            cells=np.zeros(0, dtype=np.int64),
            position_m=net.node_pos_m[net.exit_nodes[n]],
            diameter_m=d,
            length_m=2e-3,
        )  # fmt: skip
        for n, k in kinds.items()
    ]


def make_system(level="T8", seed=3, cement=None, **fluoro):
    params = run_params()
    net = build_venous_network(level, params.veins, np.random.default_rng(seed))
    cem = cement or load_cement_preset("medium")
    clock = CureClock.for_cement(cem, 360.0, 294.15, 310.15)
    return VenousSystem(
        net, synthetic_exits(net), cem, clock, replace(params.fluoroscopy, **fluoro),
        DragVsStrength(params.fragmentation), np.random.default_rng(seed),
        transit=transit_model(seed),
    )  # fmt: skip


def test_coupled_mass_balance_under_synthetic_flux_history():
    vs = make_system("L2")
    rec = RunRecorder()
    rec.record_venous(0.0, vs)
    rng = np.random.default_rng(11)
    t, dt = 0.0, 0.25
    total = 0.0
    kinds = np.array([ex.kind for ex in vs.exits])
    by_kind = {k: [0.0] for k in ("basivertebral", "anterior", "lateral")}  # running totals per record
    for _ in range(200):
        qc = rng.uniform(0.0, 4e-9, 5) * (rng.random(5) < 0.6)
        qm = rng.uniform(0.0, 1e-9, 5)
        vs.accept_flux(t, dt, qc, qm)
        total += qc.sum() * dt
        for k, run in by_kind.items():
            run.append(run[-1] + float(qc[kinds == k].sum()) * dt)
        t += dt
        rec.record_venous(t, vs)
        p = vs.exit_pressure(t)
        assert p.shape == (5,) and np.all(np.isfinite(p))
    t_end = t + 30.0  # follow-up without pushing, one fluoroscopy frame at a time
    while t < t_end - 1e-12:
        t = min(t + vs.detector.frame_interval_s, t_end)
        vs.relax(t)
        rec.record_venous(t, vs)
    held = vs.columns.total_m3() + vs.fragments.volume_m3.sum()
    assert vs.received_m3 == pytest.approx(total, rel=1e-12)
    assert abs(held - total) <= 1e-12 * total
    assert vs.mass_balance_error() <= 1e-12
    assert sum(vs.leaked_by_exit_kind().values()) == pytest.approx(total, rel=1e-12)
    assert sum(vs.volume_by_route().values()) == pytest.approx(total, rel=1e-12)
    assert vs.columns.fill_m3.sum() == pytest.approx(vs.columns.total_m3(), rel=1e-14)
    ts = rec.venous_series()
    assert np.all(np.diff(ts["t_s"]) > 0)
    assert np.all(np.diff(ts["fragments_shed"]) >= 0)
    # the recorder's cumulative cement per exit kind follows the flux pushed through that kind's exits
    # at every record (the follow-up adds nothing) and ends at the venous side's totals
    final = vs.leaked_by_exit_kind()
    n_push = len(by_kind["anterior"])
    for kind, run in by_kind.items():
        series = ts[f"leaked_{kind}_m3"]
        assert series.shape == ts["t_s"].shape and np.all(np.diff(series) >= 0.0)
        np.testing.assert_allclose(series[:n_push], run, rtol=1e-12, atol=1e-24)
        assert np.all(series[n_push:] == series[n_push - 1])
        assert series[-1] == pytest.approx(final.get(kind, 0.0), rel=1e-12)
    assert sum(run[-1] > 0.0 for run in by_kind.values()) >= 2  # the fixture's exits are of several kinds
    kinds_total = sum(ts[f"leaked_{k}_m3"][-1] for k in ("basivertebral", "anterior", "lateral"))
    assert kinds_total == pytest.approx(total, rel=1e-12)


def test_columns_resist_exit_flow_and_reroute_blood():
    mu = 200.0
    vs = make_system("T8", cement=CementModel.newtonian(mu))
    # a column that never sheds (strength-free Newtonian cement would)
    vs.fragmentation.strength_pa = lambda cement, age: np.inf
    p0 = vs.exit_pressure(0.0).copy()
    # the marrow drains against one static venous pressure: no vein-to-vein shunt through the body
    assert np.ptp(p0) == 0.0
    assert np.all(vs.exit_resistance(0.0) == 0.0)
    q = np.array([0.0, 1e-8, 0.0, 0.0, 0.0])
    t = 0.0
    for _ in range(100):
        vs.accept_flux(t, 0.2, q, np.zeros(5))
        t += 0.2
    assert np.ptp(vs.exit_pressure(t)) == 0.0
    r = vs.exit_resistance(t)
    assert np.all(r[[0, 2, 3, 4]] == 0.0)
    # all the pushed cement passes the exit's own vein first: its filled length alone is a lower
    # bound on the column's Poiseuille resistance 128 mu L / (pi d^4)
    net = vs.network
    node = vs.exit_nodes[1]
    first = int(np.flatnonzero((net.edge_u == node) | (net.edge_v == node))[0])
    d = net.edge_diameter_m[first]
    filled = min(net.edge_length_m[first], float(q[1]) * t / (0.25 * np.pi * d**2))
    assert d == pytest.approx(vs.exits[1].diameter_m, rel=1e-15)  # the vein fills its foramen
    assert r[1] >= 128.0 * mu * filled / (np.pi * d**4) * (1.0 - 1e-9)
    # blood reroutes but is conserved: still the whole cardiac output into the atrium
    net = vs.network
    assert vs.flow.edge_flow_m3_s[net.pump_edge] == pytest.approx(net.cardiac_output_m3_s, rel=1e-12)
    assert vs.flow.residual <= 1e-12


def test_negative_cement_flux_is_rejected():
    vs = make_system("T8")
    with pytest.raises(SolverError, match="anterior_right"):
        vs.accept_flux(0.0, 0.1, np.array([0, 0, -1e-9, 0, 0.0]), np.zeros(5))
    with pytest.raises(SolverError, match="expected 5 exit fluxes"):
        vs.accept_flux(0.0, 0.1, np.zeros(3), np.zeros(3))


def test_vein_cement_leaves_the_syringe_with_the_syringe_age_then_ages_at_body_rate():
    params = run_params()
    net = build_venous_network("L1", params.veins, np.random.default_rng(1))
    cem = load_cement_preset("medium")
    a0 = equivalent_age_s(cem, 360.0, 294.15)
    clock = CureClock.for_cement(cem, 360.0, 294.15, 310.15)
    vs = VenousSystem(
        net, synthetic_exits(net), cem, clock, params.fluoroscopy, DragVsStrength(params.fragmentation),
        np.random.default_rng(1), transit=transit_model(1),
    )  # fmt: skip
    r_room, r_body = vs.clock.room_rate, vs.clock.body_rate
    assert clock.age_at_start_s == a0
    assert (r_room, r_body) == (age_rate(cem, 294.15), age_rate(cem, 310.15))
    assert r_body > 1.5 * r_room  # curing roughly doubles from room to body temperature
    assert vs.cement_age_s(10.0) == pytest.approx(a0 + r_room * 10.0, rel=1e-14)
    # one pulse at t1, a second of equal volume at t2: the mean of the two entry ages, both at body rate
    q = np.array([0.0, 1e-9, 0.0, 0.0, 0.0])
    t1, t2, dt = 20.0, 50.0, 0.5
    vs.accept_flux(t1, dt, q, np.zeros(5))
    t = 40.0
    assert vs.cement_age_s(t) == pytest.approx(a0 + r_room * t1 + r_body * (t - t1), rel=1e-12)
    vs.accept_flux(t2, dt, q, np.zeros(5))
    t = 80.0
    expect = 0.5 * (a0 + r_room * t1 + r_body * (t - t1)) + 0.5 * (a0 + r_room * t2 + r_body * (t - t2))
    assert vs.cement_age_s(t) == pytest.approx(expect, rel=1e-12)


def test_pushed_column_resists_with_the_exact_laminar_drop_of_the_cement():
    """A full-bore column pushed at Q drops what the cement's clipped power law drops in laminar flow
    over the column's length (the cannula's Rabinowitsch-Mooney drop), not Poiseuille at the viscosity of
    the Newtonian wall rate 8 V / d, which the medium cement's shear thinning puts more than 5 % lower."""
    from sim.physics.rheology import cannula_pressure_drop_pa, cement_viscosity

    vs = make_system("T8")
    vs.fragmentation.strength_pa = lambda cement, age: np.inf  # a column that never sheds
    q = np.array([0.0, 1e-8, 0.0, 0.0, 0.0])
    t = 0.0
    for _ in range(10):
        vs.accept_flux(t, 0.2, q, np.zeros(5))
        t += 0.2
    full = np.flatnonzero(vs.columns.full_bore() & (vs.columns.fill_length_m() > 0.0))
    assert full.size >= 1
    flow = np.zeros(vs.network.n_edges)
    flow[full] = 1e-8
    age = vs.cement_age_s(t)
    r = vs.columns.cement_resistance(vs._edge_viscosity(flow, t))
    d = vs.network.edge_diameter_m[full]
    length = vs.columns.fill_length_m()[full]
    exact = [cannula_pressure_drop_pa(vs.cement, 1e-8, x, y, age) for x, y in zip(d, length, strict=True)]
    np.testing.assert_allclose(r[full] * 1e-8, exact, rtol=1e-10)
    old = (
        128 * cement_viscosity(vs.cement, 8 * (1e-8 / (np.pi * d**2 / 4)) / d, age) * length / (np.pi * d**4)
    )
    assert np.all(old * 1e-8 < 0.95 * np.array(exact))


def test_midstep_resistance_is_exact_for_a_column_growing_linearly_in_time():
    # three step means of R = a + b t at the steps' midpoints: the prediction at any later time is exact
    a, b = 2.0e11, 3.0e12
    t_means = np.array([[0.1, 0.4], [0.3, 0.9], [0.6, 1.3]])  # uneven steps, two exits
    r_means = a + b * t_means
    got = midstep_resistance(1.0, t_means, r_means, np.array([True, True]))
    np.testing.assert_allclose(got, a + b * 1.0, rtol=1e-12)


def test_midstep_resistance_falls_back_to_the_last_mean_at_a_turn_or_without_history():
    t_means = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [2.0, 2.0, 2.0]])
    # exit 0 turns (a shed fragment), exit 1 grows unevenly (minmod: the smaller slope), exit 2 has no history
    r_means = np.array([[1.0, 1.0, 1.0], [3.0, 2.0, 2.0], [2.0, 5.0, 3.0]]) * 1e12
    got = midstep_resistance(3.0, t_means, r_means, np.array([True, True, False]))
    np.testing.assert_allclose(got, np.array([2.0, 6.0, 3.0]) * 1e12, rtol=1e-12)
    # a falling resistance is not extrapolated below zero
    falling = np.array([[3.0], [2.0], [1.0]]) * 1e12
    assert midstep_resistance(10.0, t_means[:, :1], falling, np.array([True]))[0] == 0.0


def _column_pushed_by_the_bone(n_steps: int, lagged: bool) -> float:
    """Cement (m^3) pushed into exit 1's vein over 10 s by a bone that drains through a foramen of
    resistance R_f in series with the column: q = dp / (R_f + R_column), the column's resistance as
    ``exit_resistance`` hands it to the bone's step (or, ``lagged``, the last step's mean)."""
    vs = make_system("T8", cement=CementModel.newtonian(200.0))
    vs.fragmentation.strength_pa = lambda cement, age: np.inf
    dp, r_foramen, dt = 1.2e3, 1e12, 10.0 / n_steps
    pushed = 0.0
    for k in range(n_steps):
        r = vs._r_mid[2] if lagged else vs.exit_resistance(k * dt)
        qc = np.zeros(5)
        qc[1] = dp / (r_foramen + r[1])
        vs.accept_flux(k * dt, dt, qc, np.zeros(5))
        pushed += qc[1] * dt
    return pushed


def test_column_resistance_handed_to_the_bone_is_second_order_in_time():
    # dV/dt = dp / (R_f + k V) with the column growing inside its first vein (about half filled): the
    # midpoint prediction converges at second order, the last step's mean (the former coupling) at first
    for lagged, lo, hi in ((False, 1.8, 2.2), (True, 0.8, 1.2)):
        ref = _column_pushed_by_the_bone(1280, lagged)
        err = [abs(_column_pushed_by_the_bone(n, lagged) / ref - 1.0) for n in (20, 40, 80)]
        orders = np.log2(np.array(err[:-1]) / np.array(err[1:]))
        assert np.all((orders > lo) & (orders < hi)), (lagged, err, orders)
