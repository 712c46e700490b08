"""Bad pixels of the master flat: dead, hot, low-sensitivity and partly illuminated order-edge pixels.

Every test compares a pixel with a local expectation of the flat, not with the whole frame: the
blaze and the slit illumination would swamp any global clip (which is why soxspipe's never fires).

* **Expectation.** A running median along B (along the order) per column follows the blaze,
  vignetting and dust donuts and ignores single pixels, bad rows and small clusters. Away from the
  edges a 5-px median across A then removes bad columns. Within ``EDGE_ZONE`` px of an edge the
  column's own median is used: the order's tilt sweeps a fixed column symmetrically through the
  slit profile, so the median of a monotonic edge is unbiased, while neighbouring columns are not.
* **Noise.** Deviations are in units of σ, the larger of the local MAD scatter of flat/expectation
  and √(ERRS² + excess scatter² + model error²): the excess (PRNU) is measured per order and block
  of rows, the model error grows with the profile slope at the edges and where the median window is
  one-sided. Faint orders and noisy edges thus get wider limits and precision holds everywhere.
* **Depth.** A low-sensitivity pixel must also lie ``min_depth`` below the expectation, which
  keeps shallow real features (dust, fringes) in the flat. A hot pixel must also stand above both
  its neighbours along B, which a real feature that the median missed does not.
* **Columns.** A bad column's response measured inside the orders is carried to its pixels at the
  edges, where the column's own median cannot see it.

The frame is handled in tiles of rows (each reading a few rows beyond its ends, on up to
:data:`WORKERS` threads) and the robust block statistics are gathered a few blocks at a time, so
that besides the products only a map of regions, the expectation's uncertainty and, while a dark or
bias frame is searched, its excess over its own level are full frames.
"""

from __future__ import annotations

import itertools
import math
import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import bottleneck as bn
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy.stats import norm

from soxs_mflat.footprints import OrderBounds

MAD_TO_SIGMA = 1.4826
DEAD = np.uint8(1)
HOT = np.uint8(2)
LOW_SENSITIVITY = np.uint8(4)
PARTIAL_EDGE = np.uint8(8)
EDGE_ZONE = 2.0
ACROSS_WIDTH = 5
"""Columns of the median across the order that removes bad columns from the expectation."""
"""Pixels whose centre is closer than this (px) to an order edge are edge pixels."""
MEDIAN_MASK_GROW = 3.0
"""Pixels (beyond the order edges, plus the tilt over half a window) that the running median may use."""
SIGMA_WINDOW = 96
LEVEL_WINDOW = 15
COLUMN_WINDOW = 400
EDGE_JITTER = 0.05
"""Sub-pixel uncertainty (px) of where a pixel sits in the slit profile; with the profile's
slope it sets the precision of the expectation at the order edges."""
SIGMA_BLOCK = SIGMA_WINDOW // 3
COLUMN_BLOCK = COLUMN_WINDOW // 5
EXCESS_BLOCK = 128
TILE_ROWS = 128
"""Rows handled at once by the per-pixel steps: it bounds the size of their temporaries."""
WORKERS = min(2, os.cpu_count() or 1)
"""Threads working on tiles at once (bottleneck and numpy release the GIL while they compute)."""

NEAR, EDGE, INNER = np.uint8(1), np.uint8(2), np.uint8(3)
"""Regions of :func:`_regions` (0 away from the orders): within the running median's reach outside an
order, inside an order within ``EDGE_ZONE`` px of its edge, and further inside."""

T = TypeVar("T")


@dataclass(frozen=True)
class BadPixelResult:
    """Bad pixels found in a master flat (BA orientation).

    ``codes`` holds the reasons as bits (:data:`DEAD`, :data:`HOT`, :data:`LOW_SENSITIVITY`,
    :data:`PARTIAL_EDGE`); ``mask`` is the input mask OR any reason; ``expected`` is the local
    model of the flat the tests compared with; ``counts`` gives the pixels newly flagged by each
    kind (not already in the input mask; a pixel may have several reasons).
    """

    codes: np.ndarray
    mask: np.ndarray
    input_mask: np.ndarray
    expected: np.ndarray
    counts: dict[str, int]

    def kind(self, code: np.uint8) -> np.ndarray:
        """Boolean map of the pixels carrying reason ``code``."""
        return (self.codes & code) != 0

    @property
    def order_edge_only(self) -> np.ndarray:
        """Partly illuminated edge pixels that are bad for no other reason (spec §8 ``N ORDER EDGE``)."""
        return (self.codes == PARTIAL_EDGE) & ~self.input_mask


def _tiles(n_rows: int) -> list[slice]:
    """Consecutive row ranges of about ``TILE_ROWS`` rows covering ``n_rows``; none is shorter than
    ``TILE_ROWS`` / 1.5 unless the frame is, so a tile at an end of the frame holds all the rows that
    the extrapolation of a running median to that end uses."""
    edges = np.linspace(0, n_rows, max(round(n_rows / TILE_ROWS), 1) + 1).round().astype(int)
    return [slice(int(a), int(b)) for a, b in itertools.pairwise(edges)]


def _block_tiles(n_rows: int, block: int) -> list[slice]:
    """Consecutive row ranges of whole blocks of ``block`` rows (about ``TILE_ROWS`` rows each)."""
    step = block * max(round(TILE_ROWS / block), 1)
    return [slice(start, min(start + step, n_rows)) for start in range(0, n_rows, step)]


def _for_each(function: Callable[[T], None], items: Sequence[T]) -> None:
    """Call ``function`` on every item, on up to ``WORKERS`` threads (it writes its own results)."""
    if WORKERS < 2 or len(items) < 2:
        for item in items:
            function(item)
        return
    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(function, items))


def _with_halo(rows: slice, halo: int, n_rows: int) -> tuple[slice, slice]:
    """``rows`` widened by ``halo`` rows each side (within the frame), and where ``rows`` lie in it."""
    wide = slice(max(rows.start - halo, 0), min(rows.stop + halo, n_rows))
    return wide, slice(rows.start - wide.start, rows.stop - wide.start)


def _rows_of(bounds: OrderBounds, rows: slice) -> OrderBounds:
    """The bounds on ``rows`` only."""
    return OrderBounds(bounds.orders, bounds.low[:, rows], bounds.centre[:, rows], bounds.up[:, rows], bounds.valid[:, rows])


def _running_median(image: np.ndarray, window: int, axis: int, *, min_count: int, odd: bool = False) -> np.ndarray:
    """Centred running median along ``axis`` ignoring NaN.

    The ends are extended by reflection; with ``odd`` the reflection is about a robust end level
    (:func:`_end_level`), which continues a trend, so the window stays balanced at the ends.
    """
    half = window // 2
    data = np.moveaxis(np.asarray(image, dtype=np.float32), axis, 0)
    if half == 0 or data.shape[0] < 2:
        return np.moveaxis(data.copy(), 0, axis)
    reach = min(half, data.shape[0] - 1)
    head = data[1 : reach + 1][::-1]
    tail = data[-reach - 1 : -1][::-1]
    if odd:
        head = 2.0 * _end_level(data) - head
        tail = 2.0 * _end_level(data[::-1]) - tail
    filler = np.full((half - reach, *data.shape[1:]), np.nan, dtype=np.float32)
    padded = np.concatenate([filler, head, data, tail, filler])
    moved = bn.move_median(padded, window, axis=0, min_count=min(min_count, window))
    return np.moveaxis(moved[2 * half :], 0, axis)


def _median_across(image: np.ndarray, width: int = ACROSS_WIDTH) -> np.ndarray:
    """NaN-ignoring median of each pixel and its neighbours across A over ``width`` columns (ends
    reflected). Five columns reject two bad columns inside the window, which three cannot."""
    half = width // 2
    if image.shape[1] <= half:
        return image.copy()
    padded = np.pad(image, ((0, 0), (half, half)), mode="reflect")
    shifted = np.stack([padded[:, k : k + image.shape[1]] for k in range(width)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return bn.nanmedian(shifted, axis=0).astype(image.dtype, copy=False)


def _end_level(data: np.ndarray) -> np.ndarray:
    """Robust value at the first row: medians of rows 0–4 and 5–9, extrapolated linearly to row 0."""
    with np.errstate(all="ignore"):
        first = bn.nanmedian(data[:5], axis=0)
        second = bn.nanmedian(data[5:10], axis=0) if data.shape[0] >= 10 else first
        return np.where(np.isfinite(second), first - 0.4 * (second - first), first)


def _slope(image: np.ndarray, axis: int) -> np.ndarray:
    """Larger of the two one-sided absolute differences along ``axis`` (NaN neighbours ignored, 0 if none)."""
    step = np.moveaxis(np.abs(np.diff(image, axis=axis)), axis, 0)
    slope = np.full(image.shape, np.nan, dtype=step.dtype)
    moved = np.moveaxis(slope, axis, 0)
    moved[:-1] = step
    np.fmax(moved[1:], step, out=moved[1:])
    return np.nan_to_num(slope, copy=False)


def _expectation_tile(
    data: np.ndarray, support: np.ndarray, zone: np.ndarray, window: int, inner: slice
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`local_expectation` on the rows ``inner`` of a tile of ``data`` (NaN outside ``support``)
    that reaches ``window // 2 + 1`` rows beyond them (or the end of the frame); ``zone`` marks the
    ``inner`` pixels within ``EDGE_ZONE`` px of an edge. Rows beyond the tile count as outside
    ``support`` (at the ends of the frame they are)."""
    along = _running_median(data, window, 0, min_count=max(window // 3, 1), odd=True)
    centre = along[inner]
    expected = np.where(zone, centre, _median_across(centre))
    slope_a = _slope(centre, axis=1)
    slope_a *= EDGE_JITTER
    missing = np.float32(window) - _window_count(support, window, inner)
    missing *= 0.5
    missing *= _slope(along, axis=0)[inner]
    return expected, np.nan_to_num(np.hypot(slope_a, missing, out=slope_a), copy=False)


def _window_count(support: np.ndarray, window: int, inner: slice) -> np.ndarray:
    """How many ``support`` pixels the running window of ``window`` rows holds at each pixel of the
    rows ``inner`` (rows beyond the array count as missing)."""
    half = window // 2
    count = np.zeros((inner.stop - inner.start, support.shape[1]), dtype=np.uint16)
    for offset in range(half - window + 1, half + 1):
        first, last = max(inner.start + offset, 0), min(inner.stop + offset, support.shape[0])
        if first < last:
            count[first - inner.start - offset : last - inner.start - offset] += support[first:last]
    return count


def local_expectation(
    flat: np.ndarray, support: np.ndarray, distance: np.ndarray, *, window: int = 21
) -> tuple[np.ndarray, np.ndarray]:
    """Local model of an image over ``support`` pixels, and its uncertainty (same units) at the edges.

    Running median along B (``window`` rows), then a 5-px median across A except within
    ``EDGE_ZONE`` px of an edge, where the slit profile is too steep for neighbouring columns to
    stand in for each other. The uncertainty is the profile's relative slope across A times
    ``EDGE_JITTER``, plus, in the rows next to the ends of the detector where the window is
    completed by extrapolation or leaves ``support``, half the trend along B over the missing rows
    (the median of a tilted edge is then one-sided).
    """
    n_b = flat.shape[0]
    expected = np.empty(flat.shape, dtype=np.float32)
    uncertainty = np.empty(flat.shape, dtype=np.float32)

    def tile(rows: slice) -> None:
        wide, inner = _with_halo(rows, window // 2 + 1, n_b)
        data = np.where(support[wide], flat[wide], np.nan).astype(np.float32, copy=False)
        expected[rows], uncertainty[rows] = _expectation_tile(data, support[wide], distance[rows] < EDGE_ZONE, window, inner)

    _for_each(tile, _tiles(n_b))
    return expected, uncertainty


def _column_block_median(image: np.ndarray, *, block: int, min_count: int) -> np.ndarray:
    """Median of each column over blocks of ``block`` rows (NaN ignored; NaN where fewer than
    ``min_count`` values); the last block may be short."""
    n_rows, n_a = image.shape
    n_blocks = -(-n_rows // block)
    padded = np.full((n_blocks * block, n_a), np.nan, dtype=np.float32)
    padded[:n_rows] = image
    stacked = padded.reshape(n_blocks, block, n_a)
    with np.errstate(all="ignore"):
        level = bn.nanmedian(stacked, axis=1)
    level[np.sum(np.isfinite(stacked), axis=1) < min_count] = np.nan
    return level


def _block_levels(
    images_of: Callable[[slice], tuple[np.ndarray, np.ndarray]], shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Smooth robust local levels of the two images that ``images_of(rows)`` gives on any rows: the
    MAD-based σ of a deviation (its absolute value given) over ``SIGMA_WINDOW`` rows and 5 columns, so
    that one bad column does not inflate its neighbours' limits, and the typical value of a response
    over ``COLUMN_WINDOW`` rows of its own column.

    Each is the median of each column over blocks of rows, then running medians over blocks along B
    (and over columns); the images are made a few blocks at a time, never whole. Rows ``i // SIGMA_BLOCK``
    and ``i // COLUMN_BLOCK`` of the results hold the levels of frame row ``i``.
    """
    n_b, n_a = shape
    scatter = np.empty((-(-n_b // SIGMA_BLOCK), n_a), dtype=np.float32)
    column = np.empty((-(-n_b // COLUMN_BLOCK), n_a), dtype=np.float32)

    def gather(rows: slice) -> None:
        deviation, response = images_of(rows)
        levels = _column_block_median(deviation, block=SIGMA_BLOCK, min_count=5)
        scatter[rows.start // SIGMA_BLOCK : rows.start // SIGMA_BLOCK + levels.shape[0]] = levels
        levels = _column_block_median(response, block=COLUMN_BLOCK, min_count=10)
        column[rows.start // COLUMN_BLOCK : rows.start // COLUMN_BLOCK + levels.shape[0]] = levels

    _for_each(gather, _block_tiles(n_b, math.lcm(SIGMA_BLOCK, COLUMN_BLOCK)))
    scatter = _running_median(_running_median(scatter, 3, 0, min_count=1), 5, 1, min_count=1)
    return MAD_TO_SIGMA * scatter, _running_median(column, 5, 0, min_count=1)


def _hot_in_frame(
    frame: np.ndarray,
    hot: np.ndarray,
    zone_of: Callable[[slice], np.ndarray],
    *,
    hot_sigma: float,
    err: np.ndarray | None,
    mask: np.ndarray | None,
) -> None:
    """:func:`hot_in_frame`, OR-ing its result into ``hot``; ``zone_of(rows)`` gives the edge zone on ``rows``."""
    shape = frame.shape
    n_b = shape[0]
    excess = np.empty(shape, dtype=np.float32)
    uncertainty = np.empty(shape, dtype=np.float32)

    def data_of(rows: slice) -> np.ndarray:
        data = np.where(np.isfinite(frame[rows]), frame[rows], np.nan).astype(np.float32, copy=False)
        if mask is not None:
            data[mask[rows]] = np.nan
        return data

    def expect(rows: slice) -> None:
        wide, inner = _with_halo(rows, LEVEL_WINDOW // 2 + 1, n_b)
        data = data_of(wide)
        support = np.ones(data.shape, dtype=bool)
        level, uncertainty[rows] = _expectation_tile(data, support, zone_of(rows), LEVEL_WINDOW, inner)
        np.subtract(data[inner], level, out=excess[rows])

    _for_each(expect, _tiles(n_b))
    scatter, column = _block_levels(lambda rows: (np.abs(excess[rows]), np.where(zone_of(rows), np.nan, excess[rows])), shape)

    def test(rows: slice) -> None:
        index = np.arange(rows.start, rows.stop)
        sigma = np.hypot(scatter[index // SIGMA_BLOCK], uncertainty[rows])
        if err is not None:
            sigma = np.fmax(sigma, np.asarray(err[rows], dtype=np.float32))
        sigma *= hot_sigma
        with np.errstate(invalid="ignore"):
            hot[rows] |= (excess[rows] > sigma) | (zone_of(rows) & (column[index // COLUMN_BLOCK] > sigma))

    _for_each(test, _tiles(n_b))


def _without_line_structure(bias: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A bias frame minus the median of each row and then of each column (float32).

    Row and column offsets are fixed-pattern bias structure that bias subtraction removes exactly;
    left in, a column a few e⁻ above its neighbours would read as a hot column.
    """
    clean = np.where(mask, np.nan, bias).astype(np.float32)
    clean -= bn.nanmedian(clean, axis=1)[:, None]
    clean -= bn.nanmedian(clean, axis=0)[None, :]
    return clean


def _false_alarm_sigma(n_pixels: int, *, expected_false: float = 0.1) -> float:
    """One-sided Gaussian threshold (σ) with ``expected_false`` false alarms over ``n_pixels``.

    A dark or bias frame is searched pixel by pixel over the whole detector: at 5σ a 4-Mpixel frame
    already expects one pure-noise detection, so the threshold grows with the number of pixels.
    Bias frames carry no order structure, so no edge zone applies to them (a fixed-pattern column
    offset is removed by the bias subtraction and is not a hot column).
    """
    return float(norm.isf(expected_false / max(n_pixels, 1)))


def hot_in_frame(
    frame: np.ndarray,
    *,
    hot_sigma: float,
    err: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    distance: np.ndarray | None = None,
) -> np.ndarray:
    """Pixels of a dark, lamp-off or bias frame (BA orientation) more than ``hot_sigma`` σ above
    their local level; the frame's units do not matter.

    The level is :func:`local_expectation` over ``LEVEL_WINDOW`` rows, so it follows the thermal
    light of the orders in NIR lamp-off frames; ``distance`` (px to the nearest order edge, as in
    :func:`find_bad_pixels`) marks where it must not mix columns; there a hot column is found from
    its excess away from the edges. σ is the larger of ``err`` and the local MAD scatter combined
    with the level's uncertainty at edges. Pass ``err``: near the order edges of a lamp-off frame
    the MAD alone understates the noise.
    """
    shape = np.shape(frame)
    hot = np.zeros(shape, dtype=bool)

    def zone_of(rows: slice) -> np.ndarray:
        if distance is None:
            return np.zeros((rows.stop - rows.start, shape[1]), dtype=bool)
        return np.asarray(distance[rows]) < EDGE_ZONE

    _hot_in_frame(frame, hot, zone_of, hot_sigma=hot_sigma, err=err, mask=None if mask is None else np.asarray(mask, dtype=bool))
    return hot


@dataclass(frozen=True)
class _Segments:
    """An order's pixels on every row, as windows of a common width: the first column of each row's
    window (``start``), its columns (``cols``, rows × width) and which of them are the order's (``used``).
    Windows are read and written as row slices (one per row, so they never overlap), much faster than
    pixel by pixel."""

    start: np.ndarray
    cols: np.ndarray
    used: np.ndarray

    def take(self, image: np.ndarray) -> np.ndarray:
        """The windows of ``image`` (rows × width)."""
        return sliding_window_view(image, self.cols.shape[1], axis=1)[np.arange(self.start.size), self.start]

    def put(self, image: np.ndarray, values: np.ndarray) -> None:
        """Write ``values`` (rows × width) into the used pixels of ``image``."""
        windows = sliding_window_view(image, self.cols.shape[1], axis=1, writeable=True)
        rows = np.arange(self.start.size)
        windows[rows, self.start] = np.where(self.used, values, windows[rows, self.start])


def _row_segments(bounds: OrderBounds, n_a: int, k: int, *, inset: float = 0.0) -> _Segments:
    """Order ``k``'s pixel centres at least ``inset`` px inside its edges, on every row of ``bounds``."""
    first = np.clip(np.ceil(bounds.low[k] + inset), 0, n_a)
    last = np.clip(np.floor(bounds.up[k] - inset), -1, n_a - 1)
    last = np.where(bounds.valid[k], last, first - 1)
    width = int(max(np.max(last - first + 1, initial=0), 0))
    start = np.minimum(first, n_a - width).astype(np.int64)
    cols = start[:, None] + np.arange(width)[None, :]
    return _Segments(start, cols, (cols >= first[:, None]) & (cols <= last[:, None]))


def _inside_distance(bounds: OrderBounds, shape: tuple[int, int], *, grow: float) -> np.ndarray:
    """Distance (px) of each pixel centre to the nearer edge of its order: ≥ 0 inside an order,
    negative within ``grow`` px outside one, -inf elsewhere. Like :func:`edge_distance`, but it
    only visits the pixels near the orders."""
    distance = np.full(shape, -np.inf, dtype=np.float32)
    for k in range(bounds.orders.size):
        segments = _row_segments(bounds, shape[1], k, inset=-grow)
        if segments.cols.shape[1] == 0:
            continue
        d = np.minimum(segments.cols - bounds.low[k][:, None], bounds.up[k][:, None] - segments.cols).astype(np.float32)
        segments.put(distance, np.maximum(segments.take(distance), d))
    return distance


def _regions(bounds: OrderBounds, shape: tuple[int, int], *, grow: float) -> np.ndarray:
    """Map of 0 (away from the orders), :data:`NEAR`, :data:`EDGE` and :data:`INNER` from
    :func:`_inside_distance` with ``grow``: all that the tests need of it, in a quarter of its memory."""
    regions = np.empty(shape, dtype=np.uint8)

    def tile(rows: slice) -> None:
        distance = _inside_distance(_rows_of(bounds, rows), (rows.stop - rows.start, shape[1]), grow=grow)
        region = np.isfinite(distance).view(np.uint8)
        region += distance >= 0
        region += distance >= EDGE_ZONE
        regions[rows] = region

    _for_each(tile, _tiles(shape[0]))
    return regions


def _partial_edges(flat: np.ndarray, bounds: OrderBounds, zone: np.ndarray, usable: np.ndarray, *, fraction: float) -> np.ndarray:
    """:func:`partial_edge_pixels` with the edge zone given as a boolean map."""
    n_b, n_a = flat.shape
    flagged = np.zeros((n_b, n_a), dtype=bool)
    if fraction <= 0:
        return flagged

    def order(k: int) -> None:
        segments = _row_segments(bounds, n_a, k)
        if segments.cols.shape[1] == 0:
            return
        good = segments.used & segments.take(usable)
        values = np.where(good, segments.take(flat), np.nan)
        with np.errstate(all="ignore"):
            median = bn.nanmedian(values, axis=1)
        enough = (np.sum(good, axis=1) >= 3) & (median > 0)
        with np.errstate(invalid="ignore"):
            low = good & enough[:, None] & (values < fraction * median[:, None])
        low &= segments.take(zone)
        rows, cols = np.nonzero(low)
        flagged[rows, segments.cols[rows, cols]] = True

    _for_each(order, range(bounds.orders.size))
    return flagged


def partial_edge_pixels(
    flat: np.ndarray, bounds: OrderBounds, distance: np.ndarray, usable: np.ndarray, *, fraction: float
) -> np.ndarray:
    """In-order pixels within ``EDGE_ZONE`` px of an edge and below ``fraction`` × their row-segment median.

    A segment needs at least 3 usable pixels and a positive median; ``fraction`` ≤ 0 turns it off.
    """
    return _partial_edges(flat, bounds, distance < EDGE_ZONE, usable, fraction=fraction)


@dataclass(frozen=True)
class _FlatView:
    """What the per-tile steps of :func:`find_bad_pixels` read: the flat, its ERRS and input mask,
    the :func:`_regions` map, the expectation (filled by :func:`_expect_flat`) and the order bounds."""

    flat: np.ndarray
    errs: np.ndarray
    input_mask: np.ndarray
    regions: np.ndarray
    expected: np.ndarray
    bounds: OrderBounds

    @staticmethod
    def testable(region: np.ndarray, value: np.ndarray, masked: np.ndarray, expected: np.ndarray) -> np.ndarray:
        """In-order, finite, unmasked pixels with a positive expectation."""
        return (region >= EDGE) & np.isfinite(value) & ~masked & (expected > 0)

    @staticmethod
    def noise(errs: np.ndarray, expected: np.ndarray) -> np.ndarray:
        """ERRS relative to the expectation; non-finite ERRS count as 0."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(np.isfinite(errs), errs, 0.0) / expected

    def testable_rows(self, rows: slice) -> np.ndarray:
        """:meth:`testable` on ``rows``."""
        return self.testable(self.regions[rows], self.flat[rows], self.input_mask[rows], self.expected[rows])

    def deviations(self, rows: slice) -> tuple[np.ndarray, np.ndarray]:
        """On ``rows``: |flat / expectation − 1| where testable, and flat / expectation where testable
        and ≥ ``EDGE_ZONE`` px inside the edges (NaN elsewhere)."""
        testable = self.testable_rows(rows)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = self.flat[rows] / self.expected[rows]
        return np.abs(np.where(testable, ratio - 1.0, np.nan)), np.where(testable & (self.regions[rows] == INNER), ratio, np.nan)


def _expect_flat(view: _FlatView, window: int) -> np.ndarray:
    """Fill ``view.expected`` (:func:`local_expectation` over the pixels near the orders, ``window``
    rows) and return the model error relative to it."""
    flat, regions, input_mask = view.flat, view.regions, view.input_mask
    n_b = flat.shape[0]
    model_error = np.empty(flat.shape, dtype=np.float32)

    def tile(rows: slice) -> None:
        wide, inner = _with_halo(rows, window // 2 + 1, n_b)
        near = regions[wide] >= NEAR
        data = np.where(near & np.isfinite(flat[wide]) & ~input_mask[wide], flat[wide], np.nan)
        view.expected[rows], model_error[rows] = _expectation_tile(data, near, regions[rows] <= EDGE, window, inner)
        with np.errstate(invalid="ignore", divide="ignore"):
            model_error[rows] /= view.expected[rows]

    _for_each(tile, _tiles(n_b))
    return model_error


def _excess_scatter(view: _FlatView) -> np.ndarray:
    """Pixel-to-pixel scatter beyond the ERRS noise (e.g. PRNU), per order (rows) and block of
    ``EXCESS_BLOCK`` rows (columns).

    Measured on the testable pixels ≥ 3 px inside the edges as √max(0, MAD² − median(noise²));
    where the expectation follows a pixel too closely (steep edges) the MAD would understate the
    scatter, so this is what carries it to the edges. Only each order's own pixels are visited.
    """
    n_b, n_a = view.flat.shape
    n_blocks = -(-n_b // EXCESS_BLOCK)
    excess = np.zeros((view.bounds.orders.size, n_blocks), dtype=np.float32)

    def order(k: int) -> None:
        segments = _row_segments(view.bounds, n_a, k, inset=3.0)
        if segments.cols.shape[1] == 0:
            return
        value, expected = segments.take(view.flat), segments.take(view.expected)
        good = segments.used & view.testable(segments.take(view.regions), value, segments.take(view.input_mask), expected)
        dev = np.full((n_blocks * EXCESS_BLOCK, segments.cols.shape[1]), np.nan, dtype=np.float32)
        var = np.full_like(dev, np.nan)
        with np.errstate(all="ignore"):
            dev[:n_b] = np.where(good, value / expected - 1.0, np.nan)
            var[:n_b] = np.where(good, view.noise(segments.take(view.errs), expected) ** 2, np.nan)
            mad = MAD_TO_SIGMA * bn.nanmedian(np.abs(dev.reshape(n_blocks, -1)), axis=1)
            excess[k] = np.nan_to_num(np.sqrt(np.fmax(mad**2 - bn.nanmedian(var.reshape(n_blocks, -1), axis=1), 0.0)))

    _for_each(order, range(view.bounds.orders.size))
    return excess


def _excess_rows(excess: np.ndarray, bounds: OrderBounds, rows: slice, n_a: int) -> np.ndarray:
    """The excess scatter of :func:`_excess_scatter` spread over the pixels of each order on ``rows``."""
    extra = np.zeros((rows.stop - rows.start, n_a), dtype=np.float32)
    tile = _rows_of(bounds, rows)
    block = np.arange(rows.start, rows.stop) // EXCESS_BLOCK
    for k in range(bounds.orders.size):
        segments = _row_segments(tile, n_a, k)
        if segments.cols.shape[1]:
            segments.put(extra, np.broadcast_to(excess[k][block][:, None], segments.cols.shape))
    return extra


def _isolated(
    flat: np.ndarray, input_mask: np.ndarray, rows: np.ndarray, cols: np.ndarray, expected: np.ndarray, limit: np.ndarray
) -> np.ndarray:
    """Which of the candidates at (``rows``, ``cols``) exceed both neighbours along B by more than
    ``limit`` × ``expected`` (both given per candidate); non-finite or masked neighbours are ignored.

    The neighbours sit at nearly the same place in the slit profile, even at the order edges. A hot
    pixel stands above both; a real response feature that the expectation missed (a dust ring
    crossing) has at least one of them on its own level.
    """
    n_b = flat.shape[0]
    neighbours = np.full(rows.shape, np.nan, dtype=np.float32)
    for step, inside in ((-1, rows > 0), (1, rows < n_b - 1)):
        r, c = rows[inside] + step, cols[inside]
        value = flat[r, c]
        neighbours[inside] = np.fmax(neighbours[inside], np.where(np.isfinite(value) & ~input_mask[r, c], value, np.nan))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (flat[rows, cols] - neighbours) / expected > limit


def _flag(
    view: _FlatView,
    model_error: np.ndarray,
    hot_frames: np.ndarray,
    *,
    low_sensitivity_sigma: float,
    hot_sigma: float,
    dead_limit: float,
    min_depth: float,
) -> np.ndarray:
    """Dead, hot and low-sensitivity codes of every pixel (0 on the input mask); ``hot_frames`` marks
    the pixels hot in a dark or bias frame."""
    flat, expected, regions, input_mask = view.flat, view.expected, view.regions, view.input_mask
    n_b, n_a = flat.shape
    scatter, column_level = _block_levels(view.deviations, flat.shape)
    excess = _excess_scatter(view)
    codes = np.empty(flat.shape, dtype=np.uint8)

    def tile(rows: slice) -> None:
        index = np.arange(rows.start, rows.stop)
        region, value, masked = regions[rows], flat[rows], input_mask[rows]
        in_order, finite = region >= EDGE, np.isfinite(value)
        testable = view.testable_rows(rows)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = value / expected[rows]
            sigma = np.square(view.noise(view.errs[rows], expected[rows]))
            sigma += np.square(_excess_rows(excess, view.bounds, rows, n_a))
            sigma += np.square(model_error[rows])
            sigma = np.fmax(scatter[index // SIGMA_BLOCK], np.sqrt(sigma, out=sigma), out=sigma)
            deficit = 1.0 - ratio
            significant_low = testable & (deficit > low_sensitivity_sigma * sigma)
            dead = (significant_low & (ratio < dead_limit)) | (in_order & ~finite & ~masked)
            low = significant_low & ~dead & (deficit > min_depth)
            candidates = testable & (ratio - 1.0 > hot_sigma * sigma)
            column = column_level[index // COLUMN_BLOCK]
            zone = testable & (region == EDGE)
            dead |= zone & (column < dead_limit)
            low |= zone & ~dead & (1.0 - column > min_depth)
        hot = in_order & ~masked & hot_frames[rows]
        r, c = np.nonzero(candidates)
        isolated = _isolated(flat, input_mask, r + rows.start, c, expected[rows][r, c], 0.5 * hot_sigma * sigma[r, c])
        hot[r[isolated], c[isolated]] = True
        tile_codes = np.zeros(value.shape, dtype=np.uint8)
        for found, code in ((dead, DEAD), (hot, HOT), (low, LOW_SENSITIVITY)):
            tile_codes[found] |= code
        tile_codes[masked] = 0
        codes[rows] = tile_codes

    _for_each(tile, _tiles(n_b))
    return codes


def find_bad_pixels(
    flat_ba: np.ndarray,
    errs_ba: np.ndarray,
    bounds: OrderBounds,
    *,
    low_sensitivity_sigma: float,
    hot_sigma: float,
    dead_limit: float,
    edge_min_fraction: float,
    dark_ba: np.ndarray | None = None,
    dark_err_ba: np.ndarray | None = None,
    bias_ba: np.ndarray | None = None,
    bias_err_ba: np.ndarray | None = None,
    input_mask_ba: np.ndarray | None = None,
    min_depth: float = 0.08,
    window: int = 21,
) -> BadPixelResult:
    """Flag the bad pixels inside the orders of a background-subtracted master flat (BA orientation).

    * dead: below ``dead_limit`` × the local expectation (or no finite value);
    * low-sensitivity: below 1 − max(``low_sensitivity_sigma`` σ, ``min_depth``) × expectation;
    * hot: above the expectation by ``hot_sigma`` σ (and above both neighbours along B), or hot in
      ``dark_ba`` (NIR combined lamp-off/dark, e⁻) or ``bias_ba`` (UV-VIS master bias);
    * partial edge: within 2 px of an edge and below ``edge_min_fraction`` × the row-segment median.

    Dead and low-sensitivity pixels must also lie ``low_sensitivity_sigma`` σ below the expectation.
    ``window`` is the length (rows) of the running median along the orders. Only pixels inside the
    orders are flagged; pixels of ``input_mask_ba`` are left out of every statistic and count.
    """
    flat = np.asarray(flat_ba, dtype=np.float32)
    shape = flat.shape
    input_mask = np.zeros(shape, dtype=bool) if input_mask_ba is None else np.asarray(input_mask_ba, dtype=bool)
    tilt = np.abs(np.diff(bounds.centre, axis=1))
    sweep = float(np.max(np.where(bounds.valid[:, 1:], tilt, 0.0), initial=0.0)) * (window // 2)
    regions = _regions(bounds, shape, grow=MEDIAN_MASK_GROW + sweep)

    hot_frames = np.zeros(shape, dtype=bool)
    frame_sigma = max(hot_sigma, _false_alarm_sigma(flat.size))
    if dark_ba is not None:
        _hot_in_frame(dark_ba, hot_frames, lambda rows: regions[rows] <= EDGE, hot_sigma=frame_sigma, err=dark_err_ba,
                      mask=input_mask)
    if bias_ba is not None:
        no_edge_zone = lambda rows: np.zeros((rows.stop - rows.start, shape[1]), dtype=bool)  # noqa: E731
        _hot_in_frame(_without_line_structure(bias_ba, input_mask), hot_frames, no_edge_zone,
                      hot_sigma=frame_sigma, err=bias_err_ba, mask=input_mask)

    view = _FlatView(flat, np.asarray(errs_ba, dtype=np.float32), input_mask, regions, np.empty(shape, np.float32), bounds)
    model_error = _expect_flat(view, window)
    codes = _flag(
        view,
        model_error,
        hot_frames,
        low_sensitivity_sigma=low_sensitivity_sigma,
        hot_sigma=hot_sigma,
        dead_limit=dead_limit,
        min_depth=min_depth,
    )
    del model_error, hot_frames
    usable = np.isfinite(flat)
    usable &= ~input_mask
    usable &= regions >= EDGE
    codes[_partial_edges(flat, bounds, regions <= EDGE, usable, fraction=edge_min_fraction)] |= PARTIAL_EDGE
    counts = {
        "dead": int(np.count_nonzero(codes & DEAD)),
        "hot": int(np.count_nonzero(codes & HOT)),
        "low_sensitivity": int(np.count_nonzero(codes & LOW_SENSITIVITY)),
        "partial_edge": int(np.count_nonzero(codes & PARTIAL_EDGE)),
    }
    return BadPixelResult(codes, input_mask | (codes != 0), input_mask, view.expected, counts)


def bad_pixel_qc(result: BadPixelResult, final_mask: np.ndarray) -> dict[str, float | int]:
    """QC values of spec §8 from a result and the final QUAL mask (bool, BA orientation).

    ``N LOW SENS``: new dead or low-sensitivity pixels; ``N ORDER EDGE``: partial-edge pixels bad
    for no other reason; ``COLDPIX NUM``: bad pixels in ``final_mask`` less those edge pixels;
    ``COLDPIX FRAC``: that number over all pixels, 6 d.p.
    """
    final = np.asarray(final_mask, dtype=bool)
    edge_only = result.order_edge_only
    n_low = int(np.count_nonzero(result.codes & (DEAD | LOW_SENSITIVITY)))
    n_edge = int(np.count_nonzero(edge_only & final))
    coldpix = int(np.count_nonzero(final & ~edge_only))
    return {
        "N LOW SENS": n_low,
        "N ORDER EDGE": n_edge,
        "COLDPIX NUM": coldpix,
        "COLDPIX FRAC": round(coldpix / final.size, 6),
    }
