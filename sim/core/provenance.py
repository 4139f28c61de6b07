"""Provenance of a run: package version, git hash, seed, library versions, time and command."""

from __future__ import annotations

import datetime as _dt
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import sim


def git_hash(start: Path | None = None) -> str | None:
    """Commit hash of the checkout holding the ``sim`` package (or ``start``), '+dirty' if modified."""
    where = start or Path(sim.__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def library_versions() -> dict[str, str]:
    """Versions of the numerical libraries that can change results."""
    out = {"python": platform.python_version()}
    for name in ("numpy", "scipy", "numba", "pyamg", "networkx", "vtk", "pydantic"):
        try:
            module = __import__(name)
            out[name] = str(getattr(module, "__version__", getattr(module, "VTK_VERSION", "?")))
        except Exception:  # noqa: BLE001 - a missing optional library is recorded, not fatal
            out[name] = "missing"
    return out


def provenance(seed: int | None) -> dict[str, Any]:
    """Everything needed to say which code and inputs made a result."""
    return {
        "pce_sim_version": sim.__version__,
        "git_hash": git_hash(),
        "seed": seed,
        "created_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "platform": platform.platform(),
        "command": " ".join(sys.argv),
        "libraries": library_versions(),
    }
