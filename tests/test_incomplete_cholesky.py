"""IC(0)-preconditioned CG (sim.physics.incomplete_cholesky) and its use by PressureSolver("iccg")."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from sim.physics.incomplete_cholesky import csr_index_arrays, ic0_apply, ic0_cg, ic0_factor
from sim.physics.pressure import PressureSolver


def _arrays(mat: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mat = mat.tocsr()
    mat.sort_indices()
    indptr, indices = csr_index_arrays(mat.indptr, mat.indices)
    return indptr, indices, mat.data.astype(np.float64)


def _laplacian_3d(nx: int, ny: int, nz: int, seed: int = 0) -> sp.csr_matrix:
    """Heterogeneous 7-point Laplacian (conductances over 4 decades) with a Robin face: an M-matrix."""
    rng = np.random.default_rng(seed)
    idx = np.arange(nx * ny * nz).reshape(nx, ny, nz)
    rows, cols, vals = [], [], []
    for a, b in (
        (idx[:-1].ravel(), idx[1:].ravel()),
        (idx[:, :-1].ravel(), idx[:, 1:].ravel()),
        (idx[:, :, :-1].ravel(), idx[:, :, 1:].ravel()),
    ):
        t = 10.0 ** rng.uniform(-2, 2, a.size)
        rows += [a, b]
        cols += [b, a]
        vals += [-t, -t]
    n = idx.size
    off = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    diag = -np.asarray(off.sum(axis=1)).ravel()
    diag[idx[0].ravel()] += 1.0  # Robin exit on one face
    return (off + sp.diags(diag)).tocsr()


def _solve(mat: sp.csr_matrix, b: np.ndarray) -> tuple[np.ndarray, int, bool]:
    ip, ix, d = _arrays(mat)
    lu, dp, ok = ic0_factor(ip, ix, d)
    assert ok
    return ic0_cg(ip, ix, d, lu, dp, b, np.zeros_like(b), 1e-12, 1000)


def test_no_fill_pattern_makes_the_factor_exact_and_cg_converge_in_one_iteration():
    """Limiting case: on a tridiagonal matrix and on a star (one dense last row, as a marrow lump's)
    IC(0) drops no fill, so M = A: M^-1 A x = x, and preconditioned CG reaches the direct answer in one
    iteration (a second one at most, for round-off)."""
    rng = np.random.default_rng(1)
    n = 200
    t = 10.0 ** rng.uniform(-1, 1, n - 1)
    tri = sp.diags([np.r_[t, 0] + np.r_[0, t] + np.r_[1.0, np.zeros(n - 1)], -t, -t], [0, -1, 1]).tocsr()
    leaf = 10.0 ** rng.uniform(-3, 3, n - 1)
    star = sp.lil_matrix((n, n))
    star[np.arange(n - 1), np.arange(n - 1)] = leaf + 0.5  # each leaf also drains to an exit
    star[np.arange(n - 1), n - 1] = -leaf
    star[n - 1, np.arange(n - 1)] = -leaf
    star[n - 1, n - 1] = leaf.sum()
    for mat in (tri, star.tocsr()):
        ip, ix, d = _arrays(mat)
        lu, dp, ok = ic0_factor(ip, ix, d)
        assert ok
        v, z = rng.standard_normal(n), np.empty(n)
        ic0_apply(ip, ix, lu, dp, mat @ v, z)
        assert np.max(np.abs(z - v)) <= 1e-9 * np.max(np.abs(v))
        b = rng.standard_normal(n)
        x, iterations, converged = _solve(mat, b)
        assert converged and iterations <= 2
        direct = spla.spsolve(mat.tocsc(), b)
        assert np.max(np.abs(x - direct)) <= 1e-10 * np.max(np.abs(direct))


def test_preconditioner_is_symmetric_and_positive():
    """M^-1 = (L D L^T)^-1 is symmetric to round-off (CG needs it) and positive definite."""
    mat = _laplacian_3d(9, 8, 7)
    ip, ix, d = _arrays(mat)
    lu, dp, ok = ic0_factor(ip, ix, d)
    assert ok
    rng = np.random.default_rng(2)
    r1, r2 = rng.standard_normal(mat.shape[0]), rng.standard_normal(mat.shape[0])
    z1, z2 = np.empty_like(r1), np.empty_like(r2)
    ic0_apply(ip, ix, lu, dp, r1, z1)
    ic0_apply(ip, ix, lu, dp, r2, z2)
    assert abs(z1 @ r2 - z2 @ r1) <= 1e-12 * np.linalg.norm(z1) * np.linalg.norm(r2)
    assert z1 @ r1 > 0.0 and z2 @ r2 > 0.0


def test_ic0_cg_matches_direct_in_far_fewer_iterations_than_jacobi():
    """A heterogeneous 3D M-matrix: the direct answer to 1e-10, at most a third of Jacobi-CG's iterations."""
    mat = _laplacian_3d(16, 14, 12, seed=4)
    b = np.random.default_rng(5).standard_normal(mat.shape[0])
    x, iterations, converged = _solve(mat, b)
    assert converged
    direct = spla.spsolve(mat.tocsc(), b)
    assert np.max(np.abs(x - direct)) <= 1e-10 * np.max(np.abs(direct))
    jacobi = PressureSolver("cg")
    jacobi.solve(mat, b)
    assert iterations <= jacobi.stats.n_iterations / 3


def test_a_factor_that_breaks_down_falls_back_to_jacobi():
    """Kershaw's SPD matrix (1978, J Comput Phys 26:43), not an M-matrix, has a negative IC(0) pivot:
    the solver says so in its statistics and answers by Jacobi-CG."""
    rows = [[3.0, -2.0, 0.0, 2.0], [-2.0, 3.0, -2.0, 0.0], [0.0, -2.0, 3.0, -2.0], [2.0, 0.0, -2.0, 3.0]]
    kershaw = sp.csr_matrix(np.array(rows))
    assert np.all(np.linalg.eigvalsh(kershaw.toarray()) > 0.0)
    assert not ic0_factor(*_arrays(kershaw))[2]
    b = np.array([1.0, 2.0, -1.0, 0.5])
    solver = PressureSolver("iccg")
    x = solver.solve(kershaw, b)
    assert solver.stats.n_ic_fallbacks == 1
    assert np.allclose(x, np.linalg.solve(kershaw.toarray(), b), rtol=1e-10, atol=0.0)


def test_a_singular_system_is_refused_not_returned():
    """A ring of four nodes with no exit is singular, yet every IC(0) pivot is positive (cycles keep
    them so), so IC(0)-CG itself meets the breakdown (p.Ap = 0): it stops, and the solver raises
    SolverError instead of returning what the iteration reached (numba would raise ZeroDivisionError
    on the division). A chain without an exit has a zero last pivot instead: Jacobi fallback, refused."""
    from sim.core.errors import SolverError

    ring = sp.csr_matrix(np.array([[2.0, -1, 0, -1], [-1, 2.0, -1, 0], [0, -1, 2.0, -1], [-1, 0, -1, 2.0]]))
    assert ic0_factor(*_arrays(ring))[2]
    solver = PressureSolver("iccg")
    with pytest.raises(SolverError, match="broke down"):
        solver.solve(ring, np.ones(4))
    assert solver.stats.n_ic_fallbacks == 0
    n = 60
    diag = np.r_[1.0, np.full(n - 2, 2.0), 1.0]
    chain = sp.diags([diag, -np.ones(n - 1), -np.ones(n - 1)], [0, -1, 1]).tocsr()
    solver = PressureSolver("iccg")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy's Jacobi-CG on a singular system
        with pytest.raises(SolverError, match="cg after an IC.0. breakdown"):
            solver.solve(chain, np.ones(n))
    assert solver.stats.n_ic_fallbacks == 1


def test_non_canonical_input_is_made_canonical_before_the_factor():
    """COO with duplicate entries and a CSR with unsorted rows give the canonical matrix's answer."""
    mat = _laplacian_3d(5, 4, 3, seed=7)
    b = np.random.default_rng(8).standard_normal(mat.shape[0])
    ref = spla.spsolve(mat.tocsc(), b)
    coo = mat.tocoo()
    half = np.arange(coo.nnz) % 2 == 0  # every other entry split into two duplicates
    rows = np.r_[coo.row[~half], coo.row[half], coo.row[half]]
    cols = np.r_[coo.col[~half], coo.col[half], coo.col[half]]
    vals = np.r_[coo.data[~half], 0.5 * coo.data[half], 0.5 * coo.data[half]]
    dup = sp.coo_matrix((vals, (rows, cols)), shape=mat.shape)
    shuffled = mat.copy()
    for i in range(shuffled.shape[0]):  # reverse each row's column order
        a, e = shuffled.indptr[i], shuffled.indptr[i + 1]
        shuffled.indices[a:e] = shuffled.indices[a:e][::-1].copy()
        shuffled.data[a:e] = shuffled.data[a:e][::-1].copy()
    shuffled.has_sorted_indices = False
    for m in (dup, shuffled):
        x = PressureSolver("iccg").solve(m, b)
        assert np.max(np.abs(x - ref)) <= 1e-9 * np.max(np.abs(ref))
