"""Cement saturation transport: implicit upwind in flow order (numba kernel + numpy reference).

Model. Incompressible immiscible displacement of marrow by cement with linear relative
permeabilities (phase mobilities S/mu_c and (1-S)/mu_m). For a given total flux field F
(face fluxes in m^3/s from the pressure solve), the cement saturation S of a cell with pore
volume V obeys, by finite volumes with first-order upwinding (Aziz & Settari 1979, ch. 5),

    V dS/dt = q_src + sum_in F_f f(S_upstream) - (sum_out F_f + q_exit_out) f(S),
    f(S) = (S/mu_c) / (S/mu_c + (1-S)/mu_m) = S / (S + m (1-S)),   m = mu_c / mu_m.

Why implicit. With cement 1e3-1e5 times more viscous than marrow, f is convex with
f'(1) = m, so an explicit upwind step would need dt <= V / (m F): a thousand times below the
volume CFL limit (the last marrow film in a cement-filled cell is expelled on that stiff time
scale). Backward Euler in the cell's own outflow removes that limit. Because TPFA fluxes run
from high to low pressure, the flux graph is acyclic and the fully implicit upwind system is
solved exactly by one sweep over the cells in order of decreasing pressure, each cell being a
scalar equation solved in closed form ("optimal ordering", Natvig & Lie 2008, J Comput Phys
227:10108; Kwok & Tchelepi 2007, J Comput Phys 227:706). The scheme is monotone and
unconditionally stable; the ``cfl`` number of the driver sets accuracy, not stability.

Per cell, with R = V S_old + dt * (cement inflow) and O = dt * (total outflow), the new S solves
V S + O f(S) = R, i.e. A S^2 - B S + C = 0 with A = V (m-1), B = V m + O + R (m-1), C = R m;
the root in [0, 1] is S = 2C / (B + sqrt(B^2 - 4AC)) (cancellation-free, valid for any m > 0).
The cement leaving the cell is then set to R - V S, so cement volume is conserved to round-off
whatever the rounding of the root; its share of each outgoing flux is the effective fractional
flow ``f_out = (R - V S) / O``.

Vein lumens: piston displacement. In the lumen of an embedded vein the cement is a column (as in the
veins outside the bone, :mod:`sim.physics.vein_columns`): a fluid 1e2-1e5 times more viscous than the
blood it displaces pushes it ahead as a piston, a stable displacement (Saffman & Taylor 1958, Proc R
Soc Lond A 245:312: the interface is unstable only when the displacing fluid is the less viscous one)
that leaves at most a thin blood film on the wall. A lumen node therefore passes no cement until it
is full and then passes all its cement inflow: f(S) = 0 for S < 1 and 1 at S = 1, the m -> inf limit
of the porous law. The caller marks lumen nodes with m = inf; the root is then S = min(R / V, 1) and
the cement leaving is R - V S. Limiting case (tests/test_injection.py): a chain of lumen nodes fed
cement at rate q passes its first cement at t = (lumen volume) / q whatever the number of nodes, where
the porous law with m = 286 lets cement through from the first step.

Cement-only routes. Where the pressure solve gives a route the cement's mobility only (with the
marrow-outflow law, :mod:`sim.physics.marrow_outflow`, a bone cell's faces to the embedded vein lumens
and its exits: marrow does not enter the lumens, it leaves through the law's outlet), the flow along it
is cement, and the transport sends cement along it, implicitly in S like the rest of the step: the
pressure solve gave the route the conductance of the saturation S_r it started from, so at the new S it
carries cement O_c S / S_r (O_c = dt * its outflow), and the cell solves (V + O_c / S_r) S + O f(S) = R,
the fill root with a larger volume. The rest of the route's flow, O_c (1 - S / S_r), is fixed by the
pressure solve and is marrow; it vanishes when S holds steady. Where the root would exceed S_r the
route carries cement only, O_c of it (all the cell has if less), and the cell's other outflows take
f(S) of what is left. Taking the route's cement at the step's start saturation instead (explicitly)
made a bone cell at an exit flip between full and empty from step to step (needle pressure +-20 %).
Before December 2026 these routes carried the upwind fractional flow too, so a front cell in a vein's
kernel passed mostly marrow into the lumen (m = 500: f(0.99) = 0.17) at the cement's mobility, and the
lumens passed it on to the foramina as if it were cement volume filling them; the share of such front
cells in a 2 mm kernel shrinks with the grid (cohort patient 0: marrow 49 / 40 / 32 / 25 % of the
foramen's outflow at 1 / 0.75 / 0.5 / 0.375 mm), so a microlitre leak grew with refinement. Limiting
cases (tests/test_injection.py): without cement-only routes the step is bit for bit the fractional-flow
step; a cell whose saturation holds steady sends pure cement along them whatever its saturation; a cell
fed nothing empties along them as exp-like decay, never below zero, its cement all into the route.

Arrays. Cells are numbered compactly 0..n-1. Face f joins ``face_a[f] -> face_b[f]`` with flux
``face_flux[f]`` positive from a to b. The per-cell adjacency is CSR: for cell i, entries
``cell_ptr[i]:cell_ptr[i+1]`` of ``cell_face`` (face index), ``cell_nbr`` (the other cell) and
``cell_sign`` (+1 if i is the face's ``a`` side, -1 otherwise), so the flux into i is
``-cell_sign * face_flux``.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, inline="always")
def _fill_root(pore_volume: float, r: float, o: float, m: float) -> float:
    """Root in [0, 1] of V S + O S/(S + m(1-S)) = R (see module docstring); m = inf is a piston."""
    if r <= 0.0:
        return 0.0
    if m == np.inf:
        return min(r / pore_volume, 1.0)
    if o <= 0.0:
        return r / pore_volume
    a = pore_volume * (m - 1.0)
    b = pore_volume * m + o + r * (m - 1.0)
    c = r * m
    disc = b * b - 4.0 * a * c
    if disc < 0.0:
        disc = 0.0
    return 2.0 * c / (b + np.sqrt(disc))


@numba.njit(cache=True, inline="always")
def _settle(pore_volume: float, r: float, o: float, m: float) -> tuple[float, float]:
    """The cell's new S and the cement left for its outflow O (:func:`_fill_root`, then all of R kept
    where the root's rounding would leave a negative remainder or there is no outflow)."""
    s = _fill_root(pore_volume, r, o, m)
    left = r - pore_volume * s
    if left < 0.0 or o <= 0.0:
        return r / pore_volume, 0.0
    return s, left


@numba.njit(cache=True)
def transport_step_kernel(
    order: np.ndarray,
    cell_ptr: np.ndarray,
    cell_face: np.ndarray,
    cell_nbr: np.ndarray,
    cell_sign: np.ndarray,
    face_flux: np.ndarray,
    source: np.ndarray,
    exit_out: np.ndarray,
    pore_volume: np.ndarray,
    visc_ratio: np.ndarray,
    s_old: np.ndarray,
    dt: float,
    s_new: np.ndarray,
    f_out: np.ndarray,
    cement_only_side: np.ndarray,
    exit_cement_only: np.ndarray,
    s_route: np.ndarray,
    f_only: np.ndarray,
) -> None:
    """One implicit upwind step, sweeping cells in ``order`` (decreasing pressure).

    ``source`` is the cement injection rate per cell (m^3/s, pure cement), ``exit_out`` the
    total outflow per cell through venous exits (m^3/s, >= 0). Writes ``s_new`` and ``f_out``
    (effective cement fraction of every outflow of the cell) for all cells in ``order``.
    Cement-only routes (module docstring): ``cement_only_side[f]`` is 1 (2) when the flow of face f
    out of its a (b) side carries cement only, 0 otherwise; ``exit_cement_only`` is a cell's exit
    outflow of that kind, ``s_route`` the saturation its conductance was computed with. ``f_only``
    receives the cement fraction of each cell's cement-only outflow.
    """
    for idx in range(order.shape[0]):
        i = order[idx]
        cin = source[i]
        out = exit_out[i]
        out_only = exit_cement_only[i]
        for j in range(cell_ptr[i], cell_ptr[i + 1]):
            f = cell_face[j]
            q = -cell_sign[j] * face_flux[f]
            side = cement_only_side[f]
            if q > 0.0:
                # the neighbour is upstream: a cement-only route if the flag names its side
                up_only = side != 0 and (side == 1) == (cell_sign[j] < 0)
                cin += q * (f_only[cell_nbr[j]] if up_only else f_out[cell_nbr[j]])
            elif q < 0.0:
                if side != 0 and (side == 1) == (cell_sign[j] > 0):
                    out_only -= q
                else:
                    out -= q
        v = pore_volume[i]
        r = v * s_old[i] + dt * cin
        o = dt * out
        m = visc_ratio[i]
        o_only = dt * out_only
        c = 0.0
        if o_only > 0.0 and s_route[i] > 0.0:
            # cement-only routes carry cement at the new saturation's mobility, O_c S / S_route
            s, left = _settle(v + o_only / s_route[i], r, o, m)
            if s <= s_route[i]:
                s_new[i] = s
                f_out[i] = left / o if o > 0.0 else 0.0
                f_only[i] = s / s_route[i]
                continue
        if o_only > 0.0:
            # full mobility: the routes carry cement only, all the cell has if they carry more
            if r >= o_only:
                c = 1.0
                r -= o_only
            else:
                c = r / o_only
                r = 0.0
        s, left = _settle(v, r, o, m)
        s_new[i] = s
        f_out[i] = left / o if o > 0.0 else 0.0
        f_only[i] = c


def transport_step(
    order: np.ndarray,
    cell_ptr: np.ndarray,
    cell_face: np.ndarray,
    cell_nbr: np.ndarray,
    cell_sign: np.ndarray,
    face_flux: np.ndarray,
    source: np.ndarray,
    exit_out: np.ndarray,
    pore_volume: np.ndarray,
    visc_ratio: np.ndarray,
    s_old: np.ndarray,
    dt: float,
    cement_only_side: np.ndarray | None = None,
    exit_cement_only: np.ndarray | None = None,
    f_only: np.ndarray | None = None,
    s_route: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Numba implicit upwind step; returns ``(s_new, f_out)`` (cells outside ``order`` keep S).

    ``cement_only_side`` (int8 per face) and ``exit_cement_only`` (per cell) mark the cement-only
    routes (none by default), ``s_route`` the saturation their conductances were computed with
    (default ``min(s_old, 1)``); ``f_only``, if given, receives the cement fraction of each cell's
    cement-only outflow."""
    s_new = s_old.copy()
    f_out = np.zeros_like(s_old)
    side = np.zeros(face_flux.shape[0], dtype=np.int8) if cement_only_side is None else cement_only_side
    only = np.zeros_like(s_old) if exit_cement_only is None else np.ascontiguousarray(exit_cement_only)
    f_c = np.zeros_like(s_old) if f_only is None else f_only
    s_r = np.minimum(s_old, 1.0) if s_route is None else np.ascontiguousarray(s_route, dtype=np.float64)
    transport_step_kernel(
        order, cell_ptr, cell_face, cell_nbr, cell_sign, face_flux, source, exit_out,
        pore_volume, visc_ratio, s_old, float(dt), s_new, f_out, np.ascontiguousarray(side, dtype=np.int8),
        only, s_r, f_c,
    )  # fmt: skip
    return s_new, f_out


def flow_levels(face_a: np.ndarray, face_b: np.ndarray, face_flux: np.ndarray, n_cells: int) -> np.ndarray:
    """Depth of every cell in the acyclic flux graph (0 = no upstream neighbour), vectorised.

    Cells of equal level have no flux between them, so they can be updated together.
    """
    up = np.where(face_flux > 0.0, face_a, face_b)[face_flux != 0.0]
    down = np.where(face_flux > 0.0, face_b, face_a)[face_flux != 0.0]
    level = np.zeros(n_cells, dtype=np.int64)
    for _ in range(n_cells + 1):
        new = level.copy()
        np.maximum.at(new, down, level[up] + 1)
        if np.array_equal(new, level):
            return level
        level = new
    raise RuntimeError("flux graph has a cycle: face fluxes are not a potential flow")


def transport_step_numpy(
    face_a: np.ndarray,
    face_b: np.ndarray,
    face_flux: np.ndarray,
    source: np.ndarray,
    exit_out: np.ndarray,
    pore_volume: np.ndarray,
    visc_ratio: np.ndarray,
    s_old: np.ndarray,
    dt: float,
    cement_only_side: np.ndarray | None = None,
    exit_cement_only: np.ndarray | None = None,
    s_route: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Pure-numpy reference of :func:`transport_step`: same scheme, different algorithm.

    Instead of a pressure-ordered sweep it builds the flow levels of the acyclic flux graph and
    updates all cells of one level at once with vectorised numpy (test oracle and benchmark
    baseline for the numba kernel).
    """
    n = s_old.shape[0]
    side = np.zeros(face_flux.shape[0], dtype=np.int8) if cement_only_side is None else cement_only_side
    only_exit = np.zeros(n) if exit_cement_only is None else exit_cement_only
    level = flow_levels(face_a, face_b, face_flux, n)
    up = np.where(face_flux > 0.0, face_a, face_b)
    down = np.where(face_flux > 0.0, face_b, face_a)
    mag = np.abs(face_flux)
    # a face carries cement only when it flows out of the side its flag names
    only = ((side == 1) & (face_flux > 0.0)) | ((side == 2) & (face_flux < 0.0))
    outflow = exit_out + np.bincount(up[~only], weights=mag[~only], minlength=n)
    outflow_only = only_exit + np.bincount(up[only], weights=mag[only], minlength=n)
    s_ref = np.minimum(s_old, 1.0) if s_route is None else s_route
    s_new = s_old.copy()
    f_out = np.zeros(n)
    f_only = np.zeros(n)
    face_level = level[down]
    order = np.argsort(face_level, kind="stable")
    bounds = np.searchsorted(face_level[order], np.arange(level.max() + 2))
    for lev in range(level.max() + 1):
        cells = np.flatnonzero(level == lev)
        fl = order[bounds[lev] : bounds[lev + 1]]
        cin = source.copy()
        np.add.at(cin, down[fl], mag[fl] * np.where(only[fl], f_only[up[fl]], f_out[up[fl]]))
        v = pore_volume[cells]
        r = v * s_old[cells] + dt * cin[cells]
        o = dt * outflow[cells]
        m = visc_ratio[cells]
        o_only = dt * outflow_only[cells]
        sr = s_ref[cells]
        # routes at the new saturation's mobility (volume v + k), where that keeps S <= S_route
        k = np.where((o_only > 0.0) & (sr > 0.0), o_only / np.where(sr > 0.0, sr, 1.0), 0.0)
        s1, left1 = _fill_roots(v + k, r, o, m)
        first = (k > 0.0) & (s1 <= sr)
        # else full mobility: the routes take cement first, all the cell has if they carry more
        enough = r >= o_only
        with np.errstate(divide="ignore", invalid="ignore"):
            c2 = np.where(o_only > 0.0, np.where(enough, 1.0, r / np.where(o_only > 0.0, o_only, 1.0)), 0.0)
        r2 = np.where(o_only > 0.0, np.where(enough, r - o_only, 0.0), r)
        s2, left2 = _fill_roots(v, r2, o, m)
        s = np.where(first, s1, s2)
        left = np.where(first, left1, left2)
        s_new[cells] = s
        f_out[cells] = np.where(o > 0.0, left / np.where(o > 0.0, o, 1.0), 0.0)
        f_only[cells] = np.where(first, s1 / np.where(sr > 0.0, sr, 1.0), c2)
    return s_new, f_out


def _fill_roots(v: np.ndarray, r: np.ndarray, o: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised :func:`_fill_root` and the cement left for the outflow: the reference's per-level solve."""
    piston = np.isinf(m)
    with np.errstate(divide="ignore", invalid="ignore"):  # pistons (m = inf) are set below
        a = v * (m - 1.0)
        b = v * m + o + r * (m - 1.0)
        c = r * m
        s = 2.0 * c / (b + np.sqrt(np.maximum(b * b - 4.0 * a * c, 0.0)))
        s = np.where(piston, np.minimum(r / v, 1.0), s)
        s = np.where(r <= 0.0, 0.0, np.where(o <= 0.0, r / v, s))
        left = r - v * s
        bad = (left < 0.0) | (o <= 0.0)
        return np.where(bad, r / v, s), np.where(bad, 0.0, left)


def fractional_flow(s: np.ndarray, visc_ratio: np.ndarray) -> np.ndarray:
    """Cement fractional flow f(S) = S / (S + m (1 - S)) with m = mu_c / mu_m; m = inf: a piston."""
    s = np.asarray(s, dtype=np.float64)
    m = np.broadcast_to(np.asarray(visc_ratio, dtype=np.float64), s.shape)
    piston = np.isinf(m)
    with np.errstate(invalid="ignore"):
        f = s / (s + np.where(piston, 1.0, m) * (1.0 - s))
    return np.where(piston, (s >= 1.0).astype(np.float64), f)


def front_time_step(
    face_a: np.ndarray,
    face_b: np.ndarray,
    face_flux: np.ndarray,
    source: np.ndarray,
    exit_out: np.ndarray,
    pore_volume: np.ndarray,
    s: np.ndarray,
    visc_ratio: np.ndarray,
    cfl: float,
    full_s: float,
    faces: np.ndarray | None = None,
) -> float:
    """Largest step that lets no filling cell gain more than ``cfl`` of its pore volume in cement.

    Accuracy: cells below ``full_s`` with a positive explicit cement accumulation
    a = sum_in F f(S_up) + source - (sum_out F) f(S) get dt <= cfl V / a (front cells fill at
    most cfl of a cell per step; cells in steady mixed flow, a ~ 0, do not limit the step).
    A lumen node (m = inf, a piston) passes nothing until full, so its own f(S) is 0 below S = 1 and
    would hide the cement it passes on within the step: for its downstream nodes it counts as full
    (f = 1) once it can fill within the step, S > 1 - ``cfl`` (its own limit lets it gain up to cfl of
    its volume), or S >= ``full_s``. Below that it cannot fill within the step and feeds nothing.
    Boundedness: a cell without outflow (a marrow cell next to the front in the lumped system)
    gets dt <= V (1 - S) / (whole inflow from cement-bearing cells), because within one implicit
    sweep a nearly full upstream cell may pass almost all its outflow as cement. Returns inf when
    no cell limits the step. One numba pass over faces and cells; :func:`front_time_step_numpy` is
    the array reference (bit-identical: the same sums in the same order). ``faces`` (ascending)
    restricts the face pass to them when every other face has zero flux (a zero flux adds nothing).
    """
    listed = np.arange(face_a.shape[0], dtype=np.int64) if faces is None else faces
    source = np.ascontiguousarray(source, dtype=np.float64)
    return _front_time_step_kernel(
        face_a, face_b, np.ascontiguousarray(face_flux, dtype=np.float64), source,
        np.ascontiguousarray(exit_out, dtype=np.float64), np.ascontiguousarray(pore_volume, dtype=np.float64),
        np.ascontiguousarray(s, dtype=np.float64), np.ascontiguousarray(visc_ratio, dtype=np.float64),
        float(cfl), float(full_s), listed, np.flatnonzero(source),
    )  # fmt: skip


@numba.njit(cache=True)
def _fractions(s, m, cfl, full_s):
    """(f, feed, bearing) of one cell: its fractional flow, what it feeds downstream, holds cement."""
    if m == np.inf:
        frac = 1.0 if s >= 1.0 else 0.0
        fills = (s > 1.0 - cfl) or (s >= full_s)
        feed = 1.0 if fills else frac
    else:
        frac = s / (s + m * (1.0 - s))
        feed = frac
    return frac, feed, 1.0 if s > 0.0 else 0.0


@numba.njit(cache=True)
def _front_time_step_kernel(
    face_a, face_b, face_flux, source, exit_out, pore_volume, s, visc_ratio, cfl, full_s, faces, sources
):
    # Only a cell on a listed face or with a source can limit the step (any other has no inflow, so
    # no positive accumulation and no closed-cell bound): the face pass and the minimum run over those
    # cells, the same sums in the same order and the same minimum as over every cell.
    n, nf = s.shape[0], faces.shape[0]
    acc_in = np.zeros(n)
    acc_out = np.zeros(n)
    acc_max = np.zeros(n)
    for k in range(nf):
        f = faces[k]
        q = face_flux[f]
        if q > 0.0:
            up, down = face_a[f], face_b[f]
        else:
            up, down = face_b[f], face_a[f]
        mag = abs(q)
        _, feed, bearing = _fractions(s[up], visc_ratio[up], cfl, full_s)
        acc_in[down] += mag * feed
        acc_out[up] += mag
        acc_max[down] += mag * bearing
    best = np.inf
    closed_dt = np.inf
    for k in range(2 * nf + sources.shape[0]):
        if k < 2 * nf:
            i = face_a[faces[k // 2]] if k % 2 == 0 else face_b[faces[k // 2]]
        else:
            i = sources[k - 2 * nf]
        frac = _fractions(s[i], visc_ratio[i], cfl, full_s)[0]
        cin = source[i] + acc_in[i]
        out = exit_out[i] + acc_out[i]
        accum = cin - out * frac
        if s[i] < full_s and accum > 0.0:
            best = min(best, pore_volume[i] / accum)
        cin_max = source[i] + acc_max[i]
        if out <= 0.0 and cin_max > 0.0:
            closed_dt = min(closed_dt, pore_volume[i] * (1.0 - s[i]) / cin_max)
    dt = cfl * best if best < np.inf else np.inf
    return min(dt, closed_dt)


def front_time_step_numpy(
    face_a: np.ndarray,
    face_b: np.ndarray,
    face_flux: np.ndarray,
    source: np.ndarray,
    exit_out: np.ndarray,
    pore_volume: np.ndarray,
    s: np.ndarray,
    visc_ratio: np.ndarray,
    cfl: float,
    full_s: float,
) -> float:
    """:func:`front_time_step` with numpy arrays: the tests' reference."""

    n = s.shape[0]
    up = np.where(face_flux > 0.0, face_a, face_b)
    down = np.where(face_flux > 0.0, face_b, face_a)
    mag = np.abs(face_flux)
    frac = fractional_flow(s, visc_ratio)
    # a lumen node (piston, m = inf) that can fill within the step passes its inflow on from then:
    # its downstream nodes are estimated as fed by a full node
    fills = np.isinf(visc_ratio) & ((s > 1.0 - cfl) | (s >= full_s))
    feed = np.where(fills, 1.0, frac)
    cin = source + np.bincount(down, weights=mag * feed[up], minlength=n)
    out = exit_out + np.bincount(up, weights=mag, minlength=n)
    accum = cin - out * frac
    dt = np.inf
    ok = (s < full_s) & (accum > 0.0)
    if ok.any():
        with np.errstate(over="ignore"):  # a denormal accumulation limits nothing (dt = inf)
            dt = cfl * float(np.min(pore_volume[ok] / accum[ok]))
    bearing = (s > 0.0).astype(np.float64)
    cin_max = source + np.bincount(down, weights=mag * bearing[up], minlength=n)
    closed = (out <= 0.0) & (cin_max > 0.0)
    if closed.any():
        dt = min(dt, float(np.min(pore_volume[closed] * (1.0 - s[closed]) / cin_max[closed])))
    return dt


def throughput_rate(
    face_a: np.ndarray,
    face_b: np.ndarray,
    face_flux: np.ndarray,
    source: np.ndarray,
    exit_flux: np.ndarray,
) -> np.ndarray:
    """Volume flow through every cell (m^3/s): max of total inflow and total outflow."""
    n = source.shape[0]
    mag = np.abs(face_flux)
    up = np.where(face_flux > 0.0, face_a, face_b)
    down = np.where(face_flux > 0.0, face_b, face_a)
    inflow = source + np.bincount(down, weights=mag, minlength=n) + np.maximum(-exit_flux, 0.0)
    outflow = np.bincount(up, weights=mag, minlength=n) + np.maximum(exit_flux, 0.0)
    return np.maximum(inflow, outflow)
