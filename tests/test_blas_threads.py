"""The same config gives bit-identical results whatever BLAS thread count the process started with."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from sim.core.blas_threads import one_blas_thread

ROOT = Path(__file__).resolve().parents[1]

# The default 5 ml scenario on a 1 mm grid (about 30,000 cells: OpenBLAS splits dot products above 10,000
# entries over its threads). Before sim.core.blas_threads, 1 and 2 threads differed by about 1e-10.
RUN = """
import json, sys
{first}
from sim.core.config import load_scenario, scenario_from_dict
from sim.run.pipeline import run_scenario
d = load_scenario("configs/default.yaml").model_dump(mode="json")
d["grid"]["spacing_mm"] = 1.0
s = run_scenario(scenario_from_dict(d)).summary
s.pop("wall_time_s")
print(json.dumps({{k: repr(v) for k, v in s.items()}}))
"""


def _run(threads: str, numpy_first: bool) -> dict[str, str]:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": threads}
    code = RUN.format(first="import numpy" if numpy_first else "")
    got = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return json.loads(got.stdout.strip().splitlines()[-1])


def test_a_run_is_bit_identical_under_one_and_two_blas_threads():
    one = _run("1", numpy_first=False)
    two = _run("2", numpy_first=True)
    assert float(one["leaked_volume_ml"]) > 0  # the comparison covers a run that leaks
    assert {k: (one[k], two[k]) for k in one if one[k] != two[k]} == {}


def test_the_limit_holds_inside_the_block_and_the_callers_setting_comes_back():
    from threadpoolctl import threadpool_info

    def blas_threads() -> list[int]:
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    np.dot(np.ones(3), np.ones(3))  # numpy's BLAS is loaded
    before = blas_threads()
    with one_blas_thread():
        assert blas_threads() and set(blas_threads()) == {1}
    assert blas_threads() == before
