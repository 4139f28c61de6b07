"""Stationary Gaussian random fields defined in continuous space (random Fourier modes).

Model: a zero-mean, unit-variance Gaussian field with the squared-exponential covariance

    C(r) = exp(-(r / l)^2),

so ``l`` (``correlation_length_m``) is the distance at which the correlation falls to 1/e. A
realisation is a sum of random Fourier modes (:class:`FourierField`): a function of position, so
the same patient is sampled on any grid, exactly as cell averages.

Determinism: only ``rng`` (a ``numpy.random.Generator``) supplies randomness, drawn in one call,
so the same seed gives bit-identical fields on the same platform.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from sim.core.errors import ConfigError

# ----------------------------------------------------------------------------- continuous space


@dataclass(frozen=True)
class FourierField:
    """A Gaussian random field defined in continuous space by N random Fourier modes.

        g(x) = sqrt(2 / N) sum_i cos(k_i . x + phi_i),   k_i ~ N(0, (2 / l^2) I),   phi_i ~ U(0, 2 pi)

    (randomisation / spectral method; Shinozuka & Deodatis 1991, Appl Mech Rev 44:191). Its
    covariance is E[cos(k . r)] = exp(-(r / l)^2), the same squared-exponential model as
    module docstring, with unit variance and a marginal that tends to a Gaussian as N
    grows. The field is a function of position only, so sampling it on any grid (at the cell
    centres) gives the same patient at every spacing; block averages converge with refinement.
    """

    wavevectors: np.ndarray  # (N, 3) 1/m
    phases: np.ndarray  # (N,)

    @classmethod
    def draw(cls, correlation_length_m: float, rng: np.random.Generator, n_modes: int = 2048) -> FourierField:
        """Draw the modes of one realisation from ``rng``."""
        if not correlation_length_m > 0:
            raise ConfigError(f"correlation length must be > 0, got {correlation_length_m}")
        k = rng.standard_normal((n_modes, 3)) * (np.sqrt(2.0) / correlation_length_m)
        phi = rng.uniform(0.0, 2.0 * np.pi, n_modes)
        return cls(np.ascontiguousarray(k), np.ascontiguousarray(phi))

    def on_grid(
        self, origin_m: np.ndarray, spacing_m: float, shape: tuple[int, int, int], cell_average: bool = True
    ) -> np.ndarray:
        """The field on a uniform grid (``origin_m`` = centre of cell 0, 0, 0).

        ``cell_average`` (default): the exact mean of the field over each cubic cell, each mode
        scaled by prod_d sinc(k_d h / 2) (the mean of cos(k.x + phi) over a cube of side h centred at
        c is cos(k.c + phi) prod_d sin(k_d h/2) / (k_d h/2)), so a coarse cell holds the average of
        the tissue it stands for and block averages agree between grids. Otherwise the values at the
        cell centres (as :meth:`at`). Computed with separable complex exponentials,
        e^{i k.x} = e^{i k_x x} e^{i k_y y} e^{i k_z z}: one complex product per mode and cell.
        """
        h = float(spacing_m)
        axes = [float(origin_m[d]) + h * np.arange(shape[d]) for d in range(3)]
        amp = np.ones(self.phases.shape[0])
        if cell_average:
            amp = np.prod(
                np.sinc(self.wavevectors * h / (2.0 * np.pi)), axis=1
            )  # np.sinc(x) = sin(pi x)/(pi x)
        out = np.zeros(shape)
        _fourier_grid(axes[0], axes[1], axes[2], self.wavevectors, self.phases, amp, out)
        return out

    def at(self, points_m: np.ndarray) -> np.ndarray:
        """Field values at ``points_m`` (n, 3)."""
        pts = np.ascontiguousarray(np.atleast_2d(points_m), dtype=np.float64)
        out = np.empty(pts.shape[0])
        _fourier_sum(pts, self.wavevectors, self.phases, out)
        return out


@numba.njit(cache=True)
def _fourier_sum(pts: np.ndarray, k: np.ndarray, phi: np.ndarray, out: np.ndarray) -> None:
    n_modes = k.shape[0]
    scale = np.sqrt(2.0 / n_modes)
    for i in range(pts.shape[0]):
        x, y, z = pts[i, 0], pts[i, 1], pts[i, 2]
        acc = 0.0
        for m in range(n_modes):
            acc += np.cos(k[m, 0] * x + k[m, 1] * y + k[m, 2] * z + phi[m])
        out[i] = scale * acc


@numba.njit(cache=True)
def _fourier_grid(
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray,
    k: np.ndarray,
    phi: np.ndarray,
    amp: np.ndarray,
    out: np.ndarray,
) -> None:
    n_modes = k.shape[0]
    scale = np.sqrt(2.0 / n_modes)
    nx, ny, nz = x.shape[0], y.shape[0], z.shape[0]
    exy = np.empty((nx, ny), dtype=np.complex128)
    ez = np.empty(nz, dtype=np.complex128)
    for m in range(n_modes):
        cphi = amp[m] * np.exp(1j * phi[m])
        for j in range(ny):
            ey = np.exp(1j * k[m, 1] * y[j])
            for i in range(nx):
                exy[i, j] = cphi * ey * np.exp(1j * k[m, 0] * x[i])
        for kk in range(nz):
            ez[kk] = np.exp(1j * k[m, 2] * z[kk])
        for i in range(nx):
            for j in range(ny):
                a = exy[i, j]
                for kk in range(nz):
                    out[i, j, kk] += (a * ez[kk]).real
    for i in range(nx):
        for j in range(ny):
            for kk in range(nz):
                out[i, j, kk] *= scale
