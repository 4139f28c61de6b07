"""Locate and load the data files of ``geometries/`` (installed as ``sim.geometries``)."""

from __future__ import annotations

import copy
import functools
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from sim.core.errors import GeometryError


def geometry_path(relative: str) -> Path:
    """Path of a file under ``geometries/`` (works from a checkout and from an installed wheel).

    A source checkout's own ``geometries/`` (beside its ``sim/``) wins, so running a checkout never
    reads the data of another installed copy; an installed wheel has it as ``sim.geometries``.
    """
    beside = Path(__file__).resolve().parents[2] / "geometries"
    if beside.is_dir() and (beside.parent / "sim").is_dir():
        base = beside
    else:
        try:
            base = Path(str(resources.files("sim.geometries")))
        except ModuleNotFoundError:
            base = beside
    path = base / relative
    if not path.exists():
        raise GeometryError(f"geometry data file '{relative}' not found (looked in {path.parent})")
    return path


# libyaml's parser when PyYAML has it (same SafeConstructor, so the same values; about 10x faster,
# which matters because a run and the preflight read these files a dozen times).
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_geometry_yaml(relative: str) -> Any:
    """Parse a YAML file under ``geometries/`` (a private copy: callers may change it)."""
    path = geometry_path(relative)
    stat = path.stat()
    return copy.deepcopy(_parse(str(path), stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=64)
def _parse(path: str, _mtime_ns: int, _size: int) -> Any:
    """Parsed file, cached per process and per version of the file (mtime and size in the key)."""
    with open(path, encoding="utf-8") as fh:
        return yaml.load(fh, Loader=_LOADER)  # noqa: S506 - a safe loader (CSafeLoader / SafeLoader)
