"""Digests of the input files a scenario names (a patient's CT and label map).

A scenario's content hash keys sweep ledgers and cohort stashes. A file named by its path alone
would let a study resumed after the scan was replaced under the same path (or resumed from another
working directory, where the same relative path names another file) reuse results made from the
old scan. :meth:`sim.core.config.Scenario.content_hash` therefore includes the SHA-256 of each
such file's bytes. The digest is cached per process by the file's identity (device, inode, size,
modification time), so a cohort hashes a scan once per process, not once per scenario; a file
rewritten in place to the same size within one tick of the file system's clock keeps its identity,
so a long-lived process (a Dask worker) would not see that rewrite.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sim.core.errors import ConfigError

_CHUNK = 1 << 20
_CACHE: dict[tuple[str, int, int, int, int], str] = {}


def file_sha256(path: str | Path, field: str) -> str:
    """SHA-256 (hex) of the file at ``path``; unreadable: a one-line :class:`ConfigError` naming ``field``."""
    try:
        resolved = os.path.realpath(path)
        st = os.stat(resolved)
        key = (resolved, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if key not in _CACHE:
            digest = hashlib.sha256()
            with open(resolved, "rb") as fh:
                while chunk := fh.read(_CHUNK):
                    digest.update(chunk)
            _CACHE[key] = digest.hexdigest()
        return _CACHE[key]
    except OSError as exc:
        raise ConfigError(f"{field} = '{path}': cannot read the file ({exc.strerror or exc})") from None


ANATOMY_FILE_FIELDS = ("ct_path", "labels_path")  # the fields of a CT anatomy that name files


def anatomy_file_digests(anatomy: Mapping[str, Any] | str | None) -> dict[str, str]:
    """{dotted field: SHA-256} of the files a ``patient.anatomy`` config names (none if parametric)."""
    if not isinstance(anatomy, Mapping):
        return {}
    return {
        f"patient.anatomy.{name}": file_sha256(anatomy[name], f"patient.anatomy.{name}")
        for name in ANATOMY_FILE_FIELDS
        if name in anatomy
    }
