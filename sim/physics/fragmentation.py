"""Shedding of tubular cement fragments from venous cement columns.

Force balance at a column tip (loads per unit cement cross-section, compared with the cement's
current strength sigma_s = strength_scale * rheology.cement_strength_pa(model, age)):

- Thread (a column narrower than its vein, protruding from a tributary into a wider vein such as
  the azygos or IVC): a cantilever cylinder of diameter d_c and free length l in a blood stream of
  mean velocity U = |Q| / A_vein. Drag per unit length f = 1/2 rho U^2 C_D d_c; the root bending
  moment M = f l^2 / 2 and the section modulus pi d_c^3 / 32 give the root stress

      sigma = 8 C_D rho U^2 l^2 / (pi d_c^2),

  so the tip breaks once l exceeds l* = d_c sqrt(pi sigma_s / (8 C_D rho U^2)). C_D of a cylinder
  in cross-flow from White's correlation C_D = 1 + 10 Re^(-2/3), Re = U d_c / nu (White,
  Fluid Mechanics, 1 < Re < 2e5) [TB].
- Full-bore plug (the column fills the vein): the blood pressure difference across the edge acts
  on the plug's cross-section, sigma = |p_u - p_v|; it is torn away when sigma > sigma_s.

While the load beats the strength, pieces are shed from the tip: length from a seeded lognormal
(median ``length_median_m``, log-sd ``length_sigma``; cast lengths of a few mm to cm, docs/reference_values.md
section 3 [U]), capped by the free length (a thread that just passed l* breaks at its root and
leaves whole when the draw exceeds it); the criterion sets when, the distribution how long. Diameter
= the column's diameter (= vessel diameter for plugs, the feeder's for threads: emboli are vein casts).
A piece that contains a junction (it reaches the end of its edge or the thread root) is branched
with probability ``branching_probability``. Fresh cement sheds as long as injection pushes new
cement into the tips; without pushing, the load is fixed while the strength grows with cure, so
shedding stops, and set cement never sheds.

:func:`shed_kernel` (numba) does the per-tip piece loop on pre-drawn random numbers;
``shed_kernel.py_func`` is the interpreted reference.
"""

from __future__ import annotations

import numba
import numpy as np

from sim.core.parameters import FragmentationParams
from sim.physics import rheology
from sim.physics.fragment_set import ACTIVE, FragmentSet
from sim.physics.laws import register
from sim.physics.vein_columns import CementColumns
from sim.physics.venous_network import VenousNetwork


def drag_coefficient(reynolds: np.ndarray) -> np.ndarray:
    """Cylinder in cross-flow, White's correlation C_D = 1 + 10 Re^(-2/3) (Re floored at 1)."""
    return 1.0 + 10.0 * np.maximum(reynolds, 1.0) ** (-2.0 / 3.0)


def tip_loads(
    columns: CementColumns, edge_flow_m3_s: np.ndarray, node_pressure_pa: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per edge: (load coefficient c, exponent flag, free length l).

    Thread stress is c * l^2 with c = 8 C_D rho U^2 / (pi d_c^2); plug stress is c (flag 0).
    Empty edges get c = 0.
    """
    net: VenousNetwork = columns.network
    rho = net.blood_density_kg_per_m3
    nu = net.blood_viscosity_pa_s / rho
    d_c = columns.col_diameter_m
    u_blood = np.abs(edge_flow_m3_s) / net.edge_area_m2()
    has = (columns.entry_end >= 0) & (columns.fill_m3 > 0.0)
    plug = columns.full_bore() & has
    thread = has & ~plug
    cd = drag_coefficient(u_blood * d_c / nu)
    with np.errstate(divide="ignore", invalid="ignore"):
        c_thread = np.where(thread, 8.0 * cd * rho * u_blood**2 / (np.pi * d_c**2), 0.0)
    dp = np.abs(node_pressure_pa[net.edge_u] - node_pressure_pa[net.edge_v])
    coef = np.where(plug, dp, c_thread)
    flag = thread.astype(np.int64)
    coef[net.pump_edge] = 0.0
    return coef, flag, columns.fill_length_m()


@numba.njit(cache=True)
def tip_stress(coef: float, is_thread: bool, free_len: float) -> float:
    """Load on a column tip per unit cement section: c l^2 for a thread, c for a plug (Pa)."""
    return coef * free_len * free_len if is_thread else coef


@numba.njit(cache=True)
def overloaded_tips(
    coef: np.ndarray, is_thread: np.ndarray, free_len: np.ndarray, fill: np.ndarray, strength: float
) -> np.ndarray:
    """Edges whose tip stress beats ``strength`` and that still hold cement, ascending."""
    out = np.empty(coef.shape[0], dtype=np.int64)
    n = 0
    for e in range(coef.shape[0]):
        if fill[e] > 0.0 and tip_stress(coef[e], is_thread[e] == 1, free_len[e]) > strength:
            out[n] = e
            n += 1
    return out[:n]


@numba.njit(cache=True)
def shed_kernel(
    cand: np.ndarray,
    coef: np.ndarray,
    is_thread: np.ndarray,
    free_len: np.ndarray,
    fill: np.ndarray,
    col_area: np.ndarray,
    edge_len: np.ndarray,
    strength: float,
    median: float,
    sigma: float,
    p_branch: float,
    z: np.ndarray,
    uni: np.ndarray,
    out_edge: np.ndarray,
    out_len: np.ndarray,
    out_vol: np.ndarray,
    out_tip: np.ndarray,
    out_branch: np.ndarray,
) -> int:
    """Shed pieces from candidate edges; returns the count (-1 if random numbers/out arrays ran out).

    ``out_tip`` receives the tip distance from the entry end before the piece left.
    """
    nf = 0
    j = 0
    nmax = out_edge.shape[0]
    for i in range(cand.shape[0]):
        e = cand[i]
        avail = free_len[e]
        thread = is_thread[e] == 1
        root = avail
        # a thread breaks while its root stress c l^2 beats the strength; a plug while c does
        while fill[e] > 0.0 and avail > 0.0 and tip_stress(coef[e], thread, avail) > strength:
            if j >= z.shape[0] or nf >= nmax:
                return -1
            piece = median * np.exp(sigma * z[j])
            if piece > avail:
                piece = avail
            vol = piece * col_area[e]
            if vol > fill[e]:
                vol = fill[e]
                piece = vol / col_area[e]
            junction = (avail >= edge_len[e] * (1.0 - 1e-9)) or (piece >= root * (1.0 - 1e-9))
            out_edge[nf] = e
            out_len[nf] = piece
            out_vol[nf] = vol
            out_tip[nf] = avail
            out_branch[nf] = 1 if (junction and uni[j] < p_branch) else 0
            fill[e] -= vol
            avail -= piece
            j += 1
            nf += 1
    return nf


def shed_fragments(
    columns: CementColumns,
    edge_flow_m3_s: np.ndarray,
    node_pressure_pa: np.ndarray,
    strength_pa: float,
    t: float,
    cure_age_s: float,
    params: FragmentationParams,
    rng: np.random.Generator,
) -> FragmentSet:
    """Shed every tip whose load beats ``strength_pa`` (already scaled); columns lose the volume."""
    coef, flag, free_len = tip_loads(columns, edge_flow_m3_s, node_pressure_pa)
    if strength_pa == np.inf:
        return FragmentSet.empty()
    cand = overloaded_tips(coef, flag, free_len, columns.fill_m3, float(strength_pa))
    if cand.size == 0:
        return FragmentSet.empty()
    net = columns.network
    area = columns.column_area_m2()
    n_draw = 64 + 16 * cand.size
    while True:
        z = rng.standard_normal(n_draw)
        uni = rng.random(n_draw)
        out = [np.empty(n_draw, dtype=np.int64), np.empty(n_draw), np.empty(n_draw), np.empty(n_draw)]
        branch = np.empty(n_draw, dtype=np.int8)
        fill_try = columns.fill_m3.copy()
        nf = shed_kernel(
            cand,
            coef,
            flag,
            free_len,
            fill_try,
            area,
            net.edge_length_m,
            float(strength_pa),
            params.length_median_m,
            params.length_sigma,
            params.branching_probability,
            z,
            uni,
            out[0],
            out[1],
            out[2],
            out[3],
            branch,
        )
        if nf >= 0:
            break
        n_draw *= 4
    columns.fill_m3[:] = fill_try
    edges, length, vol, tip = out[0][:nf], out[1][:nf], out[2][:nf], out[3][:nf]
    # offset along the edge in the direction of blood flow (u -> v if flow >= 0)
    from_u = np.where(columns.entry_end[edges] == 0, tip, net.edge_length_m[edges] - tip)
    offset = np.where(edge_flow_m3_s[edges] >= 0.0, from_u, net.edge_length_m[edges] - from_u)
    return FragmentSet(
        birth_time_s=np.full(nf, float(t)),
        edge=edges.copy(),
        offset_m=offset,
        diameter_m=columns.col_diameter_m[edges].copy(),
        length_m=length.copy(),
        volume_m3=vol.copy(),
        cure_age_s=np.full(nf, float(cure_age_s)),
        branched=branch[:nf].copy(),
        status=np.full(nf, ACTIVE, dtype=np.int8),
    )


@register("fragmentation", "drag_vs_strength")
class DragVsStrength:
    """Tips break when blood loads beat the cement's strength (the force balance of this module).

    Strength sigma_s(a) = strength_scale * rheology.cement_strength_pa(model, a), infinite once the
    cement has set. Limiting cases (tested): a column whose tip stress stays below sigma_s sheds
    nothing; set cement never sheds; every shed volume leaves the columns (mass conserved).
    """

    def __init__(self, params: FragmentationParams):
        self.params = params

    @classmethod
    def from_params(cls, params: FragmentationParams) -> DragVsStrength:
        return cls(params)

    def strength_pa(self, cement: rheology.CementModel, age_s: float) -> float:
        """Current strength of the vein cement (inf once set)."""
        if rheology.is_set(cement, age_s):
            return np.inf
        return float(self.params.strength_scale * rheology.cement_strength_pa(cement, age_s))

    def shed(
        self,
        columns: CementColumns,
        edge_flow_m3_s: np.ndarray,
        node_pressure_pa: np.ndarray,
        cement: rheology.CementModel,
        age_s: float,
        t: float,
        rng: np.random.Generator,
    ) -> FragmentSet:
        """Shed every overloaded tip at time ``t``; the pieces carry the cement's age ``age_s``."""
        strength = self.strength_pa(cement, age_s)
        if not np.isfinite(strength):
            return FragmentSet.empty()
        return shed_fragments(columns, edge_flow_m3_s, node_pressure_pa, strength, t, age_s, self.params, rng)
