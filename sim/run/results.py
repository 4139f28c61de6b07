"""RunResult: what one simulated vertebroplasty produced, and how it is written to a run folder.

A run folder holds ``summary.json`` (scalar metrics in report units, the resolved config, the same
config in SI, and provenance: version, git hash, seed), ``config.resolved.yaml`` (re-runnable),
``time_series.csv``, ``emboli.csv``, ``fragments.csv``, ``fields.npz`` and, when asked, VTK files
for ParaView and fluoroscopy PNGs. Folders are claimed (one writer at a time), written to a hidden
temporary sibling and renamed into place, so a killed run never leaves a half-written folder that
looks finished, and an existing folder is never overwritten unless asked (see
:mod:`sim.run.output_folder`).
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from sim.core.config import Scenario
from sim.core.errors import ConfigError
from sim.run.output_folder import OutputClaim, check_replaceable, make_partial_folder, remove_tree

if TYPE_CHECKING:  # the stage types, without importing the physics (numba) into light tools
    from sim.core.grid import BoneGrid, Needle
    from sim.physics.fragment_transport import TransportResult
    from sim.physics.injection import InjectionResult
    from sim.physics.pulmonary_tree import PulmonaryTree
    from sim.run.recorder import RunRecorder
    from sim.run.venous_system import VenousSystem


@dataclass(frozen=True)
class RunArtifacts:
    """The stage objects of a run, for ParaView files and images (not serialised)."""

    bone: BoneGrid
    needle: Needle
    injection: InjectionResult
    venous: VenousSystem
    recording: RunRecorder
    tree: PulmonaryTree
    transport: TransportResult


@dataclass
class RunResult:
    """Summary metrics, time series, emboli table and in-memory artefacts of one run."""

    scenario: Scenario
    summary: dict[str, Any]
    time_series: dict[str, np.ndarray] = field(default_factory=dict)
    emboli: dict[str, np.ndarray] = field(default_factory=dict)
    fragments: dict[str, np.ndarray] = field(default_factory=dict)
    fields: dict[str, np.ndarray] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    artifacts: RunArtifacts | None = None  # stage objects for VTK/PNG; not serialised

    def write(
        self,
        out_dir: str | Path,
        overwrite: bool = False,
        extra_writers: list[Callable[[Path], None]] | None = None,
    ) -> Path:
        """Write the run folder atomically; refuse to replace an existing non-empty folder.

        The folder is claimed first (:class:`~sim.run.output_folder.OutputClaim`; re-entrant, so a
        caller may hold the claim since before the simulation), written to a hidden
        ``.<name>.partial-<pid>-*`` sibling and renamed into place.
        """
        out = Path(out_dir)
        with OutputClaim(out):
            check_replaceable(out, "summary.json", overwrite)
            tmp = make_partial_folder(out)
            try:
                self._write_files(tmp)
                for writer in extra_writers or []:
                    writer(tmp)
                replace_dir(tmp, out)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        return out

    def summary_document(self) -> dict[str, Any]:
        return {
            "summary": _jsonable(self.summary),
            "config": self.scenario.model_dump(mode="json"),
            "config_si": self.scenario.si(),
            # the writer's version marks the file as pce-sim's (what --overwrite may replace), any runner
            "provenance": {"pce_sim_version": _version(), **self.provenance},
        }

    def _write_files(self, d: Path) -> None:
        with (d / "summary.json").open("w", encoding="utf-8") as fh:
            json.dump(self.summary_document(), fh, indent=2, sort_keys=False)
            fh.write("\n")
        with (d / "config.resolved.yaml").open("w", encoding="utf-8") as fh:
            fh.write(f"# resolved scenario; pce-sim {self.provenance.get('pce_sim_version')}")
            fh.write(f" git {self.provenance.get('git_hash')} seed {self.provenance.get('seed')}\n")
            yaml.safe_dump(self.scenario.model_dump(mode="json"), fh, sort_keys=False)
        if self.time_series:
            write_table_csv(d / "time_series.csv", self.time_series)
        write_table_csv(d / "emboli.csv", self.emboli)
        write_table_csv(d / "fragments.csv", self.fragments)
        if self.fields and self.scenario.output.fields:
            np.savez_compressed(d / "fields.npz", **self.fields)
        if self.scenario.output.parquet and self.emboli:
            write_table_parquet(d / "emboli.parquet", self.emboli)


def _version() -> str:
    import sim

    return sim.__version__


def replace_dir(src: Path, dst: Path) -> None:
    """Move a finished temporary folder into place (replacing an old one only after success)."""
    if dst.exists() or dst.is_symlink():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        if old.exists() or old.is_symlink():
            _discard(old)
        os.replace(dst, old)
        os.replace(src, dst)
        try:
            _discard(old)
        except OSError:
            shutil.rmtree(old, ignore_errors=True)  # whatever is left, the next run into dst removes
    else:
        os.replace(src, dst)


def _discard(path: Path) -> None:
    """Remove a folder, or a link in its place (a library caller's link to a folder: the link goes, not its
    folder)."""
    if path.is_symlink():
        path.unlink()
    else:
        remove_tree(path)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_table_csv(path: Path, columns: dict[str, np.ndarray]) -> None:
    """Write equal-length columns as CSV (header only when the table is empty)."""
    names = list(columns)
    arrays = [np.asarray(columns[n]) for n in names]
    n = len(arrays[0]) if arrays else 0
    if any(len(a) != n for a in arrays):
        lengths = {k: len(a) for k, a in zip(names, arrays, strict=True)}
        raise ValueError(f"{path.name}: columns of unequal length {lengths}")
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(names)
        for row in zip(*[a.tolist() for a in arrays], strict=True):
            w.writerow([repr(v) if isinstance(v, float) else v for v in row])


def write_table_parquet(path: Path, columns: dict[str, np.ndarray]) -> None:
    """Write columns as Parquet (needs the ``parquet`` extra: pyarrow)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ConfigError("Parquet output needs pyarrow: pip install 'pce-sim[parquet]'") from exc
    table = pa.table({k: np.asarray(v) for k, v in columns.items()})
    pq.write_table(table, path)
