"""A writable numba cache for every user, chosen before numba is first imported.

pce-sim's kernels are compiled with ``cache=True``. numba stores the cache next to the source
(``sim/physics/__pycache__``) or in the user-wide ``$XDG_CACHE_HOME/numba`` (``~/.cache/numba``);
when neither is writable (an installed package and a home the user cannot write) compiling a
cached kernel fails with ``RuntimeError: cannot cache function ...: no locator available``.
:func:`configure_numba_cache` then points ``NUMBA_CACHE_DIR`` at ``$XDG_CACHE_HOME/pce-sim/numba``
(``~/.cache/pce-sim/numba``) if that is writable, else at ``<tmp>/pce-sim-numba-<uid>``: a private
folder (mode 0700, owned by the user; one that another user made or can write is never used, since
numba loads pickles from it), else at a fresh private temporary folder. A ``NUMBA_CACHE_DIR`` the
user set is left alone. This module must not import numba.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import MutableMapping
from pathlib import Path

PHYSICS_DIR = Path(__file__).resolve().parents[1] / "physics"


def writable_dir(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` exists as a folder (or can be made) and a file can be created in it."""
    try:
        os.makedirs(path, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except (OSError, ValueError):
        return False
    return True


def private_dir(path: str | os.PathLike[str], uid: int | None) -> bool:
    """Make ``path`` (mode 0700) if needed; True when it is a real folder only this user can write."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return False
    try:
        st = os.lstat(path)
    except OSError:
        return False
    if not stat.S_ISDIR(st.st_mode) or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return False
    if uid is not None and st.st_uid != uid:
        return False
    return writable_dir(path)


def _user_cache_home(environ: MutableMapping[str, str]) -> str | None:
    xdg = environ.get("XDG_CACHE_HOME")
    if xdg:
        return xdg
    home = environ.get("HOME")
    if not home:
        try:
            import pwd

            home = pwd.getpwuid(os.getuid()).pw_dir
        except (ImportError, KeyError, AttributeError):
            return None
    return os.path.join(home, ".cache")


def choose_numba_cache_dir(
    environ: MutableMapping[str, str] | None = None,
    physics_dir: str | os.PathLike[str] = PHYSICS_DIR,
    uid: int | None = None,
) -> str | None:
    """The folder ``NUMBA_CACHE_DIR`` should name, or None when numba's own locators work."""
    env = os.environ if environ is None else environ
    if env.get("NUMBA_CACHE_DIR"):
        return None
    if writable_dir(os.path.join(physics_dir, "__pycache__")):  # numba's in-tree locator
        return None
    cache_home = _user_cache_home(env)
    if cache_home is not None:
        if writable_dir(os.path.join(cache_home, "numba")):  # numba's user-wide locator
            return None
        ours = os.path.join(cache_home, "pce-sim", "numba")
        if writable_dir(ours):
            return ours
    if uid is None:
        uid = os.getuid() if hasattr(os, "getuid") else None
    shared = os.path.join(tempfile.gettempdir(), f"pce-sim-numba-{uid if uid is not None else 'user'}")
    if private_dir(shared, uid):
        return shared
    return tempfile.mkdtemp(prefix="pce-sim-numba-")


def configure_numba_cache(environ: MutableMapping[str, str] | None = None) -> str | None:
    """Set ``NUMBA_CACHE_DIR`` when numba could not cache otherwise; returns the folder it set."""
    env = os.environ if environ is None else environ
    try:
        chosen = choose_numba_cache_dir(env)
    except Exception:  # noqa: BLE001 - never let cache set-up stop an import; numba reports later
        return None
    if chosen is not None:
        env["NUMBA_CACHE_DIR"] = chosen
    return chosen
