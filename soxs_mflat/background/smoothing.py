"""Gaussian local-linear smoothing: a weighted smooth with no bias at the ends or beside holes."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import correlate1d


def smoothing_kernel(sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Offsets and weights of the Gaussian of ``sigma`` samples used by :func:`local_linear_smooth`,
    truncated at 3 σ (at least one sample either side)."""
    half = max(int(np.ceil(3.0 * sigma)), 1)
    offsets = np.arange(-half, half + 1, dtype=np.float64)
    return offsets, np.exp(-0.5 * (offsets / max(sigma, 1e-3)) ** 2)


def local_linear_factors(s0: np.ndarray, s1: np.ndarray, s2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Factors (a, b) of the local-linear estimate a·Σwy + b·Σwty from the weight moments s0, s1, s2;
    where a slope cannot be fitted, the weighted mean (b = 0), NaN without any weight."""
    det = s0 * s2 - s1 * s1
    with np.errstate(invalid="ignore", divide="ignore"):
        sloped = det > 1e-3 * np.maximum(s0 * s2, 1e-300)
        a = np.where(sloped, s2 / det, np.where(s0 > 0, 1.0 / s0, np.nan))
        b = np.where(sloped, -s1 / det, 0.0)
    return a, b


def local_linear_smooth(values: np.ndarray, weights: np.ndarray, sigma: float, *, axis: int = -1) -> np.ndarray:
    """Gaussian local-linear regression of ``values`` (real or complex; single precision stays single) along
    ``axis``, zero weight = missing.

    At every sample a straight line is fitted by weighted least squares to the samples within 3 σ
    (Gaussian weights of ``sigma`` samples times ``weights``) and read at that sample. Unlike a
    normalised convolution it has no bias at the ends or next to holes where the data slope; where
    there are too few samples to fit a slope it falls back to the weighted mean. ``weights`` may
    broadcast against ``values`` (e.g. one weight per sample along ``axis`` for all), which saves
    correlating it more than once.
    """
    offsets, kernel = smoothing_kernel(sigma)
    values = np.asarray(values)
    w = np.asarray(weights, dtype=np.float64)
    yw = np.where(w > 0, values, 0) * w.astype(np.result_type(values.real.dtype, np.float32))

    def correlate(data: np.ndarray, taps: np.ndarray) -> np.ndarray:
        return correlate1d(data, taps, axis=axis, mode="constant")

    a, b = local_linear_factors(*(correlate(w, kernel * offsets**power) for power in range(3)))
    smoothed = correlate(yw, kernel)
    smoothed *= a
    smoothed += b * correlate(yw, kernel * offsets)
    return smoothed
