"""What a run keeps for its outputs, kept apart from the physics objects.

The coupled run (:mod:`sim.run.coupling`) hands the recorder the state after every step: the
venous side's scalars and per-edge frames (for the time series, ParaView's vein time series and the
fluoroscopy images at detection) and, at the output interval, the bone's cement field (for
ParaView's bone time series). Output cadence is an output setting, never a physics parameter.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np

from sim.core.grid import EXIT_KINDS
from sim.physics.vein_columns import CementColumns, lumen_fill_fraction
from sim.physics.venous_network import VenousNetwork
from sim.run.venous_system import VenousSystem

VENOUS_SERIES = (
    "t_s",
    "vein_cement_m3",
    "fragment_volume_m3",
    "fragments_shed",
    "azygos_flow_m3_s",
    "ivc_flow_m3_s",
    "visible_m3",
    # cement received through each kind of exit so far (basivertebral / anterior / lateral)
    *(f"leaked_{kind}_m3" for kind in EXIT_KINDS),
)


@dataclass
class EdgeFrame:
    """Per-edge state of the veins at one time (SI)."""

    t_s: float
    cement_volume_m3: np.ndarray
    cement_column_diameter_m: np.ndarray
    occluded: np.ndarray
    blood_flow_m3_s: np.ndarray


@dataclass
class RunRecorder:
    """Time series and frames of one run; ``bone_interval_s`` None keeps only the final bone field."""

    bone_interval_s: float | None = None
    venous: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in VENOUS_SERIES})
    edge_frames: list[EdgeFrame] = field(default_factory=list)
    bone_snapshots: list[tuple[float, np.ndarray]] = field(default_factory=list)
    columns_at_detection: CementColumns | None = None
    network: VenousNetwork | None = None
    _next_bone_s: float | None = None

    def __post_init__(self) -> None:
        self._next_bone_s = self.bone_interval_s

    def record_venous(self, t: float, venous: VenousSystem) -> None:
        """Keep the venous scalars and edge frame at ``t`` (and the columns when the leak is first seen)."""
        self.network = venous.network
        s = self.venous
        cols, flow, net = venous.columns, venous.flow, venous.network
        s["t_s"].append(float(t))
        s["vein_cement_m3"].append(cols.total_m3())
        s["fragment_volume_m3"].append(float(venous.fragments.volume_m3.sum()))
        s["fragments_shed"].append(float(len(venous.fragments)))
        s["azygos_flow_m3_s"].append(float(flow.edge_flow_m3_s[net.azygos_edge]))
        s["ivc_flow_m3_s"].append(float(flow.edge_flow_m3_s[net.ivc_edge]))
        frames = venous.detector.frames_visible_m3
        s["visible_m3"].append(frames[-1] if frames else 0.0)
        by_kind = venous.leaked_by_exit_kind()
        for kind in EXIT_KINDS:
            s[f"leaked_{kind}_m3"].append(by_kind.get(kind, 0.0))
        self.edge_frames.append(
            EdgeFrame(
                float(t),
                cols.fill_m3.copy(),
                cols.col_diameter_m.copy(),
                cols.occluded().astype(np.uint8),
                flow.edge_flow_m3_s.copy(),
            )
        )
        if self.columns_at_detection is None and venous.detection_time_s is not None:
            snap = copy.copy(cols)
            for name in ("fill_m3", "col_diameter_m", "entry_end", "owner_exit"):
                setattr(snap, name, getattr(cols, name).copy())
            self.columns_at_detection = snap

    def bone_due(self, t: float) -> bool:
        """True when an output interval of the bone field has passed at ``t``."""
        return self._next_bone_s is not None and t >= self._next_bone_s * (1.0 - 1e-12)

    def record_bone(self, t: float, cement_fraction: np.ndarray, final: bool = False) -> None:
        """Keep the bone's cement field (the final one once, unless it was just kept)."""
        if final and self.bone_snapshots and self.bone_snapshots[-1][0] == t:
            return
        self.bone_snapshots.append((t, cement_fraction.astype(np.float32)))
        while not final and self._next_bone_s is not None and self._next_bone_s <= t * (1.0 + 1e-12):
            self._next_bone_s += self.bone_interval_s

    def venous_series(self) -> dict[str, np.ndarray]:
        """The venous scalars as arrays (SI), one entry per recorded time."""
        return {k: np.asarray(v) for k, v in self.venous.items()}

    def edge_series(self) -> list[tuple[float, dict[str, np.ndarray]]]:
        """Per-edge state at every recorded time (SI): cement volume and fill, column, blood flow."""
        out = []
        for f in self.edge_frames:
            out.append(
                (
                    f.t_s,
                    {
                        "cement_volume_m3": f.cement_volume_m3,
                        "cement_fill": lumen_fill_fraction(self.network, f.cement_volume_m3),
                        "cement_column_diameter_m": f.cement_column_diameter_m,
                        "occluded": f.occluded,
                        "blood_flow_m3_s": f.blood_flow_m3_s,
                        "blood_flow_abs_m3_s": np.abs(f.blood_flow_m3_s),
                    },
                )
            )
        return out
