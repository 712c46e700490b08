"""Scattered light between the orders: fit a model from the gaps and carry it under the orders.

Everything runs in BA orientation (rows along the orders, columns across them), on the image
median-binned by blocks of rows (robust to cosmic rays and hot pixels, and fast):

1. **Gap pixels.** Every inter-order gap, and a band beside the outermost orders, is cut at the
   fitted edges less a margin; in narrow gaps the margin shrinks so that a gap is never empty.
2. **Joint fit on the gap pixels** (least squares with non-negative physical terms, outliers clipped):

   * *PSF wings*: each edge's light leaking into the gap, a free profile in distance from the
     edge (px bins) scaled by the neighbouring order's level. It belongs to the orders, so it is
     fitted but left out of the model; it is what makes gaps of a few pixels usable.
   * *Spill*: the order light convolved with Gaussians of 8–256 px, once across A only (orders
     going on beyond the detector ends) and once in 2-D (nothing beyond the detector). It carries
     the scattered light's peaks under the bright orders, which no curve through the gaps can see.
   * a smooth low-order surface for stray light not tied to the orders.

3. **Gap residuals.** What the fit leaves in each gap (per block, median) is smoothed along B
   with a Gaussian of ``gaussian_blur_sigma`` px — a local-linear regression, unbiased up to the
   detector ends — and interpolated across A with a spline of degree ``bspline_deg`` through the
   gaps (one knot per gap), so the model passes through the measured gap levels.
4. The row-by-row spill term is smoothed along B the same way, everything is added, and the
   result is interpolated back to every row.

The spill terms are Fourier products. For the fit they are only needed at the gap samples, so each
Gaussian is evaluated on a grid across A as coarse as its width allows, as the coefficients of a
quintic B-spline, and the spline is read at the samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import comb, factorial

import bottleneck as bn
import numpy as np
from numpy.polynomial import legendre

from soxs_mflat.footprints import OrderBounds
from soxs_mflat.robust import MAD_TO_SIGMA, partition_median

WING_BIN_EDGES = np.array([0.0, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0])
SPILL_SIGMAS = (4.0, 5.7, 8.0, 11.0, 16.0, 23.0, 32.0, 45.0, 64.0, 90.0, 128.0, 181.0, 256.0)
SURFACE_DEGREE = 2
CLIP_SIGMA = 5.0
MAX_FIT_SAMPLES = 60_000
CHUNK_PIXELS = 1 << 16
"""Pixels handled at once by the loops over rows: bounds the temporaries, which then stay in cache and are
reused rather than freshly mapped."""
SPILL_SPLINE_DEGREE = 5
"""Degree of the B-splines through the coarse spill grids: with a spacing of at most half the Gaussian's
σ the readings at the samples are exact to ~1e-5 of the spill."""
SPILL_TAPS = np.arange(-(SPILL_SPLINE_DEGREE - 1) // 2, (SPILL_SPLINE_DEGREE + 1) // 2 + 1)
"""Grid nodes (relative to the one at or before a point) that its spline value depends on."""
SPILL_STEPS_PER_SIGMA = 2.0
COARSEST_STEP = 16
"""The coarse grid of a Gaussian of σ px is spaced by the largest power of two ≤ σ / ``SPILL_STEPS_PER_SIGMA``
and ≤ ``COARSEST_STEP`` (a coarser grid would save little)."""
BLAS_ROWS = 128
"""Rows per matrix product in the fit: small enough that BLAS keeps to one thread. Threads gain nothing at
these sizes and stall for long when another process holds the other core."""
SPECTRUM_FLOOR = 1e-9
"""Fourier components of the spill kernels below this fraction of their peak are dropped."""


@dataclass(frozen=True)
class BackgroundModel:
    """Fitted scattered light (BA orientation, units of the flat) and how well it fits the gaps.

    ``fitted_pixels`` marks the gap pixels the model was fitted to. ``residual_median`` and
    ``residual_sigma`` (MAD-based) describe data − model on those pixels, PSF wings removed;
    ``wing_profile`` is the fitted edge leakage per distance bin (fraction of the order level) with
    ``wing_bin_edges`` in px; ``spill_weights`` (2 × n) are the fitted spill weights per Gaussian
    width in ``spill_sigmas`` (px), across A only (row 0) and in 2-D (row 1).
    """

    model: np.ndarray
    fitted_pixels: np.ndarray
    residual_median: float
    residual_sigma: float
    wing_profile: np.ndarray
    wing_bin_edges: np.ndarray
    spill_weights: np.ndarray
    spill_sigmas: np.ndarray


@dataclass(frozen=True)
class _Gaps:
    """Gap boundaries (pixel centres within ``start``..``end``) on a set of rows, with the
    positions of the order edges on each side (NaN beside a detector border)."""

    start: np.ndarray
    end: np.ndarray
    edge_below: np.ndarray
    edge_above: np.ndarray


def _sorted_edges(bounds: OrderBounds) -> tuple[np.ndarray, np.ndarray]:
    """Order edges sorted across A; an order absent on a row collapses onto its centre."""
    order = np.argsort(np.nanmean(bounds.centre, axis=1))
    low = np.where(bounds.valid, bounds.low, bounds.centre)[order]
    up = np.where(bounds.valid, bounds.up, bounds.centre)[order]
    return low, up


def default_margin(bounds: OrderBounds) -> float:
    """Margin (px) kept free of the orders: 2 px, up to 3 px when the median gap is wider than 30 px."""
    low, up = _sorted_edges(bounds)
    widths = (low[1:] - up[:-1]).ravel()
    median_gap = float(np.median(widths)) if widths.size else 30.0
    return float(np.clip(median_gap / 10.0, 2.0, 3.0))


def _gaps(low: np.ndarray, up: np.ndarray, n_a: int, *, margin: float, outer: float) -> _Gaps:
    """Gap intervals for every row: between neighbouring orders, and a band ``outer`` px wide
    beside the first and last orders. Between orders the margin shrinks to keep >= 1 px."""
    n_b = low.shape[1]
    nan_row = np.full((1, n_b), np.nan)
    below = np.vstack([nan_row, up])
    above = np.vstack([low, nan_row])
    width = low[1:] - up[:-1]
    inner = np.minimum(margin, np.maximum((width - 1.0) / 2.0, 0.0))
    first_end = low[:1] - margin
    last_start = up[-1:] + margin
    start = np.vstack([np.maximum(first_end - outer, -0.5), up[:-1] + inner, last_start])
    end = np.vstack([first_end, low[1:] - inner, np.minimum(last_start + outer, n_a - 0.5)])
    return _Gaps(start, end, below, above)


def _gap_columns(start: np.ndarray, end: np.ndarray, n_a: int) -> tuple[np.ndarray, np.ndarray]:
    """Columns (rows × width) of the pixel centres within ``start``..``end``, and which are real."""
    first = np.ceil(start)
    last = np.floor(end)
    first = np.clip(first, 0, n_a)
    last = np.clip(last, -1, n_a - 1)
    width = int(max(np.max(last - first + 1.0, initial=0.0), 0.0))
    cols = first[:, None].astype(np.int64) + np.arange(width)[None, :]
    used = cols <= last[:, None]
    return np.clip(cols, 0, n_a - 1), used


def _interval_mask(first: np.ndarray, stop: np.ndarray, n_cols: int) -> np.ndarray:
    """Rows × ``n_cols`` map of the columns within any of the intervals [``first``, ``stop``) (intervals ×
    rows; NaN = empty), written run by run with one ``np.repeat`` rather than compared pixel by pixel."""
    n_intervals, n_rows = first.shape
    empty = ~(stop > first)
    first = np.where(empty, 0, np.clip(first, 0, n_cols)).astype(np.int64)
    stop = np.where(empty, 0, np.clip(stop, 0, n_cols)).astype(np.int64)
    order = np.argsort(first, axis=0, kind="stable")
    first, stop = np.take_along_axis(first, order, axis=0), np.take_along_axis(stop, order, axis=0)
    reach = np.maximum.accumulate(stop, axis=0)
    before = np.vstack([np.zeros((1, n_rows), np.int64), reach[:-1]])
    start = np.maximum(first, before)
    runs = np.empty((n_rows, 2 * n_intervals + 1), np.int64)
    runs[:, 0:-1:2] = (start - before).T
    runs[:, 1::2] = (reach - start).T
    runs[:, -1] = n_cols - reach[-1]
    inside = np.zeros(2 * n_intervals + 1, dtype=bool)
    inside[1::2] = True
    return np.repeat(np.tile(inside, n_rows), runs.ravel()).reshape(n_rows, n_cols)


def _median_network(size: int) -> list[tuple[int, int, bool, bool]]:
    """Comparators (i, j, keep min, keep max) that bring the median(s) of ``size`` values to the middle
    position(s): Batcher's odd-even merge sort, pruned of every comparison the middle does not depend on."""
    width = 1 << max(size - 1, 0).bit_length()
    comparators = []
    span = 1
    while span < width:
        step = span
        while step >= 1:
            for j in range(step % span, width - step, 2 * step):
                for i in range(min(step, width - j - step)):
                    if (i + j) // (2 * span) == (i + j + step) // (2 * span) and i + j + step < size:
                        comparators.append((i + j, i + j + step))
            step //= 2
        span *= 2
    needed = {(size - 1) // 2, size // 2}
    network = []
    for low, high in reversed(comparators):
        keep_low, keep_high = low in needed, high in needed
        if keep_low or keep_high:
            network.append((low, high, keep_low, keep_high))
            needed |= {low, high}
    return network[::-1]


def _network_median(values: list[np.ndarray]) -> np.ndarray:
    """Element-wise median of equally shaped arrays through a sorting network (NaN if any input is NaN)."""
    wires = list(values)
    for low, high, keep_low, keep_high in _median_network(len(wires)):
        lower = np.minimum(wires[low], wires[high]) if keep_low else None
        if keep_high:
            wires[high] = np.maximum(wires[low], wires[high])
        wires[low] = lower
    middle = wires[(len(wires) - 1) // 2]
    if len(wires) % 2:
        return middle.copy()
    median = middle + wires[len(wires) // 2]
    median *= 0.5
    return median


def _rows_per_chunk(n_cols: int) -> int:
    """Rows of ``n_cols`` pixels making up about ``CHUNK_PIXELS`` (at least one)."""
    return max(CHUNK_PIXELS // n_cols, 1)


def _bin_rows(image: np.ndarray, mask: np.ndarray | None, block: int) -> np.ndarray:
    """Median of each block of ``block`` rows, ignoring non-finite and ``mask`` pixels; the last block may
    be short. A sorting network does every block; the few with a rejected pixel are redone one by one."""
    n_b, n_a = image.shape
    binned = np.empty((-(-n_b // block), n_a), dtype=np.float32)
    step = block * _rows_per_chunk(n_a)
    for start in range(0, n_b, step):
        stop = min(start + step, n_b)
        chunk = image[start:stop]
        rejected = np.isfinite(chunk)
        np.logical_not(rejected, out=rejected)
        if mask is not None:
            rejected |= mask[start:stop]
        n_full = (stop - start) // block
        if n_full:
            blocks = chunk[: n_full * block].reshape(n_full, block, n_a)
            out = binned[start // block : start // block + n_full]
            out[:] = _network_median(list(blocks.transpose(1, 0, 2)))
            flagged = rejected[: n_full * block].reshape(n_full, block, n_a)
            redo = np.nonzero(flagged.any(axis=1))
            if redo[0].size:
                values = np.where(flagged[redo[0], :, redo[1]], np.nan, blocks[redo[0], :, redo[1]])
                out[redo] = bn.nanmedian(values, axis=1)
        if n_full * block < stop - start:
            rest = slice(n_full * block, stop - start)
            binned[start // block + n_full] = bn.nanmedian(np.where(rejected[rest], np.nan, chunk[rest]), axis=0)
    return binned


def _median_across(image: np.ndarray, width: int) -> np.ndarray:
    """Median of the finite pixels within ``width`` (odd) columns centred on each pixel, NaN if none: a
    sorting network where the whole window is finite, the rest (NaN, image ends) one window at a time."""
    n_rows, n_a = image.shape
    half = width // 2
    median = np.full_like(image, np.nan)
    step = _rows_per_chunk(n_a)
    for start in range(0, n_rows, step):
        rows = slice(start, start + step)
        median[rows, half : n_a - half] = _network_median([image[rows, k : n_a - width + 1 + k] for k in range(width)])
    rows, cols = np.nonzero(np.isnan(median))
    if rows.size:
        offsets = np.clip(cols[:, None] + np.arange(-half, half + 1), -1, n_a)
        padded = np.where((offsets >= 0) & (offsets < n_a), image[rows[:, None], np.clip(offsets, 0, n_a - 1)], np.nan)
        median[rows, cols] = bn.nanmedian(padded, axis=1)
    return median


def _fill_along_rows(image: np.ndarray) -> np.ndarray:
    """Fill NaN pixels from the nearest finite pixel above or below in the same column (the earlier one first)."""
    n_rows = image.shape[0]
    finite = np.isfinite(image)
    row = np.arange(n_rows, dtype=np.int32)[:, None]
    source = np.maximum.accumulate(np.where(finite, row, np.int32(-1)), axis=0)
    following = np.minimum.accumulate(np.where(finite, row, np.int32(n_rows))[::-1], axis=0)[::-1]
    np.copyto(source, np.where(following < n_rows, following, np.int32(0)), where=source < 0)
    return np.take_along_axis(image, source, axis=0)


def _bin_geometry(values: np.ndarray, block: int) -> np.ndarray:
    """Mean of each block of ``block`` rows of a (n_orders, n_b) trace array."""
    n_k, n_b = values.shape
    n_bins = -(-n_b // block)
    padded = np.full((n_k, n_bins * block), np.nan)
    padded[:, :n_b] = values
    return np.nanmean(padded.reshape(n_k, n_bins, block), axis=2)


def next_fast_len(n: int) -> int:
    """The smallest 5-smooth number (2^i 3^j 5^k) ≥ ``n``: a length the FFT transforms fastest."""
    best = 1 << max(int(n) - 1, 0).bit_length()
    power5 = 1
    while power5 < best:
        power35 = power5
        while power35 < best:
            length = power35
            while length < n:
                length *= 2
            best = min(best, length)
            power35 *= 3
        power5 *= 5
    return best


def correlate_constant(values: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Correlation of ``values`` along its last axis with a centred odd-length ``kernel``, zero beyond
    the ends (scipy.ndimage's ``correlate1d`` with ``mode="constant"``, in numpy: one product a tap,
    cheap for the short Gaussians used here)."""
    half = kernel.size // 2
    n = values.shape[-1]
    padded = np.zeros((*values.shape[:-1], n + 2 * half), dtype=np.result_type(values, kernel))
    padded[..., half : half + n] = values
    out = np.zeros(padded[..., :n].shape, dtype=padded.dtype)
    for tap, weight in enumerate(kernel):
        out += weight * padded[..., tap : tap + n]
    return out


def _smoothing_kernel(sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Offsets and weights of the truncated Gaussian of :func:`local_linear_smooth`."""
    half = max(int(np.ceil(3.0 * sigma)), 1)
    t = np.arange(-half, half + 1, dtype=np.float64)
    return t, np.exp(-0.5 * (t / max(sigma, 1e-3)) ** 2)


def _local_linear_factors(s0: np.ndarray, s1: np.ndarray, s2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Factors (a, b) of the local-linear estimate a·Σwy + b·Σwty from the weight moments s0, s1, s2;
    where a slope cannot be fitted, the weighted mean (b = 0), NaN without any weight."""
    det = s0 * s2 - s1 * s1
    with np.errstate(invalid="ignore", divide="ignore"):
        sloped = det > 1e-3 * np.maximum(s0 * s2, 1e-300)
        a = np.where(sloped, s2 / det, np.where(s0 > 0, 1.0 / s0, np.nan))
        b = np.where(sloped, -s1 / det, 0.0)
    return a, b


def local_linear_smooth(values: np.ndarray, weights: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian local-linear regression along the last axis (zero weight = missing sample).

    ``weights`` may broadcast against ``values`` (one row for all), which saves recomputing its sums.
    Unlike a normalised convolution it has no bias at the ends or next to gaps where the data
    slope; where there are too few samples to fit a slope it falls back to the weighted mean.
    """
    t, kernel = _smoothing_kernel(sigma)
    w = np.asarray(weights, dtype=np.float64)
    yw = np.where(w > 0, values, 0.0) * w
    s0 = correlate_constant(w, kernel)
    s1 = correlate_constant(w, kernel * t)
    s2 = correlate_constant(w, kernel * t * t)
    a, b = _local_linear_factors(s0, s1, s2)
    smoothed = correlate_constant(yw, kernel)
    smoothed *= a
    smoothed += b * correlate_constant(yw, kernel * t)
    return smoothed


def _bspline_weights(phases: np.ndarray) -> np.ndarray:
    """Weights (phases × ``SPILL_TAPS``) of the grid nodes at ``SPILL_TAPS`` from a point ``phase`` (0..1)
    past a node, for the centred B-spline of degree ``SPILL_SPLINE_DEGREE``."""
    degree = SPILL_SPLINE_DEGREE
    x = phases[:, None] - SPILL_TAPS[None, :] + (degree + 1) / 2.0
    weights = sum((-1) ** j * comb(degree + 1, j) * np.maximum(x - j, 0.0) ** degree for j in range(degree + 2))
    return weights / factorial(degree)


def _coarse_step(sigma: float) -> int:
    """Spacing (px) of the coarse grid for a Gaussian of ``sigma`` px, see ``SPILL_STEPS_PER_SIGMA``."""
    return min(1 << max(int(np.floor(np.log2(sigma / SPILL_STEPS_PER_SIGMA))), 0), COARSEST_STEP)


def _pixel_order(rows: np.ndarray, cols: np.ndarray, n_a: int) -> np.ndarray:
    """Order of samples along the image (row by row), in which grids are read with the fewest cache misses."""
    return np.argsort(rows * n_a + cols, kind="stable")


@dataclass(frozen=True)
class _Spill:
    """Fourier transform across A of the order light (rows ``row_step`` px apart) for the spill terms:
    per row across A (the orders going on unchanged beyond the ends of the detector) and in 2-D, padded
    by 4 × the widest Gaussian so that nothing wraps around (nothing beyond the detector). The length
    across A is a multiple of ``COARSEST_STEP``, so that every coarse grid divides it."""

    rows_spectrum: np.ndarray
    shape: tuple[int, int]
    n_fft: tuple[int, int]
    row_step: int

    @classmethod
    def of(cls, light: np.ndarray, row_step: int, smooth_rows: float) -> _Spill:
        """Transform of ``light``; the padding along B also covers smoothing over ``smooth_rows`` rows."""
        n_rows, n_a = light.shape
        reach = 4 * max(SPILL_SIGMAS)
        coarsest = _coarse_step(max(SPILL_SIGMAS))
        n_fft_a = coarsest * next_fast_len(-(-int(n_a + reach) // coarsest))
        pad_b = max(reach / row_step, _smoothing_kernel(smooth_rows)[0][-1] + 1)
        n_fft_b = next_fast_len(int(n_rows + pad_b))
        rows_spectrum = np.fft.rfft(light, n=n_fft_a, axis=1)
        return cls(rows_spectrum, (n_rows, n_a), (n_fft_b, n_fft_a), row_step)

    def _across(self, sigma: float | np.ndarray, n_bins: int) -> np.ndarray:
        """Transfer function across A of unit-area Gaussians of ``sigma`` px on the first ``n_bins`` bins."""
        frequency = np.arange(n_bins) / self.n_fft[1]
        return np.exp(-2.0 * (np.pi * np.multiply.outer(sigma, frequency)) ** 2)

    def _along(self, sigma: float | np.ndarray, n_fft_b: int) -> np.ndarray:
        """Transfer function along B (rows ``row_step`` px apart, transforms of ``n_fft_b``) of Gaussians of
        ``sigma`` px."""
        frequency = np.fft.fftfreq(n_fft_b)
        return np.exp(-2.0 * (np.pi * np.multiply.outer(np.asarray(sigma) / self.row_step, frequency)) ** 2)

    def _grid_widths(self, step: int) -> tuple[int, int]:
        """Nodes of the coarse grids ``step`` px apart: around the whole transform, and up to the last one a
        column of the image needs."""
        return self.n_fft[1] // step, -(-self.shape[1] // step) + SPILL_TAPS[-1] - SPILL_TAPS[0]

    def _coarse_grids(self, sigma: float, step: int) -> tuple[np.ndarray, np.ndarray]:
        """B-spline coefficients, on the grid ``step`` px apart across A, of the light convolved with a
        Gaussian of ``sigma`` px, across A only and in 2-D (rows × nodes each). The nodes start at
        ``SPILL_TAPS[0]`` (wrapped around); the 2-D grid ends at the last one a column of the image needs.

        The spectrum is divided by the B-spline's so that the spline passes through the convolved light, and
        shifted so that the grid starts at the first node; the 2-D term is convolved along B on the coarse
        grid."""
        n_rows = self.shape[0]
        n_fft_b = self.n_fft[0]
        n_coarse, n_nodes = self._grid_widths(step)
        n_bins = n_coarse // 2 + 1
        frequency = np.arange(n_bins) / n_coarse
        kernel = self._across(sigma, n_bins) / (step * np.sinc(frequency) ** (SPILL_SPLINE_DEGREE + 1))
        kernel = (kernel * np.exp(2j * np.pi * SPILL_TAPS[0] * frequency)).astype(np.complex64)
        per_row = np.fft.irfft(self.rows_spectrum[:, :n_bins] * kernel, n=n_coarse, axis=-1)
        in_2d = np.fft.rfft(per_row[:, :n_nodes], n=n_fft_b, axis=0)
        in_2d *= self._along(sigma, n_fft_b)[: n_fft_b // 2 + 1, None].astype(np.float32)
        return per_row, np.fft.irfft(in_2d, n=n_fft_b, axis=0)[:n_rows]

    def at(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """The light convolved with each Gaussian of ``SPILL_SIGMAS`` at (``rows``, ``cols``), first across A
        only, then in 2-D (samples × 2 n_sigmas).

        The splines of :meth:`_coarse_grids` are read at the samples, fastest for samples in
        :func:`_pixel_order`."""
        n_spill = len(SPILL_SIGMAS)
        steps = np.array([_coarse_step(sigma) for sigma in SPILL_SIGMAS])
        values = np.empty((2 * n_spill, rows.size), dtype=np.float32)
        gathered = np.empty((SPILL_TAPS.size, rows.size), dtype=np.float32)
        for step in np.unique(steps):
            node, phase = np.divmod(cols, step)
            weights = np.take(_bspline_weights(np.arange(step) / step).astype(np.float32).T, phase, axis=1)
            first_taps = [rows * width + node for width in self._grid_widths(step)]
            for j in np.flatnonzero(steps == step):
                grids = self._coarse_grids(SPILL_SIGMAS[j], step)
                for grid, first_tap, column in zip(grids, first_taps, (j, n_spill + j), strict=True):
                    for tap in range(SPILL_TAPS.size):
                        np.take(grid.ravel()[tap:], first_tap, out=gathered[tap], mode="clip")
                    np.einsum("ts,ts->s", gathered, weights, out=values[column])
        return values.T

    def weighted(self, weights: np.ndarray, smooth_rows: float) -> tuple[np.ndarray, np.ndarray]:
        """The spill of the fitted model: Σ weights × the light convolved with each Gaussian (``weights``
        row 0 across A only, row 1 in 2-D), raw and with the across-A part smoothed along B by
        :func:`local_linear_smooth` over ``smooth_rows`` rows (binned rows × columns each).

        Both are built in the Fourier domain — the smoothing is a correlation along B with two kernels
        and factors per row — and transformed back together; bins across A where the kernels vanish are
        left out of the work along B."""
        n_rows, n_a = self.shape
        n_fft_b, n_fft_a = self.n_fft
        sigmas = np.asarray(SPILL_SIGMAS)
        envelope = np.einsum("j,ja->a", np.abs(weights).sum(axis=0), self._across(sigmas, n_fft_a // 2 + 1))
        significant = np.flatnonzero(envelope > SPECTRUM_FLOOR * max(envelope[0], 1e-300))
        n_bins = int(significant[-1]) + 1 if significant.size else 1
        across = self._across(sigmas, n_bins)
        per_row = np.einsum("j,ja->a", weights[0], across).astype(np.float32)
        in_2d = np.einsum("jb,ja->ba", self._along(sigmas, n_fft_b) * weights[1][:, None], across).astype(np.float32)
        offsets, kernel = _smoothing_kernel(smooth_rows)
        circular = np.zeros((2, n_fft_b))
        circular[:, offsets.astype(np.int64) % n_fft_b] = kernel, kernel * offsets
        moments = (n_fft_b * np.fft.ifft(circular, axis=-1)).astype(np.complex64)
        spectrum = self.rows_spectrum[:, :n_bins]
        along_b = np.fft.fft(spectrum, n=n_fft_b, axis=0)
        parts = np.stack([along_b * in_2d, along_b * (per_row * moments[0][:, None]), along_b * (per_row * moments[1][:, None])])
        parts = np.fft.ifft(parts, axis=1)[:, :n_rows]
        ones = np.ones(n_rows)
        s0, s1, s2 = (correlate_constant(ones, kernel * offsets**p) for p in range(3))
        a, b = (factor.astype(np.float32)[:, None] for factor in _local_linear_factors(s0, s1, s2))
        raw = parts[0] + spectrum * per_row
        smoothed = parts[0] + a * parts[1] + b * parts[2]
        images = np.empty((2, n_rows, n_a), dtype=np.float32)
        step = _rows_per_chunk(n_fft_a)
        padded = np.zeros((2, step, n_fft_a // 2 + 1), dtype=np.complex64)
        for start in range(0, n_rows, step):
            rows = slice(start, min(start + step, n_rows))
            padded[0, : rows.stop - start, :n_bins] = raw[rows]
            padded[1, : rows.stop - start, :n_bins] = smoothed[rows]
            images[:, rows] = np.fft.irfft(padded[:, : rows.stop - start], n=n_fft_a, axis=-1)[:, :, :n_a]
        return images[0], images[1]


def _surface(rows: np.ndarray, cols: np.ndarray, n_rows: int, n_a: int) -> tuple[np.ndarray, np.ndarray]:
    """Legendre bases of degree ≤ SURFACE_DEGREE in each coordinate scaled to [-1, 1]."""
    v = 2.0 * rows / max(n_rows - 1, 1) - 1.0
    u = 2.0 * cols / max(n_a - 1, 1) - 1.0
    return legendre.legvander(v, SURFACE_DEGREE), legendre.legvander(u, SURFACE_DEGREE)


def _segment_levels(binned: np.ndarray, low: np.ndarray, up: np.ndarray) -> np.ndarray:
    """Median in-order level of each order on each binned row (pixels ≥ 1 px inside the edges)."""
    n_rows, n_a = binned.shape
    levels = np.zeros(low.shape)
    row_start = np.arange(n_rows)[:, None] * n_a
    for k in range(low.shape[0]):
        cols, used = _gap_columns(low[k] + 1.0, up[k] - 1.0, n_a)
        if cols.shape[1] == 0:
            continue
        values = np.where(used, np.take(binned, row_start + cols), np.nan)
        with np.errstate(all="ignore"):
            levels[k] = np.nan_to_num(bn.nanmedian(values, axis=1))
    return levels


def _robust_sigma(values: np.ndarray) -> tuple[float, float]:
    """Median and MAD-based σ of a non-empty 1-D array, which is overwritten."""
    centre = partition_median(values, overwrite=True)
    values -= centre
    np.abs(values, out=values)
    return centre, MAD_TO_SIGMA * partition_median(values, overwrite=True)


def _nonnegative_solve(gram: np.ndarray, rhs: np.ndarray, free: int) -> np.ndarray:
    """Minimise xᵀ·gram·x − 2·rhsᵀx with all but the last ``free`` coefficients non-negative
    (Lawson–Hanson active set on the normal equations; ``gram`` positive definite)."""
    n_coef = rhs.size
    bounded = np.arange(n_coef) < n_coef - free
    passive = ~bounded
    rejected = np.zeros(n_coef, dtype=bool)
    tolerance = 10.0 * n_coef * np.finfo(float).eps * max(float(np.abs(rhs).max(initial=0.0)), 1.0)

    def solve(chosen: np.ndarray) -> np.ndarray:
        z = np.zeros(n_coef)
        if chosen.any():
            z[chosen] = np.linalg.solve(gram[np.ix_(chosen, chosen)], rhs[chosen])
        return z

    x = solve(passive)
    for _ in range(10 * n_coef):
        gradient = rhs - gram @ x
        candidates = bounded & ~passive & ~rejected & (gradient > tolerance)
        if not candidates.any():
            break
        entering = int(np.argmax(np.where(candidates, gradient, -np.inf)))
        passive[entering] = True
        z = solve(passive)
        if z[entering] <= 0.0:
            passive[entering] = False
            rejected[entering] = True
            continue
        while np.any(blocking := passive & bounded & (z <= 0.0)):
            ratios = x[blocking] / (x[blocking] - z[blocking])
            x += np.min(ratios) * (z - x)
            x[np.flatnonzero(blocking)[np.argmin(ratios)]] = 0.0
            passive &= ~(bounded & (x <= 0.0))
            x[~passive] = 0.0
            z = solve(passive)
        x = z
        rejected[:] = False
    return x


def _normal_equations(design: np.ndarray, data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DᵀD and Dᵀy, ``BLAS_ROWS`` rows of the design at a time."""
    n_coef = design.shape[1]
    gram, rhs = np.zeros((n_coef, n_coef)), np.zeros(n_coef)
    for start in range(0, design.shape[0], BLAS_ROWS):
        part = design[start : start + BLAS_ROWS]
        gram += part.T @ part
        rhs += part.T @ data[start : start + BLAS_ROWS]
    return gram, rhs


def _robust_nnls(design: np.ndarray, data: np.ndarray, free: int) -> np.ndarray:
    """Least squares with all but the last ``free`` coefficients non-negative, clipping outliers.

    Solved through the normal equations of the unit-norm columns, so the size of the data barely
    matters; after the first pass they are only updated for the samples clipped or restored.
    """
    n_coef = design.shape[1]
    keep = np.isfinite(data)
    gram, rhs = _normal_equations(design, np.where(keep, data, 0.0))
    norm = np.sqrt(np.diag(gram))
    scale = np.where(norm > 0, norm, 1.0)
    doubled = np.r_[np.ones(n_coef - free), np.full(free, 2.0)]
    if not keep.all():
        gram -= _normal_equations(design[~keep], np.zeros(np.count_nonzero(~keep)))[0]
    for _ in range(3):
        unit_gram = gram / np.outer(scale, scale)
        unit_gram[np.diag_indices(n_coef)] += 1e-9 * float(doubled @ np.diag(unit_gram))
        coef = _nonnegative_solve(unit_gram, rhs / scale, free) / scale
        residual = data - np.einsum("ij,j->i", design, coef)
        _, sigma = _robust_sigma(residual[keep])
        new_keep = np.isfinite(data) & (np.abs(residual) <= CLIP_SIGMA * max(sigma, 1e-12))
        if np.array_equal(new_keep, keep):
            break
        for changed, sign in ((new_keep & ~keep, 1.0), (keep & ~new_keep, -1.0)):
            part_gram, part_rhs = _normal_equations(design[changed], data[changed])
            gram += sign * part_gram
            rhs += sign * part_rhs
        keep = new_keep
    return coef


def _bspline_basis(knots: np.ndarray, degree: int, points: np.ndarray) -> np.ndarray:
    """Every B-spline of ``degree`` on ``knots`` (rows × knots, clamped) at ``points`` (rows × points):
    rows × points × splines, by the Cox–de Boor recursion; the last knot belongs to the last span."""
    t = knots[:, None, :]
    z = points[:, :, None]
    basis = ((t[..., :-1] <= z) & (z < t[..., 1:])).astype(np.float64)
    basis[..., knots.shape[1] - degree - 2] += points == knots[:, -1:]
    for p in range(1, degree + 1):
        span = t[..., p:] - t[..., :-p]
        inverse = np.divide(1.0, span, out=np.zeros_like(span), where=span > 0)
        scaled = basis * inverse
        basis = (z - t[..., : -p - 1]) * scaled[..., :-1] + (t[..., p + 1 :] - z) * scaled[..., 1:]
    return basis


def _interpolating_pieces(x: np.ndarray, y: np.ndarray, degree: int) -> tuple[np.ndarray, np.ndarray]:
    """Interpolating splines of ``degree`` through (``x``, ``y``) (rows × points, rising) with not-a-knot
    knots, as :func:`scipy.interpolate.make_interp_spline` builds them: left end of each piece (rows ×
    pieces) and its polynomial in powers of the distance from there (rows × pieces × degree + 1), fitted
    to degree + 1 values inside the piece computed by de Boor's algorithm."""
    half = (degree + 1) // 2 if degree % 2 else degree // 2
    sites = x if degree % 2 else 0.5 * (x[:, 1:] + x[:, :-1])
    inner = sites[:, half : sites.shape[1] - half]
    knots = np.hstack([np.repeat(x[:, :1], degree + 1, axis=1), inner, np.repeat(x[:, -1:], degree + 1, axis=1)])
    coef = np.linalg.solve(_bspline_basis(knots, degree, x), y[:, :, None])[:, :, 0]
    span = degree + np.arange(x.shape[1] - degree)
    starts = knots[:, span]
    width = knots[:, span + 1] - starts
    fractions = (np.arange(degree + 1) + 0.5) / (degree + 1)
    points = starts[:, :, None] + width[:, :, None] * fractions
    values = [coef[:, span - degree + j, None] for j in range(degree + 1)]
    for level in range(1, degree + 1):
        for j in range(degree, level - 1, -1):
            left = knots[:, span - degree + j, None]
            alpha = (points - left) / (knots[:, span + 1 + j - level, None] - left)
            values[j] = (1.0 - alpha) * values[j - 1] + alpha * values[j]
    powers = np.einsum("rpk,qk->rpq", values[degree], np.linalg.inv(np.vander(fractions, increasing=True)))
    return starts, powers / width[:, :, None] ** np.arange(degree + 1)


def _interpolate_across(positions: np.ndarray, levels: np.ndarray, n_a: int, degree: int) -> np.ndarray:
    """Per row: spline of ``degree`` through the (position, level) gap samples, constant beyond the
    outermost samples; rows with no sample get NaN. Rows are grouped by their number of samples, and every
    column is read off its spline piece, laid out run by run with ``np.repeat`` (then a chunk of rows at a
    time)."""
    n_rows = positions.shape[1]
    usable = np.isfinite(positions) & np.isfinite(levels)
    previous = np.where(usable, positions, -np.inf)
    previous = np.vstack([np.full((1, n_rows), -np.inf), np.maximum.accumulate(previous, axis=0)[:-1]])
    usable &= ~(positions - previous <= 0.5)
    n_points = usable.sum(axis=0)
    order = np.argsort(~usable, axis=0, kind="stable")
    x = np.take_along_axis(positions, order, axis=0).T
    y = np.take_along_axis(levels, order, axis=0).T
    n_pieces = max(int(n_points.max(initial=0)) - 1, 1)
    n_powers = degree + 1
    powers = np.zeros((n_rows, n_pieces, n_powers))
    powers[:, 0, 0] = np.where(n_points > 0, y[:, 0], np.nan)
    starts = np.full((n_rows, n_pieces), np.inf)
    starts[:, 0] = np.where(n_points > 0, x[:, 0], 0.0)
    for count in np.unique(n_points[n_points > 1]):
        rows = np.flatnonzero(n_points == count)
        k = min(degree, int(count) - 1)
        row_starts, row_powers = _interpolating_pieces(x[rows, :count], y[rows, :count], k)
        starts[rows, : row_starts.shape[1]] = row_starts
        powers[rows, : row_powers.shape[1], : k + 1] = row_powers
    last = np.where(n_points > 0, x[np.arange(n_rows), np.maximum(n_points - 1, 0)], 0.0)
    cuts = np.clip(np.ceil(starts[:, 1:]), 0, n_a)
    runs = np.diff(np.hstack([np.zeros((n_rows, 1)), cuts, np.full((n_rows, 1), n_a)]), axis=1).astype(np.int64)
    piece = np.repeat(np.arange(n_rows * n_pieces, dtype=np.int32), runs.ravel()).reshape(n_rows, n_a)
    powers = powers.reshape(-1, n_powers)
    a = np.arange(n_a, dtype=np.float64)
    out = np.empty((n_rows, n_a))
    step = _rows_per_chunk(n_a)
    for start in range(0, n_rows, step):
        rows = slice(start, start + step)
        distance = np.minimum(a, last[rows, None])
        distance -= np.take(starts, piece[rows])
        np.maximum(distance, 0.0, out=distance)
        chunk = out[rows]
        np.take(powers[:, -1], piece[rows], out=chunk, mode="clip")
        for p in range(n_powers - 2, -1, -1):
            chunk *= distance
            chunk += np.take(powers[:, p], piece[rows])
    return out


def _to_rows(binned: np.ndarray, block: int, n_b: int) -> np.ndarray:
    """Linear interpolation along B from block centres back to every row, as float32. Rows between two
    centres follow the same pattern in every block, so they are written a chunk of blocks at a time with
    broadcasting."""
    values = binned.astype(np.float32)
    n_bins, n_a = values.shape
    out = np.empty((n_b, n_a), dtype=np.float32)
    if n_bins == 1:
        out[:] = values
        return out
    first_centre = 0.5 * block - 0.5
    first = int(np.ceil(first_centre))
    n_spans = min(n_bins - 1, max((n_b - first) // block, 0))
    fraction = ((first + np.arange(block) - first_centre) / block).astype(np.float32)[None, :, None]
    step = _rows_per_chunk(n_a * block)
    for span in range(0, n_spans, step):
        spans = slice(span, min(span + step, n_spans))
        n = spans.stop - spans.start
        between = out[first + span * block : first + spans.stop * block].reshape(n, block, n_a)
        np.multiply(values[span + 1 : spans.stop + 1, None, :] - values[spans, None, :], fraction, out=between)
        between += values[spans, None, :]
    rest = np.r_[0:first, first + n_spans * block : n_b]
    position = np.clip((rest - first_centre) / block, 0, n_bins - 1)
    below = np.minimum(np.floor(position).astype(np.int64), n_bins - 2)
    weight = (position - below).astype(np.float32)[:, None]
    out[rest] = values[below] + weight * (values[below + 1] - values[below])
    return out


def _fitted_mask(
    flat: np.ndarray, mask: np.ndarray | None, low: np.ndarray, up: np.ndarray, *, margin: float, outer: float
) -> np.ndarray:
    """Full-resolution map of the finite, unmasked gap pixels the model is fitted to."""
    n_b, n_a = flat.shape
    gaps = _gaps(low, up, n_a, margin=margin, outer=outer)
    fitted = _interval_mask(np.ceil(gaps.start), np.floor(gaps.end) + 1.0, n_a)
    step = _rows_per_chunk(n_a)
    for start in range(0, n_b, step):
        rows = slice(start, start + step)
        fitted[rows] &= np.isfinite(flat[rows])
        if mask is not None:
            fitted[rows] &= ~mask[rows]
    return fitted


def _order_light(binned: np.ndarray, low: np.ndarray, up: np.ndarray) -> np.ndarray:
    """The light inside the orders (zero between them): the binned image after a 5-px median across A
    (so a hot column cannot pose as a bright line) with masked pixels filled along B."""
    light = _median_across(binned, 5)
    if np.isnan(light).any():
        light = _fill_along_rows(light)
    inside = _interval_mask(np.ceil(low), np.floor(up) + 1.0, binned.shape[1])
    inside &= np.isfinite(light)
    np.copyto(light, np.float32(0.0), where=~inside)
    return light


@dataclass(frozen=True)
class _GapPixels:
    """The finite pixels of each gap on the binned image, gap by gap: their columns on every row (rows ×
    width, clipped to the image) and which of them are real."""

    cols: list[np.ndarray]
    used: list[np.ndarray]

    @classmethod
    def of(cls, binned: np.ndarray, gaps: _Gaps) -> _GapPixels:
        """The gap pixels of ``binned``."""
        n_rows, n_a = binned.shape
        row_start = np.arange(n_rows)[:, None] * n_a
        cols, used = [], []
        for g in range(gaps.start.shape[0]):
            gap_cols, gap_used = _gap_columns(gaps.start[g], gaps.end[g], n_a)
            gap_used &= np.isfinite(np.take(binned, row_start + gap_cols))
            cols.append(gap_cols)
            used.append(gap_used)
        return cls(cols, used)

    def counts(self) -> np.ndarray:
        """Number of pixels in each gap."""
        return np.array([np.count_nonzero(used) for used in self.used])

    def fit_samples(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Row, column and gap of at most about ``MAX_FIT_SAMPLES`` pixels, every gap thinned by its own
        stride (along its rows) so that narrow gaps keep all their pixels and wide ones do not dominate
        the fit (or its time)."""
        counts = self.counts()
        n_gaps = int(np.flatnonzero(counts)[-1]) + 1 if counts.any() else 1
        parts = []
        for g, (cols, used) in enumerate(zip(self.cols, self.used, strict=True)):
            stride = max(int(np.ceil(counts[g] / (MAX_FIT_SAMPLES / n_gaps))), 1)
            flat = np.flatnonzero(used)[::stride]
            parts.append((flat // max(cols.shape[1], 1), cols.ravel()[flat], np.full(flat.size, g)))
        return tuple(np.concatenate([part[i] for part in parts]) for i in range(3))


def _wing_term(
    gaps: _Gaps, order_level: np.ndarray, side: int, gap: np.ndarray | int, rows: np.ndarray, cols: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PSF-wing term of the pixels (``gap``, ``rows``, ``cols``; broadcast together) for the order below
    (``side`` 0) or above (1): which pixels lie within ``WING_BIN_EDGES`` of that order's edge (flat
    indices), the bin holding their distance and the order's level there."""
    zero = np.zeros((1, order_level.shape[1]))
    if side == 0:
        distance = cols - gaps.edge_below[gap, rows]
        level = np.vstack([zero, order_level])[gap, rows]
    else:
        distance = gaps.edge_above[gap, rows] - cols
        level = np.vstack([order_level, zero])[gap, rows]
    near = np.flatnonzero((distance >= WING_BIN_EDGES[0]) & (distance < WING_BIN_EDGES[-1]))
    bins = np.searchsorted(WING_BIN_EDGES, distance.ravel()[near], side="right") - 1
    return near, bins, np.broadcast_to(level, distance.shape).ravel()[near]


def _gap_medians(
    residual: np.ndarray, pixels: _GapPixels, gaps: _Gaps, order_level: np.ndarray, wing_profile: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Median of ``residual`` less the PSF wings of ``wing_profile`` over the pixels of each (gap, binned
    row), and √count as its weight. The wings only reach the first and last few pixels of a gap's rows."""
    n_rows, n_a = residual.shape
    rows = np.arange(n_rows)[:, None]
    reach = int(np.ceil(WING_BIN_EDGES[-1]))
    levels = np.full((len(pixels.cols), n_rows), np.nan)
    weights = np.zeros((len(pixels.cols), n_rows))
    for g, (cols, used) in enumerate(zip(pixels.cols, pixels.used, strict=True)):
        if not used.any():
            continue
        values = np.take(residual, rows * n_a + cols)
        if wing_profile.any():
            last = np.clip(np.floor(gaps.end[g]), -1, n_a - 1) - cols[:, 0]
            for side, window in ((0, slice(0, reach)), (1, slice(max(int(last.min()) - reach + 1, 0), None))):
                near, bins, level = _wing_term(gaps, order_level, side, g, rows, cols[:, window])
                row, col = np.divmod(near, cols[:, window].shape[1])
                values[row, window.start + col] -= wing_profile[bins] * level
        values[~used] = np.nan
        with np.errstate(all="ignore"):
            levels[g] = bn.nanmedian(values, axis=1)
        weights[g] = np.sqrt(np.count_nonzero(used, axis=1))
    return levels, weights


def _smooth_levels(levels: np.ndarray, weights: np.ndarray, sigma: float) -> np.ndarray:
    """Smooth each gap's levels along B, drop the blocks more than ``CLIP_SIGMA`` off and smooth again."""
    smoothed = local_linear_smooth(levels, weights, sigma)
    deviation = np.abs(levels - smoothed)
    spread = MAD_TO_SIGMA * float(np.nanmedian(deviation[weights > 0])) if np.any(weights > 0) else 0.0
    kept = np.where(deviation <= CLIP_SIGMA * max(spread, 1e-12), weights, 0.0)
    return local_linear_smooth(levels, kept, sigma)


def _residual_statistics(data: np.ndarray, model: np.ndarray, fitted: np.ndarray) -> tuple[float, float]:
    """Median and MAD-based σ of data − model on the fitted pixels, gathered a chunk of rows at a time."""
    residual = np.empty(np.count_nonzero(fitted), dtype=np.float32)
    if residual.size == 0:
        return float("nan"), float("nan")
    filled = 0
    step = _rows_per_chunk(data.shape[1])
    for start in range(0, data.shape[0], step):
        rows = slice(start, start + step)
        part = (data[rows] - model[rows])[fitted[rows]]
        residual[filled : filled + part.size] = part
        filled += part.size
    return _robust_sigma(residual)


def _design(
    rows: np.ndarray, cols: np.ndarray, gap: np.ndarray, gaps: _Gaps, order_level: np.ndarray, spill: _Spill
) -> np.ndarray:
    """Design matrix of the joint fit on the binned pixels (``rows``, ``cols``) of gaps ``gap``: PSF wings,
    spill, surface."""
    n_rows, n_a = spill.shape
    n_wing, n_spill = WING_BIN_EDGES.size - 1, len(SPILL_SIGMAS)
    spill_terms = spill.at(rows, cols)
    design = np.empty((rows.size, n_wing + 2 * n_spill + (SURFACE_DEGREE + 1) ** 2))
    design[:, :n_wing] = 0.0
    for side in (0, 1):
        near, bins, level = _wing_term(gaps, order_level, side, gap, rows, cols)
        design[near, bins] += level
    design[:, n_wing : n_wing + 2 * n_spill] = spill_terms
    along, across = _surface(rows.astype(np.float64), cols.astype(np.float64), n_rows, n_a)
    surface = design[:, n_wing + 2 * n_spill :].reshape(rows.size, SURFACE_DEGREE + 1, SURFACE_DEGREE + 1)
    np.multiply(along[:, :, None], across[:, None, :], out=surface)
    return design


def fit_scattered_light(
    flat_ba: np.ndarray,
    bounds: OrderBounds,
    *,
    bspline_deg: int = 2,
    gaussian_blur_sigma: float = 65,
    margin: float | None = None,
    mask_ba: np.ndarray | None = None,
    block: int = 8,
    outer_band: float = 25.0,
) -> BackgroundModel:
    """Model the scattered light of a flat (BA orientation) from the pixels between its orders.

    ``margin`` (px) is kept free beside every order edge (default: :func:`default_margin`);
    ``mask_ba`` marks pixels to ignore; ``block`` rows are median-combined before fitting;
    ``outer_band`` (px) is the width used beyond the outermost orders. Without any usable gap
    pixel the model is zero. Only the model and the map of fitted pixels are full-frame arrays: the
    fit works on the binned image.
    """
    flat = np.asarray(flat_ba, dtype=np.float32)
    mask = None if mask_ba is None else np.asarray(mask_ba, dtype=bool)
    n_b, n_a = flat.shape
    margin = default_margin(bounds) if margin is None else float(margin)
    low, up = _sorted_edges(bounds)

    binned = _bin_rows(flat, mask, block)
    n_rows = binned.shape[0]
    low_b, up_b = _bin_geometry(low, block), _bin_geometry(up, block)
    gaps = _gaps(low_b, up_b, n_a, margin=margin, outer=outer_band)
    pixels = _GapPixels.of(binned, gaps)
    n_wing, n_spill = WING_BIN_EDGES.size - 1, len(SPILL_SIGMAS)
    if not pixels.counts().any():
        zeros = np.zeros(n_wing), np.zeros((2, n_spill))
        return BackgroundModel(
            np.zeros((n_b, n_a), np.float32),
            _fitted_mask(flat, mask, low, up, margin=margin, outer=outer_band),
            float("nan"),
            float("nan"),
            zeros[0],
            WING_BIN_EDGES.copy(),
            zeros[1],
            np.asarray(SPILL_SIGMAS),
        )
    order_level = _segment_levels(binned, low_b, up_b)
    sigma_rows = gaussian_blur_sigma / block
    spill = _Spill.of(_order_light(binned, low_b, up_b), block, sigma_rows)

    rows, cols, gap = pixels.fit_samples()
    order = _pixel_order(rows, cols, n_a)
    rows, cols, gap = rows[order], cols[order], gap[order]
    design = _design(rows, cols, gap, gaps, order_level, spill)
    coef = _robust_nnls(design, np.take(binned, rows * n_a + cols).astype(np.float64), free=(SURFACE_DEGREE + 1) ** 2)
    del design
    wing_coef, spill_coef = coef[:n_wing], coef[n_wing : n_wing + 2 * n_spill].reshape(2, n_spill)
    surface_coef = coef[n_wing + 2 * n_spill :].reshape(SURFACE_DEGREE + 1, SURFACE_DEGREE + 1)
    along, across = _surface(np.arange(n_rows, dtype=np.float64), np.arange(n_a, dtype=np.float64), n_rows, n_a)
    smooth_part = np.einsum("ri,ai->ra", along @ surface_coef, across)
    raw_spill, smoothed_spill = spill.weighted(spill_coef, sigma_rows)

    residual = binned - smooth_part
    residual -= raw_spill
    levels, weights = _gap_medians(residual, pixels, gaps, order_level, wing_coef)
    del residual
    smoothed = _smooth_levels(levels, weights, sigma_rows)
    positions = 0.5 * (np.clip(np.ceil(gaps.start), 0, n_a - 1) + np.clip(np.floor(gaps.end), 0, n_a - 1))
    positions = np.where(np.floor(gaps.end) >= np.ceil(gaps.start), positions, np.nan)
    smooth_part += smoothed_spill
    del raw_spill, smoothed_spill
    smooth_part += np.nan_to_num(_interpolate_across(positions, smoothed, n_a, bspline_deg), copy=False)
    model = _to_rows(smooth_part, block, n_b)
    del smooth_part

    fitted = _fitted_mask(flat, mask, low, up, margin=margin, outer=outer_band)
    centre, spread_sigma = _residual_statistics(flat, model, fitted)
    return BackgroundModel(
        model=model,
        fitted_pixels=fitted,
        residual_median=centre,
        residual_sigma=spread_sigma,
        wing_profile=wing_coef,
        wing_bin_edges=WING_BIN_EDGES.copy(),
        spill_weights=spill_coef,
        spill_sigmas=np.asarray(SPILL_SIGMAS),
    )
