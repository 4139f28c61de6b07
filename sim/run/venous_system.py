"""VenousSystem: the venous side of the bone <-> vein coupling (implements ``ExitCoupling``).

Per injection step the solver calls ``exit_pressure(t)`` and ``exit_resistance(t)``, then
``accept_flux(t, dt, q_cement, q_marrow)`` with the volumes that left the bone through each exit.
``accept_flux``:
1. pushes each exit's cement volume into the venous graph at the exit's node
   (:class:`sim.physics.vein_columns.CementColumns`); marrow is tallied (it mixes with blood);
2. updates the cement viscosity per edge (the Poiseuille-equivalent viscosity of the pushed column's
   flow at the venous cement's equivalent age, :func:`sim.physics.rheology.tube_flow_viscosity`)
   and re-solves blood flow with the columns' extra resistance
   (:func:`sim.physics.venous_network.solve_blood_flow`);
3. sheds fragments by the fragmentation law (``laws.fragmentation``, :mod:`sim.physics.fragmentation`);
4. takes the fluoroscopy frames due (:class:`sim.physics.fluoroscopy.LeakDetector`): the venous
   side reports when a leak is seen; the operator's stop policy
   (:class:`sim.physics.injection_control.StopPolicy`) decides what that means;
5. updates what the bone sees at each exit. Pressure: one venous pressure, the mean of the
   exit nodes' blood pressures, the same at every exit (intraosseous pressure is one venous
   pressure; see :meth:`VenousSystem._static_exit_pressure`). Resistance: R_col = dp / q of the
   cement columns the exit has pushed (``back_pressure``), returned by ``exit_resistance`` and put
   in series with the foramen inside the bone's pressure solve, so it is implicit and can only
   resist flow through that exit. (A lagged back-pressure applied as the exit's venous pressure
   drove blood backwards through the foramen and across the lumped marrow to the other exits, up
   to 40 ml/s in the seed case; that was an artefact.) A step's R_col is the mean over its pieces,
   each piece's columns taken as the mean of before and after it, and the R_col handed to the next
   step is carried to that step's midpoint along the last three steps' limited slope
   (:func:`sim.physics.vein_columns.midstep_resistance`): the last step's mean alone lagged a growing
   column by about a step, a first-order time error that let longer steps leak more early on (the
   default at 0.75 mm: +9.8 % at cfl 0.8 against cfl 0.1, +6.0 % with the prediction).

The vein leaving through each foramen is given the foramen's diameter (:func:`fit_exit_veins`).

Compliant veins (``veins.dynamics.mode = compliant``, :mod:`sim.physics.venous_dynamics`): the
blood flow is advanced in time every step (implicit Euler, wall capacitance, extramural pressures of
breathing and straining, right atrium at CVP plus the intrathoracic change), with the same column
resistances; the exit pressure follows the dynamic exit-node pressures. ``steady`` (default) keeps
one steady Kirchhoff solve per step, unchanged.

Cement age in the veins (:mod:`sim.physics.cure_clock`): cement leaves the syringe with the
syringe's age and ages at the body rate in the veins; the veins hold one pool, the volume-weighted
mean age. This treats leaked cement as fresh from the syringe (cement that sat in the bone first
is older).

After the injection, :meth:`VenousSystem.relax` advances the venous side one fluoroscopy frame
without pushing: fragments are shed only while loads beat the (growing) strength, until the cement
sets. Time series and frames are kept by the run's recorder (:mod:`sim.run.recorder`), not here.

Mass balance: cement received = cement in columns + cement in fragments (checked every step to
1e-12 relative; SolverError otherwise).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from sim.core.errors import GeometryError, SolverError
from sim.core.grid import BoneGrid, VenousExit
from sim.core.parameters import FluoroscopyParams, VenousDynamicsParams
from sim.physics import rheology
from sim.physics.cure_clock import AgePool, CureClock
from sim.physics.fluoroscopy import LeakDetector, detection_shift_per_percent_s
from sim.physics.fragment_set import FragmentSet, VenousFlowSnapshot
from sim.physics.fragment_tracks import FragmentTracks, TransitModel
from sim.physics.fragment_transport import venous_routing
from sim.physics.fragmentation import DragStrengthBreakup, DragVsStrength
from sim.physics.injection import mark_leak_onsets
from sim.physics.rheology import CementModel
from sim.physics.vein_columns import CementColumns, back_pressure, midstep_resistance
from sim.physics.venous_dynamics import CompliantVenousFlow
from sim.physics.venous_network import (
    ROUTES,
    BloodFlow,
    VenousNetwork,
    edge_conductance,
    flow_snapshot,
    solve_blood_flow,
)

MASS_TOL = 1.0e-12
MAX_PUSH_SUBSTEPS = 64  # bound on the tip checks per step (cost; frames add pieces), see accept_flux


def map_exits(network: VenousNetwork, exits: list[VenousExit]) -> np.ndarray:
    """Graph node of each exit: by name, else by kind and side (x > 0 is patient left)."""
    nodes = []
    for ex in exits:
        if ex.name in network.exit_nodes:
            nodes.append(network.exit_nodes[ex.name])
            continue
        if ex.kind == "basivertebral":
            key = "basivertebral"
        elif ex.kind in ("anterior", "lateral"):
            side = "left" if float(np.asarray(ex.position_m)[0]) >= 0.0 else "right"
            key = f"{ex.kind}_{side}"
        else:
            key = ""
        if key not in network.exit_nodes:
            raise GeometryError(
                f"exit '{ex.name}' (kind '{ex.kind}') has no node in the venous network of {network.level} "
                f"(known exits: {', '.join(network.exit_nodes)})"
            )
        nodes.append(network.exit_nodes[key])
    return np.asarray(nodes, dtype=np.int64)


def fit_exit_veins(network: VenousNetwork, exits: list[VenousExit], exit_nodes: np.ndarray) -> VenousNetwork:
    """Give the vein that leaves through each foramen the foramen's own diameter.

    The template's first segment beyond an exit is a generic 1-2 mm vein [U]; the bone model
    sizes each foramen per patient (the basivertebral foramen from CT morphometry, He et al. 2023;
    nutrient foramina [U]). A vessel fills the foramen it runs through, so the two must agree;
    otherwise a wide foramen would empty into a narrow vein (Poiseuille resistance ~ d^-4).
    """
    d = network.edge_diameter_m.copy()
    for ex, node in zip(exits, exit_nodes, strict=True):
        incident = (network.edge_u == node) | (network.edge_v == node)
        d[incident] = float(ex.diameter_m)
    return dataclasses.replace(network, edge_diameter_m=d)


class VenousSystem:
    """Venous network + cement columns + leak detection + fragmentation, coupled to the bone."""

    def __init__(
        self,
        network: VenousNetwork,
        exits: list[VenousExit],
        cement: CementModel,
        clock: CureClock,
        fluoroscopy: FluoroscopyParams,
        fragmentation: DragVsStrength | DragStrengthBreakup,
        rng: np.random.Generator,
        bone: BoneGrid | None = None,
        dynamics: VenousDynamicsParams | None = None,
        *,
        transit: TransitModel,
    ):
        if not exits:
            raise GeometryError(f"VenousSystem for {network.level}: no venous exits given")
        self.exits = list(exits)
        self.exit_nodes = map_exits(network, self.exits)
        self.network = network = fit_exit_veins(network, self.exits, self.exit_nodes)
        self.cement = cement
        self.clock = clock
        self.vein_age = AgePool(clock)  # received cement (columns and fragments shed from them)
        self.fragmentation = fragmentation
        self.rng = rng
        self.bone = bone
        # the C-arm is centred on the body: its continuous outline's centre, so the detector's pixel
        # raster is the same on every grid (the body cells' centroid moved it by up to 0.03 mm, a tenth
        # of a pixel, enough to change a vein hugging the silhouette's edge by 8 %)
        center = network.meta.get("level_center_m", np.zeros(3))
        if bone is not None and bone.outline is not None:
            center = np.asarray(bone.outline.center_m, dtype=np.float64)
        elif bone is not None:
            idx = np.flatnonzero(bone.body.ravel())
            if idx.size:
                center = bone.cell_centers_m(idx).mean(axis=0)
        self.detector = LeakDetector(fluoroscopy, center, bone)
        self.transit = transit
        self.detector.tracks = FragmentTracks(network)
        self.columns = CementColumns.empty(network)
        self.fragments = FragmentSet.empty()
        self.flow: BloodFlow = solve_blood_flow(network)
        self.baseline_flow = self.flow
        # compliant veins solved in time from the steady state (None: one steady solve per step)
        self.dynamics = (
            CompliantVenousFlow(network, dynamics, self.flow)
            if dynamics is not None and dynamics.mode == "compliant"
            else None
        )
        self._extra = np.zeros(network.n_edges)
        self._push_flux = np.zeros(network.n_edges)  # cement flux into each edge over the last step
        n = len(self.exits)
        self.cement_by_exit_m3 = np.zeros(n)
        self.marrow_by_exit_m3 = np.zeros(n)
        self.exit_onset_s = np.full(n, np.nan)
        self._p_exit = self._static_exit_pressure()
        # the step means of the exits' column resistances over their last three pushing steps, dated at
        # those steps' midpoints (row 2: the newest), and how many of the steps just taken each exit
        # pushed in without a pause
        self._r_mid = np.zeros((3, n))
        self._r_mid_t = np.zeros((3, n))
        self._pushes = np.zeros(n, dtype=np.int64)
        self._last_dt = 0.0
        self.set_time_s: float | None = None

    @property
    def received_m3(self) -> float:
        """Cement received from the bone so far (in columns or shed as fragments)."""
        return self.vein_age.volume_m3

    # ------------------------------------------------------------------ clocks
    def cement_age_s(self, t: float) -> float:
        """Equivalent age of the cement in the veins at time t (the syringe's before any arrived)."""
        return self.vein_age.age_s(t)

    def strength_pa(self, t: float) -> float:
        """Strength of the vein cement at time t (inf once set), by the fragmentation law."""
        return self.fragmentation.strength_pa(self.cement, self.cement_age_s(t))

    # ------------------------------------------------------------------ ExitCoupling
    def exit_pressure(self, t: float) -> np.ndarray:
        """Venous pressure (Pa) at each exit, same order as the exits."""
        return self._p_exit.copy()

    def exit_resistance(self, t: float) -> np.ndarray:
        """Resistance (Pa s/m^3) of the cement column each exit has pushed into its veins.

        Flow through the exit in either direction has to move that column, so it acts in series
        with the foramen (implicit in the bone's pressure solve, unlike a lagged back-pressure,
        which would drive blood backwards through the exit into the marrow).
        """
        # predicted at the coming step's midpoint, its length taken as the last step's (the bone chooses
        # the step after this solve); see midstep_resistance
        return midstep_resistance(t + 0.5 * self._last_dt, self._r_mid_t, self._r_mid, self._pushes >= 3)

    def step_end(self, t0: float, t1: float, cement_m3: float) -> float:
        """Where an injection step over [t0, t1] that leaks ``cement_m3`` must end: at the first
        fluoroscopy frame inside it if the leak could be seen there, else at t1.

        A frame can only see the leak once more cement has left the bone than the visibility threshold
        (the visible volume is part of the leaked volume). From then until the leak is seen, steps end
        on frames, so the leak is seen at a step's end and a stop that follows it by any delay is met
        exactly by the next steps (:meth:`sim.physics.injection.InjectionSolver.take_step`). This
        depends on the leak only, not on the stop policy, so runs that differ only in their stop take
        the same steps until they stop.
        """
        det = self.detector
        if det.detection_time_s is not None:
            return t1
        if float(self.cement_by_exit_m3.sum()) + cement_m3 <= det.threshold_m3:
            return t1
        frames = det.frames_due_in(t0, t1)
        return frames[0] if frames else t1

    def accept_flux(self, t: float, dt: float, q_cement: np.ndarray, q_marrow: np.ndarray) -> None:
        """Take the cement and marrow fluxes (m^3/s per exit) that left the bone over [t, t + dt]."""
        n = len(self.exits)
        qc = np.asarray(q_cement, dtype=np.float64).reshape(-1)
        qm = np.asarray(q_marrow, dtype=np.float64).reshape(-1)
        if qc.shape != (n,) or qm.shape != (n,):
            raise SolverError(f"accept_flux: expected {n} exit fluxes, got {qc.shape} and {qm.shape}")
        if not dt >= 0 or not np.all(np.isfinite(qc)) or not np.all(np.isfinite(qm)):
            raise SolverError(f"accept_flux: non-finite flux or negative dt ({dt}) at t = {t}")
        if np.any(qc < 0.0):
            e = int(np.argmin(qc))
            raise SolverError(
                f"accept_flux: negative cement flux {qc[e]:.3g} m3/s at exit '{self.exits[e].name}'"
            )
        t_new = float(t) + float(dt)
        self.detector.update(float(t), self.columns)  # a frame due at the step's start sees its start
        vol_c = qc * dt
        # leaked cement arrives with the syringe's age (treated as fresh, see the module docstring)
        self.vein_age.mix_in(float(vol_c.sum()), self.clock.syringe_age_s(t), float(t))
        prev_c = self.cement_by_exit_m3.copy()
        self.cement_by_exit_m3 += vol_c
        self.marrow_by_exit_m3 += qm * dt  # net: blood drawn back into the bone counts negative
        # onset: the cumulative cement through the exit passes LEAK_ONSET_M3 (as in the injection
        # solver), at the time within the piece a constant flux reaches it; "any cement > 0" made the
        # onset follow round-off traces of cement in a cell upstream of the exit
        mark_leak_onsets(self.exit_onset_s, prev_c, self.cement_by_exit_m3, vol_c, float(t), float(dt))
        bp = np.zeros(n)
        if np.any(vol_c > 0.0):
            # the tips are checked at least once per shed piece length of column travel, so where a piece
            # is born does not depend on the injection step (a column pushed a whole step before its first
            # check would leave the plexus before it is torn off)
            area = 0.25 * np.pi * np.array([ex.diameter_m for ex in self.exits]) ** 2
            travel = float(np.max(vol_c / area))
            n_sub = int(
                min(max(np.ceil(travel / self.fragmentation.params.length_median_m), 1), MAX_PUSH_SUBSTEPS)
            )
            # the pieces also end on every fluoroscopy frame inside the step, so a frame sees the
            # columns of its own time, not those of the step's end (a 1 mm step can last a second)
            # (a regular end within 1e-9 s of a frame gives way to it: no piece of round-off length)
            frames = self.detector.frames_due_in(float(t), t_new)
            ends = [float(t) + (k + 1) * float(dt) / n_sub for k in range(n_sub - 1)]
            ends = sorted([e for e in ends if all(abs(e - f) > 1e-9 for f in frames)] + frames) + [t_new]
            n_sub = len(ends)
            t_prev = float(t)
            done = np.zeros_like(vol_c)  # pushed so far: the last piece takes the exact remainder
            bp_time = np.zeros(n)  # back pressure x duration, summed over the pieces
            p_exit_time = 0.0  # the exits' venous pressure x duration (compliant veins)
            for k, t_k in enumerate(ends):
                h = t_k - t_prev
                t_prev = t_k
                upto = vol_c if k == n_sub - 1 else vol_c * ((t_k - float(t)) / float(dt))
                piece, done = upto - done, upto
                through_sum = np.zeros(self.network.n_edges)
                g = edge_conductance(self.network, self._extra)
                mu_now = self._edge_viscosity(self._push_flux, t_k)
                r_cem = self.columns.cement_resistance(mu_now)
                carrier = self.flow.edge_flow_m3_s
                if self.dynamics is not None:
                    # the cement follows the blood that the veins carry over the piece (breathing moves it
                    # within a piece): the flow averaged over the piece with the columns as they were, not
                    # the flow at the piece's start, which sampled the breathing at the step ends
                    self.flow = self.dynamics.advance(t_k, self._extra)
                    carrier = self.dynamics.mean_edge_flow_m3_s
                    p_exit_time += float(self.dynamics.mean_node_pressure_pa[self.exit_nodes].mean()) * h
                throughs = {}
                for e in np.flatnonzero(vol_c > 0.0):
                    throughs[e] = self.columns.push(
                        int(self.exit_nodes[e]),
                        float(piece[e]),
                        float(self.exits[e].diameter_m),
                        carrier,
                        g,
                        exit_index=int(e),
                    )
                    through_sum += throughs[e]
                # the columns' resistance over the piece: the mean of before and after it (trapezoid), so
                # a step's mean back pressure is that of its midpoint to second order (midstep_resistance)
                r_cem = 0.5 * (r_cem + self.columns.cement_resistance(mu_now))
                for e, through in throughs.items():
                    bp_time[e] += back_pressure(through, r_cem, float(piece[e]), h) * h
                self._push_flux = through_sum / max(h, 1e-300)
                self._resolve(self._push_flux, t_k)
                if k < n_sub - 1:
                    self._shed(t_k)
                    self.detector.update(t_k, self.columns)
            bp = bp_time / max(float(dt), 1e-300)  # the step's mean back pressure
            p_exit_mean = p_exit_time / max(float(dt), 1e-300)
        else:
            self._push_flux = np.zeros(self.network.n_edges)
            if self.dynamics is not None:  # the veins move in time even when no cement does
                self.flow = self.dynamics.advance(t_new, self._extra)
                p_exit_mean = float(self.dynamics.mean_node_pressure_pa[self.exit_nodes].mean())
            self.detector.update(
                t_new, self.columns, before=True
            )  # frames inside the step: before its shedding
        self._shed(t_new)
        self._update_exit_coupling(
            qc, bp, float(t) + 0.5 * float(dt), p_exit_mean if self.dynamics is not None else None
        )
        self._last_dt = float(dt)
        self.detector.update(t_new, self.columns)
        self._check_mass()

    def relax(self, t: float) -> None:
        """Advance to ``t`` after the injection: no pushing; blood flow, shedding and fluoroscopy go on."""
        if self.set_time_s is None and rheology.is_set(self.cement, self.cement_age_s(t)):
            self.set_time_s = t
        self._resolve(np.zeros(self.network.n_edges), t)
        self.detector.update(t, self.columns, before=True)  # frames inside the step: before its shedding
        self._shed(t)
        self.detector.update(t, self.columns)
        self._check_mass()

    # ------------------------------------------------------------------ internals
    def _edge_viscosity(self, push_flux_m3_s: np.ndarray, t: float) -> np.ndarray:
        """The cement's Poiseuille-equivalent viscosity per edge at the pushed column's flow
        (:func:`sim.physics.rheology.tube_flow_viscosity`: the exact laminar drop of the clipped power
        law, where the viscosity at the Newtonian wall rate 8 u / d fell short by ((3n+1)/(4n))^n)."""
        d = np.where(
            self.columns.col_diameter_m > 0, self.columns.col_diameter_m, self.network.edge_diameter_m
        )
        return rheology.tube_flow_viscosity(self.cement, push_flux_m3_s, d, self.cement_age_s(t))

    def _resolve(self, push_flux_m3_s: np.ndarray, t: float) -> None:
        """Blood flow at t with the columns' resistance: steady solve, or compliant veins advanced to t."""
        if self.columns.total_m3() <= 0.0 and not np.any(self._extra):
            if self.dynamics is not None:
                self.flow = self.dynamics.advance(t, self._extra)
            return
        mu = self._edge_viscosity(push_flux_m3_s, t)
        self._extra = self.columns.extra_resistance(mu)
        if self.dynamics is None:
            self.flow = solve_blood_flow(self.network, self._extra)
        else:
            self.flow = self.dynamics.advance(t, self._extra)

    def _shed(self, t: float) -> None:
        if self.columns.total_m3() <= 0.0:
            return
        new = self.fragmentation.shed(
            self.columns,
            self.flow.edge_flow_m3_s,
            self.flow.node_pressure_pa,
            self.cement,
            self.cement_age_s(t),
            t,
            self.rng,
        )
        if len(new):
            self.fragments = self.fragments.concat(new)
            if self.detector.tracks is not None:  # the leak is not seen yet: follow them in the image
                self._track(new)
            self._resolve(np.zeros(self.network.n_edges), t)

    def _track(self, new: FragmentSet) -> None:
        """Fragments just shed, moved on in the image with the blood flow that shed them."""
        route = venous_routing(flow_snapshot(self.network, self.flow), self.transit.slip_factor)
        margin = self.transit.lodging.margin(self.cement, new.cure_age_s)
        uniforms = self.transit.rng.random((len(new), max(route.max_steps, 1)))
        length = self.network.edge_length_m[new.edge]
        # offsets run with the blood flow that shed them (from v where it ran v -> u)
        from_u = np.where(self.flow.edge_flow_m3_s[new.edge] >= 0.0, new.offset_m, length - new.offset_m)
        self.detector.tracks.add(
            route, int(self.network.right_atrium), new.edge, from_u, new.diameter_m, new.length_m,
            new.volume_m3, margin, new.birth_time_s, uniforms,
        )  # fmt: skip

    def _static_exit_pressure(self) -> np.ndarray:
        """Venous pressure the marrow drains against: the mean over the exit nodes, the same at every exit.

        Intraosseous pressure is one hydrostatic venous pressure, tied to the IVC pressure
        (Spine 1981;6:159; Esses & Moro 1992 Spine); the marrow's net outflow is the bone's arterial
        inflow, not a vein-to-vein shunt. The rigid-tube network puts its exit nodes a few Pa apart
        (< 0.1 mmHg), and the isobaric marrow lump of the ``front`` method has no resistance of its
        own, so those differences alone would drive ml/s of blood from one foramen through the body
        to another. The exits therefore share the mean node pressure; what a cement column adds at
        its own exit (``back_pressure``) stays per exit. With compliant veins
        (:mod:`sim.physics.venous_dynamics`) the node pressures are those of the current time, so the
        exit pressure follows breathing and straining (a Valsalva raises it by up to ~90 mmHg).
        """
        p = self.flow.node_pressure_pa[self.exit_nodes]
        return np.full(p.shape, float(p.mean()))

    def _update_exit_coupling(
        self, qc: np.ndarray, bp: np.ndarray, t_mid: float, p_mean: float | None = None
    ) -> None:
        """Static venous pressure at every exit; column resistance R = dp / q of the step just taken
        (midpoint ``t_mid``) for exits that pushed cement, kept with the two before it.

        With compliant veins the pressure is the exits' mean over the step just taken (``p_mean``), not
        the pressure at its end: the next step of the bone drains against it, and a pressure read at the
        step ends would sample the breathing cycle at whatever times the steps end."""
        self._p_exit = self._static_exit_pressure() if p_mean is None else np.full(len(self.exits), p_mean)
        pushed = qc > 0.0
        self._pushes = np.where(pushed, self._pushes + 1, 0)
        self._r_mid[:, pushed] = np.roll(self._r_mid[:, pushed], -1, axis=0)
        self._r_mid_t[:, pushed] = np.roll(self._r_mid_t[:, pushed], -1, axis=0)
        self._r_mid[2, pushed], self._r_mid_t[2, pushed] = bp[pushed] / qc[pushed], t_mid

    def _check_mass(self) -> None:
        err = self.mass_balance_error()
        if err > MASS_TOL:
            raise SolverError(
                f"venous cement mass balance: received {self.received_m3:.6e} m3, relative error {err:.2e} "
                f"between it and the cement in columns plus fragments"
            )

    # ------------------------------------------------------------------ results
    @property
    def leak_onset_s(self) -> float | None:
        """Time the cement through any one exit first exceeded LEAK_ONSET_M3 (1e-3 mm^3)."""
        return None if np.all(np.isnan(self.exit_onset_s)) else float(np.nanmin(self.exit_onset_s))

    @property
    def detection_time_s(self) -> float | None:
        return self.detector.detection_time_s

    @property
    def marrow_leaked_m3(self) -> float:
        return float(self.marrow_by_exit_m3.sum())

    def leaked_by_exit_kind(self) -> dict[str, float]:
        """Cement received per exit kind (basivertebral / anterior / lateral)."""
        out: dict[str, float] = {}
        for ex, v in zip(self.exits, self.cement_by_exit_m3, strict=True):
            out[ex.kind] = out.get(ex.kind, 0.0) + float(v)
        return out

    def fragments_by_route(self) -> dict[str, float]:
        route = (
            self.network.edge_route[self.fragments.edge] if len(self.fragments) else np.array([], dtype=str)
        )
        return {r: float(self.fragments.volume_m3[route == r].sum()) for r in ROUTES}

    def volume_by_route(self) -> dict[str, float]:
        """Leaked cement by route: still in columns there plus fragments born there."""
        cols = self.columns.volume_by_route()
        frag = self.fragments_by_route()
        return {r: cols[r] + frag[r] for r in ROUTES}

    def mass_balance_error(self) -> float:
        """|received - (in columns + shed)| / received."""
        held = self.columns.total_m3() + float(self.fragments.volume_m3.sum())
        return abs(held - self.received_m3) / max(self.received_m3, 1e-300)

    def flow_snapshot(self) -> VenousFlowSnapshot:
        """Current blood flows (with cement columns) for fragment transport."""
        return flow_snapshot(self.network, self.flow)

    def summary(self) -> VenousSummary:
        """What the venous side ended with (SI)."""
        return VenousSummary(
            leak_onset_s=self.leak_onset_s,
            detection_time_s=self.detection_time_s,
            peak_visible_m3=max(self.detector.frames_visible_m3, default=0.0),
            # None for a leak not seen: frames end at the first one above the threshold
            detection_shift_per_percent_s=detection_shift_per_percent_s(
                self.detector.frames_visible_m3, self.detector.threshold_m3, self.detector.frame_interval_s
            ),
            cement_set_time_s=self.set_time_s,
            leaked_cement_m3=self.received_m3,
            leaked_marrow_m3=self.marrow_leaked_m3,
            leaked_by_exit_kind_m3=self.leaked_by_exit_kind(),
            leaked_by_route_m3=self.volume_by_route(),
            vein_cement_m3=self.columns.total_m3(),
            fragments_shed=len(self.fragments),
            fragment_volume_m3=float(self.fragments.volume_m3.sum()),
            mass_balance_error=self.mass_balance_error(),
        )


@dataclass(frozen=True)
class VenousSummary:
    """The venous side's outcome (SI; times in s from injection start, None if never)."""

    leak_onset_s: float | None
    detection_time_s: float | None
    # largest visible extra-vertebral volume over the frames taken. Frames end at detection, so for a
    # seen leak it is the detecting frame's value (its overshoot), for an unseen one how near its
    # threshold it came: the continuous quantity behind the detection time
    peak_visible_m3: float
    # seconds the detecting frame moves per 1 % error in the visible volume (None: not seen), its conditioning
    detection_shift_per_percent_s: float | None
    cement_set_time_s: float | None
    leaked_cement_m3: float
    leaked_marrow_m3: float  # net: blood drawn back into the bone counts negative
    leaked_by_exit_kind_m3: dict[str, float]  # basivertebral / anterior / lateral (those present)
    leaked_by_route_m3: dict[str, float]  # plexus / segmental / azygos / ivc / heart
    vein_cement_m3: float
    fragments_shed: int
    fragment_volume_m3: float
    mass_balance_error: float
