"""``pce-sim view``: render a run folder's standard ParaView view to PNG, headless.

The picture is made by the state script shipped in the package (``sim/output/paraview/standard_view.py``,
see its docstring for the layout), run by ParaView's own Python (``pvbatch``, else ``pvpython``;
``$PCE_SIM_PARAVIEW`` overrides the executable). Without a display the renderer needs an
off-screen context: ``--force-offscreen-rendering`` works with EGL/OSMesa builds of ParaView;
Debian's X11 build aborts with "bad X server connection", so we then start a private ``Xvfb``
(``-displayfd`` hands back a free display number once the server accepts connections, which
avoids ``xvfb-run``'s start-up race) and finally fall back to ``xvfb-run -a``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from sim.core.errors import ConfigError, PceSimError
from sim.run.output_folder import check_output_file, written_text

STATE_SCRIPT = Path(__file__).resolve().parent / "paraview" / "standard_view.py"
DEFAULT_SIZE = (1800, 1000)
XVFB_START_TIMEOUT_S = 20.0


def paraview_executable() -> str:
    """Path of pvbatch (preferred) or pvpython; PceSimError naming what to install when absent."""
    override = os.environ.get("PCE_SIM_PARAVIEW")
    if override:
        found = shutil.which(override)
        if found is None:
            raise PceSimError(f"PCE_SIM_PARAVIEW={override!r} is not an executable on PATH")
        return found
    for name in ("pvbatch", "pvpython"):
        found = shutil.which(name)
        if found:
            return found
    raise PceSimError(
        "ParaView is not installed (neither pvbatch nor pvpython is on PATH): install it "
        "(Debian/Ubuntu: apt-get install paraview python3-paraview xvfb; or the ParaView binaries "
        "from paraview.org, with their bin/ on PATH), or open the run's vtk/pce_sim.pvd in ParaView yourself"
    )


def vtk_folder(run_dir: Path) -> Path:
    """The folder holding a run's ParaView files (``run_dir/vtk`` or ``run_dir`` itself)."""
    for d in (run_dir / "vtk", run_dir):
        if d.is_dir() and any(d.glob("*.pvd")):
            return d
    raise PceSimError(
        f"{run_dir}: no ParaView files (.pvd) in it or in its vtk/ folder; run with output.vtk: true"
    )


@contextmanager
def private_xvfb(width: int, height: int) -> Iterator[str | None]:
    """Start ``Xvfb`` on a free display for the duration of the block; yields ':N' (None if unavailable)."""
    exe = shutil.which("Xvfb")
    if exe is None:
        yield None
        return
    r, w = os.pipe()
    screen = f"{max(width, 640)}x{max(height, 480)}x24"
    proc = subprocess.Popen(
        [exe, "-displayfd", str(w), "-screen", "0", screen, "-nolisten", "tcp"],
        pass_fds=(w,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(w)
    try:
        display = _read_display(r, proc)
        yield display
    finally:
        os.close(r)
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _read_display(fd: int, proc: subprocess.Popen) -> str | None:
    import select

    buf = b""
    while not buf.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], XVFB_START_TIMEOUT_S)
        if not ready:
            return None
        chunk = os.read(fd, 64)
        if not chunk:
            return None
        buf += chunk
    text = buf.decode().strip()
    return f":{text}" if text.isdigit() and proc.poll() is None else None


_OFFSCREEN: dict[str, bool] = {}
_PROBE = (
    "from paraview.simple import Render, Show, Sphere\n"
    "Show(Sphere())\nRender()\nprint('pce-sim-offscreen-ok')\n"
)


def offscreen_works(exe: str) -> bool:
    """Whether ``exe --force-offscreen-rendering`` can render without a display (probed once, ~2 s).

    The probe renders a sphere; X11-only builds abort at the first render, so probing avoids
    running the whole state script only to see it crash.
    """
    if exe not in _OFFSCREEN:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="pce-sim-probe-") as tmp:
            script = Path(tmp) / "probe.py"
            script.write_text(_PROBE, encoding="utf-8")
            try:
                proc = subprocess.run(
                    [exe, "--force-offscreen-rendering", str(script)],
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
                _OFFSCREEN[exe] = proc.returncode == 0 and "pce-sim-offscreen-ok" in proc.stdout
            except subprocess.TimeoutExpired:
                _OFFSCREEN[exe] = False
    return _OFFSCREEN[exe]


def _run(cmd: Sequence[str], env: dict[str, str], timeout_s: float) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(list(cmd), env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise PceSimError(f"ParaView did not finish within {timeout_s:.0f} s ({' '.join(cmd[:2])})") from exc


def _ok(proc: subprocess.CompletedProcess, png: Path) -> bool:
    return proc.returncode == 0 and png.is_file() and png.stat().st_size > 0


def _tail(text: str, n: int = 12) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip() and " 0x" not in ln]
    return "\n".join(lines[-n:])


def render_view(
    run_dir: Path,
    png: Path | None = None,
    quiet: bool = False,
    size: tuple[int, int] = DEFAULT_SIZE,
    time_s: float | None = None,
    timeout_s: float = 600.0,
    overwrite: bool = False,
) -> Path:
    """Render the standard view of ``run_dir`` (a run folder or its ``vtk/``) to ``png``; returns the PNG.

    ``png`` defaults to ``run_dir/view.png`` (the run's own view, replaced by a new render); a ``png``
    named by the user that exists already is refused unless ``overwrite``. ParaView draws to a hidden
    file beside it, renamed into place when the render succeeded, so a failed render loses nothing.
    ``time_s`` picks the time shown (default: the last output time). Raises
    :class:`~sim.core.errors.PceSimError` when ParaView is missing, the folder holds no ParaView files, or
    rendering fails (with the end of ParaView's error output).
    """
    run_dir = Path(run_dir).resolve()
    if not run_dir.is_dir():
        what = "is a file, not a run folder" if run_dir.exists() else "no such run folder"
        raise PceSimError(f"{run_dir}: {what}")
    vtk_dir = vtk_folder(run_dir)
    if png is not None:
        png = png if isinstance(png, Path) else Path(png)  # a PathAsWritten keeps the text typed
        check_output_file(png, "--png", ".png")  # before ParaView renders anything
        if png.exists() and not overwrite:
            raise ConfigError(
                f"--png {written_text(png)}: exists (use --overwrite to replace it, or name another file)"
            )
    final = (png if png is not None else run_dir / "view.png").resolve()
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--png {final}: cannot create its folder ({exc.strerror})") from None
    png = final.with_name(f".{final.stem}.partial-{os.getpid()}.png")
    try:
        _render(run_dir, vtk_dir, png, quiet, size, time_s, timeout_s)
        os.replace(png, final)
    finally:
        png.unlink(missing_ok=True)
    return final


def _render(
    run_dir: Path,
    vtk_dir: Path,
    png: Path,
    quiet: bool,
    size: tuple[int, int],
    time_s: float | None,
    timeout_s: float,
) -> None:
    """ParaView draws the standard view of ``vtk_dir`` to ``png`` (module docstring)."""
    if png.exists():
        png.unlink()
    exe = paraview_executable()
    w, h = (int(v) for v in size)
    if w < 64 or h < 64:
        raise PceSimError(f"view size {w}x{h}: both sides must be >= 64 pixels")
    args = [str(STATE_SCRIPT), str(vtk_dir), "--png", str(png), "--size", f"{w}x{h}", "--title", run_dir.name]
    if time_s is not None:
        args += ["--time", repr(float(time_s))]
    env = dict(os.environ)
    attempts: list[tuple[str, subprocess.CompletedProcess]] = []

    if env.get("DISPLAY") or sys.platform in ("darwin", "win32"):
        attempts.append(("display", _run([exe, *args], env, timeout_s)))
    else:
        if offscreen_works(exe):
            attempts.append(("offscreen", _run([exe, "--force-offscreen-rendering", *args], env, timeout_s)))
        if not attempts or not _ok(attempts[-1][1], png):
            with private_xvfb(w, h) as display:
                if display is not None:
                    attempts.append(("Xvfb", _run([exe, *args], {**env, "DISPLAY": display}, timeout_s)))
        if (not attempts or not _ok(attempts[-1][1], png)) and shutil.which("xvfb-run"):
            screen = f"-screen 0 {max(w, 640)}x{max(h, 480)}x24"
            attempts.append(("xvfb-run", _run(["xvfb-run", "-a", "-s", screen, exe, *args], env, timeout_s)))

    if not attempts:
        raise PceSimError(
            f"ParaView cannot render here: no DISPLAY, {exe} has no off-screen support and Xvfb is "
            "not installed (apt-get install xvfb)"
        )
    last = attempts[-1][1]
    if not _ok(last, png):
        tried = ", ".join(name for name, _ in attempts)
        hint = "" if shutil.which("Xvfb") else " (no DISPLAY and no Xvfb: apt-get install xvfb)"
        raise PceSimError(
            f"ParaView could not render {vtk_dir} (tried: {tried}){hint}; last error output:\n"
            f"{_tail(last.stderr + last.stdout)}"
        )
    if not quiet:  # ParaView's notes (a file left out); the caller reports the PNG
        for line in last.stdout.splitlines():
            if line.startswith("pce-sim view:") and not line.startswith("pce-sim view: wrote "):
                print(line)
