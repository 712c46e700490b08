"""Where the scattered light is measured: the gaps between the orders, and the order levels beside them."""

from __future__ import annotations

from dataclasses import dataclass

import bottleneck as bn
import numpy as np

from soxs_mflat.background.binning import rows_per_chunk
from soxs_mflat.footprints import OrderBounds

WING_BIN_EDGES = np.array([0.0, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0])
"""Bins of distance (px) from an order edge in which the PSF wings leaking into a gap are fitted."""


@dataclass(frozen=True)
class GapBounds:
    """The gaps on a set of rows (gaps × rows each), sorted across A: gap 0 is the band below the first
    order, gap k lies between orders k − 1 and k, the last is the band above the last order.

    Gap pixels are those with centres within ``start``..``end``; ``edge_below`` and ``edge_above`` are the
    edges of the orders either side (NaN beside a detector border), from which the PSF wings are measured.
    """

    start: np.ndarray
    end: np.ndarray
    edge_below: np.ndarray
    edge_above: np.ndarray


@dataclass(frozen=True)
class GapPixels:
    """The pixels of each gap on the binned image, gap by gap (lists over gaps): their columns on every
    row (rows × the gap's widest width, clipped to the image) and which are finite pixels of the gap."""

    cols: list[np.ndarray]
    used: list[np.ndarray]

    @property
    def counts(self) -> np.ndarray:
        """Number of usable pixels in each gap."""
        return np.array([np.count_nonzero(used) for used in self.used])


def sorted_edges(bounds: OrderBounds) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper order edges (orders × rows) sorted across A; an order absent on a row collapses
    onto its centre."""
    order = np.argsort(np.nanmean(bounds.centre, axis=1))
    low = np.where(bounds.valid, bounds.low, bounds.centre)[order]
    up = np.where(bounds.valid, bounds.up, bounds.centre)[order]
    return low, up


def default_margin(bounds: OrderBounds) -> float:
    """Margin (px) kept free of the orders: 2 px, up to 3 px when the median gap is wider than 30 px."""
    low, up = sorted_edges(bounds)
    widths = (low[1:] - up[:-1]).ravel()
    median_gap = float(np.median(widths)) if widths.size else 30.0
    return float(np.clip(median_gap / 10.0, 2.0, 3.0))


def gap_bounds(low: np.ndarray, up: np.ndarray, n_a: int, *, margin: float, outer: float) -> GapBounds:
    """The gaps between neighbouring orders (edges ``low``, ``up``: orders × rows) less ``margin`` px on
    each side, and bands ``outer`` px wide beside the first and last orders. Between orders the margin
    shrinks so that every gap keeps at least 1 px."""
    nan_row = np.full((1, low.shape[1]), np.nan)
    width = low[1:] - up[:-1]
    inner = np.minimum(margin, np.maximum((width - 1.0) / 2.0, 0.0))
    first_end = low[:1] - margin
    last_start = up[-1:] + margin
    return GapBounds(
        start=np.vstack([np.maximum(first_end - outer, -0.5), up[:-1] + inner, last_start]),
        end=np.vstack([first_end, low[1:] - inner, np.minimum(last_start + outer, n_a - 0.5)]),
        edge_below=np.vstack([nan_row, up]),
        edge_above=np.vstack([low, nan_row]),
    )


def gap_centres(gaps: GapBounds, n_a: int) -> np.ndarray:
    """Centre (px) of every gap on every row (gaps × rows), NaN where a gap holds no pixel centre."""
    first = np.clip(np.ceil(gaps.start), 0, n_a - 1)
    last = np.clip(np.floor(gaps.end), 0, n_a - 1)
    return np.where(np.floor(gaps.end) >= np.ceil(gaps.start), 0.5 * (first + last), np.nan)


def columns_between(start: np.ndarray, end: np.ndarray, n_a: int) -> tuple[np.ndarray, np.ndarray]:
    """Columns of the pixel centres within ``start``..``end`` on each row (rows × the widest width,
    clipped to the image), and which of them are within."""
    first = np.clip(np.ceil(start), 0, n_a)
    last = np.clip(np.floor(end), -1, n_a - 1)
    width = int(max(np.max(last - first + 1.0, initial=0.0), 0.0))
    cols = first[:, None].astype(np.int64) + np.arange(width)[None, :]
    within = cols <= last[:, None]
    return np.clip(cols, 0, n_a - 1), within


def interval_mask(first: np.ndarray, stop: np.ndarray, n_cols: int) -> np.ndarray:
    """Rows × ``n_cols`` map of the columns within any of the intervals [``first``, ``stop``) (intervals ×
    rows; empty where ``stop`` ≤ ``first`` or NaN). Each row alternates runs outside and inside the
    (merged) intervals, so the map is written run by run with one ``np.repeat`` rather than compared
    pixel by pixel."""
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


def fitted_pixel_mask(
    flat: np.ndarray, mask: np.ndarray | None, low: np.ndarray, up: np.ndarray, *, margin: float, outer: float
) -> np.ndarray:
    """Full-resolution map of the finite, unmasked gap pixels (the pixels the model is fitted to)."""
    n_b, n_a = flat.shape
    gaps = gap_bounds(low, up, n_a, margin=margin, outer=outer)
    fitted = interval_mask(np.ceil(gaps.start), np.floor(gaps.end) + 1.0, n_a)
    step = rows_per_chunk(n_a)
    for start in range(0, n_b, step):
        rows = slice(start, start + step)
        fitted[rows] &= np.isfinite(flat[rows])
        if mask is not None:
            fitted[rows] &= ~mask[rows]
    return fitted


def gap_pixels(binned: np.ndarray, gaps: GapBounds) -> GapPixels:
    """The finite pixels of every gap of the binned image."""
    n_rows, n_a = binned.shape
    row_start = np.arange(n_rows)[:, None] * n_a
    cols, used = [], []
    for start, end in zip(gaps.start, gaps.end, strict=True):
        gap_cols, within = columns_between(start, end, n_a)
        within &= np.isfinite(np.take(binned, row_start + gap_cols))
        cols.append(gap_cols)
        used.append(within)
    return GapPixels(cols, used)


def fit_samples(pixels: GapPixels, *, max_samples: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row, column and gap of at most about ``max_samples`` gap pixels, every gap thinned by its own
    stride (along its rows) so that narrow gaps keep all their pixels and wide ones dominate neither the
    fit nor its time. They come in raster order (row by row), in which images are read fastest."""
    counts = pixels.counts
    n_gaps = int(np.flatnonzero(counts)[-1]) + 1 if counts.any() else 1
    rows, cols, gap = [], [], []
    for g, (gap_cols, used) in enumerate(zip(pixels.cols, pixels.used, strict=True)):
        stride = max(int(np.ceil(counts[g] / (max_samples / n_gaps))), 1)
        chosen = np.flatnonzero(used)[::stride]
        rows.append(chosen // max(gap_cols.shape[1], 1))
        cols.append(gap_cols.ravel()[chosen])
        gap.append(np.full(chosen.size, g))
    rows, cols, gap = np.concatenate(rows), np.concatenate(cols), np.concatenate(gap)
    raster = np.argsort(rows * (int(cols.max(initial=0)) + 1) + cols, kind="stable")
    return rows[raster], cols[raster], gap[raster]


def order_levels(binned: np.ndarray, low: np.ndarray, up: np.ndarray) -> np.ndarray:
    """Median level of each order on each binned row (pixels ≥ 1 px inside the edges; 0 if none)."""
    n_rows, n_a = binned.shape
    levels = np.zeros(low.shape)
    row_start = np.arange(n_rows)[:, None] * n_a
    for k in range(low.shape[0]):
        cols, within = columns_between(low[k] + 1.0, up[k] - 1.0, n_a)
        if cols.shape[1] == 0:
            continue
        values = np.where(within, np.take(binned, row_start + cols), np.nan)
        levels[k] = np.nan_to_num(bn.nanmedian(values, axis=1))
    return levels


def wing_pixels(
    gaps: GapBounds, order_level: np.ndarray, side: int, gap: np.ndarray | int, rows: np.ndarray, cols: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where the PSF wings of the order below (``side`` 0) or above (1) reach the pixels (``gap``, ``rows``,
    ``cols``; broadcast together): the flat indices of the pixels within ``WING_BIN_EDGES`` of that order's
    edge, the bin holding their distance, and that order's level there (``order_level``: orders × rows)."""
    no_order = np.zeros((1, order_level.shape[1]))
    if side == 0:
        distance = cols - gaps.edge_below[gap, rows]
        level = np.vstack([no_order, order_level])[gap, rows]
    else:
        distance = gaps.edge_above[gap, rows] - cols
        level = np.vstack([order_level, no_order])[gap, rows]
    near = np.flatnonzero((distance >= WING_BIN_EDGES[0]) & (distance < WING_BIN_EDGES[-1]))
    bins = np.searchsorted(WING_BIN_EDGES, distance.ravel()[near], side="right") - 1
    return near, bins, np.broadcast_to(level, distance.shape).ravel()[near]
