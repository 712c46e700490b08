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
"""

from __future__ import annotations

from dataclasses import dataclass

import bottleneck as bn
import numpy as np
from numpy.polynomial import legendre
from scipy import fft as sfft
from scipy.interpolate import make_interp_spline
from scipy.ndimage import correlate1d
from scipy.optimize import nnls

from soxs_mflat.footprints import OrderBounds

MAD_TO_SIGMA = 1.4826
WING_BIN_EDGES = np.array([0.0, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0])
SPILL_SIGMAS = (4.0, 5.7, 8.0, 11.0, 16.0, 23.0, 32.0, 45.0, 64.0, 90.0, 128.0, 181.0, 256.0)
SURFACE_DEGREE = 2
CLIP_SIGMA = 5.0
MAX_FIT_SAMPLES = 60_000
FIT_CHUNK = 8192
"""Samples handled at once when building the normal equations of the fit."""
CHUNK_ROWS = 64
"""Rows of the full-resolution frame handled at once, which bounds the size of the temporaries."""


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


def _bin_rows(image: np.ndarray, mask: np.ndarray | None, block: int) -> np.ndarray:
    """Median of each block of ``block`` rows, ignoring non-finite and ``mask`` pixels; the last block
    may be short. Works through ``CHUNK_ROWS`` rows at a time, so the frame is never copied whole."""
    n_b, n_a = image.shape
    binned = np.empty((-(-n_b // block), n_a), dtype=np.float32)
    step = block * max(CHUNK_ROWS // block, 1)
    for start in range(0, n_b, step):
        stop = min(start + step, n_b)
        chunk = np.full((-(-(stop - start) // block) * block, n_a), np.nan, dtype=np.float32)
        chunk[: stop - start] = image[start:stop]
        chunk[~np.isfinite(chunk)] = np.nan
        if mask is not None:
            chunk[: stop - start][mask[start:stop]] = np.nan
        binned[start // block : start // block + chunk.shape[0] // block] = bn.nanmedian(chunk.reshape(-1, block, n_a), axis=1)
    return binned


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


def local_linear_smooth(values: np.ndarray, weights: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian local-linear regression along the last axis (zero weight = missing sample).

    ``weights`` may broadcast against ``values`` (one row for all), which saves recomputing its sums.
    Unlike a normalised convolution it has no bias at the ends or next to gaps where the data
    slope; where there are too few samples to fit a slope it falls back to the weighted mean.
    """
    half = max(int(np.ceil(3.0 * sigma)), 1)
    t = np.arange(-half, half + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (t / max(sigma, 1e-3)) ** 2)
    w = np.asarray(weights, dtype=np.float64)
    yw = np.where(w > 0, values, 0.0) * w
    s0 = correlate1d(w, kernel, axis=-1, mode="constant")
    s1 = correlate1d(w, kernel * t, axis=-1, mode="constant")
    s2 = correlate1d(w, kernel * t * t, axis=-1, mode="constant")
    t0 = correlate1d(yw, kernel, axis=-1, mode="constant")
    t1 = correlate1d(yw, kernel * t, axis=-1, mode="constant")
    del yw
    det = s0 * s2 - s1 * s1
    with np.errstate(invalid="ignore", divide="ignore"):
        linear = s2 * t0
        linear -= s1 * t1
        linear /= det
        mean = np.divide(t0, s0, out=t0)
    np.copyto(mean, np.nan, where=~(s0 > 0))
    np.copyto(linear, mean, where=~(det > 1e-3 * np.maximum(s0 * s2, 1e-300)))
    return linear


@dataclass(frozen=True)
class _Spill:
    """Fourier transforms of the order light (rows ``row_step`` px apart) for the spill terms: per row
    across A (the orders going on unchanged beyond the ends of the detector) and in 2-D, padded by
    4 × the widest Gaussian so that nothing wraps around (nothing beyond the detector)."""

    rows_spectrum: np.ndarray
    spectrum: np.ndarray
    shape: tuple[int, int]
    n_fft: tuple[int, int]
    row_step: int

    @classmethod
    def of(cls, light: np.ndarray, row_step: int) -> _Spill:
        """Transforms of ``light``."""
        n_rows, n_a = light.shape
        reach = 4 * max(SPILL_SIGMAS)
        n_fft_a = sfft.next_fast_len(int(n_a + reach), real=True)
        n_fft_b = sfft.next_fast_len(int(n_rows + reach / row_step))
        image = light.astype(np.float32)
        spectrum = sfft.rfft2(image, s=(n_fft_b, n_fft_a), workers=-1)
        rows_spectrum = sfft.rfft(image, n=n_fft_a, axis=1, workers=-1)
        return cls(rows_spectrum, spectrum, (n_rows, n_a), (n_fft_b, n_fft_a), row_step)

    def kernels(self, sigma: float) -> tuple[np.ndarray, np.ndarray]:
        """Transfer functions of a unit-area Gaussian of ``sigma`` px: across A only, and in 2-D."""
        n_fft_b, n_fft_a = self.n_fft
        across = np.exp(-2.0 * (np.pi * sigma * sfft.rfftfreq(n_fft_a)[None, :]) ** 2).astype(np.float32)
        along = np.exp(-2.0 * (np.pi * sigma / self.row_step * sfft.fftfreq(n_fft_b)[:, None]) ** 2).astype(np.float32)
        return across, along * across

    def images(self, across: np.ndarray, both: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The light convolved with the transfer functions ``across`` (per row) and ``both`` (2-D)."""
        n_rows, n_a = self.shape
        n_fft_b, n_fft_a = self.n_fft
        per_row = sfft.irfft(self.rows_spectrum * across, n=n_fft_a, axis=1, workers=-1)[:, :n_a]
        in_2d = sfft.irfft2(self.spectrum * both, s=(n_fft_b, n_fft_a), workers=-1)[:n_rows, :n_a]
        return per_row, in_2d

    def at(self, rows: np.ndarray, cols: np.ndarray, out: np.ndarray) -> None:
        """Fill ``out`` (samples × 2 n_sigmas) with the light convolved with each Gaussian of
        ``SPILL_SIGMAS`` at (``rows``, ``cols``): first across A only, then in 2-D. One image at a time."""
        n_spill = len(SPILL_SIGMAS)
        for j, sigma in enumerate(SPILL_SIGMAS):
            per_row, in_2d = self.images(*self.kernels(sigma))
            out[:, j] = per_row[rows, cols]
            out[:, n_spill + j] = in_2d[rows, cols]

    def weighted(self, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Σ weights × the light convolved with each Gaussian (row 0 across A only, row 1 in 2-D), in one
        transform each: the spill images of the fitted model."""
        across = both = 0.0
        for j, sigma in enumerate(SPILL_SIGMAS):
            kernel_across, kernel_both = self.kernels(sigma)
            across = across + weights[0, j] * kernel_across.astype(np.float64)
            both = both + weights[1, j] * kernel_both.astype(np.float64)
        return self.images(across, both)


def _surface_basis(rows: np.ndarray, cols: np.ndarray, n_rows: int, n_a: int) -> np.ndarray:
    """Legendre products of degree ≤ SURFACE_DEGREE in each coordinate scaled to [-1, 1]."""
    u = 2.0 * cols / max(n_a - 1, 1) - 1.0
    v = 2.0 * rows / max(n_rows - 1, 1) - 1.0
    return legendre.legvander2d(v, u, [SURFACE_DEGREE, SURFACE_DEGREE])


def _segment_levels(binned: np.ndarray, low: np.ndarray, up: np.ndarray) -> np.ndarray:
    """Median in-order level of each order on each binned row (pixels ≥ 1 px inside the edges)."""
    n_rows, n_a = binned.shape
    levels = np.zeros(low.shape)
    rows = np.arange(n_rows)
    for k in range(low.shape[0]):
        cols, used = _gap_columns(low[k] + 1.0, up[k] - 1.0, n_a)
        if cols.shape[1] == 0:
            continue
        values = np.where(used, binned[rows[:, None], cols], np.nan)
        with np.errstate(all="ignore"):
            levels[k] = np.nan_to_num(bn.nanmedian(values, axis=1))
    return levels


def _normal_equations(design: np.ndarray, data: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DᵀD and Dᵀy over the ``keep`` rows, built ``FIT_CHUNK`` rows at a time (no copy of the design)."""
    n_coef = design.shape[1]
    gram, rhs = np.zeros((n_coef, n_coef)), np.zeros(n_coef)
    for start in range(0, design.shape[0], FIT_CHUNK):
        rows = slice(start, start + FIT_CHUNK)
        part = design[rows][keep[rows]]
        gram += part.T @ part
        rhs += part.T @ data[rows][keep[rows]]
    return gram, rhs


def _robust_nnls(design: np.ndarray, data: np.ndarray, free: int) -> np.ndarray:
    """Least squares with all but the last ``free`` coefficients non-negative, clipping outliers.

    Solved through the normal equations (Cholesky) of the unit-norm columns, so the size of the data
    barely matters; each free coefficient is the difference of two non-negative ones.
    """
    n_coef = design.shape[1]
    norm = np.sqrt(np.einsum("ij,ij->j", design, design))
    scale = np.where(norm > 0, norm, 1.0)
    split = np.r_[np.arange(n_coef), np.arange(n_coef - free, n_coef)]
    factor = np.where(np.arange(split.size) < n_coef, 1.0, -1.0) / scale[split]
    keep = np.isfinite(data)
    for _ in range(3):
        gram, rhs = _normal_equations(design, data, keep)
        gram = gram[np.ix_(split, split)] * np.outer(factor, factor)
        gram += np.eye(split.size) * 1e-9 * np.trace(gram)
        chol = np.linalg.cholesky(gram)
        coef, _ = nnls(chol.T, np.linalg.solve(chol, rhs[split] * factor), maxiter=50 * split.size)
        merged = coef[:n_coef].copy()
        merged[n_coef - free :] -= coef[n_coef:]
        merged /= scale
        residual = data - design @ merged
        sigma = MAD_TO_SIGMA * float(np.median(np.abs(residual[keep] - np.median(residual[keep]))))
        new_keep = np.isfinite(data) & (np.abs(residual) <= CLIP_SIGMA * max(sigma, 1e-12))
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep
    return merged


def _interpolate_across(positions: np.ndarray, levels: np.ndarray, n_a: int, degree: int) -> np.ndarray:
    """Per row: spline of ``degree`` through the (position, level) gap samples, constant beyond the
    outermost samples; rows with no sample get NaN."""
    n_rows = positions.shape[1]
    a = np.arange(n_a, dtype=np.float64)
    out = np.full((n_rows, n_a), np.nan)
    for r in range(n_rows):
        ok = np.isfinite(positions[:, r]) & np.isfinite(levels[:, r])
        x, y = positions[ok, r], levels[ok, r]
        if x.size == 0:
            continue
        distinct = np.concatenate([[True], np.diff(x) > 0.5])
        x, y = x[distinct], y[distinct]
        k = min(degree, x.size - 1)
        out[r] = make_interp_spline(x, y, k=k)(np.clip(a, x[0], x[-1])) if k > 0 else y[0]
    return out


def _to_rows(binned: np.ndarray, block: int, n_b: int) -> np.ndarray:
    """Linear interpolation along B from block centres back to every row, as float32, ``CHUNK_ROWS``
    rows at a time so that no full-resolution float64 image is made."""
    out = np.empty((n_b, binned.shape[1]), dtype=np.float32)
    if binned.shape[0] == 1:
        out[:] = binned
        return out
    centres = (np.arange(binned.shape[0]) + 0.5) * block - 0.5
    rows = np.arange(n_b, dtype=np.float64)
    pos = np.clip(np.interp(rows, centres, np.arange(centres.size, dtype=np.float64)), 0, centres.size - 1)
    i0 = np.minimum(np.floor(pos).astype(np.int64), centres.size - 2)
    frac = (pos - i0)[:, None]
    for start in range(0, n_b, CHUNK_ROWS):
        part = slice(start, start + CHUNK_ROWS)
        out[part] = binned[i0[part]] * (1.0 - frac[part]) + binned[i0[part] + 1] * frac[part]
    return out


@dataclass(frozen=True)
class _GapSamples:
    """Gap pixels of the binned image: row, column, gap index, PSF-wing design rows and value."""

    rows: np.ndarray
    cols: np.ndarray
    gap: np.ndarray
    wings: np.ndarray
    values: np.ndarray


def _fitted_mask(
    flat: np.ndarray, mask: np.ndarray | None, low: np.ndarray, up: np.ndarray, *, margin: float, outer: float
) -> np.ndarray:
    """Full-resolution map of the finite, unmasked gap pixels the model is fitted to."""
    n_b, n_a = flat.shape
    fitted = np.zeros((n_b, n_a), dtype=bool)
    gaps = _gaps(low, up, n_a, margin=margin, outer=outer)
    rows = np.arange(n_b)[:, None]
    for g in range(gaps.start.shape[0]):
        cols, used = _gap_columns(gaps.start[g], gaps.end[g], n_a)
        fitted[np.broadcast_to(rows, cols.shape)[used], cols[used]] = True
    fitted &= np.isfinite(flat)
    if mask is not None:
        fitted &= ~mask
    return fitted


def _order_light(binned: np.ndarray, low: np.ndarray, up: np.ndarray) -> np.ndarray:
    """The light inside the orders (zero between them): the binned image after a 5-px median across A
    (so a hot column cannot pose as a bright line) with masked pixels filled along B."""
    n_rows, n_a = binned.shape
    a = np.arange(n_a, dtype=np.float64)[None, :]
    inside = np.zeros((n_rows, n_a), dtype=bool)
    for k in range(low.shape[0]):
        inside |= (a >= low[k][:, None]) & (a <= up[k][:, None])
    padded = np.pad(binned, ((0, 0), (2, 2)), constant_values=np.nan)
    light = np.where(inside, _fill_along_rows(bn.move_median(padded, 5, axis=1, min_count=1)[:, 4:]), 0.0)
    return np.where(np.isfinite(light), light, 0.0)


def _gap_samples(binned: np.ndarray, gaps: _Gaps, order_level: np.ndarray) -> _GapSamples:
    """Collect the gap pixels with, for each, its PSF-wing design row: the level of the order on
    each side, placed in the bin of ``WING_BIN_EDGES`` holding the distance to that order's edge."""
    n_rows, n_a = binned.shape
    level_below = np.vstack([np.zeros((1, n_rows)), order_level])
    level_above = np.vstack([order_level, np.zeros((1, n_rows))])
    n_wing = WING_BIN_EDGES.size - 1
    rows = np.arange(n_rows)[:, None]
    parts = []
    for g in range(gaps.start.shape[0]):
        cols, used = _gap_columns(gaps.start[g], gaps.end[g], n_a)
        r = np.broadcast_to(rows, cols.shape)[used]
        c = cols[used]
        wing = np.zeros((r.size, n_wing))
        for distance, level in ((c - gaps.edge_below[g][r], level_below[g][r]), (gaps.edge_above[g][r] - c, level_above[g][r])):
            index = np.searchsorted(WING_BIN_EDGES, distance, side="right") - 1
            near = np.isfinite(distance) & (index >= 0) & (index < n_wing)
            wing[np.flatnonzero(near), index[near]] += level[near]
        parts.append((r, c, np.full(r.size, g), wing))
    r_all, c_all, g_all = (np.concatenate([part[i] for part in parts]) for i in range(3))
    wing_all = np.concatenate([part[3] for part in parts])
    values = binned[r_all, c_all].astype(np.float64)
    keep = np.isfinite(values)
    return _GapSamples(r_all[keep], c_all[keep], g_all[keep], wing_all[keep], values[keep])


def _fit_subset(gap: np.ndarray) -> np.ndarray:
    """Indices of at most about ``MAX_FIT_SAMPLES`` samples, every gap thinned by its own stride so
    that narrow gaps keep all their pixels and wide ones do not dominate the fit (or its time)."""
    n_gaps = int(gap.max()) + 1 if gap.size else 1
    counts = np.bincount(gap, minlength=n_gaps)
    stride = np.maximum(np.ceil(counts / (MAX_FIT_SAMPLES / n_gaps)), 1).astype(np.int64)
    order = np.argsort(gap, kind="stable")
    rank = np.arange(gap.size) - np.repeat(np.cumsum(counts) - counts, counts)
    return np.sort(order[rank % stride[gap[order]] == 0])


def _gap_medians(samples: _GapSamples, residual: np.ndarray, n_gaps: int, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Median of ``residual`` over the samples of each (gap, binned row), and √count as its weight."""
    key = samples.gap * n_rows + samples.rows
    order = np.lexsort((residual, key))
    key_sorted, res_sorted = key[order], residual[order]
    starts = np.flatnonzero(np.r_[True, np.diff(key_sorted) > 0])
    counts = np.diff(np.r_[starts, key_sorted.size])
    levels = np.full(n_gaps * n_rows, np.nan)
    weights = np.zeros(n_gaps * n_rows)
    levels[key_sorted[starts]] = 0.5 * (res_sorted[starts + (counts - 1) // 2] + res_sorted[starts + counts // 2])
    weights[key_sorted[starts]] = np.sqrt(counts)
    return levels.reshape(n_gaps, n_rows), weights.reshape(n_gaps, n_rows)


def _smooth_levels(levels: np.ndarray, weights: np.ndarray, sigma: float) -> np.ndarray:
    """Smooth each gap's levels along B, drop the blocks more than ``CLIP_SIGMA`` off and smooth again."""
    smoothed = local_linear_smooth(levels, weights, sigma)
    deviation = np.abs(levels - smoothed)
    spread = MAD_TO_SIGMA * float(np.nanmedian(deviation[weights > 0])) if np.any(weights > 0) else 0.0
    kept = np.where(deviation <= CLIP_SIGMA * max(spread, 1e-12), weights, 0.0)
    return local_linear_smooth(levels, kept, sigma)


def _residual_statistics(data: np.ndarray, model: np.ndarray, fitted: np.ndarray) -> tuple[float, float]:
    """Median and MAD-based σ of data − model on the fitted pixels."""
    residual = data[fitted] - model[fitted]
    residual = residual[np.isfinite(residual)]
    if residual.size == 0:
        return float("nan"), float("nan")
    centre = float(np.median(residual))
    return centre, MAD_TO_SIGMA * float(np.median(np.abs(residual - centre)))


def _design(samples: _GapSamples, subset: np.ndarray, spill: _Spill) -> np.ndarray:
    """Design matrix of the joint fit on the ``subset`` of the gap samples: PSF wings, spill, surface."""
    n_rows, n_a = spill.shape
    n_wing, n_spill = WING_BIN_EDGES.size - 1, len(SPILL_SIGMAS)
    rows, cols = samples.rows[subset], samples.cols[subset]
    design = np.empty((subset.size, n_wing + 2 * n_spill + (SURFACE_DEGREE + 1) ** 2))
    design[:, :n_wing] = samples.wings[subset]
    spill.at(rows, cols, design[:, n_wing : n_wing + 2 * n_spill])
    design[:, n_wing + 2 * n_spill :] = _surface_basis(rows.astype(np.float64), cols.astype(np.float64), n_rows, n_a)
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
    samples = _gap_samples(binned, gaps, _segment_levels(binned, low_b, up_b))
    n_wing, n_spill = WING_BIN_EDGES.size - 1, len(SPILL_SIGMAS)
    if samples.values.size == 0:
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
    spill = _Spill.of(_order_light(binned, low_b, up_b), block)

    subset = _fit_subset(samples.gap)
    coef = _robust_nnls(_design(samples, subset, spill), samples.values[subset], free=(SURFACE_DEGREE + 1) ** 2)
    wing_coef, spill_coef = coef[:n_wing], coef[n_wing : n_wing + 2 * n_spill].reshape(2, n_spill)
    surface_coef = coef[n_wing + 2 * n_spill :].reshape(SURFACE_DEGREE + 1, SURFACE_DEGREE + 1)
    v = 2.0 * np.arange(n_rows) / max(n_rows - 1, 1) - 1.0
    u = 2.0 * np.arange(n_a) / max(n_a - 1, 1) - 1.0
    extended, spread = spill.weighted(spill_coef)
    smooth_part = legendre.leggrid2d(v, u, surface_coef)
    smooth_part += spread
    del spread

    at_samples = smooth_part[samples.rows, samples.cols] + extended[samples.rows, samples.cols]
    residual = samples.values - samples.wings @ wing_coef - at_samples
    levels, weights = _gap_medians(samples, residual, gaps.start.shape[0], n_rows)
    sigma_rows = gaussian_blur_sigma / block
    smoothed = _smooth_levels(levels, weights, sigma_rows)
    positions = 0.5 * (np.clip(np.ceil(gaps.start), 0, n_a - 1) + np.clip(np.floor(gaps.end), 0, n_a - 1))
    positions = np.where(np.floor(gaps.end) >= np.ceil(gaps.start), positions, np.nan)
    smooth_part += local_linear_smooth(extended.T, np.ones((1, n_rows)), sigma_rows).T
    del extended
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
