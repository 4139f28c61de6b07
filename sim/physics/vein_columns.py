"""Cement columns in veins: 1D fill of edges pushed by the exit flux, and their hydraulic effect.

Model. Cement leaving the vertebral body through an exit enters the venous graph at the exit's
node as an incompressible column. Each edge holds one column (volume ``fill_m3``, entered from
end ``entry_end``); its front sits ``fill / A_col`` from the entry end. Pushing a volume V into a
node splits it over the node's edges in proportion to their blood outflow from that node (cement
follows the blood, Batson's valveless plexus lets it go either way); an edge takes what it can
hold and passes the excess on to its other node (a full column is pushed through). If no blood
leaves the node (dead end, or every way out blocked) the cement is forced retrograde, split by
conductance. A column entering a vein much wider than its feeder (d_edge > THREAD_RATIO * d_feed,
e.g. a segmental vein opening into the azygos or IVC) continues as a thread of the feeder's
diameter along the wall instead of filling the lumen.

Hydraulics. A full-bore column of length l in an edge of diameter d replaces blood by cement in
series: R_extra = 128 (mu_c - mu_b) l / (pi d^4) (Hagen-Poiseuille), so the blood reroutes and a
fully filled small vein blocks. Threads leave the lumen open (no extra resistance). Pushing the
cement through full-bore columns costs a back-pressure at the exit (the coupling passes it to the
bone as the series resistance dp / q); for a column tree fed by
flux q that splits with shares f_e, p_exit - <p_tips>_q = q sum_e R_c,e f_e^2 (flux-weighted mean
of the tip pressures; exact on a tree of Poiseuille segments), computed by :func:`back_pressure`.

The push is a numba kernel on CSR adjacency arrays (:func:`push_kernel`); ``push_kernel.py_func``
is the interpreted reference used in tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from sim.core.errors import SolverError
from sim.physics.venous_network import ROUTES, VenousNetwork

THREAD_RATIO = 1.5  # a column wider than this many feeder diameters becomes a thread
FULL_TOL = 1.0e-12  # relative fill counted as full


@numba.njit(cache=True)
def push_kernel(
    start_node: int,
    volume: float,
    feed_diameter: float,
    node_ptr: np.ndarray,
    adj_edge: np.ndarray,
    adj_other: np.ndarray,
    adj_sign: np.ndarray,
    edge_flow: np.ndarray,
    edge_cond: np.ndarray,
    edge_diameter: np.ndarray,
    edge_length: np.ndarray,
    blocked: np.ndarray,
    fill: np.ndarray,
    col_diameter: np.ndarray,
    entry_end: np.ndarray,
    through: np.ndarray,
    max_hops: int,
) -> int:
    """Deposit ``volume`` of cement entering ``start_node``; returns the number of hops (-1: overflow).

    ``adj_sign`` is +1 where the node is the edge's u end (outflow = +flow), -1 otherwise.
    ``blocked`` edges never take cement. ``through[e]`` accumulates the volume
    that entered edge e (for back-pressure and shear rate).
    """
    cap_stack = 4 * edge_flow.shape[0] + 16
    s_node = np.empty(cap_stack, np.int64)
    s_vol = np.empty(cap_stack)
    s_d = np.empty(cap_stack)
    s_from = np.empty(cap_stack, np.int64)
    top = 0
    s_node[0] = start_node
    s_vol[0] = volume
    s_d[0] = feed_diameter
    s_from[0] = -1
    top = 1
    hops = 0
    while top > 0:
        top -= 1
        n = s_node[top]
        v = s_vol[top]
        dfeed = s_d[top]
        efrom = s_from[top]
        if v <= 0.0:
            continue
        hops += 1
        if hops > max_hops:
            return -1
        a, b = node_ptr[n], node_ptr[n + 1]
        # weights: blood outflow from n; fallback: conductance (retrograde); last resort: overfill efrom
        wsum = 0.0
        for k in range(a, b):
            e = adj_edge[k]
            if e == efrom or blocked[e]:
                continue
            out = adj_sign[k] * edge_flow[e]
            if out > 0.0:
                wsum += out
        mode = 0
        if wsum <= 0.0:
            mode = 1
            for k in range(a, b):
                e = adj_edge[k]
                if e == efrom or blocked[e]:
                    continue
                wsum += edge_cond[e]
        if wsum <= 0.0:
            if efrom < 0:
                return -1
            fill[efrom] += v
            through[efrom] += v
            continue
        # last receiving edge takes the remainder so the split conserves volume exactly
        last = -1
        for k in range(a, b):
            e = adj_edge[k]
            if e == efrom or blocked[e]:
                continue
            w = adj_sign[k] * edge_flow[e] if mode == 0 else edge_cond[e]
            if w > 0.0:
                last = k
        given = 0.0
        for k in range(a, b):
            e = adj_edge[k]
            if e == efrom or blocked[e]:
                continue
            w = adj_sign[k] * edge_flow[e] if mode == 0 else edge_cond[e]
            if w <= 0.0:
                continue
            q = v - given if k == last else v * (w / wsum)
            given += q
            if entry_end[e] < 0:
                d = edge_diameter[e]
                col_diameter[e] = d if d <= THREAD_RATIO * dfeed else dfeed
                entry_end[e] = 0 if adj_sign[k] > 0 else 1
            cap = 0.25 * np.pi * col_diameter[e] ** 2 * edge_length[e] - fill[e]
            take = q if q <= cap else max(cap, 0.0)
            fill[e] += take
            through[e] += q
            if q - take > 0.0:
                if top >= cap_stack:
                    return -1
                s_node[top] = adj_other[k]
                s_vol[top] = q - take
                s_d[top] = col_diameter[e]
                s_from[top] = e
                top += 1
    return hops


def adjacency(network: VenousNetwork) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """CSR node -> incident edges: (node_ptr, adj_edge, adj_other, adj_sign)."""
    u, v = network.edge_u, network.edge_v
    ne = u.shape[0]
    nodes = np.concatenate([u, v])
    edges = np.concatenate([np.arange(ne), np.arange(ne)])
    other = np.concatenate([v, u])
    sign = np.concatenate([np.ones(ne), -np.ones(ne)])
    order = np.lexsort((edges, nodes))
    ptr = np.zeros(network.n_nodes + 1, dtype=np.int64)
    np.cumsum(np.bincount(nodes, minlength=network.n_nodes), out=ptr[1:])
    return (
        ptr,
        np.ascontiguousarray(edges[order], dtype=np.int64),
        np.ascontiguousarray(other[order], dtype=np.int64),
        np.ascontiguousarray(sign[order], dtype=np.float64),
    )


@dataclass
class CementColumns:
    """Cement held in the veins, one column per edge (structure of arrays, SI)."""

    network: VenousNetwork
    fill_m3: np.ndarray
    col_diameter_m: np.ndarray
    entry_end: np.ndarray  # int8: -1 empty, 0 entered from edge_u, 1 from edge_v
    owner_exit: np.ndarray  # int64: index of the exit whose cement first entered (-1 empty)

    @classmethod
    def empty(cls, network: VenousNetwork) -> CementColumns:
        ne = network.n_edges
        obj = cls(
            network=network,
            fill_m3=np.zeros(ne),
            col_diameter_m=np.zeros(ne),
            entry_end=np.full(ne, -1, dtype=np.int8),
            owner_exit=np.full(ne, -1, dtype=np.int64),
        )
        obj._adj = adjacency(network)
        # no edge refuses cement: cement reaching the atrium follows the pump edge into the heart
        obj._blocked = np.zeros(ne, dtype=np.bool_)
        return obj

    def push(
        self,
        node: int,
        volume_m3: float,
        feed_diameter_m: float,
        edge_flow_m3_s: np.ndarray,
        edge_cond: np.ndarray,
        exit_index: int = -1,
    ) -> np.ndarray:
        """Push ``volume_m3`` of cement into ``node``; returns the volume that entered each edge."""
        through = np.zeros(self.network.n_edges)
        if volume_m3 <= 0.0:
            return through
        ptr, adj_edge, adj_other, adj_sign = self._adj
        was_empty = self.entry_end < 0
        hops = push_kernel(
            int(node),
            float(volume_m3),
            float(feed_diameter_m),
            ptr,
            adj_edge,
            adj_other,
            adj_sign,
            np.ascontiguousarray(edge_flow_m3_s, dtype=np.float64),
            np.ascontiguousarray(edge_cond, dtype=np.float64),
            self.network.edge_diameter_m,
            self.network.edge_length_m,
            self._blocked,
            self.fill_m3,
            self.col_diameter_m,
            self.entry_end,
            through,
            1_000_000,
        )
        if hops < 0:
            raise SolverError(
                f"cement push from node {self.network.node_names[node]} found no way out "
                f"({volume_m3:.3g} m3 undeposited)"
            )
        newly = was_empty & (self.entry_end >= 0)
        self.owner_exit[newly] = exit_index
        return through

    # ------------------------------------------------------------------ geometry
    def column_area_m2(self) -> np.ndarray:
        return 0.25 * np.pi * self.col_diameter_m**2

    def fill_length_m(self) -> np.ndarray:
        """Length of each column from its entry end (capped at the edge length)."""
        area = self.column_area_m2()
        length = np.divide(self.fill_m3, area, out=np.zeros_like(self.fill_m3), where=area > 0)
        return np.minimum(length, self.network.edge_length_m)

    def full_bore(self) -> np.ndarray:
        """Columns that fill the vein's lumen (not threads)."""
        return (self.entry_end >= 0) & (self.col_diameter_m >= self.network.edge_diameter_m * (1.0 - 1e-12))

    def occluded(self) -> np.ndarray:
        """Veins whose whole lumen is cement (full-bore and filled to the edge length)."""
        return self.is_full() & self.full_bore()

    def is_full(self) -> np.ndarray:
        cap = self.column_area_m2() * self.network.edge_length_m
        return (self.entry_end >= 0) & (self.fill_m3 >= cap * (1.0 - FULL_TOL))

    def total_m3(self) -> float:
        return float(self.fill_m3.sum())

    def volume_by_route(self) -> dict[str, float]:
        return {r: float(self.fill_m3[self.network.edge_route == r].sum()) for r in ROUTES}

    # ------------------------------------------------------------------ hydraulics
    def cement_resistance(self, cement_viscosity: np.ndarray) -> np.ndarray:
        """128 mu_c l / (pi d^4) of the full-bore cement in each edge (0 for threads / empty)."""
        d = self.network.edge_diameter_m
        r = 128.0 * cement_viscosity * self.fill_length_m() / (np.pi * d**4)
        return np.where(self.full_bore(), r, 0.0)

    def extra_resistance(self, cement_viscosity: np.ndarray) -> np.ndarray:
        """Series resistance added to blood flow: full-bore columns swap mu_b for mu_c."""
        d = self.network.edge_diameter_m
        mu_b = self.network.blood_viscosity_pa_s
        r = 128.0 * np.maximum(cement_viscosity - mu_b, 0.0) * self.fill_length_m() / (np.pi * d**4)
        return np.where(self.full_bore(), r, 0.0)


def lumen_fill_fraction(network: VenousNetwork, fill_m3: np.ndarray) -> np.ndarray:
    """Share of each vein's lumen pi d^2 / 4 * L that cement fills, in [0, 1]."""
    lumen = 0.25 * np.pi * network.edge_diameter_m**2 * network.edge_length_m
    return np.clip(fill_m3 / np.where(lumen > 0, lumen, 1.0), 0.0, 1.0)


def back_pressure(
    through_m3: np.ndarray, cement_resistance: np.ndarray, exit_volume_m3: float, dt: float
) -> float:
    """Pressure (Pa) to push an exit's cement through full-bore columns during a step of ``dt``.

    With q = V/dt entering at the exit and q_e = V_e/dt entering edge e: dp = sum_e R_e q_e^2 / q.
    """
    denominator = exit_volume_m3 * dt
    if not denominator > 0.0:  # also a denormal volume whose product with dt underflows to 0
        return 0.0
    return float(np.sum(cement_resistance * through_m3**2) / denominator)


def midstep_resistance(
    t_mid: float, t_means: np.ndarray, r_means: np.ndarray, extrapolate: np.ndarray
) -> np.ndarray:
    """Each exit's column resistance (Pa s/m^3) predicted at the coming step's midpoint ``t_mid``.

    The bone's pressure solve of a step needs the resistance of the cement columns its exits push over
    that step, but the venous side knows it only for the steps already taken: the step mean R_k of the
    back pressure over the exit flow (:func:`back_pressure`), dated at the step's midpoint t_k. Using
    the last step's mean lags the column by about one step, a first-order error in time: a column that
    lengthens (R = 128 mu L / (pi d^4), L growing with the pushed volume) is resisted too little, so
    longer steps leak more early on. The last mean is carried to the midpoint along the slope of the
    last three means, limited by minmod (van Leer 1979, J Comput Phys 32:101; the limiter of MUSCL
    schemes, here in time):

        R(t_mid) = R_2 + minmod(s_1, s_2) (t_mid - t_2),  s_k = (R_k - R_(k-1)) / (t_k - t_(k-1)),

    floored at 0 (rows 0, 1, 2 of ``t_means`` / ``r_means``: oldest to newest). minmod is the smaller
    slope where both have one sign and 0 where they differ, so the prediction is second order where R
    grows smoothly, exact for a column pushed at a constant rate with a constant viscosity (R linear in
    t, the limiting case tested), and falls back to the last mean where R turns (a shed fragment, a
    column reaching a junction, the power-law viscosity following an oscillating flow), where a free
    extrapolation would amplify the turn. Where an exit has not pushed in each of the last three steps
    (``extrapolate`` false) the last mean is returned, the first-order value.
    """
    t0, t1, t2 = t_means
    r0, r1, r2 = r_means
    ok = extrapolate & (t2 > t1) & (t1 > t0)
    s1 = np.where(ok, (r1 - r0) / np.where(ok, t1 - t0, 1.0), 0.0)
    s2 = np.where(ok, (r2 - r1) / np.where(ok, t2 - t1, 1.0), 0.0)
    slope = np.where(s1 * s2 > 0.0, np.sign(s2) * np.minimum(np.abs(s1), np.abs(s2)), 0.0)
    return np.maximum(r2 + slope * np.where(ok, t_mid - t2, 0.0), 0.0)
