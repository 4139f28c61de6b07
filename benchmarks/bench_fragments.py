"""Fragment transport benchmark: fragment-steps (vessel transitions) per second, numba vs numpy.

Standalone: ``python benchmarks/bench_fragments.py [--sizes 1000 10000 100000] [--repeat 3]``
prints one JSON document. Each size runs both legs (a synthetic venous graph of 40 levels, then
the default pulmonary tree) with the same pre-drawn random numbers, min-of-N wall times.
Fragment diameters follow a log-normal (median 0.3 mm, sigma 0.6): ~80 % pass distally, the rest
lodge (at 1e5 fragments they fill the 1.4e4-vessel tree and pile up proximally: a stress case).
``--numpy-max`` (default 1e4) caps the sizes the numpy reference is timed at: it re-descends
all pending fragments after every occlusion, O(n_lodged * n).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np

from sim.core.config import Scenario
from sim.core.parameters import RunParameters
from sim.physics.cure_clock import CureClock
from sim.physics.fragment_set import FragmentSet, VenousFlowSnapshot
from sim.physics.fragment_transport import transport_fragments
from sim.physics.pulmonary_tree import build_pulmonary_tree
from sim.physics.rheology import CementModel


def ladder_veins(levels: int = 40) -> VenousFlowSnapshot:
    """Two parallel columns joined by rungs (a paravertebral plexus caricature) draining to an outlet."""
    n = 2 * levels + 1
    pos = np.zeros((n, 3))
    pos[: 2 * levels, 2] = np.repeat(np.arange(levels) * 0.02, 2)
    pos[: 2 * levels, 0] = np.tile([-0.02, 0.02], levels)
    u, v, q, d = [], [], [], []
    for k in range(levels - 1):
        for side in (0, 1):
            u.append(2 * k + side)
            v.append(2 * (k + 1) + side)
            q.append((k + 1) * (1.0 + 0.3 * side) * 1e-7)
            d.append(3e-3 + 1e-4 * k)
        u.append(2 * k)
        v.append(2 * k + 1)
        q.append(0.2e-7)
        d.append(2e-3)
    u += [2 * levels - 2, 2 * levels - 1]
    v += [n - 1, n - 1]
    q += [levels * 1e-7, levels * 1.3e-7]
    d += [8e-3, 8e-3]
    return VenousFlowSnapshot(
        node_pos_m=pos, edge_u=np.array(u), edge_v=np.array(v), edge_diameter_m=np.array(d),
        edge_length_m=np.full(len(u), 0.02), edge_flow_m3_s=np.array(q), outlet_node=n - 1,
    )  # fmt: skip


def make_fragments(n: int, rng: np.random.Generator) -> FragmentSet:
    d = rng.lognormal(np.log(0.3e-3), 0.6, n)
    return FragmentSet(
        birth_time_s=rng.random(n) * 120.0, edge=np.zeros(n, dtype=np.int64), offset_m=np.zeros(n),
        diameter_m=d, length_m=np.full(n, 5e-3), volume_m3=np.pi * d**2 / 4 * 5e-3,
        cure_age_s=np.full(n, 300.0), branched=(rng.random(n) < 0.3).astype(np.int8),
        status=np.zeros(n, dtype=np.int8),
    )  # fmt: skip


def time_run(frags, veins, tree, cement, lungs, use_numba: bool, repeat: int) -> tuple[float, object]:
    """Min-of-``repeat`` wall time of ``transport_fragments`` (fragments age at 37 C) and its result."""
    clock = CureClock.for_cement(cement, 0.0, 294.15, 310.15)
    best, res = np.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        res = transport_fragments(
            frags, veins, tree, cement, clock, lungs, np.random.default_rng(7), use_numba=use_numba
        )
        best = min(best, time.perf_counter() - t0)
    return best, res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--numpy-max", type=int, default=10000)
    args = ap.parse_args()
    params = RunParameters.from_scenario(Scenario())
    cement = CementModel.from_params(params.cement)
    t0 = time.perf_counter()
    tree = build_pulmonary_tree(params.lungs, np.random.default_rng(1))
    build_s = time.perf_counter() - t0
    veins = ladder_veins()
    warm = make_fragments(50, np.random.default_rng(0))
    time_run(warm, veins, tree, cement, params.lungs, True, 1)  # JIT compile / cache load
    rows = []
    for n in args.sizes:
        frags = make_fragments(n, np.random.default_rng(n))
        t_nb, r_nb = time_run(frags, veins, tree, cement, params.lungs, True, args.repeat)
        steps = r_nb.venous_steps + r_nb.pulmonary_steps
        row = {
            "n_fragments": n,
            "steps": steps,
            "venous_steps": r_nb.venous_steps,
            "pulmonary_steps": r_nb.pulmonary_steps,
            "n_lodged": int((r_nb.status == 2).sum()),
            "numba_s": t_nb,
            "numba_steps_per_s": steps / t_nb,
        }
        if n <= args.numpy_max:
            t_np, r_np = time_run(frags, veins, tree, cement, params.lungs, False, 1)
            row.update(numpy_s=t_np, numpy_steps_per_s=steps / t_np, speedup=t_np / t_nb)
            row["identical"] = all(
                np.array_equal(r_nb.emboli[k], r_np.emboli[k], equal_nan=True) for k in r_nb.emboli
            )
        rows.append(row)
    doc = {
        "benchmark": "fragment_transport",
        "unit": "fragment vessel transitions per second (venous + pulmonary), end-to-end driver",
        "tree_vessels": tree.n_vessels,
        "tree_build_s": build_s,
        "machine": {
            "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(),
        },
        "results": rows,
    }
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
