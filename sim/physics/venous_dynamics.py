"""Compliant venous network in time: wall capacitance, extramural pressures, breathing and straining.

Law. Every vein segment e of the Poiseuille network (:mod:`sim.physics.venous_network`) is a
compliant tube whose blood volume changes with its transmural pressure,
dV_e = D V_e d(p - p_ext,e), with V_e = pi d_e^2 L_e / 4 its volume and D the wall distensibility
(compliance per unit volume, 1/Pa). Half of each segment's capacitance c_e = D V_e sits at each
of its end nodes (lumped, finite-volume in the graph), so node i stores
V_i = sum_e c_e / 2 (p_i - p_ext,e) and conservation at node i reads

    C_i dp_i/dt - d/dt(sum_e c_e/2 p_ext,e) = s_i + sum_j G_ij (p_j - p_i),    C_i = sum_e c_e / 2,

with the prescribed inflows s_i and Poiseuille conductances G (plus the cement columns' series
resistance) of the steady model. The right atrium is held at CVP + dp_thorax(t): the right atrial
pressure follows the intrathoracic pressure. Implicit Euler in time,
(C/h + L) p^{n+1} = s + C/h p^n + (Ce^{n+1} - Ce^n)/h (substeps of at most ``max_step_s``, broken at
every event's start and end), is unconditionally stable and conserves
blood exactly: sum of inflows = flow into the right atrium + d(stored volume)/dt at every step
(``stored_volume_m3``). The matrix is factorised once and reused while the step and the
conductances stay the same (no cement moving in the veins).

Extramural pressure by compartment (only changes from the resting state matter, the resting
state being the steady solve): thoracic veins (azygos, hemiazygos, SVC and, at thoracic levels,
the posterior intercostal segmental veins) feel the intrathoracic pressure; abdominal veins (IVC,
lumbar segmental veins, ascending lumbar veins) the intra-abdominal pressure; the vertebral
plexus (internal plexus in the spinal canal, basivertebral and nutrient veins in bone, anterior
external plexus on the vertebral body) feels neither. Pressure changes are a respiratory
sinusoid dp = swing (cos phi - cos(2 pi t / T + phi)) / 2, the change since injection start, which
falls at the phase phi of a breath (``respiration_phase``: 0 = end-expiration, where the swing reaches
``swing`` at end-inspiration)
plus timed events (Valsalva: a plateau; cough: a short pulse), summed.

Sources and values (docs/reference_values.md): distensibility 0.04 /mmHg: the systemic veins take
up about 100-170 ml per mmHg for 2.5-3.5 l of blood in the physiological range of transmural
pressure (Guyton & Hall, Textbook of Medical Physiology, TB); venous compliance is highest near
zero transmural pressure and falls at high pressure, so a linear law overstates the filling of the
plexus under a 90 mmHg Valsalva (vertebral veins unmeasured, [U] 0.005-0.05 /mmHg). Pleural
pressure swings from about -5 to -8 cmH2O in quiet breathing (TB, West's Respiratory Physiology):
-2.2 mmHg; gastric (abdominal) pressure rises a few cmH2O on inspiration [U]. Under mechanical
ventilation intrathoracic pressure rises on inspiration instead (positive swing); prone position
lowers end-expiratory oesophageal pressure by 5.6 cmH2O in spine surgery patients (Mezidi et al.
2018, Anesthesiology 128:1187) and raises intra-abdominal pressure by 1-3 mmHg in ventilated
patients (review: Kirkpatrick et al. 2010, Crit Care 14:232). Valsalva lying down: inferior vena
cava and lumbar intraosseous pressure both reach about 90 mmHg, intraosseous pressure being
identical to and dependent on IVC pressure (Intraosseous pressure in the lumbar spine, Spine
1981;6:159-161). The vertebral plexus has no valves (Batson 1940, Ann Surg 112:138): flow in it
reverses whenever the pressures invert, and the network here has no valves anywhere.

Limiting cases (tests/test_venous_dynamics.py): one compliant node behind a resistance R answers
a step in inflow q with p(t) = p_inf (1 - exp(-t / RC)), p_inf = q R; zero distensibility gives
the steady Kirchhoff solve at every step; constant extramural pressures and inflows relax to the
steady solve; a uniform pressure change everywhere (rigid network or t >> RC) moves all pressures
together and leaves the flows unchanged. Not modelled: the collapse of a vein at negative
transmural pressure (Starling resistor) except at the caval hiatus, where the IVC drains against
max(p_RA(t), p_ab(t) + threshold) as in the steady model (:func:`hiatus_pressure`), pressure-dependent
compliance, the fall of peripheral
venous return during straining (inflows stay prescribed) and the rise of cerebrospinal fluid
pressure around the internal plexus.

Config (clinical units at the edge; ``mode: compliant`` is the default, ``steady`` keeps the rigid
steady solve)::

    veins:
      dynamics:
        mode: compliant
        distensibility_per_mmhg: 0.04
        respiration_period_s: 4.0
        thoracic_swing_mmhg: -2.2   # spontaneous breathing; > 0 under mechanical ventilation
        abdominal_swing_mmhg: 1.5
        max_step_s: 0.1
        events:
          - {kind: valsalva, start_s: 20.0}   # +90 mmHg thorax and abdomen for 15 s
          - {kind: cough, start_s: 40.0}      # +100 mmHg for 0.3 s
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from sim.core.errors import SolverError
from sim.core.parameters import VenousDynamicsParams
from sim.physics.venous_network import BloodFlow, VenousNetwork, edge_conductance, hiatus_upstream

SPINAL, THORAX, ABDOMEN = 0, 1, 2  # extramural compartment of a vein segment
COMPARTMENTS = ("spinal", "thorax", "abdomen")
_THORACIC_KINDS = ("azygos", "hemiazygos", "svc")
_ABDOMINAL_KINDS = ("ivc", "ascending_lumbar")


def edge_compartments(net: VenousNetwork) -> np.ndarray:
    """Extramural compartment of each edge: 0 spinal (plexus, bone), 1 thorax, 2 abdomen.

    Segmental veins take their level's cavity: posterior intercostal veins (T levels) the thorax,
    lumbar veins (L levels) the abdomen; a segmental edge of a custom network (no level in its node
    names) counts as abdominal. The pump edge (right heart) has no capacitance here.
    """
    comp = np.zeros(net.n_edges, dtype=np.int8)
    for e, kind in enumerate(net.edge_kind):
        if kind in _THORACIC_KINDS:
            comp[e] = THORAX
        elif kind in _ABDOMINAL_KINDS:
            comp[e] = ABDOMEN
        elif kind == "segmental":
            name = net.node_names[int(net.edge_u[e])]
            comp[e] = THORAX if name.startswith("T") and ":" in name else ABDOMEN
    return comp


def edge_capacitance(net: VenousNetwork, distensibility_per_pa: float) -> np.ndarray:
    """c_e = D pi d^2 L / 4 per edge (m^3/Pa); the pump edge gets 0."""
    c = float(distensibility_per_pa) * net.edge_area_m2() * net.edge_length_m
    c[net.pump_edge] = 0.0
    return c


def node_capacitance(net: VenousNetwork, edge_c: np.ndarray, compartment: np.ndarray) -> np.ndarray:
    """(N, 3) capacitance of each node by extramural compartment: half of each incident edge's."""
    out = np.zeros((net.n_nodes, len(COMPARTMENTS)))
    half = 0.5 * np.asarray(edge_c, dtype=np.float64)
    for end in (net.edge_u, net.edge_v):
        np.add.at(out, (end, compartment), half)
    return out


@dataclass(frozen=True)
class ExtramuralPressure:
    """Change of intrathoracic and intra-abdominal pressure from rest (Pa) at time t."""

    params: VenousDynamicsParams

    def at(self, t: float) -> np.ndarray:
        """[spinal, thorax, abdomen] pressure changes at t (spinal is always 0)."""
        p = self.params
        phase = 2.0 * np.pi * p.respiration_phase
        # change since injection start (whose venous state is the steady solve), at any phase
        breath = 0.5 * (np.cos(phase) - np.cos(2.0 * np.pi * t / p.respiration_period_s + phase))
        out = np.array([0.0, p.thoracic_swing_pa * breath, p.abdominal_swing_pa * breath])
        for ev in p.events:
            if ev.start_s <= t < ev.start_s + ev.duration_s:
                out[THORAX] += ev.thoracic_pa
                out[ABDOMEN] += ev.abdominal_pa
        return out


class _LaplacianPattern:
    """The graph Laplacian's free-free block (plus a diagonal) and free-fixed block for new conductances.

    The sparsity pattern depends only on the graph, so it is built once: every edge's four entries
    (+g on both diagonals, -g off them) are mapped to their slot in a CSC free-free matrix or a CSR
    free-fixed matrix, and new conductances are scattered with ``np.bincount`` instead of a COO
    build, conversion and fancy indexing per factorisation. The result is the COO build's bit for
    bit (tests/test_venous_dynamics.py): zeros of a blocked segment leave the free-free block, as
    they did when scipy added the diagonal, and stay in the free-fixed block.
    """

    def __init__(self, n: int, edge_u: np.ndarray, edge_v: np.ndarray, free: np.ndarray, fixed: np.ndarray):
        pos_free = -np.ones(n, dtype=np.int64)
        pos_free[free] = np.arange(free.size)
        pos_fixed = -np.ones(n, dtype=np.int64)
        pos_fixed[fixed] = np.arange(fixed.size)
        rows = np.concatenate([edge_u, edge_v, edge_u, edge_v])
        cols = np.concatenate([edge_u, edge_v, edge_v, edge_u])
        self.sign = np.repeat([1.0, 1.0, -1.0, -1.0], edge_u.size)
        nf, nx = free.size, fixed.size
        # free-free block in CSC order (column-major), with every diagonal slot present
        ff = (pos_free[rows] >= 0) & (pos_free[cols] >= 0)
        r = np.concatenate([pos_free[rows[ff]], np.arange(nf)])
        c = np.concatenate([pos_free[cols[ff]], np.arange(nf)])
        keys, slot = np.unique(c * nf + r, return_inverse=True)
        self.ff_entries = np.flatnonzero(ff)
        self.ff_slot = slot[: self.ff_entries.size]
        self.diag_slot = slot[self.ff_entries.size :]
        self.ff_indices = (keys % nf).astype(np.int32)
        self.ff_indptr = np.searchsorted(keys // nf, np.arange(nf + 1)).astype(np.int32)
        self.nf, self.nx = nf, nx
        # free-fixed block in CSR order (row-major)
        fx = (pos_free[rows] >= 0) & (pos_fixed[cols] >= 0)
        r, c = pos_free[rows[fx]], pos_fixed[cols[fx]]
        stride = max(nx, 1)
        keys, self.fx_slot = np.unique(r * stride + c, return_inverse=True)
        self.fx_entries = np.flatnonzero(fx)
        self.fx_indices = (keys % stride).astype(np.int32)
        self.fx_indptr = np.searchsorted(keys // stride, np.arange(nf + 1)).astype(np.int32)

    def matrices(self, g: np.ndarray, diagonal: np.ndarray) -> tuple[sp.csc_matrix, sp.csr_matrix]:
        """(L_ff + diag(diagonal)) in CSC and L_fx in CSR for edge conductances g."""
        vals = np.tile(g, 4) * self.sign
        data = np.bincount(self.ff_slot, weights=vals[self.ff_entries], minlength=self.ff_indices.size)
        data[self.diag_slot] += diagonal
        a = sp.csc_matrix((data, self.ff_indices, self.ff_indptr), shape=(self.nf, self.nf))
        if not data.all():  # as scipy's sum of the Laplacian and the diagonal did (on a copy:
            a = a.copy()  # eliminate_zeros prunes the index arrays, shared with the pattern, in place)
            a.eliminate_zeros()
        fx = np.bincount(self.fx_slot, weights=vals[self.fx_entries], minlength=self.fx_indices.size)
        lap_fd = sp.csr_matrix((fx, self.fx_indices, self.fx_indptr), shape=(self.nf, self.nx))
        return a, lap_fd


class CompliantVenousFlow:
    """The venous network's blood flow in time (implicit Euler), starting from a given steady state."""

    def __init__(
        self, network: VenousNetwork, params: VenousDynamicsParams, initial: BloodFlow, t0: float = 0.0
    ):
        net = self.network = network
        self.params = params
        self.extramural = ExtramuralPressure(params)
        self.compartment = edge_compartments(net)
        self.node_c = node_capacitance(
            net, edge_capacitance(net, params.distensibility_per_pa), self.compartment
        )
        self.c_total = self.node_c.sum(axis=1)
        self.t = float(t0)
        self.p = np.asarray(initial.node_pressure_pa, dtype=np.float64).copy()
        self.flow = initial
        fixed = np.zeros(net.n_nodes, dtype=bool)
        fixed[[net.right_atrium, net.pulmonary_trunk]] = True
        self._fixed = np.flatnonzero(fixed)
        self._free = np.flatnonzero(~fixed)
        self._cvp = float(net.ra_pressure_pa)
        self._lu_key: tuple[float, np.ndarray] | None = None
        self._lu = None
        self._pattern = _LaplacianPattern(net.n_nodes, net.edge_u, net.edge_v, self._free, self._fixed)
        self._ce_memo: dict[float, np.ndarray] = {}
        self._hiatus_up = hiatus_upstream(net) if net.hiatus_edge >= 0 else (-1, 0.0)
        self.solves = 0
        self.factorisations = 0
        # each edge's flow averaged over the last advance (its blood volume / the span; the instantaneous
        # flow after an advance of no time): what carries cement along the veins over that span
        self.mean_edge_flow_m3_s = np.asarray(initial.edge_flow_m3_s, dtype=np.float64)
        self.mean_node_pressure_pa = self.p.copy()  # the same for the node pressures

    # ---------------------------------------------------------------- state
    def weighted_extramural(self, t: float) -> np.ndarray:
        """Ce_i(t) = sum_e c_e/2 p_ext,e(t) per node (m^3).

        A step needs it at its start and end, and the next step starts where this one ends: the
        last two instants are remembered (read-only arrays)."""
        ce = self._ce_memo.get(t)
        if ce is None:
            ce = self.node_c @ self.extramural.at(t)
            ce.flags.writeable = False
            if len(self._ce_memo) >= 2:
                self._ce_memo.pop(next(iter(self._ce_memo)))
            self._ce_memo[t] = ce
        return ce

    def stored_volume_m3(self, p: np.ndarray | None = None, t: float | None = None) -> float:
        """Blood stored in the walls of the free nodes (all but the atrium, which is the outlet):
        sum_i C_i p_i - Ce_i(t), in m^3 up to a constant."""
        p = self.p if p is None else p
        t = self.t if t is None else t
        free = self._free
        return float(self.c_total[free] @ p[free] - self.weighted_extramural(t)[free].sum())

    def ra_pressure(self, t: float) -> float:
        """Right atrial pressure: CVP plus the change of intrathoracic pressure."""
        return self._cvp + float(self.extramural.at(t)[THORAX])

    def hiatus_pressure(self, t: float) -> float:
        """What the IVC drains against at the caval hiatus at t: max(p_RA(t), p_ab(t) + threshold).

        The Starling resistor of :func:`sim.physics.venous_network.hiatus_outlet_pressure` with the
        abdominal pressure's change at t added to its resting value.
        """
        net = self.network
        p_ab = net.abdominal_pressure_pa + float(self.extramural.at(t)[ABDOMEN])
        return max(self.ra_pressure(t), p_ab + net.waterfall_threshold_pa)

    # ---------------------------------------------------------------- stepping
    def advance(self, t_new: float, extra_resistance: np.ndarray | None = None) -> BloodFlow:
        """Advance the pressures from ``self.t`` to ``t_new`` (substeps <= max_step_s); returns the flow."""
        span = float(t_new) - self.t
        if span < 0.0:
            if span < -1e-9 * max(1.0, abs(self.t)):
                raise SolverError(f"venous dynamics: cannot go back in time from {self.t} to {t_new}")
            span = 0.0  # the caller's clock differs from ours in the last bits: the same instant
        g = edge_conductance(self.network, extra_resistance)
        if span == 0.0:
            self.flow = self._flow(g, self.p, self.p, self.t, self.t, 0.0)
            self.mean_edge_flow_m3_s = self.flow.edge_flow_m3_s
            self.mean_node_pressure_pa = self.p.copy()
            return self.flow
        carried = np.zeros(self.network.n_edges)  # blood volume through each edge over the span
        p_time = np.zeros(self.network.n_nodes)  # pressure x time at each node over the span
        t_start = self.t
        for t_end in self._breakpoints(float(t_new)):
            piece = t_end - self.t
            n = max(1, int(np.ceil(piece / self.params.max_step_s * (1.0 - 1e-12))))
            h = piece / n
            for k in range(n):
                t0 = self.t
                self._step(g, self.t + h if k < n - 1 else t_end)
                carried += self.flow.edge_flow_m3_s * (self.t - t0)  # implicit Euler: the substep's end flow
                p_time += self.p * (self.t - t0)
        self.mean_edge_flow_m3_s = carried / (self.t - t_start)
        self.mean_node_pressure_pa = p_time / (self.t - t_start)
        return self.flow

    def _breakpoints(self, t_new: float) -> list[float]:
        """Ends of the pieces of [t, t_new]: every event's start and end inside it, then t_new, so a
        short event (a cough) is never stepped over."""
        edges = {ev.start_s for ev in self.params.events} | {
            ev.start_s + ev.duration_s for ev in self.params.events
        }
        return sorted(e for e in edges if self.t < e < t_new) + [t_new]

    def _factor(self, g: np.ndarray, h: float):
        """LU of (L + C/h) on the free nodes, reused while g is the same and h is within 1e-9 of the
        cached step (step sizes computed from float times differ in their last bits); returns the LU,
        the free-fixed block and the step the matrix was built for, which the step then uses."""
        key = self._lu_key
        if key is not None and abs(key[0] - h) <= 1e-9 * h and np.array_equal(key[1], g):
            return (*self._lu, key[0])
        a, lap_fd = self._pattern.matrices(g, self.c_total[self._free] / h)
        self._lu = (spla.splu(a), lap_fd)
        self._lu_key = (h, g.copy())
        self.factorisations += 1
        return (*self._lu, h)

    def _step(self, g: np.ndarray, t1: float) -> None:
        t0 = self.t
        p_new = self._solve(g, t0, t1)
        hz = self.network.hiatus_edge
        if hz >= 0 and self._hiatus_flow(g, p_new, t1) < 0.0:
            g = g.copy()
            g[hz] = 0.0  # collapsed hiatus (zone 1): no flow either way
            p_new = self._solve(g, t0, t1)
        self.flow = self._flow(g, self.p, p_new, t0, t1, t1 - t0)
        self.p, self.t = p_new, t1

    def _solve(self, g: np.ndarray, t0: float, t1: float) -> np.ndarray:
        lu, lap_fd, h = self._factor(g, t1 - t0)
        net = self.network
        p_ra = self.ra_pressure(t1)
        p_fixed = np.full(self._fixed.size, p_ra)  # pulmonary trunk at RA pressure, as steady
        d_ce = self.weighted_extramural(t1) - self.weighted_extramural(t0)
        free = self._free
        b = (
            net.node_inflow_m3_s[free]
            + (self.c_total[free] * self.p[free] + d_ce[free]) / h
            - lap_fd @ p_fixed
        )
        hz = net.hiatus_edge
        if hz >= 0:  # the IVC drains against the hiatus pressure, not the atrium's
            up, _ = self._hiatus_up
            b[np.searchsorted(free, up)] += g[hz] * (self.hiatus_pressure(t1) - p_ra)
        p_new = np.empty_like(self.p)
        p_new[self._fixed] = p_fixed
        p_new[free] = lu.solve(b)
        self.solves += 1
        return p_new

    def _hiatus_flow(self, g: np.ndarray, p: np.ndarray, t: float) -> float:
        """Flow from the abdominal IVC into the atrium through the hiatus (>= 0 when open)."""
        net = self.network
        hz = net.hiatus_edge
        up, _ = self._hiatus_up
        return float(g[hz] * (p[up] - self.hiatus_pressure(t)))

    def _flow(
        self, g: np.ndarray, p_old: np.ndarray, p_new: np.ndarray, t0: float, t1: float, h: float
    ) -> BloodFlow:
        """Edge flows at p_new; the pump carries what reaches the right atrium; storage-aware KCL check."""
        net = self.network
        flow = g * (p_new[net.edge_u] - p_new[net.edge_v])
        hz = net.hiatus_edge
        if hz >= 0:
            flow[hz] = self._hiatus_up[1] * self._hiatus_flow(g, p_new, t1)
        flow[net.pump_edge] = 0.0
        net_in = net.node_inflow_m3_s.copy()
        np.subtract.at(net_in, net.edge_u, flow)
        np.add.at(net_in, net.edge_v, flow)
        pump = float(net_in[net.right_atrium])
        flow[net.pump_edge] = pump if net.edge_u[net.pump_edge] == net.right_atrium else -pump
        if h <= 0.0:  # same instant, new conductances: no storage term, flows only
            return BloodFlow(node_pressure_pa=p_new.copy(), edge_flow_m3_s=flow, residual=0.0)
        ce0, ce1 = self.weighted_extramural(t0), self.weighted_extramural(t1)
        storage = (self.c_total * (p_new - p_old) - (ce1 - ce0)) / h
        imbalance = net_in - storage
        imbalance[self._fixed] = 0.0
        scale = max(float(net.node_inflow_m3_s.sum()), 1e-300)
        res = float(np.abs(imbalance).max() / scale)
        # The storage term is a difference of two nearly equal volumes over h: its round-off, about
        # eps (C |p| + |Ce|) / h per node, is the best balance a step of h can show (a step of a few
        # nanoseconds, as when an injection ends just past a step's end, has a floor above 1e-9).
        # Only a step that misses 1e-9 pays for the floor (the check runs on every step).
        if not np.isfinite(res) or res > 1e-9:
            volumes = self.c_total * (np.abs(p_new) + np.abs(p_old)) + np.abs(ce0) + np.abs(ce1)
            floor = 8.0 * np.finfo(np.float64).eps * float(volumes.max()) / h / scale
            if not np.isfinite(res) or res > 1e-9 + floor:
                raise SolverError(
                    f"venous dynamics: Kirchhoff residual {res:.3e} (relative to total inflow) too large "
                    f"(allowed 1e-9 + round-off {floor:.1e} for a step of {h:.3g} s)"
                )
        return BloodFlow(node_pressure_pa=p_new.copy(), edge_flow_m3_s=flow, residual=res)
