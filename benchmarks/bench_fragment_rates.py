"""Fragment transport throughput: fragment-steps per second for 1e3..1e5 fragments, numba vs numpy.

Calls the lungs/fragments teammate's benchmark functions (``benchmarks/bench_fragments.py``):
a synthetic 40-level venous ladder draining to the atrium, then the default pulmonary tree,
log-normal fragment diameters (median 0.3 mm), the same pre-drawn random numbers for both
implementations. A fragment-step is one vessel transition (venous edge or pulmonary branch) of
one fragment; the time is the whole ``transport_fragments`` driver (routing, descent, lodging
with occlusion updates, emboli table). ``speedup`` = numpy reference time / numba time;
``identical`` = the two emboli tables are bit-identical.
"""

from __future__ import annotations

from typing import Any

import numpy as np

TARGET_STEPS_PER_S = 1.0e6


def run(quick: bool = False) -> dict[str, Any]:
    from benchmarks.bench_fragments import ladder_veins, make_fragments, time_run
    from sim.bench import target
    from sim.core.config import Scenario
    from sim.core.parameters import RunParameters
    from sim.physics.pulmonary_tree import build_pulmonary_tree
    from sim.physics.rheology import CementModel

    sizes = (1_000, 10_000) if quick else (1_000, 10_000, 100_000)
    numpy_max = 1_000 if quick else 10_000
    repeat = 2 if quick else 3
    params = RunParameters.from_scenario(Scenario())
    cement = CementModel.from_params(params.cement)
    tree = build_pulmonary_tree(params.lungs, np.random.default_rng(1))
    veins = ladder_veins()
    time_run(make_fragments(50, np.random.default_rng(0)), veins, tree, cement, params.lungs, True, 1)
    rows = []
    for n in sizes:
        frags = make_fragments(n, np.random.default_rng(n))
        t_nb, r_nb = time_run(frags, veins, tree, cement, params.lungs, True, repeat)
        steps = int(r_nb.venous_steps + r_nb.pulmonary_steps)
        row: dict[str, Any] = {
            "fragments": n,
            "fragment_steps": steps,
            "lodged": int((r_nb.status == 2).sum()),
            "numba_s": t_nb,
            "numba_steps_per_s": steps / t_nb,
            "numpy_s": float("nan"),
            "numpy_steps_per_s": float("nan"),
            "speedup": float("nan"),
            "identical": None,
        }
        if n <= numpy_max:
            t_np, r_np = time_run(frags, veins, tree, cement, params.lungs, False, 1)
            row.update(numpy_s=t_np, numpy_steps_per_s=steps / t_np, speedup=t_np / t_nb)
            row["identical"] = all(
                np.array_equal(r_nb.emboli[k], r_np.emboli[k], equal_nan=True) for k in r_nb.emboli
            )
        rows.append(row)
    largest = rows[-1]
    return {
        "name": "fragment_transport",
        "title": f"Fragment transport ({tree.n_vessels:,}-vessel pulmonary tree, 40-level venous ladder)",
        "columns": [
            "fragments",
            "fragment_steps",
            "lodged",
            "numba_s",
            "numba_steps_per_s",
            "numpy_s",
            "numpy_steps_per_s",
            "speedup",
            "identical",
        ],  # fmt: skip
        "rows": rows,
        "notes": [
            "functions from benchmarks/bench_fragments.py (lungs teammate); end-to-end transport_fragments",
            f"numpy reference timed up to {numpy_max:,} fragments (it re-descends after every occlusion)",
        ],
        "targets": [
            target(
                f"fragment-steps/s at {largest['fragments']:,} fragments",
                largest["numba_steps_per_s"],
                TARGET_STEPS_PER_S,
                "steps/s",
                below=False,
            ),
        ],  # fmt: skip
    }
