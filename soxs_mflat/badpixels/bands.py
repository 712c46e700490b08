"""Where the bad-pixel search looks: the pixels near each order laid out as bands, and the frame read on them.

The search visits only the pixels near the orders. They are copied into a stack of bands of shape
(order, row, column), in which one band column is one detector column over a block of rows, so that
statistics along B can be taken per band column and block of rows (:class:`BandLayout`). Band row
``r`` is frame row ``r``; the column a band starts at moves from block to block with the order's tilt.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from soxs_mflat.footprints import OrderBounds

EDGE_ZONE = 2.0
"""Pixels whose centre is closer than this (px) to an order edge are edge pixels."""
CHUNK_PIXELS = 2**12
"""Scattered pixels (candidates, edge pixels) are handled this many at a time, so that the memory of
the search does not grow with their number."""
SCAN_PIXELS = 2**20
"""Band pixels scanned at a time for the marked ones (see :meth:`BandLayout.pixels_in_chunks`)."""

Pixels = tuple[np.ndarray, np.ndarray, np.ndarray]
"""Scattered band pixels as three arrays: band (order), frame row and frame column."""


@dataclass(frozen=True)
class BandLayout:
    """The pixels near a set of orders as a stack of bands of shape (band, row, column).

    Row ``r`` of band ``k`` holds frame row ``r`` from column ``start[k, r // block]`` on, for
    ``width`` columns: within a block of rows a band column is one detector column. Rows past the
    frame (up to whole blocks) repeat its last row and belong to no order.
    """

    start: np.ndarray
    width: int
    block: int
    shape: tuple[int, int]

    @classmethod
    def around(cls, first: np.ndarray, last: np.ndarray, shape: tuple[int, int], block: int) -> BandLayout:
        """Bands holding the columns ``first - 1`` to ``last + 1`` (orders × frame rows) of every row."""
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
    def whole(cls, shape: tuple[int, int], block: int) -> BandLayout:
        """One band covering the whole frame."""
        return cls(np.zeros((1, -(-shape[0] // block)), dtype=np.int64), shape[1], block, shape)

    def subset(self, bands: slice) -> BandLayout:
        """The layout of the bands ``bands`` only."""
        return BandLayout(self.start[bands], self.width, self.block, self.shape)

    @property
    def n_rows(self) -> int:
        """Rows of each band (the frame's, up to whole blocks)."""
        return self.start.shape[1] * self.block

    def row_start(self, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
        """First frame column of each band on ``rows`` (bands × rows)."""
        return np.repeat(self.start, self.block, axis=1)[:, rows]

    def frame_rows(self, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
        """The frame row each band row of ``rows`` holds."""
        return np.minimum(np.arange(self.n_rows), self.shape[0] - 1)[rows]

    def take(self, image: np.ndarray, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
        """Frame-shaped ``image`` on the bands' ``rows`` (bands × rows × width)."""
        return sliding_window_view(image, self.width, axis=1)[self.frame_rows(rows)[None, :], self.row_start(rows)]

    def between(self, first: np.ndarray, last: np.ndarray, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
        """Which band pixels on ``rows`` lie between the columns ``first`` and ``last`` (bands × frame rows)."""
        pad = ((0, 0), (0, self.n_rows - self.shape[0]))
        first = np.pad(first, pad, constant_values=1)[:, rows]
        span = np.pad(last, pad, constant_values=0)[:, rows] - first
        low = np.where(span >= 0, first - self.row_start(rows), self.width).astype(np.int32)[..., None]
        span = np.maximum(span, 0).astype(np.uint32)[..., None]
        return (np.arange(self.width, dtype=np.int32) - low).view(np.uint32) <= span

    def pixels(self, where: np.ndarray) -> Pixels:
        """Band, frame row and frame column of the band pixels ``where`` marks."""
        return self.pixels_at(np.flatnonzero(where))

    def pixels_at(self, index: np.ndarray) -> Pixels:
        """Band, frame row and frame column of the band pixels of flat (band-array) ``index``."""
        k, index = np.divmod(index, self.n_rows * self.width)
        r, j = np.divmod(index, self.width)
        return k, r, self.start[k, r // self.block] + j

    def pixels_in_chunks(self, where: np.ndarray) -> Iterator[Pixels]:
        """:meth:`pixels` of ``where`` in band order, ``CHUNK_PIXELS`` at a time (the last chunk fewer).

        The marks are scanned ``SCAN_PIXELS`` band pixels at a time, so that no index array of all of
        them is made."""
        marks = where.reshape(-1)
        pending: list[np.ndarray] = []
        count = 0
        for low in range(0, marks.size, SCAN_PIXELS):
            index = np.flatnonzero(marks[low : low + SCAN_PIXELS]) + low
            while index.size:
                taken, index = index[: CHUNK_PIXELS - count], index[CHUNK_PIXELS - count :]
                pending.append(taken)
                count += taken.size
                if count == CHUNK_PIXELS:
                    yield self.pixels_at(np.concatenate(pending))
                    pending, count = [], 0
        if count:
            yield self.pixels_at(np.concatenate(pending))

    def band_column(self, k: np.ndarray, r: np.ndarray, c: np.ndarray) -> np.ndarray:
        """Band column of the frame column ``c`` on row ``r`` of band ``k``."""
        return c - self.start[k, r // self.block]

    def aligned(self, coarse: np.ndarray, step: int, *, reflect: bool = False) -> np.ndarray:
        """Per-block values ``coarse`` (bands × blocks × width) of block ``q + step`` on the columns of
        block ``q`` (NaN where that block does not reach; past the ends with ``reflect`` the block as far
        inside, else NaN). The blocks of each column shift between the two are moved at once."""
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

    def regrouped(self, block: int) -> BandLayout:
        """A layout over the same pixels in blocks of ``block`` rows (each as wide as its rows need)."""
        n_b, n_a = self.shape
        n_blocks = -(-n_b // block)
        row_start = np.pad(self.row_start()[:, :n_b], ((0, 0), (0, n_blocks * block - n_b)), mode="edge")
        row_start = row_start.reshape(-1, n_blocks, block)
        low = row_start.min(axis=2)
        width = int(min(np.max(row_start.max(axis=2) - low) + self.width, n_a))
        return BandLayout(np.clip(low, 0, n_a - width), width, block, self.shape)

    def convert(self, values: np.ndarray, source: BandLayout) -> np.ndarray:
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


def chunks(pixels: Pixels) -> Iterator[Pixels]:
    """Scattered ``pixels`` at most ``CHUNK_PIXELS`` at a time."""
    for low in range(0, pixels[0].size, CHUNK_PIXELS):
        yield tuple(part[low : low + CHUNK_PIXELS] for part in pixels)


def columns_within(bounds: OrderBounds, n_a: int, inset: float) -> tuple[np.ndarray, np.ndarray]:
    """First and last column of each order's pixel centres at least ``inset`` px inside its edges, on
    every row (orders × rows; last < first where there are none)."""
    first = np.clip(np.ceil(bounds.low + inset), 0, n_a).astype(np.int64)
    last = np.clip(np.floor(bounds.up - inset), -1, n_a - 1).astype(np.int64)
    return first, np.where(bounds.valid, last, first - 1)


@dataclass(frozen=True)
class OrderPixels:
    """Where the pixels of a set of orders are: per order and frame row the ``first`` and ``last``
    column in the order, the orders' ``bounds``, the band ``layout`` around them, and which band pixels
    are in an order (``in_order``) and at least ``EDGE_ZONE`` px inside it (``inner``)."""

    first: np.ndarray
    last: np.ndarray
    bounds: OrderBounds
    layout: BandLayout
    in_order: np.ndarray
    inner: np.ndarray

    @classmethod
    def of(cls, bounds: OrderBounds, shape: tuple[int, int], block: int) -> OrderPixels:
        """The orders of ``bounds`` on a frame of ``shape``, in bands of blocks of ``block`` rows."""
        first, last = columns_within(bounds, shape[1], 0.0)
        layout = BandLayout.around(first, last, shape, block)
        in_order = layout.between(first, last)
        inner = layout.between(*columns_within(bounds, shape[1], EDGE_ZONE)) & in_order
        return cls(first, last, bounds, layout, in_order, inner)

    def inset(self, inset: float, rows: np.ndarray) -> np.ndarray:
        """Which band pixels on ``rows`` lie at least ``inset`` px inside an order."""
        return self.layout.between(*columns_within(self.bounds, self.layout.shape[1], inset), rows)

    def edge_pixels(self) -> Pixels:
        """The band pixels in an order but not ``inner``."""
        return self.layout.pixels(self.in_order & ~self.inner)

    def contain(self, index: np.ndarray) -> np.ndarray:
        """Which of the pixels (flat indices) lie in an order."""
        rows, columns = np.divmod(index, self.layout.shape[1])
        return ((self.first[:, rows] <= columns) & (columns <= self.last[:, rows])).any(axis=0)


def share_orders(bounds: OrderBounds, workers: int) -> list[OrderBounds]:
    """The orders of ``bounds`` shared out among ``workers`` (every ``workers``-th order to one)."""
    groups = [np.arange(start, bounds.orders.size, workers) for start in range(min(workers, bounds.orders.size))]
    return [OrderBounds(bounds.orders[g], bounds.low[g], bounds.centre[g], bounds.up[g], bounds.valid[g]) for g in groups]


def cleaned(values: np.ndarray, masked: np.ndarray | None) -> np.ndarray:
    """``values`` (a fresh copy, made float32) with infinities and ``masked`` pixels set to NaN."""
    values = values.astype(np.float32, copy=False)
    infinite = np.isinf(values)
    if infinite.any():
        values[infinite] = np.nan
    if masked is not None:
        np.copyto(values, np.float32(np.nan), where=masked)
    return values


@dataclass(frozen=True)
class MaskedImage:
    """A frame read on bands or at scattered pixels with its non-finite and ``mask`` pixels as NaN and
    fixed row and column offsets subtracted (so that no cleaned copy of the whole frame is made)."""

    data: np.ndarray
    mask: np.ndarray | None = None
    row_offset: np.ndarray | None = None
    column_offset: np.ndarray | None = None

    def on(self, layout: BandLayout) -> np.ndarray:
        """The image on the bands of ``layout``."""
        values = cleaned(layout.take(self.data), None if self.mask is None else layout.take(self.mask))
        if self.row_offset is not None and self.column_offset is not None:
            values -= self.row_offset[layout.frame_rows()][None, :, None]
            blocks = values.reshape(*layout.start.shape, layout.block, layout.width)
            blocks -= self.column_offset[layout.start[..., None] + np.arange(layout.width)][:, :, None, :]
        return values

    def at(self, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
        """The image at the pixels (``rows``, ``columns``)."""
        values = cleaned(self.data[rows, columns], None if self.mask is None else self.mask[rows, columns])
        if self.row_offset is not None and self.column_offset is not None:
            values -= self.row_offset[rows]
            values -= self.column_offset[columns]
        return values
