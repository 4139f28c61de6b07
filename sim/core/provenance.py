"""Provenance of a run: package version, git hash, code digest, seed, library versions, time and command.

The **code digest** names the code that makes a result: a SHA-256 over the package's Python sources,
the data files of ``geometries/`` it reads, and the versions of the numerical libraries. Unlike the
git hash it does not change for a commit that touches only documentation, it does change for an
edit not yet committed, and it exists for an installed wheel. Caches of results (a sweep's ledger,
a cohort's stash of branched arms) record it, so a result made by other code is never silently
taken for one made by this code.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import platform
import subprocess
import sys
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import sim


def git_hash(start: Path | None = None) -> str | None:
    """Commit hash of the checkout holding the ``sim`` package (or ``start``), '+dirty' if modified.

    Asked once per process and folder (two git calls; a cohort's thousand run folders each record it),
    like :func:`code_digest`: the state when the process first asked, which is the code it runs.
    """
    return _git_state(
        str(Path(start).resolve() if start is not None else Path(sim.__file__).resolve().parent.parent)
    )


@functools.lru_cache(maxsize=8)
def _git_state(where: str) -> str | None:
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


_RESULT_LIBRARIES = ("numpy", "scipy", "numba", "pyamg", "networkx")


DATA_SUFFIXES = (".yaml", ".graphml", ".csv")  # the data files the wheel ships (pyproject package-data)


def source_digest(package_root: Path, data_root: Path, versions: Mapping[str, str]) -> str:
    """SHA-256 (hex) of a package's ``*.py`` files, a data folder's data files and library versions.

    Each file enters by its path relative to its root and its bytes, in sorted order; ``versions`` in
    sorted key order. Package files under ``data_root`` (an installed wheel has the data folder inside
    the package, a checkout beside it) and anything under ``__pycache__`` are left out; data files are
    those named ``*.yaml``, ``*.graphml`` or ``*.csv`` (what the wheel ships besides documentation),
    so a checkout and a wheel of the same commit have the same digest and an editor's stray files in
    the data folder do not count.
    """
    data_root = data_root.resolve()
    package_root = package_root.resolve()
    digest = hashlib.sha256()

    def package_file(path: Path) -> bool:
        return path.suffix == ".py" and not path.is_relative_to(data_root)

    def data_file(path: Path) -> bool:
        return path.suffix in DATA_SUFFIXES

    for tag, root, keep in (("sim", package_root, package_file), ("data", data_root, data_file)):
        files = sorted(
            path
            for path in root.rglob("*")
            if path.is_file() and "__pycache__" not in path.relative_to(root).parts and keep(path)
        )
        for path in files:
            digest.update(f"{tag}/{path.relative_to(root).as_posix()}\0".encode())
            digest.update(path.read_bytes())
            digest.update(b"\0")
    for name in sorted(versions):
        digest.update(f"{name}={versions[name]}\0".encode())
    return digest.hexdigest()


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """The :func:`source_digest` of this ``sim`` package, its geometry data and its numerical libraries.

    The libraries are those whose arithmetic can change a result's bits (their installed versions,
    read without importing them). Computed once per process (a few milliseconds).
    """
    from sim.core.geometry_data import geometry_path

    versions = {}
    for name in _RESULT_LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "missing"
    return source_digest(Path(sim.__file__).resolve().parent, geometry_path("."), versions)


@functools.lru_cache(maxsize=1)
def code_label() -> str:
    """Short human name of this code: version, git commit and the digest's first 12 hex digits.

    Computed once per process (the git state at that moment; the digest is what identifies the code).
    """
    commit = git_hash()
    where = f"git {commit[:12]}{'+dirty' if commit.endswith('+dirty') else ''}" if commit else "no git"
    return f"pce-sim {sim.__version__} ({where}, code {code_digest()[:12]})"


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; else what platform reports), read once per process
    (every run's provenance asks for it)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


SIMD_FEATURES = ("AVX512F", "AVX2", "FMA3", "NEON")  # those that change numpy's and OpenBLAS's rounding paths


def cpu_info() -> dict[str, Any]:
    """The CPU and the SIMD extensions numpy found on it: results are the same bits in any process of one
    machine, not across CPUs whose SIMD paths round differently (README, Performance)."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as found
    except ImportError:  # numpy's private table moved: the model name still says which machine
        found = {}
    return {"model": cpu_model(), "simd": [f for f in SIMD_FEATURES if found.get(f)]}


def provenance(seed: int | None) -> dict[str, Any]:
    """Everything needed to say which code and inputs made a result."""
    return {
        "pce_sim_version": sim.__version__,
        "git_hash": git_hash(),
        "code_digest": code_digest(),
        "seed": seed,
        "created_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu": cpu_info(),
        "command": " ".join(sys.argv),
        "libraries": library_versions(),
    }
