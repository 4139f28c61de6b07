"""Fragments in the fluoroscopy image (sim.physics.fragment_tracks): where a fragment is at each frame.

Limiting cases: at rest in a vein without flow (whole volume in every frame); uniform motion on a
straight vein and gone once in the heart; branch shares equal to flow shares; a fragment wider than
the next vein stops at its entry. The detector sees a fragment in every frame while it is in a vein.
"""

from __future__ import annotations

import numpy as np
import pytest

from sim.physics.fluoroscopy import LeakDetector
from sim.physics.fragment_tracks import FragmentTracks
from sim.physics.fragment_transport import venous_routing
from sim.physics.vein_columns import CementColumns
from sim.physics.venous_network import flow_snapshot, network_from_edges, solve_blood_flow
from tests.test_fluoroscopy import fluoro_si

MM = 1e-3
SLIP = 0.9


def chain(diameters, inflow, length=0.04):
    """Straight veins along -z from z = +length / 2, the last node the right atrium."""
    n = len(diameters)
    z = length / 2 - np.arange(n + 1) * length / n
    pos = np.column_stack([np.zeros(n + 1), np.zeros(n + 1), z])
    q_in = np.zeros(n + 1)
    q_in[0] = inflow
    return network_from_edges(pos, np.arange(n), np.arange(1, n + 1), diameters, q_in, right_atrium=n)


def tracks_of(net, edge, from_u, d=1.0 * MM, frag_len=4 * MM, margin=0.0, birth=0.0, uniforms=None):
    route = venous_routing(flow_snapshot(net, solve_blood_flow(net)), SLIP)
    k = len(edge)
    tr = FragmentTracks(net)
    uni = np.full((k, route.max_steps), 0.5) if uniforms is None else uniforms
    vol = 0.25 * np.pi * d**2 * frag_len
    tr.add(
        route, int(net.right_atrium), np.asarray(edge), np.asarray(from_u, dtype=float), np.full(k, d),
        np.full(k, frag_len), np.full(k, vol), np.full(k, margin), np.full(k, birth), uni,
    )  # fmt: skip
    return tr, route


def test_a_fragment_in_a_vein_without_flow_stays_where_it_was_born():
    net = chain([2 * MM], inflow=0.0)
    tr, _ = tracks_of(net, [0], [0.013])
    for t in (0.0, 1.0, 100.0):
        edge, from_u, idx = tr.positions(t)
        assert edge.tolist() == [0] and from_u == pytest.approx([0.013], abs=1e-15)
    det = LeakDetector(fluoro_si(visibility_threshold_m3=1.0, frame_interval_s=0.5), np.zeros(3))
    det.tracks = tr
    empty = CementColumns.empty(net)
    det.update(5.0, empty)
    vol = 0.25 * np.pi * MM**2 * 4 * MM
    assert len(det.frames_visible_m3) == 11
    np.testing.assert_allclose(det.frames_visible_m3, vol, rtol=0.05)  # the rim below 0.5 mm is not seen


def test_a_fragment_moves_with_the_blood_and_is_gone_in_the_heart():
    d, q = 2 * MM, 1e-8
    net = chain([d], inflow=q)
    v = SLIP * q / (0.25 * np.pi * d**2)
    birth, s0 = 1.0, 0.005
    tr, _ = tracks_of(net, [0], [s0], birth=birth)
    assert tr.positions(0.5)[0].size == 0  # not yet born
    arrival = birth + (0.04 - s0) / v
    for t in (birth, birth + 2.0, birth + 7.5, arrival - 1e-6):
        edge, from_u, _ = tr.positions(t)
        assert from_u == pytest.approx([s0 + v * (t - birth)], rel=1e-12)
    assert tr.positions(arrival + 1e-6)[0].size == 0
    tr.prune(arrival + 1e-6)
    assert len(tr) == 0
    # the detector sees it (4 mm of a 1 mm bore) in every frame until it reaches the heart
    tr, _ = tracks_of(net, [0], [s0], birth=birth)
    det = LeakDetector(fluoro_si(visibility_threshold_m3=1.0, frame_interval_s=0.5), np.zeros(3))
    det.tracks = tr
    det.update(arrival + 2.0, CementColumns.empty(net))
    seen = np.array(det.frames_visible_m3) > 0.0
    frames = np.array(det.frames_t)
    assert np.array_equal(seen, (frames >= birth) & (frames < arrival))


def test_branch_shares_follow_the_flow():
    # 0 -> 1, then 1 -> 2 (2 mm) and 1 -> 3 (1.2 mm), both on to the atrium 4
    pos = np.array([[0, 0, 0.04], [0, 0, 0.03], [0.01, 0, 0.0], [-0.01, 0, 0.0], [0, 0, -0.03]], dtype=float)
    net = network_from_edges(
        pos, [0, 1, 1, 2, 3], [1, 2, 3, 4, 4], [3 * MM, 2 * MM, 1.2 * MM, 3 * MM, 3 * MM],
        [1e-7, 0, 0, 0, 0], right_atrium=4,
    )  # fmt: skip
    n = 4000
    rng = np.random.default_rng(7)
    tr, route = tracks_of(net, np.zeros(n, dtype=int), np.zeros(n), uniforms=rng.random((n, 8)))
    flow = np.abs(solve_blood_flow(net).edge_flow_m3_s)
    share = flow[1] / (flow[1] + flow[2])
    took = np.mean([k.edge[1] == 1 for k in tr.tracks])
    assert took == pytest.approx(share, abs=4 * np.sqrt(share * (1 - share) / n))
    assert all(k.gone for k in tr.tracks)


def test_a_fragment_wider_than_the_next_vein_stops_at_its_entry():
    net = chain([2 * MM, 0.8 * MM], inflow=1e-8)
    tr, _ = tracks_of(net, [0], [0.0], d=1.0 * MM, margin=0.2)  # 1.0 > 0.8 * 1.2
    edge, from_u, _ = tr.positions(1.0e4)
    assert edge.tolist() == [1] and from_u == pytest.approx([2 * MM])  # half its length inside
    assert not tr.tracks[0].gone
    tr, _ = tracks_of(net, [0], [0.0], d=0.9 * MM, margin=0.2)  # 0.9 < 0.96: passes
    assert tr.tracks[0].gone


def test_a_vein_stored_against_its_flow_is_crossed_from_v_to_u_over_several_veins():
    """Three veins, the middle one stored v -> u against the flow: the fragment's position runs down
    it from its v end, and the time on each vein is its length over the fragment's speed there."""
    d, q = 2 * MM, 1e-8
    pos = np.array([[0, 0, 0.03], [0, 0, 0.02], [0, 0, 0.0], [0, 0, -0.01]], dtype=float)
    # edge 1 is stored from node 2 to node 1, the flow runs 1 -> 2
    net = network_from_edges(pos, [0, 2, 2], [1, 1, 3], [d, d, d], [q, 0, 0, 0], right_atrium=3)
    v = SLIP * q / (0.25 * np.pi * d**2)
    tr, route = tracks_of(net, [0], [0.002])
    assert route.edge_down[1] == 2  # against the stored direction
    t_in_middle = (0.01 - 0.002) / v + 0.5 * 0.02 / v  # halfway down the middle vein
    edge, from_u, _ = tr.positions(t_in_middle)
    assert edge.tolist() == [1] and from_u == pytest.approx([0.01], rel=1e-9)  # from u (node 2): 10 of 20 mm
    arrival = (0.01 - 0.002 + 0.02 + 0.01) / v
    assert tr.positions(arrival * (1 - 1e-9))[0].tolist() == [2]
    assert tr.positions(arrival * (1 + 1e-9))[0].size == 0 and tr.tracks[0].gone


def test_a_dead_end_and_a_vein_without_flow_leave_the_fragment_at_rest():
    """A fragment reaching a node nothing flows out of rests at the end of its vein for good; one born
    in a vein whose flow is zero (of either sign) stays at its birth position from u."""
    net = chain([2 * MM], inflow=0.0)
    tr, _ = tracks_of(net, [0], [0.031])  # the birth position counts from u, whatever the flow's sign
    assert tr.positions(50.0)[1] == pytest.approx([0.031])
    rest = tr.take_at_rest(1.0)
    assert rest[0].tolist() == [0] and rest[1] == pytest.approx([0.031]) and len(tr) == 0
    # a chain whose only outflow is blocked: node 1 has no outflow edge in the routing
    pos = np.array([[0, 0, 0.02], [0, 0, 0.0], [0, 0, -0.02]], dtype=float)
    net2 = network_from_edges(pos, [0, 1], [1, 2], [2 * MM, 2 * MM], [1e-8, 0, 0], right_atrium=2)
    route = venous_routing(flow_snapshot(net2, solve_blood_flow(net2)), SLIP)
    route.out_ptr[2:] = route.out_ptr[1]  # cut node 1's outflow: a dead end
    tr2 = FragmentTracks(net2)
    vol = 0.25 * np.pi * MM**2 * 4 * MM
    tr2.add(route, 2, np.array([0]), np.array([0.005]), np.array([MM]), np.array([4 * MM]), np.array([vol]),
            np.zeros(1), np.zeros(1), np.full((1, 4), 0.5))  # fmt: skip
    k = tr2.tracks[0]
    assert not k.gone and k.edge.tolist() == [0]
    assert tr2.positions(k.t_end_s + 100.0)[1] == pytest.approx([0.02])  # at the end of its vein


def test_a_path_that_reaches_the_atrium_on_its_last_drawn_vein_is_gone():
    n = 6
    net = chain([2 * MM] * n, inflow=1e-8)
    route = venous_routing(flow_snapshot(net, solve_blood_flow(net)), SLIP)
    tr = FragmentTracks(net)
    vol = 0.25 * np.pi * MM**2 * 4 * MM
    tr.add(route, n, np.array([0]), np.array([0.0]), np.array([MM]), np.array([4 * MM]), np.array([vol]),
           np.zeros(1), np.zeros(1), np.full((1, n - 1), 0.5))  # fmt: skip
    assert tr.tracks[0].gone and tr.tracks[0].edge.tolist() == list(range(n))
