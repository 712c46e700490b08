"""What the joint fit leaves in the gaps: measured per gap and binned row, smoothed along B, interpolated across A."""

from __future__ import annotations

import bottleneck as bn
import numpy as np
from scipy.interpolate import BSpline, PPoly
from scipy.sparse.linalg import spsolve

from soxs_mflat.background.binning import rows_per_chunk
from soxs_mflat.background.gaps import WING_BIN_EDGES, GapBounds, GapPixels, wing_pixels
from soxs_mflat.background.joint_fit import CLIP_SIGMA
from soxs_mflat.background.smoothing import local_linear_smooth
from soxs_mflat.robust import MAD_TO_SIGMA

MIN_KNOT_SPACING = 0.5
"""Gap centres closer than this (px) to an earlier one on the same row are left out of the spline."""


def gap_residual_levels(
    residual: np.ndarray, pixels: GapPixels, gaps: GapBounds, order_level: np.ndarray, wing_profile: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Median of ``residual`` (binned) less the PSF wings of ``wing_profile`` over the pixels of each gap on
    each binned row (gaps × rows, NaN without pixels), and √count as its weight. The wings reach only
    the first and last few pixels of a gap's rows, so only those are corrected."""
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
                near, bins, level = wing_pixels(gaps, order_level, side, g, rows, cols[:, window])
                row, col = np.divmod(near, cols[:, window].shape[1])
                values[row, window.start + col] -= wing_profile[bins] * level
        values[~used] = np.nan
        levels[g] = bn.nanmedian(values, axis=1)
        weights[g] = np.sqrt(np.count_nonzero(used, axis=1))
    return levels, weights


def smooth_gap_levels(levels: np.ndarray, weights: np.ndarray, sigma: float) -> np.ndarray:
    """Smooth each gap's levels (gaps × rows) along B over ``sigma`` rows, drop the rows more than
    ``CLIP_SIGMA`` robust σ (over all gaps) off and smooth again."""
    smoothed = local_linear_smooth(levels, weights, sigma)
    deviation = np.abs(levels - smoothed)
    spread = MAD_TO_SIGMA * float(np.nanmedian(deviation[weights > 0])) if np.any(weights > 0) else 0.0
    kept = np.where(deviation <= CLIP_SIGMA * max(spread, 1e-12), weights, 0.0)
    return local_linear_smooth(levels, kept, sigma)


def not_a_knot_interior(x: np.ndarray, first: np.ndarray, count: np.ndarray, degree: int) -> np.ndarray:
    """Interior knots of the interpolating splines of ``degree`` through rows of points laid end to end in
    ``x`` (row r: ``count[r]`` rising points from ``first[r]`` on), chosen as
    ``scipy.interpolate.make_interp_spline`` chooses them (not-a-knot): the points themselves for odd
    degrees, the midpoints between them for even ones, less (degree + 1) // 2 at each end."""
    row = np.repeat(np.arange(first.size), count)
    index = np.arange(x.size) - first[row]
    if degree % 2:
        skip = (degree + 1) // 2
        return x[(index >= skip) & (index < count[row] - skip)]
    skip = degree // 2
    same_row = row[:-1] == row[1:]
    between = same_row & (index[:-1] >= skip) & (index[:-1] < count[row[:-1]] - 1 - skip)
    return 0.5 * (x[:-1] + x[1:])[between]


def interpolating_splines(x: np.ndarray, y: np.ndarray, count: np.ndarray, n_a: int, degree: int) -> np.ndarray:
    """The interpolating splines of ``degree`` (≥ 1) through rows of (``x``, ``y``) points laid end to end
    (``count`` per row, more than ``degree``, rising along each row), read at columns 0..``n_a`` − 1 of
    every row and constant beyond its outermost points; rows × ``n_a``.

    All rows are solved and read as one spline (``scipy.interpolate.BSpline``) along an axis on which row
    r is shifted by r × ``slot``. Its knots are each row's not-a-knot knots, with ``degree`` simple knots
    beyond either end (spaced as the row's points on average) instead of the usual repeated end knots:
    that spans the same splines inside the row, and a row's points then involve only its own B-splines.
    The B-splines straddling two rows, which no point involves, get zero. The spline is read as piecewise
    polynomials (faster than de Boor's recursion at a million points), a chunk of rows at a time."""
    n_rows = count.size
    first = np.cumsum(count) - count
    low, high = x[first], x[first + count - 1]
    slot = 2.0 * (degree + 1) * (max(n_a, float(high.max())) + 1.0)
    start = slot * np.arange(n_rows)
    shift = np.repeat(start, count)
    beyond = ((high - low) / (count - 1))[:, None] * np.arange(1, degree + 1)
    knots = np.sort(np.concatenate([
        (low[:, None] - beyond + start[:, None]).ravel(),
        low + start,
        not_a_knot_interior(x + shift, first, count, degree),
        high + start,
        (high[:, None] + beyond + start[:, None]).ravel(),
    ]))
    own = np.arange(x.size) + (degree + 1) * np.repeat(np.arange(n_rows), count)
    collocation = BSpline.design_matrix(x + shift, knots, degree).tocsc()[:, own]
    coef = np.zeros(knots.size - degree - 1)
    coef[own] = spsolve(collocation, y)
    pieces = PPoly.from_spline(BSpline(knots, coef, degree))
    values = np.empty((n_rows, n_a))
    step = rows_per_chunk(n_a)
    for first_row in range(0, n_rows, step):
        rows = slice(first_row, first_row + step)
        columns = np.clip(np.arange(n_a, dtype=np.float64), low[rows, None], high[rows, None]) + start[rows, None]
        values[rows] = pieces(columns.ravel()).reshape(columns.shape)
    return values


def interpolate_across(positions: np.ndarray, levels: np.ndarray, n_a: int, degree: int) -> np.ndarray:
    """On every row, the interpolating spline of ``degree`` (lower where there are too few points) through
    the finite (position, level) samples of the gaps (gaps × rows), read at columns 0..``n_a`` − 1 and
    constant beyond the outermost samples; NaN on rows without a sample. Samples closer than
    ``MIN_KNOT_SPACING`` to an earlier one are left out. The same splines as
    ``scipy.interpolate.make_interp_spline`` builds row by row, built for all rows at once."""
    n_rows = positions.shape[1]
    usable = np.isfinite(positions) & np.isfinite(levels)
    furthest = np.maximum.accumulate(np.where(usable, positions, -np.inf), axis=0)
    previous = np.vstack([np.full((1, n_rows), -np.inf), furthest[:-1]])
    usable &= ~(positions - previous <= MIN_KNOT_SPACING)
    count = usable.sum(axis=0)
    row_degree = np.minimum(degree, count - 1)
    out = np.full((n_rows, n_a), np.nan)
    for k in np.unique(row_degree[count > 0]):
        rows = np.flatnonzero((count > 0) & (row_degree == k))
        chosen = usable[:, rows].T
        x, y = positions[:, rows].T[chosen], levels[:, rows].T[chosen]
        if k == 0:
            out[rows] = y[:, None]
        else:
            out[rows] = interpolating_splines(x, y, count[rows], n_a, int(k))
    return out
