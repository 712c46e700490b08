"""Moving between the frame and its median-binned rows, on which the scattered light is fitted."""

from __future__ import annotations

import bottleneck as bn
import numpy as np

CHUNK_PIXELS = 1 << 16
"""Pixels handled at once by the loops over rows: bounds the temporaries, which then stay in cache and are
reused rather than freshly mapped."""


def rows_per_chunk(n_cols: int) -> int:
    """Rows of ``n_cols`` pixels making up about ``CHUNK_PIXELS`` (at least one)."""
    return max(CHUNK_PIXELS // n_cols, 1)


def bin_rows(image: np.ndarray, mask: np.ndarray | None, block: int) -> np.ndarray:
    """Median of each block of ``block`` rows (the last may be short), ignoring non-finite and ``mask``
    pixels; NaN where a block has none. Robust to cosmic rays and hot pixels; float32."""
    n_b, n_a = image.shape
    n_bins = -(-n_b // block)
    binned = np.empty((n_bins, n_a), dtype=np.float32)
    blocks_per_chunk = rows_per_chunk(n_a * block)
    for first in range(0, n_bins, blocks_per_chunk):
        stop = min(first + blocks_per_chunk, n_bins)
        rows = slice(first * block, min(stop * block, n_b))
        values = image[rows]
        rejected = ~np.isfinite(values)
        if mask is not None:
            rejected |= mask[rows]
        short = (stop - first) * block - values.shape[0]
        if short or rejected.any():
            values = np.pad(np.where(rejected, np.float32(np.nan), values), ((0, short), (0, 0)), constant_values=np.nan)
        binned[first:stop] = bn.nanmedian(values.reshape(stop - first, block, n_a), axis=1)
    return binned


def bin_traces(values: np.ndarray, block: int) -> np.ndarray:
    """Mean of each block of ``block`` rows of a trace array (traces × rows, e.g. the order edges)."""
    n_traces, n_b = values.shape
    n_bins = -(-n_b // block)
    padded = np.full((n_traces, n_bins * block), np.nan)
    padded[:, :n_b] = values
    return np.nanmean(padded.reshape(n_traces, n_bins, block), axis=2)


def median_across(image: np.ndarray, width: int) -> np.ndarray:
    """Median of the finite pixels within ``width`` (odd) columns centred on each pixel, NaN if none."""
    half = width // 2
    padded = np.pad(image, ((0, 0), (half, half)), constant_values=np.nan)
    return bn.move_median(padded, width, axis=1, min_count=1)[:, 2 * half :]


def fill_along_rows(image: np.ndarray) -> np.ndarray:
    """Fill NaN pixels from the nearest finite pixel above or below in the same column (the earlier one first)."""
    n_rows = image.shape[0]
    finite = np.isfinite(image)
    row = np.arange(n_rows, dtype=np.int32)[:, None]
    source = np.maximum.accumulate(np.where(finite, row, np.int32(-1)), axis=0)
    following = np.minimum.accumulate(np.where(finite, row, np.int32(n_rows))[::-1], axis=0)[::-1]
    np.copyto(source, np.where(following < n_rows, following, np.int32(0)), where=source < 0)
    return np.take_along_axis(image, source, axis=0)


def unbin_rows(binned: np.ndarray, block: int, n_b: int) -> np.ndarray:
    """Linear interpolation along B from the block centres back to ``n_b`` rows, constant beyond the first
    and last centres; float32.

    The rows between two centres follow the same pattern in every block, so they are written a chunk of
    blocks at a time with broadcasting (several times faster than ``scipy.ndimage.zoom``, which weighs
    neighbours across A as well)."""
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
    step = rows_per_chunk(n_a * block)
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
