"""Branching a run at a stop: copying the whole run state, and what a branch may differ in.

The policy arms of a cohort (stop at detection, 5 / 15 / 30 s later, ...) are the never-stop run
up to the instant each arm stops: the stop policy is only polled until it fires. So an arm can be
finished from a copy of the never-stop run's state taken at that poll instead of being simulated
again from t = 0 (:func:`sim.run.pipeline.run_with_branches`).

The copy is a deep copy of every stage object with one exception: sparse LU factorisations
(scipy's ``SuperLU``, held by the venous solve's cache and the AMG coarse level) cannot be copied
and need not be. A factorisation is only read after it is made (``solve``); the original and the
copy share it, and every number the copy computes is the number the uncopied run would compute.
"""

from __future__ import annotations

import copy
from typing import TypeVar

import scipy.sparse as sp
from scipy.sparse.linalg import splu

from sim.core.config import STOP_AFTER_LEAK_PATH, Scenario

T = TypeVar("T")

STOP_FIELD = tuple(STOP_AFTER_LEAK_PATH.split("."))  # the one field a branch may change

_SUPERLU = type(splu(sp.identity(1, format="csc")))


def copy_run_state(state: T) -> T:
    """Deep copy of ``state`` in which sparse LU factorisations are shared, not copied."""
    dispatch = copy._deepcopy_dispatch  # type: ignore[attr-defined]
    had = _SUPERLU in dispatch
    previous = dispatch.get(_SUPERLU)
    dispatch[_SUPERLU] = lambda x, _memo: x  # read-only after factorisation: share it
    try:
        return copy.deepcopy(state)
    finally:
        if had:
            dispatch[_SUPERLU] = previous
        else:
            del dispatch[_SUPERLU]


def differs_only_in_stop(run: Scenario, branch: Scenario) -> None:
    """Refuse a branch whose scenario differs from the run's in anything but the stop delay."""
    a, b = run.model_dump(mode="json"), branch.model_dump(mode="json")
    for doc in (a, b):
        section = doc.get(STOP_FIELD[0], {})
        section.pop(STOP_FIELD[1], None)
        doc.pop("name", None)
    if a != b:
        keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        raise ValueError(
            f"branch '{branch.name}' differs from run '{run.name}' in {', '.join(keys)}: a branch may "
            "only change injection.stop_after_leak_s"
        )
