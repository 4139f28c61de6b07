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
section 3 [U]); the criterion sets when, the distribution how long. A thread's root stress grows
with its length, so a thread that just passed l* breaks at its root: its piece is the draw or, when
the draw exceeds it, the whole free length. A plug's load does not depend on its length, so
nothing in the force balance says where it breaks: it keeps the length drawn for its next piece
until its free length reaches it while injection pushes it on (its free length grew since the last
check), and leaves whole once it is no longer pushed. So plug pieces do not depend on how often the
tips are checked: capping every piece at the free length grown since the last check made them as
short as the check interval (cohort patient 377: 0.61 ml shed as 673 emboli of median length
0.57 mm, each too small to be seen on fluoroscopy). Diameter
= the column's diameter (= vessel diameter for plugs, the feeder's for threads: emboli are vein casts).
A piece that contains a junction (it reaches the end of its edge or the thread root) is branched
with probability ``branching_probability``. Fresh cement sheds as long as injection pushes new
cement into the tips; without pushing, the load is fixed while the strength grows with cure, so
shedding stops, and set cement never sheds.

:func:`shed_kernel` (numba) does the per-tip piece loop on pre-drawn random numbers;
``shed_kernel.py_func`` is the interpreted reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from sim.core.parameters import FragmentationParams
from sim.physics import capillary_instability, rheology
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
    pending: np.ndarray,
    pending_u: np.ndarray,
    growing: np.ndarray,
    out_edge: np.ndarray,
    out_len: np.ndarray,
    out_vol: np.ndarray,
    out_tip: np.ndarray,
    out_branch: np.ndarray,
) -> int:
    """Shed pieces from candidate edges; returns the count (-1 if random numbers/out arrays ran out).

    ``pending[e]`` (> 0) is the length already drawn for the next piece of tip e and ``pending_u[e]``
    its branching draw; a plug tip whose free length is below it keeps it when ``growing[e]`` (the
    column is still being pushed on) and leaves whole otherwise, as a thread always does.
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
            if nf >= nmax:
                return -1
            if pending[e] > 0.0:
                piece = pending[e]
                u = pending_u[e]
            else:
                if j >= z.shape[0]:
                    return -1
                piece = median * np.exp(sigma * z[j])
                u = uni[j]
                j += 1
            if piece > avail:
                if growing[e] == 1 and not thread:  # a plug not yet as long as its piece: it waits
                    pending[e] = piece
                    pending_u[e] = u
                    break
                piece = avail
            pending[e] = 0.0
            vol = piece * col_area[e]
            if vol > fill[e]:
                vol = fill[e]
                piece = vol / col_area[e]
            junction = (avail >= edge_len[e] * (1.0 - 1e-9)) or (piece >= root * (1.0 - 1e-9))
            out_edge[nf] = e
            out_len[nf] = piece
            out_vol[nf] = vol
            out_tip[nf] = avail
            out_branch[nf] = 1 if (junction and u < p_branch) else 0
            fill[e] -= vol
            avail -= piece
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
    pending: np.ndarray | None = None,
    growing: np.ndarray | None = None,
) -> FragmentSet:
    """Shed every tip whose load beats ``strength_pa`` (already scaled); columns lose the volume.

    ``pending`` (n_edges, 2): per tip the length drawn for its next piece (0: none) and its branching
    draw, updated in place; ``growing`` (n_edges, bool): tips pushed on since the last check, which
    wait for their drawn length. Without them every tip leaves whole when shorter than its draw.
    """
    coef, flag, free_len = tip_loads(columns, edge_flow_m3_s, node_pressure_pa)
    if strength_pa == np.inf:
        return FragmentSet.empty()
    cand = overloaded_tips(coef, flag, free_len, columns.fill_m3, float(strength_pa))
    if cand.size == 0:
        return FragmentSet.empty()
    net = columns.network
    area = columns.column_area_m2()
    n_draw = 64 + 16 * cand.size
    n_e = net.n_edges
    held = np.zeros((n_e, 2)) if pending is None else pending
    grow = np.zeros(n_e, dtype=np.int8) if growing is None else np.asarray(growing, dtype=np.int8)
    while True:
        z = rng.standard_normal(n_draw)
        uni = rng.random(n_draw)
        out = [np.empty(n_draw, dtype=np.int64), np.empty(n_draw), np.empty(n_draw), np.empty(n_draw)]
        branch = np.empty(n_draw, dtype=np.int8)
        fill_try = columns.fill_m3.copy()
        len_try, u_try = held[:, 0].copy(), held[:, 1].copy()
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
            len_try,
            u_try,
            grow,
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
    held[:, 0], held[:, 1] = len_try, u_try
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
        self._pending: np.ndarray | None = None  # per tip: drawn length of its next piece, branch draw
        self._free_checked: np.ndarray | None = None  # per tip: free length left at the last check

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
        """Shed every overloaded tip at time ``t``; the pieces carry the cement's age ``age_s``.

        A tip whose free length grew since the last check is still being pushed on and waits for the
        length drawn for its next piece (module docstring)."""
        n_e = columns.network.n_edges
        if self._pending is None or self._pending.shape[0] != n_e:
            self._pending, self._free_checked = np.zeros((n_e, 2)), np.zeros(n_e)
        assert self._free_checked is not None
        free = columns.fill_length_m()
        growing = free > self._free_checked + 1e-12
        self._pending[columns.fill_m3 <= 0.0] = 0.0  # an emptied edge forgets its draw
        strength = self.strength_pa(cement, age_s)
        if not np.isfinite(strength):
            self._free_checked = free
            return FragmentSet.empty()
        frags = shed_fragments(
            columns, edge_flow_m3_s, node_pressure_pa, strength, t, age_s, self.params, rng,
            self._pending, growing,
        )  # fmt: skip
        self.checked(columns)
        return frags

    def checked(self, columns: CementColumns) -> None:
        """Note the free lengths the tips are left with after a check (growth is measured from them)."""
        self._free_checked = columns.fill_length_m()


# ---------------------------------------------------------------- break-up of threads in flowing blood


@numba.njit(cache=True)
def pinch_off_kernel(
    cand: np.ndarray,
    wavelength: np.ndarray,
    free_len: np.ndarray,
    fill: np.ndarray,
    col_area: np.ndarray,
    out_edge: np.ndarray,
    out_vol: np.ndarray,
    out_tip: np.ndarray,
) -> int:
    """Cut every whole wavelength off the free length of each candidate thread, from its tip inwards.

    Returns the number of pieces (-1 if the out arrays are too short); ``fill`` loses their volume,
    ``out_tip`` receives the tip's distance from the entry end before each piece left. A thread
    shorter than one wavelength keeps its cement (a disturbance longer than the thread cannot grow).
    """
    nf = 0
    nmax = out_edge.shape[0]
    for i in range(cand.shape[0]):
        e = cand[i]
        lam = wavelength[e]
        avail = free_len[e]
        while lam > 0.0 and avail >= lam and fill[e] > 0.0:
            if nf >= nmax:
                return -1
            vol = lam * col_area[e]
            if vol > fill[e]:
                vol = fill[e]
            out_edge[nf] = e
            out_vol[nf] = vol
            out_tip[nf] = avail
            fill[e] -= vol
            avail -= lam
            nf += 1
    return nf


@dataclass(frozen=True)
class ThreadLoads:
    """Per edge: the state of each cement thread (empty / full-bore edges hold zeros, ``thread`` False)."""

    thread: np.ndarray  # bool: a column narrower than its vein, bathed in blood
    radius_m: np.ndarray  # R of the thread
    blood_shear_pa: np.ndarray  # tau_b = max(8 mu_b U / D, mu_b U sqrt(Re_d) / d): wall or cross-flow
    capillary_pa: np.ndarray  # gamma / R
    yielded: np.ndarray  # bool: von Mises at the surface, (gamma/R)^2 + 3 tau_b^2 > 3 tau_y^2
    rate_per_s: np.ndarray  # growth rate q of the fastest capillary mode (0 where not yielded)
    wavelength_m: np.ndarray  # 2 pi R / x_m of the fastest mode
    viscosity_ratio: np.ndarray  # eta_cement / mu_blood at the growth rate


def thread_loads(
    columns: CementColumns,
    edge_flow_m3_s: np.ndarray,
    cement: rheology.CementModel,
    age_s: float,
    yield_stress_pa: float,
    interfacial_tension_n_per_m: float,
    iterations: int = 12,
) -> ThreadLoads:
    """Yield criterion, growth rate and wavelength of the capillary break-up of every thread.

    The cement viscosity is taken at the strain rate of the growing mode, eta = eta(q, age), and q
    at that viscosity (a fixed point, found by ``iterations`` substitutions: eta falls with rate and
    q falls with eta, so the iteration is monotone).
    """
    net: VenousNetwork = columns.network
    mu_b = net.blood_viscosity_pa_s
    has = (columns.entry_end >= 0) & (columns.fill_m3 > 0.0)
    thread = has & ~columns.full_bore()
    thread[net.pump_edge] = False
    radius = np.where(thread, 0.5 * columns.col_diameter_m, 0.0)
    u_blood = np.abs(edge_flow_m3_s) / net.edge_area_m2()
    d_c = np.where(thread, columns.col_diameter_m, 1.0)
    re_d = np.maximum(net.blood_density_kg_per_m3 * u_blood * d_c / mu_b, 1.0)
    tau_wall = 8.0 * mu_b * u_blood / net.edge_diameter_m
    tau_cross = mu_b * u_blood * np.sqrt(re_d) / d_c
    tau_b = np.where(thread, np.maximum(tau_wall, tau_cross), 0.0)
    gamma = float(interfacial_tension_n_per_m)
    with np.errstate(divide="ignore"):
        cap = np.where(thread, gamma / np.where(radius > 0.0, radius, 1.0), 0.0)
    yielded = thread & (cap**2 + 3.0 * tau_b**2 > 3.0 * float(yield_stress_pa) ** 2)
    n = int(np.count_nonzero(yielded))
    rate = np.zeros(net.n_edges)
    wavelength = np.zeros(net.n_edges)
    ratio = np.zeros(net.n_edges)
    if n:
        r = radius[yielded]
        q = np.full(n, cement.shear_rate_floor_per_s if cement.shear_rate_floor_per_s > 0 else 1e-3)
        for _ in range(iterations):
            eta = np.asarray(rheology.cement_viscosity(cement, q, age_s), dtype=np.float64)
            lam = eta / mu_b
            x_m, g_m = capillary_instability.fastest_mode_interp(lam)
            q = g_m * gamma / (mu_b * r)
        rate[yielded] = q
        wavelength[yielded] = 2.0 * np.pi * r / x_m
        ratio[yielded] = lam
    return ThreadLoads(thread, radius, tau_b, cap, yielded, rate, wavelength, ratio)


@register("fragmentation", "drag_vs_strength_breakup")
class DragStrengthBreakup:
    """Column shedding (``drag_vs_strength``) plus the break-up of cement threads in flowing blood.

    A column narrower than its vein (a thread, :mod:`sim.physics.vein_columns`) is bathed in blood.
    Two stresses act on its surface: the blood's shear stress tau_b and the capillary pressure
    gamma / R of the cement/blood interface. tau_b is the larger of the vein's wall shear stress
    8 mu_b U / D (Poiseuille; U the mean blood speed, D the vein diameter; a thread lying on the wall)
    and the skin friction of a thread across the stream, mu_b U sqrt(Re_d) / d (laminar boundary
    layer of thickness d / sqrt(Re_d), Re_d = rho U d / mu_b floored at 1; O(1) prefactor
    [TB, Schlichting, Boundary-Layer Theory]; the cross-flow thread of ``drag_vs_strength``). A yield-stress
    dough does not flow, and a finite yield stress suppresses the linear Rayleigh-Plateau
    instability of a thread altogether; the thread necks only where the stresses breach the yield
    threshold (Shemilt & Balmforth 2025, arXiv:2512.21059 [S, abstract]; slender viscoplastic
    filaments, Balmforth, Dubash & Slim 2010, J Non-Newtonian Fluid Mech 165 [S~]). The extensional
    yield stress of a von Mises material is sqrt(3) tau_y, and the surface yields when

        (gamma / R)^2 + 3 tau_b^2 > 3 tau_y^2,

    with tau_y = strength_scale * rheology.cement_strength_pa (the dough's shear yield stress,
    geometries/cement.yaml). Limits: tau_b = 0 gives the plasto-capillary criterion
    Pc = sqrt(3) tau_y R / gamma < 1; gamma = 0 gives shear stripping, tau_b > tau_y (Bingham number
    tau_y / tau_b < 1). Below the criterion nothing happens here (limiting case, tested), and the law
    sheds exactly what ``drag_vs_strength`` sheds (it draws no random numbers of its own).

    A yielded thread breaks up by Tomotika's capillary instability of a viscous thread in a viscous
    liquid (:mod:`sim.physics.capillary_instability`), viscosity ratio lam = eta_c / mu_b with the
    cement viscosity at the growth rate: the fastest mode x_m(lam) grows at q = g_m gamma / (mu_b R);
    each thread integrates its e-foldings int q dt while yielded and pinches off once they reach
    ln(R / delta_0) (``disturbance_ratio`` = delta_0 / R [U], 1e-3 to 0.1). The drop size follows from the
    physics: every whole wavelength 2 pi R / x_m of the thread's free length becomes one piece of
    volume pi R^2 2 pi R / x_m; where the capillary pressure alone beats the yield stress the piece
    rounds up into a sphere (a cast of the vein if the sphere is wider than the vein), otherwise it
    keeps the thread's section. The thread keeps its remainder (shorter than a wavelength) and starts
    growing a new disturbance. Interfacial tension of PMMA dough against blood has not been measured
    [U]: 5-35 mN/m (``interfacial_tension_mn_per_m``, default 20: PMMA/water from the polar and
    dispersive parts of PMMA's surface energy, about 40 mJ/m^2, lowered by plasma proteins).

    Magnitudes. Blood wall shear stress 8 mu_b U / D in 2-20 mm veins at 0.002-0.3 m/s is
    0.003-4 Pa, the cross-flow skin friction on a 0.5-2 mm thread 0.5-15 Pa (the dynamic pressure
    rho U^2 / 2 at most 50 Pa); the dough's yield stress is 1e2-1e3 Pa at mixing and grows with
    cure, so shear stripping needs a cement 7 to 1000 times weaker than any preset. The capillary
    stress gamma / R is 20-80 Pa for 0.5-2 mm threads at 20 mN/m (at most 140 Pa at 35 mN/m), below
    sqrt(3) tau_y >= 173 Pa of the presets: fresh preset cement in the model's threads does not
    break up by itself; a dough weaker than gamma / (sqrt(3) R) (10-50 Pa) would. Inertia (Weber
    number rho U^2 d / gamma <= 10) is irrelevant against the cement's viscosity (Ohnesorge number
    eta_c / sqrt(rho gamma d) ~ 1e4; Grace 1982, Chem Eng Commun 14:225: no drop break-up in shear
    at all above lam ~ 4). A skin-friction tension 2 tau_b l / R along a thread aligned with the flow
    reaches sqrt(3) tau_y only for l of order a metre; the cantilever bending of ``drag_vs_strength``
    breaks the same thread at a few mm, so it is not added.

    Fragment sizes against CT. Where it acts, the instability of a thread 1e4-1e6 times more viscous
    than blood is long-wave (x_m = 0.07 at lam = 1e4, 0.02 at 1e6): pieces of 2 pi R / x_m = 90-300
    thread radii, drops 4-6 thread diameters across unless the vein caps them, i.e. casts of a few
    mm. Capillary break-up therefore makes pieces LARGER than the thread that leaks, never smaller.
    Chest CT after vertebroplasty shows small emboli randomly distributed in peripheral small
    vessels (Venmans et al. 2010, AJNR 31:1451, VERTOS II), curvilinear or tubular densities in
    segmental and subsegmental arteries; the comparison with the model's fragments, measured on
    the seed case and the default, is in docs/fragment_breakup.md.
    """

    def __init__(self, params: FragmentationParams):
        self.params = params
        self.columns_law = DragVsStrength(params)
        self._efoldings: np.ndarray | None = None  # per edge: int q dt of the growing disturbance
        self._t_last: float | None = None

    @classmethod
    def from_params(cls, params: FragmentationParams) -> DragStrengthBreakup:
        return cls(params)

    def strength_pa(self, cement: rheology.CementModel, age_s: float) -> float:
        """Current strength (yield stress) of the vein cement, as ``drag_vs_strength`` (inf once set)."""
        return self.columns_law.strength_pa(cement, age_s)

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
        """Column shedding, then capillary pinch-off of yielded threads whose disturbance has grown."""
        frags = self.columns_law.shed(columns, edge_flow_m3_s, node_pressure_pa, cement, age_s, t, rng)
        dt = 0.0 if self._t_last is None else max(float(t) - self._t_last, 0.0)
        self._t_last = float(t)
        ne = columns.network.n_edges
        if self._efoldings is None or self._efoldings.shape[0] != ne:
            self._efoldings = np.zeros(ne)
        strength = self.strength_pa(cement, age_s)
        if not np.isfinite(strength):
            return frags
        pieces = self.pinch_off(columns, edge_flow_m3_s, cement, age_s, strength, dt, t)
        if len(pieces):
            self.columns_law.checked(columns)  # the tips pinched off are shorter, not withdrawn
        return frags.concat(pieces) if len(pieces) else frags

    def pinch_off(
        self,
        columns: CementColumns,
        edge_flow_m3_s: np.ndarray,
        cement: rheology.CementModel,
        age_s: float,
        yield_stress_pa: float,
        dt: float,
        t: float,
    ) -> FragmentSet:
        """Advance every thread's disturbance by ``dt`` and cut the threads that have pinched off."""
        p = self.params
        loads = thread_loads(
            columns, edge_flow_m3_s, cement, age_s, yield_stress_pa, p.interfacial_tension_n_per_m
        )
        grow = self._efoldings
        assert grow is not None
        grow[~loads.thread] = 0.0  # an emptied or full-bore edge has no thread to disturb
        grow[loads.yielded] += loads.rate_per_s[loads.yielded] * dt
        cand = np.flatnonzero(loads.yielded & (grow >= np.log(1.0 / p.disturbance_ratio)))
        if cand.size == 0:
            return FragmentSet.empty()
        free_len = columns.fill_length_m()
        area = columns.column_area_m2()
        n_max = int(np.sum(np.floor(free_len[cand] / loads.wavelength_m[cand]))) + 1
        out_edge = np.empty(n_max, dtype=np.int64)
        out_vol, out_tip = np.empty(n_max), np.empty(n_max)
        nf = pinch_off_kernel(
            cand.astype(np.int64),
            loads.wavelength_m,
            free_len,
            columns.fill_m3,
            area,
            out_edge,
            out_vol,
            out_tip,
        )
        if nf < 0:
            raise RuntimeError("pinch_off_kernel: output arrays too short")  # n_max counts every piece
        grow[cand[free_len[cand] >= loads.wavelength_m[cand]]] = 0.0  # broken threads start afresh
        if nf == 0:
            return FragmentSet.empty()
        net = columns.network
        edges, vol, tip = out_edge[:nf], out_vol[:nf], out_tip[:nf]
        rounds = loads.capillary_pa[edges] > np.sqrt(3.0) * yield_stress_pa
        sphere_d = np.cbrt(6.0 * vol / np.pi)
        diameter = np.where(
            rounds, np.minimum(sphere_d, net.edge_diameter_m[edges]), columns.col_diameter_m[edges]
        )
        length = vol / (0.25 * np.pi * diameter**2)
        from_u = np.where(columns.entry_end[edges] == 0, tip, net.edge_length_m[edges] - tip)
        offset = np.where(edge_flow_m3_s[edges] >= 0.0, from_u, net.edge_length_m[edges] - from_u)
        return FragmentSet(
            birth_time_s=np.full(nf, float(t)),
            edge=edges.copy(),
            offset_m=offset,
            diameter_m=diameter,
            length_m=length,
            volume_m3=vol.copy(),
            cure_age_s=np.full(nf, float(age_s)),
            branched=np.zeros(nf, dtype=np.int8),
            status=np.full(nf, ACTIVE, dtype=np.int8),
        )
