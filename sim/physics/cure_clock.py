"""One cure clock for all cement of a run: in the syringe, in the bone, in the veins, in fragments.

Cure is tracked as the equivalent age ``a`` at the rheology's reference temperature (the maturity
method, :mod:`sim.physics.rheology`): da/dt = r(T), r(T) = exp(-Ea/R (1/T - 1/T_ref)). Cement
waits in the syringe at room temperature (rate r_room) and ages at body temperature (r_body) once
it is in the patient:

    syringe:            a_syr(t) = a_0 + r_room t          (t from injection start)
    inside the patient: a(t + s) = a(t) + r_body s

A region that keeps receiving cement of different ages (the bone, the veins) holds a volume-weighted
mean age, kept as an offset so that it advances exactly at r_body between arrivals:
a_pool(t) = offset + r_body t; mixing in a volume v of age a_in at time t with V already there moves
the offset by w (a_in - r_body t - offset), w = v / (V + v). Removing cement (a leak out of the bone)
leaves the mean unchanged. An empty pool reports the syringe's age (what would arrive next).
Limiting cases (tested): a pool that holds cement and receives nothing more ages at r_body; a pool
fed at a constant rate from the syringe holds the mean of its inflow's ages.
"""

from __future__ import annotations

from dataclasses import dataclass

from sim.physics import rheology
from sim.physics.rheology import CementModel


@dataclass(frozen=True)
class CureClock:
    """Ageing rates and the syringe's age, shared by injection, veins and fragment transport."""

    age_at_start_s: float  # equivalent age of the syringe's cement at injection start
    room_rate: float  # da/dt at room temperature (syringe)
    body_rate: float  # da/dt at body temperature (bone, veins, fragments)

    @classmethod
    def for_cement(
        cls,
        cement: CementModel,
        time_after_mixing_s: float,
        room_temperature_k: float,
        body_temperature_k: float,
    ) -> CureClock:
        """The clock of ``cement`` mixed ``time_after_mixing_s`` before injection at room temperature."""
        return cls(
            age_at_start_s=rheology.equivalent_age_s(cement, time_after_mixing_s, room_temperature_k),
            room_rate=rheology.age_rate(cement, room_temperature_k),
            body_rate=rheology.age_rate(cement, body_temperature_k),
        )

    def syringe_age_s(self, t: float) -> float:
        """Equivalent age of the cement still in the syringe at time ``t`` after injection start."""
        return self.age_at_start_s + self.room_rate * float(t)

    def aged_in_body_s(self, age_s: float, duration_s: float) -> float:
        """Age of cement of age ``age_s`` after ``duration_s`` more inside the patient."""
        return age_s + self.body_rate * duration_s


class AgePool:
    """Volume-weighted mean equivalent age of cement held in one region of the patient."""

    def __init__(self, clock: CureClock, empty_age_s: float | None = None):
        self.clock = clock
        self.volume_m3 = 0.0
        self._offset_s = clock.age_at_start_s if empty_age_s is None else float(empty_age_s)

    def age_s(self, t: float) -> float:
        """Mean age at time ``t`` (before any cement arrived: the syringe's age)."""
        if self.volume_m3 <= 0.0:
            return self.clock.syringe_age_s(t)
        return self._offset_s + self.clock.body_rate * float(t)

    def mix_in(self, volume_m3: float, age_s: float, t: float) -> None:
        """Add ``volume_m3`` of cement of age ``age_s`` at time ``t``."""
        if volume_m3 <= 0.0:
            return
        w = volume_m3 / (self.volume_m3 + volume_m3)
        self._offset_s += w * (age_s - self.clock.body_rate * float(t) - self._offset_s)
        self.volume_m3 += volume_m3

    def remove(self, volume_m3: float) -> None:
        """Take ``volume_m3`` out (the mean age of what stays is unchanged)."""
        self.volume_m3 = max(self.volume_m3 - volume_m3, 0.0)

    def holds(self, volume_m3: float) -> None:
        """Set the volume to what the region is known to hold (e.g. from a saturation field)."""
        self.volume_m3 = float(volume_m3)
