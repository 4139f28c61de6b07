"""The operator's side of the injection: the protocol (rate or pressure, volume) and the stop policy.

:class:`InjectionControl` is what the syringe does; :class:`StopPolicy` is when the operator stops
after a venous leak is seen on fluoroscopy. The venous side only reports the detection time
(:class:`sim.physics.fluoroscopy.LeakDetector`); the policy turns it into a stop time, and the
coupled run (:mod:`sim.run.coupling`) and the cohort's run sharing (:mod:`sim.studies.cohort`)
both ask the same object.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sim.core.errors import ConfigError
from sim.core.parameters import InjectionParams, StopPolicyParams

MODES = ("rate", "pressure")


@dataclass(frozen=True)
class InjectionControl:
    """Injection protocol in SI units.

    ``mode="rate"`` injects at ``rate_m3_per_s`` and ends when the syringe pressure would exceed
    ``max_syringe_pressure_pa``; ``mode="pressure"`` lowers the rate so the syringe pressure stays
    at that limit (see :mod:`sim.physics.injection`). Injection ends at ``target_volume_m3`` or
    after ``max_duration_s`` (None: no limit).
    """

    rate_m3_per_s: float = 5.0e-8
    target_volume_m3: float = 4.0e-6
    mode: str = "rate"
    max_syringe_pressure_pa: float | None = 10.0e6
    max_duration_s: float | None = None

    @classmethod
    def from_params(cls, p: InjectionParams) -> InjectionControl:
        """The control of a run's ``injection`` parameters."""
        return cls(
            rate_m3_per_s=p.rate_m3_per_s,
            target_volume_m3=p.volume_m3,
            mode=p.mode,
            max_syringe_pressure_pa=p.max_syringe_pressure_pa,
            max_duration_s=p.max_duration_s,
        )

    def validate(self) -> None:
        """Raise ConfigError naming the first inconsistent field."""
        if self.mode not in MODES:
            raise ConfigError(f"InjectionControl.mode = {self.mode!r}: must be 'rate' or 'pressure'")
        if not (self.rate_m3_per_s > 0.0 and math.isfinite(self.rate_m3_per_s)):
            raise ConfigError(f"InjectionControl.rate_m3_per_s = {self.rate_m3_per_s}: must be > 0")
        if not (self.target_volume_m3 > 0.0 and math.isfinite(self.target_volume_m3)):
            raise ConfigError(f"InjectionControl.target_volume_m3 = {self.target_volume_m3}: must be > 0")
        if self.max_duration_s is not None and not self.max_duration_s > 0.0:
            raise ConfigError(f"InjectionControl.max_duration_s = {self.max_duration_s}: must be > 0 or None")
        if self.max_syringe_pressure_pa is not None and not self.max_syringe_pressure_pa > 0.0:
            raise ConfigError(
                "InjectionControl.max_syringe_pressure_pa = "
                f"{self.max_syringe_pressure_pa}: must be > 0 or None"
            )
        if self.mode == "pressure" and self.max_syringe_pressure_pa is None:
            raise ConfigError("InjectionControl.mode = 'pressure' needs max_syringe_pressure_pa")


@dataclass(frozen=True)
class StopPolicy:
    """Stop injecting ``stop_after_leak_s`` after the operator has reacted to a seen leak.

    stop time = detection + reaction_delay + stop_after_leak_s; never before a leak is seen, and
    never at all when ``stop_after_leak_s`` is None (inject the whole planned volume).
    """

    stop_after_leak_s: float | None
    reaction_delay_s: float = 0.0

    @classmethod
    def from_params(cls, p: StopPolicyParams) -> StopPolicy:
        return cls(p.stop_after_leak_s, p.reaction_delay_s)

    def stop_time_s(self, detection_time_s: float | None) -> float | None:
        """When injection stops, given when the leak was seen (None: it does not stop)."""
        if self.stop_after_leak_s is None or detection_time_s is None:
            return None
        return float(detection_time_s) + self.reaction_delay_s + float(self.stop_after_leak_s)

    def should_stop(self, t: float, detection_time_s: float | None) -> bool:
        """True once ``t`` has reached the stop time."""
        stop = self.stop_time_s(detection_time_s)
        return stop is not None and float(t) >= stop
