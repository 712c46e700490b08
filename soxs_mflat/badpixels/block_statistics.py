"""Robust statistics of band arrays per band column and block of rows: running levels along B, the
median across neighbouring columns, MAD scatter maps and column responses.

Taking them per block rather than per row keeps the search fast; the exact values at the few pixels
that need them come from :mod:`soxs_mflat.badpixels.local_model` and :func:`blocks_around`.
"""

from __future__ import annotations

from dataclasses import dataclass

import bottleneck as bn
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from soxs_mflat.badpixels.bands import BandLayout, Pixels
from soxs_mflat.robust import MAD_TO_SIGMA

ACROSS_WIDTH = 5
"""Columns of the median across the order that removes bad columns from the expectation."""

SIGMA_WINDOW = 96
"""Rows (along B) over which the MAD scatter of the flat is measured."""
SIGMA_BLOCK = SIGMA_WINDOW // 3
COLUMN_WINDOW = 400
"""Rows (along B) over which a column's response is measured."""
COLUMN_BLOCK = COLUMN_WINDOW // 5


def block_level(layout: BandLayout, band: np.ndarray, *, min_count: int, trimmed: bool = False) -> np.ndarray:
    """Running median along B of ``3 × block`` rows of each band column, taken once per block (bands ×
    blocks × width) as the median of three consecutive block medians (or, ``trimmed``, of block means
    without the highest and lowest value: cheaper, and as robust to one outlier per block); NaN ignored,
    NaN where the three blocks hold fewer than ``min_count`` values. Past the ends of the frame the block
    values continue linearly, as the reflection of a running median about its end level would."""
    n_k, n_rows, width = band.shape
    blocks = band.reshape(n_k, n_rows // layout.block, layout.block, width)
    count = layout.block - np.isnan(blocks).sum(axis=2, dtype=np.int16)
    if trimmed:
        total = bn.nansum(blocks, axis=2)
        cut = count >= 3
        total -= np.where(cut, bn.nanmax(blocks, axis=2) + bn.nanmin(blocks, axis=2), np.float32(0.0))
        with np.errstate(invalid="ignore", divide="ignore"):
            median = total / np.where(cut, count - 2, count)
    else:
        median = bn.nanmedian(blocks, axis=2)
    count = count.astype(np.float32)
    before, after = layout.aligned(median, -1), layout.aligned(median, 1)
    before[:, 0] = 2.0 * median[:, 0] - after[:, 0]
    after[:, -1] = 2.0 * median[:, -1] - before[:, -1]
    level = bn.nanmedian(np.stack([before, median, after]), axis=0)
    level[np.nan_to_num(layout.aligned(count, -1)) + count + np.nan_to_num(layout.aligned(count, 1)) < min_count] = np.nan
    return level


def interpolate_blocks(layout: BandLayout, coarse: np.ndarray) -> np.ndarray:
    """Per-block values at the blocks' central rows, interpolated linearly along B to every band row
    (extrapolated linearly past the first and last block)."""
    before = layout.aligned(coarse, -1) - coarse
    after = layout.aligned(coarse, 1) - coarse
    before, after = np.where(np.isnan(before), -after, before), np.where(np.isnan(after), -before, after)
    before, after = np.nan_to_num(before), np.nan_to_num(after)
    out = np.empty((*coarse.shape[:2], layout.block, layout.width), dtype=np.float32)
    for i in range(layout.block):
        offset = (i - (layout.block - 1) / 2) / layout.block
        np.add(coarse, np.float32(abs(offset)) * (before if offset < 0 else after), out=out[:, :, i])
    return out.reshape(coarse.shape[0], -1, layout.width)


def block_medians(layout: BandLayout, values: np.ndarray, *, min_count: int) -> np.ndarray:
    """NaN-ignoring median of each band column over each block of ``values`` (bands × blocks × width);
    NaN with fewer than ``min_count`` values."""
    n_k, n_rows, width = values.shape
    return median_of_enough(values.reshape(n_k, n_rows // layout.block, layout.block, width), axis=2, min_count=min_count)


def smooth_along(layout: BandLayout, levels: np.ndarray, width: int) -> np.ndarray:
    """NaN-ignoring running median of per-block ``levels`` over ``width`` blocks along B (ends reflected)."""
    half = width // 2
    shifted = [layout.aligned(levels, step, reflect=True) if step else levels for step in range(-half, half + 1)]
    return bn.nanmedian(np.stack(shifted), axis=0)


def across_median(layout: BandLayout, coarse: np.ndarray) -> np.ndarray:
    """Median over ``ACROSS_WIDTH`` neighbouring band columns of per-block values (NaN ignored; reflected
    at the frame's sides)."""
    half = ACROSS_WIDTH // 2
    width = coarse.shape[-1]
    padded = np.pad(coarse, ((0, 0), (0, 0), (half, half)), constant_values=np.nan)
    if width > half:
        left = layout.start == 0
        padded[left, :half] = coarse[left, half:0:-1]
        right = layout.start + width == layout.shape[1]
        padded[right, -half:] = coarse[right, -2 : -half - 2 : -1]
    return running_across(padded)


def running_across(padded: np.ndarray) -> np.ndarray:
    """NaN-ignoring running median over ``ACROSS_WIDTH`` columns (last axis) of values padded by half of
    it on both sides: as wide as the values were."""
    return bn.nanmedian(sliding_window_view(padded, ACROSS_WIDTH, axis=-1), axis=-1)


def median_of_enough(values: np.ndarray, *, axis: int = -1, min_count: int = 1) -> np.ndarray:
    """NaN-ignoring median over ``axis``; NaN where there are fewer than ``min_count`` values."""
    median = bn.nanmedian(values, axis=axis)
    if min_count > 1:
        median[np.count_nonzero(~np.isnan(values), axis=axis) < min_count] = np.nan
    return median


@dataclass(frozen=True)
class BlockStatistic:
    """A statistic per frame column and block of frame rows on the pixels of a set of bands:
    ``levels[k, q, j]`` holds frame column ``layout.start[k, q] + j`` on the rows of block ``q``."""

    layout: BandLayout
    levels: np.ndarray

    def at(self, k: np.ndarray, r: np.ndarray, c: np.ndarray) -> np.ndarray:
        """The statistic at the pixels (band ``k``, frame row ``r``, column ``c``; NaN off its bands)."""
        j = self.layout.band_column(k, r, c)
        inside = (j >= 0) & (j < self.layout.width)
        return np.where(inside, self.levels[k, r // self.layout.block, np.clip(j, 0, self.layout.width - 1)], np.float32(np.nan))

    def lowest(self, layout: BandLayout) -> np.ndarray:
        """The smaller statistic at the first and last row of each block of ``layout`` (bands × blocks ×
        width, on its columns; NaN where none)."""
        n_k, n_blocks = layout.start.shape
        own = self.layout
        column = layout.start[..., None] + np.arange(layout.width)
        lowest = np.full(column.shape, np.inf, dtype=np.float32)
        for row in (np.arange(n_blocks) * layout.block, np.arange(n_blocks) * layout.block + layout.block - 1):
            block = np.minimum(row, layout.shape[0] - 1) // own.block
            j = column - own.start[:, block][..., None]
            index = (np.arange(n_k)[:, None, None] * own.start.shape[1] + block[None, :, None]) * own.width
            value = self.levels.take(index + np.clip(j, 0, own.width - 1))
            np.fmin(lowest, np.where((j >= 0) & (j < own.width), value, np.float32(np.nan)), out=lowest)
        lowest[np.isinf(lowest)] = np.nan
        return lowest


def scatter_map(deviation: np.ndarray, layout: BandLayout) -> BlockStatistic:
    """MAD-based σ of absolute deviations (on the bands of ``layout``) per frame column and block of
    ``SIGMA_BLOCK`` rows, smoothed over three blocks along B and five columns (one bad column does not
    inflate its neighbours'). Half of the bands at a time, to bound the temporary copies."""
    grouped = layout.regrouped(SIGMA_BLOCK)
    n_k = layout.start.shape[0]
    levels = []
    for low, high in ((0, -(-n_k // 2)), (-(-n_k // 2), n_k)):
        part = slice(low, high)
        regrouped = grouped.subset(part)
        levels.append(block_medians(regrouped, regrouped.convert(deviation[part], layout.subset(part)), min_count=5))
    levels = smooth_along(grouped, np.concatenate(levels), 3)
    half = ACROSS_WIDTH // 2
    padded = np.pad(levels, ((0, 0), (0, 0), (half, half)), constant_values=np.nan)
    return BlockStatistic(grouped, MAD_TO_SIGMA * running_across(padded))


def blocks_around(
    values: np.ndarray,
    layout: BandLayout,
    pixels: Pixels,
    columns: np.ndarray,
    *,
    block: int,
    reach: int,
    min_count: int,
    absolute: bool = False,
) -> np.ndarray:
    """NaN-ignoring medians of band ``values`` (their absolute values with ``absolute``) per frame column
    of ``columns`` (pixels × columns) and block of ``block`` frame rows, for the blocks within ``reach``
    of that of each of the ``pixels`` (reflected past the frame's ends): pixels × blocks × columns, NaN
    with fewer than ``min_count`` values."""
    k, r, _ = pixels
    n_b = layout.shape[0]
    last = -(-n_b // block) - 1
    index = np.abs(r[:, None] // block + np.arange(-reach, reach + 1))
    index = np.clip(np.where(index > last, 2 * last - index, index), 0, last)
    rows = index[:, :, None, None] * block + np.arange(block)
    band = k[:, None, None, None]
    j = columns[:, None, :, None] - layout.start[band, np.minimum(rows, n_b - 1) // layout.block]
    inside = (rows < n_b) & (j >= 0) & (j < layout.width)
    gathered = np.where(inside, values[band, np.minimum(rows, n_b - 1), np.clip(j, 0, layout.width - 1)], np.float32(np.nan))
    if absolute:
        np.abs(gathered, out=gathered)
    return median_of_enough(gathered, min_count=min_count)


def scatter_at(excess: np.ndarray, layout: BandLayout, pixels: Pixels) -> np.ndarray:
    """:func:`scatter_map` of |``excess``| at a few ``pixels`` only, from the blocks around them."""
    half = ACROSS_WIDTH // 2
    columns = pixels[2][:, None] + np.arange(-half, half + 1)
    levels = blocks_around(excess, layout, pixels, columns, block=SIGMA_BLOCK, reach=1, min_count=5, absolute=True)
    return MAD_TO_SIGMA * bn.nanmedian(bn.nanmedian(levels, axis=1), axis=1)


def column_at(response: np.ndarray, layout: BandLayout, pixels: Pixels) -> np.ndarray:
    """Typical value of a ``response`` (on the bands) in the column of each of the ``pixels`` over
    ``COLUMN_WINDOW`` rows: the running median over five blocks of ``COLUMN_BLOCK`` rows of the column's
    medians over them (NaN with fewer than 10 values)."""
    levels = blocks_around(response, layout, pixels, pixels[2][:, None], block=COLUMN_BLOCK, reach=2, min_count=10)
    return bn.nanmedian(levels[:, :, 0], axis=1)


def marked_columns(layout: BandLayout, blocks: np.ndarray) -> np.ndarray:
    """Per band, block of ``COLUMN_BLOCK`` frame rows (offset by 2) and frame column, whether one of the
    band blocks ``blocks`` marks (bands × blocks × width) lies within two such blocks: where a column
    statistic over ``COLUMN_WINDOW`` rows may see it."""
    n_b, n_a = layout.shape
    marked = np.zeros((layout.start.shape[0], -(-n_b // COLUMN_BLOCK) + 4, n_a), dtype=bool)
    k, q, j = np.nonzero(blocks)
    block = np.minimum(q * layout.block + layout.block // 2, n_b - 1) // COLUMN_BLOCK
    for shift in range(5):
        marked[k, block + shift, layout.start[k, q] + j] = True
    return marked


def near_marked_columns(layout: BandLayout, blocks: np.ndarray, pixels: Pixels) -> np.ndarray:
    """Which of the ``pixels`` lie in a column and near a band block that ``blocks`` marks (see
    :func:`marked_columns`)."""
    return marked_columns(layout, blocks)[pixels[0], pixels[1] // COLUMN_BLOCK + 2, pixels[2]]
