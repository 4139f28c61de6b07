"""Fragments in the fluoroscopy image (sim.physics.fragment_tracks): where a fragment is at each frame.

Limiting cases: at rest in a vein without flow (whole volume in every frame); uniform motion on a
straight vein and gone once in the heart; branch shares equal to flow shares; a fragment wider than
the next vein stops at its entry. The detector sees a fragment in every frame while it is in a vein.
"""

from __future__ import annotations

import numpy as np
import pytest

from sim.physics.fluoroscopy import LeakDetector
from sim.physics.fragment_tracks import MAX_LEGS, FragmentTracks
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


def tracks_of(net, edge, offset, d=1.0 * MM, frag_len=4 * MM, margin=0.0, birth=0.0, uniforms=None):
    route = venous_routing(flow_snapshot(net, solve_blood_flow(net)), SLIP)
    k = len(edge)
    tr = FragmentTracks(net)
    uni = np.full((k, MAX_LEGS), 0.5) if uniforms is None else uniforms
    vol = 0.25 * np.pi * d**2 * frag_len
    tr.add(
        route, int(net.right_atrium), np.asarray(edge), np.asarray(offset, dtype=float), np.full(k, d),
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
    tr, route = tracks_of(net, np.zeros(n, dtype=int), np.zeros(n), uniforms=rng.random((n, MAX_LEGS)))
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
