"""Venous network: analytic Poiseuille flows, Kirchhoff balance, physiology targets, graph health."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from sim.core.config import LEVELS, Scenario
from sim.core.errors import ConfigError, GeometryError, SolverError
from sim.core.parameters import VeinParams, build
from sim.core.units import MMHG_PA
from sim.physics.venous_network import (
    MEASURED_KINDS,
    ROUTES,
    build_venous_network,
    kirchhoff_residual,
    network_from_edges,
    solve_blood_flow,
    validate_network,
)
from tests.helpers import run_params

MU = 0.0035
CALIBRATION_POSTURE = {"azygos_posture_widening": 1.05, "intra_abdominal_pressure_pa": 2.7 * MMHG_PA}


def veins_si(**over) -> VeinParams:
    return replace(run_params().veins, **over)


def poiseuille_r(d, length, mu=MU):
    return 128.0 * mu * length / (np.pi * d**4)


def test_series_chain_matches_poiseuille():
    # inflow Q at node 0 -> 1 -> 2 (= right atrium at 700 Pa)
    pos = np.array([[0, 0, 0.2], [0, 0, 0.1], [0, 0, 0.0]], dtype=float)
    d = np.array([3e-3, 5e-3])
    q = 2e-6
    net = network_from_edges(pos, [0, 1], [1, 2], d, [q, 0, 0], right_atrium=2, ra_pressure_pa=700.0)
    bf = solve_blood_flow(net)
    r1, r2 = poiseuille_r(d[0], 0.1), poiseuille_r(d[1], 0.1)
    assert bf.edge_flow_m3_s[:2] == pytest.approx([q, q], rel=1e-12)
    assert bf.node_pressure_pa[1] == pytest.approx(700.0 + q * r2, rel=1e-12)
    assert bf.node_pressure_pa[0] == pytest.approx(700.0 + q * (r1 + r2), rel=1e-12)
    assert bf.edge_flow_m3_s[net.pump_edge] == pytest.approx(q, rel=1e-12)


def test_parallel_split_matches_d4_over_l():
    # two parallel tubes of different diameter and length between node 0 and the atrium
    pos = np.array([[0, 0, 0.1], [0, 0, 0.0], [0.05, 0, 0.05]], dtype=float)
    eu, ev = [0, 0, 2], [1, 2, 1]
    d = np.array([2e-3, 4e-3, 4e-3])
    lengths = np.array([0.05, 0.04, 0.04])
    q = 5e-6
    net = network_from_edges(pos, eu, ev, d, [q, 0, 0], right_atrium=1, length_m=lengths)
    bf = solve_blood_flow(net)
    g_a = 1 / poiseuille_r(d[0], lengths[0])
    g_b = 1 / (poiseuille_r(d[1], lengths[1]) + poiseuille_r(d[2], lengths[2]))
    assert bf.edge_flow_m3_s[0] == pytest.approx(q * g_a / (g_a + g_b), rel=1e-12)
    assert bf.edge_flow_m3_s[1] == pytest.approx(q * g_b / (g_a + g_b), rel=1e-12)
    assert bf.node_pressure_pa[0] == pytest.approx(q / (g_a + g_b), rel=1e-12)


def test_extra_resistance_in_series_and_rerouting():
    pos = np.array([[0, 0, 0.1], [0, 0, 0.0], [0.05, 0, 0.05]], dtype=float)
    net = network_from_edges(pos, [0, 0, 2], [1, 2, 1], [3e-3] * 3, [1e-6, 0, 0], right_atrium=1)
    base = solve_blood_flow(net)
    extra = np.zeros(net.n_edges)
    extra[0] = 1e6 * poiseuille_r(3e-3, 0.1)
    blocked = solve_blood_flow(net, extra)
    assert blocked.edge_flow_m3_s[0] < 1e-5 * base.edge_flow_m3_s[0]
    assert blocked.edge_flow_m3_s[1] == pytest.approx(1e-6, rel=1e-5)
    with pytest.raises(SolverError, match="extra_resistance of edge 1"):
        bad = np.zeros(net.n_edges)
        bad[1] = np.inf
        solve_blood_flow(net, bad)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("hemi", [True, False])
def test_anatomical_network_kirchhoff_and_physiology(level, hemi):
    # in the posture the azygos flow was measured in (supine), the arch carries exactly that flow
    si = veins_si(hemiazygos_present=hemi, **CALIBRATION_POSTURE)
    net = build_venous_network(level, si, np.random.default_rng(0))
    bf = solve_blood_flow(net)
    assert bf.residual <= 1e-12
    assert kirchhoff_residual(net, bf.edge_flow_m3_s) <= 1e-12
    co = si.cardiac_output_m3_per_s
    # total inflow = cardiac output; all of it reaches the right atrium and leaves by the pump
    assert net.node_inflow_m3_s.sum() == pytest.approx(co, rel=1e-12)
    ra = net.right_atrium
    into_ra = bf.edge_flow_m3_s[(net.edge_v == ra) & (np.arange(net.n_edges) != net.pump_edge)].sum()
    into_ra -= bf.edge_flow_m3_s[(net.edge_u == ra) & (np.arange(net.n_edges) != net.pump_edge)].sum()
    assert into_ra == pytest.approx(co, rel=1e-10)
    assert bf.edge_flow_m3_s[net.pump_edge] == pytest.approx(co, rel=1e-12)
    assert bf.edge_flow_m3_s[net.azygos_edge] == pytest.approx(si.azygos_flow_m3_per_s, rel=1e-9)
    assert np.all(net.node_inflow_m3_s >= 0.0)
    # veins drain toward the atrium: every pressure at or above CVP
    assert bf.node_pressure_pa.min() >= si.cvp_pa - 1e-9
    assert set(net.exit_nodes) == {
        "basivertebral",
        "anterior_left",
        "anterior_right",
        "lateral_left",
        "lateral_right",
    }
    for node in net.exit_nodes.values():
        assert net.node_names[node].startswith(f"{level}:")
    assert set(net.edge_route) <= set(ROUTES)
    assert all(src for src in net.edge_source)


def test_hemiazygos_switch_changes_topology():
    with_h = build_venous_network("T10", veins_si(hemiazygos_present=True), np.random.default_rng(0))
    without = build_venous_network("T10", veins_si(hemiazygos_present=False), np.random.default_rng(0))
    assert "hemiazygos" in set(with_h.edge_kind)
    assert "T10:hz" not in without.node_names


def test_diameter_scatter_is_seeded_and_median_preserving():
    si = veins_si(diameter_scatter=0.3)
    a = build_venous_network("L2", si, np.random.default_rng(7))
    b = build_venous_network("L2", si, np.random.default_rng(7))
    c = build_venous_network("L2", si, np.random.default_rng(8))
    ref = build_venous_network("L2", veins_si(), np.random.default_rng(7))
    assert np.array_equal(a.edge_diameter_m, b.edge_diameter_m)
    assert not np.array_equal(a.edge_diameter_m, c.edge_diameter_m)
    log_ratio = np.log(a.edge_diameter_m / ref.edge_diameter_m)
    assert abs(np.median(log_ratio)) < 0.1
    scaled = build_venous_network("L2", veins_si(diameter_scale=1.5), np.random.default_rng(7))
    # diameter_scale multiplies the unmeasured calibres; the measured trunks keep their own
    keep = ~np.isin(ref.edge_kind, MEASURED_KINDS)
    assert np.array_equal(scaled.edge_diameter_m[~keep], ref.edge_diameter_m[~keep])
    assert np.allclose(scaled.edge_diameter_m[keep], 1.5 * ref.edge_diameter_m[keep], rtol=1e-12)


def test_graph_health_names_the_culprit():
    pos = np.array([[0, 0, 0.1], [0, 0, 0.0], [0.05, 0, 0.05], [0.1, 0.1, 0.1]], dtype=float)
    with pytest.raises(GeometryError, match="isolated node.*n3"):
        network_from_edges(pos, [0, 0], [1, 2], [3e-3, 3e-3], [1e-6, 0, 0, 0], right_atrium=1)
    pos5 = np.vstack([pos, [[0.2, 0.2, 0.2]]])
    with pytest.raises(GeometryError, match="disconnected parts.*n3"):
        network_from_edges(pos5, [0, 0, 3], [1, 2, 4], [3e-3] * 3, [1e-6, 0, 0, 0, 0], right_atrium=1)
    net = network_from_edges(pos[:3], [0, 0], [1, 2], [3e-3, 3e-3], [1e-6, 0, 0], right_atrium=1)
    net.edge_diameter_m[1] = 0.0
    with pytest.raises(GeometryError, match="n0 - n2 has diameter 0.0"):
        validate_network(net)


def test_bad_settings_raise_config_errors():
    with pytest.raises(ConfigError, match="level 'C5'"):
        build_venous_network("C5", veins_si(), np.random.default_rng(0))
    with pytest.raises(ConfigError, match="azygos_flow"):
        build_venous_network("T8", veins_si(azygos_flow_m3_per_s=1e-3), np.random.default_rng(0))
    # a missing setting is refused where the typed parameters are built, naming it
    si = Scenario().si()["veins"]
    del si["cvp_pa"]
    with pytest.raises(ConfigError, match="cvp_pa"):
        build(VeinParams, si, "veins")


def test_flow_snapshot_contract():
    from sim.physics.venous_network import flow_snapshot

    net = build_venous_network("L1", veins_si(), np.random.default_rng(0))
    snap = flow_snapshot(net, solve_blood_flow(net))
    assert snap.outlet_node == net.right_atrium
    assert snap.edge_flow_m3_s.shape == (net.n_edges,)
    assert snap.node_pos_m.shape == (net.n_nodes, 3)
    # positions in metres, within half a metre of the L1 centre
    assert np.abs(snap.node_pos_m).max() < 0.5
