"""Break-up of cement threads in flowing blood (law drag_vs_strength_breakup): Tomotika's dispersion
relation, the yield criterion (no break-up below it), the size the physics sets, mass, determinism and
the choice from YAML."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from sim.core.config import scenario_from_dict
from sim.core.errors import ConfigError
from sim.core.parameters import FragmentationParams, RunParameters
from sim.physics import capillary_instability as ci
from sim.physics.fragmentation import (
    DragStrengthBreakup,
    DragVsStrength,
    pinch_off_kernel,
    thread_loads,
)
from sim.physics.laws import law_class
from sim.physics.rheology import CementModel, load_cement_preset
from sim.physics.vein_columns import CementColumns
from sim.physics.venous_network import edge_conductance, network_from_edges, solve_blood_flow

MM = 1e-3
MU_BLOOD = 0.0035  # network_from_edges default
GAMMA = 0.02


def params(gamma=GAMMA, ratio=0.01):
    return FragmentationParams(8 * MM, 0.6, 0.3, 1.0, gamma, ratio)


def thread_case(feed_d=2 * MM, thread_len=0.2, q_blood=5e-6, vein_d=10 * MM):
    """A feeder of diameter feed_d (10 mm long) into a wide vein (0.4 m) carrying q_blood: a thread."""
    pos = np.array([[0.05, 0, 0.4], [0, 0, 0.4], [0, 0, 0.0]])
    net = network_from_edges(
        pos,
        [0, 1],
        [1, 2],
        [feed_d, vein_d],
        np.array([1e-9, q_blood, 0.0]),
        right_atrium=2,
        length_m=[0.01, 0.4],
    )
    bf = solve_blood_flow(net)
    cols = CementColumns.empty(net)
    a = 0.25 * np.pi * feed_d**2
    cols.push(0, a * (0.01 + thread_len), feed_d, bf.edge_flow_m3_s, edge_conductance(net))
    assert not cols.full_bore()[1] and cols.fill_m3[1] > 0.0
    return net, bf, cols


def newtonian(eta=50.0):
    return CementModel.newtonian(eta)


# ----------------------------------------------------------------------------- Tomotika


def test_tomotika_equal_viscosities_matches_his_table():
    """lam = 1: fastest mode x_m = 0.56, (1 - x^2) Phi = 2 q eta R / gamma = 0.071 (Tomotika 1935)."""
    x_m, g_m = ci.fastest_mode(1.0)
    assert x_m == pytest.approx(0.56, abs=0.01)
    assert 2.0 * g_m == pytest.approx(0.071, abs=0.001)


def test_tomotika_tends_to_weber_for_a_thread_much_more_viscous_than_blood():
    """lam -> infinity: q -> gamma / (6 eta_in R) (Weber 1931) and x_m -> 0 (long waves)."""
    rates = [ci.fastest_mode(lam)[1] * 6.0 * lam for lam in (1e4, 1e6, 1e8)]
    assert rates[0] < rates[1] < rates[2] < 1.0
    assert rates[2] == pytest.approx(1.0, abs=1e-3)
    xs = [ci.fastest_mode(lam)[0] for lam in (1e2, 1e4, 1e6)]
    assert xs[0] > xs[1] > xs[2]


def test_short_waves_are_stable():
    """Only x = kR < 1 grows (the interface area falls only for wavelengths above 2 pi R)."""
    for lam in (0.1, 1.0, 1e4):
        assert ci.growth_rate(0.5, lam) > 0.0
        assert ci.growth_rate(1.0, lam) == pytest.approx(0.0, abs=1e-12)
        assert ci.growth_rate(1.3, lam) < 0.0


def test_interpolated_table_matches_the_direct_solution():
    lam = np.array([3.0, 250.0, 4.0e4, 7.0e6])
    x_i, g_i = ci.fastest_mode_interp(lam)
    for k, v in enumerate(lam):
        x_m, g_m = ci.fastest_mode(float(v))
        assert x_i[k] == pytest.approx(x_m, rel=2e-3)
        assert g_i[k] == pytest.approx(g_m, rel=2e-3)


# ----------------------------------------------------------------------------- yield criterion


def criterion(cols, bf, cement, tau_y, gamma=GAMMA):
    loads = thread_loads(cols, bf.edge_flow_m3_s, cement, 0.0, tau_y, gamma)
    return loads, math.sqrt(loads.capillary_pa[1] ** 2 + 3.0 * loads.blood_shear_pa[1] ** 2) / math.sqrt(3.0)


def test_blood_shear_on_a_thread_is_the_larger_of_wall_and_cross_flow_skin_friction():
    """tau_b = max(8 mu U / D, mu U sqrt(Re_d) / d); gamma / R the capillary pressure."""
    for q_blood in (1e-7, 5e-5):
        net, bf, cols = thread_case(q_blood=q_blood)
        loads = thread_loads(cols, bf.edge_flow_m3_s, newtonian(), 0.0, 1.0, GAMMA)
        u = abs(bf.edge_flow_m3_s[1]) / (0.25 * np.pi * (10 * MM) ** 2)
        re = max(1055.0 * u * 2 * MM / MU_BLOOD, 1.0)
        expected = max(8 * MU_BLOOD * u / (10 * MM), MU_BLOOD * u * math.sqrt(re) / (2 * MM))
        assert loads.blood_shear_pa[1] == pytest.approx(expected, rel=1e-12)
        assert loads.capillary_pa[1] == pytest.approx(GAMMA / MM, rel=1e-12)
        assert loads.blood_shear_pa[0] == 0.0 and not loads.thread[0]  # the full-bore feeder is no thread


@pytest.mark.parametrize("gamma", [GAMMA, 1e-9])  # capillary-dominated, and pure shear stripping
def test_no_break_up_below_the_critical_stress(gamma):
    """Below the von Mises yield of the thread surface nothing grows and nothing is shed, ever;
    just above it the thread pinches off. gamma -> 0 is the shear-stripping limit tau_b > tau_y."""
    net, bf, cols = thread_case(q_blood=5e-5)
    cem = newtonian()
    _, tau_crit = criterion(cols, bf, cem, 1.0, gamma)
    assert tau_crit > 0.0
    law = DragStrengthBreakup(params(gamma=gamma))
    law._efoldings = np.zeros(net.n_edges)
    before = cols.fill_m3.copy()
    for k in range(50):
        out = law.pinch_off(cols, bf.edge_flow_m3_s, cem, 0.0, tau_crit * (1 + 1e-6), 1e6, float(k))
        assert len(out) == 0
    assert np.array_equal(cols.fill_m3, before) and not np.any(law._efoldings)
    loads, _ = criterion(cols, bf, cem, tau_crit * (1 - 1e-6), gamma)
    assert loads.yielded[1]
    out = law.pinch_off(cols, bf.edge_flow_m3_s, cem, 0.0, tau_crit * (1 - 1e-6), 1e12, 0.0)
    assert len(out) >= 1


def test_preset_cement_in_blood_stays_whole_and_the_law_equals_drag_vs_strength():
    """Fresh medium cement (tau_y 300 Pa) as a 2 mm thread in a 10 mm vein: gamma/R = 20 Pa and the blood's
    wall shear stress << tau_y, so the new law sheds exactly what drag_vs_strength sheds, bit for bit."""
    cem = load_cement_preset("medium")
    results = []
    for cls in (DragVsStrength, DragStrengthBreakup):
        net, bf, cols = thread_case(thread_len=0.05, q_blood=2e-5)
        law = cls(params())
        frags = [law.shed(cols, bf.edge_flow_m3_s, bf.node_pressure_pa, cem, 200.0 + k, float(k),
                          np.random.default_rng(3)) for k in range(5)]  # fmt: skip
        results.append((cols.fill_m3.copy(), frags))
    loads = thread_loads(cols, bf.edge_flow_m3_s, cem, 200.0, law.strength_pa(cem, 200.0), GAMMA)
    assert loads.thread[1] and not loads.yielded[1]
    assert loads.blood_shear_pa[1] < 0.01 * law.strength_pa(cem, 200.0)
    assert np.array_equal(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1], strict=True):
        for name, arr in a.as_columns().items():
            assert np.array_equal(arr, b.as_columns()[name])


# ----------------------------------------------------------------------------- size, time, mass


def pinch(feed_d, eta=50.0, vein_d=20 * MM, thread_len=0.2):
    net, bf, cols = thread_case(feed_d=feed_d, thread_len=thread_len, q_blood=1e-6, vein_d=vein_d)
    before = cols.total_m3()
    law = DragStrengthBreakup(params())
    law._efoldings = np.zeros(net.n_edges)
    out = law.pinch_off(cols, bf.edge_flow_m3_s, newtonian(eta), 0.0, 0.0, 1e9, 2.0)
    return out, cols, before


def test_piece_size_is_the_fastest_wavelength_and_scales_with_the_thread():
    """Each piece is one wavelength 2 pi R / x_m(lam) of thread; at fixed lam its volume goes as R^3 and
    the drop it rounds into (gamma/R beats the zero yield stress) as R."""
    lam = 50.0 / MU_BLOOD
    x_m, _ = ci.fastest_mode(lam)
    sizes = {}
    for d in (0.5 * MM, 1.0 * MM):
        out, cols, before = pinch(d)
        r = 0.5 * d
        wavelength = 2 * np.pi * r / x_m
        n_expected = int(math.floor(0.2 / wavelength))
        assert len(out) == n_expected >= 2
        assert out.volume_m3 == pytest.approx(np.full(len(out), np.pi * r**2 * wavelength), rel=3e-3)
        assert out.diameter_m == pytest.approx(np.cbrt(6 * out.volume_m3 / np.pi), rel=1e-12)
        assert np.all(out.diameter_m > 3 * d)  # long-wave break-up: drops wider than the thread
        assert out.volume_m3.sum() + cols.total_m3() == pytest.approx(before, rel=1e-13)
        sizes[d] = (out.volume_m3[0], out.diameter_m[0])
    assert sizes[1.0 * MM][0] / sizes[0.5 * MM][0] == pytest.approx(8.0, rel=1e-6)
    assert sizes[1.0 * MM][1] / sizes[0.5 * MM][1] == pytest.approx(2.0, rel=1e-6)


def test_a_drop_wider_than_its_vein_is_a_cast_of_the_vein():
    out, _, _ = pinch(1.0 * MM, vein_d=3.0 * MM)
    assert len(out) >= 1
    assert np.all(out.diameter_m == 3.0 * MM)
    assert out.length_m == pytest.approx(out.volume_m3 / (0.25 * np.pi * (3.0 * MM) ** 2), rel=1e-12)


def test_a_more_viscous_thread_breaks_later_into_longer_pieces():
    thin, _, _ = pinch(1.0 * MM, eta=5.0)
    thick, _, _ = pinch(1.0 * MM, eta=500.0)
    assert thick.volume_m3[0] > thin.volume_m3[0]
    assert ci.fastest_mode(500.0 / MU_BLOOD)[1] < ci.fastest_mode(5.0 / MU_BLOOD)[1]


def test_pinch_off_waits_for_ln_one_over_delta_e_foldings():
    """Break-up time t_b = ln(R / delta_0) / q with q = g_m gamma / (mu_b R)."""
    net, bf, cols = thread_case(feed_d=1 * MM, q_blood=1e-6, vein_d=20 * MM)
    cem = newtonian(50.0)
    q = ci.fastest_mode(50.0 / MU_BLOOD)[1] * GAMMA / (MU_BLOOD * 0.5 * MM)
    t_b = math.log(100.0) / q
    law = DragStrengthBreakup(params(ratio=0.01))
    law._efoldings = np.zeros(net.n_edges)
    assert len(law.pinch_off(cols, bf.edge_flow_m3_s, cem, 0.0, 0.0, 0.0, 0.0)) == 0
    assert len(law.pinch_off(cols, bf.edge_flow_m3_s, cem, 0.0, 0.0, 0.99 * t_b, 1.0)) == 0
    assert len(law.pinch_off(cols, bf.edge_flow_m3_s, cem, 0.0, 0.0, 0.02 * t_b, 2.0)) >= 1
    assert law._efoldings[1] == 0.0  # the broken thread starts a new disturbance


def test_shed_integrates_time_between_calls_and_is_deterministic():
    """Through ``shed``: the growth integrates t between calls; two runs give the same bits."""
    cem = newtonian(50.0)  # never sets, no yield stress

    def run():
        net, bf, cols = thread_case(feed_d=1 * MM, q_blood=1e-6, vein_d=20 * MM)
        law = DragStrengthBreakup(replace(params(), strength_scale=1.0))
        law.columns_law = DragVsStrength(params())
        out = []
        for t in np.linspace(0.0, 5000.0, 11):
            out.append(law.shed(cols, bf.edge_flow_m3_s, bf.node_pressure_pa, cem, 0.0, float(t),
                                np.random.default_rng(7)))  # fmt: skip
        return cols.fill_m3.copy(), out

    (f1, o1), (f2, o2) = run(), run()
    assert np.array_equal(f1, f2)
    assert sum(len(o) for o in o1) >= 1
    for a, b in zip(o1, o2, strict=True):
        for name, arr in a.as_columns().items():
            assert np.array_equal(arr, b.as_columns()[name])


def test_kernel_matches_interpreted_reference():
    free = np.array([0.0, 0.037, 0.01])
    wavelength = np.array([0.0, 0.005, 0.02])
    area = np.full(3, 1e-6)
    outs = []
    for fn in (pinch_off_kernel, pinch_off_kernel.py_func):
        fill = free * area
        o = [np.zeros(20, dtype=np.int64), np.zeros(20), np.zeros(20)]
        n = fn(np.array([1, 2], dtype=np.int64), wavelength, free, fill, area, *o)
        outs.append((n, fill, *o))
    assert outs[0][0] == 7  # 7 whole wavelengths of 5 mm in 37 mm; the 10 mm thread < 20 mm keeps
    assert outs[0][1][1] == pytest.approx(0.002 * 1e-6, rel=1e-9) and outs[0][1][2] == 0.01 * 1e-6
    for a, b in zip(*outs, strict=True):
        assert np.array_equal(a, b)


# ----------------------------------------------------------------------------- configuration


def test_law_and_its_parameters_are_chosen_from_yaml():
    sc = scenario_from_dict(
        {
            "laws": {"fragmentation": "drag_vs_strength_breakup"},
            "fragmentation": {"interfacial_tension_mn_per_m": 25.0, "disturbance_ratio": 0.05},
        }
    )
    p = RunParameters.from_scenario(sc)
    law = law_class("fragmentation", p.laws.fragmentation).from_params(p.fragmentation)
    assert isinstance(law, DragStrengthBreakup)
    assert p.fragmentation.interfacial_tension_n_per_m == pytest.approx(0.025, rel=1e-12)
    assert p.fragmentation.disturbance_ratio == 0.05
    with pytest.raises(ConfigError, match="interfacial_tension_mn_per_m"):
        scenario_from_dict({"fragmentation": {"interfacial_tension_mn_per_m": 0.0}})
