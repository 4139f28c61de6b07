"""Error hierarchy. User-facing errors become one line and exit code 2 in the CLI."""

from __future__ import annotations


class PceSimError(Exception):
    """Base class of every error pce-sim raises on purpose."""


class ConfigError(PceSimError):
    """A scenario, sweep or cohort file is missing, unreadable or invalid."""


class GeometryError(PceSimError):
    """Anatomy data are missing or inconsistent (e.g. a disconnected venous graph)."""


class SolverError(PceSimError):
    """A numerical solve failed (diverged, singular system, mass balance violated)."""


def interruption_in(exc: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C (or SIGTERM) behind ``exc``, if any.

    A signal handler's KeyboardInterrupt raised while a numba-compiled function runs comes back as a
    ``SystemError`` ("returned a result with an exception set") whose cause is the interrupt; it must
    end the command as an interruption, not as a failure of the run.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
