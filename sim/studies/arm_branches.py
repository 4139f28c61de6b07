"""Policy arms branched off the never-stop runs of a cohort (the sweep runners of its two phases).

A cohort with run sharing first runs every (patient, level) without stopping on a leak, then the
policy arms whose run may differ. An arm differs from the never-stop run only in
``injection.stop_after_leak_s``, so its run is the never-stop run until its stop fires
(:func:`sim.run.pipeline.run_with_branches`). :class:`NeverStopWithArms` runs a never-stop scenario
with all of its arms as branches and leaves each arm that fired, finished from a copy of the state,
in a stash folder; :class:`StashedArm`, the runner of the arms phase, takes an arm's result from the
stash and runs the arm from t = 0 only when it is not there or other code made it (a probe run by
an older pce-sim, a stash removed; each stashed result carries the code digest of the process that
made it, :func:`sim.core.provenance.code_digest`). Either way the arm's numbers are the same bit for
bit; only ``wall_time_s`` says which way it went (the branch's own work after the copy).

The runners travel to the workers inside every task, so they hold only the stash folder; the map
from a never-stop run to its arms (content hashes and stop delays) is a JSON file in that folder.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

from sim.core.config import Scenario, scenario_from_dict
from sim.core.provenance import code_digest
from sim.run.branching import STOP_FIELD
from sim.run.results import RunResult

ARMS_FILE = "arms.json"
STASH_DIR = ".arm_branches"


def write_arm_map(folder: Path, arms: dict[str, list[tuple[float, str]]]) -> None:
    """Write {never-stop hash: [(stop delay s, arm hash), ...]} atomically into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    _atomic_write(folder / ARMS_FILE, json.dumps(arms, sort_keys=True).encode())


@lru_cache(maxsize=4)
def _arm_map(path: str, mtime_ns: int) -> dict[str, list[list]]:
    return json.loads(Path(path).read_text())


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _arm_scenario(scenario: Scenario, delay: float) -> Scenario:
    config = scenario.model_dump(mode="json")
    section, field = STOP_FIELD
    config[section][field] = delay
    return scenario_from_dict(config, source=f"arm of run {scenario.content_hash()[:12]}")


class NeverStopWithArms:
    """Sweep runner: the never-stop run, with its arms finished as branches into the stash."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = str(folder)

    def __call__(self, scenario: Scenario) -> RunResult:
        from sim.run.pipeline import run_with_branches

        path = Path(self.folder) / ARMS_FILE
        entries = _arm_map(str(path), path.stat().st_mtime_ns).get(scenario.content_hash(), [])
        branches: dict[str, Scenario] = {}
        for delay, arm_hash in entries:
            arm = _arm_scenario(scenario, float(delay))
            if arm.content_hash() == arm_hash:  # else the arms phase runs it from t = 0
                branches[arm_hash] = arm
        result, fired = run_with_branches(scenario, branches)
        for arm_hash, arm_result in fired.items():
            # what the run folder gets: no stage objects (no VTK in cohorts), the fields only if written
            fields = arm_result.fields if arm_result.scenario.output.fields else {}
            stash = replace(arm_result, artifacts=None, fields=fields)
            record = {"code_digest": code_digest(), "result": stash}
            _atomic_write(Path(self.folder) / f"{arm_hash}.pkl", pickle.dumps(record))
        return result


class StashedArm:
    """Sweep runner of the arms phase: the stashed branch if there is one, else the arm's own run."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = str(folder)

    def __call__(self, scenario: Scenario) -> RunResult:
        from sim.run.pipeline import run_scenario

        digest = scenario.content_hash()
        path = Path(self.folder) / f"{digest}.pkl"
        if path.is_file():
            with path.open("rb") as fh:
                record = pickle.load(fh)  # written by NeverStopWithArms in this cohort folder
            result = record.get("result") if isinstance(record, dict) else None
            if (
                isinstance(result, RunResult)
                and record.get("code_digest") == code_digest()
                and result.scenario.content_hash() == digest
            ):
                return result
        return run_scenario(scenario)
