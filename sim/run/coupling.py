"""The coupled run: the injection solver and the venous side advanced together, under the stop policy.

This is the one two-way exchange of the chain (docs/architecture.md). Each injection step the
solver asks the venous side (:class:`~sim.run.venous_system.VenousSystem`, an
:class:`~sim.physics.injection.ExitCoupling`) for the venous pressure and the series resistance at
every exit, solves, and hands back the cement and marrow that left through each exit. Before each
step the operator's :class:`~sim.physics.injection_control.StopPolicy` is asked whether the leak
the venous side has seen means stopping now. After the injection the venous side goes on without
pushing for ``follow_up_s``, one fluoroscopy frame at a time (shedding stops once the cement is
strong enough or has set). The recorder gets the state after every step and frame.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sim.physics.injection import InjectionResult, InjectionSolver, drive_injection
from sim.physics.injection_control import StopPolicy
from sim.run.recorder import RunRecorder
from sim.run.venous_system import VenousSystem


@dataclass(frozen=True)
class CoupledOutcome:
    """The injection's result and when the stop policy stopped it (None if it did not)."""

    injection: InjectionResult
    stop_time_s: float | None


@dataclass(frozen=True)
class Branch:
    """Another stop policy on the same run: ``on_stop(t)`` is called at the poll where it fires.

    Everything before that poll is the same in a run under this policy (the policy is only asked,
    it changes nothing until it fires), so the callee can copy the state and finish that run from
    there with :func:`stop_now` (:func:`sim.run.pipeline.run_with_branches`).
    """

    policy: StopPolicy
    on_stop: Callable[[float], None]


def run_coupled(
    solver: InjectionSolver,
    venous: VenousSystem,
    policy: StopPolicy,
    recorder: RunRecorder,
    follow_up_s: float,
    progress: Callable[[float], None] | None = None,
    branches: Sequence[Branch] = (),
) -> CoupledOutcome:
    """Drive ``solver`` (whose exit coupling is ``venous``) under ``policy``, then the venous follow-up.

    Each of ``branches`` is polled before this run's own policy at every poll, until it fires once.
    """
    if solver.coupling is not venous:
        raise ValueError("run_coupled: the injection solver must be coupled to this venous system")
    stopped: list[float] = []
    pending = list(branches)

    def stop_requested(t: float) -> bool:
        for branch in list(pending):
            if branch.policy.should_stop(t, venous.detection_time_s):
                pending.remove(branch)
                branch.on_stop(float(t))
        if policy.should_stop(t, venous.detection_time_s):
            stopped.append(float(t))
            return True
        return False

    def on_step(s: InjectionSolver) -> None:
        t = s.state.t
        recorder.record_venous(t, venous)
        if recorder.bone_due(t):
            recorder.record_bone(t, s.cement_fraction_grid())

    recorder.record_venous(0.0, venous)
    injection = drive_injection(solver, stop_requested, on_step, progress)
    return follow_up(injection, venous, recorder, follow_up_s, stopped[0] if stopped else None)


def stop_now(
    solver: InjectionSolver, venous: VenousSystem, recorder: RunRecorder, follow_up_s: float, t: float
) -> CoupledOutcome:
    """End the injection at the poll at ``t`` as :func:`run_coupled` does when its policy fires there
    (:func:`~sim.physics.injection.drive_injection` stops with "stop_signal"), then follow up."""
    return follow_up(solver.result("stop_signal"), venous, recorder, follow_up_s, float(t))


def follow_up(
    injection: InjectionResult,
    venous: VenousSystem,
    recorder: RunRecorder,
    follow_up_s: float,
    stop_time_s: float | None,
) -> CoupledOutcome:
    """Record the final bone state, then advance the venous side alone for ``follow_up_s``."""
    recorder.record_bone(injection.end_time_s, injection.cement_fraction, final=True)
    t = float(injection.end_time_s)
    t_stop = t + float(follow_up_s)
    step = venous.detector.frame_interval_s
    while t < t_stop - 1e-12:
        t = min(t + step, t_stop)
        venous.relax(t)
        recorder.record_venous(t, venous)
    return CoupledOutcome(injection, stop_time_s)
