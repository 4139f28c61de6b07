"""Transport kernels: numba vs their pure-numpy references, same inputs, same run.

- ``transport_step``: one implicit upwind saturation step (``sim.physics.cement_transport``), numba sweep in
  pressure order vs the numpy flow-level reference ``transport_step_numpy``, on the full
  pressure field of the default L1 bone with a 2.5 ml cement ball (``benchmarks.fixtures``) and
  a volume-CFL time step. The numba timing includes the pressure argsort the driver pays.
- ``viscosity_field``: cement viscosity of every cell (``sim.physics.rheology.viscosity_field``,
  numba scalar kernel) vs ``sim.physics.rheology.cement_viscosity`` (numpy, broadcast).

``speedup`` = numpy time / numba time; ``max_abs_diff`` compares the outputs (saturations are
in [0, 1]; viscosities relative).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _flow_inputs(case) -> dict[str, Any]:
    from sim.physics.cement_transport import throughput_rate
    from sim.physics.pressure import PressureSolver, assemble_full

    g = case.graph
    system = assemble_full(g, case.trans, case.exit_cell, case.exit_cond)
    b = system.rhs(case.source, case.exit_cond, np.zeros_like(case.exit_cond))
    p = PressureSolver("amg").solve(system.matrix, b)
    flux = case.trans * (p[g.face_a] - p[g.face_b])
    q_ent = case.exit_cond * p[case.exit_cell]
    exit_out = np.bincount(case.exit_cell, weights=np.maximum(q_ent, 0.0), minlength=g.n)
    exit_flux = np.bincount(case.exit_cell, weights=q_ent, minlength=g.n)
    thr = throughput_rate(g.face_a, g.face_b, flux, case.source, exit_flux)
    ok = thr > 0.0
    dt = 0.8 * float(np.min(case.pore_volume[ok] / thr[ok])) * 50.0  # implicit: many cells per step
    s_old = case.s.copy()
    return {"p": p, "flux": flux, "exit_out": exit_out, "dt": dt, "s_old": s_old}


def bench_transport_step(spacing_mm: float, repeat: int) -> dict[str, Any]:
    from benchmarks.fixtures import bone_case
    from sim.bench import min_time
    from sim.physics.cement_transport import transport_step, transport_step_numpy

    case = bone_case(spacing_mm)
    g = case.graph
    f = _flow_inputs(case)

    def numba_step():
        order = np.argsort(-f["p"], kind="stable").astype(np.int64)
        return transport_step(
            order, g.cell_ptr, g.cell_face, g.cell_nbr, g.cell_sign, f["flux"], case.source, f["exit_out"],
            case.pore_volume, case.visc_ratio, f["s_old"], f["dt"],
        )  # fmt: skip

    def numpy_step():
        return transport_step_numpy(
            g.face_a, g.face_b, f["flux"], case.source, f["exit_out"], case.pore_volume, case.visc_ratio,
            f["s_old"], f["dt"],
        )  # fmt: skip

    numba_step()  # JIT load
    t_nb, (s_nb, fo_nb) = min_time(numba_step, max(repeat, 5))
    t_np, (s_np, fo_np) = min_time(numpy_step, repeat)
    cement_before = float(np.dot(f["s_old"], case.pore_volume))
    cement_after = float(np.dot(s_nb, case.pore_volume))
    return {
        "kernel": "transport_step",
        "size": f"{g.n:,} cells ({spacing_mm:g} mm)",
        "numba_ms": 1e3 * t_nb,
        "numpy_ms": 1e3 * t_np,
        "speedup": t_np / t_nb,
        "max_abs_diff": float(max(np.abs(s_nb - s_np).max(), np.abs(fo_nb - fo_np).max())),
        "cells_per_s": g.n / t_nb,
        "note": f"cement gained {1e6 * (cement_after - cement_before):.3g} ml in the step",
    }


def bench_viscosity(spacing_mm: float, repeat: int) -> dict[str, Any]:
    from benchmarks.fixtures import bone_case
    from sim.bench import min_time
    from sim.core.config import Scenario
    from sim.core.parameters import RunParameters
    from sim.physics.rheology import CementModel, cement_viscosity, viscosity_field

    case = bone_case(spacing_mm)
    cement = CementModel.from_params(RunParameters.from_scenario(Scenario()).cement)
    params = np.ascontiguousarray(cement.as_array(), dtype=np.float64)
    shear = np.random.default_rng(0).lognormal(0.0, 2.0, case.graph.n)
    age = 400.0
    out = np.empty_like(shear)

    def nb():
        viscosity_field(shear, age, params, out)
        return out.copy()

    def ref():
        return cement_viscosity(cement, shear, age)

    nb()
    t_nb, v_nb = min_time(nb, max(repeat, 5))
    t_np, v_np = min_time(ref, max(repeat, 5))
    return {
        "kernel": "viscosity_field",
        "size": f"{shear.size:,} cells ({spacing_mm:g} mm)",
        "numba_ms": 1e3 * t_nb,
        "numpy_ms": 1e3 * t_np,
        "speedup": t_np / t_nb,
        "max_abs_diff": float(np.max(np.abs(v_nb - v_np) / v_np)),
        "cells_per_s": shear.size / t_nb,
        "note": "relative difference",
    }


def run(quick: bool = False) -> dict[str, Any]:
    sizes = (2.0, 1.0) if quick else (1.0, 0.5)
    repeat = 2 if quick else 3
    rows = []
    for h in sizes:
        rows.append(bench_transport_step(h, repeat))
        rows.append(bench_viscosity(h, repeat))
    return {
        "name": "transport_kernels",
        "title": "Transport kernels: numba vs pure-numpy reference (same inputs, same run)",
        "columns": [
            "kernel",
            "size",
            "numba_ms",
            "numpy_ms",
            "speedup",
            "max_abs_diff",
            "cells_per_s",
            "note",
        ],
        "rows": rows,
        "notes": [
            "transport_step: full-grid pressure field with a 2.5 ml cement ball, step of 50 volume-CFL "
            "steps (the implicit scheme is stable at any step); numba time includes the pressure argsort",
            "speedup = numpy / numba (min-of-N each)",
        ],
        "targets": [],
    }
