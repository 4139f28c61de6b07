"""Stationary Gaussian random fields on uniform 3D grids by spectral (FFT) filtering.

Model: a zero-mean, unit-variance Gaussian field with the squared-exponential covariance

    C(r) = exp(-(r / l)^2),

so ``l`` (``correlation_length_m``) is the distance at which the correlation falls to 1/e.
Its power spectral density is S(k) ∝ exp(-k^2 l^2 / 4), hence white noise filtered in Fourier
space by sqrt(S) = exp(-k^2 l^2 / 8) has covariance C (convolution theorem; the standard
spectral / "FFT moving-average" method, e.g. Lang & Potthoff 2011, Liu et al. 2019 review of
random-field generators).

Non-periodicity: the noise is drawn on a grid padded by ``pad_lengths`` correlation lengths on
every side and the window is cut out, so the circular wrap of the FFT does not correlate
opposite faces (residual wrap correlation exp(-(2*pad)^2) < 1e-6 for pad = 2).

Normalisation uses the exact variance of the discrete filter (sum of squared kernel weights),
not the sample variance: each realisation is a genuine draw, so its sample mean and standard
deviation scatter around 0 and 1 as a real patient's would.

Determinism: only ``rng`` (a ``numpy.random.Generator``) supplies randomness, drawn in one call,
so the same seed gives bit-identical fields on the same platform.
"""

from __future__ import annotations

import numpy as np
from scipy import fft as sfft

from sim.core.errors import ConfigError


def gaussian_filter_spectrum(
    shape: tuple[int, ...], spacing_m: float, correlation_length_m: float
) -> np.ndarray:
    """Real-FFT amplitude filter exp(-|k|^2 l^2 / 8) on ``shape`` (last axis halved, rfftn layout)."""
    ks = [2.0 * np.pi * sfft.fftfreq(n, d=spacing_m) for n in shape[:-1]]
    ks.append(2.0 * np.pi * sfft.rfftfreq(shape[-1], d=spacing_m))
    c = correlation_length_m**2 / 8.0
    filt = np.ones([len(k) for k in ks], dtype=np.float64)
    for axis, k in enumerate(ks):
        view = [1] * len(ks)
        view[axis] = len(k)
        filt = filt * np.exp(-c * k**2).reshape(view)
    return filt


def gaussian_random_field(
    shape: tuple[int, int, int],
    spacing_m: float,
    correlation_length_m: float,
    rng: np.random.Generator,
    pad_lengths: float = 2.0,
) -> np.ndarray:
    """Zero-mean, unit-variance field of ``shape`` with covariance exp(-(r/l)^2).

    Parameters
    ----------
    shape: grid shape (nx, ny, nz).
    spacing_m: uniform cell size h in metres.
    correlation_length_m: l in metres (1/e distance of the correlation).
    rng: the only source of randomness.
    pad_lengths: padding on each side, in correlation lengths (avoids periodic wrap-around).
    """
    if spacing_m <= 0.0 or not np.isfinite(spacing_m):
        raise ConfigError(f"random field: spacing_m must be > 0 (got {spacing_m})")
    if correlation_length_m <= 0.0 or not np.isfinite(correlation_length_m):
        raise ConfigError(f"random field: correlation_length_m must be > 0 (got {correlation_length_m})")
    if any(n < 1 for n in shape):
        raise ConfigError(f"random field: shape must be positive (got {shape})")
    pad = int(np.ceil(pad_lengths * correlation_length_m / spacing_m))
    padded = tuple(sfft.next_fast_len(n + 2 * pad, real=True) for n in shape)
    noise = rng.standard_normal(padded)
    filt = gaussian_filter_spectrum(padded, spacing_m, correlation_length_m)
    spec = sfft.rfftn(noise, workers=-1)
    spec *= filt
    del noise
    field = sfft.irfftn(spec, s=padded, workers=-1)
    # Exact variance of the filtered white noise: (1/N) * sum over the full spectrum of |filter|^2.
    full = filt**2
    weight = np.full(full.shape[-1], 2.0)
    weight[0] = 1.0
    if padded[-1] % 2 == 0:
        weight[-1] = 1.0
    variance = float((full * weight).sum()) / float(np.prod(padded))
    window = tuple(slice(pad, pad + n) for n in shape)
    out = np.ascontiguousarray(field[window])
    out /= np.sqrt(variance)
    return out
