"""Regenerate the golden results in tests/golden/ on purpose.

    python tests/golden/refresh.py            # all cases
    python tests/golden/refresh.py default    # one case

Run this only for a change that is meant to alter the physics, and say why in the commit message.
A change that should not alter physics is checked against the stored files by
``tests/test_golden.py`` (every number, relative 1e-7).

Each case is a folder holding the resolved scenario it was run from (``scenario.yaml``), the
summary metrics (``summary.json``, without wall time and provenance), and the emboli table and
time series as CSV. Cases: the seed case and its stop-at-detection counterfactual, the default
scenario, and three patients of the default virtual cohort (clinical-practice arm).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from tests.golden.cases import CASES, golden_run, golden_scenario  # noqa: E402


def refresh(names: list[str]) -> None:
    import yaml

    from sim.run.results import write_table_csv

    for name in names:
        scenario = golden_scenario(name)
        result = golden_run(scenario)
        folder = HERE / name
        folder.mkdir(exist_ok=True)
        with (folder / "scenario.yaml").open("w", encoding="utf-8") as fh:
            yaml.safe_dump(scenario.model_dump(mode="json"), fh, sort_keys=False)
        summary = {k: v for k, v in result.summary.items() if k != "wall_time_s"}
        with (folder / "summary.json").open("w", encoding="utf-8") as fh:
            json.dump(summary, fh, indent=1, allow_nan=True)
            fh.write("\n")
        write_table_csv(folder / "emboli.csv", result.emboli)
        write_table_csv(folder / "time_series.csv", result.time_series)
        print(f"{name}: {summary['leaked_volume_ml']:.6g} ml leaked, {summary['n_emboli']} emboli")


if __name__ == "__main__":
    chosen = sys.argv[1:] or list(CASES)
    unknown = sorted(set(chosen) - set(CASES))
    if unknown:
        sys.exit(f"unknown golden case(s) {unknown}; known: {', '.join(CASES)}")
    refresh(chosen)
