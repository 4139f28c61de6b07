"""Run folders: checked before the simulation, claimed atomically, never half-written.

:func:`check_output_folder` refuses, with one line, what could only fail after the simulation: an
empty name, ``.`` or a folder holding the current one, an existing file, a path through a file, a
parent that cannot be created or written, an existing non-empty folder without ``--overwrite``,
and (with ``--overwrite``) a folder holding files this user could not delete.

:class:`OutputClaim` makes one process the writer of a run folder: it creates the lock file
``.<name>.lock`` next to the folder, locks it (``flock``, exclusive, non-blocking) and writes its pid
into it, so of two runs into one ``--out`` exactly one gets it and the other stops at once, naming
the holder. The kernel releases the lock of a killed run, so its stale lock file is reclaimed; finding
one, the new writer also removes the hidden ``.<name>.partial-<pid>-*`` and ``.<name>.old-<pid>``
folders that killed runs of dead pids left (these are only made under a claim, so a killed writer
always leaves its lock file too).
The folder itself is written to ``.<name>.partial-<pid>-*`` and renamed into place
(:meth:`sim.run.results.RunResult.write`).
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
import stat
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

from sim.core.errors import ConfigError

MAX_NAME_BYTES = 200  # file systems allow 255; ".<name>.partial-<pid>-<random>" must fit too
SPECIAL_ROOTS = ("/proc", "/sys")  # kernel views: nothing can be written there


def make_partial_folder(out: Path) -> Path:
    """The hidden ``.<name>.partial-<pid>-*`` folder a writer fills before renaming it to ``out``.

    ``mkdtemp`` makes it private (mode 0700); it gets the mode any new folder would (0777 less the
    umask, 0755 usually), as sweep and cohort folders have, so a run folder is readable by whom the
    user's other folders are (a group sharing results on a cluster)."""
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-{os.getpid()}-", dir=out.parent))
    tmp.chmod(0o777 & ~_umask())
    return tmp


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (changing it to read it is
    process-wide, so another thread's file could be made in between)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def lock_path(out: Path) -> Path:
    """The lock file that claims run folder ``out``."""
    return out.parent / f".{out.name}.lock"


def writer_of(out: Path) -> int | None:
    """The pid of the pce-sim command holding ``out``'s claim now (0 when unknown), or None when none does."""
    try:
        fd = os.open(lock_path(out), os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return _read_pid(fd) or 0
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def check_report_folder(out: Path) -> None:
    """Refuse, before anything is drawn, a report folder that could only fail: an existing file or a dangling
    link in its place, or a path under /proc or /sys."""
    text = str(out)
    if out.is_symlink() and not out.exists():
        raise ConfigError(f"report folder {text}: is a link to {os.readlink(out)}, which does not exist")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"report folder {text}: exists and is not a folder; remove it or move it away")
    try:
        _check_location(out, text, "report folder")
    except (OSError, RuntimeError) as exc:
        raise ConfigError(f"report folder {text}: cannot resolve the path ({exc})") from None


def pid_alive(pid: int) -> bool:
    """True when a process with this pid exists (whoever owns it)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def _describe(exc: OSError) -> str:
    return {
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.EROFS: "read-only file system",
        errno.ENAMETOOLONG: "name too long",
        errno.ENOTDIR: "a part of the path is a file, not a folder",
        errno.ENOSPC: "no space left on the device",
    }.get(exc.errno or 0, exc.strerror or type(exc).__name__)


def _first_file_on_path(out: Path) -> Path | None:
    """The first existing non-folder among the parents of ``out`` (``afile`` for ``afile/sub``)."""
    for parent in reversed(out.parents):
        if parent.exists() and not parent.is_dir():
            return parent
    return None


def _undeletable(folder: Path) -> Path | None:
    """Something under ``folder`` this user could not delete (for ``--overwrite``), or None."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return None
    for root, dirs, _files in os.walk(folder):
        if not os.access(root, os.W_OK | os.X_OK):
            return Path(root)
        for d in dirs:
            p = Path(root) / d
            if p.is_symlink():
                continue
            if not os.access(p, os.R_OK | os.X_OK):
                return p
    return None


class PathAsWritten(type(Path())):  # type: ignore[misc]  # the platform's concrete Path class
    """A path that keeps the text the user wrote: ``Path("")`` and ``Path("./")`` are both ``.``, and a
    refusal must print what was typed (``--out ""``, ``--out ./``)."""

    written: str

    def __reduce__(self) -> tuple[Any, tuple[str]]:  # pickle and copy keep the text
        return (path_as_written, (getattr(self, "written", str(self)),))


def path_as_written(text: str | os.PathLike[str]) -> Path:
    """The CLI's parser for path options: a :class:`PathAsWritten` of ``text`` (an option's default
    arrives as a Path)."""
    path = PathAsWritten(text)
    path.written = os.fspath(text)
    return path


def written_text(path: Path) -> str:
    """The path as the user wrote it (a :class:`PathAsWritten`), else ``str(path)``."""
    return getattr(path, "written", str(path))


def check_output_folder(
    out: Path,
    overwrite: bool,
    flag: str = "--out",
    resume: tuple[str, ...] = (),
    study: str = "study to resume",
    allow_current: bool = False,
    replaces: tuple[str, ...] = (),
) -> Path:
    """Refuse an output folder a run could not write (one line); returns it (resolved with
    ``allow_current``).

    ``replaces``: the files that mark a folder this command writes (a run's ``summary.json``); with
    ``overwrite`` an existing non-empty folder must hold one of them, as pce-sim wrote it
    (:func:`written_by_pce_sim`), so ``--overwrite`` never deletes a folder the command did not make (a
    running sweep's, a thesis beside a ``summary.json`` of its own).

    ``resume``: the files that mark a ``study`` folder (a sweep's, a cohort's) an existing non-empty
    folder must hold to be resumed; a non-empty folder holding none of them (a run folder, anything
    else) is refused, so a study never writes its tables over files it did not make.
    ``allow_current``: the current folder (or one holding it) may be named, for results updated in place.
    """
    text = written_text(out)
    if allow_current:  # a folder that is updated in place (benchmark results): `.` names it too
        out = out.resolve()
    if (str(out) == "." and not allow_current) or out.name in ("", ".", ".."):
        what = (
            "a parent folder, '..'"
            if out.name == ".."
            else "the root"
            if out.is_absolute() and out == Path(out.anchor)
            else "the current folder"
        )
        raise ConfigError(f"{flag} {text!r}: name a new folder for the results (not {what})")
    if "\0" in text:
        raise ConfigError(f"{flag} {text!r}: a path cannot contain a NUL character")
    if len(out.name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        raise ConfigError(
            f"{flag} {text}: folder name too long (allowed: at most {MAX_NAME_BYTES} bytes, with room for "
            "the hidden temporary and lock names beside it)"
        )
    try:
        _check_existing(out, text, flag, overwrite, resume, study, allow_current, replaces)
    except OSError as exc:
        raise ConfigError(f"{flag} {text}: {_describe(exc)}") from None
    except RuntimeError as exc:  # a symlink loop while resolving
        raise ConfigError(f"{flag} {text}: cannot resolve the path ({exc})") from None
    # a command that replaces its folder (``replaces``: run, report-card) writes, claims and replaces the
    # folder a link points to, not the link (it replaced the user's link with a folder of its own); a study
    # writes through the link and claims beside it, so its target's parent need not be writable
    return out.resolve() if replaces and out.is_symlink() else out


def _check_existing(
    out: Path,
    text: str,
    flag: str,
    overwrite: bool,
    resume: tuple[str, ...],
    study: str,
    allow_current: bool,
    replaces: tuple[str, ...],
) -> None:
    resolved = out.resolve()
    cwd = Path.cwd().resolve()
    if not allow_current and (resolved == cwd or resolved in cwd.parents):
        raise ConfigError(
            f"{flag} {text}: is the current folder or holds it; name a new folder for the results"
        )
    _check_location(out, text, flag)
    if resolved.name == "runs" and (resolved.parent / "ledger.sqlite").exists():
        raise ConfigError(
            f"{flag} {text}: is the runs folder of the sweep or cohort in {resolved.parent}, whose ledger "
            "owns it; name a folder outside it"
        )
    owner = resolved.parent.parent
    if replaces and resolved.parent.name == "runs" and (owner / "ledger.sqlite").exists():
        raise ConfigError(
            f"{flag} {text}: is in the runs of the sweep or cohort in {owner}, whose ledger owns them "
            "(resume the study to redo a run); name a folder outside it"
        )
    if out.exists() or out.is_symlink():
        if out.is_symlink() and not out.exists():
            raise ConfigError(f"{flag} {text}: is a link to {os.readlink(out)}, which does not exist")
        if not out.is_dir():
            raise ConfigError(f"{flag} {text}: exists and is not a folder")
        try:
            non_empty = any(out.iterdir())
        except OSError as exc:
            raise ConfigError(f"{flag} {text}: cannot list the folder: {_describe(exc)}") from None
        if non_empty and resume and not any((out / name).exists() for name in resume):
            raise ConfigError(
                f"{flag} {text}: folder exists, is not empty and holds no {study} (none of "
                f"{', '.join(resume)}); name a new folder"
            )
        if non_empty and not overwrite and not resume:
            raise ConfigError(
                f"{flag} {text}: output folder exists and is not empty (use --overwrite to replace it)"
            )
        if non_empty and not resume and replaces and not any(written_by_pce_sim(out / n) for n in replaces):
            raise ConfigError(
                f"{flag} {text}: --overwrite replaces only a folder this command wrote (one holding "
                f"{' or '.join(replaces)} as pce-sim writes it); this one is not, so name another folder"
            )
        if non_empty and not resume:
            stuck = _undeletable(out)
            if stuck is not None:
                raise ConfigError(
                    f"{flag} {text}: --overwrite cannot remove {stuck} (permission denied); "
                    "remove the folder or choose another"
                )
    _check_writable_ancestor(out, text, flag, "create the folder")


def check_replaceable(out: Path, marker: str, overwrite: bool) -> None:
    """For a library writer: refuse an existing non-empty ``out`` unless ``overwrite``, and with it any
    folder whose ``marker`` file pce-sim did not write (:func:`written_by_pce_sim`)."""
    if not (out.exists() and (not out.is_dir() or any(out.iterdir()))):
        return
    if not overwrite:
        raise ConfigError(f"{out}: output folder exists and is not empty (use --overwrite to replace it)")
    if not out.is_dir() or not written_by_pce_sim(out / marker):
        raise ConfigError(
            f"{out}: overwrite replaces only a folder pce-sim wrote (one holding its {marker}); this one is "
            "not, so name another folder"
        )


def written_by_pce_sim(marker: Path) -> bool:
    """True when ``marker`` is a JSON document pce-sim wrote: a run's ``summary.json`` or a report card's
    ``report_card.json`` says so (``provenance.pce_sim_version``; ``suite``). A file of
    that name holding anything else (``{}``, another tool's summary) does not make a folder replaceable."""
    import json

    try:
        if not marker.is_file() or marker.stat().st_size > 64 * 1024 * 1024:
            return False
        doc = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(doc, dict):
        return False
    provenance = doc.get("provenance")
    return (isinstance(provenance, dict) and "pce_sim_version" in provenance) or doc.get(
        "suite"
    ) == "pce-sim report-card"


def _check_location(path: Path, text: str, flag: str) -> None:
    """Refuse a path under /proc or /sys, or one that runs through a file."""
    resolved = str(path.resolve())
    for root in SPECIAL_ROOTS:
        if resolved == root or resolved.startswith(root + "/"):
            raise ConfigError(
                f"{flag} {text}: is under {root}, a kernel folder where files cannot be written"
            )
    blocker = _first_file_on_path(path)
    if blocker is not None:
        raise ConfigError(f"{flag} {text}: {blocker} is a file, not a folder")


def _check_writable_ancestor(path: Path, text: str, flag: str, action: str) -> None:
    """Refuse a path whose nearest existing folder this user cannot write into."""
    existing = next((p for p in (path.parent, *path.parent.parents) if p.exists()), None)
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {text}: cannot {action} in {existing} (permission denied)")


def check_output_file(path: Path, flag: str, suffix: str) -> Path:
    """Refuse, in one line naming ``flag``, an output file that could only fail after the work: not
    ending in ``suffix``, an existing folder, under /proc or /sys, a path through a file, or a folder
    that cannot be created or written. Returns ``path`` unchanged."""
    text = written_text(path)
    if path.is_dir():
        raise ConfigError(f"{flag} {text!r}: is a folder; name a {suffix} file")
    if path.name.lower() == suffix:  # '.png' is a hidden file with no suffix, not an empty name
        raise ConfigError(f"{flag} {text!r}: name a file with a name before {suffix}, e.g. view{suffix}")
    if path.suffix.lower() != suffix:
        raise ConfigError(f"{flag} {text!r}: name a file ending in {suffix}")
    try:
        _check_location(path, text, flag)
        _check_writable_ancestor(path, text, flag, "write")
    except OSError as exc:
        raise ConfigError(f"{flag} {text}: {_describe(exc)}") from None
    except RuntimeError as exc:  # a symlink loop while resolving
        raise ConfigError(f"{flag} {text}: cannot resolve the path ({exc})") from None
    return path


def _owner_pid(name: str, prefix: str) -> int | None:
    match = re.match(re.escape(prefix) + r"(\d+)(?:-|$)", name)
    return int(match.group(1)) if match else None


def clean_leftovers(out: Path) -> list[Path]:
    """Remove ``.<name>.partial-<pid>-*`` and ``.<name>.old-<pid>`` folders of dead pids next to ``out``."""
    removed: list[Path] = []
    try:
        entries = list(out.parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        for prefix in (f".{out.name}.partial-", f".{out.name}.old-"):
            pid = _owner_pid(entry.name, prefix)
            if pid is None or pid_alive(pid):
                continue
            try:
                if entry.is_dir() and not entry.is_symlink():
                    remove_tree(entry)
                    removed.append(entry)
            except OSError:
                pass
    return removed


def remove_tree(path: Path) -> None:
    """``shutil.rmtree`` that makes read-only folders of ours writable first; raises if it cannot finish."""

    def retry(func, target, _exc):  # noqa: ANN001 - shutil's onexc signature
        parent = os.path.dirname(target)
        try:
            os.chmod(parent, os.stat(parent).st_mode | stat.S_IWUSR | stat.S_IXUSR)
        except OSError:
            pass
        func(target)

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=retry)
    else:
        shutil.rmtree(path, onerror=retry)


_HELD: dict[str, int] = {}  # lock files this process holds -> nesting count (claims are re-entrant)


class OutputClaim:
    """Exclusive claim on a run folder: ``flock`` on ``.<name>.lock``, which holds the owner's pid.

    The kernel drops the lock when its process dies, so a killed run never leaves a claim behind
    (its stale lock file is simply taken over); the inode is checked after locking, so a lock file
    removed by its releasing owner in between is never shared. Re-entrant within one process: the
    CLI claims before the simulation and :meth:`sim.run.results.RunResult.write` claims again.
    """

    def __init__(self, out: str | Path, flag: str = "--out"):
        self.out = Path(out)
        self.flag = flag
        self.lock = lock_path(self.out)
        self._key = str(self.lock.absolute())
        self._fd: int | None = None
        self._nested = False

    def acquire(self) -> OutputClaim:
        """Take the claim or raise ConfigError naming the process that holds it."""
        if self._key in _HELD:
            _HELD[self._key] += 1
            self._nested = True
            return self
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"{self.flag} {self.out}: cannot create {self.out.parent}: {_describe(exc)}"
            ) from None
        for _ in range(5):
            stale = False  # a lock file left behind: its writer died (only claims create partial folders)
            try:
                fd = os.open(self.lock, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                stale = True
                try:
                    fd = os.open(self.lock, os.O_RDWR)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    raise ConfigError(
                        f"{self.flag} {self.out}: cannot open {self.lock}: {_describe(exc)}"
                    ) from None
            except OSError as exc:
                raise ConfigError(
                    f"{self.flag} {self.out}: cannot write in {self.out.parent}: {_describe(exc)}"
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _read_pid(fd)
                os.close(fd)
                who = f" (pid {holder})" if holder is not None else ""
                raise ConfigError(
                    f"{self.flag} {self.out}: another pce-sim run{who} is writing this folder"
                ) from None
            try:
                same = os.stat(self.lock).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the previous owner removed the file between our open and our lock
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            self._fd = fd
            _HELD[self._key] = 1
            if stale:  # listing the parent only then keeps 20,000-run sweep folders fast
                clean_leftovers(self.out)
            return self
        raise ConfigError(
            f"{self.flag} {self.out}: could not claim the folder (lock file {self.lock} keeps changing)"
        )

    def release(self) -> None:
        """Give the claim up; the outermost holder removes the lock file, then unlocks it."""
        if self._nested:
            self._nested = False
            _HELD[self._key] -= 1
            return
        if self._fd is None:
            return
        _HELD.pop(self._key, None)
        try:
            self.lock.unlink()
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> OutputClaim:
        return self.acquire()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
