"""Pulmonary arterial tree: morphometric generation, Poiseuille flow, occlusion and perfusion metrics.

Tree (data and sources in ``geometries/pulmonary/``):

* named proximal arteries: main PA -> RPA / LPA -> right upper lobe (truncus anterior) and right
  interlobar artery -> middle / lower lobe; LPA -> left upper / lower lobe; each lobar artery
  feeds its segmental arteries (10 per lung, Qanadli et al. 2001 scheme).
* below the segmental arteries, a seeded Murray tree: each vessel splits into 2 (or 3) children
  with flow fractions a_i ~ Dirichlet, diameters ``d_i = D a_i^(1/m)`` so that
  ``D^m = sum d_i^m`` exactly (Murray exponent m = 2.92, Dong et al. 2020), down to the cutoff
  diameter (a vessel stops branching when it cannot give all children >= cutoff). Lengths follow
  the Olufsen et al. 2012 fit to Huang et al. 1996, ``L = 12.4 r^1.1`` (mm), per Murray segment
  scaled by ``segment_length_factor`` and a seeded log-normal scatter. Orders are diameter-defined
  Strahler orders (Huang et al. 1996): a vessel belongs to the order whose tabulated mean
  diameter is nearest on a log scale.
* segmental diameters are sized from the lobar perfusion data, ``D_s = D_13 (f_s / f_mean)^(1/m)``
  with ``D_13`` Huang's order-13 diameter; each leaf drains into a lumped distal (small-artery +
  capillary + venous) conductance ``g = K w d^m`` (a self-similar Murray subtree below a vessel
  of diameter d conducts ~ d^m), so that lobar perfusion *emerges* from the tree's own
  resistances; ``K`` is set so that PVR = (mPAP - LAP) / CO.
* 3D layout: volume filling in the spirit of Tawhai et al. (2000, 2004): every segmental artery
  owns a cloud of points of its lung territory; a vessel heads for the centroid of its cloud and
  its cloud is cut along its longest axis into parts proportional to its children's flows.

Flow (:func:`solve_tree_flow`): Poiseuille resistance ``R = 128 mu L / (pi d^4)`` per vessel; a
tree is solved in O(N) by two sweeps -- upward, the equivalent conductance of every subtree,
``G_v = S_v / (1 + R_v S_v)`` with ``S_v`` the sum of the children's ``G`` (or the leaf's distal
conductance); downward, the flow split ``Q_c = Q_v G_c / S_v`` at a constant cardiac output.
An occluded vessel has ``G = 0``. After an occlusion only its ancestors' ``G`` change
(:func:`occlude_vessel`, O(depth)), which is what the transport kernels use between fragments.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numba
import numpy as np

from sim.core.errors import ConfigError, GeometryError
from sim.core.geometry_data import load_geometry_yaml
from sim.core.labels import LOBE_NAMES
from sim.core.parameters import LungParams
from sim.core.units import L_PER_MIN_M3_PER_S, MM_M, MMHG_PA

DATA_FILE = "pulmonary/pulmonary_arteries.yaml"
QANADLI_MAX = 40  # 20 segmental arteries x weight 2


def load_pulmonary_data() -> dict[str, Any]:
    """The pulmonary morphometry / perfusion / layout table of ``geometries/pulmonary/``."""
    data = load_geometry_yaml(DATA_FILE)
    if not isinstance(data, dict) or "huang1996_orders" not in data or "lobes" not in data:
        raise GeometryError(f"geometries/{DATA_FILE}: missing 'huang1996_orders' or 'lobes'")
    if tuple(data["lobes"]) != LOBE_NAMES:
        raise GeometryError(f"geometries/{DATA_FILE}: lobes must be {LOBE_NAMES}, got {tuple(data['lobes'])}")
    total = sum(float(v["perfusion_fraction"]) for v in data["lobes"].values())
    if abs(total - 1.0) > 1e-6:
        raise GeometryError(f"geometries/{DATA_FILE}: lobar perfusion fractions sum to {total}, not 1")
    return data


def huang_order_table(data: dict[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(orders, mean diameters in m) of Huang et al. 1996, plus order 16 = main PA (ratio 1/0.637)."""
    data = data or load_pulmonary_data()
    table = data["huang1996_orders"]
    orders = np.array(sorted(int(k) for k in table), dtype=np.int64)
    diam = np.array([float(table[k][0]) for k in orders]) * MM_M
    orders = np.append(orders, orders[-1] + 1)
    diam = np.append(diam, diam[-1] / 0.637)
    return orders, diam


def diameter_order(diameter_m: np.ndarray, data: dict[str, Any] | None = None) -> np.ndarray:
    """Diameter-defined Strahler order: the tabulated order nearest in log-diameter."""
    orders, diam = huang_order_table(data)
    edges = np.sqrt(diam[:-1] * diam[1:])  # geometric midpoints between consecutive orders
    return orders[np.searchsorted(edges, np.asarray(diameter_m), side="right")]


@dataclass
class PulmonaryTree:
    """A pulmonary arterial tree as flat arrays (vessel 0 = main PA; children have larger ids)."""

    parent: np.ndarray  # int64 (n,), -1 for the root
    child_ptr: np.ndarray  # int64 (n+1,) CSR offsets into child_idx
    child_idx: np.ndarray  # int64
    diameter_m: np.ndarray
    length_m: np.ndarray
    order: np.ndarray  # int64 diameter-defined Strahler order (16 = main PA)
    depth: np.ndarray  # int64 generation (0 = main PA)
    lobe: np.ndarray  # int64 index into LOBE_NAMES, -1 above the lobar arteries
    segment: np.ndarray  # int64 index into segment_names, -1 above the segmental arteries
    start_m: np.ndarray  # (n, 3) patient frame
    end_m: np.ndarray  # (n, 3)
    is_leaf: np.ndarray  # bool
    resistance: np.ndarray  # Pa s / m^3, Poiseuille
    distal_conductance: np.ndarray  # m^3 / (Pa s), > 0 at leaves only
    cardiac_output_m3_s: float
    left_atrial_pressure_pa: float
    mean_pap_pa: float
    blood_viscosity_pa_s: float
    cutoff_diameter_m: float
    murray_exponent: float
    segment_names: tuple[str, ...]
    segment_vessels: np.ndarray  # int64 (20,): vessel id of each segmental artery
    lobe_vessels: np.ndarray  # int64 (5,): vessel id of each lobar artery
    baseline_flow_m3_s: np.ndarray
    target_lobe_fractions: np.ndarray  # data the tree was sized from
    names: dict[int, str] = field(default_factory=dict)  # named proximal vessels
    meta: dict[str, Any] = field(default_factory=dict)
    lobe_names: tuple[str, ...] = LOBE_NAMES

    @property
    def n_vessels(self) -> int:
        return int(self.parent.shape[0])

    @property
    def max_depth(self) -> int:
        return int(self.depth.max())

    def children(self, v: int) -> np.ndarray:
        return self.child_idx[self.child_ptr[v] : self.child_ptr[v + 1]]

    def baseline_conductance(self) -> tuple[np.ndarray, np.ndarray]:
        """(G_eq, S) of the unoccluded tree (see module docstring)."""
        return subtree_conductance(self, np.zeros(self.n_vessels, dtype=np.int8))


# ------------------------------------------------------------------------------------ kernels


@numba.njit(cache=True)
def conductance_kernel(child_ptr, child_idx, resistance, distal_g, occluded, g_eq, g_sub):  # pragma: no cover
    """Upward sweep: S_v = g_distal_v + sum_c G_c ; G_v = S_v / (1 + R_v S_v); occluded -> 0."""
    n = child_ptr.shape[0] - 1
    for v in range(n - 1, -1, -1):
        if occluded[v]:
            g_sub[v] = 0.0
            g_eq[v] = 0.0
            continue
        s = distal_g[v]
        for j in range(child_ptr[v], child_ptr[v + 1]):
            s += g_eq[child_idx[j]]
        g_sub[v] = s
        g_eq[v] = s / (1.0 + resistance[v] * s) if s > 0.0 else 0.0


@numba.njit(cache=True)
def update_ancestors(
    v, parent, child_ptr, child_idx, resistance, distal_g, occluded, g_eq, g_sub
):  # pragma: no cover
    """Occlude vessel v and refresh G / S of its ancestors (same arithmetic as the full sweep)."""
    occluded[v] = 1
    g_eq[v] = 0.0
    g_sub[v] = 0.0
    a = parent[v]
    while a >= 0:
        if occluded[a]:
            break
        s = distal_g[a]
        for j in range(child_ptr[a], child_ptr[a + 1]):
            s += g_eq[child_idx[j]]
        g_sub[a] = s
        g_eq[a] = s / (1.0 + resistance[a] * s) if s > 0.0 else 0.0
        a = parent[a]


@numba.njit(cache=True)
def flow_kernel(
    child_ptr, child_idx, resistance, g_eq, g_sub, inflow, p_sink, q, p_in, p_out
):  # pragma: no cover
    """Downward sweep at constant inflow: Q_c = Q_v G_c / S_v; pressures from the sink up."""
    n = child_ptr.shape[0] - 1
    q[0] = inflow if g_eq[0] > 0.0 else 0.0
    p_in[0] = p_sink + inflow / g_eq[0] if g_eq[0] > 0.0 else np.inf
    for v in range(n):
        p_out[v] = p_in[v] - q[v] * resistance[v]
        for j in range(child_ptr[v], child_ptr[v + 1]):
            c = child_idx[j]
            q[c] = q[v] * g_eq[c] / g_sub[v] if g_sub[v] > 0.0 else 0.0
            p_in[c] = p_out[v]


def subtree_conductance(tree: PulmonaryTree, occluded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(G_eq, S) per vessel for an occlusion mask (int8/bool, nonzero = occluded)."""
    n = tree.n_vessels
    g_eq = np.zeros(n)
    g_sub = np.zeros(n)
    conductance_kernel(
        tree.child_ptr, tree.child_idx, tree.resistance, tree.distal_conductance,
        np.ascontiguousarray(occluded, dtype=np.int8), g_eq, g_sub,
    )  # fmt: skip
    return g_eq, g_sub


def solve_tree_flow(
    tree: PulmonaryTree, occluded_mask: np.ndarray | None = None, inflow_m3_s: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Poiseuille flow of the tree at constant inflow (default: cardiac output).

    Returns ``(flows, pressures)``: flow per vessel (m^3/s) and pressure (Pa) at each vessel's
    inlet and outlet, shape (n, 2). The sink at every leaf's distal bed is the left atrial
    pressure. An all-occluded tree has zero flow and infinite inlet pressure.
    """
    n = tree.n_vessels
    occ = np.zeros(n, dtype=np.int8) if occluded_mask is None else np.asarray(occluded_mask).astype(np.int8)
    if occ.shape != (n,):
        raise GeometryError(f"solve_tree_flow: occluded_mask has shape {occ.shape}, expected ({n},)")
    g_eq, g_sub = subtree_conductance(tree, occ)
    q = np.zeros(n)
    p_in = np.zeros(n)
    p_out = np.zeros(n)
    inflow = tree.cardiac_output_m3_s if inflow_m3_s is None else float(inflow_m3_s)
    flow_kernel(
        tree.child_ptr, tree.child_idx, tree.resistance, g_eq, g_sub, inflow,
        tree.left_atrial_pressure_pa, q, p_in, p_out,
    )  # fmt: skip
    return q, np.stack([p_in, p_out], axis=1)


def occlude_vessel(
    tree: PulmonaryTree, v: int, occluded: np.ndarray, g_eq: np.ndarray, g_sub: np.ndarray
) -> None:
    """Occlude vessel ``v`` in place, updating the ancestors' conductances (O(depth))."""
    if not 0 <= v < tree.n_vessels:
        raise GeometryError(f"occlude_vessel: vessel id {v} outside 0..{tree.n_vessels - 1}")
    update_ancestors(
        int(v), tree.parent, tree.child_ptr, tree.child_idx, tree.resistance,
        tree.distal_conductance, occluded, g_eq, g_sub,
    )  # fmt: skip


def tree_elements(tree: PulmonaryTree) -> dict[str, np.ndarray]:
    """Huang-style vessel elements: chains of same-order segments joined end to end.

    A segment continues its parent's element when it has the parent's order and is the parent's
    widest child (first in CSR order on ties); otherwise it starts a new element. Returns
    per-element ``order``, ``length_m`` (sum of segments), ``diameter_m`` (length-weighted mean),
    ``lung`` (0 right, 1 left, -1 above the lobar arteries) and per-vessel ``element`` ids.
    """
    n = tree.n_vessels
    widest = np.full(n, -1, dtype=np.int64)
    nchild = np.diff(tree.child_ptr)
    has = np.flatnonzero(nchild > 0)
    best = np.full(n, -np.inf)
    for j in range(int(nchild.max(initial=0))):  # at most a few columns
        rows = has[nchild[has] > j]
        c = tree.child_idx[tree.child_ptr[rows] + j]
        better = tree.diameter_m[c] > best[rows]
        best[rows[better]] = tree.diameter_m[c[better]]
        widest[rows[better]] = c[better]
    par = tree.parent
    cont = np.zeros(n, dtype=bool)
    cont[1:] = (tree.order[1:] == tree.order[par[1:]]) & (widest[par[1:]] == np.arange(1, n))
    element = np.where(cont, -1, np.cumsum(~cont) - 1)
    for _ in range(tree.max_depth + 1):  # propagate element ids down continuing chains
        todo = element < 0
        if not todo.any():
            break
        element[todo] = element[par[todo]]
    n_el = int(element.max()) + 1
    length = np.bincount(element, weights=tree.length_m, minlength=n_el)
    diam = np.bincount(element, weights=tree.length_m * tree.diameter_m, minlength=n_el) / length
    first = np.flatnonzero(~cont)
    lung = np.where(tree.lobe[first] >= 3, 1, np.where(tree.lobe[first] >= 0, 0, -1))
    return {
        "order": tree.order[first],
        "length_m": length,
        "diameter_m": diam,
        "lung": lung,
        "element": element,
    }


# ----------------------------------------------------------------------------------- metrics


@dataclass
class LungMetrics:
    """Perfusion and haemodynamic consequences of the occlusions (constant cardiac output)."""

    lobe_names: tuple[str, ...]
    lobe_perfusion_baseline: np.ndarray  # fraction of cardiac output per lobe, unoccluded
    lobe_perfusion: np.ndarray  # fraction per lobe after the occlusions
    perfusion_lost_fraction: float  # baseline flow of the distal beds that now receive none
    pvr_baseline_pa_s_m3: float
    pvr_pa_s_m3: float
    pvr_rise_fraction: float  # PVR / PVR_baseline - 1
    mpap_pa: float  # mean PA pressure needed to keep the cardiac output
    n_occluded: int
    occluded_by_order: dict[int, int]
    qanadli_index: int  # 0..40 (adapted, see qanadli_index)
    qanadli_percent: float
    segment_obstruction: np.ndarray  # lost flow fraction per segmental artery

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, frac0, frac in zip(
            self.lobe_names, self.lobe_perfusion_baseline, self.lobe_perfusion, strict=True
        ):
            out[f"perfusion_{name}_baseline"] = float(frac0)
            out[f"perfusion_{name}"] = float(frac)
        out.update(
            perfusion_lost_fraction=self.perfusion_lost_fraction,
            pvr_baseline_wood=self.pvr_baseline_pa_s_m3 / WOOD_UNIT,
            pvr_wood=self.pvr_pa_s_m3 / WOOD_UNIT,
            pvr_rise_fraction=self.pvr_rise_fraction,
            mpap_mmhg=self.mpap_pa / MMHG_PA,
            n_occluded_vessels=self.n_occluded,
            qanadli_index=self.qanadli_index,
            qanadli_percent=self.qanadli_percent,
        )
        for k, v in sorted(self.occluded_by_order.items()):
            out[f"occluded_order_{k}"] = v
        return out


WOOD_UNIT = MMHG_PA / L_PER_MIN_M3_PER_S  # 1 mmHg min / L in Pa s / m^3


def lobe_perfusion(tree: PulmonaryTree, flows: np.ndarray) -> np.ndarray:
    """Fraction of the inflow reaching each lobe's distal beds (sum of leaf flows per lobe)."""
    leaves = tree.is_leaf
    per_lobe = np.bincount(tree.lobe[leaves], weights=flows[leaves], minlength=len(LOBE_NAMES))
    total = flows[0]
    return per_lobe / total if total > 0 else per_lobe * 0.0


def qanadli_index(tree: PulmonaryTree, flows: np.ndarray) -> tuple[int, np.ndarray]:
    """Obstruction index adapted from Qanadli et al. 2001 (AJR 176:1415) [S~].

    Qanadli scores each of the 20 segmental arteries 0 (free), 1 (partial) or 2 (total
    occlusion) and counts a proximal embolus as the number of segmental arteries it feeds; max 40.
    Here a segmental artery scores 2 when none of its distal beds receive flow (occluded there or
    upstream) and 1 when some but not all do (an embolus in its subtree: Qanadli counts
    subsegmental emboli as partial obstruction of the segment).
    Returns (index, lost baseline-flow fraction per segmental artery).
    """
    leaves = np.flatnonzero(tree.is_leaf)
    seg = tree.segment[leaves]
    base = tree.baseline_flow_m3_s[leaves]
    lost = base * (flows[leaves] <= 0.0)
    n_seg = len(tree.segment_names)
    frac = np.bincount(seg, weights=lost, minlength=n_seg) / np.bincount(seg, weights=base, minlength=n_seg)
    score = np.where(frac >= 1.0 - 1e-12, 2, np.where(frac > 0.0, 1, 0))
    return int(score.sum()), frac


def lung_metrics(tree: PulmonaryTree, occluded: np.ndarray) -> LungMetrics:
    """Lobar perfusion, perfusion lost, PVR rise, occlusions by order and the obstruction index."""
    occ = np.asarray(occluded).astype(bool)
    flows, pressures = solve_tree_flow(tree, occ)
    co = tree.cardiac_output_m3_s
    pvr0 = (tree.mean_pap_pa - tree.left_atrial_pressure_pa) / co
    p_root = pressures[0, 0]
    pvr = (p_root - tree.left_atrial_pressure_pa) / co
    leaves = tree.is_leaf
    lost = float(tree.baseline_flow_m3_s[leaves & (flows <= 0.0)].sum() / co)
    orders, counts = np.unique(tree.order[occ], return_counts=True)
    index, seg_frac = qanadli_index(tree, flows)
    return LungMetrics(
        lobe_names=LOBE_NAMES,
        lobe_perfusion_baseline=lobe_perfusion(tree, tree.baseline_flow_m3_s),
        lobe_perfusion=lobe_perfusion(tree, flows),
        perfusion_lost_fraction=lost,
        pvr_baseline_pa_s_m3=float(pvr0),
        pvr_pa_s_m3=float(pvr),
        pvr_rise_fraction=float(pvr / pvr0 - 1.0),
        mpap_pa=float(p_root),
        n_occluded=int(occ.sum()),
        occluded_by_order={int(o): int(c) for o, c in zip(orders, counts, strict=True)},
        qanadli_index=index,
        qanadli_percent=100.0 * index / QANADLI_MAX,
        segment_obstruction=seg_frac,
    )


# ------------------------------------------------------------------------------------ builder


def _segment_plan(
    data: dict[str, Any], m: float
) -> tuple[list[tuple[int, str, np.ndarray, float]], np.ndarray]:
    """[(lobe index, segment name, direction hint, flow fraction)], lobar fractions."""
    plan = []
    fracs = []
    for li, name in enumerate(LOBE_NAMES):
        lobe = data["lobes"][name]
        f_lobe = float(lobe["perfusion_fraction"])
        fracs.append(f_lobe)
        segs = lobe["segments"]
        for sname, hint in segs.items():
            h = np.asarray(hint, dtype=np.float64)
            plan.append((li, f"{name}_{sname}", h / np.linalg.norm(h), f_lobe / len(segs)))
    return plan, np.array(fracs)


def _lung_points(spec: dict[str, Any], n: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform points (m) in a half-ellipsoidal lung volume (see the YAML layout notes)."""
    cx, cy = (float(v) * MM_M for v in spec["center_xy_mm"])
    ax, ay = (float(v) * MM_M for v in spec["semi_axes_xy_mm"])
    z0, z1 = float(spec["z_base_mm"]) * MM_M, float(spec["z_apex_mm"]) * MM_M
    out = np.empty((0, 3))
    while out.shape[0] < n:
        u = rng.random((2 * n, 3))
        p = np.column_stack(
            [cx + ax * (2 * u[:, 0] - 1), cy + ay * (2 * u[:, 1] - 1), z0 + (z1 - z0) * u[:, 2]]
        )
        s = 1.0 - ((p[:, 2] - z0) / (z1 - z0)) ** 2
        inside = ((p[:, 0] - cx) / ax) ** 2 + ((p[:, 1] - cy) / ay) ** 2 <= s
        out = np.vstack([out, p[inside]])
    return out[:n]


def _lobe_of_points(points: np.ndarray, right: bool, layout: dict[str, Any]) -> np.ndarray:
    """Lobe index of lung points from the oblique / horizontal fissure planes."""
    key = "right_oblique" if right else "left_oblique"
    ob = layout[key]
    z_fissure = float(ob["z_posterior_mm"]) * MM_M - float(ob["slope"]) * (
        float(ob["y_posterior_mm"]) * MM_M - points[:, 1]
    )
    lower = points[:, 2] < z_fissure
    if right:
        upper = points[:, 2] >= float(layout["right_horizontal_z_mm"]) * MM_M
        return np.where(lower, 2, np.where(upper, 0, 1))
    return np.where(lower, 4, 3)


def _territories(data: dict[str, Any], plan: list, n_points: int, rng: np.random.Generator):
    """Points of each segmental territory, sorted by segment; (points, offsets, lobe centroids)."""
    layout = data["layout"]
    pts_r = _lung_points(layout["right_lung"], n_points // 2, rng)
    pts_l = _lung_points(layout["left_lung"], n_points - n_points // 2, rng)
    pts = np.vstack([pts_r, pts_l])
    lobe = np.concatenate([_lobe_of_points(pts_r, True, layout), _lobe_of_points(pts_l, False, layout)])
    seg_of = np.full(pts.shape[0], -1, dtype=np.int64)
    centroids = np.zeros((len(LOBE_NAMES), 3))
    for li in range(len(LOBE_NAMES)):
        sel = np.flatnonzero(lobe == li)
        if sel.size < 10 * len(plan):
            raise GeometryError(f"lung layout: lobe {LOBE_NAMES[li]} holds only {sel.size} sample points")
        c = pts[sel].mean(axis=0)
        centroids[li] = c
        segs = [si for si, item in enumerate(plan) if item[0] == li]
        rel = pts[sel] - c
        rel /= np.linalg.norm(rel, axis=1, keepdims=True) + 1e-12
        hints = np.stack([plan[si][2] for si in segs])
        seg_of[sel] = np.asarray(segs)[np.argmax(rel @ hints.T, axis=1)]
    order = np.argsort(seg_of, kind="stable")
    pts, seg_of = pts[order], seg_of[order]
    offsets = np.searchsorted(seg_of, np.arange(len(plan) + 1))
    if np.any(np.diff(offsets) == 0):
        empty = [plan[i][1] for i in np.flatnonzero(np.diff(offsets) == 0)]
        raise GeometryError(f"lung layout: segmental territories without points: {empty}")
    return np.ascontiguousarray(pts), offsets, centroids


@numba.njit(cache=True)
def layout_kernel(first, child_ptr, child_idx, weight, length, pts, lo, hi, start, end):  # pragma: no cover
    """Volume-filling layout of vessels ``first..n-1`` (parents placed before children).

    Each vessel points from its start to the centroid of its territory points ``pts[lo:hi]``; the
    territory is sorted along its longest axis and cut into children's parts by flow weight.
    """
    n = child_ptr.shape[0] - 1
    for v in range(first, n):
        a, b = lo[v], hi[v]
        d = np.zeros(3)
        if b > a:
            c = np.zeros(3)
            for i in range(a, b):
                c += pts[i]
            c /= b - a
            d = c - start[v]
        nd = np.sqrt(d[0] ** 2 + d[1] ** 2 + d[2] ** 2)
        if nd < 1e-9:  # no territory left: continue the direction of the parent's segment
            d = end[v] - start[v]
            nd = np.sqrt(d[0] ** 2 + d[1] ** 2 + d[2] ** 2)
            if nd < 1e-12:
                d = np.array([0.0, 0.0, -1.0])
                nd = 1.0
        end[v] = start[v] + d * (length[v] / nd)
        k0, k1 = child_ptr[v], child_ptr[v + 1]
        if k1 == k0:
            continue
        if b - a >= 2:
            # longest axis of the territory by the bounding box extents
            ax = 0
            best = -1.0
            for dim in range(3):
                mn = pts[a, dim]
                mx = pts[a, dim]
                for i in range(a, b):
                    mn = min(mn, pts[i, dim])
                    mx = max(mx, pts[i, dim])
                if mx - mn > best:
                    best = mx - mn
                    ax = dim
            keys = pts[a:b, ax].copy()
            perm = np.argsort(keys, kind="mergesort")
            pts[a:b] = pts[a:b][perm]
        wsum = 0.0
        for j in range(k0, k1):
            wsum += weight[child_idx[j]]
        acc = 0.0
        cut = a
        for j in range(k0, k1):
            ch = child_idx[j]
            acc += weight[ch]
            nxt = a + int(round((b - a) * acc / wsum)) if j < k1 - 1 else b
            lo[ch] = cut
            hi[ch] = max(cut, nxt)
            cut = hi[ch]
            # children start at the parent's end; provisional end = parent direction (fallback)
            start[ch] = end[v]
            end[ch] = end[v] + (end[v] - start[v])


def _grow_murray(
    seg_d: np.ndarray, cutoff: float, m: float, conc: float, p_tri: float, rng: np.random.Generator
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Generations of Murray children below the segmental arteries (vectorised per generation).

    Returns per generation g >= 1 the arrays (parent position within generation g-1, diameter).
    A vessel splits into k = 3 (probability p_tri) or 2 children when all k can be >= cutoff
    (k = 2 tried if 3 cannot); fractions a ~ Dirichlet(conc), mapped to a_min + (1 - k a_min) a
    with a_min = (cutoff / D)^m, so every child is >= cutoff and D^m = sum d^m holds exactly.
    """
    gens_parent: list[np.ndarray] = []
    gens_d: list[np.ndarray] = []
    d = seg_d
    for _ in range(400):
        n = d.shape[0]
        if n == 0:
            break
        a_min = (cutoff / d) ** m
        k = np.where(rng.random(n) < p_tri, 3, 2)
        k = np.where(k * a_min > 1.0, 2, k)
        splits = 2 * a_min <= 1.0
        raw = rng.gamma(conc, 1.0, size=(n, 3))
        raw[:, 2] *= k == 3
        frac = raw / raw.sum(axis=1, keepdims=True)
        frac = a_min[:, None] + (1.0 - k * a_min)[:, None] * frac
        frac[:, 2] *= k == 3
        rows = np.flatnonzero(splits)
        kk = k[rows]
        parent_pos = np.repeat(rows, kk)
        col = np.concatenate([np.arange(c) for c in kk]) if rows.size else np.zeros(0, dtype=np.int64)
        child_d = d[parent_pos] * frac[parent_pos, col] ** (1.0 / m)
        gens_parent.append(parent_pos)
        gens_d.append(child_d)
        d = child_d
    else:
        raise GeometryError("pulmonary tree: Murray branching did not terminate within 400 generations")
    return gens_parent, gens_d


def lobe_fractions_from_volumes(volumes_m3: dict[str, float], template: dict[str, float]) -> dict[str, float]:
    """Lobar perfusion fractions with the lobes of known volume sharing in proportion to volume.

        f_i = (sum_{j known} f_j^template) V_i / sum_{j known} V_j   for the known lobes i,
        f_i = f_i^template                                        for the others,

    i.e. perfusion per unit lobe volume uniform among the measured lobes [U]: the gravitational
    gradient and regional differences are ignored (lobar SPECT fractions follow lobar volume to
    first order). Limiting cases (tested): all five lobes known gives f_i = V_i / sum V; volumes in
    the template's proportions give the template back; the fractions always sum to 1.
    """
    known = {k: float(v) for k, v in volumes_m3.items() if k in template}
    if not known:
        return dict(template)
    if any(not (v > 0.0 and np.isfinite(v)) for v in known.values()):
        raise GeometryError(f"lung lobe volumes must be positive, got {known}")
    share = sum(template[k] for k in known)
    total = sum(known.values())
    return {k: (share * known[k] / total if k in known else float(f)) for k, f in template.items()}


def build_pulmonary_tree(
    lungs: LungParams, rng: np.random.Generator, lobe_volumes_m3: dict[str, float] | None = None
) -> PulmonaryTree:
    """Seeded pulmonary arterial tree for ``lungs`` (cutoff, pressures, posture, cardiac output, blood).

    ``lobe_volumes_m3`` (lobe name -> volume, from CT lobe labels) sets the lobar perfusion shares
    of the lobes given (:func:`lobe_fractions_from_volumes`); the template's otherwise.
    """
    data = load_pulmonary_data()
    if lobe_volumes_m3:
        template = {k: float(v["perfusion_fraction"]) for k, v in data["lobes"].items()}
        fractions = lobe_fractions_from_volumes(lobe_volumes_m3, template)
        data = {
            **data,
            "lobes": {k: {**v, "perfusion_fraction": fractions[k]} for k, v in data["lobes"].items()},
        }
    cutoff = float(lungs.cutoff_diameter_m)
    mpap = float(lungs.mean_pap_pa)
    lap = float(lungs.left_atrial_pressure_pa)
    posture = str(lungs.posture)
    if posture not in data["posture_down_vector"]:
        raise ConfigError(
            f"lungs.posture = {posture!r}: expected one of {', '.join(data['posture_down_vector'])}"
        )
    if not mpap > lap:
        raise ConfigError(f"lungs: mean_pap ({mpap:.0f} Pa) must exceed left_atrial_pressure ({lap:.0f} Pa)")
    co = float(lungs.cardiac_output_m3_per_s)
    mu = float(lungs.blood_viscosity_pa_s)
    m = float(data["murray_exponent"])
    _, huang_d = huang_order_table(data)
    orders_tab, _ = huang_order_table(data)
    d13 = float(huang_d[orders_tab == 13][0])
    if not cutoff < 0.5 * d13:
        raise ConfigError(
            f"lungs.cutoff_diameter = {cutoff / MM_M:.2f} mm: must be below {0.5 * d13 / MM_M:.2f} mm"
        )

    plan, lobe_frac = _segment_plan(data, m)
    n_seg = len(plan)
    f_mean = 1.0 / n_seg
    seg_d = np.array([d13 * (p[3] / f_mean) ** (1.0 / m) for p in plan])

    # ---- named proximal vessels: ids 0..8, then the 20 segmental arteries
    lobe_d = np.array(
        [sum(seg_d[i] ** m for i, p in enumerate(plan) if p[0] == li) ** (1.0 / m) for li in range(5)]
    )
    interlobar_d = (lobe_d[1] ** m + lobe_d[2] ** m) ** (1.0 / m)
    lay = data["layout"]
    lobar_len = float(data["lobar_length_mm"]) * MM_M
    # id: (parent, diameter, length, lobe, name)
    named = [
        (
            -1,
            float(data["main_pa"]["diameter_mm"]) * MM_M,
            float(data["main_pa"]["length_mm"]) * MM_M,
            -1,
            "main_pa",
        ),
        (0, float(data["rpa"]["diameter_mm"]) * MM_M, float(data["rpa"]["length_mm"]) * MM_M, -1, "rpa"),
        (0, float(data["lpa"]["diameter_mm"]) * MM_M, float(data["lpa"]["length_mm"]) * MM_M, -1, "lpa"),
        (1, lobe_d[0], lobar_len, 0, "RUL_artery"),
        (1, interlobar_d, lobar_len, -1, "right_interlobar"),
        (2, lobe_d[3], lobar_len, 3, "LUL_artery"),
        (2, lobe_d[4], lobar_len, 4, "LLL_artery"),
        (4, lobe_d[1], lobar_len, 1, "RML_artery"),
        (4, lobe_d[2], lobar_len, 2, "RLL_artery"),
    ]
    lobe_vessel = np.array([3, 7, 8, 5, 6], dtype=np.int64)
    n_named = len(named)
    seg_ids = n_named + np.arange(n_seg)

    gens_parent, gens_d = _grow_murray(
        seg_d, cutoff, m, float(data["split_concentration"]), float(data["trifurcation_probability"]), rng
    )
    n = n_named + n_seg + sum(g.shape[0] for g in gens_d)
    parent = np.empty(n, dtype=np.int64)
    diam = np.empty(n)
    length = np.empty(n)
    lobe = np.full(n, -1, dtype=np.int64)
    segment = np.full(n, -1, dtype=np.int64)
    depth = np.zeros(n, dtype=np.int64)
    for i, (p, dd, ll, lb, _) in enumerate(named):
        parent[i], diam[i], length[i], lobe[i] = p, dd, ll, lb
        depth[i] = 0 if p < 0 else depth[p] + 1
    parent[seg_ids] = lobe_vessel[[p[0] for p in plan]]
    diam[seg_ids] = seg_d
    lobe[seg_ids] = [p[0] for p in plan]
    segment[seg_ids] = np.arange(n_seg)
    depth[seg_ids] = depth[parent[seg_ids]] + 1
    prev = seg_ids
    pos = n_named + n_seg
    for gp, gd in zip(gens_parent, gens_d, strict=True):
        ids = pos + np.arange(gd.shape[0])
        par = prev[gp]
        parent[ids], diam[ids] = par, gd
        lobe[ids], segment[ids], depth[ids] = lobe[par], segment[par], depth[par] + 1
        prev, pos = ids, pos + gd.shape[0]

    # lengths below the lobar arteries: Olufsen element fit per Murray segment, log-normal scatter
    fit = data["olufsen_length_fit"]
    below = np.arange(n_named, n)
    r_mm = diam[below] / 2.0 / MM_M
    scatter = np.exp(0.25 * rng.standard_normal(below.size) - 0.5 * 0.25**2)
    length[below] = (
        float(data["segment_length_factor"])
        * float(fit["coefficient_mm"])
        * r_mm ** float(fit["exponent"])
        * MM_M
        * scatter
    )
    length[seg_ids] /= float(data["segment_length_factor"])  # a segmental artery is one whole element

    # CSR children (parents precede children, ids grouped by parent in creation order)
    counts = np.bincount(parent[1:], minlength=n)
    child_ptr = np.zeros(n + 1, dtype=np.int64)
    child_ptr[1:] = np.cumsum(counts)
    child_idx = np.argsort(parent[1:], kind="stable").astype(np.int64) + 1
    is_leaf = counts == 0

    # ---- 3D layout
    start = np.zeros((n, 3))
    end = np.zeros((n, 3))
    anchors = {
        k: np.asarray(lay[k], dtype=np.float64) * MM_M
        for k in ("valve_mm", "bifurcation_mm", "right_hilum_mm", "left_hilum_mm")
    }
    n_leaves = int(is_leaf.sum())
    pts, offsets, lobe_centroid = _territories(
        data, plan, max(20000, int(lay["territory_points_per_leaf"]) * n_leaves), rng
    )

    def toward(v: int, s: np.ndarray, target: np.ndarray) -> None:
        d = target - s
        start[v] = s
        end[v] = s + d / np.linalg.norm(d) * length[v]

    start[0], end[0] = anchors["valve_mm"], anchors["bifurcation_mm"]
    start[1], end[1] = anchors["bifurcation_mm"], anchors["right_hilum_mm"]
    start[2], end[2] = anchors["bifurcation_mm"], anchors["left_hilum_mm"]
    length[:3] = np.linalg.norm(end[:3] - start[:3], axis=1)
    toward(3, end[1], lobe_centroid[0])
    toward(4, end[1], 0.5 * (lobe_centroid[1] + lobe_centroid[2]))
    toward(5, end[2], lobe_centroid[3])
    toward(6, end[2], lobe_centroid[4])
    toward(7, end[4], lobe_centroid[1])
    toward(8, end[4], lobe_centroid[2])
    for v in seg_ids:
        start[v] = end[parent[v]]
        end[v] = 2 * end[parent[v]] - start[parent[v]]
    lo = np.zeros(n, dtype=np.int64)
    hi = np.zeros(n, dtype=np.int64)
    lo[seg_ids], hi[seg_ids] = offsets[:-1], offsets[1:]
    layout_kernel(n_named, child_ptr, child_idx, diam**m, length, pts, lo, hi, start, end)

    # ---- haemodynamics: Poiseuille conduits + Murray-scaled distal beds, posture-weighted
    resistance = 128.0 * mu * length / (np.pi * diam**4)
    w = np.where(is_leaf, diam**m, 0.0)
    down = np.asarray(data["posture_down_vector"][posture], dtype=np.float64)
    gamma = float(data["gravity_gradient_per_m"])
    leaf_ids = np.flatnonzero(is_leaf)
    seg_mean = np.zeros((n_seg, 3))
    np.add.at(seg_mean, segment[leaf_ids], end[leaf_ids] * w[leaf_ids, None])
    wsum_seg = np.bincount(segment[leaf_ids], weights=w[leaf_ids], minlength=n_seg)
    seg_mean /= wsum_seg[:, None]
    height = (end[leaf_ids] - seg_mean[segment[leaf_ids]]) @ down  # depth below the segment's centre
    wg = w[leaf_ids] * np.clip(1.0 + gamma * height, 0.2, None)
    wg *= (wsum_seg / np.bincount(segment[leaf_ids], weights=wg, minlength=n_seg))[segment[leaf_ids]]
    w[leaf_ids] = wg

    tree = PulmonaryTree(
        parent=parent, child_ptr=child_ptr, child_idx=child_idx, diameter_m=diam, length_m=length,
        order=diameter_order(diam, data), depth=depth, lobe=lobe, segment=segment,
        start_m=start, end_m=end, is_leaf=is_leaf, resistance=resistance,
        distal_conductance=np.zeros(n), cardiac_output_m3_s=co, left_atrial_pressure_pa=lap,
        mean_pap_pa=mpap, blood_viscosity_pa_s=mu, cutoff_diameter_m=cutoff, murray_exponent=m,
        segment_names=tuple(p[1] for p in plan), segment_vessels=seg_ids.astype(np.int64),
        lobe_vessels=lobe_vessel, baseline_flow_m3_s=np.zeros(n), target_lobe_fractions=lobe_frac,
        names={i: item[4] for i, item in enumerate(named)},
        meta={"posture": posture, "data_file": DATA_FILE},
    )  # fmt: skip
    _calibrate_distal(tree, w)
    tree.baseline_flow_m3_s = solve_tree_flow(tree)[0]
    return tree


def _calibrate_distal(tree: PulmonaryTree, weight: np.ndarray) -> None:
    """Scale the distal conductances K w so that the tree's resistance equals (mPAP - LAP) / CO."""
    target = (tree.mean_pap_pa - tree.left_atrial_pressure_pa) / tree.cardiac_output_m3_s
    occ = np.zeros(tree.n_vessels, dtype=np.int8)

    def resistance_at(k: float) -> float:
        tree.distal_conductance = k * weight
        g_eq, _ = subtree_conductance(tree, occ)
        return 1.0 / g_eq[0]

    tree.distal_conductance = np.where(tree.is_leaf, 1.0e30, 0.0)  # distal beds short-circuited
    conduit = 1.0 / subtree_conductance(tree, occ)[0][0]
    if not conduit < 0.9 * target:
        raise GeometryError(
            f"pulmonary tree: conduit resistance {conduit:.3g} Pa s/m^3 leaves no room for the distal beds "
            f"(target PVR {target:.3g}); raise mean_pap or the cutoff diameter"
        )
    lo, hi = 1e-30, 1e-30
    while resistance_at(hi) > target:
        hi *= 10.0
    lo = hi / 10.0
    for _ in range(200):  # bisection in log K; R(K) is monotone decreasing
        mid = np.sqrt(lo * hi)
        if resistance_at(mid) > target:
            lo = mid
        else:
            hi = mid
        if hi / lo - 1.0 < 1e-13:
            break
    resistance_at(np.sqrt(lo * hi))
