"""Spill: the order light convolved with Gaussians, the terms that carry the scattered light under the orders.

There are two families of terms, one per width in ``SPILL_SIGMAS``: across A only (each row on its
own, as if the orders went on unchanged beyond the ends of the detector along B) and in 2-D (no light
beyond the detector). All are Fourier products of the order light, transformed across A once
(:func:`order_light_spectrum`).

The fit needs every term, but only at its samples (:func:`spill_at_samples`): each Gaussian is
evaluated on a grid across A as coarse as its width allows, as the coefficients of a quintic B-spline
(the spectrum divided by the B-spline's), and the splines are read at the samples.
The model needs only the weighted sum of the terms, on every binned pixel (:func:`weighted_spill`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import fft
from scipy.interpolate import BSpline
from scipy.sparse import csr_array

from soxs_mflat.background.binning import rows_per_chunk
from soxs_mflat.background.smoothing import local_linear_smooth

SPILL_SIGMAS = (4.0, 5.7, 8.0, 11.0, 16.0, 23.0, 32.0, 45.0, 64.0, 90.0, 128.0, 181.0, 256.0)
"""Widths (px, σ) of the Gaussians the order light is convolved with."""
REACH_IN_SIGMAS = 4
"""Padding of the transforms, in units of the widest Gaussian: nothing wraps around the ends."""
SPLINE_DEGREE = 5
"""Degree of the B-splines through the coarse grids: with a spacing of at most half the Gaussian's σ the
readings at the samples are exact to ~1e-5 of the spill."""
FIRST_NODE = -(SPLINE_DEGREE // 2)
"""Node (relative to the image's first column) held by the first coefficient of every coarse grid: the
spline at column 0 needs the coefficients from there on."""
SPILL_STEPS_PER_SIGMA = 2.0
COARSEST_STEP = 16
"""The coarse grid of a Gaussian of σ px is spaced by the largest power of two ≤ σ / ``SPILL_STEPS_PER_SIGMA``
and ≤ ``COARSEST_STEP`` (a coarser grid would save little)."""
SPECTRUM_FLOOR = 1e-9
"""Fourier components where the weighted spill kernels are below this fraction of their peak are dropped."""


@dataclass(frozen=True)
class OrderLightSpectrum:
    """The order light (binned rows ``row_step`` px apart × ``n_a`` columns) Fourier-transformed across A:
    ``spectrum`` is its real FFT of length ``n_fft_a`` (rows × frequencies, complex64). ``n_fft_a`` and
    ``n_fft_b`` are the lengths across A and along B, padded by ``REACH_IN_SIGMAS`` × the widest Gaussian;
    every coarse grid spacing divides ``n_fft_a``."""

    spectrum: np.ndarray
    n_a: int
    n_fft_a: int
    n_fft_b: int
    row_step: int


def coarse_step(sigma: float) -> int:
    """Spacing (px) of the coarse grid for a Gaussian of ``sigma`` px, see ``SPILL_STEPS_PER_SIGMA``."""
    return min(1 << max(int(np.floor(np.log2(sigma / SPILL_STEPS_PER_SIGMA))), 0), COARSEST_STEP)


def gaussian_transfer(sigma: float | np.ndarray, frequency: np.ndarray) -> np.ndarray:
    """Fourier transform of unit-area Gaussians of ``sigma`` samples at ``frequency`` (cycles per sample);
    sigmas × frequencies for an array of sigmas."""
    return np.exp(-2.0 * (np.pi * np.multiply.outer(sigma, frequency)) ** 2)


def order_light_spectrum(light: np.ndarray, *, row_step: int) -> OrderLightSpectrum:
    """Transform across A of ``light`` (the light inside the orders on binned rows ``row_step`` px apart)."""
    n_rows, n_a = light.shape
    reach = REACH_IN_SIGMAS * max(SPILL_SIGMAS)
    coarsest = coarse_step(max(SPILL_SIGMAS))
    n_fft_a = coarsest * fft.next_fast_len(-(-int(n_a + reach) // coarsest), real=True)
    n_fft_b = fft.next_fast_len(int(n_rows + reach / row_step), real=True)
    return OrderLightSpectrum(fft.rfft(light, n=n_fft_a, axis=1), n_a, n_fft_a, n_fft_b, row_step)


def coarse_spline_grids(light: OrderLightSpectrum, sigma: float, step: int) -> tuple[np.ndarray, np.ndarray]:
    """B-spline coefficients of the light convolved with a Gaussian of ``sigma`` px, on a grid ``step`` px
    apart across A, across A only and in 2-D (rows × nodes each; node j is column (j + ``FIRST_NODE``) ×
    ``step``, up to the last node a column of the image needs).

    The Gaussian's spectrum is divided by the B-spline's (sinc^(degree + 1)), so that the spline passes
    through the convolved light, and cut at the coarse grid's Nyquist frequency, where it has vanished."""
    n_rows = light.spectrum.shape[0]
    n_coarse = light.n_fft_a // step
    n_nodes = -(-light.n_a // step) + SPLINE_DEGREE
    frequency = np.arange(n_coarse // 2 + 1) / n_coarse
    kernel = gaussian_transfer(sigma, frequency / step) / (step * np.sinc(frequency) ** (SPLINE_DEGREE + 1))
    kernel = (kernel * np.exp(2j * np.pi * FIRST_NODE * frequency)).astype(np.complex64)
    per_row = fft.irfft(light.spectrum[:, : frequency.size] * kernel, n=n_coarse, axis=1)[:, :n_nodes]
    in_2d = fft.rfft(per_row, n=light.n_fft_b, axis=0)
    in_2d *= gaussian_transfer(sigma / light.row_step, fft.rfftfreq(light.n_fft_b)).astype(np.float32)[:, None]
    return np.ascontiguousarray(per_row), fft.irfft(in_2d, n=light.n_fft_b, axis=0)[:n_rows]


def spline_reading_matrix(rows: np.ndarray, cols: np.ndarray, step: int, n_rows: int, n_nodes: int) -> csr_array:
    """Sparse matrix that reads the B-splines of coarse grids ``step`` px apart (rows × ``n_nodes``
    coefficients, raveled) at the binned pixels (``rows``, ``cols``). A column ``phase`` px past a node
    needs the degree + 1 coefficients from that node on (``FIRST_NODE`` shifts the grid), weighted by
    the cardinal B-spline (``BSpline.design_matrix``) at one of only ``step`` phases."""
    knots = np.arange(2.0 * SPLINE_DEGREE + 2) - (SPLINE_DEGREE + 1) // 2
    by_phase = BSpline.design_matrix(np.arange(step) / step - FIRST_NODE, knots, SPLINE_DEGREE).toarray()
    node, phase = np.divmod(cols, step)
    index = np.int32 if n_rows * n_nodes < np.iinfo(np.int32).max else np.int64
    taps = (rows * n_nodes + node).astype(index)[:, None] + np.arange(SPLINE_DEGREE + 1, dtype=index)
    pointers = np.arange(0, taps.size + 1, SPLINE_DEGREE + 1, dtype=index)
    weights = by_phase.astype(np.float32)[phase]
    return csr_array((weights.ravel(), taps.ravel(), pointers), shape=(rows.size, n_rows * n_nodes))


def spill_at_samples(light: OrderLightSpectrum, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """The light convolved with each Gaussian of ``SPILL_SIGMAS`` at the binned pixels (``rows``, ``cols``):
    samples × (the terms across A only, then the 2-D terms), float32."""
    n_rows = light.spectrum.shape[0]
    n_sigmas = len(SPILL_SIGMAS)
    steps = np.array([coarse_step(sigma) for sigma in SPILL_SIGMAS])
    values = np.empty((2 * n_sigmas, rows.size), dtype=np.float32)
    for step in np.unique(steps):
        reading = spline_reading_matrix(rows, cols, int(step), n_rows, -(-light.n_a // step) + SPLINE_DEGREE)
        for j in np.flatnonzero(steps == step):
            per_row, in_2d = coarse_spline_grids(light, SPILL_SIGMAS[j], int(step))
            values[j] = reading @ per_row.ravel()
            values[n_sigmas + j] = reading @ in_2d.ravel()
    return values.T


def significant_bins(weights: np.ndarray, transfers: np.ndarray) -> int:
    """Number of leading frequencies at which Σ |``weights``| × ``transfers`` (sigmas × frequencies) exceeds
    ``SPECTRUM_FLOOR`` of its peak (at least one)."""
    envelope = np.abs(weights) @ transfers
    significant = np.flatnonzero(envelope > SPECTRUM_FLOOR * max(envelope[0], 1e-300))
    return int(significant[-1]) + 1 if significant.size else 1


def weighted_spill(light: OrderLightSpectrum, weights: np.ndarray, *, smooth_rows: float) -> tuple[np.ndarray, np.ndarray]:
    """The spill of the fitted model on the binned pixels: Σ ``weights`` × the terms (row 0 of ``weights``
    across A only, row 1 in 2-D), as fitted, and with the across-A part smoothed along B by
    :func:`local_linear_smooth` over ``smooth_rows`` rows (the 2-D part is smooth along B already).

    Both are built in the Fourier domain across A, each family on the frequencies where its weighted
    kernels have not vanished, and transformed back once, a chunk of rows at a time."""
    n_rows = light.spectrum.shape[0]
    sigmas = np.asarray(SPILL_SIGMAS)
    across = gaussian_transfer(sigmas, fft.rfftfreq(light.n_fft_a))
    n_per_row, n_in_2d = (significant_bins(family, across) for family in weights)
    per_row = light.spectrum[:, :n_per_row] * (weights[0] @ across[:, :n_per_row]).astype(np.float32)
    along = gaussian_transfer(sigmas / light.row_step, fft.fftfreq(light.n_fft_b))
    in_2d_transfer = ((along * weights[1][:, None]).T @ across[:, :n_in_2d]).astype(np.float32)
    along_b = fft.fft(light.spectrum[:, :n_in_2d], n=light.n_fft_b, axis=0)
    spectra = np.zeros((2, n_rows, max(n_per_row, n_in_2d)), dtype=np.complex64)
    spectra[:, :, :n_in_2d] = fft.ifft(along_b * in_2d_transfer, axis=0)[:n_rows]
    spectra[0, :, :n_per_row] += per_row
    spectra[1, :, :n_per_row] += local_linear_smooth(per_row, np.ones((n_rows, 1)), smooth_rows, axis=0)
    images = np.empty((2, n_rows, light.n_a), dtype=np.float32)
    step = rows_per_chunk(light.n_fft_a)
    for start in range(0, n_rows, step):
        rows = slice(start, start + step)
        images[:, rows] = fft.irfft(spectra[:, rows], n=light.n_fft_a, axis=-1)[..., : light.n_a]
    return images[0], images[1]
