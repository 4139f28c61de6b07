"""Fragmentation: force balance thresholds, size distribution, conservation, stop policy, determinism."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from sim.core.grid import VenousExit
from sim.core.parameters import FragmentationParams
from sim.physics.cure_clock import CureClock
from sim.physics.fragmentation import DragVsStrength, drag_coefficient, shed_fragments, shed_kernel
from sim.physics.injection_control import StopPolicy
from sim.physics.rheology import load_cement_preset
from sim.physics.vein_columns import CementColumns
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
RHO, MU = 1055.0, 0.0035


def params(median=8 * MM, sigma=0.6, p_branch=0.3):
    return FragmentationParams(median, sigma, p_branch, 1.0)


def thread_case(thread_len=0.02, q_blood=5e-6):
    """2 mm feeder (10 mm) into a 10 mm vein (100 mm) carrying q_blood; thread of thread_len."""
    pos = np.array([[0.05, 0, 0.1], [0, 0, 0.1], [0, 0, 0.0]])
    infl = np.array([1e-9, q_blood, 0.0])
    net = network_from_edges(
        pos, [0, 1], [1, 2], [2 * MM, 10 * MM], infl, right_atrium=2, length_m=[0.01, 0.1]
    )
    bf = solve_blood_flow(net)
    cols = CementColumns.empty(net)
    a = 0.25 * np.pi * (2 * MM) ** 2
    cols.push(0, a * (0.01 + thread_len), 2 * MM, bf.edge_flow_m3_s, edge_conductance(net))
    return net, bf, cols


def thread_coefficient(net, bf):
    # sigma_root = 8 C_D rho U^2 l^2 / (pi d^2): cantilever of diameter d under cross-flow drag
    u = abs(bf.edge_flow_m3_s[1]) / (0.25 * np.pi * (10 * MM) ** 2)
    re = u * 2 * MM * RHO / MU
    cd = 1 + 10 * re ** (-2 / 3)
    return 8 * cd * RHO * u**2 / (np.pi * (2 * MM) ** 2)


def test_drag_coefficient_limits():
    assert drag_coefficient(np.array([1e5]))[0] == pytest.approx(1.0, abs=0.01)
    assert drag_coefficient(np.array([1.0]))[0] == pytest.approx(11.0)


def test_thread_breaks_only_beyond_critical_length():
    net, bf, cols = thread_case(thread_len=0.02)
    c = thread_coefficient(net, bf)
    load = c * 0.02**2
    before = cols.fill_m3.copy()
    none = shed_fragments(cols, bf.edge_flow_m3_s, bf.node_pressure_pa, 1.01 * load, 0.0, 0.0, params(),
                          np.random.default_rng(0))  # fmt: skip
    assert len(none) == 0 and np.array_equal(cols.fill_m3, before)
    strength = 0.25 * load  # l* = half the thread
    frags = shed_fragments(cols, bf.edge_flow_m3_s, bf.node_pressure_pa, strength, 1.5, 400.0, params(),
                           np.random.default_rng(0))  # fmt: skip
    assert len(frags) >= 1
    remaining = cols.fill_length_m()[1]
    assert c * remaining**2 <= strength * (1 + 1e-9)
    assert np.all(frags.edge == 1)
    assert frags.diameter_m == pytest.approx(np.full(len(frags), 2 * MM))
    assert frags.volume_m3 == pytest.approx(0.25 * np.pi * (2 * MM) ** 2 * frags.length_m, rel=1e-12)
    assert frags.volume_m3.sum() + cols.total_m3() == pytest.approx(before.sum(), rel=1e-14)
    assert np.all(frags.birth_time_s == 1.5) and np.all(frags.cure_age_s == 400.0)
    assert np.all((frags.offset_m >= 0) & (frags.offset_m <= net.edge_length_m[1] + 1e-12))


def test_faster_blood_breaks_shorter_threads():
    slow = thread_case(q_blood=2e-6)
    fast = thread_case(q_blood=2e-5)
    assert thread_coefficient(*fast[:2]) > 50 * thread_coefficient(*slow[:2])
    strength = 0.5 * thread_coefficient(*slow[:2]) * 0.02**2
    n_slow = len(shed_fragments(slow[2], slow[1].edge_flow_m3_s, slow[1].node_pressure_pa, 1.1 * 4 * strength,
                                0.0, 0.0, params(), np.random.default_rng(1)))  # fmt: skip
    n_fast = len(shed_fragments(fast[2], fast[1].edge_flow_m3_s, fast[1].node_pressure_pa, 1.1 * 4 * strength,
                                0.0, 0.0, params(), np.random.default_rng(1)))  # fmt: skip
    assert n_slow == 0 and n_fast >= 1


def test_plug_is_torn_when_pressure_difference_beats_strength_and_lengths_are_lognormal():
    # a 0.6 m, 2 mm vein fully plugged; blood pressure drop across it vs strength
    pos = np.array([[0, 0, 0.6], [0, 0, 0.0], [0.01, 0, 0.3]])
    net = network_from_edges(
        pos, [0, 0, 2], [1, 2, 1], [2 * MM, 4 * MM, 4 * MM], [1e-6, 0, 0], right_atrium=1
    )
    bf = solve_blood_flow(net)
    cols = CementColumns.empty(net)
    cols.push(0, 0.25 * np.pi * (2 * MM) ** 2 * net.edge_length_m[0] * 0.999, 2 * MM,
              np.array([1e-6, 0, 0, 1e-6]), edge_conductance(net))  # fmt: skip
    dp = abs(bf.node_pressure_pa[0] - bf.node_pressure_pa[1])
    held = cols.fill_m3[0]
    assert len(shed_fragments(cols, bf.edge_flow_m3_s, bf.node_pressure_pa, 1.01 * dp, 0, 0, params(),
                              np.random.default_rng(2))) == 0  # fmt: skip
    frags = shed_fragments(cols, bf.edge_flow_m3_s, bf.node_pressure_pa, 0.99 * dp, 0, 0,
                           params(median=6 * MM, sigma=0.4), np.random.default_rng(2))  # fmt: skip
    assert cols.fill_m3[0] == pytest.approx(0.0, abs=1e-20)  # a weak plug is swept away entirely
    assert frags.volume_m3.sum() == pytest.approx(held, rel=1e-12)
    full = frags.length_m[:-1]  # the last piece is capped by what was left
    assert len(full) > 40
    assert np.median(full) == pytest.approx(6 * MM, rel=0.25)
    assert np.std(np.log(full)) == pytest.approx(0.4, rel=0.3)


@pytest.mark.parametrize("tip", ["thread", "plug"])
def test_kernel_matches_interpreted_reference(tip):
    net, bf, cols = thread_case(thread_len=0.05)
    from sim.physics.fragmentation import tip_loads

    coef, flag, free = tip_loads(cols, bf.edge_flow_m3_s, bf.node_pressure_pa)
    if tip == "plug":  # the same column loaded as a plug (a stress that does not grow with length)
        flag = np.zeros_like(flag)
    rng = np.random.default_rng(5)
    z, u = rng.standard_normal(200), rng.random(200)
    outs = []
    for fn in (shed_kernel, shed_kernel.py_func):
        fill = cols.fill_m3.copy()
        o = [
            np.zeros(200, dtype=np.int64),
            np.zeros(200),
            np.zeros(200),
            np.zeros(200),
            np.zeros(200, dtype=np.int8),
        ]
        strength = 1e-3 * coef[1] * free[1] ** 2
        cand = np.array([1], dtype=np.int64)
        pend, pend_u = np.zeros(net.n_edges), np.zeros(net.n_edges)
        grow = np.ones(net.n_edges, dtype=np.int8)  # pushed on
        n = fn(cand, coef, flag, free, fill, cols.column_area_m2(), net.edge_length_m, strength,
               4 * MM, 0.6, 0.5, z, u, pend, pend_u, grow, *o)  # fmt: skip
        outs.append((n, fill, pend, pend_u, *o))
    assert outs[0][0] > 1
    # a plug pushed on keeps the draw that exceeds its free length for its next piece; a thread does not
    assert (outs[0][2][1] > 0.0) == (tip == "plug")
    for a, b in zip(*outs, strict=True):
        assert np.array_equal(a, b)


# ----------------------------------------------------------------------------- coupled policy


def system(seed=4, level="T8", **frag):
    params = run_params()
    net = build_venous_network(level, params.veins, np.random.default_rng(seed))
    exits = [
        VenousExit(
            name=n,
            kind=n.split("_")[0],
            cells=np.zeros(0, dtype=np.int64),
            position_m=net.node_pos_m[net.exit_nodes[n]],
            diameter_m=2.5e-3,
            length_m=2e-3,
        )  # fmt: skip
        for n in ("basivertebral", "anterior_left", "anterior_right")
    ]
    cem = load_cement_preset("medium")
    clock = CureClock.for_cement(cem, 360.0, 294.15, 310.15)
    law = DragVsStrength(replace(params.fragmentation, **frag))
    return VenousSystem(
        net,
        exits,
        cem,
        clock,
        params.fluoroscopy,
        law,
        np.random.default_rng(seed),
        transit=transit_model(seed),
    )


def follow_up(vs, t, follow_up_s, recorder=None):
    """After the injection: no pushing, one fluoroscopy frame at a time (as sim.run.coupling does)."""
    t_stop = t + follow_up_s
    while t < t_stop - 1e-12:
        t = min(t + vs.detector.frame_interval_s, t_stop)
        vs.relax(t)
        if recorder is not None:
            recorder.record_venous(t, vs)


def drive(vs, stop, t_max=60.0, dt=0.25, rate=1.0e-8, recorder=None):
    """Synthetic injection: leak at a constant rate through the anterior-left exit until the operator
    (stop ``stop`` s after the reaction to a seen leak; None: never) stops. Returns (end, stop time)."""
    policy = StopPolicy(stop, run_params().stop.reaction_delay_s)
    q = np.array([0.0, rate, 0.0])
    t, stop_time = 0.0, None
    if recorder is not None:
        recorder.record_venous(t, vs)
    while t < t_max - 1e-9:
        if policy.should_stop(t, vs.detection_time_s):
            stop_time = t
            break
        vs.accept_flux(t, dt, q, 0.1 * q)
        t += dt
        if recorder is not None:
            recorder.record_venous(t, vs)
    follow_up(vs, t, 20.0, recorder)
    return t, stop_time


def test_stop_at_detection_sheds_fewer_fragments_than_never_stopping():
    stop0 = system()
    never = system()
    t0, stop0_time = drive(stop0, 0.0)
    t1, never_time = drive(never, None)
    assert stop0.detection_time_s is not None and stop0_time is not None
    assert stop0_time == pytest.approx(t0)
    assert stop0_time >= stop0.detection_time_s
    assert never_time is None and t1 == pytest.approx(60.0)
    assert stop0.received_m3 < never.received_m3
    assert len(stop0.fragments) < len(never.fragments)
    assert stop0.fragments.volume_m3.sum() < never.fragments.volume_m3.sum()


def test_fragment_count_grows_with_volume_pushed_after_detection():
    counts, volumes = [], []
    for delay in (0.0, 5.0, 15.0, 30.0, 60.0):
        vs = system()
        drive(vs, delay, t_max=100.0)
        counts.append(len(vs.fragments))
        volumes.append(vs.received_m3)
    assert np.all(np.diff(volumes) > 0)
    assert np.all(np.diff(counts) >= 0)
    assert counts[-1] > counts[0]


def test_no_shedding_once_cement_is_set():
    vs = system()
    recorder = RunRecorder()
    drive(vs, None, t_max=40.0, recorder=recorder)
    follow_up(vs, 60.0, 400.0, recorder)  # well past the setting time at body temperature
    assert vs.set_time_s is not None
    ts = recorder.venous_series()
    after = ts["t_s"] >= vs.set_time_s
    assert np.ptp(ts["fragments_shed"][after]) == 0
    assert vs.strength_pa(vs.set_time_s) == np.inf


def test_determinism_with_seed():
    a, b, c = system(seed=9), system(seed=9), system(seed=10)
    for vs in (a, b, c):
        drive(vs, None, t_max=40.0)
    fa, fb = a.fragments.as_columns(), b.fragments.as_columns()
    assert len(a.fragments) > 0
    for key in fa:
        assert np.array_equal(fa[key], fb[key])
    assert np.array_equal(a.columns.fill_m3, b.columns.fill_m3)
    assert not np.array_equal(a.fragments.length_m, c.fragments.length_m)


@pytest.mark.parametrize("checks_per_piece", [1, 8])
def test_pieces_do_not_depend_on_how_often_the_tips_are_checked(checks_per_piece):
    """A plug pushed along a 0.6 m vein at a constant rate under a load far above its strength, its tip
    checked once or eight times per median piece length of travel: the pieces follow the lognormal
    draw (median 6 mm, log-sd 0.4) either way. Capping each piece at the length grown since the last
    check gave pieces of 1/8 the median at eight checks per piece (eight times as many emboli)."""
    pos = np.array([[0, 0, 0.6], [0, 0, 0.0], [0.01, 0, 0.3]])
    net = network_from_edges(
        pos, [0, 0, 2], [1, 2, 1], [2 * MM, 4 * MM, 4 * MM], [1e-6, 0, 0], right_atrium=1
    )
    bf = solve_blood_flow(net)
    cols = CementColumns.empty(net)
    area = 0.25 * np.pi * (2 * MM) ** 2
    dp = abs(bf.node_pressure_pa[0] - bf.node_pressure_pa[1])
    law = DragVsStrength(params(median=6 * MM, sigma=0.4))
    cem = load_cement_preset("medium")
    law.strength_pa = lambda cement, age_s: 0.5 * dp  # a fixed strength below the plug's load
    rng = np.random.default_rng(3)
    travel = 6 * MM / checks_per_piece
    frags = []
    flow, g = np.array([1e-6, 0, 0, 1e-6]), edge_conductance(net)
    for k in range(int(0.45 / travel)):  # push 0.45 m of column through the tip's edge
        cols.push(0, area * travel, 2 * MM, flow, g)
        f = law.shed(cols, bf.edge_flow_m3_s, bf.node_pressure_pa, cem, 0.0, float(k), rng)
        frags.extend(f.length_m.tolist())
    lengths = np.array(frags)
    assert 50 <= lengths.size <= 110  # 0.45 m in pieces of mean 6.5 mm: about 70
    assert np.median(lengths) == pytest.approx(6 * MM, rel=0.2)
    assert np.std(np.log(lengths)) == pytest.approx(0.4, rel=0.3)
    # once the push stops, the plug's stub (shorter than its drawn piece) leaves whole, and the emptied edge
    # forgets the draw it was waiting for
    held = cols.fill_m3[0]
    assert held > 0.0 and law._pending[0, 0] * area > held  # the stub waits for a longer piece
    last = law.shed(cols, bf.edge_flow_m3_s, bf.node_pressure_pa, cem, 0.0, 1e3, rng)
    assert len(last) == 1 and last.volume_m3[0] == pytest.approx(held, rel=1e-12)
    assert cols.fill_m3[0] == pytest.approx(0.0, abs=1e-20)
    law.shed(cols, bf.edge_flow_m3_s, bf.node_pressure_pa, cem, 0.0, 1e3 + 1.0, rng)
    assert law._pending[0, 0] == 0.0
