"""Lagrangian transport of cement fragments: veins -> right heart -> pulmonary arterial tree.

Event-driven, one vessel transition per step (no time step to choose):

* **Venous leg** (:func:`advect`). A fragment born on venous edge ``e`` at ``offset_m`` moves
  downstream with the signed edge flow at ``slip_factor`` times the mean blood velocity
  ``|Q| / (pi D^2 / 4)``. At a junction it takes an outflow edge with probability proportional
  to that edge's flow (inverse-CDF on a pre-drawn uniform), and lodges there (``LODGED_VEIN``)
  only if the fragment is wider than the next vein allows, ``d > D (1 + margin)``. Reaching the
  outlet node (right atrium) gives ``IN_HEART``. The venous margin uses the cure at birth.
* **Right heart**: mixing; a fragment wider than the pulmonary trunk allows is ``ARRESTED_HEART``.
  ``RIGHT_HEART_TRANSIT_S`` (one cardiac cycle, [U]) is added to the arrival time.
* **Pulmonary leg** (:func:`descend`), fragments in order of arrival: at each bifurcation
  :func:`choose_branch` picks a child with probability proportional to its *current* flow
  (``G_c / S_v`` of :mod:`sim.physics.pulmonary_tree`). A fragment lodges at the inlet of the
  first vessel with ``d > D (1 + margin)``; a branched fragment (a cast with a side branch) that
  fits none of the children straddles the bifurcation (saddle embolus, lodged in the parent). At a leaf, a
  fragment narrower than the tree's cutoff is ``PASSED_DISTAL`` (beyond the modelled tree, kept
  in the table); a wider one lodges in the leaf's distal bed. :func:`lodge` occludes the vessel
  (resistance -> infinity) and updates its ancestors' conductances, so later fragments follow the
  new flows. ``margin = deformability_margin * (1 - cure)`` with the cure degree of
  :mod:`sim.physics.rheology` at the arrival age, the age advancing at ``age_rate(T_body)`` in transit.

Kernels are ``numba.njit`` functions on flat arrays with pre-drawn uniforms (one row per fragment,
one column per junction), so the plain-numpy references :func:`advect_numpy` /
:func:`descend_numpy` give bit-identical results and a fixed seed gives identical runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from sim.core.errors import ConfigError, GeometryError
from sim.core.parameters import LungParams
from sim.physics.cure_clock import CureClock
from sim.physics.fragment_set import (
    ACTIVE,
    ARRESTED_HEART,
    ERROR,
    IN_HEART,
    LODGED,
    LODGED_VEIN,
    PASSED_DISTAL,
    FragmentSet,
    VenousFlowSnapshot,
)
from sim.physics.laws import register
from sim.physics.pulmonary_tree import LungMetrics, PulmonaryTree, lung_metrics, update_ancestors
from sim.physics.rheology import CementModel, cure_degree

RIGHT_HEART_TRANSIT_S = 1.0  # [U] one cardiac cycle at 60 /min through RA/RV
NO_FLOW_FRACTION = 1.0e-12  # venous edges below this fraction of the largest |Q| carry nothing


# ------------------------------------------------------------------------------ numba kernels


@numba.njit(cache=True)
def choose_branch(lo, hi, targets, weight, u):  # pragma: no cover
    """Index j in [lo, hi) chosen with probability weight[targets[j]] / sum; -1 if all are zero."""
    total = 0.0
    for j in range(lo, hi):
        total += weight[targets[j]]
    if total <= 0.0:
        return -1
    x = u * total
    acc = 0.0
    for j in range(lo, hi):
        acc += weight[targets[j]]
        if x < acc:
            return j
    for j in range(hi - 1, lo - 1, -1):  # u * total rounded up to total: last nonzero
        if weight[targets[j]] > 0.0:
            return j
    return -1


@numba.njit(cache=True)
def lodges(frag_d, vessel_d, margin):  # pragma: no cover
    """Lodging rule: the fragment is wider than the vessel allows."""
    return frag_d > vessel_d * (1.0 + margin)


@numba.njit(cache=True)
def advect(
    edge0,
    offset,
    frag_d,
    margin,
    uniforms,
    out_ptr,
    out_edge,
    out_node,
    edge_len,
    edge_d,
    edge_speed,
    edge_flow,
    edge_down,
    outlet,
    t0,
    status,
    edge_out,
    t_out,
):  # pragma: no cover
    """Venous leg for every fragment; returns the number of vessel transitions made.

    ``out_ptr/out_edge/out_node``: CSR of each node's outflow edges and where they lead;
    ``edge_flow``: |Q| per edge (branch weights); ``edge_down``: downstream node of each edge
    (-1 if it carries no flow); ``edge_speed``: fragment speed per edge.
    Writes status (IN_HEART / LODGED_VEIN / ERROR), last edge and time.
    """
    n = edge0.shape[0]
    max_steps = uniforms.shape[1]
    steps = 0
    for f in range(n):
        e = edge0[f]
        t = t0[f]
        if edge_down[e] < 0:  # born in a vein without flow: stays there
            status[f] = LODGED_VEIN
            edge_out[f] = e
            t_out[f] = t
            continue
        rem = edge_len[e] - offset[f]
        if rem < 0.0:
            rem = 0.0
        t += rem / edge_speed[e]
        node = edge_down[e]
        st = ERROR
        for k in range(max_steps):
            if node == outlet:
                st = IN_HEART
                break
            j = choose_branch(out_ptr[node], out_ptr[node + 1], out_edge, edge_flow, uniforms[f, k])
            if j < 0:  # dead end: nothing flows out of this node
                st = LODGED_VEIN
                break
            nxt = out_edge[j]
            steps += 1
            if lodges(frag_d[f], edge_d[nxt], margin[f]):
                e = nxt
                st = LODGED_VEIN
                break
            e = nxt
            t += edge_len[e] / edge_speed[e]
            node = out_node[j]
        if st == ERROR and node == outlet:
            st = IN_HEART
        status[f] = st
        edge_out[f] = e
        t_out[f] = t
    return steps


@numba.njit(cache=True)
def lodge(v, parent, child_ptr, child_idx, resistance, distal_g, occluded, g_eq, g_sub):  # pragma: no cover
    """Occlude pulmonary vessel v (resistance -> infinity) and refresh its ancestors' flows."""
    update_ancestors(v, parent, child_ptr, child_idx, resistance, distal_g, occluded, g_eq, g_sub)


@numba.njit(cache=True)
def descend(
    frag_d,
    margin,
    branched,
    t_arrival,
    uniforms,
    parent,
    child_ptr,
    child_idx,
    diameter,
    length,
    area,
    resistance,
    distal_g,
    is_leaf,
    cutoff,
    inflow,
    slip,
    occluded,
    g_eq,
    g_sub,
    status,
    vessel,
    saddle,
    t_out,
    at_end,
):  # pragma: no cover
    """Pulmonary leg, fragments in the given (arrival) order; returns the vessel transitions made.

    Writes status (LODGED / PASSED_DISTAL / ARRESTED_HEART), vessel id, saddle flag, time, and
    ``at_end`` (1: position is the vessel's outlet, 0: its inlet). Occludes as it goes.
    """
    n = frag_d.shape[0]
    max_steps = uniforms.shape[1]
    steps = 0
    for f in range(n):
        d = frag_d[f]
        m = margin[f]
        t = t_arrival[f]
        saddle[f] = 0
        if lodges(d, diameter[0], m):
            status[f] = ARRESTED_HEART
            vessel[f] = -1
            t_out[f] = t
            at_end[f] = 0
            continue
        v = 0
        steps += 1
        if g_eq[0] <= 0.0:  # nothing flows through the trunk: stuck at its inlet, occluding it
            if not occluded[0]:
                lodge(0, parent, child_ptr, child_idx, resistance, distal_g, occluded, g_eq, g_sub)
            status[f] = LODGED
            vessel[f] = 0
            t_out[f] = t
            at_end[f] = 0
            continue
        q = inflow
        st = ERROR
        for k in range(max_steps):
            if q > 0.0:
                t += length[v] / (slip * q / area[v])
            if is_leaf[v]:
                at_end[f] = 1
                if d < cutoff:
                    st = PASSED_DISTAL
                else:
                    st = LODGED
                    lodge(v, parent, child_ptr, child_idx, resistance, distal_g, occluded, g_eq, g_sub)
                break
            lo = child_ptr[v]
            hi = child_ptr[v + 1]
            if branched[f] and hi - lo >= 2:
                fits = False
                for j in range(lo, hi):
                    c = child_idx[j]
                    if g_eq[c] > 0.0 and not lodges(d, diameter[c], m):
                        fits = True
                if not fits:  # saddle embolus across the bifurcation
                    st = LODGED
                    saddle[f] = 1
                    at_end[f] = 1
                    lodge(v, parent, child_ptr, child_idx, resistance, distal_g, occluded, g_eq, g_sub)
                    break
            j = choose_branch(lo, hi, child_idx, g_eq, uniforms[f, k])
            if j < 0:  # no flow downstream (all children occluded): stuck at the outlet of v
                st = LODGED
                at_end[f] = 1
                lodge(v, parent, child_ptr, child_idx, resistance, distal_g, occluded, g_eq, g_sub)
                break
            c = child_idx[j]
            q = q * g_eq[c] / g_sub[v]
            steps += 1
            v = c
            if lodges(d, diameter[c], m):
                st = LODGED
                at_end[f] = 0
                lodge(c, parent, child_ptr, child_idx, resistance, distal_g, occluded, g_eq, g_sub)
                break
        status[f] = st
        vessel[f] = v
        t_out[f] = t
    return steps


# ---------------------------------------------------------------------- plain-numpy references


def advect_numpy(
    edge0,
    offset,
    frag_d,
    margin,
    uniforms,
    out_ptr,
    out_edge,
    out_node,
    edge_len,
    edge_d,
    edge_speed,
    edge_flow,
    edge_down,
    outlet,
    t0,
    status,
    edge_out,
    t_out,
) -> int:
    """Vectorised numpy twin of :func:`advect` (all fragments step together, same arithmetic)."""
    n = edge0.shape[0]
    e = edge0.copy()
    t = t0.astype(np.float64).copy()
    st = np.full(n, ERROR, dtype=np.int8)
    flowing = edge_down[e] >= 0
    st[~flowing] = LODGED_VEIN
    rem = np.maximum(edge_len[e] - offset, 0.0)
    t = np.where(flowing, t + rem / edge_speed[e], t)
    node = np.where(flowing, edge_down[e], -1)
    active = flowing.copy()
    n_out = np.diff(out_ptr)
    width = max(int(n_out.max()) if n_out.size else 0, 1)
    steps = 0
    for k in range(uniforms.shape[1]):
        at_outlet = active & (node == outlet)
        st[at_outlet] = IN_HEART
        active &= ~at_outlet
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        nd = node[idx]
        cols = out_ptr[nd][:, None] + np.arange(width)[None, :]
        valid = cols < out_ptr[nd + 1][:, None]
        w = np.where(valid, edge_flow[out_edge[np.where(valid, cols, 0)]], 0.0)
        j = _choose_rows(w, uniforms[idx, k])
        dead = j < 0
        st[idx[dead]] = LODGED_VEIN
        active[idx[dead]] = False
        idx, j, cols = idx[~dead], j[~dead], cols[~dead]
        nxt = out_edge[cols[np.arange(idx.size), j]]
        steps += idx.size
        stuck = frag_d[idx] > edge_d[nxt] * (1.0 + margin[idx])
        e[idx] = nxt
        st[idx[stuck]] = LODGED_VEIN
        active[idx[stuck]] = False
        go = idx[~stuck]
        t[go] = t[go] + edge_len[e[go]] / edge_speed[e[go]]
        node[go] = out_node[cols[np.arange(idx.size), j][~stuck]]
    st[active & (node == outlet)] = IN_HEART
    status[:] = st
    edge_out[:] = e
    t_out[:] = t
    return steps


def _choose_rows(w: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Row-wise :func:`choose_branch` on a padded weight matrix (-1 where a row sums to zero)."""
    acc = np.cumsum(w, axis=1)
    total = acc[:, -1]
    x = u * total
    hit = x[:, None] < acc
    j = np.where(hit.any(axis=1), hit.argmax(axis=1), -1)
    over = (j < 0) & (total > 0.0)  # u * total rounded up to total: last nonzero column
    if over.any():
        nz = w[over] > 0.0
        j[over] = w.shape[1] - 1 - nz[:, ::-1].argmax(axis=1)
    return np.where(total > 0.0, j, -1)


def descend_numpy(
    frag_d,
    margin,
    branched,
    t_arrival,
    uniforms,
    parent,
    child_ptr,
    child_idx,
    diameter,
    length,
    area,
    resistance,
    distal_g,
    is_leaf,
    cutoff,
    inflow,
    slip,
    occluded,
    g_eq,
    g_sub,
    status,
    vessel,
    saddle,
    t_out,
    at_end,
) -> int:
    """Numpy twin of :func:`descend`: vectorised descents in rounds.

    Flows change only when a fragment lodges, so all pending fragments descend together under the
    current flows; results are kept up to and including the first (in arrival order) that
    occludes a vessel, that occlusion is applied (same ancestor update), and the rest go again.
    """
    n = frag_d.shape[0]
    width = int(np.diff(child_ptr).max())
    start = 0
    steps = 0
    while start < n:
        idx = np.arange(start, n)
        res = _descend_round(
            frag_d[idx], margin[idx], branched[idx], t_arrival[idx], uniforms[idx], child_ptr, child_idx,
            diameter, length, area, is_leaf, cutoff, inflow, slip, g_eq, g_sub, width, bool(occluded[0]),
        )  # fmt: skip
        r_status, r_vessel, r_saddle, r_t, r_end, r_steps, r_occ = res
        hits = np.flatnonzero(r_occ)
        keep = hits[0] + 1 if hits.size else idx.size
        sl = slice(start, start + keep)
        status[sl], vessel[sl], saddle[sl], t_out[sl], at_end[sl] = (
            r_status[:keep], r_vessel[:keep], r_saddle[:keep], r_t[:keep], r_end[:keep],
        )  # fmt: skip
        steps += int(r_steps[:keep].sum())
        if hits.size:
            _lodge_numpy(
                int(r_vessel[hits[0]]),
                parent,
                child_ptr,
                child_idx,
                resistance,
                distal_g,
                occluded,
                g_eq,
                g_sub,
            )
        start += keep
    return steps


def _lodge_numpy(v, parent, child_ptr, child_idx, resistance, distal_g, occluded, g_eq, g_sub) -> None:
    """Python twin of :func:`sim.physics.pulmonary_tree.update_ancestors` (same sums in the same order)."""
    occluded[v] = 1
    g_eq[v] = 0.0
    g_sub[v] = 0.0
    a = parent[v]
    while a >= 0 and not occluded[a]:
        s = distal_g[a]
        for c in child_idx[child_ptr[a] : child_ptr[a + 1]]:
            s += g_eq[c]
        g_sub[a] = s
        g_eq[a] = s / (1.0 + resistance[a] * s) if s > 0.0 else 0.0
        a = parent[a]


def _descend_round(d, m, branched, t, uniforms, child_ptr, child_idx, diameter, length, area, is_leaf,
                   cutoff, inflow, slip, g_eq, g_sub, width, trunk_occluded):  # fmt: skip
    n = d.shape[0]
    status = np.full(n, ERROR, dtype=np.int8)
    vessel = np.zeros(n, dtype=np.int64)
    saddle = np.zeros(n, dtype=np.int8)
    at_end = np.zeros(n, dtype=np.int8)
    steps = np.zeros(n, dtype=np.int64)
    occ = np.zeros(n, dtype=bool)
    t = t.astype(np.float64).copy()
    arrested = d > diameter[0] * (1.0 + m)
    status[arrested] = ARRESTED_HEART
    vessel[arrested] = -1
    active = ~arrested
    steps[active] = 1
    if g_eq[0] <= 0.0:  # nothing flows through the trunk: every fragment is stuck at its inlet
        status[active] = LODGED
        first = np.flatnonzero(active)
        if first.size and not trunk_occluded:
            occ[first[0]] = True  # the first one occludes the trunk (no change of flows)
        return status, vessel, saddle, t, at_end, steps, occ
    q = np.full(n, inflow)
    for k in range(uniforms.shape[1]):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        v = vessel[idx]
        moving = q[idx] > 0.0
        t[idx[moving]] = t[idx[moving]] + length[v[moving]] / (slip * q[idx[moving]] / area[v[moving]])
        leaf = is_leaf[v]
        li = idx[leaf]
        at_end[li] = 1
        small = d[li] < cutoff
        status[li] = np.where(small, PASSED_DISTAL, LODGED)
        occ[li[~small]] = True
        active[li] = False
        idx, v = idx[~leaf], v[~leaf]
        if idx.size == 0:
            continue
        cols = child_ptr[v][:, None] + np.arange(width)[None, :]
        valid = cols < child_ptr[v + 1][:, None]
        ch = child_idx[np.where(valid, cols, 0)]
        w = np.where(valid, g_eq[ch], 0.0)
        # saddle: branched fragment, >= 2 children, none with flow that it fits
        fits = (w > 0.0) & ~(d[idx][:, None] > diameter[ch] * (1.0 + m[idx][:, None]))
        sad = (branched[idx] != 0) & (valid.sum(axis=1) >= 2) & ~fits.any(axis=1)
        j = _choose_rows(w, uniforms[idx, k])
        stuck = ~sad & (j < 0)
        stop = sad | stuck
        si = idx[stop]
        status[si] = LODGED
        saddle[idx[sad]] = 1
        at_end[si] = 1
        occ[si] = True
        active[si] = False
        idx, v, ch, j = idx[~stop], v[~stop], ch[~stop], j[~stop]
        c = ch[np.arange(idx.size), j]
        q[idx] = q[idx] * g_eq[c] / g_sub[v]
        steps[idx] += 1
        vessel[idx] = c
        wedged = d[idx] > diameter[c] * (1.0 + m[idx])
        wi = idx[wedged]
        status[wi] = LODGED
        at_end[wi] = 0
        occ[wi] = True
        active[wi] = False
    return status, vessel, saddle, t, at_end, steps, occ


# ----------------------------------------------------------------------------------- driver


@dataclass
class TransportResult:
    """Where every fragment ended, the lungs' state and the work done."""

    emboli: dict[str, np.ndarray]  # one row per fragment (see transport_fragments)
    metrics: LungMetrics
    status: np.ndarray  # int8 updated fragment statuses
    occluded: np.ndarray  # int8 per pulmonary vessel
    flows_m3_s: np.ndarray  # pulmonary flows after all occlusions
    venous_steps: int
    pulmonary_steps: int


@dataclass
class VenousRouting:
    """Outflow CSR of a venous flow snapshot (for :func:`advect`)."""

    out_ptr: np.ndarray
    out_edge: np.ndarray
    out_node: np.ndarray
    edge_down: np.ndarray
    edge_speed: np.ndarray  # m/s of a fragment (slip * mean blood velocity)
    edge_flow: np.ndarray  # |Q| (m^3/s) of flowing edges, 0 otherwise: weight of branch choices
    max_steps: int


def venous_routing(veins: VenousFlowSnapshot, slip: float) -> VenousRouting:
    """Directed outflow structure of the venous graph from its signed edge flows."""
    u = np.asarray(veins.edge_u, dtype=np.int64)
    v = np.asarray(veins.edge_v, dtype=np.int64)
    q = np.asarray(veins.edge_flow_m3_s, dtype=np.float64)
    d = np.asarray(veins.edge_diameter_m, dtype=np.float64)
    n_nodes = int(np.asarray(veins.node_pos_m).shape[0])
    n_e = u.shape[0]
    if not (v.shape == q.shape == d.shape == (n_e,)) or np.asarray(veins.edge_length_m).shape != (n_e,):
        raise GeometryError("venous snapshot: edge arrays differ in length")
    if n_e and (min(u.min(), v.min()) < 0 or max(u.max(), v.max()) >= n_nodes):
        raise GeometryError(f"venous snapshot: edge endpoints outside 0..{n_nodes - 1}")
    if not 0 <= int(veins.outlet_node) < n_nodes:
        raise GeometryError(f"venous snapshot: outlet_node {veins.outlet_node} outside 0..{n_nodes - 1}")
    bad = np.flatnonzero(~(d > 0.0))
    if bad.size:
        raise GeometryError(f"venous snapshot: edge {bad[0]} has diameter {d[bad[0]]}")
    qmax = float(np.abs(q).max()) if n_e else 0.0
    flowing = np.abs(q) > NO_FLOW_FRACTION * qmax
    up = np.where(q > 0, u, v)
    down = np.where(flowing, np.where(q > 0, v, u), -1)
    speed = np.where(flowing, slip * np.abs(q) / (np.pi * d**2 / 4.0), 0.0)
    fe = np.flatnonzero(flowing)
    order = fe[np.argsort(up[fe], kind="stable")]
    out_ptr = np.zeros(n_nodes + 1, dtype=np.int64)
    out_ptr[1:] = np.cumsum(np.bincount(up[fe], minlength=n_nodes))
    return VenousRouting(
        out_ptr=out_ptr, out_edge=order.astype(np.int64), out_node=down[order].astype(np.int64),
        edge_down=down.astype(np.int64), edge_speed=speed,
        edge_flow=np.where(flowing, np.abs(q), 0.0), max_steps=_longest_path(n_nodes, up[fe], down[fe]) + 1,
    )  # fmt: skip


def _longest_path(n_nodes: int, src: np.ndarray, dst: np.ndarray) -> int:
    """Edges on the longest directed path (Kahn order); the edge count if the flows form a cycle."""
    indeg = np.bincount(dst, minlength=n_nodes)
    adj: list[list[int]] = [[] for _ in range(n_nodes)]
    for a, b in zip(src.tolist(), dst.tolist(), strict=True):
        adj[a].append(b)
    stack = [i for i in range(n_nodes) if indeg[i] == 0]
    depth = np.zeros(n_nodes, dtype=np.int64)
    seen = 0
    while stack:
        a = stack.pop()
        seen += 1
        for b in adj[a]:
            depth[b] = max(depth[b], depth[a] + 1)
            indeg[b] -= 1
            if indeg[b] == 0:
                stack.append(b)
    if seen < n_nodes:
        return int(min(src.size, 4096))
    return int(depth.max()) if n_nodes else 0


@register("lodging", "diameter_margin")
class DiameterMargin:
    """A fragment lodges in the first vessel it is too wide for: d > D (1 + margin).

    margin = deformability_margin * (1 - c(a)): fresh, doughy cement squeezes into a vessel up to
    (1 + margin) times narrower than itself, set cement not at all (c(a) the cure degree of
    :mod:`sim.physics.rheology` at the fragment's equivalent age a). Lodging of vessel-cast
    emboli in the first vessel narrower than the cast: Venmans et al. 2010 AJNR 31:1451 (emboli in
    peripheral small vessels). ``deformability_margin`` is a modelling estimate [U]. Limiting
    case (tested): set cement (c = 1) has margin 0, so it lodges exactly where d > D.
    """

    def __init__(self, deformability_margin: float):
        self.deformability_margin = float(deformability_margin)

    @classmethod
    def from_params(cls, lungs: LungParams) -> DiameterMargin:
        return cls(lungs.deformability_margin)

    def margin(self, cement: CementModel, age_s: np.ndarray) -> np.ndarray:
        """Relative width a fragment of equivalent age ``age_s`` may exceed a vessel by and pass."""
        cure = np.asarray(cure_degree(cement, age_s), dtype=np.float64)
        return self.deformability_margin * (1.0 - cure)


def transport_fragments(
    fragments: FragmentSet,
    veins: VenousFlowSnapshot,
    tree: PulmonaryTree,
    cement: CementModel,
    clock: CureClock,
    lungs: LungParams,
    rng: np.random.Generator,
    lodging: DiameterMargin | None = None,
    use_numba: bool = True,
) -> TransportResult:
    """Move every ACTIVE fragment through the veins, the right heart and the pulmonary tree.

    ``emboli`` columns (one row per fragment, SI): fragment_id, volume_m3, length_m, diameter_m,
    branched, status, vessel_id (pulmonary, -1 if none), lobe (index into tree.lobe_names, -1),
    order (-1), vessel_diameter_m (nan), time_s (lodging / passing / arrest / vein-lodging time),
    x_m, y_m, z_m (where it stopped), saddle, vein_edge (last venous edge), heart_arrival_s (nan if
    it never arrived), margin (pulmonary deformability margin at arrival). Fragments that were
    not ACTIVE keep their status and get no position. ``use_numba=False`` runs the numpy twins.
    """
    slip = float(lungs.slip_factor)
    if not slip > 0.0:
        raise ConfigError(f"lungs.slip_factor = {slip}: must be > 0")
    lodging = lodging or DiameterMargin.from_params(lungs)
    n = len(fragments)
    for name, arr in fragments.as_columns().items():
        if np.asarray(arr).shape != (n,):
            raise GeometryError(f"FragmentSet.{name} has shape {np.asarray(arr).shape}, expected ({n},)")
    route = venous_routing(veins, slip)
    e_len = np.asarray(veins.edge_length_m, dtype=np.float64)
    e_d = np.asarray(veins.edge_diameter_m, dtype=np.float64)
    if n and (fragments.edge.min() < 0 or fragments.edge.max() >= e_len.shape[0]):
        raise GeometryError(f"FragmentSet.edge outside 0..{e_len.shape[0] - 1}")

    status = np.asarray(fragments.status, dtype=np.int8).copy()
    act = np.flatnonzero(status == ACTIVE)
    d_all = np.asarray(fragments.diameter_m, dtype=np.float64)
    margin_birth = lodging.margin(cement, fragments.cure_age_s[act])
    uni_v = rng.random((act.size, max(route.max_steps, 1)))
    v_status = np.zeros(act.size, dtype=np.int8)
    v_edge = np.zeros(act.size, dtype=np.int64)
    v_t = np.zeros(act.size)
    adv = advect if use_numba else advect_numpy
    venous_steps = int(adv(
        np.ascontiguousarray(fragments.edge[act], dtype=np.int64),
        np.ascontiguousarray(fragments.offset_m[act], dtype=np.float64),
        np.ascontiguousarray(d_all[act]), margin_birth, uni_v, route.out_ptr, route.out_edge,
        route.out_node, e_len, e_d, route.edge_speed, route.edge_flow, route.edge_down,
        int(veins.outlet_node),
        np.ascontiguousarray(fragments.birth_time_s[act], dtype=np.float64), v_status, v_edge, v_t,
    ))  # fmt: skip
    status[act] = v_status

    # ---- right heart and pulmonary tree, in order of arrival
    heart = act[v_status == IN_HEART]
    t_heart = v_t[v_status == IN_HEART]
    order = np.lexsort((heart, t_heart))
    heart, t_heart = heart[order], t_heart[order]
    age = clock.aged_in_body_s(fragments.cure_age_s[heart], t_heart - fragments.birth_time_s[heart])
    margin_p = lodging.margin(cement, age)
    occluded = np.zeros(tree.n_vessels, dtype=np.int8)
    g_eq, g_sub = tree.baseline_conductance()
    uni_p = rng.random((heart.size, tree.max_depth + 2))
    p_status = np.zeros(heart.size, dtype=np.int8)
    p_vessel = np.zeros(heart.size, dtype=np.int64)
    p_saddle = np.zeros(heart.size, dtype=np.int8)
    p_t = np.zeros(heart.size)
    p_end = np.zeros(heart.size, dtype=np.int8)
    area = np.pi * tree.diameter_m**2 / 4.0
    desc = descend if use_numba else descend_numpy
    pulmonary_steps = int(desc(
        np.ascontiguousarray(d_all[heart]), margin_p,
        np.ascontiguousarray(fragments.branched[heart], dtype=np.int8), t_heart + RIGHT_HEART_TRANSIT_S,
        uni_p, tree.parent, tree.child_ptr, tree.child_idx, tree.diameter_m, tree.length_m, area,
        tree.resistance, tree.distal_conductance, tree.is_leaf, tree.cutoff_diameter_m,
        tree.cardiac_output_m3_s, slip, occluded, g_eq, g_sub, p_status, p_vessel, p_saddle, p_t, p_end,
    ))  # fmt: skip
    status[heart] = p_status

    emboli = _emboli_table(fragments, status, act, v_edge, v_t, heart, t_heart, margin_p,
                           p_vessel, p_saddle, p_t, p_end, tree, veins)  # fmt: skip
    flows = _flows_from_conductance(tree, g_eq, g_sub)
    return TransportResult(
        emboli=emboli, metrics=lung_metrics(tree, occluded), status=status, occluded=occluded,
        flows_m3_s=flows, venous_steps=venous_steps, pulmonary_steps=pulmonary_steps,
    )  # fmt: skip


def _flows_from_conductance(tree: PulmonaryTree, g_eq: np.ndarray, g_sub: np.ndarray) -> np.ndarray:
    from sim.physics.pulmonary_tree import flow_kernel

    n = tree.n_vessels
    q, p_in, p_out = np.zeros(n), np.zeros(n), np.zeros(n)
    flow_kernel(tree.child_ptr, tree.child_idx, tree.resistance, g_eq, g_sub, tree.cardiac_output_m3_s,
                tree.left_atrial_pressure_pa, q, p_in, p_out)  # fmt: skip
    return q


def _emboli_table(fragments, status, act, v_edge, v_t, heart, t_heart, margin_p, p_vessel, p_saddle,
                  p_t, p_end, tree, veins) -> dict[str, np.ndarray]:  # fmt: skip
    n = len(fragments)
    nan = np.full(n, np.nan)
    table: dict[str, np.ndarray] = {
        "fragment_id": np.arange(n, dtype=np.int64),
        "volume_m3": np.asarray(fragments.volume_m3, dtype=np.float64),
        "length_m": np.asarray(fragments.length_m, dtype=np.float64),
        "diameter_m": np.asarray(fragments.diameter_m, dtype=np.float64),
        "branched": np.asarray(fragments.branched, dtype=np.int8),
        "status": status,
        "vessel_id": np.full(n, -1, dtype=np.int64),
        "lobe": np.full(n, -1, dtype=np.int64),
        "order": np.full(n, -1, dtype=np.int64),
        "vessel_diameter_m": nan.copy(),
        "time_s": nan.copy(),
        "x_m": nan.copy(),
        "y_m": nan.copy(),
        "z_m": nan.copy(),
        "saddle": np.zeros(n, dtype=np.int8),
        "vein_edge": np.full(n, -1, dtype=np.int64),
        "heart_arrival_s": nan.copy(),
        "margin": nan.copy(),
    }
    table["vein_edge"][act] = v_edge
    table["time_s"][act] = v_t
    # venous stops: position at the upstream end of the edge reached (where the fragment wedged)
    vein_stop = act[status[act] == LODGED_VEIN]
    if vein_stop.size:
        e = table["vein_edge"][vein_stop]
        q = np.asarray(veins.edge_flow_m3_s)[e]
        node = np.where(q >= 0, np.asarray(veins.edge_u)[e], np.asarray(veins.edge_v)[e])
        pos = np.asarray(veins.node_pos_m, dtype=np.float64)[node]
        table["x_m"][vein_stop], table["y_m"][vein_stop], table["z_m"][vein_stop] = pos.T
    table["heart_arrival_s"][heart] = t_heart
    table["margin"][heart] = margin_p
    table["time_s"][heart] = p_t
    inside = p_vessel >= 0
    h = heart[inside]
    v = p_vessel[inside]
    table["vessel_id"][h] = v
    table["lobe"][h] = tree.lobe[v]
    table["order"][h] = tree.order[v]
    table["vessel_diameter_m"][h] = tree.diameter_m[v]
    table["saddle"][heart] = p_saddle
    pos = np.where(p_end[inside][:, None] == 1, tree.end_m[v], tree.start_m[v])
    table["x_m"][h], table["y_m"][h], table["z_m"][h] = pos.T
    return table
