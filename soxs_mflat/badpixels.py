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

How it stays fast: only the pixels near the orders are visited, copied into a stack of *bands*
(:class:`_Bands`) in which a band column is one detector column over a block of rows. Away from the
edges the running median is taken once per block (the median of three block medians over the same
rows as the window) and interpolated along B; at the edge pixels, and where the flat bends along B
(where an order's illumination sets in), it is exact, run through strips of the columns (bottleneck).
The robust block statistics are taken from this expectation by sorting (numpy's SIMD sort). Only the
*candidates*, pixels beyond ``CANDIDATE_FRACTION`` of a threshold with the smallest σ they can have,
get the exact expectation, model error and σ described above, and are tested. Dark and bias frames
are searched the same way, only inside the orders, and a column's response or excess is measured
only where the block levels point to a bad column. The orders are shared among ``WORKERS`` threads.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from statistics import NormalDist

import bottleneck as bn
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from soxs_mflat.footprints import OrderBounds
from soxs_mflat.robust import MAD_TO_SIGMA

DEAD = np.uint8(1)
HOT = np.uint8(2)
LOW_SENSITIVITY = np.uint8(4)
PARTIAL_EDGE = np.uint8(8)
EDGE_ZONE = 2.0
"""Pixels whose centre is closer than this (px) to an order edge are edge pixels."""
ACROSS_WIDTH = 5
"""Columns of the median across the order that removes bad columns from the expectation."""
SIGMA_WINDOW = 96
LEVEL_WINDOW = 15
COLUMN_WINDOW = 400
EDGE_JITTER = 0.05
"""Sub-pixel uncertainty (px) of where a pixel sits in the slit profile; with the profile's
slope it sets the precision of the expectation at the order edges."""
SIGMA_BLOCK = SIGMA_WINDOW // 3
COLUMN_BLOCK = COLUMN_WINDOW // 5
EXCESS_BLOCK = 128
EXCESS_INSET = 3.0
"""Pixels (px inside the edges) on which the excess scatter is measured."""
NOISE_STEP = 4
"""The ERRS noise, smooth along B, is taken on every ``NOISE_STEP``-th row for the excess scatter."""
CANDIDATE_FRACTION = 0.7
"""A pixel is tested exactly once it lies beyond this fraction of a threshold (with the smallest σ it
can have); the rest covers the difference between the block-wise and the exact expectation."""
CURVED = 0.01
"""Band blocks whose expectation bends along B by more than this fraction (typically where an order's
illumination sets in) get the exact expectation rather than one interpolated between blocks."""
LINE_STEP = 16
"""Every ``LINE_STEP``-th column (row) gives the median of a bias row (column)."""
WORKERS = min(2, os.cpu_count() or 1)
"""Threads searching sets of orders at once (numpy and bottleneck release the GIL while they compute)."""
SMALL_MEDIAN = 8
"""Medians of at most this many values are taken by a min/max network rather than by sorting."""


@dataclass(frozen=True)
class BadPixelResult:
    """Bad pixels found in a master flat (BA orientation).

    ``codes`` holds the reasons as bits (:data:`DEAD`, :data:`HOT`, :data:`LOW_SENSITIVITY`,
    :data:`PARTIAL_EDGE`); ``mask`` is the input mask OR any reason; ``counts`` gives the pixels
    newly flagged by each kind (not already in the input mask; a pixel may have several reasons).
    """

    codes: np.ndarray
    mask: np.ndarray
    input_mask: np.ndarray
    counts: dict[str, int]

    def kind(self, code: np.uint8) -> np.ndarray:
        """Boolean map of the pixels carrying reason ``code``."""
        return (self.codes & code) != 0

    @property
    def order_edge_only(self) -> np.ndarray:
        """Partly illuminated edge pixels that are bad for no other reason (spec §8 ``N ORDER EDGE``)."""
        return (self.codes == PARTIAL_EDGE) & ~self.input_mask


def _nanmedian(values: np.ndarray, *, min_count: int = 1, overwrite: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Median over the last axis ignoring NaN (for an even count the mean of the two middle values, as
    bottleneck gives; NaN with fewer than ``min_count`` values) and the count of values.

    By sorting (in place in a contiguous ``values`` if ``overwrite``), which numpy does with SIMD:
    several times faster than a selection per row for rows of more than a few values (and than a
    partition at two places); shorter rows by :func:`_small_nanmedian`.
    """
    n = values.shape[-1]
    if n <= SMALL_MEDIAN:
        median, count = _small_nanmedian(np.ascontiguousarray(np.moveaxis(values, -1, 0)))
        median[count < max(min_count, 1)] = np.nan
        return median, count
    rows = values.reshape(-1, n)
    missing = np.isnan(rows)
    count = np.full(rows.shape[0], n, dtype=np.int64)
    if n > 64:
        count -= np.count_nonzero(missing, axis=1)
    else:
        for column in missing.T:
            count -= column
    ordered = rows if overwrite else rows.copy()
    ordered.sort(axis=1)
    index = np.arange(rows.shape[0])
    median = (0.5 * (ordered[index, np.maximum(count - 1, 0) // 2] + ordered[index, np.minimum(count // 2, n - 1)]))
    median[count < max(min_count, 1)] = np.nan
    return median.astype(np.float32, copy=False).reshape(values.shape[:-1]), count.reshape(values.shape[:-1])


def _small_nanmedian(stack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NaN-ignoring median over the first axis of a few values (as :func:`_nanmedian` gives) and the
    count of values: a min/max network brings the smallest half to the front (NaN counting as +inf),
    which is cheaper than sorting many rows of a few values. ``stack`` should be contiguous."""
    n = stack.shape[0]
    missing = np.isnan(stack)
    count = n - missing.sum(axis=0, dtype=np.int16)
    ordered = list(np.where(missing, np.float32(np.inf), stack))
    spare = np.empty_like(ordered[0])
    for i in range(n // 2 + 1):
        for j in range(n - 1, i, -1):
            np.minimum(ordered[j - 1], ordered[j], out=spare)
            np.maximum(ordered[j - 1], ordered[j], out=ordered[j])
            ordered[j - 1], spare = spare, ordered[j - 1]
    median = ordered[n // 2].copy() if n % 2 else 0.5 * (ordered[n // 2 - 1] + ordered[n // 2])
    partial = np.flatnonzero((count < n) & (count > 0))
    if partial.size:
        known = count.ravel()[partial]
        lowest = np.stack([plane.ravel()[partial] for plane in ordered[: n // 2 + 1]], axis=1)
        index = np.arange(partial.size)
        median.ravel()[partial] = 0.5 * (lowest[index, (known - 1) // 2] + lowest[index, known // 2])
    median[count == 0] = np.nan
    return median, count


def _median3(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Elementwise NaN-ignoring median of three arrays (the mean of two values where one is NaN)."""
    count = 3 - (np.isnan(a).view(np.uint8) + np.isnan(b).view(np.uint8) + np.isnan(c).view(np.uint8))
    total = np.nan_to_num(a) + np.nan_to_num(b) + np.nan_to_num(c)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count == 3, total - np.fmax(np.fmax(a, b), c) - np.fmin(np.fmin(a, b), c), total / count)


def _median5(a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray, e: np.ndarray) -> np.ndarray:
    """Elementwise median of five arrays by a min/max network; a NaN is passed over by every min/max
    (so one missing value gives one of the middle values of the rest, and only five give NaN)."""
    low = np.fmax(np.fmin(a, b), np.fmin(c, d))
    high = np.fmin(np.fmax(a, b), np.fmax(c, d))
    return np.fmax(np.fmin(low, high), np.fmin(np.fmax(low, high), e))


def _columns_within(bounds: OrderBounds, n_a: int, inset: float) -> tuple[np.ndarray, np.ndarray]:
    """First and last column of each order's pixel centres at least ``inset`` px inside its edges, on
    every row (last < first where there are none)."""
    first = np.clip(np.ceil(bounds.low + inset), 0, n_a).astype(np.int64)
    last = np.clip(np.floor(bounds.up - inset), -1, n_a - 1).astype(np.int64)
    return first, np.where(bounds.valid, last, first - 1)


@dataclass(frozen=True)
class _Bands:
    """The pixels near each order as a stack of bands of shape (order, row, column).

    Row ``r`` of band ``k`` holds frame row ``r`` from column ``start[k, r // block]`` on, for
    ``width`` columns: within a block of rows a band column is one detector column, so statistics
    along B can be taken per band column and block. Rows past the frame (up to whole blocks) repeat
    its last row and belong to no order.
    """

    start: np.ndarray
    width: int
    block: int
    shape: tuple[int, int]

    @classmethod
    def around(cls, first: np.ndarray, last: np.ndarray, shape: tuple[int, int], block: int) -> _Bands:
        """Bands holding the columns ``first - 1`` to ``last + 1`` of every row of each order."""
        n_b, n_a = shape
        n_blocks = -(-n_b // block)
        pad = ((0, 0), (0, n_blocks * block - n_b))
        has = last >= first
        low = np.pad(np.where(has, first - 1, n_a), pad, constant_values=n_a).reshape(len(first), n_blocks, block).min(axis=2)
        high = np.pad(np.where(has, last + 1, -1), pad, constant_values=-1).reshape(len(first), n_blocks, block).max(axis=2)
        low, high = np.clip(low, 0, n_a - 1), np.clip(high, 0, n_a - 1)
        width = int(min(np.max(np.where(high >= low, high - low + 1, 1), initial=1), n_a))
        return cls(np.clip(np.where(high >= low, low, 0), 0, n_a - width), width, block, shape)

    @classmethod
    def whole(cls, shape: tuple[int, int], block: int) -> _Bands:
        """One band covering the whole frame."""
        return cls(np.zeros((1, -(-shape[0] // block)), dtype=np.int64), shape[1], block, shape)

    def subset(self, bands: slice) -> _Bands:
        """These bands' ``bands`` only."""
        return _Bands(self.start[bands], self.width, self.block, self.shape)

    @property
    def n_rows(self) -> int:
        """Rows of each band (the frame's, up to whole blocks)."""
        return self.start.shape[1] * self.block

    def row_start(self, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
        """First frame column of each band on ``rows`` (bands × rows)."""
        return np.repeat(self.start, self.block, axis=1)[:, rows]

    def frame_rows(self, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
        """The frame row each band row ``rows`` holds."""
        return np.minimum(np.arange(self.n_rows), self.shape[0] - 1)[rows]

    def take(self, image: np.ndarray, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
        """Frame-shaped ``image`` on the bands' ``rows`` (bands × rows × width)."""
        return sliding_window_view(image, self.width, axis=1)[self.frame_rows(rows)[None, :], self.row_start(rows)]

    def between(self, first: np.ndarray, last: np.ndarray, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
        """Which band pixels on ``rows`` lie between the columns ``first`` and ``last`` (orders × frame
        rows)."""
        pad = ((0, 0), (0, self.n_rows - self.shape[0]))
        first = np.pad(first, pad, constant_values=1)[:, rows]
        span = np.pad(last, pad, constant_values=0)[:, rows] - first
        low = np.where(span >= 0, first - self.row_start(rows), self.width).astype(np.int32)[..., None]
        span = np.maximum(span, 0).astype(np.uint32)[..., None]
        return (np.arange(self.width, dtype=np.int32) - low).view(np.uint32) <= span

    def pixels(self, where: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Band, frame row and frame column of the band pixels ``where`` marks."""
        index = np.flatnonzero(where)
        k, index = np.divmod(index, self.n_rows * self.width)
        r, j = np.divmod(index, self.width)
        return k, r, self.start[k, r // self.block] + j

    def band_column(self, k: np.ndarray, r: np.ndarray, c: np.ndarray) -> np.ndarray:
        """Band column of the frame column ``c`` on row ``r`` of band ``k``."""
        return c - self.start[k, r // self.block]

    def aligned(self, coarse: np.ndarray, step: int, *, reflect: bool = False) -> np.ndarray:
        """Per-block values ``coarse`` (bands × blocks × width) of block ``q + step`` on the columns of
        block ``q`` (NaN where that block does not reach; past the ends with ``reflect`` the block as
        far inside, else NaN). The blocks of each column shift between the two are moved at once."""
        n_blocks = self.start.shape[1]
        source = np.arange(n_blocks) + step
        if reflect:
            source = np.abs(source)
            source = np.where(source > n_blocks - 1, 2 * (n_blocks - 1) - source, source)
        exists = (source >= 0) & (source < n_blocks)
        source = np.clip(source, 0, n_blocks - 1)
        shift = np.where(exists, self.start[:, source] - self.start, self.width)
        shifted = np.full(coarse.shape, np.nan, dtype=np.float32)
        for offset in np.unique(shift[shift < self.width]):
            k, q = np.nonzero(shift == offset)
            low, high = max(offset, 0), min(self.width + offset, self.width)
            if high > low:
                shifted[k, q, low:high] = coarse[k, source[q], low - offset : high - offset]
        return shifted

    def block_level(self, band: np.ndarray, *, min_count: int, trimmed: bool = False) -> np.ndarray:
        """Running median along B of ``3 × block`` rows of each band column, taken once per block
        (bands × blocks × width) as the median of three consecutive block medians (or, ``trimmed``,
        of block means without the highest and lowest value: cheaper, and as robust to one outlier per
        block); NaN ignored, NaN where the three blocks hold fewer than ``min_count`` values. Past the
        ends of the frame the block values continue linearly, as the reflection of a running median
        about its end level would."""
        n_k, n_rows, width = band.shape
        stack = np.ascontiguousarray(band.reshape(n_k, n_rows // self.block, self.block, width).transpose(2, 0, 1, 3))
        if trimmed:
            missing = np.isnan(stack)
            count = self.block - missing.sum(axis=0, dtype=np.int16)
            total = np.where(missing, np.float32(0.0), stack).sum(axis=0)
            cut = count >= 3
            total -= np.where(cut, np.fmax.reduce(stack, axis=0) + np.fmin.reduce(stack, axis=0), np.float32(0.0))
            with np.errstate(invalid="ignore", divide="ignore"):
                median = total / np.where(cut, count - 2, count)
        else:
            median, count = _small_nanmedian(stack)
        count = count.astype(np.float32)
        before, after = self.aligned(median, -1), self.aligned(median, 1)
        before[:, 0] = 2.0 * median[:, 0] - after[:, 0]
        after[:, -1] = 2.0 * median[:, -1] - before[:, -1]
        level = _median3(before, median, after)
        level[np.nan_to_num(self.aligned(count, -1)) + count + np.nan_to_num(self.aligned(count, 1)) < min_count] = np.nan
        return level

    def interpolate(self, coarse: np.ndarray) -> np.ndarray:
        """Per-block values at the blocks' central rows, interpolated linearly along B to every band row
        (extrapolated linearly past the first and last block)."""
        before = self.aligned(coarse, -1) - coarse
        after = self.aligned(coarse, 1) - coarse
        before, after = np.where(np.isnan(before), -after, before), np.where(np.isnan(after), -before, after)
        before, after = np.nan_to_num(before), np.nan_to_num(after)
        out = np.empty((*coarse.shape[:2], self.block, self.width), dtype=np.float32)
        for i in range(self.block):
            offset = (i - (self.block - 1) / 2) / self.block
            np.add(coarse, np.float32(abs(offset)) * (before if offset < 0 else after), out=out[:, :, i])
        return out.reshape(coarse.shape[0], -1, self.width)

    def regrouped(self, block: int) -> _Bands:
        """Bands over the same pixels in blocks of ``block`` rows (each as wide as its rows need)."""
        n_b, n_a = self.shape
        n_blocks = -(-n_b // block)
        row_start = np.pad(self.row_start()[:, :n_b], ((0, 0), (0, n_blocks * block - n_b)), mode="edge")
        row_start = row_start.reshape(-1, n_blocks, block)
        low = row_start.min(axis=2)
        width = int(min(np.max(row_start.max(axis=2) - low) + self.width, n_a))
        return _Bands(np.clip(low, 0, n_a - width), width, block, self.shape)

    def convert(self, values: np.ndarray, source: _Bands) -> np.ndarray:
        """Band ``values`` laid out as ``source`` in this layout (NaN where ``source`` does not reach),
        moving the rows of each shift between the two layouts at once."""
        n_b = self.shape[0]
        shift = source.row_start()[:, :n_b] - self.row_start()[:, :n_b]
        out = np.full((self.start.shape[0], self.n_rows, self.width), np.nan, dtype=np.float32)
        for step in np.unique(shift):
            k, r = np.nonzero(shift == step)
            low, high = max(step, 0), min(step + source.width, self.width)
            if high > low:
                out[k, r, low:high] = values[k, r, low - step : high - step]
        return out

    def medians(self, values: np.ndarray, *, min_count: int) -> np.ndarray:
        """NaN-ignoring median of each band column over each block of ``values`` (this layout); NaN
        with fewer than ``min_count`` values.

        By sorting each block's column (numpy sorts with SIMD; NaN go last) and picking the middle of
        its values.
        """
        n_k, n_rows, width = values.shape
        blocks = values.reshape(n_k, n_rows // self.block, self.block, width)
        count = blocks.shape[2] - np.isnan(blocks).sum(axis=2)
        ordered = np.ascontiguousarray(blocks.transpose(0, 1, 3, 2))
        ordered.sort(axis=-1)
        ordered = ordered.reshape(-1, blocks.shape[2])
        base = np.arange(0, ordered.size, blocks.shape[2]).reshape(count.shape)
        low = ordered.ravel().take(base + np.maximum(count - 1, 0) // 2)
        high = ordered.ravel().take(base + np.minimum(count // 2, blocks.shape[2] - 1))
        median = 0.5 * (low + high)
        median[count < max(min_count, 1)] = np.nan
        return median

    def smoothed(self, levels: np.ndarray, width: int) -> np.ndarray:
        """NaN-ignoring running median of per-block ``levels`` over ``width`` blocks along B (ends
        reflected)."""
        half = width // 2
        shifted = [self.aligned(levels, step, reflect=True) if step else levels for step in range(-half, half + 1)]
        return _small_nanmedian(np.stack(shifted))[0]


def _across_median(coarse: np.ndarray, bands: _Bands) -> np.ndarray:
    """Median over ``ACROSS_WIDTH`` neighbouring band columns of per-block values (NaN passed over, see
    :func:`_median5`; reflected at the frame's sides)."""
    half = ACROSS_WIDTH // 2
    width = coarse.shape[-1]
    padded = np.pad(coarse, ((0, 0), (0, 0), (half, half)), constant_values=np.nan)
    if width > half:
        left = bands.start == 0
        padded[left, :half] = coarse[left, half:0:-1]
        right = bands.start + width == bands.shape[1]
        padded[right, -half:] = coarse[right, -2 : -half - 2 : -1]
    return _median5(*(padded[..., k : k + width] for k in range(ACROSS_WIDTH)))


def _cleaned(values: np.ndarray, masked: np.ndarray | None) -> np.ndarray:
    """``values`` (a fresh copy, made float32) with infinities and ``masked`` pixels set to NaN."""
    values = values.astype(np.float32, copy=False)
    infinite = np.isinf(values)
    if infinite.any():
        values[infinite] = np.nan
    if masked is not None:
        np.copyto(values, np.float32(np.nan), where=masked)
    return values


@dataclass(frozen=True)
class _Image:
    """A frame read on bands or at scattered pixels: non-finite and ``mask`` pixels as NaN, minus fixed
    row and column offsets (so that no cleaned copy of the whole frame is made)."""

    data: np.ndarray
    mask: np.ndarray | None = None
    row_offset: np.ndarray | None = None
    column_offset: np.ndarray | None = None

    def on(self, bands: _Bands) -> np.ndarray:
        """The image on the bands."""
        values = _cleaned(bands.take(self.data), None if self.mask is None else bands.take(self.mask))
        if self.row_offset is not None and self.column_offset is not None:
            values -= self.row_offset[bands.frame_rows()][None, :, None]
            blocks = values.reshape(*bands.start.shape, bands.block, bands.width)
            blocks -= self.column_offset[bands.start[..., None] + np.arange(bands.width)][:, :, None, :]
        return values

    def at(self, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
        """The image at the pixels (``rows``, ``columns``)."""
        values = _cleaned(self.data[rows, columns], None if self.mask is None else self.mask[rows, columns])
        if self.row_offset is not None and self.column_offset is not None:
            values -= self.row_offset[rows]
            values -= self.column_offset[columns]
        return values


@dataclass(frozen=True)
class _Traced:
    """On which frame rows each order is traced (orders × rows), for pixels of the given ``orders``."""

    valid: np.ndarray
    orders: np.ndarray

    def on(self, rows: np.ndarray) -> np.ndarray:
        """Whether each pixel's order is traced on ``rows`` (pixels × rows)."""
        return self.valid[self.orders[:, None], rows]

    def subset(self, picked: np.ndarray) -> _Traced:
        """The same for the pixels ``picked``."""
        return _Traced(self.valid, self.orders[picked])


def _along_medians(
    image: _Image, rows: np.ndarray, columns: np.ndarray, window: int, *, min_count: int, traced: _Traced | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact running median along B of ``window`` rows at each pixel, and how many rows of its window
    are supported.

    As in a running median over the frame: only the rows on which ``traced`` says the pixel's order is
    traced count (all if None), and past the ends of the frame the rows are reflected about a robust
    end level (:func:`_end_level`), which continues a trend.
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
            level = _end_level(image, columns[hit], end, None if traced is None else traced.subset(hit))
            values[hit] = np.where(beyond[hit], 2.0 * level[:, None] - values[hit], values[hit])
    median, _ = _nanmedian(values, min_count=min(min_count, window))
    return median, np.count_nonzero(supported & (wanted == mirror), axis=1)


def _end_level(image: _Image, columns: np.ndarray, end: int, traced: _Traced | None) -> np.ndarray:
    """Robust value at the frame row ``end`` (0 or the last) of each column: medians of the 5 rows
    nearest it and of the next 5, extrapolated linearly to it."""
    n_b = image.data.shape[0]
    rows = np.clip(end + (1 if end == 0 else -1) * np.arange(10), 0, n_b - 1)[None, :].repeat(columns.size, axis=0)
    values = image.at(rows, np.broadcast_to(columns[:, None], rows.shape))
    if traced is not None:
        values[~traced.on(rows)] = np.nan
    first, _ = _nanmedian(values[:, :5])
    second = _nanmedian(values[:, 5:10])[0] if n_b >= 10 else first
    return np.where(np.isfinite(second), first - 0.4 * (second - first), first)


def _local_model(
    image: _Image, rows: np.ndarray, columns: np.ndarray, zone: np.ndarray, window: int, *, traced: _Traced | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The exact local expectation at the pixels and its uncertainty (same units).

    Running median along B over ``window`` rows, then (except in ``zone``) the NaN-ignoring median
    across ``ACROSS_WIDTH`` columns (reflected at the frame's sides). The uncertainty is ``EDGE_JITTER``
    times the larger difference of the along-B median to its neighbours across A, and half the
    missing rows of the window times the larger difference to its neighbours along B.
    """
    n_b, n_a = image.data.shape
    half = ACROSS_WIDTH // 2
    reflected = np.abs(columns[:, None] + np.arange(-half, half + 1))
    reflected = np.clip(np.where(reflected > n_a - 1, 2 * (n_a - 1) - reflected, reflected), 0, n_a - 1)
    min_count = max(window // 3, 1)
    repeated = np.repeat(np.arange(rows.size), ACROSS_WIDTH)
    along, count = _along_medians(image, rows[repeated], reflected.ravel(), window, min_count=min_count,
                                  traced=None if traced is None else traced.subset(repeated))
    along = along.reshape(rows.size, ACROSS_WIDTH)
    level = np.where(zone, along[:, half], _small_nanmedian(np.ascontiguousarray(along.T))[0])
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
            median, _ = _along_medians(image, shifted, columns[short], window, min_count=min_count,
                                       traced=None if traced is None else traced.subset(short))
            steps.append(np.where(shifted == rows[short] + step, np.abs(median - along[short, half]), np.nan))
        slope_b[short] = np.nan_to_num(np.fmax(*steps))
    uncertainty = np.hypot(EDGE_JITTER * slope_a, 0.5 * missing * slope_b)
    return level.astype(np.float32), uncertainty.astype(np.float32)


@dataclass(frozen=True)
class _BlockMap:
    """A statistic per frame column and block of frame rows on the pixels of a set of bands:
    ``levels[k, q, j]`` holds frame column ``bands.start[k, q] + j`` on the rows of block ``q``."""

    bands: _Bands
    levels: np.ndarray

    def at(self, k: np.ndarray, r: np.ndarray, c: np.ndarray) -> np.ndarray:
        """The statistic at the pixels (band ``k``, frame row ``r``, column ``c``; NaN off its bands)."""
        j = self.bands.band_column(k, r, c)
        inside = (j >= 0) & (j < self.bands.width)
        return np.where(inside, self.levels[k, r // self.bands.block, np.clip(j, 0, self.bands.width - 1)], np.float32(np.nan))

    def lowest(self, bands: _Bands) -> np.ndarray:
        """The smaller statistic at the first and last row of each block of ``bands`` (bands × blocks ×
        width, on its columns; NaN where none)."""
        n_k, n_blocks = bands.start.shape
        grouped = self.bands
        column = bands.start[..., None] + np.arange(bands.width)
        lowest = np.full(column.shape, np.inf, dtype=np.float32)
        for row in (np.arange(n_blocks) * bands.block, np.arange(n_blocks) * bands.block + bands.block - 1):
            block = np.minimum(row, bands.shape[0] - 1) // grouped.block
            j = column - grouped.start[:, block][..., None]
            index = (np.arange(n_k)[:, None, None] * grouped.start.shape[1] + block[None, :, None]) * grouped.width
            value = self.levels.take(index + np.clip(j, 0, grouped.width - 1))
            np.fmin(lowest, np.where((j >= 0) & (j < grouped.width), value, np.float32(np.nan)), out=lowest)
        lowest[np.isinf(lowest)] = np.nan
        return lowest


def _scatter_map(deviation: np.ndarray, bands: _Bands) -> _BlockMap:
    """MAD-based σ of absolute deviations (on ``bands``) per frame column and block of ``SIGMA_BLOCK``
    rows, smoothed over three blocks along B and five columns (one bad column does not inflate its
    neighbours'). Half of the bands at a time, to bound the temporary copies."""
    grouped = bands.regrouped(SIGMA_BLOCK)
    n_k = bands.start.shape[0]
    levels = []
    for low, high in ((0, -(-n_k // 2)), (-(-n_k // 2), n_k)):
        part = slice(low, high)
        regrouped = grouped.subset(part)
        levels.append(regrouped.medians(regrouped.convert(deviation[part], bands.subset(part)), min_count=5))
    levels = grouped.smoothed(np.concatenate(levels), 3)
    half = ACROSS_WIDTH // 2
    padded = np.pad(levels, ((0, 0), (0, 0), (half, half)), constant_values=np.nan)
    across, _ = _small_nanmedian(np.stack([padded[..., i : i + grouped.width] for i in range(ACROSS_WIDTH)]))
    return _BlockMap(grouped, MAD_TO_SIGMA * across)


def _blocks_around(
    values: np.ndarray,
    bands: _Bands,
    pixels: tuple[np.ndarray, np.ndarray, np.ndarray],
    columns: np.ndarray,
    *,
    block: int,
    reach: int,
    min_count: int,
    absolute: bool = False,
) -> np.ndarray:
    """NaN-ignoring medians of band ``values`` (their absolute values with ``absolute``) per frame
    column of ``columns`` (pixels × columns) and block of ``block`` frame rows, for the blocks within
    ``reach`` of that of each of the ``pixels`` (band, row, column; reflected past the frame's ends):
    pixels × blocks × columns, NaN with fewer than ``min_count`` values."""
    k, r, _ = pixels
    n_b = bands.shape[0]
    last = -(-n_b // block) - 1
    index = np.abs(r[:, None] // block + np.arange(-reach, reach + 1))
    index = np.clip(np.where(index > last, 2 * last - index, index), 0, last)
    rows = index[:, :, None, None] * block + np.arange(block)
    band = k[:, None, None, None]
    j = columns[:, None, :, None] - bands.start[band, np.minimum(rows, n_b - 1) // bands.block]
    inside = (rows < n_b) & (j >= 0) & (j < bands.width)
    gathered = np.where(inside, values[band, np.minimum(rows, n_b - 1), np.clip(j, 0, bands.width - 1)], np.float32(np.nan))
    if absolute:
        np.abs(gathered, out=gathered)
    return _nanmedian(gathered, min_count=min_count, overwrite=True)[0]


def _scatter_at(excess: np.ndarray, bands: _Bands, pixels: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """:func:`_scatter_map` of |``excess``| at a few ``pixels`` (band, row, column) only, from the
    blocks around them."""
    half = ACROSS_WIDTH // 2
    columns = pixels[2][:, None] + np.arange(-half, half + 1)
    levels = _blocks_around(excess, bands, pixels, columns, block=SIGMA_BLOCK, reach=1, min_count=5, absolute=True)
    along, _ = _small_nanmedian(np.ascontiguousarray(levels.transpose(1, 0, 2)))
    return MAD_TO_SIGMA * _small_nanmedian(np.ascontiguousarray(along.T))[0]


def _column_at(response: np.ndarray, bands: _Bands, pixels: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """Typical value of a ``response`` (on ``bands``) in the column of each of the ``pixels`` (band,
    row, column) over ``COLUMN_WINDOW`` rows: the running median over five blocks of ``COLUMN_BLOCK``
    rows of the column's medians over them (NaN with fewer than 10 values)."""
    levels = _blocks_around(response, bands, pixels, pixels[2][:, None], block=COLUMN_BLOCK, reach=2, min_count=10)
    return _small_nanmedian(np.ascontiguousarray(levels[:, :, 0].T))[0]


def _frame_hot(
    image: _Image,
    err: np.ndarray | None,
    bands: _Bands,
    tested: np.ndarray,
    inner: np.ndarray,
    zone: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
    *,
    hot_sigma: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the ``tested`` band pixels of a dark, lamp-off or bias frame more than
    ``hot_sigma`` σ above their local level (see :func:`hot_in_frame`); ``inner`` marks where the level
    takes the median across columns, and ``zone`` (band, row, column of tested pixels outside
    ``inner``, or None) those to which a column's excess over its inner pixels is carried.

    The level per block of rows, interpolated along B, gives the robust statistics and the candidates;
    those are then tested with their exact level. With ``err``, which bounds σ from below, the MAD
    scatter is needed at the candidates only.
    """
    values = image.on(bands)
    n_k, n_blocks = bands.start.shape
    along = bands.block_level(values, min_count=max(LEVEL_WINDOW // 3, 1), trimmed=True)
    inner_blocks = inner[:, np.arange(n_blocks) * bands.block + bands.block // 2]
    across = _across_median(along, bands)
    values -= bands.interpolate(np.where(inner_blocks, across, along))
    excess = values
    if err is None:
        scatter = _scatter_map(np.abs(excess), bands)
        lowest = scatter.lowest(bands)
    else:
        err_blocks = bands.take(err).reshape(n_k, n_blocks, bands.block, bands.width).transpose(2, 0, 1, 3)
        lowest = np.fmin.reduce(np.ascontiguousarray(err_blocks), axis=0)
    limit = np.float32(CANDIDATE_FRACTION * hot_sigma) * np.nan_to_num(lowest)
    with np.errstate(invalid="ignore"):
        candidate = excess.reshape(n_k, n_blocks, bands.block, bands.width) > limit[:, :, None, :]
    candidate = candidate.reshape(excess.shape)
    candidate &= tested
    k, r, c = bands.pixels(candidate)
    response = None
    if zone is not None:
        response = np.where(inner, excess, np.float32(np.nan))
        with np.errstate(invalid="ignore"):
            high = inner_blocks & (along - across > 0.5 * limit)
        zk, zr, zc = (part[_marked_columns(bands, high)[zone[0], zone[1] // COLUMN_BLOCK + 2, zone[2]]] for part in zone)
        with np.errstate(invalid="ignore"):
            carried = _column_at(response, bands, (zk, zr, zc)) > limit[zk, zr // bands.block, bands.band_column(zk, zr, zc)]
        k, r, c = (np.concatenate(pair) for pair in ((k, zk[carried]), (r, zr[carried]), (c, zc[carried])))
    outside = ~inner[k, r, bands.band_column(k, r, c)]
    level, uncertainty = _local_model(image, r, c, outside, LEVEL_WINDOW)
    if err is None:
        sigma = np.hypot(scatter.at(k, r, c), uncertainty)
    else:
        with np.errstate(invalid="ignore"):
            sigma = np.fmax(np.hypot(_scatter_at(excess, bands, (k, r, c)), uncertainty), err[r, c])
    sigma *= hot_sigma
    with np.errstate(invalid="ignore"):
        hot = image.at(r, c) - level > sigma
        if response is not None:
            hot |= outside & (_column_at(response, bands, (k, r, c)) > sigma)
    return r[hot], c[hot]


def _marked_columns(bands: _Bands, blocks: np.ndarray) -> np.ndarray:
    """Per band, block of ``COLUMN_BLOCK`` frame rows (offset by 2) and frame column, whether one of the
    band blocks ``blocks`` marks (bands × blocks × width) lies within two such blocks: where a column
    statistic over ``COLUMN_WINDOW`` rows may see it."""
    n_b, n_a = bands.shape
    marked = np.zeros((bands.start.shape[0], -(-n_b // COLUMN_BLOCK) + 4, n_a), dtype=bool)
    k, q, j = np.nonzero(blocks)
    block = np.minimum(q * bands.block + bands.block // 2, n_b - 1) // COLUMN_BLOCK
    for shift in range(5):
        marked[k, block + shift, bands.start[k, q] + j] = True
    return marked


def _false_alarm_sigma(n_pixels: int, *, expected_false: float = 0.1) -> float:
    """One-sided Gaussian threshold (σ) with ``expected_false`` false alarms over ``n_pixels``.

    A dark or bias frame is searched pixel by pixel over the whole detector: at 5σ a 4-Mpixel frame
    already expects one pure-noise detection, so the threshold grows with the number of pixels.
    Bias frames carry no order structure, so no edge zone applies to them (a fixed-pattern column
    offset is removed by the bias subtraction and is not a hot column).
    """
    return -NormalDist().inv_cdf(expected_false / max(n_pixels, 1))


def _line_structure(bias: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median of each row of a bias frame and then of each column of what is left (from every
    ``LINE_STEP``-th column and row; ``mask`` pixels ignored).

    Row and column offsets are fixed-pattern bias structure that bias subtraction removes exactly;
    left in, a column a few e⁻ above its neighbours would read as a hot column.
    """
    row_offset = np.nan_to_num(_nanmedian(_cleaned(np.array(bias[:, ::LINE_STEP]), mask[:, ::LINE_STEP]))[0])
    rows = _cleaned(np.array(bias[::LINE_STEP]), mask[::LINE_STEP]) - row_offset[::LINE_STEP, None]
    return row_offset, np.nan_to_num(_nanmedian(np.ascontiguousarray(rows.T))[0])


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

    The level is a running median over ``LEVEL_WINDOW`` rows, then across ``ACROSS_WIDTH`` columns,
    so it follows the thermal light of the orders in NIR lamp-off frames; ``distance`` (px to the
    nearest order edge, as in :func:`find_bad_pixels`) marks where it must not mix columns; there a
    hot column is found from its excess away from the edges. σ is the larger of ``err`` and the local
    MAD scatter combined with the level's uncertainty at edges. Pass ``err``: near the order edges of
    a lamp-off frame the MAD alone understates the noise.
    """
    shape = np.shape(frame)
    bands = _Bands.whole(shape, max(LEVEL_WINDOW // 3, 1))
    tested = np.broadcast_to((np.arange(bands.n_rows) < shape[0])[None, :, None], (1, bands.n_rows, shape[1]))
    inner, zone = tested, None
    if distance is not None:
        inner = bands.take(np.asarray(distance) >= EDGE_ZONE) & tested
        zone = bands.pixels(tested & ~inner)
    image = _Image(np.asarray(frame), None if mask is None else np.asarray(mask, dtype=bool))
    hot = np.zeros(shape, dtype=bool)
    r, c = _frame_hot(image, None if err is None else np.asarray(err, dtype=np.float32), bands, tested, inner, zone,
                      hot_sigma=hot_sigma)
    hot[r, c] = True
    return hot


@dataclass(frozen=True)
class _Orders:
    """Where the orders' pixels are: per order and frame row the first and last column in the order
    and whether it is traced; the bands around them and which band pixels are in an order and at
    least ``EDGE_ZONE`` px inside it (``inner``)."""

    first: np.ndarray
    last: np.ndarray
    bounds: OrderBounds
    bands: _Bands
    in_order: np.ndarray
    inner: np.ndarray

    @classmethod
    def of(cls, bounds: OrderBounds, shape: tuple[int, int], block: int) -> _Orders:
        """The orders of ``bounds`` on a frame of ``shape``, in bands of blocks of ``block`` rows."""
        first, last = _columns_within(bounds, shape[1], 0.0)
        bands = _Bands.around(first, last, shape, block)
        in_order = bands.between(first, last)
        return cls(first, last, bounds, bands, in_order, bands.between(*_columns_within(bounds, shape[1], EDGE_ZONE)) & in_order)

    def inset(self, inset: float, rows: np.ndarray) -> np.ndarray:
        """Which band pixels on ``rows`` lie at least ``inset`` px inside an order."""
        return self.bands.between(*_columns_within(self.bounds, self.bands.shape[1], inset), rows)

    def traced(self, orders: np.ndarray) -> _Traced:
        """Which rows a running median along B at pixels of ``orders`` may use."""
        return _Traced(self.bounds.valid, orders)

    def contain(self, index: np.ndarray) -> np.ndarray:
        """Which of the pixels (flat indices) lie in an order."""
        rows, columns = np.divmod(index, self.bands.shape[1])
        return ((self.first[:, rows] <= columns) & (columns <= self.last[:, rows])).any(axis=0)


def _exact_along(flat: _Image, orders: _Orders, pixels: tuple[np.ndarray, np.ndarray, np.ndarray], window: int) -> np.ndarray:
    """Exact running median along B (NaN-ignoring, ``window`` rows) at ``pixels`` (band, row, column) of
    the ``flat``; only the rows on which the pixel's order is traced count.

    The pixels of a column and order on consecutive rows share one strip of the column, through which
    a running median is moved (bottleneck): the pixels of tilted edges come in short runs, those of
    straight ones in long runs. Pixels whose window leaves the frame go through :func:`_along_medians`.
    """
    k, r, c = pixels
    n_b, n_a = flat.data.shape
    half = window // 2
    min_count = max(window // 3, 1)
    expected = np.empty(r.size, dtype=np.float32)
    ends = (r < half) | (r >= n_b - half)
    if ends.any():
        expected[ends] = _along_medians(flat, r[ends], c[ends], window, min_count=min_count, traced=orders.traced(k[ends]))[0]
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
        values = flat.data.ravel().take(strip).astype(np.float32, copy=False)
        values[~orders.bounds.valid[strip_band, strip_row] | flat.mask.ravel().take(strip)] = np.nan
        moved = bn.move_median(values, window, min_count=min_count)
        run = np.repeat(np.arange(first.size), np.diff(np.r_[first, inside.size]))
        expected[inside] = moved[offset[run] + row - row[first][run] + 2 * half]
    return expected


def _follow_curvature(expected: np.ndarray, node: np.ndarray, flat: _Image, orders: _Orders, window: int) -> None:
    """Make ``expected`` exact on the band blocks where the flat curves along B (where an order's
    illumination sets in or ends), which interpolating between blocks would not follow: there the
    running median along B of every band column is taken exactly, then the median across columns."""
    bands = orders.bands
    with np.errstate(invalid="ignore", divide="ignore"):
        curvature = np.abs(bands.aligned(node, -1) + bands.aligned(node, 1) - 2.0 * node) / np.abs(node)
    curvature = np.where(np.isfinite(curvature), curvature, np.float32(0.0))
    k, q = np.nonzero(np.median(curvature, axis=2) > CURVED)
    if not k.size:
        return
    k, r = np.repeat(k, bands.block), (q[:, None] * bands.block + np.arange(bands.block)).ravel()
    k, r = k[r < bands.shape[0]], r[r < bands.shape[0]]
    along = np.full((r.size, bands.width + ACROSS_WIDTH - 1), np.nan, dtype=np.float32)
    half = ACROSS_WIDTH // 2
    columns = bands.start[k, r // bands.block][:, None] + np.arange(bands.width)
    inside = columns < bands.shape[1]
    pixels = (np.broadcast_to(k[:, None], columns.shape)[inside], np.broadcast_to(r[:, None], columns.shape)[inside],
              columns[inside])
    along[:, half : half + bands.width][inside] = _exact_along(flat, orders, pixels, window)
    across, _ = _small_nanmedian(np.stack([along[:, i : i + bands.width] for i in range(ACROSS_WIDTH)]))
    expected[k, r] = np.where(orders.inner[k, r], across, expected[k, r])


@dataclass(frozen=True)
class _Tests:
    """The thresholds of :func:`find_bad_pixels`."""

    low_sensitivity_sigma: float
    hot_sigma: float
    dead_limit: float
    min_depth: float


def _excess_scatter(deviation: np.ndarray, errs: np.ndarray, expected: np.ndarray, orders: _Orders) -> np.ndarray:
    """Pixel-to-pixel scatter beyond the ERRS noise (e.g. PRNU), per order (rows) and block of
    ``EXCESS_BLOCK`` rows (columns), from |flat / expectation − 1| (``deviation``) and the ``expected``
    on the bands.

    Measured on the pixels ≥ ``EXCESS_INSET`` px inside the edges as √max(0, MAD² − median(noise²));
    where the expectation follows a pixel too closely (steep edges) the MAD would understate the
    scatter, so this is what carries it to the edges. The noise, smooth along B, is taken on every
    ``NOISE_STEP``-th row.
    """
    bands = orders.bands
    n_b = bands.shape[0]
    n_k = bands.start.shape[0]
    n_blocks = -(-n_b // EXCESS_BLOCK)
    rows = np.arange(n_b)
    core = orders.inset(EXCESS_INSET, rows)
    core_deviation = np.full((n_k, n_blocks * EXCESS_BLOCK, bands.width), np.nan, dtype=np.float32)
    np.copyto(core_deviation[:, :n_b], deviation[:, :n_b], where=core)
    mad = MAD_TO_SIGMA * _nanmedian(core_deviation.reshape(n_k, n_blocks, -1), overwrite=True)[0]
    del core_deviation
    sampled = rows[::NOISE_STEP]
    with np.errstate(invalid="ignore", divide="ignore"):
        noise = np.nan_to_num(bands.take(errs, sampled), nan=0.0, posinf=0.0, neginf=0.0) / expected[:, sampled]
        variance = np.where(core[:, ::NOISE_STEP] & np.isfinite(deviation[:, sampled]), np.square(noise), np.float32(np.nan))
    padding = ((0, 0), (0, n_blocks * (EXCESS_BLOCK // NOISE_STEP) - sampled.size), (0, 0))
    variance = np.pad(variance, padding, constant_values=np.nan).reshape(n_k, n_blocks, -1)
    return np.nan_to_num(np.sqrt(np.fmax(mad**2 - _nanmedian(variance)[0], 0.0)))


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


def _test_candidates(
    flat: _Image,
    errs: np.ndarray,
    input_mask: np.ndarray,
    orders: _Orders,
    window: int,
    tests: _Tests,
    pixels: tuple[np.ndarray, np.ndarray, np.ndarray],
    scatter: _BlockMap,
    excess: np.ndarray,
) -> dict[np.uint8, np.ndarray]:
    """Flat indices of the dead, hot and low-sensitivity pixels among the candidate ``pixels`` (band,
    frame row, column) by the tests of :func:`find_bad_pixels` with their exact expectation."""
    n_a = flat.data.shape[1]
    k, r, c = pixels
    zone = ~orders.inner[k, r, orders.bands.band_column(k, r, c)]
    level, uncertainty = _local_model(flat, r, c, zone, window, traced=orders.traced(k))
    with np.errstate(invalid="ignore", divide="ignore"):
        noise = np.where(np.isfinite(errs[r, c]), errs[r, c], 0.0) / level
        sigma = np.sqrt(noise**2 + excess[k, r // EXCESS_BLOCK] ** 2 + np.nan_to_num(uncertainty / level) ** 2)
        sigma = np.fmax(scatter.at(k, r, c), sigma)
        ratio = flat.data[r, c] / level
        testable = level > 0
        deficit = 1.0 - ratio
        significant_low = testable & (deficit > tests.low_sensitivity_sigma * sigma)
        dead = significant_low & (ratio < tests.dead_limit)
        low = significant_low & ~dead & (deficit > tests.min_depth)
        above = testable & (ratio - 1.0 > tests.hot_sigma * sigma)
    hot = above & _isolated(flat.data, input_mask, r, c, level, 0.5 * tests.hot_sigma * sigma)
    return {DEAD: r[dead] * n_a + c[dead], HOT: r[hot] * n_a + c[hot], LOW_SENSITIVITY: r[low] * n_a + c[low]}


def _flag_flat(
    flat: _Image,
    values: np.ndarray,
    errs: np.ndarray,
    input_mask: np.ndarray,
    orders: _Orders,
    edge: tuple[np.ndarray, np.ndarray, np.ndarray],
    window: int,
    tests: _Tests,
) -> dict[np.uint8, np.ndarray]:
    """Flat indices of the dead, hot (in the flat) and low-sensitivity pixels of the ``flat`` (``values``
    on the bands; ``edge`` its edge pixels as band, row and column).

    The expectation is exact at the edge pixels and per block of rows elsewhere, interpolated along B;
    it gives the robust statistics. Candidates are the pixels beyond ``CANDIDATE_FRACTION`` of a
    threshold with the smallest σ of their block; they are tested with the exact expectation.
    """
    bands = orders.bands
    n_b = flat.data.shape[0]
    n_blocks = bands.start.shape[1]
    k, r, c = edge
    edge_expected = _exact_along(flat, orders, edge, window)
    inner_along = bands.block_level(np.where(orders.inner, values, np.float32(np.nan)), min_count=max(window // 3, 1))
    along = inner_along.copy()
    central = r % bands.block == bands.block // 2
    along[k[central], r[central] // bands.block, bands.band_column(k, r, c)[central]] = edge_expected[central]
    node = _across_median(along, bands)
    expected = bands.interpolate(node)
    _follow_curvature(expected, node, flat, orders, window)
    np.copyto(expected, np.float32(np.nan), where=~orders.in_order)
    expected[k, r, bands.band_column(k, r, c)] = edge_expected
    with np.errstate(invalid="ignore", divide="ignore"):
        deviation = values / expected
        np.copyto(deviation, np.float32(np.nan), where=~(expected > 0))
        deviation -= 1.0
        np.abs(deviation, out=deviation)
    scatter = _scatter_map(deviation, bands)
    excess = _excess_scatter(deviation, errs, expected, orders)

    block_start = np.arange(n_blocks) * bands.block
    excess_lowest = np.fmin(excess[:, np.minimum(block_start, n_b - 1) // EXCESS_BLOCK],
                            excess[:, np.minimum(block_start + bands.block - 1, n_b - 1) // EXCESS_BLOCK])
    limit = np.fmax(np.nan_to_num(scatter.lowest(bands)), excess_lowest[..., None])
    limit *= np.float32(CANDIDATE_FRACTION * min(tests.hot_sigma, tests.low_sensitivity_sigma))
    with np.errstate(invalid="ignore"):
        candidate = deviation > np.repeat(limit, bands.block, axis=1)
    del deviation
    flagged = _test_candidates(flat, errs, input_mask, orders, window, tests, bands.pixels(candidate), scatter, excess)
    del candidate
    with np.errstate(invalid="ignore", divide="ignore"):
        low_blocks = inner_along / node < 1.0 - 0.5 * tests.min_depth
    dead, low = _carried_columns(values, expected, orders, edge, edge_expected, low_blocks, flat.mask, tests)
    flagged[DEAD] = np.concatenate([flagged[DEAD], dead])
    flagged[LOW_SENSITIVITY] = np.concatenate([flagged[LOW_SENSITIVITY], low[~np.isin(low, flagged[DEAD])]])
    return flagged


def _carried_columns(
    values: np.ndarray,
    expected: np.ndarray,
    orders: _Orders,
    edge: tuple[np.ndarray, np.ndarray, np.ndarray],
    edge_expected: np.ndarray,
    low_blocks: np.ndarray,
    unusable: np.ndarray,
    tests: _Tests,
) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices of the usable ``edge`` pixels (band, row, column; their expectation
    ``edge_expected``) whose column responds below ``dead_limit`` (dead) or by more than ``min_depth``
    below 1 (low-sensitivity) in the pixels at least ``EDGE_ZONE`` inside the order (flat ``values`` /
    ``expected`` on the bands). Only the columns where a band block of ``low_blocks`` lies near can,
    so only there is the response measured."""
    bands = orders.bands
    near = np.flatnonzero(_marked_columns(bands, low_blocks)[edge[0], edge[1] // COLUMN_BLOCK + 2, edge[2]])
    k, r, c = (part[near] for part in edge)
    if not near.size:
        return near, near
    with np.errstate(invalid="ignore", divide="ignore"):
        response = np.where(orders.inner & (expected > 0), values / expected, np.float32(np.nan))
        response = _column_at(response, bands, (k, r, c))
        usable = ~unusable[r, c] & (edge_expected[near] > 0)
        dead = usable & (response < tests.dead_limit)
        low = usable & ~dead & (1.0 - response > tests.min_depth)
    index = r * bands.shape[1] + c
    return index[dead], index[low]


def _partial_edges(values: np.ndarray, orders: _Orders, edge: tuple[np.ndarray, np.ndarray, np.ndarray], *,
                   fraction: float) -> np.ndarray:
    """Which ``edge`` pixels (band, row, column) are below ``fraction`` × the median of their order's
    usable pixels on their row (``values`` on the bands, NaN where unusable), which needs at least 3
    of them and a positive median; ``fraction`` ≤ 0 turns it off.

    Only the rows where an edge pixel lies below ``fraction`` × the row's highest value can hold one,
    so only their medians are taken.
    """
    k, r, c = edge
    if fraction <= 0:
        return np.zeros(r.shape, dtype=bool)
    bands = orders.bands
    row = k * bands.n_rows + r
    value = values.ravel().take(row * bands.width + bands.band_column(k, r, c))
    inside = np.where(orders.in_order, values, np.float32(np.nan)).reshape(-1, bands.width)
    with np.errstate(invalid="ignore"):
        below = value < fraction * bn.nanmax(inside, axis=1)[row]
    picked = np.zeros(inside.shape[0], dtype=bool)
    picked[row[below]] = True
    median, count = _nanmedian(inside[picked])
    at = np.cumsum(picked) - 1
    flagged = np.zeros(r.shape, dtype=bool)
    with np.errstate(invalid="ignore"):
        at = at[row[below]]
        flagged[below] = (count[at] >= 3) & (median[at] > 0) & (value[below] < fraction * median[at])
    return flagged


@dataclass(frozen=True)
class _FrameSearch:
    """The hot-pixel search of :func:`find_bad_pixels` in the dark or bias frames (image, ERRS, whether a
    bias) at their threshold (σ), to run on a set of orders of a frame of ``shape``."""

    shape: tuple[int, int]
    input_mask: np.ndarray
    frames: tuple[tuple[_Image, np.ndarray | None, bool], ...]
    frame_sigma: float
    window: int

    @classmethod
    def of(cls, shape: tuple[int, int], input_mask: np.ndarray, *, hot_sigma: float, window: int,
           dark_ba: np.ndarray | None, dark_err_ba: np.ndarray | None, bias_ba: np.ndarray | None,
           bias_err_ba: np.ndarray | None) -> _FrameSearch:
        """The search of ``dark_ba`` and ``bias_ba`` (either may be None) for hot pixels."""
        frames = []
        for frame, err, is_bias in ((dark_ba, dark_err_ba, False), (bias_ba, bias_err_ba, True)):
            if frame is not None:
                frame = np.asarray(frame)
                offsets = _line_structure(frame, input_mask) if is_bias else (None, None)
                err = None if err is None else np.asarray(err, dtype=np.float32)
                frames.append((_Image(frame, input_mask, *offsets), err, is_bias))
        n_pixels = shape[0] * shape[1]
        return cls(shape, input_mask, tuple(frames), max(hot_sigma, _false_alarm_sigma(n_pixels)), window)

    def run(self, bounds: OrderBounds) -> np.ndarray:
        """Flat indices of the pixels of the orders of ``bounds`` hot in any of the frames."""
        return self.hot(_Orders.of(bounds, self.shape, max(self.window // 3, 1)))

    def hot(self, orders: _Orders) -> np.ndarray:
        """Flat indices of the pixels of ``orders`` hot in any of the frames."""
        bands = orders.bands
        edge = bands.pixels(orders.in_order & ~orders.inner)
        hot = [np.empty(0, dtype=np.int64)]
        for image, err, is_bias in self.frames:
            tested = orders.in_order & ~bands.take(self.input_mask)
            zone = None if is_bias else tuple(part[~self.input_mask[edge[1], edge[2]]] for part in edge)
            r, c = _frame_hot(image, err, bands, tested, np.broadcast_to(True, tested.shape) if is_bias else orders.inner, zone,
                              hot_sigma=self.frame_sigma)
            hot.append(r * self.shape[1] + c)
        return np.concatenate(hot)


@dataclass(frozen=True)
class _Search:
    """What :func:`find_bad_pixels` searches, to run on a set of orders: the flat (masked where unusable),
    its ERRS and input mask, the flat indices of its non-finite pixels off the mask, the search of the
    dark or bias frames (None when done ahead), the tests of the flat, the partial-edge fraction and the
    running median's window."""

    flat: _Image
    errs: np.ndarray
    input_mask: np.ndarray
    nonfinite: np.ndarray
    frames: _FrameSearch | None
    tests: _Tests
    edge_fraction: float
    window: int

    def run(self, bounds: OrderBounds) -> dict[np.uint8, np.ndarray]:
        """Flat indices of the pixels of the orders of ``bounds`` flagged with each reason."""
        n_a = self.flat.data.shape[1]
        orders = _Orders.of(bounds, self.flat.data.shape, max(self.window // 3, 1))
        bands = orders.bands
        edge = bands.pixels(orders.in_order & ~orders.inner)
        hot = self.frames.hot(orders) if self.frames is not None else np.empty(0, dtype=np.int64)
        values = self.flat.on(bands)
        flagged = _flag_flat(self.flat, values, self.errs, self.input_mask, orders, edge, self.window, self.tests)
        flagged[HOT] = np.concatenate([flagged[HOT], hot])
        partial = _partial_edges(values, orders, edge, fraction=self.edge_fraction)
        flagged[PARTIAL_EDGE] = edge[1][partial] * n_a + edge[2][partial]
        flagged[DEAD] = np.concatenate([flagged[DEAD], self.nonfinite[orders.contain(self.nonfinite)]])
        return flagged


def _order_groups(bounds: OrderBounds) -> list[OrderBounds]:
    """The orders shared out among ``WORKERS`` threads (every ``WORKERS``-th order to a thread)."""
    groups = [np.arange(start, bounds.orders.size, WORKERS) for start in range(min(WORKERS, bounds.orders.size))]
    return [OrderBounds(bounds.orders[g], bounds.low[g], bounds.centre[g], bounds.up[g], bounds.valid[g]) for g in groups]


def calibration_hot_pixels(
    bounds: OrderBounds,
    shape: tuple[int, int],
    *,
    hot_sigma: float,
    dark_ba: np.ndarray | None = None,
    dark_err_ba: np.ndarray | None = None,
    bias_ba: np.ndarray | None = None,
    bias_err_ba: np.ndarray | None = None,
    input_mask_ba: np.ndarray | None = None,
    window: int = 21,
) -> np.ndarray:
    """Flat indices of the in-order pixels hot in ``dark_ba`` or ``bias_ba``: the part of
    :func:`find_bad_pixels` that needs no flat, so that it can run beside the scattered-light fit and
    be handed to it as ``frame_hot`` (the same pixels as the search inside it)."""
    input_mask = np.zeros(shape, dtype=bool) if input_mask_ba is None else np.asarray(input_mask_ba, dtype=bool)
    search = _FrameSearch.of(shape, input_mask, hot_sigma=hot_sigma, window=window, dark_ba=dark_ba,
                             dark_err_ba=dark_err_ba, bias_ba=bias_ba, bias_err_ba=bias_err_ba)
    return np.concatenate([np.empty(0, dtype=np.int64), *(search.run(group) for group in _order_groups(bounds))])


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
    frame_hot: np.ndarray | None = None,
    min_depth: float = 0.08,
    window: int = 21,
) -> BadPixelResult:
    """Flag the bad pixels inside the orders of a background-subtracted master flat (BA orientation).

    * dead: below ``dead_limit`` × the local expectation (or no finite value);
    * low-sensitivity: below 1 − max(``low_sensitivity_sigma`` σ, ``min_depth``) × expectation;
    * hot: above the expectation by ``hot_sigma`` σ (and above both neighbours along B), or hot in
      ``dark_ba`` (NIR combined lamp-off/dark, e⁻) or ``bias_ba`` (UV-VIS master bias) — or, instead of
      searching those, the flat indices ``frame_hot`` that :func:`calibration_hot_pixels` found in them;
    * partial edge: within 2 px of an edge and below ``edge_min_fraction`` × the row-segment median.

    Dead and low-sensitivity pixels must also lie ``low_sensitivity_sigma`` σ below the expectation.
    ``window`` is the length (rows) of the running median along the orders. Only pixels inside the
    orders are flagged; pixels of ``input_mask_ba`` are left out of every statistic and count.
    """
    flat = np.asarray(flat_ba, dtype=np.float32)
    shape = flat.shape
    input_mask = np.zeros(shape, dtype=bool) if input_mask_ba is None else np.asarray(input_mask_ba, dtype=bool)
    finite = np.isfinite(flat)
    unusable = input_mask if finite.all() else input_mask | ~finite
    nonfinite = np.flatnonzero(unusable & ~input_mask)
    del finite
    frames = None
    if frame_hot is None and (dark_ba is not None or bias_ba is not None):
        frames = _FrameSearch.of(shape, input_mask, hot_sigma=hot_sigma, window=window, dark_ba=dark_ba,
                                 dark_err_ba=dark_err_ba, bias_ba=bias_ba, bias_err_ba=bias_err_ba)
    tests = _Tests(low_sensitivity_sigma, hot_sigma, dead_limit, min_depth)
    search = _Search(_Image(flat, unusable), np.asarray(errs_ba, dtype=np.float32), input_mask, nonfinite, frames,
                     tests, edge_min_fraction, window)
    subsets = _order_groups(bounds)
    if len(subsets) > 1:
        with ThreadPoolExecutor(len(subsets)) as pool:
            found = list(pool.map(search.run, subsets))
    else:
        found = [search.run(subset) for subset in subsets]
    flagged = {code: [part[code] for part in found] for code in (DEAD, HOT, LOW_SENSITIVITY, PARTIAL_EDGE)}
    if frame_hot is not None:
        flagged[HOT].append(np.asarray(frame_hot, dtype=np.int64))

    codes = np.zeros(shape, dtype=np.uint8)
    counts = {}
    for name, code in (("dead", DEAD), ("hot", HOT), ("low_sensitivity", LOW_SENSITIVITY), ("partial_edge", PARTIAL_EDGE)):
        index = np.unique(np.concatenate([np.empty(0, dtype=np.int64), *flagged[code]])).astype(np.int64)
        codes.ravel()[index] |= code
        counts[name] = int(index.size)
    return BadPixelResult(codes, input_mask | (codes != 0), input_mask, counts)


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
