"""Where the fragments shed before a leak is seen are at each fluoroscopy frame.

A piece torn off a vein column is cement in a vein: it attenuates the beam wherever it is until it
leaves the field of view or reaches the heart. Pulsed fluoroscopy freezes it in every frame (a pulse
lasts < 10 ms, during which it moves well under a millimetre; Mahesh 2001, RadioGraphics 21:1033).
From the foramen it crosses the paravertebral plexus at 1-5 cm/s, then the segmental and azygos
veins at tens of cm/s, so in the 20 cm field around the treated level a fragment shows in one to a
few 0.5 s frames. Before December 2026 each fragment was drawn in the first frame after its birth
only, at its birth position; frames then caught or missed the sawtooth of column growth and
shedding, and the detection time of the seed case jumped between 1.5 and 4.5 s with the grid.

Model (the venous leg of :mod:`sim.physics.fragment_transport`, with the flows of the moment of
birth): the fragment moves downstream at ``slip_factor`` times the mean blood velocity |Q| / (pi D^2
/ 4) of each vein; at a junction it takes an outflow vein with probability proportional to that
vein's flow (inverse CDF on a uniform from the fluoroscopy stream, drawn at birth, one per vein of the
longest path, as the transport draws them); it stops at the entry of the first vein it is too wide
for, d > D (1 + margin) (margin of :class:`sim.physics.fragment_transport.DiameterMargin` at its
birth age), in a vein without flow, or at a node nothing flows out of; it is gone once it reaches
the right atrium (the network's outlet, outside the field). A fragment at rest for good is handed
to the detector once (:meth:`FragmentTracks.take_at_rest`), which draws it into a kept image. The
path is not the one the transport later draws (that uses the flows at the
end of the injection and its own stream); the image needs only where the fragment is during the
next seconds.

Limiting cases (tests/test_fragment_tracks.py): a fragment in a vein without flow stays where it
was born, with its whole volume in every frame; on a straight vein it is at its birth position
plus v (t - t_birth) and gone from the time it reaches the outlet; at a junction the share of
fragments taking each branch converges to the branch's share of the flow; a fragment wider than
the next vein stops at its entry; a vein stored against its flow is crossed from v to u; a path
that ends at the atrium on its last drawn vein is gone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sim.physics.fragment_transport import DiameterMargin, VenousRouting, choose_branch, lodges
from sim.physics.venous_network import VenousNetwork


@dataclass
class TransitModel:
    """What moves fragments in the image: slip of fragment on blood, the lodging law, and the
    fluoroscopy random stream for branch choices."""

    slip_factor: float
    lodging: DiameterMargin
    rng: np.random.Generator


@dataclass
class _Track:
    """One fragment's path: legs (edge, position from the edge's u end at the leg's start, direction
    +1 towards v or -1 towards u, speed, start time), the end of its last leg (then it is in the
    heart if ``gone``, else at rest there for good) and its shape."""

    edge: np.ndarray
    u0_m: np.ndarray
    sign: np.ndarray
    speed_m_s: np.ndarray
    t0_s: np.ndarray
    t_end_s: float
    gone: bool
    diameter_m: float
    length_m: float
    volume_m3: float

    def from_u_at(self, t: float, network: VenousNetwork) -> tuple[int, float]:
        """Edge and centre distance from its u end at time t (>= birth)."""
        j = int(np.searchsorted(self.t0_s, t, side="right")) - 1
        j = max(j, 0)
        pos = self.u0_m[j] + self.sign[j] * self.speed_m_s[j] * (min(t, self.t_end_s) - self.t0_s[j])
        return int(self.edge[j]), min(max(float(pos), 0.0), float(network.edge_length_m[self.edge[j]]))


@dataclass
class FragmentTracks:
    """The fragments in transit of one run (see the module docstring)."""

    network: VenousNetwork
    tracks: list[_Track] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.tracks)

    def add(
        self,
        route: VenousRouting,
        outlet: int,
        edge: np.ndarray,
        from_u_m: np.ndarray,
        diameter_m: np.ndarray,
        length_m: np.ndarray,
        volume_m3: np.ndarray,
        margin: np.ndarray,
        birth_s: np.ndarray,
        uniforms: np.ndarray,
    ) -> None:
        """Trace new fragments: born on ``edge`` with their centre ``from_u_m`` from its u end, moving
        with the flow of ``route``; ``uniforms`` (n, k) of the fluoroscopy stream, one per junction."""
        for f in range(len(edge)):
            self.tracks.append(
                _trace(
                    self.network, route, outlet, int(edge[f]), float(from_u_m[f]), float(diameter_m[f]),
                    float(margin[f]), float(birth_s[f]), uniforms[f], float(length_m[f]), float(volume_m3[f]),
                )
            )  # fmt: skip

    def prune(self, t: float) -> None:
        """Forget the fragments that reached the heart by time t."""
        self.tracks = [k for k in self.tracks if not (k.gone and k.t_end_s <= t)]

    def take_at_rest(self, t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Remove and return (as :meth:`at`) the fragments at rest for good by time t."""
        rest = [k for k in self.tracks if not k.gone and k.t_end_s <= t]
        if rest:
            self.tracks = [k for k in self.tracks if k.gone or k.t_end_s > t]
        return self._columns(rest, t)

    def positions(self, t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Edge, centre distance from the edge's u end, and index into ``tracks`` of each fragment born
        by time t and not yet in the heart."""
        idx = self._in_veins(t)
        edges, from_u, *_ = self._columns([self.tracks[i] for i in idx], t)
        return edges, from_u, np.array(idx, dtype=np.int64)

    def at(self, t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Edge, centre distance from its u end, diameter, length and volume of each fragment in the
        veins at time t (the arguments of :func:`sim.physics.fluoroscopy.fragment_samples`)."""
        return self._columns([self.tracks[i] for i in self._in_veins(t)], t)

    def _in_veins(self, t: float) -> list[int]:
        """Indices of the fragments born by time t and not yet in the heart."""
        return [i for i, k in enumerate(self.tracks) if k.t0_s[0] <= t and not (k.gone and k.t_end_s <= t)]

    def _columns(self, ks: list[_Track], t: float) -> tuple:
        where = [k.from_u_at(t, self.network) for k in ks]
        return (
            np.array([w[0] for w in where], dtype=np.int64),
            np.array([w[1] for w in where], dtype=np.float64),
            np.array([k.diameter_m for k in ks]), np.array([k.length_m for k in ks]),
            np.array([k.volume_m3 for k in ks]),
        )  # fmt: skip


def _trace(
    net: VenousNetwork,
    route: VenousRouting,
    outlet: int,
    e: int,
    from_u: float,
    diameter: float,
    margin: float,
    birth: float,
    uniforms: np.ndarray,
    length_m: float,
    volume_m3: float,
) -> _Track:
    edge, u0, sign, speed, t0 = [], [], [], [], []
    L = float(net.edge_length_m[e])
    u_birth = min(max(from_u, 0.0), L)

    def leg(e_: int, s_from_upstream: float, t_start: float) -> None:
        toward_v = route.edge_down[e_] == net.edge_v[e_]
        edge.append(e_)
        sign.append(1.0 if toward_v else -1.0)
        u0.append(s_from_upstream if toward_v else float(net.edge_length_m[e_]) - s_from_upstream)
        speed.append(float(route.edge_speed[e_]))
        t0.append(t_start)

    def track(t_end: float, gone: bool) -> _Track:
        arrays = map(np.array, (edge, u0, sign, speed, t0))
        return _Track(*arrays, t_end, gone, diameter, length_m, volume_m3)

    if route.edge_down[e] < 0:  # born in a vein without flow: stays there
        edge, u0, sign, speed, t0 = [e], [u_birth], [1.0], [0.0], [birth]
        return track(birth, False)
    toward_v = route.edge_down[e] == net.edge_v[e]
    s = u_birth if toward_v else L - u_birth  # from the upstream end
    leg(e, s, birth)
    t = birth + (L - s) / route.edge_speed[e]
    node = int(route.edge_down[e])
    for k in range(uniforms.shape[0]):
        if node == outlet:
            break
        lo, hi = route.out_ptr[node], route.out_ptr[node + 1]
        j = choose_branch(lo, hi, route.out_edge, route.edge_flow, uniforms[k])
        if j < 0:  # dead end: at rest at the node
            break
        nxt = int(route.out_edge[j])
        if lodges(diameter, float(net.edge_diameter_m[nxt]), margin):  # at rest at the entry of nxt
            leg(nxt, 0.5 * min(length_m, float(net.edge_length_m[nxt])), t)
            speed[-1] = 0.0
            break
        leg(nxt, 0.0, t)
        t += float(net.edge_length_m[nxt]) / route.edge_speed[nxt]
        node = int(route.out_node[j])
    return track(t, node == outlet)
