"""3D two-phase Darcy injection of PMMA cement into a vertebral body (IMPES and front methods).

Model. Cement (viscosity mu_c, shear-thinning and curing, from :mod:`sim.physics.rheology`)
displaces Newtonian marrow (mu_m) through the porous cells of a :class:`sim.core.grid.BoneGrid`;
both are incompressible and immiscible with linear relative permeabilities (Aziz & Settari 1979,
Petroleum Reservoir Simulation, ch. 5):

    div(lambda grad p) = -q,   lambda = k (S/mu_c + (1-S)/mu_m),
    phi dS/dt + div(f(S) u) = q_cement,   f(S) = (S/mu_c) / (S/mu_c + (1-S)/mu_m).

The lumens of the embedded veins are tubes, not porous media: cement that enters one forms a column
in series with the blood ahead of it, as in the veins outside the bone (:mod:`sim.physics.vein_columns`),
so a lumen node's mobility is the series one, 1 / (S mu_c + (1-S) mu_b) (:func:`mixture_mobility`).

IMPES splitting: each step solves the pressure with mobilities lagged from the previous step
(TPFA, :mod:`sim.physics.pressure`), then advances S along the resulting fluxes
(:mod:`sim.physics.cement_transport`, implicit upwind in flow order, exact volume conservation).
Sources: the injected flow enters the needle-tip cells split by ``Needle.tip_weights``. Exits: Robin coupling
q_e = (p_cell - p_vein,e) / (1/(G_e lambda_rel(cell)) + R_e) with G_e = pi d^4/(128 L) of the
foramen split equally over its cells, and p_vein,e and the series resistance R_e of a cement
column already in the vein from the :class:`ExitCoupling`; what leaves an exit cell is upwinded
(cement leaves only once cement has reached that cell).

Cement viscosity. Power law with cure from :mod:`sim.physics.rheology`; the pore shear rate comes from
the cell's Darcy speed (Christopher & Middleman 1965 type, ``porous_shear_rate``) of the previous
step (Picard lag; three Picard passes on the first step). Cure (:mod:`sim.physics.cure_clock`): the
cement in the bone is one pool with the volume-weighted mean equivalent age; cement enters with
the syringe's age and ages at the body-temperature rate once inside. Cement in the cannula uses
the syringe age for the cannula pressure drop. The exits' conductances come from the exchange law
(:mod:`sim.physics.bone_vein_exchange`).

Methods.
- ``"impes"``: full pressure system on every reachable porous cell, time step from the volume
  CFL condition over all cells (dt = cfl * min phi V / throughput): the reference.
- ``"front"``: resin-transfer-moulding-style front tracking. Every connected marrow region is one
  isobaric unknown (error of order mu_m/mu_c of the cement pressure drop), so the pressure system
  lives on the cement cells plus a few lumps; the step is limited only by the front cells
  (cells not yet 99 % full that receive cement: dt = cfl * min phi V / cement inflow; a lumen node
  that can fill within the step counts as feeding the nodes after it), not by the inlet, where
  cement-filled cells stay full, and while the needle's ball fills, by cfl / BALL_FILL_STEPS of the
  ball per step. Same transport kernel and conservation as IMPES.

Control (:class:`sim.physics.injection_control.InjectionControl`). ``mode="rate"`` injects at
``rate_m3_per_s`` and stops with ``"pressure_limit"`` if the syringe pressure (needle pressure +
cannula drop) would exceed ``max_syringe_pressure_pa``. ``mode="pressure"`` reduces the rate so the
syringe pressure equals the limit: for fixed mobilities p = p0 + Q p1 (two right-hand sides, one
matrix), and Q solves the scalar equation p_needle(Q) + dp_cannula(Q) = limit (p_needle with the
tip's near field, as reported); it stops with
``"pressure_limit"`` when Q falls below 1e-3 of the nominal rate. Runs stop at the target volume
(the last step is shortened to land on it exactly), at ``max_duration_s``, when the driver's
``stop_requested(t)`` says so (the operator's stop policy) or when the cement in the syringe has set
(``"cement_set"``).

State. :class:`InjectionSolver` holds the state (:class:`InjectionState`) and advances it a step
at a time: ``plan_step()`` solves the pressure, ``take_step(plan)`` moves the cement by one or more
pieces of that step; :func:`drive_injection` is the driver loop (used by :func:`run_injection`), and
the coupled run of :mod:`sim.run.coupling` drives the same solver with the venous side and the stop
policy.

Mass balance. Every step checks injected = cement in bone + cement leaked and marrow displaced
= marrow leaked, relative to the injected volume, and raises SolverError above 1e-10.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numba
import numpy as np
from scipy.optimize import brentq

from sim.core.errors import ConfigError, GeometryError, SolverError
from sim.core.grid import BoneGrid, EmbeddedVessels, Needle
from sim.physics import rheology
from sim.physics.bone_vein_exchange import EmbeddedVeinExchange, ForamenPoiseuille
from sim.physics.cement_transport import front_time_step, throughput_rate, transport_step
from sim.physics.cure_clock import AgePool, CureClock
from sim.physics.injection_control import InjectionControl
from sim.physics.marrow_outflow import LumpedMarrowOutlet
from sim.physics.pressure import (
    CellGraph,
    PressureSolver,
    assemble_front,
    assemble_full,
    build_cell_graph,
    face_transmissibility,
    front_faces,
    front_unknowns,
    listed_face_flux,
)
from sim.physics.rheology import CementModel
from sim.physics.well_index import ball_source_near_field_pa, point_source_near_field_pa

MASS_BALANCE_TOL = 1e-10
TARGET_VOLUME_RTOL = 1e-12  # a step within this share of the target volume of it is the last
LEAK_ONSET_M3 = 1e-12  # cumulative cement through an exit that counts as leak onset (1e-3 mm^3)
ARRIVAL_SATURATION = 0.5  # a cell's arrival time is when S first reaches this
OUTLET_IMBALANCE_WINDOW = 1e-5  # largest solver flux residual (relative to Q) the marrow outlet absorbs
CEMENT_CELL_MIN_S = 1e-6  # front method: cells above this saturation are cement unknowns
FULL_CELL_S = 0.99  # front method: cells above this no longer limit the step
# While the needle's ball (sim.physics.well_index) fills, a step fills at most cfl / BALL_FILL_STEPS of
# it, on every grid. Its cells fill together, and backward Euler charges the step's end fractional flow
# f(S) to the whole step: the cement that leaves the ball while it fills (a trace, f is convex) is
# overestimated by about 1.4 / N with N steps to S = 0.6 (m = 100: 2.8x in one step, +4.5 % in 32).
# 32 is about the ball's cell count on the grids of 1 mm and coarser (its radius is 2 h there), so
# those grids keep the resolution of "cfl of one ball cell per step"; finer grids no longer take
# (rho / h)^3 times as many steps to fill it (0.5 mm: 268 cells, 343 of the default's 454 steps).
# "The ball" here is the pore volume of every tip cell, cut cells included (sim.physics.kernel_cover):
# 2.3 / 1.6 times the covered volume at 1 / 0.5 mm. Limiting by the covered volume instead took 86 ->
# 120 steps for cohort patient 0 at 1 mm and moved its veins' uptake by < 0.5 % (December 2026).
BALL_FILL_STEPS = 32
STALL_FRACTION = 1e-3  # pressure mode: stop when the admissible rate drops below this share
METHODS = ("front", "impes")
BLOOD_VISCOSITY_PA_S = (
    3.5e-3  # default resident fluid of embedded veins (the run passes veins.blood_viscosity)
)


def mixture_mobility(
    saturation: np.ndarray, mu_cement: np.ndarray, mu_resident: np.ndarray, is_lumen: np.ndarray
) -> np.ndarray:
    """Total mobility (1/(Pa s)) of cells holding cement at ``saturation`` and a resident fluid.

    Porous cells: the two phases flow side by side (linear relative permeabilities, Aziz & Settari
    1979, ch. 5): lambda = S/mu_c + (1-S)/mu_m. Vein lumens (``is_lumen``): the cement fills a tube
    as a column in series with the blood ahead of it (Poiseuille resistances add along the tube, as
    for the veins outside the bone, :mod:`sim.physics.vein_columns`): lambda = 1 / (S mu_c + (1-S) mu_b),
    so a lumen node's half-edges resist as S of their length of cement and 1-S of blood. Limiting
    cases (tests/test_injection.py): both equal 1/mu at S = 0 and S = 1; a chain of lumen nodes of one
    diameter holding a column of length x conducts pi d^4 / (128 (mu_c x + mu_b (L - x))) whatever
    the number of nodes it is split over (the side-by-side rule lets a node half full of a cement 1e4
    times more viscous than blood conduct like half as much blood).

    Limits. S is a share of the node's volume and applies to all its half-edges alike, so at a node
    where the diameter changes (a tributary joining a wider vein) the column's resistance is that of
    the node's mean fill, not of the half it actually fills: one node per diameter change. The
    cement's viscosity of a lumen is not the node's but each edge's (:func:`lumen_edge_transmissibility`,
    the solver's lumen faces); here ``mu_cement`` is whatever the caller gives. The
    transport moves the column consistently as a piston: a lumen node passes cement on only once it
    is full (:mod:`sim.physics.cement_transport`). All arrays have the same shape.
    """
    s = np.minimum(saturation, 1.0)
    lam = s / mu_cement + (1.0 - s) / mu_resident
    lum = np.asarray(is_lumen, dtype=bool)
    if lum.any():
        lam[lum] = 1.0 / (s[lum] * mu_cement[lum] + (1.0 - s[lum]) * mu_resident[lum])
    return lam


def lumen_edge_transmissibility(
    g_half_m3: np.ndarray,
    s_a: np.ndarray,
    s_b: np.ndarray,
    mu_cement_edge: np.ndarray,
    mu_blood: np.ndarray,
) -> np.ndarray:
    """Transmissibility (m^3/(Pa s)) of vein-lumen edges holding cement columns, each edge with the
    cement viscosity of its own flow.

    An edge between lumen nodes a and b is two half-tubes of conductance g = 2 pi d^4 / (128 L) each,
    filled to their node's S as a cement column in series with blood (:func:`mixture_mobility`), the
    column at the edge's viscosity mu_e (the cement's Poiseuille-equivalent viscosity at the edge's flow
    and diameter, :func:`sim.physics.rheology.tube_flow_viscosity`, the exact laminar drop of its flow
    curve):

        T = g / (S_a mu_e + (1 - S_a) mu_b + S_b mu_e + (1 - S_b) mu_b).

    Evaluated per node instead (the node's flow over the node's mean diameter), a node where a 1.6 mm
    trunk meets a 5.9 mm canal or four 1 mm tributaries gave its half-edges a viscosity of neither
    vessel: a resistance error of about half an edge per junction, first order in the spacing and
    of either sign, which kept cohort patient 0's leak from converging (December 2026). Limiting cases
    (tests/test_embedded_vessels.py): mu_e equal to the nodes' viscosity gives the node rule exactly;
    a chain of two diameters carrying Q of a shear-thinning cement has the exact laminar pressure drop
    of its two segments, each at its own calibre, on any number of nodes.
    """
    mu_a = s_a * mu_cement_edge + (1.0 - s_a) * mu_blood
    mu_b = s_b * mu_cement_edge + (1.0 - s_b) * mu_blood
    return g_half_m3 / (mu_a + mu_b)


def lumen_faces(graph: CellGraph, vessels: EmbeddedVessels | None) -> tuple[np.ndarray, np.ndarray]:
    """The graph's vein-lumen edges (faces with a lumen node on both sides) and their vessel's diameter
    (m), for :func:`lumen_edge_transmissibility`. Two vessel edges between the same pair of nodes (parallel
    vessels) are told apart by their order: the graph adds the edges' faces in edge order."""
    grid = graph.is_grid_cell
    faces = np.flatnonzero(~grid[graph.face_a] & ~grid[graph.face_b])
    if vessels is None or faces.size == 0:
        return faces, np.zeros(faces.size)
    va = graph.cell_of[graph.face_a[faces]] - graph.n_grid
    vb = graph.cell_of[graph.face_b[faces]] - graph.n_grid
    edges_of: dict[tuple[int, int], list[int]] = {}
    for e, (a, b) in enumerate(zip(vessels.edge_a.tolist(), vessels.edge_b.tolist(), strict=True)):
        edges_of.setdefault((min(a, b), max(a, b)), []).append(e)
    taken: dict[tuple[int, int], int] = {}
    edges = np.empty(faces.size, dtype=np.int64)
    for k, (a, b) in enumerate(zip(va.tolist(), vb.tolist(), strict=True)):
        pair = (min(a, b), max(a, b))
        i = taken.get(pair, 0)
        edges[k] = edges_of[pair][i]
        taken[pair] = i + 1
    return faces, np.asarray(vessels.edge_diameter_m, dtype=np.float64)[edges]


@runtime_checkable
class ExitCoupling(Protocol):
    """Two-way bone <-> vein interface (docs/architecture.md).

    ``exit_pressure(t)`` gives the venous pressure (Pa) outside each exit before each pressure
    solve; ``exit_resistance(t)`` a resistance (Pa s/m^3) in series with each exit's foramen (a
    cement column in the vein beyond it that any flow through the exit has to push; the venous
    system gives its prediction for the midpoint of the step that starts at t);
    ``accept_flux`` receives the exact cement and marrow flows (m^3/s, positive out of the bone)
    that the solver removed through each exit over [t, t + dt]. A coupling may also offer
    ``step_end(t0, t1, cement_m3)``, the time at which a step over [t0, t1] that leaks ``cement_m3``
    must end instead (a fluoroscopy frame, :meth:`sim.run.venous_system.VenousSystem.step_end`).
    """

    def exit_pressure(self, t: float) -> np.ndarray: ...

    def exit_resistance(self, t: float) -> np.ndarray: ...

    def accept_flux(self, t: float, dt: float, q_cement: np.ndarray, q_marrow: np.ndarray) -> None: ...


class ConstantPressureCoupling:
    """Constant venous pressure at every exit; records what it received."""

    def __init__(self, pressure_pa: float | np.ndarray, n_exits: int):
        if n_exits < 1:
            raise ConfigError(f"ConstantPressureCoupling needs n_exits >= 1, got {n_exits}")
        p = np.asarray(pressure_pa, dtype=np.float64)
        if p.ndim not in (0, 1) or (p.ndim == 1 and p.shape[0] != n_exits):
            raise ConfigError(
                f"ConstantPressureCoupling: pressure_pa has shape {p.shape}, expected ({n_exits},)"
            )
        if not np.all(np.isfinite(p)):
            raise ConfigError("ConstantPressureCoupling: pressure_pa must be finite")
        self.pressure_pa = np.broadcast_to(p, (n_exits,)).copy()
        self.n_exits = n_exits
        self.times_s: list[float] = []
        self.dt_s: list[float] = []
        self.q_cement: list[np.ndarray] = []
        self.q_marrow: list[np.ndarray] = []
        self.cement_volume_m3 = np.zeros(n_exits)
        self.marrow_volume_m3 = np.zeros(n_exits)

    def exit_pressure(self, t: float) -> np.ndarray:
        return self.pressure_pa.copy()

    def exit_resistance(self, t: float) -> np.ndarray:
        return np.zeros(self.n_exits)

    def accept_flux(self, t: float, dt: float, q_cement: np.ndarray, q_marrow: np.ndarray) -> None:
        self.times_s.append(float(t))
        self.dt_s.append(float(dt))
        self.q_cement.append(np.array(q_cement, dtype=np.float64))
        self.q_marrow.append(np.array(q_marrow, dtype=np.float64))
        self.cement_volume_m3 += np.asarray(q_cement) * dt
        self.marrow_volume_m3 += np.asarray(q_marrow) * dt


@dataclass
class InjectionResult:
    """Everything a run of :func:`run_injection` produced (SI units).

    Time series have one row per step: ``times_s[i]`` is the end of step i, ``dt_s[i]`` its
    length; rates, fluxes and pressures are those that drove step i (pressure solved at its
    start), volumes are cumulative at its end. Grids are (nx, ny, nz); cement volume in a cell
    is ``cement_fraction * porosity * spacing_m**3``.
    """

    method: str
    spacing_m: float
    origin_m: np.ndarray
    times_s: np.ndarray
    dt_s: np.ndarray
    injected_volume_m3: np.ndarray
    injection_rate_m3_s: np.ndarray
    needle_pressure_pa: np.ndarray
    # pore-volume mean pressure of the marrow-filled bone (the pressure a probe in the marrow reads)
    intravertebral_pressure_pa: np.ndarray
    syringe_pressure_pa: np.ndarray
    cannula_pressure_drop_pa: np.ndarray
    needle_viscosity_pa_s: np.ndarray  # flow-weighted cement viscosity in the tip cells
    cement_age_bone_s: np.ndarray  # mean equivalent age of the cement in the bone (cure clock)
    cement_age_syringe_s: np.ndarray
    cement_in_bone_series_m3: np.ndarray
    cement_leaked_series_m3: np.ndarray
    marrow_leaked_series_m3: np.ndarray
    exit_names: list[str]
    exit_kinds: list[str]
    exit_cement_flux_m3_s: np.ndarray  # (nt, n_exits)
    exit_marrow_flux_m3_s: np.ndarray  # (nt, n_exits)
    exit_pressure_pa: np.ndarray  # (nt, n_exits) venous pressure used
    exit_cement_volume_m3: np.ndarray  # (n_exits,) cumulative
    exit_marrow_volume_m3: np.ndarray
    leak_onset_s: np.ndarray  # (n_exits,) NaN if never
    cement_fraction: np.ndarray
    arrival_time_s: np.ndarray
    pressure_pa: np.ndarray  # final field, NaN outside the reachable porous cells
    stop_reason: str
    end_time_s: float
    n_steps: int
    n_pressure_solves: int
    cement_in_bone_m3: float  # in the porous cells and the intraosseous vein lumens
    # in the intraosseous vein lumens: with cement_leaked_m3, the cement the veins took up from the bone
    cement_in_lumens_m3: float
    cement_leaked_m3: float
    marrow_leaked_m3: float
    max_mass_balance_error: float
    max_cement_mass_balance_error: float
    max_marrow_mass_balance_error: float
    solver_stats: dict[str, Any] = field(default_factory=dict)

    @property
    def injected_m3(self) -> float:
        return float(self.injected_volume_m3[-1]) if self.injected_volume_m3.size else 0.0

    @property
    def leaked_fraction(self) -> float:
        """Share of the injected cement that left through venous exits."""
        v = self.injected_m3
        return self.cement_leaked_m3 / v if v > 0.0 else 0.0

    def first_leak_s(self) -> float:
        """Earliest leak onset over all exits (NaN if none)."""
        ok = np.isfinite(self.leak_onset_s)
        return float(self.leak_onset_s[ok].min()) if ok.any() else float("nan")


def mark_leak_onsets(
    onset_s: np.ndarray,
    before_m3: np.ndarray,
    after_m3: np.ndarray,
    gained_m3: np.ndarray,
    t: float,
    dt: float,
) -> None:
    """Set the onset (in place) of every exit whose cumulative cement first passes LEAK_ONSET_M3 in the
    piece [t, t + dt]: the time within it at which a constant inflow (``gained_m3`` over the piece)
    reaches the threshold. Exits with an onset already keep it."""
    crossed = np.isnan(onset_s) & (after_m3 > LEAK_ONSET_M3)
    if crossed.any():
        grow = np.maximum(gained_m3[crossed], 1e-300)
        onset_s[crossed] = t + np.clip((LEAK_ONSET_M3 - before_m3[crossed]) / grow, 0.0, 1.0) * dt


def cell_darcy_speed(
    graph,
    face_flux: np.ndarray,
    vein_diameter_m: np.ndarray | None = None,
    exit_outflow_m3_s: np.ndarray | None = None,
    faces: np.ndarray | None = None,
) -> np.ndarray:
    """Speed per node (m/s): Darcy speed |u| of a cell (per direction the mean |flux| of its two grid
    faces over h^2); mean lumen velocity of a vein node: half its summed |flow| through its
    cross-sections over pi d^2 / 4. A lumen's cross-sections are its faces to other lumen nodes and,
    at a foramen, the opening its venous exit drains through (``exit_outflow_m3_s``, per node, the
    |flow| of its exit rows): what passes a node enters through one and leaves through another, so a
    foramen node carrying Q from its canal out through its exit moves at Q / (pi d^2 / 4), as every
    node of the canal does (limiting case, tested). Without the exit term a foramen node counted its
    canal face only and moved at half the speed of the flow through it. What the bone adds or takes
    through the wall, the well faces, does not cross a cross-section (counted, it raised the speed by
    half the node's wall exchange, a share that shrinks with the node's length, so the cement's
    shear-thinned viscosity in the lumens changed with the grid).
    One numba pass over the faces (or over ``faces``, ascending, when every other face has zero flux:
    bit for bit the same); :func:`cell_darcy_speed_numpy` is the array reference."""
    vein = np.zeros(0) if vein_diameter_m is None else np.ascontiguousarray(vein_diameter_m, dtype=np.float64)
    out = np.zeros(0)
    if exit_outflow_m3_s is not None:
        out = np.ascontiguousarray(exit_outflow_m3_s, dtype=np.float64)
        if out.shape != (graph.n,):
            raise ValueError(f"exit_outflow_m3_s has shape {out.shape}, expected ({graph.n},)")
    flux = np.ascontiguousarray(face_flux, dtype=np.float64)
    h2 = float(graph.spacing_m**2)
    listed = np.arange(graph.n_faces, dtype=np.int64) if faces is None else faces
    return _darcy_speed_kernel(
        graph.n, graph.face_a, graph.face_b, graph.face_dir, flux, h2, vein, out, listed
    )


@numba.njit(cache=True)
def _marrow_outlet_volumes(unknown, is_grid, tip, s, pore_vol, s_pure):
    """Marrow volume drained by the outlet, summed per unknown (``nu`` = max unknown + 1), and each
    unknown's first cell (-1 where none drains): the pore volume of the pure-marrow bone cells
    (S <= ``s_pure``, not a needle tip cell) or, once none is left, the marrow still in the partly
    filled bone cells, pore volume x (1 - S)."""
    n = unknown.shape[0]
    nu = 0
    for i in range(n):
        nu = max(nu, unknown[i] + 1)
    vol = np.zeros(nu)
    first = -np.ones(nu, dtype=np.int64)
    total = 0.0
    for i in range(n):
        if is_grid[i] and not tip[i] and s[i] <= s_pure:
            u = unknown[i]
            vol[u] += pore_vol[i]
            total += pore_vol[i]
            if first[u] < 0:
                first[u] = i
    if not total > 0.0:
        for i in range(n):
            v = pore_vol[i] * min(max(1.0 - s[i], 0.0), 1.0) if is_grid[i] else 0.0
            if v > 0.0:
                u = unknown[i]
                vol[u] += v
                if first[u] < 0:
                    first[u] = i
    return vol, first


@numba.njit(cache=True)
def _darcy_speed_kernel(n, face_a, face_b, face_dir, face_flux, h2, vein_diameter_m, exit_outflow, faces):
    # per direction the sums over faces where the cell is a, then b (as np.bincount adds, in face order)
    comp_a = np.zeros((n, 3))  # cell-major: a cell's three components share a cache line
    comp_b = np.zeros((n, 3))
    thr_a = np.zeros(n)
    thr_b = np.zeros(n)
    lumen = vein_diameter_m.shape[0] == n
    for k in range(faces.shape[0]):
        f = faces[k]
        mag = abs(face_flux[f])
        d = face_dir[f]
        if d >= 0 and d < 3:
            comp_a[face_a[f], d] += mag
            comp_b[face_b[f], d] += mag
        # a lumen's cross-sections are its faces to other lumen nodes; what the bone adds or takes
        # through its wall (well faces) does not cross them
        if lumen and not (vein_diameter_m[face_a[f]] > 0.0 and vein_diameter_m[face_b[f]] > 0.0):
            continue
        thr_a[face_a[f]] += mag
        thr_b[face_b[f]] += mag
    # a cell on none of the listed faces has speed 0: only the cells of the listed faces are computed
    speed = np.zeros(n)
    for k in range(faces.shape[0]):
        f = faces[k]
        for i in (face_a[f], face_b[f]):
            sq = 0.0
            for d in range(3):
                c = 0.5 * (comp_a[i, d] + comp_b[i, d])
                sq += c * c
            speed[i] = np.sqrt(sq) / h2
    if vein_diameter_m.shape[0] == n:
        exits = exit_outflow.shape[0] == n
        for i in range(n):
            d = vein_diameter_m[i]
            if d > 0.0:
                through = thr_a[i] + thr_b[i] + (abs(exit_outflow[i]) if exits else 0.0)
                speed[i] = 0.5 * through / (0.25 * np.pi * (d * d))
    return speed


def cell_darcy_speed_numpy(
    graph,
    face_flux: np.ndarray,
    vein_diameter_m: np.ndarray | None = None,
    exit_outflow_m3_s: np.ndarray | None = None,
) -> np.ndarray:
    """:func:`cell_darcy_speed` with numpy arrays: the tests' reference."""
    n = graph.n
    mag = np.abs(face_flux)
    sq = np.zeros(n)
    for d in range(3):
        sel = graph.face_dir == d
        comp = np.bincount(graph.face_a[sel], weights=mag[sel], minlength=n) + np.bincount(
            graph.face_b[sel], weights=mag[sel], minlength=n
        )
        sq += (0.5 * comp) ** 2
    speed = np.sqrt(sq) / graph.spacing_m**2
    if vein_diameter_m is not None and np.any(vein_diameter_m > 0.0):
        axial = np.where(
            (vein_diameter_m[graph.face_a] > 0.0) & (vein_diameter_m[graph.face_b] > 0.0), mag, 0.0
        )
        through = 0.5 * (
            np.bincount(graph.face_a, weights=axial, minlength=n)
            + np.bincount(graph.face_b, weights=axial, minlength=n)
            + (0.0 if exit_outflow_m3_s is None else np.abs(exit_outflow_m3_s))
        )
        vein = vein_diameter_m > 0.0
        speed[vein] = through[vein] / (0.25 * np.pi * vein_diameter_m[vein] ** 2)
    return speed


def _check_inputs(
    bone: BoneGrid, needle: Needle, marrow_viscosity_pa_s: float, method: str, cfl: float
) -> None:
    if method not in METHODS:
        raise ConfigError(f"injection method {method!r}: choose one of {', '.join(METHODS)}")
    if not 0.0 < cfl <= 1.0:
        raise ConfigError(f"cfl = {cfl}: must be in (0, 1]")
    if not marrow_viscosity_pa_s > 0.0:
        raise ConfigError(f"marrow_viscosity_pa_s = {marrow_viscosity_pa_s}: must be > 0")
    shape = bone.shape
    if bone.permeability.shape != (3, *shape):
        raise GeometryError(
            f"BoneGrid.permeability has shape {bone.permeability.shape}, expected {(3, *shape)}"
        )
    if bone.porosity.shape != shape:
        raise GeometryError(f"BoneGrid.porosity has shape {bone.porosity.shape}, expected {shape}")
    if not bone.exits:
        raise GeometryError(f"BoneGrid ({bone.level}) has no venous exits: marrow could not leave the bone")
    tips = np.asarray(needle.tip_cells)
    w = np.asarray(needle.tip_weights, dtype=np.float64)
    if tips.size == 0 or tips.shape != w.shape:
        raise GeometryError(f"Needle: {tips.size} tip cells but {w.size} tip weights")
    if np.any(tips < 0) or np.any(tips >= bone.n_cells):
        raise GeometryError(f"Needle tip cell index out of the grid (0..{bone.n_cells - 1})")
    if np.any(w < 0.0) or abs(w.sum() - 1.0) > 1e-9:
        raise GeometryError(f"Needle.tip_weights must be >= 0 and sum to 1 (sum = {w.sum():.12g})")
    if needle.tip_cannula is not None and np.shape(needle.tip_cannula) != tips.shape:
        raise GeometryError(
            f"Needle: {tips.size} tip cells but {np.size(needle.tip_cannula)} cannula labels (tip_cannula)"
        )
    for ex in bone.exits:
        cells = np.asarray(ex.cells)
        if cells.size == 0:
            raise GeometryError(f"venous exit {ex.name!r} has no cells")
        if np.any(cells < 0) or np.any(cells >= bone.n_cells):
            raise GeometryError(f"venous exit {ex.name!r} has cells outside the grid")
        if not np.all(bone.porous.ravel()[cells]):
            raise GeometryError(f"venous exit {ex.name!r} drains non-porous cells")
        if not (ex.diameter_m > 0.0 and ex.length_m > 0.0):
            raise GeometryError(f"venous exit {ex.name!r}: diameter and length must be > 0")


@dataclass
class InjectionState:
    """The evolving state of an injection (SI; arrays over the compact porous cells)."""

    t: float  # time since injection start
    step: int
    injected_m3: float
    saturation: np.ndarray  # cement fraction of the pore space
    arrival_s: np.ndarray  # when the cement fraction first reached ARRIVAL_SATURATION (NaN: not yet)
    pressure_shifted: np.ndarray  # pressure minus the mean venous pressure at the exits
    darcy_speed: np.ndarray  # |u| of the last pressure solve (Picard lag of the shear rate)
    exit_cement_m3: np.ndarray  # cumulative per exit
    exit_marrow_m3: np.ndarray
    exit_onset_s: np.ndarray  # leak onset per exit (NaN: none)
    cement_in_bone_m3: float
    bone_age: AgePool  # cure of the cement in the bone
    # the flow of each vein-lumen edge (InjectionSolver.lumen_face) in the last pressure solve: the
    # Picard lag of the lumens' shear rate, as darcy_speed is the bone's
    lumen_flux: np.ndarray = field(default_factory=lambda: np.zeros(0))


@dataclass
class StepPlan:
    """A step solved but not yet taken: the pressure of the step's start and the step it allows.

    :meth:`InjectionSolver.plan_step` makes it (the pressure solve, which depends only on the state);
    :meth:`InjectionSolver.take_step` advances the state by it in one or more pieces (a piece ends at a
    fluoroscopy frame while the leak could be seen, or at a stop time), all with this pressure field,
    and moves ``t`` on. A run that branches off another at a stop time inside the step copies the
    state with its plan and takes the rest of the step cut at its own stop
    (:func:`sim.run.pipeline.run_with_branches`): bit for bit what its own run would compute, since
    the pressure solve and the pieces before are the same computations on the same state.
    """

    t: float  # where the next piece starts (the step's start, then the end of each piece taken)
    dt: float  # the step the transport's CFL, the target volume and the duration allow
    t_end: float  # the step's end, t0 + dt
    t0: float  # the step's start (a piece starting here is the first: it takes dt as planned)
    last: bool  # the step completes the target volume
    q: float
    p_needle: float
    p_marrow: float
    p_syringe: float
    dp_cannula: float
    p_vein: np.ndarray
    flux: np.ndarray
    src: np.ndarray
    exit_cell: np.ndarray
    q_ent: np.ndarray
    q_outlet: float
    visc_ratio: np.ndarray
    mu_tip: float
    s_route: np.ndarray  # min(S, 1) the step's conductances were computed with (cement-only routes)
    faces: np.ndarray | None = None  # front method: the faces with a cement side (the others carry no flux)


class InjectionSolver:
    """Cement injection into a bone as a state advanced a step at a time; see the module docstring.

    A driver (:func:`drive_injection`, used by :func:`run_injection` and the coupled run of
    :mod:`sim.run.coupling`) calls :meth:`limit_reached`, :meth:`plan_step` and :meth:`take_step`
    until one returns a stop reason, then :meth:`result`.
    Output cadence is the driver's business: :meth:`cement_fraction_grid` gives the field now.
    """

    def __init__(
        self,
        bone: BoneGrid,
        needle: Needle,
        cement: CementModel,
        clock: CureClock,
        marrow_viscosity_pa_s: float,
        control: InjectionControl,
        coupling: ExitCoupling,
        method: str = "front",
        cfl: float = 0.8,
        pressure_solver: str = "auto",
        exchange: EmbeddedVeinExchange | ForamenPoiseuille | None = None,
        max_step_s: float | None = None,
        max_steps: int = 2_000_000,
        vein_fluid_viscosity_pa_s: float = BLOOD_VISCOSITY_PA_S,
        marrow_outflow: LumpedMarrowOutlet | None = None,
    ):
        self._wall0 = time.perf_counter()
        control.validate()
        _check_inputs(bone, needle, marrow_viscosity_pa_s, method, cfl)
        self.bone, self.cement, self.clock, self.control, self.coupling = (
            bone,
            cement,
            clock,
            control,
            coupling,
        )
        self.method, self.cfl, self.max_step_s, self.max_steps = method, float(cfl), max_step_s, max_steps
        self.pressure_solver_name = pressure_solver
        self.mu_m = float(marrow_viscosity_pa_s)
        self.marrow_outflow = marrow_outflow or LumpedMarrowOutlet(0.0)
        self.h = float(bone.spacing_m)
        self.n_exits = len(bone.exits)
        vessels = bone.vessels
        n_grid = bone.n_cells
        if vessels is not None:
            exit_flat = np.array([n_grid + e.node for e in bone.exits], dtype=np.int64)
            exchange = exchange or EmbeddedVeinExchange()
        else:
            exit_flat = np.concatenate([np.asarray(e.cells, dtype=np.int64) for e in bone.exits])
            exchange = exchange or ForamenPoiseuille()
        self.graph = graph = build_cell_graph(
            bone.porous, bone.permeability, self.h, np.asarray(needle.tip_cells), exit_flat, vessels
        )
        n = graph.n
        entries = exchange.entries(bone.exits, graph, vessels)
        self.exit_cell, self.exit_id, self.exit_geo = entries.cell, entries.exit, entries.conductance_m3
        self.exit_cells_per_exit = entries.cells_per_exit

        tips = graph.compact[np.asarray(needle.tip_cells, dtype=np.int64)]
        tip_w = np.asarray(needle.tip_weights, dtype=np.float64)
        self.src_unit = np.bincount(tips, weights=tip_w, minlength=n)
        self.tip_mask = self.src_unit > 0.0
        grid = graph.is_grid_cell
        self.is_vein = ~grid
        # bone-vein faces (well index) and their bone cell; exits that sit on bone cells
        on_grid_a, on_grid_b = grid[graph.face_a], grid[graph.face_b]
        self.well_face = np.flatnonzero(on_grid_a != on_grid_b)
        self.well_cell = np.where(on_grid_a, graph.face_a, graph.face_b)[self.well_face]
        self.well_grid_is_a = on_grid_a[self.well_face]
        # vein-lumen edges (lumen nodes on both sides) and their vessel's diameter: the cement's viscosity
        # in a lumen is each edge's own (lumen_edge_transmissibility)
        self.lumen_face, self.lumen_face_diameter = lumen_faces(graph, vessels)
        self.is_grid_exit = grid[self.exit_cell]
        # with the marrow outlet a bone cell's well faces and exits carry cement only (cement_transport),
        # as their conductances say: the side of each face whose outflow does, and the exit rows that do
        marrow_outlet = self.marrow_outflow.resistance_pa_s_per_m3 > 0.0
        self.cement_only_side = np.zeros(graph.face_a.size, dtype=np.int8)
        if marrow_outlet:
            self.cement_only_side[self.well_face] = np.where(self.well_grid_is_a, 1, 2)
        self.exit_cement_only = self.is_grid_exit & marrow_outlet
        self.is_grid = grid
        # the marrow outlet drains into the venous system at the exits in proportion to their conductance
        geo = np.bincount(self.exit_id, weights=self.exit_geo, minlength=self.n_exits)
        self.outlet_share = (
            geo / geo.sum() if geo.sum() > 0 else np.full(self.n_exits, 1.0 / max(self.n_exits, 1))
        )
        grid_flat = graph.cell_of[grid]
        vein_idx = graph.cell_of[~grid] - n_grid
        phi = np.ones(n)
        phi[grid] = bone.porosity.ravel()[grid_flat]
        if np.any(phi <= 0.0):
            raise GeometryError(
                f"porous cell with porosity <= 0 at flat index {int(graph.cell_of[np.argmin(phi)])}"
            )
        self.phi = phi
        self.pore_vol = phi * self.h**3
        self.k_mean = np.ones(n)
        self.k_mean[grid] = bone.permeability.reshape(3, -1)[:, grid_flat].mean(axis=0)
        self.vein_diameter = np.zeros(n)
        if vessels is not None and vein_idx.size:
            self.pore_vol[~grid] = vessels.node_volume_m3[vein_idx]
            self.vein_diameter[~grid] = vessels.node_diameter_m[vein_idx]
        # the fluid the cement displaces: marrow in the bone, blood in the veins
        self.mu_res = np.where(grid, self.mu_m, float(vein_fluid_viscosity_pa_s))
        self._inv_mu_res = 1.0 / self.mu_res  # the mobility of a cell without cement, either kind
        # needle as a well: p(tip surface) = the source-weighted pressure of the tip cells + the
        # analytic near field (sim.physics.well_index): of a point source per tip cell, or of a ball
        self.tip_radius_m = float(needle.tip_radius_m)
        self.tip_kernel_radius_m = float(needle.tip_kernel_radius_m)
        self.tip_k = {
            int(c): bone.permeability.reshape(3, -1)[:, graph.cell_of[c]]
            for c in np.flatnonzero(self.tip_mask)
        }
        self.tip_balls = self._tip_balls(needle) if self.tip_kernel_radius_m > 0.0 else []
        if self.tip_balls and not self.tip_kernel_radius_m > self.tip_radius_m:
            raise GeometryError(
                f"Needle.tip_kernel_radius_m = {self.tip_kernel_radius_m!r} must exceed the tip radius "
                f"{self.tip_radius_m!r}"
            )
        self.tip_pore_vol = float(self.pore_vol[self.tip_mask].sum())
        # the ball's core: tip cells whose source per pore volume is at least half the largest (cells the
        # ball only cuts fill more slowly and finish with the bolus's front)
        density = np.where(self.tip_mask, self.src_unit / self.pore_vol, 0.0)
        self.ball_core = self.tip_mask & (density >= 0.5 * density.max())
        self.params = np.ascontiguousarray(cement.as_array(), dtype=np.float64)
        # the front method's cement block changes at every step: no AMG hierarchy outlives a solve
        self.solver = PressureSolver(pressure_solver, reuses_hierarchy=method != "front")
        self.d_in, self.l_can = float(needle.inner_diameter_m), float(needle.length_m)
        self._mu_c = np.empty(n)
        self.state = InjectionState(
            t=0.0,
            step=0,
            injected_m3=0.0,
            saturation=np.zeros(n),
            arrival_s=np.full(n, np.nan),
            pressure_shifted=np.zeros(n),
            darcy_speed=np.zeros(n),
            exit_cement_m3=np.zeros(self.n_exits),
            exit_marrow_m3=np.zeros(self.n_exits),
            exit_onset_s=np.full(self.n_exits, np.nan),
            cement_in_bone_m3=0.0,
            bone_age=AgePool(clock),
            lumen_flux=np.zeros(self.lumen_face.size),
        )
        self._rows: dict[str, list] = {k: [] for k in _ROW_KEYS}
        self._max_err_c = self._max_err_m = 0.0
        self._t_transport = self._t_pressure = 0.0
        self._max_cement_unknowns = 0
        self._max_imbalance = 0.0
        self._p_vein_last: np.ndarray | None = None

    # ------------------------------------------------------------------ driving
    def limit_reached(self) -> str:
        """Why injection cannot go on before the next step ('' if it can): duration, set cement, step cap."""
        st, control = self.state, self.control
        if control.max_duration_s is not None and st.t >= control.max_duration_s * (1.0 - 1e-12):
            return "max_duration"
        if rheology.is_set(self.cement, self.clock.syringe_age_s(st.t)):
            return "cement_set"
        if st.step >= self.max_steps:
            raise SolverError(f"injection exceeded max_steps = {self.max_steps} at t = {st.t:.4g} s")
        return ""

    def plan_step(self) -> StepPlan | str:
        """Solve the pressure of the step from the current state and choose its length.

        Returns the plan, or 'pressure_limit' when the syringe cannot deliver. The state's pressure,
        Darcy speed and lumen-edge flows are those of the solve afterwards; nothing else changes until
        :meth:`take_step`.
        """
        st, control, graph = self.state, self.control, self.graph
        n, t = graph.n, st.t
        n_exits = self.n_exits
        p_vein = np.asarray(self.coupling.exit_pressure(t), dtype=np.float64)
        if p_vein.shape != (n_exits,) or not np.all(np.isfinite(p_vein)):
            raise SolverError(
                f"coupling.exit_pressure({t:.4g}) returned shape {p_vein.shape} / non-finite values; "
                f"expected {n_exits} finite pressures"
            )
        r_series = np.asarray(self.coupling.exit_resistance(t), dtype=np.float64)
        if r_series.shape != (n_exits,) or not np.all(np.isfinite(r_series) & (r_series >= 0.0)):
            raise SolverError(
                f"coupling.exit_resistance({t:.4g}) returned shape {r_series.shape} / negative or "
                f"non-finite values; expected {n_exits} finite resistances >= 0"
            )
        # a series resistance R of an exit split over its n cells in parallel: R n per cell
        r_cell = r_series[self.exit_id] * self.exit_cells_per_exit[self.exit_id]
        shift = float(p_vein.mean())
        ent_pv = p_vein[self.exit_id] - shift
        age_bone = st.bone_age.age_s(t)
        age_syr = self.clock.syringe_age_s(t)
        s = st.saturation
        mu_c = self._mu_c
        nominal = float(control.rate_m3_per_s)

        tp0 = time.perf_counter()
        for _ in range(3 if st.step == 0 else 1):
            # the viscosity where the cement moves; every other cell is at zero shear (consistency and
            # index once per call, not per cell as viscosity_kernel would)
            moving, shear = self._shear_rate(st.darcy_speed, age_bone)
            rheology.viscosity_field_sparse(moving, shear, age_bone, self.params, mu_c)
            s_c = np.minimum(s, 1.0)
            # a cell without cement has lambda_c = 0 and lambda = 1 / mu_res exactly (0 / mu_c = 0 and
            # 0 * mu_c = 0 for a finite mu_c): the mixture's formulas are evaluated where S > 0 only
            held = np.flatnonzero(s_c)
            lam_c = np.zeros(n)
            lam_c[held] = s_c[held] / mu_c[held]
            lam = self._inv_mu_res.copy()
            lam[held] = mixture_mobility(s_c[held], mu_c[held], self.mu_res[held], self.is_vein[held])
            in_cement = (s > CEMENT_CELL_MIN_S) | self.tip_mask
            with_outlet = self.marrow_outflow.resistance_pa_s_per_m3 > 0.0
            if with_outlet:
                in_cement = in_cement | self.is_vein  # the vein lumens are not part of the marrow lump
            # front method: only faces with a cement side enter the system or carry flux (front_faces)
            faces = front_faces(graph, in_cement) if self.method == "front" else None
            unknowns = front_unknowns(graph, in_cement) if self.method == "front" else None
            trans = face_transmissibility(graph, lam, faces)
            self._lumen_edges(trans, s_c, st.lumen_flux, age_bone)
            g = self.exit_geo * lam[self.exit_cell]
            g = g / (1.0 + g * r_cell)
            row_cell, row_g, row_pv = self.exit_cell, g, ent_pv
            if with_outlet:
                trans, row_cell, row_g, row_pv = self._marrow_outlet_rows(
                    trans, g, ent_pv, float(self.outlet_share @ (p_vein - shift)), lam, lam_c, s_c, r_cell,
                    None if unknowns is None else unknowns[0],
                )  # fmt: skip
            if self.method == "front":
                system = assemble_front(graph, in_cement, trans, row_cell, row_g, faces, unknowns)
                key = ("front", system.n_block, int(np.flatnonzero(in_cement).sum()))
                self._max_cement_unknowns = max(self._max_cement_unknowns, system.n_block)
            else:
                system = assemble_full(graph, trans, row_cell, row_g)
                key = ("full",)
            x0 = system.initial_guess(st.pressure_shifted)
            if control.mode == "rate":
                q = nominal
                b = system.rhs(q * self.src_unit, row_g, row_pv)
                x = self.solver.solve(system.matrix, b, x0, block=system.n_block, key=key)
                st.pressure_shifted = system.cell_values(x)
            else:
                b = np.stack(
                    [
                        system.rhs(np.zeros(n), row_g, row_pv),
                        system.rhs(self.src_unit, row_g, np.zeros_like(row_pv)),
                    ],
                    1,
                )
                x = self.solver.solve(
                    system.matrix, b, np.stack([x0, np.zeros_like(x0)], 1), block=system.n_block, key=key
                )
                p0, p1 = system.cell_values(x[:, 0]), system.cell_values(x[:, 1])
                tip0, tip1 = float(np.dot(self.src_unit, p0)) + shift, float(np.dot(self.src_unit, p1))
                m0, m1 = (
                    self._mean_marrow_pressure(in_cement, p0) + shift,
                    self._mean_marrow_pressure(in_cement, p1),
                )

                def needle_at(rate: float, tip=(tip0, tip1), marrow=(m0, m1)) -> float:
                    """The needle pressure this step reports, at any rate."""
                    p_tip, p_m = tip[0] + rate * tip[1], marrow[0] + rate * marrow[1]
                    return self._needle_pressure(p_tip, p_m, rate, age_bone)

                q = _admissible_rate(
                    needle_at, self.cement, nominal, control.max_syringe_pressure_pa, self.d_in, self.l_can,
                    age_syr,
                )  # fmt: skip
                st.pressure_shifted = p0 + q * p1
            if faces is None:
                flux = trans * (st.pressure_shifted[graph.face_a] - st.pressure_shifted[graph.face_b])
            else:
                flux = listed_face_flux(graph, trans, st.pressure_shifted, faces)
            # a foramen's outlet is its exit row: its |flow| crosses the node like a face's (the venous
            # exits' rows come first; the marrow outlet's, after them, drain bone cells)
            n_rows = self.exit_id.size
            exit_flow = row_g[:n_rows] * (st.pressure_shifted[row_cell[:n_rows]] - row_pv[:n_rows])
            exit_outflow = np.bincount(row_cell[:n_rows], weights=np.abs(exit_flow), minlength=n)
            st.darcy_speed = cell_darcy_speed(graph, flux, self.vein_diameter, exit_outflow, faces)
            st.lumen_flux = flux[self.lumen_face]
        self._t_pressure += time.perf_counter() - tp0
        p_shifted = st.pressure_shifted

        p_marrow = self._mean_marrow_pressure(in_cement, p_shifted) + shift
        p_tip_cells = float(np.dot(self.src_unit, p_shifted)) + shift
        p_needle = self._needle_pressure(p_tip_cells, p_marrow, q, age_bone)
        dp_can = (
            float(rheology.cannula_pressure_drop_pa(self.cement, q, self.d_in, self.l_can, age_syr))
            if q > 0
            else 0.0
        )
        p_syr = p_needle + dp_can
        limit = control.max_syringe_pressure_pa
        if control.mode == "rate" and limit is not None and p_syr > limit:
            return "pressure_limit"
        if control.mode == "pressure" and q < STALL_FRACTION * nominal:
            return "pressure_limit"

        src = q * self.src_unit
        exit_cell = row_cell
        q_ent = row_g * (p_shifted[exit_cell] - row_pv)
        # close the global volume balance left by the iterative solver's residual: Q = sum of exit
        # flows must hold to round-off for the 1e-10 marrow balance. The window matches the solver's
        # own acceptance (relative residual <= 1e-6, PressureSolver.solve; a backward-stable solve of a
        # badly scaled system may keep up to 1e-4, and an imbalance beyond the windows below then fails
        # the balance check by name); the largest correction is reported as max_relative_flux_imbalance.
        # (At 1e-9 Q, a rare 1e-8 Q residual of the lumped front system went uncorrected and failed the
        # balance check on a loaded machine.)
        imbalance = q - float(q_ent.sum())
        self._max_imbalance = max(self._max_imbalance, abs(imbalance) / max(q, 1e-300))
        pos = np.maximum(q_ent, 0.0)
        n_rows = self.exit_id.size
        if q_ent.size > n_rows and 0.0 < abs(imbalance) <= OUTLET_IMBALANCE_WINDOW * q:
            # With the marrow outlet the marrow lump hangs on a conductance 1e5-1e9 times smaller
            # than the bone's: the solver's residual lands there, so the outlet takes the correction
            # (up to 1e-5 Q: 3.4e-6 Q measured with a cleft of 1e4 times the bone's permeability).
            out_pos = pos[n_rows:]
            share = (
                out_pos / out_pos.sum() if out_pos.sum() > 0.0 else np.full(out_pos.size, 1.0 / out_pos.size)
            )
            q_ent = q_ent.copy()
            q_ent[n_rows:] += imbalance * share
        elif 0.0 < abs(imbalance) <= 1e-6 * q and pos.sum() > 0.0:
            q_ent = q_ent + imbalance * pos / pos.sum()
        # the marrow outlet's rows (after the exits') carry marrow out of pure-marrow cells: the
        # transport sees them as it sees the marrow lump, a sink that leaves no saturation behind
        q_outlet = float(q_ent[n_rows:].sum())
        exit_cell, q_ent = exit_cell[:n_rows], q_ent[:n_rows]
        exit_cell_flux = np.bincount(exit_cell, weights=q_ent, minlength=n)
        visc_ratio = mu_c / self.mu_res
        visc_ratio[self.is_vein] = np.inf  # a lumen passes cement as a piston (cement_transport)

        dt, last = self._time_step(flux, src, exit_cell, q_ent, exit_cell_flux, visc_ratio, q, faces)
        return StepPlan(
            t=t, dt=dt, t_end=t + dt, t0=t, last=last, q=q, p_needle=p_needle, p_marrow=p_marrow,
            p_syringe=p_syr, dp_cannula=dp_can, p_vein=p_vein, flux=flux, src=src, exit_cell=exit_cell,
            q_ent=q_ent, q_outlet=q_outlet, visc_ratio=visc_ratio, mu_tip=float(np.dot(self.src_unit, mu_c)),
            s_route=s_c, faces=faces,
        )  # fmt: skip

    def take_step(self, plan: StepPlan, until: float | None = None) -> str:
        """Advance the state by the next piece of ``plan``: the cement transport with the plan's
        pressure field, the exit fluxes handed to the coupling.

        The piece runs to the step's end, or ends earlier at ``until`` when that falls inside it (a
        stop time) and at a fluoroscopy frame inside it when the coupling asks so (``step_end``: once
        the leak could be seen, pieces end on frames, so the leak is seen at a piece's end and a stop
        that follows it can be met exactly by the next piece). A cut piece ends at exactly that time;
        ``plan.t`` moves to it, and the rest of the step is taken by further calls. Returns '' when
        the injection goes on, or 'target_volume' when this piece completed the planned volume (only
        a piece that ends the step can).
        """
        st, control = self.state, self.control
        if plan.t != st.t or not plan.t < plan.t_end:
            raise SolverError(
                f"take_step: the plan's next piece starts at t = {plan.t!r} (step end {plan.t_end!r}), "
                f"the state is at t = {st.t!r}"
            )
        t, n_exits = st.t, self.n_exits
        s = st.saturation
        q, q_ent = plan.q, plan.q_ent
        # the whole step (dt exactly as planned), or what is left of it after earlier pieces
        dt, last, t_new = (plan.dt if t == plan.t0 else plan.t_end - t), plan.last, plan.t_end
        if until is not None and t < until < t_new:
            dt, last, t_new = until - t, False, float(until)

        s_new, qc_ent = self._transport(plan, dt)
        step_end = getattr(self.coupling, "step_end", None)
        if step_end is not None:
            t_cut = float(step_end(t, t_new, float(qc_ent.sum()) * dt))
            if t < t_cut < t_new:
                dt, last, t_new = t_cut - t, False, t_cut
                s_new, qc_ent = self._transport(plan, dt)

        qc_exit = np.bincount(self.exit_id, weights=qc_ent, minlength=n_exits)
        qm_ent = q_ent - qc_ent
        # the marrow outlet drains into the venous system at the exits' shares
        qm_exit = (
            np.bincount(self.exit_id, weights=qm_ent, minlength=n_exits) + plan.q_outlet * self.outlet_share
        )
        self.coupling.accept_flux(t, dt, qc_exit.copy(), qm_exit.copy())

        prev_c = st.exit_cement_m3.copy()
        st.injected_m3 = float(control.target_volume_m3) if last else st.injected_m3 + q * dt
        st.exit_cement_m3 += qc_exit * dt
        st.exit_marrow_m3 += qm_exit * dt
        mark_leak_onsets(st.exit_onset_s, prev_c, st.exit_cement_m3, st.exit_cement_m3 - prev_c, t, dt)
        newly = np.isnan(st.arrival_s) & (s_new >= ARRIVAL_SATURATION)
        if newly.any():
            ds = s_new[newly] - s[newly]
            frac = np.where(ds > 0, (ARRIVAL_SATURATION - s[newly]) / np.where(ds > 0, ds, 1.0), 1.0)
            st.arrival_s[newly] = t + np.clip(frac, 0.0, 1.0) * dt

        v_bone_new = float(np.dot(s_new, self.pore_vol))
        self._check_mass_balance(v_bone_new, t_new)
        # the cure clock of the bone's cement: what leaked left, what came in during the step
        # entered on average at mid-step (half the step at room, half at body temperature)
        pool = st.bone_age
        pool.remove(float(qc_exit.sum()) * dt)
        age_syr = self.clock.syringe_age_s(t)
        pool.mix_in(q * dt, age_syr + 0.5 * (self.clock.room_rate + self.clock.body_rate) * dt, t_new)
        pool.holds(v_bone_new)  # the exact content, from the saturation field
        st.cement_in_bone_m3 = v_bone_new

        c_leak, m_leak = float(st.exit_cement_m3.sum()), float(st.exit_marrow_m3.sum())
        for key_, val in (
            ("t", t_new), ("dt", dt), ("inj", st.injected_m3), ("q", q), ("pn", plan.p_needle),
            ("pm", plan.p_marrow), ("ps", plan.p_syringe), ("pc", plan.dp_cannula), ("mun", plan.mu_tip),
            ("ageb", pool.age_s(t_new)), ("ages", self.clock.syringe_age_s(t_new)), ("vb", v_bone_new),
            ("lc", c_leak), ("lm", m_leak), ("qc", qc_exit), ("qm", qm_exit), ("pv", plan.p_vein),
        ):  # fmt: skip
            self._rows[key_].append(val)
        st.saturation = s_new
        st.t = plan.t = t_new
        st.step += 1
        self._p_vein_last = plan.p_vein
        return "target_volume" if last else ""

    def _transport(self, plan: StepPlan, dt: float) -> tuple[np.ndarray, np.ndarray]:
        """The implicit upwind transport over ``dt``: the new saturation and the cement flux of each
        exit row."""
        graph, p_shifted = self.graph, self.state.pressure_shifted
        tt0 = time.perf_counter()
        q_pos = np.maximum(plan.q_ent, 0.0)
        only = self.exit_cement_only
        exit_out = np.bincount(plan.exit_cell, weights=np.where(only, 0.0, q_pos), minlength=graph.n)
        exit_only = np.bincount(plan.exit_cell, weights=np.where(only, q_pos, 0.0), minlength=graph.n)
        if self.method == "front":
            # Only cells that hold cement, receive it or pass any flow can change: a cell outside that
            # set has S = 0, no source, no exit and no face with flux (inside a marrow lump, at one
            # pressure), so the sweep leaves it at S = 0 with no outflow. The subset keeps the full
            # sweep's relative order (a stable sort of the same keys), so the step is bit for bit the same.
            active = (self.state.saturation > 0.0) | (plan.src > 0.0) | (exit_out > 0.0) | (exit_only > 0.0)
            if plan.faces is None:
                moving = plan.flux != 0.0
            else:  # no other face carries flux (front_faces)
                moving = plan.faces[plan.flux[plan.faces] != 0.0]
            active[graph.face_a[moving]] = True
            active[graph.face_b[moving]] = True
            cells = np.flatnonzero(active)
            order = cells[np.argsort(-p_shifted[cells], kind="stable")].astype(np.int64)
        else:
            order = np.argsort(-p_shifted, kind="stable").astype(np.int64)
        f_only = np.zeros(graph.n)
        s_new, f_out = transport_step(
            order, graph.cell_ptr, graph.cell_face, graph.cell_nbr, graph.cell_sign, plan.flux, plan.src,
            exit_out, self.pore_vol, plan.visc_ratio, self.state.saturation, dt,
            self.cement_only_side, exit_only, f_only, plan.s_route,
        )  # fmt: skip
        self._t_transport += time.perf_counter() - tt0
        return s_new, q_pos * np.where(only, f_only[plan.exit_cell], f_out[plan.exit_cell])

    def _marrow_outlet_rows(
        self,
        trans: np.ndarray,
        g: np.ndarray,
        ent_pv: np.ndarray,
        outlet_pv: float,
        lam: np.ndarray,
        lam_c: np.ndarray,
        s: np.ndarray,
        r_cell: np.ndarray,
        unknown: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Route the displaced marrow out of the bone through the marrow-outflow law's outlet.

        Marrow does not enter the vein lumens: a bone cell's faces to the embedded veins, and exits on
        bone cells, conduct with the cell's cement mobility only (continuous in the saturation, so a
        route opens as the cement arrives). The marrow drains through the law's outlet to
        ``outlet_pv`` (the exits' venous pressures weighted by the outlet's shares, shifted), spread
        over the pure-marrow cells by pore volume (``outlet_conductance``), so a marrow region at one
        pressure sees exactly R_M; once no cell is pure marrow, over the cells by their marrow volume.
        Returns the faces' transmissibilities (``trans``, a fresh array of the step, changed in place on
        the well faces) and the exit rows with the outlet rows appended (cells,
        conductances, venous pressures).

        ``unknown`` (front method): the front system's unknown of every cell. The outlet rows of the
        cells of one unknown (a marrow lump, a few hundred thousand cells at 0.5 mm) are then one row
        on the unknown's first cell with their summed conductance: the same diagonal and right-hand
        side up to round-off, and a lump's cells share its pressure, so the same outlet flow.
        """
        graph, w = self.graph, self.well_face
        lam_a = np.where(self.well_grid_is_a, lam_c[graph.face_a[w]], lam[graph.face_a[w]])
        lam_b = np.where(self.well_grid_is_a, lam[graph.face_b[w]], lam_c[graph.face_b[w]])
        with np.errstate(divide="ignore"):
            trans[w] = 1.0 / (1.0 / (graph.face_g_a[w] * lam_a) + 1.0 / (graph.face_g_b[w] * lam_b))
        g = g.copy()
        ge = self.is_grid_exit
        g_c = self.exit_geo[ge] * lam_c[self.exit_cell[ge]]
        g[ge] = g_c / (1.0 + g_c * r_cell[ge])
        if unknown is None:
            unknown = np.arange(graph.n, dtype=np.int64)
        vol, first_cell = _marrow_outlet_volumes(
            unknown, self.is_grid, self.tip_mask, s, self.pore_vol, CEMENT_CELL_MIN_S
        )
        rows = np.flatnonzero(vol > 0.0)
        cells = first_cell[rows]
        total = float(vol[rows].sum())
        if total <= 0.0:
            return trans, self.exit_cell, g, ent_pv
        g_out = self.marrow_outflow.outlet_conductance(vol[rows] / total)
        pv_out = np.full(cells.size, outlet_pv)
        return (
            trans,
            np.concatenate([self.exit_cell, cells]),
            np.concatenate([g, g_out]),
            np.concatenate([ent_pv, pv_out]),
        )

    def _time_step(
        self,
        flux: np.ndarray,
        src: np.ndarray,
        row_cell: np.ndarray,
        q_ent: np.ndarray,
        exit_cell_flux: np.ndarray,
        visc_ratio: np.ndarray,
        q: float,
        faces: np.ndarray | None = None,
    ) -> tuple[float, bool]:
        """Step length (CFL of the method) and whether it lands on the target volume (``faces``: the
        only faces with flux, front method)."""
        graph, st, control = self.graph, self.state, self.control
        if self.method == "impes":
            thr = throughput_rate(graph.face_a, graph.face_b, flux, src, exit_cell_flux)
            ok = thr > 0.0
            dt = self.cfl * float(np.min(self.pore_vol[ok] / thr[ok]))
        else:
            exit_out = np.bincount(row_cell, weights=np.maximum(q_ent, 0.0), minlength=graph.n)
            dt = front_time_step(
                graph.face_a, graph.face_b, flux, src, exit_out, self.pore_vol, st.saturation, visc_ratio,
                self.cfl, FULL_CELL_S, faces,
            )  # fmt: skip
            if not math.isfinite(dt):
                thr = throughput_rate(graph.face_a, graph.face_b, flux, src, exit_cell_flux)
                dt = self.cfl * float(np.min(self.pore_vol[thr > 0.0] / thr[thr > 0.0]))
        if self.tip_balls and q > 0.0 and np.any(st.saturation[self.ball_core] < FULL_CELL_S):
            # the ball's cells fill together, as one big cell the front limit would fill in 1 / cfl
            # steps: while they do, each step fills at most cfl / BALL_FILL_STEPS of the balls
            dt = min(dt, self.cfl * self.tip_pore_vol / (BALL_FILL_STEPS * q))
        if self.max_step_s is not None:
            dt = min(dt, self.max_step_s)
        last = False
        v_target = float(control.target_volume_m3)
        remaining = v_target - st.injected_m3
        # a step that comes within round-off of the target is the last: it lands on the target, rather
        # than leaving a remainder of a few ulps for a step of zero length (equal steps that add up to
        # the target, e.g. the ball's fill steps, do this)
        if q * dt >= remaining - TARGET_VOLUME_RTOL * v_target:
            dt = remaining / q
            last = True
        if control.max_duration_s is not None and st.t + dt >= control.max_duration_s:
            dt = control.max_duration_s - st.t
        if not (dt > 0.0 and math.isfinite(dt)):
            raise SolverError(
                f"non-positive or non-finite time step {dt!r} at step {st.step}, t = {st.t:.6g} s"
            )
        return dt, last

    def _check_mass_balance(self, v_bone_new: float, t_end: float) -> None:
        st = self.state
        scale = max(st.injected_m3, 1e-300)
        err_c = abs(st.injected_m3 - v_bone_new - float(st.exit_cement_m3.sum())) / scale
        err_m = abs(v_bone_new - float(st.exit_marrow_m3.sum())) / scale
        self._max_err_c = max(self._max_err_c, err_c)
        self._max_err_m = max(self._max_err_m, err_m)
        if err_c > MASS_BALANCE_TOL or err_m > MASS_BALANCE_TOL:
            raise SolverError(
                f"mass balance violated at step {st.step} (t = {t_end:.6g} s): cement error {err_c:.3e}, "
                f"marrow error {err_m:.3e} (relative to injected volume; tolerance {MASS_BALANCE_TOL:g})"
            )

    def _tip_balls(self, needle: Needle) -> list[tuple[float, np.ndarray, float, float]]:
        """Per cannula: its share of the flow, the source-weighted geometric-mean permeabilities
        (x, y, z), mean permeability and porosity of its ball (for the near field's shear rate)."""
        tips = np.flatnonzero(self.tip_mask)
        owner_flat = np.zeros(self.bone.n_cells, dtype=np.int64)
        if needle.tip_cannula is not None:
            owner_flat[np.asarray(needle.tip_cells)] = np.asarray(needle.tip_cannula, dtype=np.int64)
        owner = owner_flat[self.graph.cell_of[tips]]
        balls = []
        for j in np.unique(owner):
            cells = tips[owner == j]
            w = self.src_unit[cells]
            share = float(w.sum())
            w = w / share
            k_xyz = np.exp(w @ np.log(np.stack([self.tip_k[int(c)] for c in cells])))
            balls.append((share, k_xyz, float(w @ self.k_mean[cells]), float(w @ self.phi[cells])))
        return balls

    def _mean_marrow_pressure(self, in_cement: np.ndarray, p: np.ndarray) -> float:
        """Pore-volume-weighted mean of ``p`` over the marrow (cells without cement, no vein lumens);
        NaN when no marrow is left."""
        marrow_vol = np.where(self.is_vein | in_cement, 0.0, self.pore_vol)
        total = float(marrow_vol.sum())
        return float(np.dot(marrow_vol, p)) / total if total > 0 else np.nan

    def _needle_pressure(self, p_tip_cells: float, p_marrow: float, q: float, age_s: float) -> float:
        """Needle pressure on the tip's surface (Pa): the tip cells' pressure plus the well's near field.

        The near-field correction assumes the tip cells' excess pressure is the cement's source; while
        the bolus is smaller than the cell it is not, and the tip surface cannot be below the marrow the
        cement is pushing (``p_marrow``, NaN when no marrow is left).
        """
        p_needle = p_tip_cells + self._tip_near_field(q, age_s)
        return p_marrow if p_needle < p_marrow else p_needle

    def _tip_near_field(self, q: float, age_s: float) -> float:
        """Flow-weighted p(tip surface) - p(tip cells) of cement leaving the tip (0 without a tip radius)."""
        if self.tip_radius_m <= 0.0 or q <= 0.0:
            return 0.0
        n_idx = float(rheology.power_law_index(self.cement, age_s))
        total = 0.0
        if self.tip_balls:
            for share, k_xyz, k_mean, phi in self.tip_balls:

                def mu_b(u: np.ndarray, k_mean: float = k_mean, phi: float = phi) -> np.ndarray:
                    gamma = rheology.porous_shear_rate(u, k_mean, phi, n_idx)
                    return rheology.cement_viscosity(self.cement, gamma, age_s)

                total += share * ball_source_near_field_pa(
                    q * share, self.tip_kernel_radius_m, self.tip_radius_m, k_xyz, mu_b
                )
            return total
        for c, k_xyz in self.tip_k.items():
            w = float(self.src_unit[c])

            def mu(u: np.ndarray, c: int = c) -> np.ndarray:
                gamma = rheology.porous_shear_rate(u, self.k_mean[c], self.phi[c], n_idx)
                return rheology.cement_viscosity(self.cement, gamma, age_s)

            total += w * point_source_near_field_pa(q * w, self.h, self.tip_radius_m, k_xyz, mu)
        return total

    def _lumen_edges(self, trans: np.ndarray, s_c: np.ndarray, lumen_flux: np.ndarray, age_s: float) -> None:
        """Set the vein-lumen edges' transmissibilities in ``trans`` (in place) with the cement's
        Poiseuille-equivalent viscosity at each edge's own flow (``lumen_flux``, the last solve's;
        :func:`sim.physics.rheology.tube_flow_viscosity`, :func:`lumen_edge_transmissibility`).
        Edges the front method leaves out (transmissibility 0) stay out."""
        f = self.lumen_face
        if f.size == 0:
            return
        on = trans[f] != 0.0
        f = f[on]
        mu_e = rheology.tube_flow_viscosity(self.cement, lumen_flux[on], self.lumen_face_diameter[on], age_s)
        a, b = self.graph.face_a[f], self.graph.face_b[f]
        trans[f] = lumen_edge_transmissibility(self.graph.face_g_a[f], s_c[a], s_c[b], mu_e, self.mu_res[a])

    def _shear_rate(self, speed: np.ndarray, age_s: float) -> tuple[np.ndarray, np.ndarray]:
        """Shear rate the cement sees per node: pore shear rate in the bone (Christopher & Middleman), wall
        shear rate (3n+1)/(4n) 8 u / d of a power-law fluid at a vein node (Rabinowitsch). Returns the
        cells with a nonzero speed and their rates; both laws give exactly 0 at the others. A lumen's
        edges take the viscosity of their own flow instead (:meth:`_lumen_edges`); the node's value
        is left to the foramen's exit row, which pins the node to the venous pressure."""
        n_idx = float(rheology.power_law_index(self.cement, age_s))
        cells = np.flatnonzero(speed)
        u = speed[cells]
        shear = np.asarray(
            rheology.porous_shear_rate(u, self.k_mean[cells], self.phi[cells], n_idx), dtype=np.float64
        )
        vein = self.is_vein[cells]
        if vein.any():
            shear[vein] = (
                (3.0 * n_idx + 1.0) / (4.0 * n_idx) * 8.0 * u[vein] / self.vein_diameter[cells[vein]]
            )
        return cells, np.ascontiguousarray(shear)

    # ------------------------------------------------------------------ views of the state
    def cement_fraction_grid(self) -> np.ndarray:
        """The cement fraction of the pore space now, on the bone grid (0 outside the porous cells)."""
        return _to_grid(self.graph, self.state.saturation, 0.0)

    def result(self, stop_reason: str) -> InjectionResult:
        """Everything the injection produced, once it has ended for ``stop_reason``."""
        st, rows, n_exits = self.state, self._rows, self.n_exits
        nt = len(rows["t"])

        def col(k: str) -> np.ndarray:
            return np.asarray(rows[k], dtype=np.float64)

        def mat(k: str) -> np.ndarray:
            return np.asarray(rows[k], dtype=np.float64).reshape(nt, n_exits)

        stats = self.solver.stats.as_dict()
        stats.update(
            pressure_solver=self.pressure_solver_name,
            pressure_time_s=self._t_pressure,
            transport_time_s=self._t_transport,
            wall_time_s=time.perf_counter() - self._wall0,
            n_cells=self.graph.n,
            n_faces=self.graph.n_faces,
            n_isolated_cells=self.graph.n_isolated,
            max_cement_unknowns=self._max_cement_unknowns,
            max_relative_flux_imbalance=self._max_imbalance,
            max_saturation=float(st.saturation.max()) if self.graph.n else 0.0,
        )
        shift = float(self._p_vein_last.mean()) if self._p_vein_last is not None else 0.0
        bone = self.bone
        return InjectionResult(
            method=self.method,
            spacing_m=self.h,
            origin_m=np.asarray(bone.origin_m, dtype=np.float64),
            times_s=col("t"),
            dt_s=col("dt"),
            injected_volume_m3=col("inj"),
            injection_rate_m3_s=col("q"),
            needle_pressure_pa=col("pn"),
            intravertebral_pressure_pa=col("pm"),
            syringe_pressure_pa=col("ps"),
            cannula_pressure_drop_pa=col("pc"),
            needle_viscosity_pa_s=col("mun"),
            cement_age_bone_s=col("ageb"),
            cement_age_syringe_s=col("ages"),
            cement_in_bone_series_m3=col("vb"),
            cement_leaked_series_m3=col("lc"),
            marrow_leaked_series_m3=col("lm"),
            exit_names=[e.name for e in bone.exits],
            exit_kinds=[e.kind for e in bone.exits],
            exit_cement_flux_m3_s=mat("qc"),
            exit_marrow_flux_m3_s=mat("qm"),
            exit_pressure_pa=mat("pv"),
            exit_cement_volume_m3=st.exit_cement_m3,
            exit_marrow_volume_m3=st.exit_marrow_m3,
            leak_onset_s=st.exit_onset_s,
            cement_fraction=self.cement_fraction_grid(),
            arrival_time_s=_to_grid(self.graph, st.arrival_s, np.nan),
            pressure_pa=_to_grid(self.graph, st.pressure_shifted + shift, np.nan),
            stop_reason=stop_reason,
            end_time_s=st.t,
            n_steps=st.step,
            n_pressure_solves=self.solver.stats.n_solves,
            cement_in_bone_m3=st.cement_in_bone_m3,
            cement_in_lumens_m3=float(np.dot(st.saturation[self.is_vein], self.pore_vol[self.is_vein])),
            cement_leaked_m3=float(st.exit_cement_m3.sum()),
            marrow_leaked_m3=float(st.exit_marrow_m3.sum()),
            max_mass_balance_error=max(self._max_err_c, self._max_err_m),
            max_cement_mass_balance_error=self._max_err_c,
            max_marrow_mass_balance_error=self._max_err_m,
            solver_stats=stats,
        )


_ROW_KEYS = (
    "t",
    "dt",
    "inj",
    "q",
    "pn",
    "pm",
    "ps",
    "pc",
    "mun",
    "ageb",
    "ages",
    "vb",
    "lc",
    "lm",
    "qc",
    "qm",
    "pv",
)


def run_injection(
    bone: BoneGrid,
    needle: Needle,
    cement: CementModel,
    clock: CureClock,
    marrow_viscosity_pa_s: float,
    control: InjectionControl,
    coupling: ExitCoupling,
    method: str = "front",
    cfl: float = 0.8,
    pressure_solver: str = "auto",
    exchange: ForamenPoiseuille | None = None,
    stop_requested: Callable[[float], bool] | None = None,
    on_step: Callable[[InjectionSolver], None] | None = None,
    progress: Callable[[float], None] | None = None,
    max_step_s: float | None = None,
    max_steps: int = 2_000_000,
    marrow_outflow: LumpedMarrowOutlet | None = None,
) -> InjectionResult:
    """Inject cement into ``bone`` through ``needle`` until the control, a limit or a stop request.

    ``stop_requested(t)`` is polled before every step (the operator's stop policy).

    ``on_step(solver)`` is called after every step (outputs, coupling); ``max_step_s`` optionally
    caps the time step (finer time series); ``max_steps`` guards against runaway step counts.
    """
    solver = InjectionSolver(
        bone, needle, cement, clock, marrow_viscosity_pa_s, control, coupling, method=method, cfl=cfl,
        pressure_solver=pressure_solver, exchange=exchange, max_step_s=max_step_s, max_steps=max_steps,
        marrow_outflow=marrow_outflow,
    )  # fmt: skip
    return drive_injection(solver, stop_requested, on_step, progress)


def drive_injection(
    solver: InjectionSolver,
    stop_requested: Callable[[float], bool] | None = None,
    on_step: Callable[[InjectionSolver], None] | None = None,
    progress: Callable[[float], None] | None = None,
    step_until: Callable[[float], float | None] | None = None,
    on_plan: Callable[[StepPlan], None] | None = None,
) -> InjectionResult:
    """Step ``solver`` until the control, a limit or ``stop_requested(t)`` ends the injection.

    ``stop_requested`` is polled before every step, ``on_step(solver)`` called after every step that
    advanced (every piece of a step), ``progress`` given the injected fraction of the target volume.
    ``step_until(t)`` gives a time the piece from t must not pass (the stop time once it is known, so
    the injection stops on it, not at the end of the step that crosses it); ``on_plan(plan)`` sees
    the plan before each piece is taken (to branch off runs that stop inside it). The stop is polled
    between pieces too.
    """
    target = float(solver.control.target_volume_m3)
    while True:
        if stop_requested is not None and stop_requested(solver.state.t):
            reason = "stop_signal"
            break
        reason = solver.limit_reached()
        if reason:
            break
        plan = solver.plan_step()
        if isinstance(plan, str):  # "pressure_limit": nothing advanced
            reason = plan
            break
        while True:  # the step's pieces (one unless it is cut at a frame or a stop)
            if on_plan is not None:
                on_plan(plan)
            reason = solver.take_step(plan, step_until(solver.state.t) if step_until is not None else None)
            if on_step is not None:
                on_step(solver)
            if progress is not None:
                progress(min(solver.state.injected_m3 / target, 1.0))
            if reason or not plan.t < plan.t_end:
                break
            if stop_requested is not None and stop_requested(solver.state.t):
                reason = "stop_signal"
                break
        if reason:
            break
    return solver.result(reason)


def _to_grid(graph, values: np.ndarray, fill: float) -> np.ndarray:
    """Values of the grid-cell nodes on the (nx, ny, nz) grid (vein nodes are not grid cells)."""
    out = np.full(int(np.prod(graph.shape)), fill, dtype=np.float64)
    grid = graph.is_grid_cell
    out[graph.cell_of[grid]] = values[grid]
    return out.reshape(graph.shape)


def _admissible_rate(
    needle_pressure: Callable[[float], float],
    cement: CementModel,
    nominal: float,
    limit: float,
    d_in: float,
    l_can: float,
    age_syr: float,
) -> float:
    """Largest rate <= nominal whose syringe pressure p_needle(Q) + dp_cannula(Q) stays <= limit.

    ``needle_pressure(Q)`` is the needle pressure the step reports at rate Q: the tip cells' pressure,
    linear in Q, plus the well's near field (and the marrow floor), so the limit holds for the syringe
    pressure the run reports, not only for its grid part.
    """

    def excess(q: float) -> float:
        dp = float(rheology.cannula_pressure_drop_pa(cement, q, d_in, l_can, age_syr)) if q > 0 else 0.0
        return needle_pressure(q) + dp - limit

    if excess(nominal) <= 0.0:
        return nominal
    if excess(0.0) >= 0.0:
        return 0.0
    q = brentq(excess, 0.0, nominal, xtol=nominal * 1e-12, rtol=1e-12)
    while q > 0.0 and excess(q) > 0.0:  # land on the safe side of the limit
        q = math.nextafter(q, 0.0) if excess(q) < 1e-9 * limit else q * (1.0 - 1e-9)
    return q
