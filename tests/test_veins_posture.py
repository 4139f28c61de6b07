"""Venous anatomy at measured calibre in the prone position: azygos width, lumbar drainage by level,
the IVC as a Starling resistor against the intra-abdominal pressure (waterfall at the caval hiatus)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from sim.core.units import ML_PER_MIN_M3_PER_S, MM_M, MMHG_PA
from sim.physics.venous_network import (
    build_venous_network,
    hiatus_outlet_pressure,
    kirchhoff_residual,
    network_from_edges,
    solve_blood_flow,
)
from tests.helpers import run_params

SUPINE = {"azygos_posture_widening": 1.05, "intra_abdominal_pressure_pa": 2.7 * MMHG_PA}


def veins(**over):
    return replace(run_params().veins, **over)


def _edges_between(net, a: str, b: str) -> list[int]:
    ia, ib = net.node_index(a), net.node_index(b)
    return [e for e in range(net.n_edges) if {int(net.edge_u[e]), int(net.edge_v[e])} == {ia, ib}]


def _bypass_network(p_ab: float, threshold: float, q: float = 2e-6):
    """IVC node A (inflow q) -> hiatus edge -> atrium, and a parallel azygos-like bypass A -> B -> atrium."""
    pos = np.array([[0, 0, 0.0], [0.02, 0, 0.1], [0, 0, 0.2]], dtype=float)
    # nodes: 0 = A (abdominal IVC), 1 = B (bypass), 2 = right atrium
    net = network_from_edges(
        pos, [0, 0, 1], [2, 1, 2], [10e-3, 3e-3, 6e-3], [q, 0.0, 0.0], right_atrium=2, ra_pressure_pa=500.0
    )
    return replace(net, hiatus_edge=0, abdominal_pressure_pa=p_ab, waterfall_threshold_pa=threshold)


def test_waterfall_below_atrial_pressure_changes_nothing():
    # limiting case: p_ab + threshold <= p_RA is zone 3, the rigid-tube network unchanged
    rigid = solve_blood_flow(_bypass_network(0.0, 0.0))
    for p_ab in (0.0, 300.0, 500.0 - 133.0):
        net = _bypass_network(p_ab, 133.0)
        assert hiatus_outlet_pressure(net) == 500.0
        bf = solve_blood_flow(net)
        assert np.array_equal(bf.edge_flow_m3_s, rigid.edge_flow_m3_s)
        assert np.array_equal(bf.node_pressure_pa, rigid.node_pressure_pa)


def test_waterfall_zone2_matches_starling_resistor():
    q, p_ab, thr = 2e-5, 1200.0, 133.0
    net = _bypass_network(p_ab, thr, q)
    bf = solve_blood_flow(net)
    g = 1.0 / net.poiseuille_resistance()
    g_h = g[0]
    g_b = 1.0 / (1.0 / g[1] + 1.0 / g[2])
    p_out = p_ab + thr
    # node A: q = g_h (p_A - p_out) + g_b (p_A - p_RA)
    p_a = (q + g_h * p_out + g_b * 500.0) / (g_h + g_b)
    assert bf.node_pressure_pa[0] == pytest.approx(p_a, rel=1e-12)
    assert bf.edge_flow_m3_s[0] == pytest.approx(g_h * (p_a - p_out), rel=1e-10)
    assert bf.edge_flow_m3_s[1] == pytest.approx(g_b * (p_a - 500.0), rel=1e-10)
    assert kirchhoff_residual(net, bf.edge_flow_m3_s) < 1e-12
    # the IVC upstream of the hiatus sits above the abdominal pressure: flow is diverted to the bypass
    assert bf.node_pressure_pa[0] > p_out
    rigid = solve_blood_flow(_bypass_network(0.0, 0.0, q))
    assert bf.edge_flow_m3_s[1] > 10 * rigid.edge_flow_m3_s[1]


def test_waterfall_zone1_collapsed_segment_carries_nothing():
    # inflow enters at the bypass node; a very high abdominal pressure would need backflow into the
    # abdomen through the hiatus, which a collapsed segment cannot carry
    pos = np.array([[0, 0, 0.0], [0.02, 0, 0.1], [0, 0, 0.2]], dtype=float)
    net = network_from_edges(
        pos, [0, 0, 1], [2, 1, 2], [10e-3, 3e-3, 6e-3], [0.0, 2e-6, 0.0], right_atrium=2, ra_pressure_pa=500.0
    )
    net = replace(net, hiatus_edge=0, abdominal_pressure_pa=20_000.0, waterfall_threshold_pa=133.0)
    bf = solve_blood_flow(net)
    assert bf.edge_flow_m3_s[0] == 0.0
    assert bf.edge_flow_m3_s[2] == pytest.approx(2e-6, rel=1e-12)
    assert bf.node_pressure_pa[0] == pytest.approx(bf.node_pressure_pa[1], rel=1e-12)


def test_lumbar_drainage_by_level_follows_morita():
    # L1-L2 lumbar veins to the ascending lumbar veins, L3-L4 to the IVC, L5 via the iliolumbar veins
    net = build_venous_network("L3", veins(), np.random.default_rng(0))
    for lv in ("L1", "L2"):
        assert _edges_between(net, f"{lv}:seg_l", f"{lv}:al_l") and _edges_between(
            net, f"{lv}:seg_r", f"{lv}:al_r"
        )
        assert not _edges_between(net, f"{lv}:seg_l", f"{lv}:ivc")
        assert not _edges_between(net, f"{lv}:seg_r", f"{lv}:ivc")
    for lv in ("L3", "L4"):
        assert _edges_between(net, f"{lv}:seg_l", f"{lv}:ivc") and _edges_between(
            net, f"{lv}:seg_r", f"{lv}:ivc"
        )
        assert not _edges_between(net, f"{lv}:seg_l", f"{lv}:al_l")
    for side in ("l", "r"):
        (e,) = _edges_between(net, f"L5:seg_{side}", "L5:ivc")
        assert net.edge_kind[e] == "iliolumbar"
        # the ascending lumbar vein starts at the common iliac confluence
        assert _edges_between(net, f"L5:al_{side}", "L5:ivc")


def test_ascending_lumbar_flow_runs_downwards_supine():
    # Morita et al. 2007: normal flow in the ascending lumbar veins runs caudally (a check, not a fit)
    net = build_venous_network("L1", veins(**SUPINE), np.random.default_rng(0))
    bf = solve_blood_flow(net)
    for side in ("l", "r"):
        (e,) = _edges_between(net, f"L5:al_{side}", "L5:ivc")
        into_iliac = (
            bf.edge_flow_m3_s[e] if net.node_names[net.edge_v[e]] == "L5:ivc" else -bf.edge_flow_m3_s[e]
        )
        assert into_iliac > 0.0


def test_azygos_arch_width_from_posture_not_from_diameter_scale():
    v = veins(azygos_erect_diameter_m=5.14 * MM_M, azygos_posture_widening=0.8, diameter_scale=1.4)
    net = build_venous_network("T8", v, np.random.default_rng(0))
    assert net.edge_diameter_m[net.azygos_edge] == pytest.approx(5.14e-3 * 1.8, rel=1e-12)
    base = build_venous_network("T8", veins(azygos_posture_widening=0.8), np.random.default_rng(0))
    for kind in ("azygos", "ivc", "svc"):
        sel = net.edge_kind == kind
        assert np.array_equal(net.edge_diameter_m[sel], base.edge_diameter_m[sel])
    plexus = net.edge_kind == "aivp"
    assert net.edge_diameter_m[plexus] == pytest.approx(1.4 * base.edge_diameter_m[plexus], rel=1e-12)


def test_prone_abdominal_pressure_diverts_ivc_blood_to_the_azygos():
    target = run_params().veins.azygos_flow_m3_per_s
    supine = build_venous_network("L2", veins(**SUPINE), np.random.default_rng(0))
    f_sup = solve_blood_flow(supine)
    assert f_sup.edge_flow_m3_s[supine.azygos_edge] == pytest.approx(target, rel=1e-9)
    v = veins(azygos_posture_widening=1.05, intra_abdominal_pressure_pa=10.0 * MMHG_PA)
    prone = build_venous_network("L2", v, np.random.default_rng(0))
    f_pr = solve_blood_flow(prone)
    # same inflows (calibrated supine), more of them through the azygos, less through the IVC
    assert np.array_equal(prone.node_inflow_m3_s, supine.node_inflow_m3_s)
    assert f_pr.edge_flow_m3_s[prone.azygos_edge] > 1.5 * target
    assert f_pr.edge_flow_m3_s[prone.ivc_edge] < f_sup.edge_flow_m3_s[supine.ivc_edge]
    p_out = hiatus_outlet_pressure(prone)
    assert p_out == pytest.approx((10.0 + 1.0) * MMHG_PA)
    # L2 drains through the ascending lumbar veins to the azygos: its exits rise, but stay below p_out
    for node in prone.exit_nodes.values():
        assert f_sup.node_pressure_pa[node] < f_pr.node_pressure_pa[node] < p_out
    # the abdominal IVC stays above the abdominal pressure; L4 drains to it, so its intraosseous (exit)
    # pressure follows the IVC pressure (the plexus still drains a little of it upwards to the azygos)
    l4_sup = build_venous_network("L4", veins(**SUPINE), np.random.default_rng(0))
    l4 = build_venous_network("L4", v, np.random.default_rng(0))
    f_l4, f_l4_sup = solve_blood_flow(l4), solve_blood_flow(l4_sup)
    ivc = np.flatnonzero(l4.node_kind == "ivc")
    assert f_l4.node_pressure_pa[ivc].min() > p_out
    ex = list(l4.exit_nodes.values())
    rise = f_l4.node_pressure_pa[ex] - f_l4_sup.node_pressure_pa[ex]
    ivc_rise = f_l4.node_pressure_pa[ivc].min() - f_l4_sup.node_pressure_pa[ivc].min()
    assert np.all(rise > 0.8 * ivc_rise)


def test_calibration_is_reachable_for_a_low_cvp():
    # supine the hiatus is open in the calibration, so a low CVP (2 mmHg, below the supine abdominal
    # pressure) with a small azygos flow still calibrates; prone, the waterfall then acts
    v = veins(cvp_pa=2.0 * MMHG_PA, azygos_flow_m3_per_s=180.0 * ML_PER_MIN_M3_PER_S)
    net = build_venous_network("L1", v, np.random.default_rng(0))
    sup = replace(net, edge_diameter_m=net.edge_diameter_m, abdominal_pressure_pa=-np.inf)
    sup_d = net.edge_diameter_m.copy()
    sup_d[net.edge_kind == "azygos"] *= 2.05 / 1.5
    f = solve_blood_flow(replace(sup, edge_diameter_m=sup_d))
    assert f.edge_flow_m3_s[net.azygos_edge] == pytest.approx(180.0 * ML_PER_MIN_M3_PER_S, rel=1e-9)
    assert hiatus_outlet_pressure(net) == pytest.approx((7.8 + 1.0) * MMHG_PA)
