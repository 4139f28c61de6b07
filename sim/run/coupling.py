"""The coupled run: the injection solver and the venous side advanced together, under the stop policy.

This is the one two-way exchange of the chain (docs/architecture.md). Each injection step the
solver asks the venous side (:class:`~sim.run.venous_system.VenousSystem`, an
:class:`~sim.physics.injection.ExitCoupling`) for the venous pressure and the series resistance at
every exit, solves, and hands back the cement and marrow that left through each exit. Before each
step the operator's :class:`~sim.physics.injection_control.StopPolicy` is asked whether the leak
the venous side has seen means stopping now; once the leak is seen the stop time is known, and the
step that would cross it ends on it, so an injection stops when its policy says, not up to a step
(a second on a 1 mm grid) later. Until the leak is seen, steps end on fluoroscopy frames once it
could be seen (:meth:`~sim.run.venous_system.VenousSystem.step_end`). After the injection the
venous side goes on without pushing for ``follow_up_s``, one fluoroscopy frame at a time
(shedding stops once the cement is strong enough or has set). The recorder gets the state after
every step and frame.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sim.physics.injection import InjectionResult, InjectionSolver, StepPlan, drive_injection
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
    """Another stop policy on the same run.

    Everything before its stop is the same in a run under this policy (the policy is only asked,
    it changes nothing until it fires). ``on_stop(t)`` is called at the poll where it fires (the
    stop time is a step's end); ``on_cut(plan, t)`` when its stop time t falls inside the step of
    ``plan`` (before that step is taken): the callee copies the state and finishes that run from
    there, the second by taking the step cut at t (:func:`sim.run.pipeline.run_with_branches`).
    """

    policy: StopPolicy
    on_stop: Callable[[float], None]
    on_cut: Callable[[StepPlan, float], None]


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

    def step_until(t: float) -> float | None:
        """The stop time once the leak is seen: the step that reaches it ends on it."""
        stop = policy.stop_time_s(venous.detection_time_s)
        return stop if stop is not None and stop > t else None

    def on_plan(plan: StepPlan) -> None:
        for branch in list(pending):
            stop = branch.policy.stop_time_s(venous.detection_time_s)
            if stop is not None and plan.t < stop < plan.t_end:
                pending.remove(branch)
                branch.on_cut(plan, float(stop))

    recorder.record_venous(0.0, venous)
    injection = drive_injection(
        solver,
        stop_requested,
        lambda s: record_step(s, venous, recorder),
        progress,
        step_until,
        on_plan if pending else None,
    )
    return follow_up(injection, venous, recorder, follow_up_s, stopped[0] if stopped else None)


def record_step(solver: InjectionSolver, venous: VenousSystem, recorder: RunRecorder) -> None:
    """What the recorder keeps after every injection step: the veins, and the bone when due."""
    t = solver.state.t
    recorder.record_venous(t, venous)
    if recorder.bone_due(t):
        recorder.record_bone(t, solver.cement_fraction_grid())


def cut_and_stop(
    solver: InjectionSolver,
    venous: VenousSystem,
    recorder: RunRecorder,
    follow_up_s: float,
    plan: StepPlan,
    t: float,
) -> CoupledOutcome:
    """Take the rest of the step of ``plan`` cut at the stop time ``t`` inside it and end the injection
    there, as :func:`run_coupled` does when its own policy stops at ``t``: the pieces end on ``t``,
    each is recorded, and the poll at ``t`` fires."""
    while solver.state.t < t:
        solver.take_step(plan, until=t)
        record_step(solver, venous, recorder)
    return stop_now(solver, venous, recorder, follow_up_s, t)


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
