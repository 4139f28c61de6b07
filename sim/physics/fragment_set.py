"""Data contracts shared by fragmentation (`sim.physics.fragmentation`) and transport
(`sim.physics.fragment_transport`, `sim.physics.pulmonary_tree`).

Fragments are a structure of arrays (Parcels-style): one contiguous array per attribute, one
entry per fragment, and an integer status code per fragment. Venous flows reach the transport
stage as a :class:`VenousFlowSnapshot` of plain arrays, so `sim.physics.fragment_transport` never needs the
networkx graph.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

# Fragment status codes (int8).
ACTIVE = 0  # moving in a vein or artery
IN_HEART = 1  # reached the right atrium / ventricle (mixing)
LODGED = 2  # lodged in a pulmonary artery
PASSED_DISTAL = 3  # smaller than the tree's cutoff diameter: passed beyond the modelled tree
LODGED_VEIN = 4  # stuck in a systemic vein (never reached the heart)
ARRESTED_HEART = 5  # too large for the pulmonary trunk / caught in the right heart
ERROR = 9  # numerical or topological problem; see the run log

STATUS_NAMES = {
    ACTIVE: "active",
    IN_HEART: "in_heart",
    LODGED: "lodged",
    PASSED_DISTAL: "passed_distal",
    LODGED_VEIN: "lodged_vein",
    ARRESTED_HEART: "arrested_heart",
    ERROR: "error",
}


@dataclass
class FragmentSet:
    """Tubular cement fragments (vessel casts) as a structure of arrays, SI units."""

    birth_time_s: np.ndarray  # float64: when the fragment broke off a column
    edge: np.ndarray  # int64: venous edge index where it was born
    offset_m: np.ndarray  # float64: distance along that edge in the direction of blood flow
    diameter_m: np.ndarray  # float64: = diameter of the vein it cast
    length_m: np.ndarray  # float64
    volume_m3: np.ndarray  # float64
    cure_age_s: np.ndarray  # float64: equivalent cement age (at the rheology reference T) at birth
    branched: np.ndarray  # int8: 1 if the cast includes a side branch (branching embolus)
    status: np.ndarray  # int8: status codes above

    @classmethod
    def empty(cls) -> FragmentSet:
        return cls(
            birth_time_s=np.zeros(0),
            edge=np.zeros(0, dtype=np.int64),
            offset_m=np.zeros(0),
            diameter_m=np.zeros(0),
            length_m=np.zeros(0),
            volume_m3=np.zeros(0),
            cure_age_s=np.zeros(0),
            branched=np.zeros(0, dtype=np.int8),
            status=np.zeros(0, dtype=np.int8),
        )

    def __len__(self) -> int:
        return int(self.birth_time_s.shape[0])

    def concat(self, other: FragmentSet) -> FragmentSet:
        """A new set holding self's fragments followed by other's."""
        return FragmentSet(
            **{f.name: np.concatenate([getattr(self, f.name), getattr(other, f.name)]) for f in fields(self)}
        )

    def as_columns(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class VenousFlowSnapshot:
    """Blood flow in the venous graph at one time, as arrays (for fragment transport).

    ``edge_flow_m3_s`` is signed: positive from ``edge_u`` to ``edge_v``. Edges fully blocked
    by cement carry (near) zero flow. ``outlet_node`` is the right atrium.
    """

    node_pos_m: np.ndarray  # (N, 3) patient frame
    edge_u: np.ndarray  # (E,) int64
    edge_v: np.ndarray  # (E,) int64
    edge_diameter_m: np.ndarray  # (E,)
    edge_length_m: np.ndarray  # (E,)
    edge_flow_m3_s: np.ndarray  # (E,) signed
    outlet_node: int
    edge_kind: np.ndarray | None = None  # (E,) str labels (segmental, azygos, ivc, ...)
