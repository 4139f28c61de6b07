"""Network flow: our venous and pulmonary solves vs OpenPNM's StokesFlow on the same networks.

Venous: the default L1 network (``sim.physics.venous_network.build_venous_network``), Poiseuille conductances,
prescribed inflows, right atrium at CVP. Ours: ``solve_blood_flow`` (symmetric elimination of
the Dirichlet node, SuperLU). OpenPNM 3 (Gostick et al. 2016, Comput Sci Eng 18:60): a
``Network`` from the same node coordinates and edges (the pump edge to the pulmonary trunk is
left out: it carries an imposed flow, not a conductance), ``throat.hydraulic_conductance`` =
our conductance, ``set_rate_BC`` for the inflows, ``set_value_BC`` for the atrium, solved with
its scipy and (default) Pardiso solvers.

Pulmonary: the default pulmonary arterial tree (``sim.physics.pulmonary_tree``). Ours: ``solve_tree_flow``, an
O(N) upward conductance sweep and downward flow split (numba). Same network in OpenPNM: one
pore per vessel end plus the inlet and a common left-atrial sink pore; each vessel a throat of
conductance 1/R; each leaf joined to the sink by its distal-bed conductance; cardiac output in
at the inlet, LA pressure at the sink. An independent scipy.sparse reference (Laplacian with the
sink eliminated, SuperLU) is timed as well.

Agreement: ``max_rel_diff`` = max |p_ours - p_other| / max |p_ours - p_sink| over nodes (and
the same for edge flows relative to the largest flow); required <= 1e-10. ``ratio`` = other
time / our time (time of the solve call; OpenPNM's ``run`` includes building A and b).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

AGREEMENT = 1e-10


def _openpnm():
    try:
        import openpnm as op
    except ImportError:
        return None
    logging.getLogger("openpnm").setLevel(logging.ERROR)
    return op


def _stokes(op, coords, conns, g, rate_pores, rates, value_pores, values, solver_name: str):
    """Build an OpenPNM StokesFlow; returns (algorithm, run callable)."""
    ws = op.Workspace()
    ws.clear()
    pn = op.network.Network(coords=coords, conns=conns)
    phase = op.phase.Phase(network=pn)
    phase["throat.hydraulic_conductance"] = g
    sf = op.algorithms.StokesFlow(network=pn, phase=phase)
    sf.set_value_BC(pores=value_pores, values=values)
    keep = rates != 0.0
    if keep.any():
        sf.set_rate_BC(pores=rate_pores[keep], rates=rates[keep])
    solver = getattr(op.solvers, solver_name)()

    def go():
        sf.run(solver=solver)
        return np.asarray(sf["pore.pressure"], dtype=np.float64).copy()

    return go


def _rel(a: np.ndarray, b: np.ndarray, scale: float) -> float:
    return float(np.max(np.abs(a - b)) / max(scale, 1e-300))


def venous_rows(repeat: int) -> list[dict[str, Any]]:
    from sim.bench import min_time
    from sim.core.config import Scenario
    from sim.core.parameters import RunParameters
    from sim.physics.venous_network import build_venous_network, edge_conductance, solve_blood_flow
    from sim.run.pipeline import stage_rngs

    params = RunParameters.from_scenario(Scenario())
    net = build_venous_network("L1", params.veins, stage_rngs(2025)["veins"])
    # the peers solve the linear Kirchhoff network: compare on it, without our caval-hiatus Starling
    # resistor (a nonlinear outlet condition, checked against its analytic answer in test_veins_posture)
    net = dataclasses.replace(net, hiatus_edge=-1)
    t_ours, flow = min_time(lambda: solve_blood_flow(net), repeat)
    p_ref = flow.node_pressure_pa
    scale_p = float(np.max(np.abs(p_ref - net.ra_pressure_pa)))
    g = edge_conductance(net)
    keep_e = np.arange(net.n_edges) != net.pump_edge
    nodes = np.flatnonzero(np.arange(net.n_nodes) != net.pulmonary_trunk)
    new = -np.ones(net.n_nodes, dtype=np.int64)
    new[nodes] = np.arange(nodes.size)
    conns = np.sort(np.stack([new[net.edge_u[keep_e]], new[net.edge_v[keep_e]]], axis=1), axis=1)
    coords = net.node_pos_m[nodes]
    base = {
        "network": f"venous L1 ({nodes.size} nodes, {int(keep_e.sum())} edges)",
        "solver": "ours: solve_blood_flow",
    }
    rows = [dict(base, time_ms=1e3 * t_ours, ratio_vs_ours=1.0, max_rel_diff_p=0.0, max_rel_diff_q=0.0)]
    op = _openpnm()
    if op is None:
        return rows + _scipy_venous(net, g, p_ref, scale_p, t_ours, repeat)
    for solver_name in ("ScipySpsolve", "PardisoSpsolve"):
        go = _stokes(
            op, coords, conns, g[keep_e], np.arange(nodes.size), net.node_inflow_m3_s[nodes],
            [new[net.right_atrium]], [net.ra_pressure_pa], solver_name,
        )  # fmt: skip
        t, p = min_time(go, repeat)
        p_full = p_ref.copy()
        p_full[nodes] = p
        q = g * (p_full[net.edge_u] - p_full[net.edge_v])
        qr = flow.edge_flow_m3_s
        rows.append(dict(
            base, solver=f"OpenPNM StokesFlow ({solver_name})", time_ms=1e3 * t, ratio_vs_ours=t / t_ours,
            max_rel_diff_p=_rel(p, p_ref[nodes], scale_p),
            max_rel_diff_q=_rel(q[keep_e], qr[keep_e], float(np.abs(qr[keep_e]).max())),
        ))  # fmt: skip
    return rows


def _scipy_venous(net, g, p_ref, scale_p, t_ours, repeat) -> list[dict[str, Any]]:
    """Fallback reference when OpenPNM is absent: full Laplacian, Dirichlet row replaced, spsolve."""
    from sim.bench import min_time

    n = net.n_nodes
    u, v = net.edge_u, net.edge_v
    lap = sp.coo_matrix(
        (np.concatenate([g, g, -g, -g]), (np.concatenate([u, v, u, v]), np.concatenate([u, v, v, u]))),
        shape=(n, n),
    ).tolil()
    b = net.node_inflow_m3_s.copy()
    for node in (net.right_atrium, net.pulmonary_trunk):
        lap.rows[node], lap.data[node] = [node], [1.0]
        b[node] = net.ra_pressure_pa
    a = lap.tocsc()
    t, p = min_time(lambda: spla.spsolve(a, b), repeat)
    return [{
        "network": f"venous L1 ({n} nodes)", "solver": "scipy spsolve (OpenPNM not installed)",
        "time_ms": 1e3 * t, "ratio_vs_ours": t / t_ours, "max_rel_diff_p": _rel(p, p_ref, scale_p),
        "max_rel_diff_q": float("nan"),
    }]  # fmt: skip


def _tree_graph(tree) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Pores: 0 = inlet, 1 + v = end of vessel v, n + 1 = sink. Throats: vessels, then leaf beds."""
    n = tree.n_vessels
    start = np.where(tree.parent >= 0, tree.parent + 1, 0)
    end = np.arange(n) + 1
    leaves = np.flatnonzero(tree.distal_conductance > 0.0)
    sink = n + 1
    conns = np.concatenate([np.stack([start, end], 1), np.stack([leaves + 1, np.full(leaves.size, sink)], 1)])
    g = np.concatenate([1.0 / tree.resistance, tree.distal_conductance[leaves]])
    return conns.astype(np.int64), g, leaves, sink, n + 2


def pulmonary_rows(repeat: int) -> list[dict[str, Any]]:
    from sim.bench import min_time
    from sim.core.config import Scenario
    from sim.core.parameters import RunParameters
    from sim.physics.pulmonary_tree import build_pulmonary_tree, solve_tree_flow
    from sim.run.pipeline import stage_rngs

    params = RunParameters.from_scenario(Scenario())
    tree = build_pulmonary_tree(params.lungs, stage_rngs(2025)["lungs"])
    solve_tree_flow(tree)  # JIT load
    t_ours, (q_ref, p_ref) = min_time(lambda: solve_tree_flow(tree), max(repeat, 5))
    conns, g, leaves, sink, n_pores = _tree_graph(tree)
    p_la = tree.left_atrial_pressure_pa
    # our pressures per pore: inlet = p_in of vessel 0, vessel end = p_out
    p_ours = np.empty(n_pores)
    p_ours[0] = p_ref[0, 0]
    p_ours[1:-1] = p_ref[:, 1]
    p_ours[sink] = p_la
    scale_p = float(np.max(np.abs(p_ours - p_la)))
    scale_q = float(np.abs(q_ref).max())
    label = f"pulmonary tree ({tree.n_vessels:,} vessels, {leaves.size:,} leaves)"
    rows = [{"network": label, "solver": "ours: solve_tree_flow (O(N) sweeps)", "time_ms": 1e3 * t_ours,
             "ratio_vs_ours": 1.0, "max_rel_diff_p": 0.0, "max_rel_diff_q": 0.0}]  # fmt: skip

    def flows(p: np.ndarray) -> np.ndarray:
        nv = tree.n_vessels
        return g[:nv] * (p[conns[:nv, 0]] - p[conns[:nv, 1]])

    # independent scipy reference: sink eliminated, inflow at the inlet, SuperLU
    a_, b_ = conns[:, 0], conns[:, 1]
    lap = sp.coo_matrix(
        (
            np.concatenate([g, g, -g, -g]),
            (np.concatenate([a_, b_, a_, b_]), np.concatenate([a_, b_, b_, a_])),
        ),
        shape=(n_pores, n_pores),
    ).tocsr()
    free = np.arange(n_pores - 1)
    a_free = lap[free][:, free].tocsc()
    rhs = np.zeros(free.size)
    rhs[0] = tree.cardiac_output_m3_s
    rhs -= (lap[free][:, [sink]] @ np.array([p_la])).ravel()
    t_sp, x = min_time(lambda: spla.spsolve(a_free, rhs), repeat)
    p_sp = np.append(x, p_la)
    rows.append({"network": label, "solver": "scipy.sparse spsolve (reference)", "time_ms": 1e3 * t_sp,
                 "ratio_vs_ours": t_sp / t_ours, "max_rel_diff_p": _rel(p_sp, p_ours, scale_p),
                 "max_rel_diff_q": _rel(flows(p_sp), q_ref, scale_q)})  # fmt: skip
    op = _openpnm()
    if op is not None:
        rates = np.zeros(n_pores)
        rates[0] = tree.cardiac_output_m3_s
        for solver_name in ("ScipySpsolve", "PardisoSpsolve"):
            go = _stokes(op, np.zeros((n_pores, 3)) + np.arange(n_pores)[:, None] * 1e-6, conns, g,
                         np.array([0]), rates[:1], [sink], [p_la], solver_name)  # fmt: skip
            t, p = min_time(go, repeat)
            name = f"OpenPNM StokesFlow ({solver_name})"
            rows.append({"network": label, "solver": name, "time_ms": 1e3 * t,
                         "ratio_vs_ours": t / t_ours, "max_rel_diff_p": _rel(p, p_ours, scale_p),
                         "max_rel_diff_q": _rel(flows(p), q_ref, scale_q)})  # fmt: skip
    return rows


def run(quick: bool = False) -> dict[str, Any]:
    from sim.bench import target

    repeat = 3 if quick else 5
    rows = venous_rows(repeat) + pulmonary_rows(repeat)
    for r in rows:
        r["agrees_1e-10"] = bool(max(r["max_rel_diff_p"], np.nan_to_num(r["max_rel_diff_q"])) <= AGREEMENT)
    worst = max(max(r["max_rel_diff_p"], np.nan_to_num(r["max_rel_diff_q"])) for r in rows)
    op = _openpnm()
    notes = [
        "max_rel_diff_p: max node-pressure difference / max pressure drop to the sink; max_rel_diff_q: max "
        "edge-flow difference / max edge flow",
        "OpenPNM's run() assembles A and b, applies boundary conditions and checks network health "
        "each call; ours assemble and solve too (solve_blood_flow) or sweep the tree (solve_tree_flow)",
    ]
    if op is None:
        notes.append("OpenPNM is not installed (pip install openpnm): compared with scipy.sparse only")
    else:
        notes.append(
            f"OpenPNM {op.__version__} from PyPI (installs on Python 3.11 with its mkl/pypardiso deps)"
        )
    return {
        "name": "network_flow",
        "title": "Network flow: ours vs OpenPNM StokesFlow / scipy.sparse on the same networks",
        "columns": [
            "network",
            "solver",
            "time_ms",
            "ratio_vs_ours",
            "max_rel_diff_p",
            "max_rel_diff_q",
            "agrees_1e-10",
        ],  # fmt: skip
        "rows": rows,
        "notes": notes,
        "targets": [target("network solves agree (max relative difference)", worst, AGREEMENT, "")],
    }
