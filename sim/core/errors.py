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
