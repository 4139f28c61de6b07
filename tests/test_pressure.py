"""Pressure equation (sim.physics.pressure): TPFA vs 1D Darcy, solvers agree, AMG reuse, front system."""

from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np
import pytest

from sim.core.errors import GeometryError, SolverError
from sim.core.grid import VenousExit
from sim.physics.bone_vein_exchange import ForamenPoiseuille
from sim.physics.pressure import (
    PressureSolver,
    assemble_front,
    assemble_full,
    build_cell_graph,
    face_transmissibility,
)

H = 1e-3  # grid spacing (m)
Q = 5e-8  # injected flow (m^3/s), 3 ml/min


def flat(shape, *ijk):
    return np.array([np.ravel_multi_index(c, shape) for c in ijk], dtype=np.int64)


def foramen(cells, d=2e-3, length=2e-3):
    return VenousExit("exit", "anterior", np.asarray(cells, dtype=np.int64), np.zeros(3), d, length)


class Problem:
    """A porous box with a needle tip, venous exits and a mobility field, assembled as in InjectionSolver."""

    def __init__(self, perm, tip, exits, p_vein, mobility=None, porous=None):
        shape = perm.shape[1:]
        porous = np.ones(shape, dtype=bool) if porous is None else porous
        self.graph = build_cell_graph(porous, perm, H, tip, np.concatenate([e.cells for e in exits]))
        self.ent = ForamenPoiseuille().entries(exits, self.graph)
        n = self.graph.n
        self.lam = np.full(n, 1.0 / 30.0) if mobility is None else mobility(self.graph)
        self.trans = face_transmissibility(self.graph, self.lam)
        self.g = self.ent.conductance_m3 * self.lam[self.ent.cell]
        self.shift = float(np.mean(p_vein))
        self.pv = np.asarray(p_vein, dtype=np.float64)[self.ent.exit] - self.shift
        self.source = np.zeros(n)
        self.source[self.graph.compact[tip]] = Q / len(tip)

    def full(self):
        return assemble_full(self.graph, self.trans, self.ent.cell, self.g)

    def front(self, in_cement):
        return assemble_front(self.graph, in_cement, self.trans, self.ent.cell, self.g)

    def solve(self, system, method="direct", solver=None, key=None):
        """Cell pressures (Pa, unshifted)."""
        solver = solver or PressureSolver(method)
        b = system.rhs(self.source, self.g, self.pv)
        return system.cell_values(solver.solve(system.matrix, b, block=system.n_block, key=key)) + self.shift


def box_3d(seed=1, shape=(9, 8, 7)):
    """Heterogeneous anisotropic box (lognormal k), tip in the middle, two exits at opposite corners."""
    perm = np.exp(np.random.default_rng(seed).normal(np.log(4e-9), 0.5, (3, *shape)))
    exits = [
        foramen(flat(shape, (0, 0, 0), (0, 1, 0), (1, 0, 0))),
        foramen(flat(shape, (8, 7, 6), (8, 7, 5)), d=2.5e-3, length=3e-3),
    ]
    return perm, flat(shape, (4, 4, 3)), exits


def near_tip(graph, radius2=4):
    ijk = np.stack(np.unravel_index(graph.cell_of, graph.shape), axis=1)
    return np.sum((ijk - np.array([4, 4, 3])) ** 2, axis=1) <= radius2


# ----------------------------------------------------------------------------- 1D Darcy


@pytest.mark.parametrize("p_vein", [0.0, 1330.0])
def test_1d_column_reproduces_the_linear_darcy_profile(p_vein):
    """Uniform column, source at one end, Robin exit at the other: p_i = p_v + Q/g + (n-1-i) Q mu / (k h)."""
    nx, k, mu = 12, 3e-9, 30.0
    perm = np.empty((3, nx, 1, 1))
    perm[0], perm[1], perm[2] = k, 1e-14, 7e-7  # only k_x may matter along an x column
    exit_ = foramen(flat((nx, 1, 1), (nx - 1, 0, 0)))
    prob = Problem(perm, flat((nx, 1, 1), (0, 0, 0)), [exit_], [p_vein])
    p = prob.solve(prob.full())
    g = math.pi * exit_.diameter_m**4 / (128.0 * exit_.length_m) / mu
    i = np.arange(nx)
    exact = p_vein + Q / g + (nx - 1 - i) * Q * mu / (k * H)
    assert p == pytest.approx(exact, rel=1e-12)
    flux = prob.trans * (p[prob.graph.face_a] - p[prob.graph.face_b])
    assert flux == pytest.approx(np.full(nx - 1, Q), rel=1e-12)  # Darcy: the same Q through every face


def test_1d_layered_column_is_exact_series_resistance():
    """Piecewise-constant k along z: TPFA's harmonic faces are the exact 1D series resistances
    sum over half cells of (h/2) mu / (k h^2)."""
    nz, mu = 10, 30.0
    kz = np.exp(np.random.default_rng(7).normal(np.log(2e-9), 1.0, nz))
    perm = np.full((3, 1, 1, nz), 5e-9)
    perm[2, 0, 0, :] = kz
    exit_ = foramen(flat((1, 1, nz), (0, 0, nz - 1)))
    prob = Problem(perm, flat((1, 1, nz), (0, 0, 0)), [exit_], [800.0])
    p = prob.solve(prob.full())
    half = 0.5 * mu / (kz * H)  # (h/2) / (k/mu * h^2)
    face_r = half[:-1] + half[1:]
    g = math.pi * exit_.diameter_m**4 / (128.0 * exit_.length_m) / mu
    exact = 800.0 + Q / g + Q * np.concatenate([np.cumsum(face_r[::-1])[::-1], [0.0]])
    assert p == pytest.approx(exact, rel=1e-12)


# ----------------------------------------------------------------------------- solvers


def test_direct_cg_and_amg_agree_on_a_3d_box():
    """The three linear solvers give the same pressures to 1e-9 (relative to the largest)."""
    perm, tip, exits = box_3d()
    prob = Problem(perm, tip, exits, [1000.0, 1200.0], mobility=lambda g: np.where(near_tip(g), 1e-2, 1.0))
    system = prob.full()
    assert system.n_unknowns == 9 * 8 * 7
    ref = prob.solve(system, "direct")
    for method in ("cg", "iccg", "amg", "auto"):
        p = prob.solve(system, method)
        assert np.max(np.abs(p - ref)) <= 1e-9 * np.max(np.abs(ref)), method
    # volume balance: what the needle injects leaves through the exits
    q_exit = prob.g * (ref[prob.ent.cell] - (prob.pv + prob.shift))
    assert q_exit.sum() == pytest.approx(Q, rel=1e-10)


def test_auto_choice_follows_size_and_whether_a_hierarchy_can_be_reused():
    """auto: LU for small systems; AMG where a hierarchy outlives a solve; IC(0)-CG where it cannot
    (front method) up to AUTO_CG_BELOW_WITHOUT_REUSE unknowns, AMG above."""
    from sim.physics.pressure import AUTO_CG_BELOW_WITHOUT_REUSE, AUTO_DIRECT_BELOW

    reusing, fresh = PressureSolver("auto"), PressureSolver("auto", reuses_hierarchy=False)
    assert reusing._choose(AUTO_DIRECT_BELOW) == fresh._choose(AUTO_DIRECT_BELOW) == "direct"
    assert reusing._choose(AUTO_DIRECT_BELOW + 1) == "amg"
    assert fresh._choose(AUTO_DIRECT_BELOW + 1) == "iccg"
    assert fresh._choose(AUTO_CG_BELOW_WITHOUT_REUSE) == "iccg"
    assert fresh._choose(AUTO_CG_BELOW_WITHOUT_REUSE + 1) == "amg"
    assert PressureSolver("amg", reuses_hierarchy=False)._choose(AUTO_DIRECT_BELOW + 1) == "amg"


def test_amg_hierarchy_is_reused_for_the_same_key():
    """Same key: one AMG setup for two solves and the same answer; a new key or no key sets up again."""
    perm, tip, exits = box_3d()
    prob = Problem(perm, tip, exits, [1000.0, 1000.0])
    system = prob.full()
    solver = PressureSolver("amg")
    p1 = prob.solve(system, solver=solver, key=("full",))
    assert (solver.stats.n_setups, solver.stats.n_solves) == (1, 1)
    p2 = prob.solve(system, solver=solver, key=("full",))
    assert (solver.stats.n_setups, solver.stats.n_solves) == (1, 2)  # reused
    assert np.array_equal(p1, p2)
    prob.solve(system, solver=solver, key=("other",))
    assert solver.stats.n_setups == 2
    prob.solve(system, solver=solver, key=None)
    prob.solve(system, solver=solver, key=None)
    assert solver.stats.n_setups == 4  # without a key nothing is reused
    assert solver.stats.n_iterations > 0 and solver.stats.max_unknowns == system.n_unknowns
    assert solver.stats.max_relative_residual <= 1e-6


def test_amg_setup_is_seeded_and_leaves_the_global_random_state_alone():
    """Two solvers give bit-identical pressures whatever the global numpy random state, which is restored."""
    perm, tip, exits = box_3d(seed=3)
    prob = Problem(perm, tip, exits, [900.0, 1100.0])
    system = prob.full()
    np.random.seed(11)  # noqa: NPY002 (pyamg draws from the legacy global generator)
    state = np.random.get_state()  # noqa: NPY002
    a = prob.solve(system, "amg", key=("k",))
    after = np.random.get_state()  # noqa: NPY002
    assert after[0] == state[0] and np.array_equal(after[1], state[1]) and after[2:] == state[2:]
    np.random.seed(12345)  # noqa: NPY002
    b = prob.solve(system, "amg", key=("k",))
    assert np.array_equal(a, b)


def test_fast_bsr_canonicalisation_is_exact_and_restored():
    """The vectorised BSR sum_duplicates used during AMG set-up sums repeats like scipy and is undone."""
    import scipy.sparse as sp

    from sim.physics.pressure import _canonical_bsr_fast_path

    original = sp.bsr_array.sum_duplicates
    rng = np.random.default_rng(5)
    dense = rng.random((6, 6)) * (rng.random((6, 6)) < 0.5)
    with _canonical_bsr_fast_path():
        clean = sp.bsr_array(dense, blocksize=(1, 1))
        clean.has_canonical_format = False
        clean.sum_duplicates()
        assert np.array_equal(clean.toarray(), dense) and clean.has_canonical_format
        # a row holding the same column twice is summed (the fallback), not declared canonical
        data = np.array([1.0, 2.0, 4.0]).reshape(3, 1, 1)
        twice = sp.bsr_array((data, np.array([1, 1, 0]), np.array([0, 2, 3])), shape=(2, 2))
        twice.sum_duplicates()
        assert twice.nnz == 2 and np.array_equal(twice.toarray(), [[0.0, 3.0], [4.0, 0.0]])
    assert sp.bsr_array.sum_duplicates is original


def test_amg_hierarchy_with_the_fast_path_is_bit_identical_to_pyamg_alone():
    """The scoped canonicalisation changes the set-up's speed, not one bit of its operators."""
    import scipy.sparse as sp

    import sim.physics.pressure as pressure

    perm, tip, exits = box_3d(seed=4)
    mat = Problem(perm, tip, exits, [1000.0, 1200.0]).full().matrix.tocsr()
    fast = pressure._seeded_amg_setup(mat)

    @contextmanager
    def no_fast_path():
        yield

    original = pressure._canonical_bsr_fast_path
    pressure._canonical_bsr_fast_path = no_fast_path
    try:
        slow = pressure._seeded_amg_setup(mat)
    finally:
        pressure._canonical_bsr_fast_path = original
    assert len(fast.levels) == len(slow.levels) >= 2
    for a, b in zip(fast.levels, slow.levels, strict=True):
        for name in ("A", "P", "R"):
            if hasattr(a, name):
                x, y = getattr(a, name), getattr(b, name)
                assert sp.issparse(x) and np.array_equal(x.indptr, y.indptr), name
                assert np.array_equal(x.indices, y.indices) and np.array_equal(x.data, y.data), name


def test_unknown_solver_and_unreachable_exit_are_refused():
    """A misspelt solver name and a tip region no exit drains are errors, not silent results."""
    with pytest.raises(SolverError, match="pressure_solver"):
        PressureSolver("lu")
    shape = (6, 1, 1)
    porous = np.ones(shape, dtype=bool)
    porous[3] = False  # the column is cut between the tip and the exit
    perm = np.where(porous, 1e-9, 0.0)[None].repeat(3, axis=0)
    with pytest.raises(GeometryError, match="no venous exit is reachable"):
        build_cell_graph(porous, perm, H, flat(shape, (0, 0, 0)), flat(shape, (5, 0, 0)))


# ----------------------------------------------------------------------------- front system


def test_front_system_with_all_cells_in_cement_is_the_full_system():
    """No marrow left: the front system has one unknown per cell and the full system's matrix and rhs."""
    perm, tip, exits = box_3d()
    prob = Problem(perm, tip, exits, [1000.0, 1200.0])
    full = prob.full()
    front = prob.front(np.ones(prob.graph.n, dtype=bool))
    assert front.n_unknowns == full.n_unknowns == front.n_block
    assert np.array_equal(front.unknown_of_cell, np.arange(prob.graph.n))
    assert np.array_equal(front.exit_unknown, full.exit_unknown)
    # equal up to the summation order of the diagonals
    assert abs(front.matrix - full.matrix).max() <= 1e-14 * abs(full.matrix).max()
    b_full = full.rhs(prob.source, prob.g, prob.pv)
    assert np.array_equal(front.rhs(prob.source, prob.g, prob.pv), b_full)
    p_full = prob.solve(full)
    assert prob.solve(front) == pytest.approx(p_full, rel=0, abs=1e-11 * np.ptp(p_full))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_front_assembly_kernel_equals_the_scipy_reference(seed):
    """The numba front assembly (union-find regions, CSR merged in place) gives the scipy reference's
    unknown numbering, sparsity pattern and values (to round-off of the summation order), on random
    cement masks that cut the marrow into several regions."""
    from sim.physics.pressure import assemble_front_reference

    perm, tip, exits = box_3d(seed=seed + 3)
    rng = np.random.default_rng(seed)
    prob = Problem(perm, tip, exits, [1000.0, 1200.0], mobility=lambda g: rng.uniform(0.01, 1.0, g.n))
    walls = np.zeros(prob.graph.shape, dtype=bool)
    walls[3] = walls[:, 5] = True  # two cement walls: four marrow regions, plus random cement cells
    cement = walls.ravel()[prob.graph.cell_of] | (rng.random(prob.graph.n) < 0.25)
    for mask in (cement, np.zeros(prob.graph.n, dtype=bool), np.ones(prob.graph.n, dtype=bool)):
        got = prob.front(mask)
        want = assemble_front_reference(prob.graph, mask, prob.trans, prob.ent.cell, prob.g)
        assert np.array_equal(got.unknown_of_cell, want.unknown_of_cell)
        assert np.array_equal(got.exit_unknown, want.exit_unknown) and got.n_block == want.n_block
        a, b = got.matrix, want.matrix.copy()
        b.sort_indices()
        assert np.array_equal(a.indptr, b.indptr) and np.array_equal(a.indices, b.indices)
        assert a.data == pytest.approx(b.data, rel=1e-14, abs=1e-14 * np.abs(b.data).max())
    assert want.n_unknowns == prob.graph.n  # the last mask: all cement
    system = prob.front(cement)
    assert system.n_unknowns - int(cement.sum()) >= 4
    # the initial guess: each unknown's mean of the cell pressures, bit for bit the bincount formula
    p = rng.uniform(-1e3, 1e4, prob.graph.n)
    u = system.unknown_of_cell
    cnt = np.bincount(u, minlength=system.n_unknowns)
    want_x0 = np.bincount(u, weights=p, minlength=system.n_unknowns) / np.maximum(cnt, 1)
    assert np.array_equal(system.initial_guess(p), want_x0)


def test_front_system_lumps_marrow_conserves_volume_and_converges_as_marrow_thins():
    """Marrow lumped into one isobaric unknown: exits still drain exactly Q, and the cement pressures
    approach the full system's as mu_marrow / mu_cement -> 0 (error ~ that ratio)."""
    perm, tip, exits = box_3d()
    errors = []
    for ratio in (1e-2, 1e-3, 1e-4):
        prob = Problem(
            perm, tip, exits, [1000.0, 1000.0], mobility=lambda g, r=ratio: np.where(near_tip(g), 1.0, 1 / r)
        )
        cement = near_tip(prob.graph)
        front = prob.front(cement)
        assert front.n_block == cement.sum() and front.n_unknowns == cement.sum() + 1  # one marrow lump
        p_front, p_full = prob.solve(front), prob.solve(prob.full())
        assert np.ptp(p_front[~cement]) == 0.0  # the lump is isobaric
        q_exit = prob.g * (p_front[prob.ent.cell] - (prob.pv + prob.shift))
        assert q_exit.sum() == pytest.approx(Q, rel=1e-10)
        errors.append(np.max(np.abs(p_front[cement] - p_full[cement])) / np.ptp(p_full[cement]))
    assert errors[0] < 0.05
    assert errors[0] / errors[1] == pytest.approx(10.0, rel=0.1)
    assert errors[1] / errors[2] == pytest.approx(10.0, rel=0.1)


@pytest.mark.parametrize("method", ["cg", "iccg"])
def test_cg_refines_when_its_residual_drifts_from_the_true_one(method, monkeypatch):
    """A front system whose recursively updated CG residual reaches rtol while the true one does not.

    Captured from the 1,000-patient cohort of December 2026 (patient 691, level 1, never stopped):
    4,147 unknowns, diagonal from 6e-12 to 10 (a pinned foramen node next to a cement column in a
    vein lumen). Jacobi-CG stops after 319 iterations with a true relative residual of 1.5e-6 on an
    AVX-512 Intel Xeon (4.9e-7 after 316 on an AVX2 AMD EPYC: how far the residuals drift apart is
    rounding), above the 1e-6 the solver accepts there; one correction solve on the true residual
    brings it to 2.6e-10. IC(0)-CG (method "iccg", the front method's default) needs the same
    correction and gets it. The acceptance is lowered to 1e-8 here so that the drift is above it on
    any CPU and the refinement must act.
    """
    import pathlib

    import scipy.sparse as sp

    import sim.physics.pressure as pressure

    ACCEPT_RESIDUAL = 1e-8
    monkeypatch.setattr(pressure, "ACCEPT_RESIDUAL", ACCEPT_RESIDUAL)
    z = np.load(pathlib.Path(__file__).parent / "data" / "pressure_residual_gap.npz")
    n = z["indptr"].size - 1
    mat = sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=(n, n))
    rhs, x0 = z["rhs"], z["x0"]
    solver = PressureSolver(method)
    x = solver.solve(mat, rhs, x0, block=int(z["block"][0]))
    assert np.linalg.norm(rhs - mat @ x) / np.linalg.norm(rhs) <= ACCEPT_RESIDUAL
    assert solver.stats.n_refinements >= 1  # without the refinement this solve is refused
    assert solver.stats.n_ic_fallbacks == 0
    # the refined solution is the direct one
    direct = PressureSolver("direct").solve(mat, rhs)
    assert np.linalg.norm(x - direct) / np.linalg.norm(direct) < 1e-6


def test_a_cg_that_ends_on_nan_is_refused_where_it_ends(monkeypatch):
    """Whether a failing CG ends on huge numbers or on NaN is the CPU's rounding; both are refused with
    the same message (a NaN residual had slipped past the check inside the CG)."""
    import scipy.sparse as sp
    import scipy.sparse.linalg as spla

    from sim.core.errors import SolverError

    mat = sp.csr_matrix(np.array([[2.0, -1.0], [-1.0, 2.0]]))
    monkeypatch.setattr(spla, "cg", lambda *a, **k: (np.full(2, np.nan), 1))
    with pytest.raises(
        SolverError, match=r"pressure solve \(cg\): pressure CG did not reach rtol .* residual nan"
    ):
        PressureSolver("cg").solve(mat, np.ones(2))


def _isobaric_chain(n: int = 40, strong: float = 1e14):
    """A chain of ``n`` nodes linked by conductance ``strong`` and grounded at node 0 through 1, a unit source
    at the far end: a region 1e14 times more conductive than its outlet (a cleft in bone, a wide
    Kozeny-Carman porosity field), nearly isobaric; exact p_i = 1 + i / strong."""
    import scipy.sparse as sp

    k = np.full(n - 1, strong)
    diag = np.zeros(n)
    diag[0] += 1.0
    diag[:-1] += k
    diag[1:] += k
    mat = sp.diags([diag, -k, -k], [0, 1, -1], format="csr")
    rhs = np.zeros(n)
    rhs[-1] = 1.0
    return mat, rhs, 1.0 + np.arange(n) / strong


def test_backward_error_is_zero_for_the_exact_solution_and_one_for_zero():
    import scipy.sparse as sp

    from sim.physics.pressure import backward_error

    mat = sp.csr_matrix(np.array([[2.0, -1.0], [-1.0, 2.0]]))
    x = np.array([1.0, 2.0])
    assert backward_error(mat, x, mat @ x) == 0.0
    assert backward_error(mat, np.zeros(2), np.array([1.0, -3.0])) == 1.0
    # a perturbed solution: |r| / (|A| |x| + |b|) in the infinity norm
    b = mat @ x
    assert backward_error(mat, x + [1e-3, 0.0], b) == pytest.approx(2e-3 / (3.0 * 2.0 + 3.0))
    assert math.isnan(backward_error(mat, np.array([np.nan, 1.0]), b))
    assert math.isnan(backward_error(mat, np.array([np.inf, 1.0]), b))


def test_a_solve_whose_residual_round_off_exceeds_the_acceptance_is_kept_when_backward_stable(monkeypatch):
    """Fuzzing found valid configs (a fracture cleft 1e4 times the bone's permeability; Kozeny-Carman with
    porosity sd 0.2) refused mid-run: their systems span 14 orders of magnitude, so the relative residual
    of a solution can sit near eps |A||x| / |b|, above 1e-6. On an isobaric chain 3e10 times more
    conductive than its outlet the sparse LU's residual is 6.6e-6 with a backward error of 3e-17 and
    pressures right to 4e-6: with the correction solves switched off (so the backward-error rule decides)
    the solve returns it; with them on, LU refines to 1e-9. On a chain 1e16 times more conductive, x = 1
    has a backward error of 2.5e-17 but a residual as large as the source: refused (the residual cap), as
    is one CG iteration."""
    import scipy.sparse.linalg as spla

    import sim.physics.pressure as pressure
    from sim.physics.pressure import ACCEPT_BACKWARD_ERROR, ACCEPT_RESIDUAL, RELAXED_RESIDUAL, backward_error

    mat, rhs, exact = _isobaric_chain(40, 3e10)
    x_lu = spla.splu(mat.tocsc()).solve(rhs)
    res = np.linalg.norm(rhs - mat @ x_lu) / np.linalg.norm(rhs)
    assert ACCEPT_RESIDUAL < res <= RELAXED_RESIDUAL  # the old refusal
    assert backward_error(mat, x_lu, rhs) <= ACCEPT_BACKWARD_ERROR
    refined = PressureSolver("direct")
    assert np.abs(refined.solve(mat, rhs) - exact).max() < 1e-8 and refined.stats.n_refinements >= 1
    monkeypatch.setattr(pressure, "REFINEMENTS", 0)
    kept = PressureSolver("direct").solve(mat, rhs)
    assert np.array_equal(kept, x_lu) and np.abs(kept - exact).max() < 1e-5

    class Ones:  # a "factorisation" whose answer is x = 1 everywhere
        def __init__(self, a):
            pass

        def solve(self, b):
            return np.ones_like(b)

    stiff, b16, _ = _isobaric_chain(40, 1e16)  # so stiff that x = 1 passes the backward-error rule alone
    ones = np.ones(b16.size)
    assert (
        backward_error(stiff, ones, b16) <= ACCEPT_BACKWARD_ERROR
        and np.linalg.norm(b16 - stiff @ ones) >= 1.0
    )
    monkeypatch.setattr(spla, "splu", Ones)
    with pytest.raises(SolverError, match=r"pressure solve \(direct, 40 unknowns\) did not converge"):
        PressureSolver("direct").solve(stiff, b16)
    with pytest.raises(SolverError, match=r"pressure solve \(cg\)"):
        PressureSolver("cg", max_iter=1).solve(mat, rhs)
