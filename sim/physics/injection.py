"""3D two-phase Darcy injection of PMMA cement into a vertebral body (IMPES and front methods).

Model (DESIGN.md section 2, "Injection"). Cement (viscosity mu_c, shear-thinning and curing,
from :mod:`sim.physics.rheology`) displaces Newtonian marrow (mu_m) through the porous cells of a
:class:`sim.core.grid.BoneGrid`; both are incompressible and immiscible with linear relative
permeabilities (Aziz & Settari 1979, Petroleum Reservoir Simulation, ch. 5):

    div(lambda grad p) = -q,   lambda = k (S/mu_c + (1-S)/mu_m),
    phi dS/dt + div(f(S) u) = q_cement,   f(S) = (S/mu_c) / (S/mu_c + (1-S)/mu_m).

IMPES splitting: each step solves the pressure with mobilities lagged from the previous step
(TPFA, :mod:`sim.physics.pressure`), then advances S along the resulting fluxes
(:mod:`sim.physics.cement_transport`,
implicit upwind in flow order, exact volume conservation). Sources: the injected flow enters
the needle-tip cells split by ``Needle.tip_weights``. Exits: Robin coupling
q_e = (p_cell - p_vein,e) / (1/(G_e lambda_rel(cell)) + R_e) with G_e = pi d^4/(128 L) of the
foramen split equally over its cells, and p_vein,e and the series resistance R_e of a cement
column already in the vein from the :class:`ExitCoupling`; what leaves an exit cell is upwinded
(cement leaves only once cement has reached that cell).

Cement viscosity. Power law with cure from :mod:`sim.physics.rheology`; the pore shear rate comes from
the cell's Darcy speed (Christopher & Middleman 1965 type, ``porous_shear_rate``) of the previous
step (Picard lag; three Picard passes on the first step). One cure clock for all cement in the
bone: the volume-weighted mean equivalent age of the cement in the bone, where cement enters with
the syringe's age (advancing at the room-temperature rate) and ages at the body-temperature rate
once inside. Cement in the cannula uses the syringe age for the cannula pressure drop.

Methods.
- ``"impes"``: full pressure system on every reachable porous cell, time step from the volume
  CFL condition over all cells (dt = cfl * min phi V / throughput): the reference.
- ``"front"``: resin-transfer-moulding-style front tracking. Every connected marrow region is one
  isobaric unknown (error of order mu_m/mu_c of the cement pressure drop), so the pressure system
  lives on the cement cells plus a few lumps; the step is limited only by the front cells
  (cells not yet 99 % full that receive cement: dt = cfl * min phi V / cement inflow), not by the
  inlet, where cement-filled cells stay full. Same transport kernel and conservation as IMPES.

Control. ``mode="rate"`` injects at ``rate_m3_per_s`` and stops with ``"pressure_limit"`` if
the syringe pressure (needle pressure + cannula drop) would exceed ``max_syringe_pressure_pa``.
``mode="pressure"`` reduces the rate so the syringe pressure equals the limit: for fixed
mobilities p = p0 + Q p1 (two right-hand sides, one matrix), and Q solves the scalar equation
p_needle(Q) + dp_cannula(Q) = limit; it stops with ``"pressure_limit"`` when Q falls below
1e-3 of the nominal rate. Runs stop at the target volume (the last step is shortened to land
on it exactly), at ``max_duration_s``, on ``coupling.stop_requested(t)`` or when the cement in
the syringe has set (``"cement_set"``).

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
from sim.core.grid import BoneGrid, Needle
from sim.physics import rheology
from sim.physics.cement_transport import front_time_step, throughput_rate, transport_step
from sim.physics.pressure import (
    PressureSolver,
    assemble_front,
    assemble_full,
    build_cell_graph,
    face_transmissibility,
)
from sim.physics.rheology import CementModel, viscosity_kernel

MASS_BALANCE_TOL = 1e-10
LEAK_ONSET_M3 = 1e-12  # cumulative cement through an exit that counts as leak onset (1e-3 mm^3)
ARRIVAL_SATURATION = 0.5  # a cell's arrival time is when S first reaches this
CEMENT_CELL_MIN_S = 1e-6  # front method: cells above this saturation are cement unknowns
FULL_CELL_S = 0.99  # front method: cells above this no longer limit the step
STALL_FRACTION = 1e-3  # pressure mode: stop when the admissible rate drops below this share
METHODS = ("front", "impes")


@runtime_checkable
class ExitCoupling(Protocol):
    """Two-way bone <-> vein interface (docs/architecture.md).

    ``exit_pressure(t)`` gives the venous pressure (Pa) outside each exit before each pressure
    solve; ``exit_resistance(t)`` a resistance (Pa s/m^3) in series with each exit's foramen (a
    cement column in the vein beyond it that any flow through the exit has to push);
    ``accept_flux`` receives the exact cement and marrow flows (m^3/s, positive out of the bone)
    that the solver removed through each exit over [t, t + dt]; ``stop_requested`` is polled
    once per step (leak-detection stop policy).
    """

    def exit_pressure(self, t: float) -> np.ndarray: ...

    def exit_resistance(self, t: float) -> np.ndarray: ...

    def accept_flux(self, t: float, dt: float, q_cement: np.ndarray, q_marrow: np.ndarray) -> None: ...

    def stop_requested(self, t: float) -> bool: ...


class ConstantPressureCoupling:
    """Constant venous pressure at every exit; never asks to stop; records what it received."""

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

    def stop_requested(self, t: float) -> bool:
        return False


@dataclass
class InjectionControl:
    """Injection protocol in SI units (see module docstring for the modes)."""

    mode: str = "rate"
    rate_m3_per_s: float = 5.0e-8
    max_syringe_pressure_pa: float | None = 10.0e6
    target_volume_m3: float = 4.0e-6
    max_duration_s: float | None = None
    age_at_start_s: float = 0.0
    body_temperature_k: float = 310.15
    room_temperature_k: float = 294.15
    snapshot_interval_s: float | None = None

    @classmethod
    def from_si(
        cls,
        injection_si: dict[str, Any],
        cement_si: dict[str, Any],
        age_at_start_s: float,
        snapshot_interval_s: float | None = None,
    ) -> InjectionControl:
        """Build from ``scenario.si()['injection']`` and ``scenario.si()['cement']``."""
        return cls(
            mode=injection_si["mode"],
            rate_m3_per_s=injection_si["rate_m3_per_s"],
            max_syringe_pressure_pa=injection_si["max_syringe_pressure_pa"],
            target_volume_m3=injection_si["volume_m3"],
            max_duration_s=injection_si.get("max_duration_s"),
            age_at_start_s=float(age_at_start_s),
            body_temperature_k=cement_si["body_temperature_k"],
            room_temperature_k=cement_si["room_temperature_k"],
            snapshot_interval_s=snapshot_interval_s,
        )

    def validate(self) -> None:
        if self.mode not in ("rate", "pressure"):
            raise ConfigError(f"InjectionControl.mode = {self.mode!r}: must be 'rate' or 'pressure'")
        if not (self.rate_m3_per_s > 0.0 and math.isfinite(self.rate_m3_per_s)):
            raise ConfigError(f"InjectionControl.rate_m3_per_s = {self.rate_m3_per_s}: must be > 0")
        if not (self.target_volume_m3 > 0.0 and math.isfinite(self.target_volume_m3)):
            raise ConfigError(f"InjectionControl.target_volume_m3 = {self.target_volume_m3}: must be > 0")
        if self.max_duration_s is not None and not self.max_duration_s > 0.0:
            raise ConfigError(f"InjectionControl.max_duration_s = {self.max_duration_s}: must be > 0 or None")
        if self.max_syringe_pressure_pa is not None and not self.max_syringe_pressure_pa > 0.0:
            raise ConfigError(
                "InjectionControl.max_syringe_pressure_pa = "
                f"{self.max_syringe_pressure_pa}: must be > 0 or None"
            )
        if self.mode == "pressure" and self.max_syringe_pressure_pa is None:
            raise ConfigError("InjectionControl.mode = 'pressure' needs max_syringe_pressure_pa")
        if self.snapshot_interval_s is not None and not self.snapshot_interval_s > 0.0:
            raise ConfigError(
                f"InjectionControl.snapshot_interval_s = {self.snapshot_interval_s}: must be > 0"
            )
        for name in ("body_temperature_k", "room_temperature_k"):
            v = getattr(self, name)
            if not 200.0 < v < 400.0:
                raise ConfigError(f"InjectionControl.{name} = {v}: expected a temperature in kelvin")
        if self.age_at_start_s < 0.0:
            raise ConfigError(f"InjectionControl.age_at_start_s = {self.age_at_start_s}: must be >= 0")


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
    snapshots: list[tuple[float, np.ndarray]]
    stop_reason: str
    end_time_s: float
    n_steps: int
    n_pressure_solves: int
    cement_in_bone_m3: float
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

    def time_series(self) -> dict[str, np.ndarray]:
        """Per-step series as flat columns (exit series as ``<name>_cement_flux_m3_s`` etc.)."""
        cols: dict[str, np.ndarray] = {
            "time_s": self.times_s,
            "dt_s": self.dt_s,
            "injected_volume_m3": self.injected_volume_m3,
            "injection_rate_m3_s": self.injection_rate_m3_s,
            "needle_pressure_pa": self.needle_pressure_pa,
            "syringe_pressure_pa": self.syringe_pressure_pa,
            "cannula_pressure_drop_pa": self.cannula_pressure_drop_pa,
            "needle_viscosity_pa_s": self.needle_viscosity_pa_s,
            "cement_age_bone_s": self.cement_age_bone_s,
            "cement_age_syringe_s": self.cement_age_syringe_s,
            "cement_in_bone_m3": self.cement_in_bone_series_m3,
            "cement_leaked_m3": self.cement_leaked_series_m3,
            "marrow_leaked_m3": self.marrow_leaked_series_m3,
        }
        for e, name in enumerate(self.exit_names):
            cols[f"{name}_cement_flux_m3_s"] = self.exit_cement_flux_m3_s[:, e]
            cols[f"{name}_marrow_flux_m3_s"] = self.exit_marrow_flux_m3_s[:, e]
        return cols

    def summary(self) -> dict[str, Any]:
        """Scalar results (JSON-ready)."""
        return {
            "method": self.method,
            "stop_reason": self.stop_reason,
            "end_time_s": self.end_time_s,
            "injected_m3": self.injected_m3,
            "cement_in_bone_m3": self.cement_in_bone_m3,
            "cement_leaked_m3": self.cement_leaked_m3,
            "marrow_leaked_m3": self.marrow_leaked_m3,
            "leaked_fraction": self.leaked_fraction,
            "first_leak_s": self.first_leak_s(),
            "leak_onset_s": {n: float(v) for n, v in zip(self.exit_names, self.leak_onset_s, strict=True)},
            "exit_cement_volume_m3": dict(
                zip(self.exit_names, map(float, self.exit_cement_volume_m3), strict=True)
            ),
            "exit_marrow_volume_m3": dict(
                zip(self.exit_names, map(float, self.exit_marrow_volume_m3), strict=True)
            ),
            "max_needle_pressure_pa": float(np.max(self.needle_pressure_pa))
            if self.n_steps
            else float("nan"),
            "max_syringe_pressure_pa": float(np.max(self.syringe_pressure_pa))
            if self.n_steps
            else float("nan"),
            "n_steps": self.n_steps,
            "n_pressure_solves": self.n_pressure_solves,
            "max_mass_balance_error": self.max_mass_balance_error,
            "solver_stats": dict(self.solver_stats),
        }


@numba.njit(cache=True)
def _viscosity_cells(shear_rate: np.ndarray, age_s: float, params: np.ndarray, out: np.ndarray) -> None:
    for i in range(shear_rate.shape[0]):
        out[i] = viscosity_kernel(shear_rate[i], age_s, params)


def cell_darcy_speed(graph, face_flux: np.ndarray) -> np.ndarray:
    """Darcy speed |u| per cell (m/s): per direction the mean |flux| of its two faces over h^2."""
    n = graph.n
    mag = np.abs(face_flux)
    sq = np.zeros(n)
    for d in range(3):
        sel = graph.face_dir == d
        comp = np.bincount(graph.face_a[sel], weights=mag[sel], minlength=n) + np.bincount(
            graph.face_b[sel], weights=mag[sel], minlength=n
        )
        sq += (0.5 * comp) ** 2
    return np.sqrt(sq) / graph.spacing_m**2


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


def run_injection(
    bone: BoneGrid,
    needle: Needle,
    cement: CementModel,
    marrow_viscosity_pa_s: float,
    control: InjectionControl,
    coupling: ExitCoupling,
    method: str = "front",
    cfl: float = 0.8,
    pressure_solver: str = "auto",
    progress: Callable[[float], None] | None = None,
    max_step_s: float | None = None,
    max_steps: int = 2_000_000,
) -> InjectionResult:
    """Inject cement into ``bone`` through ``needle`` until the control says stop.

    ``max_step_s`` optionally caps the time step (finer time series); ``max_steps`` guards
    against runaway step counts (SolverError).
    """
    wall0 = time.perf_counter()
    control.validate()
    _check_inputs(bone, needle, marrow_viscosity_pa_s, method, cfl)
    h = float(bone.spacing_m)
    mu_m = float(marrow_viscosity_pa_s)
    n_exits = len(bone.exits)
    exit_flat = np.concatenate([np.asarray(e.cells, dtype=np.int64) for e in bone.exits])
    graph = build_cell_graph(bone.porous, bone.permeability, h, np.asarray(needle.tip_cells), exit_flat)
    n = graph.n

    # exit entries (one per reachable exit cell); G_e shared equally by its reachable cells
    ent_cell, ent_exit, ent_geo = [], [], []
    for e, ex in enumerate(bone.exits):
        cc = graph.compact[np.asarray(ex.cells, dtype=np.int64)]
        cc = cc[cc >= 0]
        ent_cell.append(cc)
        ent_exit.append(np.full(cc.size, e, dtype=np.int64))
        ent_geo.append(np.full(cc.size, ex.poiseuille_factor_m3 / max(cc.size, 1)))
    exit_cell = np.concatenate(ent_cell)
    exit_id = np.concatenate(ent_exit)
    exit_geo = np.concatenate(ent_geo)
    exit_cells_per_exit = np.bincount(exit_id, minlength=n_exits).astype(np.float64)

    tips = graph.compact[np.asarray(needle.tip_cells, dtype=np.int64)]
    tip_w = np.asarray(needle.tip_weights, dtype=np.float64)
    src_unit = np.bincount(tips, weights=tip_w, minlength=n)
    tip_mask = src_unit > 0.0
    phi = bone.porosity.ravel()[graph.cell_of].astype(np.float64)
    if np.any(phi <= 0.0):
        raise GeometryError(
            f"porous cell with porosity <= 0 at flat index {int(graph.cell_of[np.argmin(phi)])}"
        )
    pore_vol = phi * h**3
    k_mean = bone.permeability.reshape(3, -1)[:, graph.cell_of].mean(axis=0)
    params = np.ascontiguousarray(cement.as_array(), dtype=np.float64)
    r_room = float(rheology.age_rate(cement, control.room_temperature_k))
    r_body = float(rheology.age_rate(cement, control.body_temperature_k))
    solver = PressureSolver(pressure_solver)

    s = np.zeros(n)
    arrival = np.full(n, np.nan)
    p_shifted = np.zeros(n)
    speed = np.zeros(n)
    mu_c = np.empty(n)
    t = 0.0
    v_inj = 0.0
    v_target = float(control.target_volume_m3)
    leaked_c = np.zeros(n_exits)
    leaked_m = np.zeros(n_exits)
    onset = np.full(n_exits, np.nan)
    age_syr = float(control.age_at_start_s)
    age_bone = age_syr
    v_bone = 0.0
    rows: dict[str, list] = {k: [] for k in (
        "t", "dt", "inj", "q", "pn", "ps", "pc", "mun", "ageb", "ages", "vb", "lc", "lm", "qc", "qm", "pv",
    )}  # fmt: skip
    snapshots: list[tuple[float, np.ndarray]] = []
    next_snap = control.snapshot_interval_s
    max_err_c = max_err_m = 0.0
    stop_reason = ""
    step = 0
    t_transport = t_pressure = 0.0
    max_cement_unknowns = 0
    max_imbalance = 0.0
    nominal = float(control.rate_m3_per_s)
    limit = control.max_syringe_pressure_pa
    d_in, l_can = float(needle.inner_diameter_m), float(needle.length_m)

    while True:
        if coupling.stop_requested(t):
            stop_reason = "stop_signal"
            break
        if control.max_duration_s is not None and t >= control.max_duration_s * (1.0 - 1e-12):
            stop_reason = "max_duration"
            break
        if rheology.is_set(cement, age_syr):
            stop_reason = "cement_set"
            break
        if step >= max_steps:
            raise SolverError(f"injection exceeded max_steps = {max_steps} at t = {t:.4g} s")
        p_vein = np.asarray(coupling.exit_pressure(t), dtype=np.float64)
        if p_vein.shape != (n_exits,) or not np.all(np.isfinite(p_vein)):
            raise SolverError(
                f"coupling.exit_pressure({t:.4g}) returned shape {p_vein.shape} / non-finite values; "
                f"expected {n_exits} finite pressures"
            )
        r_series = np.asarray(coupling.exit_resistance(t), dtype=np.float64)
        if r_series.shape != (n_exits,) or not np.all(np.isfinite(r_series) & (r_series >= 0.0)):
            raise SolverError(
                f"coupling.exit_resistance({t:.4g}) returned shape {r_series.shape} / negative or "
                f"non-finite values; expected {n_exits} finite resistances >= 0"
            )
        # a series resistance R of an exit split over its n cells in parallel: R n per cell
        r_cell = r_series[exit_id] * exit_cells_per_exit[exit_id]
        shift = float(p_vein.mean())
        ent_pv = p_vein[exit_id] - shift

        tp0 = time.perf_counter()
        for _ in range(3 if step == 0 else 1):
            n_idx = float(rheology.power_law_index(cement, age_bone))
            shear = np.asarray(rheology.porous_shear_rate(speed, k_mean, phi, n_idx), dtype=np.float64)
            _viscosity_cells(np.ascontiguousarray(shear), age_bone, params, mu_c)
            s_c = np.minimum(s, 1.0)
            lam = s_c / mu_c + (1.0 - s_c) / mu_m
            trans = face_transmissibility(graph, lam)
            g = exit_geo * lam[exit_cell]
            g = g / (1.0 + g * r_cell)
            if method == "front":
                in_cement = (s > CEMENT_CELL_MIN_S) | tip_mask
                system = assemble_front(graph, in_cement, trans, exit_cell, g)
                key = ("front", system.n_block, int(np.flatnonzero(in_cement).sum()))
                max_cement_unknowns = max(max_cement_unknowns, system.n_block)
            else:
                system = assemble_full(graph, trans, exit_cell, g)
                key = ("full",)
            x0 = system.initial_guess(p_shifted)
            if control.mode == "rate":
                q = nominal
                b = system.rhs(q * src_unit, g, ent_pv)
                x = solver.solve(system.matrix, b, x0, block=system.n_block, key=key)
                p_shifted = system.cell_values(x)
            else:
                b = np.stack(
                    [system.rhs(np.zeros(n), g, ent_pv), system.rhs(src_unit, g, np.zeros_like(ent_pv))], 1
                )
                x = solver.solve(
                    system.matrix, b, np.stack([x0, np.zeros_like(x0)], 1), block=system.n_block, key=key
                )
                p0, p1 = system.cell_values(x[:, 0]), system.cell_values(x[:, 1])
                q = _admissible_rate(p0, p1, src_unit, shift, cement, nominal, limit, d_in, l_can, age_syr)
                p_shifted = p0 + q * p1
            flux = trans * (p_shifted[graph.face_a] - p_shifted[graph.face_b])
            speed = cell_darcy_speed(graph, flux)
        t_pressure += time.perf_counter() - tp0

        p_needle = float(np.dot(src_unit, p_shifted)) + shift
        dp_can = float(rheology.cannula_pressure_drop_pa(cement, q, d_in, l_can, age_syr)) if q > 0 else 0.0
        p_syr = p_needle + dp_can
        if control.mode == "rate" and limit is not None and p_syr > limit:
            stop_reason = "pressure_limit"
            break
        if control.mode == "pressure" and q < STALL_FRACTION * nominal:
            stop_reason = "pressure_limit"
            break

        src = q * src_unit
        q_ent = g * (p_shifted[exit_cell] - ent_pv)
        # close the global volume balance left by the iterative solver's residual: Q = sum of exit
        # flows must hold to round-off for the 1e-10 marrow balance. The window matches the solver's
        # own acceptance (relative residual <= 1e-6, PressureSolver.solve); the largest correction
        # is reported as max_relative_flux_imbalance. (At 1e-9 Q, a rare 1e-8 Q residual of the lumped front
        # system went uncorrected and failed the balance check on a loaded machine.)
        imbalance = q - float(q_ent.sum())
        max_imbalance = max(max_imbalance, abs(imbalance) / max(q, 1e-300))
        pos = np.maximum(q_ent, 0.0)
        if 0.0 < abs(imbalance) <= 1e-6 * q and pos.sum() > 0.0:
            q_ent = q_ent + imbalance * pos / pos.sum()
        exit_cell_flux = np.bincount(exit_cell, weights=q_ent, minlength=n)
        visc_ratio = mu_c / mu_m

        # time step
        if method == "impes":
            thr = throughput_rate(graph.face_a, graph.face_b, flux, src, exit_cell_flux)
            ok = thr > 0.0
            dt = cfl * float(np.min(pore_vol[ok] / thr[ok]))
        else:
            exit_out = np.bincount(exit_cell, weights=np.maximum(q_ent, 0.0), minlength=n)
            dt = front_time_step(
                graph.face_a, graph.face_b, flux, src, exit_out, pore_vol, s, visc_ratio, cfl, FULL_CELL_S
            )
            if not math.isfinite(dt):
                thr = throughput_rate(graph.face_a, graph.face_b, flux, src, exit_cell_flux)
                dt = cfl * float(np.min(pore_vol[thr > 0.0] / thr[thr > 0.0]))
        if max_step_s is not None:
            dt = min(dt, max_step_s)
        last = False
        if q * dt >= v_target - v_inj:
            dt = (v_target - v_inj) / q
            last = True
        if control.max_duration_s is not None and t + dt >= control.max_duration_s:
            dt = control.max_duration_s - t
        if not (dt > 0.0 and math.isfinite(dt)):
            raise SolverError(f"non-positive or non-finite time step {dt!r} at step {step}, t = {t:.6g} s")

        # transport
        tt0 = time.perf_counter()
        order = np.argsort(-p_shifted, kind="stable").astype(np.int64)
        exit_out = np.bincount(exit_cell, weights=np.maximum(q_ent, 0.0), minlength=n)
        s_new, f_out = transport_step(
            order, graph.cell_ptr, graph.cell_face, graph.cell_nbr, graph.cell_sign, flux, src, exit_out,
            pore_vol, visc_ratio, s, dt,
        )  # fmt: skip
        t_transport += time.perf_counter() - tt0

        qc_ent = np.maximum(q_ent, 0.0) * f_out[exit_cell]
        qm_ent = q_ent - qc_ent
        qc_exit = np.bincount(exit_id, weights=qc_ent, minlength=n_exits)
        qm_exit = np.bincount(exit_id, weights=qm_ent, minlength=n_exits)
        coupling.accept_flux(t, dt, qc_exit.copy(), qm_exit.copy())

        prev_c = leaked_c.copy()
        v_inj = v_target if last else v_inj + q * dt
        leaked_c += qc_exit * dt
        leaked_m += qm_exit * dt
        crossed = np.isnan(onset) & (leaked_c > LEAK_ONSET_M3)
        if crossed.any():
            frac = (LEAK_ONSET_M3 - prev_c[crossed]) / np.maximum(leaked_c[crossed] - prev_c[crossed], 1e-300)
            onset[crossed] = t + np.clip(frac, 0.0, 1.0) * dt
        newly = np.isnan(arrival) & (s_new >= ARRIVAL_SATURATION)
        if newly.any():
            ds = s_new[newly] - s[newly]
            frac = np.where(ds > 0, (ARRIVAL_SATURATION - s[newly]) / np.where(ds > 0, ds, 1.0), 1.0)
            arrival[newly] = t + np.clip(frac, 0.0, 1.0) * dt

        v_bone_new = float(np.dot(s_new, pore_vol))
        c_leak = float(leaked_c.sum())
        m_leak = float(leaked_m.sum())
        scale = max(v_inj, 1e-300)
        err_c = abs(v_inj - v_bone_new - c_leak) / scale
        err_m = abs(v_bone_new - m_leak) / scale
        max_err_c = max(max_err_c, err_c)
        max_err_m = max(max_err_m, err_m)
        if err_c > MASS_BALANCE_TOL or err_m > MASS_BALANCE_TOL:
            raise SolverError(
                f"mass balance violated at step {step} (t = {t + dt:.6g} s): cement error {err_c:.3e}, "
                f"marrow error {err_m:.3e} (relative to injected volume; tolerance {MASS_BALANCE_TOL:g})"
            )

        # cure clocks: syringe at room rate; bone = volume-weighted mean age, ageing at body rate
        leak_dt = float(qc_exit.sum()) * dt
        aged = age_bone + r_body * dt
        incoming = age_syr + 0.5 * (r_room + r_body) * dt
        if v_bone_new > 0.0:
            age_bone = (max(v_bone - leak_dt, 0.0) * aged + q * dt * incoming) / max(
                max(v_bone - leak_dt, 0.0) + q * dt, 1e-300
            )
        else:
            age_bone = incoming
        age_syr += r_room * dt
        v_bone = v_bone_new

        mu_tip = float(np.dot(src_unit, mu_c))
        for key_, val in (
            ("t", t + dt), ("dt", dt), ("inj", v_inj), ("q", q), ("pn", p_needle), ("ps", p_syr),
            ("pc", dp_can), ("mun", mu_tip), ("ageb", age_bone), ("ages", age_syr), ("vb", v_bone_new),
            ("lc", c_leak), ("lm", m_leak), ("qc", qc_exit), ("qm", qm_exit), ("pv", p_vein),
        ):  # fmt: skip
            rows[key_].append(val)
        s = s_new
        t = t + dt
        step += 1
        if next_snap is not None and t >= next_snap * (1.0 - 1e-12):
            snapshots.append((t, _to_grid(graph, s, 0.0).astype(np.float32)))
            while next_snap <= t * (1.0 + 1e-12):
                next_snap += control.snapshot_interval_s
        if progress is not None:
            progress(min(v_inj / v_target, 1.0))
        if last:
            stop_reason = "target_volume"
            break

    if not snapshots or snapshots[-1][0] != t:
        snapshots.append((t, _to_grid(graph, s, 0.0).astype(np.float32)))
    nt = len(rows["t"])

    def col(k: str) -> np.ndarray:
        return np.asarray(rows[k], dtype=np.float64)

    def mat(k: str) -> np.ndarray:
        return np.asarray(rows[k], dtype=np.float64).reshape(nt, n_exits)

    stats = solver.stats.as_dict()
    stats.update(
        pressure_solver=pressure_solver,
        pressure_time_s=t_pressure,
        transport_time_s=t_transport,
        wall_time_s=time.perf_counter() - wall0,
        n_cells=n,
        n_faces=graph.n_faces,
        n_isolated_cells=graph.n_isolated,
        max_cement_unknowns=max_cement_unknowns,
        max_relative_flux_imbalance=max_imbalance,
        max_saturation=float(s.max()) if n else 0.0,
    )
    p_out = p_shifted + (float(rows["pv"][-1].mean()) if nt else 0.0)
    return InjectionResult(
        method=method,
        spacing_m=h,
        origin_m=np.asarray(bone.origin_m, dtype=np.float64),
        times_s=col("t"),
        dt_s=col("dt"),
        injected_volume_m3=col("inj"),
        injection_rate_m3_s=col("q"),
        needle_pressure_pa=col("pn"),
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
        exit_cement_volume_m3=leaked_c,
        exit_marrow_volume_m3=leaked_m,
        leak_onset_s=onset,
        cement_fraction=_to_grid(graph, s, 0.0),
        arrival_time_s=_to_grid(graph, arrival, np.nan),
        pressure_pa=_to_grid(graph, p_out, np.nan) if nt else _to_grid(graph, p_shifted, np.nan),
        snapshots=snapshots,
        stop_reason=stop_reason,
        end_time_s=t,
        n_steps=step,
        n_pressure_solves=solver.stats.n_solves,
        cement_in_bone_m3=v_bone,
        cement_leaked_m3=float(leaked_c.sum()),
        marrow_leaked_m3=float(leaked_m.sum()),
        max_mass_balance_error=max(max_err_c, max_err_m),
        max_cement_mass_balance_error=max_err_c,
        max_marrow_mass_balance_error=max_err_m,
        solver_stats=stats,
    )


def _to_grid(graph, values: np.ndarray, fill: float) -> np.ndarray:
    out = np.full(int(np.prod(graph.shape)), fill, dtype=np.float64)
    out[graph.cell_of] = values
    return out.reshape(graph.shape)


def _admissible_rate(
    p0: np.ndarray,
    p1: np.ndarray,
    src_unit: np.ndarray,
    shift: float,
    cement: CementModel,
    nominal: float,
    limit: float,
    d_in: float,
    l_can: float,
    age_syr: float,
) -> float:
    """Largest rate <= nominal whose syringe pressure p_needle(Q) + dp_cannula(Q) stays <= limit."""
    pn0 = float(np.dot(src_unit, p0)) + shift
    pn1 = float(np.dot(src_unit, p1))

    def excess(q: float) -> float:
        dp = float(rheology.cannula_pressure_drop_pa(cement, q, d_in, l_can, age_syr)) if q > 0 else 0.0
        return pn0 + q * pn1 + dp - limit

    if excess(nominal) <= 0.0:
        return nominal
    if excess(0.0) >= 0.0:
        return 0.0
    q = brentq(excess, 0.0, nominal, xtol=nominal * 1e-12, rtol=1e-12)
    while q > 0.0 and excess(q) > 0.0:  # land on the safe side of the limit
        q = math.nextafter(q, 0.0) if excess(q) < 1e-9 * limit else q * (1.0 - 1e-9)
    return q
