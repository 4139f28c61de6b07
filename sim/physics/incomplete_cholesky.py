"""Conjugate gradients preconditioned by an incomplete Cholesky factorisation, IC(0), in numba.

The front method's pressure systems (:func:`sim.physics.pressure.assemble_front`) change their
unknowns at every step, so no preconditioner set-up outlives a solve: an AMG hierarchy costs more
to build than it saves, and Jacobi-CG needs 300-500 iterations on 0.5 mm systems. IC(0) costs one
pass over the matrix to build and cuts that to 30-100 (measured on captured 0.5 mm systems of
1.5k-40k unknowns).

Factorisation. For a symmetric matrix A, ILU(0) (Saad 2003, *Iterative Methods for Sparse Linear
Systems*, 2nd ed., SIAM, Algorithm 10.4: the IKJ variant on the CSR pattern) gives A ~ L U with L
unit lower triangular, U upper triangular, both on the sparsity pattern of A. In exact arithmetic
U = D L^T with D = diag(U), so the preconditioner is taken in the symmetric form

    M = L D L^T,   M^-1 r:  L y = r (forward),  L^T z = D^-1 y (backward),

which is exactly symmetric, as CG requires, whatever the rounding of U's off-diagonal entries.
Limiting case: for a matrix whose pattern has no fill (a diagonal, a tridiagonal or any tree
graph) M = A and CG converges in one iteration. For an M-matrix, such as every pressure system
here (a symmetric, weakly diagonally dominant Laplacian with Robin exits), IC(0) exists with
positive pivots (Meijerink & van der Vorst 1977, Math Comp 31:148); a non-positive pivot is
reported so that the caller can fall back to Jacobi.

CG stops on the recursively updated residual, ||r|| <= rtol ||b|| (as scipy's ``cg``), or reports a
breakdown (p.Ap or r.z not positive: a singular or indefinite matrix); the caller checks the true
residual, refines, and refuses what does not converge (:meth:`sim.physics.pressure.PressureSolver.solve`).
The kernels need a canonical CSR matrix (sorted indices, no duplicates), which the caller provides.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True)
def ic0_factor(
    indptr: np.ndarray, indices: np.ndarray, data: np.ndarray
) -> tuple[np.ndarray, np.ndarray, bool]:
    """ILU(0) of a CSR matrix with sorted indices and a stored diagonal in every row.

    ``indptr`` and ``indices`` are unsigned (:func:`csr_index_arrays`). Returns (lu, diag_pos, ok):
    ``lu`` holds the unit-lower multipliers below the diagonal and U on and above it, on A's
    pattern; ``diag_pos[i]`` is the position of row i's diagonal; ``ok`` is False when a pivot is
    not positive (or a row has no diagonal), then ``lu`` is unusable.
    """
    n = indptr.size - 1
    one = np.uint64(1)
    lu = data.copy()
    diag_pos = np.zeros(n, dtype=np.uint64)
    for i in range(n):
        found = False
        for p in range(indptr[i], indptr[i + 1]):
            if indices[p] == i:
                diag_pos[i] = p
                found = True
        if not found:
            return lu, diag_pos, False
    where = np.full(n, -1, dtype=np.int64)  # column -> position in the current row
    for i in range(n):
        for p in range(indptr[i], indptr[i + 1]):
            where[indices[p]] = p
        for p in range(indptr[i], diag_pos[i]):
            k = indices[p]
            lu[p] /= lu[diag_pos[k]]
            l_ik = lu[p]
            for q in range(diag_pos[k] + one, indptr[k + one]):
                pj = where[indices[q]]
                if pj >= 0:  # fill outside A's pattern is dropped
                    lu[pj] -= l_ik * lu[q]
        for p in range(indptr[i], indptr[i + 1]):
            where[indices[p]] = -1
        if not lu[diag_pos[i]] > 0.0:
            return lu, diag_pos, False
    return lu, diag_pos, True


@numba.njit(cache=True)
def ic0_apply(
    indptr: np.ndarray,
    indices: np.ndarray,
    lu: np.ndarray,
    diag_pos: np.ndarray,
    r: np.ndarray,
    z: np.ndarray,
) -> None:
    """z = (L D L^T)^-1 r with L, D from :func:`ic0_factor` (z may not alias r)."""
    n = r.size
    for i in range(n):  # L y = r
        s = r[i]
        for p in range(indptr[i], diag_pos[i]):
            s -= lu[p] * z[indices[p]]
        z[i] = s
    for i in range(n):  # D^-1
        z[i] /= lu[diag_pos[i]]
    for i in range(n - 1, -1, -1):  # L^T z = y / D: row i of L is column i of L^T, scattered upwards
        zi = z[i]
        for p in range(indptr[i], diag_pos[i]):
            z[indices[p]] -= lu[p] * zi


@numba.njit(cache=True)
def _matvec(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, x: np.ndarray, y: np.ndarray) -> None:
    for i in range(indptr.size - 1):
        s = 0.0
        for p in range(indptr[i], indptr[i + 1]):
            s += data[p] * x[indices[p]]
        y[i] = s


def csr_index_arrays(indptr: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CSR index arrays as uint64 for the kernels here.

    numba checks every signed array index for a negative value (Python's wrap-around); on the
    gather ``x[indices[p]]`` of a sparse product that check cost half the time (0.38 against
    0.19 ms on a 40,000-unknown front system, where scipy's C product takes 0.20 ms). Unsigned
    indices have no wrap-around, so the kernels index with them.
    """
    return indptr.astype(np.uint64), indices.astype(np.uint64)


@numba.njit(cache=True)
def ic0_cg(
    indptr: np.ndarray,
    indices: np.ndarray,
    data: np.ndarray,
    lu: np.ndarray,
    diag_pos: np.ndarray,
    b: np.ndarray,
    x0: np.ndarray,
    rtol: float,
    max_iter: int,
) -> tuple[np.ndarray, int, bool]:
    """Preconditioned CG from ``x0``: returns (x, iterations, converged)."""
    n = b.size
    x = x0.copy()
    r = np.empty(n)
    z = np.empty(n)
    q = np.empty(n)
    _matvec(indptr, indices, data, x, q)
    for i in range(n):
        r[i] = b[i] - q[i]
    tol = rtol * np.sqrt(np.dot(b, b))
    if np.sqrt(np.dot(r, r)) <= tol:
        return x, 0, True
    ic0_apply(indptr, indices, lu, diag_pos, r, z)
    p = z.copy()
    rz = np.dot(r, z)
    for it in range(1, max_iter + 1):
        _matvec(indptr, indices, data, p, q)
        pq = np.dot(p, q)
        # breakdown (a singular or indefinite matrix): stop, the caller refuses the solve (numba raises
        # ZeroDivisionError on x / 0.0, so the test comes before the division)
        if not (pq > 0.0 and rz > 0.0 and np.isfinite(pq)):
            return x, it, False
        alpha = rz / pq
        for i in range(n):
            x[i] += alpha * p[i]
            r[i] -= alpha * q[i]
        if np.sqrt(np.dot(r, r)) <= tol:
            return x, it, True
        ic0_apply(indptr, indices, lu, diag_pos, r, z)
        rz_new = np.dot(r, z)
        beta = rz_new / rz
        rz = rz_new
        for i in range(n):
            p[i] = z[i] + beta * p[i]
    return x, max_iter, False
