"""Scattered light between the orders: fit a model from the gaps and carry it under the orders.

Everything runs in BA orientation (rows along the orders, columns across them), on the image
median-binned by blocks of rows (robust to cosmic rays and hot pixels, and fast):

1. **Gap pixels.** Every inter-order gap, and a band beside the outermost orders, is cut at the
   fitted edges less a margin; in narrow gaps the margin shrinks so that a gap is never empty.
2. **Joint fit on the gap pixels** (non-negative least squares, outliers clipped):

   * *PSF wings*: each edge's light leaking into the gap, a free profile in distance from the
     edge (px bins) scaled by the neighbouring order's level. It belongs to the orders, so it is
     fitted but not part of the model; it is what makes narrow gaps usable.
   * *Spill*: the order light convolved across A with Gaussians of 4–256 px, with non-negative
     weights. It carries the scattered light's peaks under the bright orders, which no smooth
     curve through the gaps can see.
   * a smooth low-order surface for stray light not tied to the orders.

3. **Gap residuals.** What the fit leaves in each gap (per block, median) is smoothed along B
   with a Gaussian of ``gaussian_blur_sigma`` px — a local-linear regression, unbiased up to the
   detector ends — and interpolated across A with a spline of degree ``bspline_deg`` through the
   gaps (one knot per gap), so the model passes through the measured gap levels.
4. The spill and surface terms are smoothed along B the same way and added; the result is
   interpolated back to every row.
"""

from __future__ import annotations

from dataclasses import dataclass

import bottleneck as bn
import numpy as np
from numpy.polynomial import legendre
from scipy.interpolate import make_interp_spline
from scipy.ndimage import correlate1d
from scipy.optimize import nnls

from soxs_mflat.footprints import OrderBounds

MAD_TO_SIGMA = 1.4826
WING_BIN_EDGES = np.array([0.0, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0])
SPILL_SIGMAS = (8.0, 11.0, 16.0, 23.0, 32.0, 45.0, 64.0, 90.0, 128.0, 181.0, 256.0)
SURFACE_DEGREE = 2
CLIP_SIGMA = 5.0


@dataclass(frozen=True)
class BackgroundModel:
    """Fitted scattered light (BA orientation, units of the flat) and how well it fits the gaps.

    ``fitted_pixels`` marks the gap pixels the model was fitted to. ``residual_median`` and
    ``residual_sigma`` (MAD-based) describe data − model on those pixels, PSF wings removed;
    ``wing_profile`` is the fitted edge leakage per distance bin (fraction of the order level) with
    ``wing_bin_edges`` in px; ``spill_weights`` are the fitted Gaussian spill weights per width in
    ``spill_sigmas`` (px).
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
    """Gap boundaries (pixel centres strictly inside ``start``..``end``) on a set of rows, with the
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
    """Columns (rows × width) of the pixel centres strictly inside ``start``..``end``, and which are real."""
    first = np.floor(start) + 1.0
    last = np.ceil(end) - 1.0
    first = np.clip(first, 0, n_a)
    last = np.clip(last, -1, n_a - 1)
    width = int(max(np.max(last - first + 1.0, initial=0.0), 0.0))
    cols = first[:, None].astype(np.int64) + np.arange(width)[None, :]
    used = cols <= last[:, None]
    return np.clip(cols, 0, n_a - 1), used


def _bin_rows(image: np.ndarray, block: int) -> np.ndarray:
    """Median of each block of ``block`` rows (NaN ignored); the last block may be short."""
    n_b, n_a = image.shape
    n_bins = -(-n_b // block)
    padded = np.full((n_bins * block, n_a), np.nan, dtype=np.float32)
    padded[:n_b] = image
    return bn.nanmedian(padded.reshape(n_bins, block, n_a), axis=1)


def _bin_geometry(values: np.ndarray, block: int) -> np.ndarray:
    """Mean of each block of ``block`` rows of a (n_orders, n_b) trace array."""
    n_k, n_b = values.shape
    n_bins = -(-n_b // block)
    padded = np.full((n_k, n_bins * block), np.nan)
    padded[:, :n_b] = values
    return np.nanmean(padded.reshape(n_k, n_bins, block), axis=2)


def local_linear_smooth(values: np.ndarray, weights: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian local-linear regression along the last axis (zero weight = missing sample).

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
    det = s0 * s2 - s1 * s1
    with np.errstate(invalid="ignore", divide="ignore"):
        linear = (s2 * t0 - s1 * t1) / det
        mean = t0 / s0
    stable = det > 1e-3 * np.maximum(s0 * s2, 1e-300)
    return np.where(stable, linear, np.where(s0 > 0, mean, np.nan))


def _spill_features(light: np.ndarray, sigmas: tuple[float, ...]) -> np.ndarray:
    """``light`` convolved across A (axis 1) with unit-area Gaussians, zero beyond the detector."""
    n_a = light.shape[1]
    n_fft = 1 << int(np.ceil(np.log2(n_a + 4 * max(sigmas))))
    spectrum = np.fft.rfft(light, n=n_fft, axis=1)
    freq = np.fft.rfftfreq(n_fft)
    features = np.empty((len(sigmas), *light.shape), dtype=np.float32)
    for j, sigma in enumerate(sigmas):
        transfer = np.exp(-2.0 * (np.pi * sigma * freq) ** 2)
        features[j] = np.fft.irfft(spectrum * transfer, n=n_fft, axis=1)[:, :n_a]
    return features


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


def _robust_nnls(design: np.ndarray, data: np.ndarray, free: int) -> tuple[np.ndarray, np.ndarray]:
    """Least squares with all but the last ``free`` coefficients non-negative, clipping outliers.

    Solved through the normal equations (Cholesky), so the size of the data barely matters.
    Returns the coefficients and the mask of samples kept.
    """
    n_coef = design.shape[1]
    norm = np.sqrt(np.sum(design * design, axis=0))
    scale = np.where(norm > 0, norm, 1.0)
    x = design / scale
    x_split = np.hstack([x, -x[:, n_coef - free :]]) if free else x
    keep = np.isfinite(data)
    coef = np.zeros(x_split.shape[1])
    for _ in range(3):
        xk = x_split[keep]
        gram = xk.T @ xk
        gram += np.eye(gram.shape[0]) * 1e-9 * np.trace(gram)
        chol = np.linalg.cholesky(gram)
        rhs = np.linalg.solve(chol, xk.T @ data[keep])
        coef, _ = nnls(chol.T, rhs, maxiter=50 * gram.shape[0])
        residual = data - x_split @ coef
        sigma = MAD_TO_SIGMA * float(np.median(np.abs(residual[keep] - np.median(residual[keep]))))
        new_keep = np.isfinite(data) & (np.abs(residual) <= CLIP_SIGMA * max(sigma, 1e-12))
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep
    merged = coef[:n_coef].copy()
    if free:
        merged[n_coef - free :] -= coef[n_coef:]
    return merged / scale, keep


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
    """Linear interpolation along B from block centres back to every row."""
    centres = (np.arange(binned.shape[0]) + 0.5) * block - 0.5
    rows = np.arange(n_b, dtype=np.float64)
    if binned.shape[0] == 1:
        return np.repeat(binned, n_b, axis=0)
    pos = np.clip(np.interp(rows, centres, np.arange(centres.size, dtype=np.float64)), 0, centres.size - 1)
    i0 = np.minimum(np.floor(pos).astype(np.int64), centres.size - 2)
    frac = (pos - i0)[:, None]
    return binned[i0] * (1.0 - frac) + binned[i0 + 1] * frac


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
    ``outer_band`` (px) is the width used beyond the outermost orders.
    """
    flat = np.asarray(flat_ba, dtype=np.float32)
    n_b, n_a = flat.shape
    data = np.where(np.isfinite(flat), flat, np.nan).astype(np.float32)
    if mask_ba is not None:
        data[np.asarray(mask_ba, dtype=bool)] = np.nan
    margin = default_margin(bounds) if margin is None else float(margin)
    low, up = _sorted_edges(bounds)

    fitted = np.zeros((n_b, n_a), dtype=bool)
    full = _gaps(low, up, n_a, margin=margin, outer=outer_band)
    all_rows = np.arange(n_b)
    for g in range(full.start.shape[0]):
        cols, used = _gap_columns(full.start[g], full.end[g], n_a)
        fitted[np.broadcast_to(all_rows[:, None], cols.shape)[used], cols[used]] = True

    binned = _bin_rows(data, block)
    n_rows = binned.shape[0]
    low_b, up_b = _bin_geometry(low, block), _bin_geometry(up, block)
    gaps = _gaps(low_b, up_b, n_a, margin=margin, outer=outer_band)
    order_level = _segment_levels(binned, low_b, up_b)
    level_below = np.vstack([np.zeros((1, n_rows)), order_level])
    level_above = np.vstack([order_level, np.zeros((1, n_rows))])

    a = np.arange(n_a, dtype=np.float64)[None, :]
    inside = np.zeros((n_rows, n_a), dtype=bool)
    for k in range(low_b.shape[0]):
        inside |= (a >= low_b[k][:, None]) & (a <= up_b[k][:, None])
    light = np.where(inside & np.isfinite(binned), binned, 0.0)
    spill = _spill_features(light, SPILL_SIGMAS)

    rows = np.arange(n_rows)
    sample_rows, sample_cols, sample_gap, wings = [], [], [], []
    n_wing = WING_BIN_EDGES.size - 1
    for g in range(gaps.start.shape[0]):
        cols, used = _gap_columns(gaps.start[g], gaps.end[g], n_a)
        r = np.broadcast_to(rows[:, None], cols.shape)[used]
        c = cols[used]
        d_below = c - gaps.edge_below[g][r]
        d_above = gaps.edge_above[g][r] - c
        wing = np.zeros((r.size, n_wing))
        for distance, level in ((d_below, level_below[g][r]), (d_above, level_above[g][r])):
            index = np.searchsorted(WING_BIN_EDGES, distance, side="right") - 1
            near = np.isfinite(distance) & (index >= 0) & (index < n_wing)
            wing[np.flatnonzero(near), index[near]] += level[near]
        sample_rows.append(r)
        sample_cols.append(c)
        sample_gap.append(np.full(r.size, g))
        wings.append(wing)
    r_all = np.concatenate(sample_rows)
    c_all = np.concatenate(sample_cols)
    g_all = np.concatenate(sample_gap)
    wing_all = np.concatenate(wings)
    y_all = binned[r_all, c_all].astype(np.float64)
    finite = np.isfinite(y_all)
    r_all, c_all, g_all, wing_all, y_all = r_all[finite], c_all[finite], g_all[finite], wing_all[finite], y_all[finite]

    surface = _surface_basis(r_all.astype(np.float64), c_all.astype(np.float64), n_rows, n_a)
    design = np.hstack([wing_all, spill[:, r_all, c_all].T.astype(np.float64), surface])
    coef, _ = _robust_nnls(design, y_all, free=surface.shape[1])
    wing_coef = coef[:n_wing]
    spill_coef = coef[n_wing : n_wing + len(SPILL_SIGMAS)]
    surface_coef = coef[n_wing + len(SPILL_SIGMAS) :].reshape(SURFACE_DEGREE + 1, SURFACE_DEGREE + 1)

    v = 2.0 * rows / max(n_rows - 1, 1) - 1.0
    u = 2.0 * np.arange(n_a) / max(n_a - 1, 1) - 1.0
    smooth_part = legendre.leggrid2d(v, u, surface_coef) + np.tensordot(spill_coef, spill, axes=1)

    gap_residual = y_all - wing_all @ wing_coef - smooth_part[r_all, c_all]
    n_gaps = gaps.start.shape[0]
    key = g_all * n_rows + r_all
    order = np.lexsort((gap_residual, key))
    key_sorted, res_sorted = key[order], gap_residual[order]
    starts = np.flatnonzero(np.r_[True, np.diff(key_sorted) > 0])
    counts = np.diff(np.r_[starts, key_sorted.size])
    medians = 0.5 * (res_sorted[starts + (counts - 1) // 2] + res_sorted[starts + counts // 2])
    levels = np.full(n_gaps * n_rows, np.nan)
    weights = np.zeros(n_gaps * n_rows)
    levels[key_sorted[starts]] = medians
    weights[key_sorted[starts]] = np.sqrt(counts)
    levels = levels.reshape(n_gaps, n_rows)
    weights = weights.reshape(n_gaps, n_rows)

    sigma_rows = gaussian_blur_sigma / block
    smoothed = local_linear_smooth(levels, weights, sigma_rows)
    deviation = np.abs(levels - smoothed)
    spread = MAD_TO_SIGMA * np.nanmedian(deviation[weights > 0]) if np.any(weights > 0) else 0.0
    weights = np.where(deviation <= CLIP_SIGMA * max(spread, 1e-12), weights, 0.0)
    smoothed = local_linear_smooth(levels, weights, sigma_rows)

    positions = 0.5 * (np.clip(np.floor(gaps.start) + 1.0, 0, n_a - 1) + np.clip(np.ceil(gaps.end) - 1.0, 0, n_a - 1))
    positions = np.where(gaps.end - gaps.start > 0, positions, np.nan)
    residual_surface = _interpolate_across(positions, smoothed, n_a, bspline_deg)
    residual_surface = np.where(np.isfinite(residual_surface), residual_surface, 0.0)
    smooth_part = local_linear_smooth(smooth_part.T, np.ones((n_a, n_rows)), sigma_rows).T
    model_binned = smooth_part + residual_surface
    model = _to_rows(model_binned, block, n_b).astype(np.float32)

    fit_residual = (data - model)[fitted]
    fit_residual = fit_residual[np.isfinite(fit_residual)]
    centre = float(np.median(fit_residual)) if fit_residual.size else float("nan")
    spread = MAD_TO_SIGMA * float(np.median(np.abs(fit_residual - centre))) if fit_residual.size else float("nan")
    return BackgroundModel(
        model=model,
        fitted_pixels=fitted,
        residual_median=centre,
        residual_sigma=spread,
        wing_profile=wing_coef,
        wing_bin_edges=WING_BIN_EDGES.copy(),
        spill_weights=spill_coef,
        spill_sigmas=np.asarray(SPILL_SIGMAS),
    )
