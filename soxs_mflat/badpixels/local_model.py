"""The exact local expectation of a frame at scattered pixels: what a bad pixel is tested against.

A running median along B (along the order) per column follows the blaze, vignetting and dust donuts
and ignores single pixels, bad rows and small clusters. Away from the order edges a median over
``ACROSS_WIDTH`` columns then removes bad columns. Within the edge zone the column's own median is used:
the order's tilt sweeps a fixed column symmetrically through the slit profile, so the median of a
monotonic edge is unbiased, while neighbouring columns are not.
"""

from __future__ import annotations

from dataclasses import dataclass

import bottleneck as bn
import numpy as np

from soxs_mflat.badpixels.bands import MaskedImage, Pixels
from soxs_mflat.badpixels.block_statistics import ACROSS_WIDTH, median_of_enough

EDGE_JITTER = 0.05
"""Sub-pixel uncertainty (px) of where a pixel sits in the slit profile; with the profile's slope it
sets the precision of the expectation at the order edges."""


@dataclass(frozen=True)
class TracedRows:
    """On which frame rows the order of each of a set of pixels is traced: ``valid`` (orders × frame
    rows, as :class:`~soxs_mflat.footprints.OrderBounds`) and the order (band) of each pixel."""

    valid: np.ndarray
    band: np.ndarray

    def on(self, rows: np.ndarray) -> np.ndarray:
        """Whether each pixel's order is traced on ``rows`` (pixels × rows)."""
        return self.valid[self.band[:, None], rows]

    def subset(self, picked: np.ndarray) -> TracedRows:
        """The same for the pixels ``picked``."""
        return TracedRows(self.valid, self.band[picked])


def along_medians(
    image: MaskedImage, rows: np.ndarray, columns: np.ndarray, window: int, *, min_count: int,
    traced: TracedRows | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact running median along B of ``window`` rows at each pixel, and how many rows of its window are
    supported.

    As in a running median over the frame: only the rows on which ``traced`` says the pixel's order is
    traced count (all if None), and past the ends of the frame the rows are reflected about a robust end
    level (:func:`end_level`), which continues a trend.
    """
    n_b = image.data.shape[0]
    half = window // 2
    wanted = rows[:, None] + np.arange(-half, half + 1)
    mirror = np.abs(wanted)
    mirror = np.where(mirror > n_b - 1, 2 * (n_b - 1) - mirror, mirror)
    usable = (mirror >= 0) & (mirror < n_b)
    np.clip(mirror, 0, n_b - 1, out=mirror)
    values = image.at(mirror, np.broadcast_to(columns[:, None], mirror.shape))
    supported = usable if traced is None else usable & traced.on(mirror)
    values[~supported] = np.nan
    for end, beyond in ((0, wanted < 0), (n_b - 1, wanted >= n_b)):
        hit = np.flatnonzero(beyond.any(axis=1))
        if hit.size:
            level = end_level(image, columns[hit], end, None if traced is None else traced.subset(hit))
            values[hit] = np.where(beyond[hit], 2.0 * level[:, None] - values[hit], values[hit])
    median = median_of_enough(values, min_count=min(min_count, window))
    return median, np.count_nonzero(supported & (wanted == mirror), axis=1)


def end_level(image: MaskedImage, columns: np.ndarray, end: int, traced: TracedRows | None) -> np.ndarray:
    """Robust value at the frame row ``end`` (0 or the last) of each column: medians of the 5 rows
    nearest it and of the next 5, extrapolated linearly to it."""
    n_b = image.data.shape[0]
    rows = np.clip(end + (1 if end == 0 else -1) * np.arange(10), 0, n_b - 1)[None, :].repeat(columns.size, axis=0)
    values = image.at(rows, np.broadcast_to(columns[:, None], rows.shape))
    if traced is not None:
        values[~traced.on(rows)] = np.nan
    first = bn.nanmedian(values[:, :5], axis=1)
    second = bn.nanmedian(values[:, 5:10], axis=1) if n_b >= 10 else first
    return np.where(np.isfinite(second), first - 0.4 * (second - first), first)


def local_model(
    image: MaskedImage, rows: np.ndarray, columns: np.ndarray, zone: np.ndarray, window: int, *,
    traced: TracedRows | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The exact local expectation at the pixels (``rows``, ``columns``) and its uncertainty (same units).

    Running median along B over ``window`` rows, then (except in ``zone``) the NaN-ignoring median across
    ``ACROSS_WIDTH`` columns (reflected at the frame's sides). The uncertainty is ``EDGE_JITTER`` times
    the larger difference of the along-B median to its neighbours across A, and half the missing rows of
    the window times the larger difference to its neighbours along B.
    """
    n_b, n_a = image.data.shape
    half = ACROSS_WIDTH // 2
    reflected = np.abs(columns[:, None] + np.arange(-half, half + 1))
    reflected = np.clip(np.where(reflected > n_a - 1, 2 * (n_a - 1) - reflected, reflected), 0, n_a - 1)
    min_count = max(window // 3, 1)
    repeated = np.repeat(np.arange(rows.size), ACROSS_WIDTH)
    along, count = along_medians(image, rows[repeated], reflected.ravel(), window, min_count=min_count,
                                 traced=None if traced is None else traced.subset(repeated))
    along = along.reshape(rows.size, ACROSS_WIDTH)
    level = np.where(zone, along[:, half], bn.nanmedian(along, axis=1))
    with np.errstate(invalid="ignore"):
        left = np.where(columns > 0, np.abs(along[:, half] - along[:, half - 1]), np.nan)
        right = np.where(columns < n_a - 1, np.abs(along[:, half + 1] - along[:, half]), np.nan)
    slope_a = np.nan_to_num(np.fmax(left, right))
    missing = window - count.reshape(rows.size, ACROSS_WIDTH)[:, half]
    slope_b = np.zeros(rows.size, dtype=np.float32)
    short = np.flatnonzero(missing > 0)
    if short.size:
        steps = []
        for step in (-1, 1):
            shifted = np.clip(rows[short] + step, 0, n_b - 1)
            median, _ = along_medians(image, shifted, columns[short], window, min_count=min_count,
                                      traced=None if traced is None else traced.subset(short))
            steps.append(np.where(shifted == rows[short] + step, np.abs(median - along[short, half]), np.nan))
        slope_b[short] = np.nan_to_num(np.fmax(*steps))
    uncertainty = np.hypot(EDGE_JITTER * slope_a, 0.5 * missing * slope_b)
    return level.astype(np.float32), uncertainty.astype(np.float32)


def exact_along(image: MaskedImage, valid: np.ndarray, pixels: Pixels, window: int) -> np.ndarray:
    """Exact running median along B (NaN-ignoring, ``window`` rows) of the ``image`` at ``pixels`` (band =
    order of ``valid``, the orders' traced rows); only the rows on which the pixel's order is traced count.

    The pixels of a column and order on consecutive rows share one strip of the column, through which a
    running median is moved (bottleneck): the pixels of tilted edges come in short runs, those of
    straight ones in long runs. Pixels whose window leaves the frame go through :func:`along_medians`.
    """
    k, r, c = pixels
    n_b, n_a = image.data.shape
    half = window // 2
    min_count = max(window // 3, 1)
    expected = np.empty(r.size, dtype=np.float32)
    ends = (r < half) | (r >= n_b - half)
    if ends.any():
        expected[ends] = along_medians(image, r[ends], c[ends], window, min_count=min_count,
                                       traced=TracedRows(valid, k[ends]))[0]
    inside = np.flatnonzero(~ends)
    inside = inside[np.argsort((k[inside] * n_a + c[inside]) * n_b + r[inside])]
    if inside.size:
        column, row = k[inside] * n_a + c[inside], r[inside]
        first = np.flatnonzero(np.r_[True, (column[1:] != column[:-1]) | (row[1:] != row[:-1] + 1)])
        length = np.diff(np.r_[first, inside.size]) + 2 * half
        offset = np.r_[0, np.cumsum(length)[:-1]]
        strip_row = np.repeat(row[first] - half - offset, length) + np.arange(length.sum())
        strip_band = np.repeat(k[inside][first], length)
        strip = strip_row * n_a + np.repeat(c[inside][first], length)
        values = image.data.ravel().take(strip).astype(np.float32, copy=False)
        values[~valid[strip_band, strip_row] | image.mask.ravel().take(strip)] = np.nan
        moved = bn.move_median(values, window, min_count=min_count)
        run = np.repeat(np.arange(first.size), np.diff(np.r_[first, inside.size]))
        expected[inside] = moved[offset[run] + row - row[first][run] + 2 * half]
    return expected
