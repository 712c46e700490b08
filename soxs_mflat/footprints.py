"""Where the orders fall on a frame: per-order bounds and pixel masks.

Steps work on images in "BA orientation": rows run along axis B (along the orders) and columns
along axis A (across them). For dispersion-axis ``x`` arms that is the frame as stored
(``image[y, x]``); for SOXS NIR (dispersion-axis ``y``) it is the transpose. :func:`to_ba` and
:func:`from_ba` convert, so no step needs to know the arm's orientation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from soxs_mflat.order_table import OrderTable

TILE = 512
"""Side (px) of the tiles in which :func:`copy_tiled` copies images."""


def to_ba(image: np.ndarray, fitted_axis: str) -> np.ndarray:
    """View of ``image`` with rows along axis B and columns along axis A."""
    return image if fitted_axis == "x" else image.T


def from_ba(image: np.ndarray, fitted_axis: str) -> np.ndarray:
    """Inverse of :func:`to_ba`."""
    return image if fitted_axis == "x" else image.T


def copy_tiled(destination: np.ndarray, source: np.ndarray, *, casting: str = "same_kind") -> None:
    """``destination[...] = source`` (2-D) in square tiles of ``TILE`` px.

    Where one of them is a transposed view (SOXS NIR frames in BA orientation), a plain copy strides
    across a whole row of one array for every element of the other; a tile of both stays in cache
    (2-5x faster for a 2k × 2k frame).
    """
    n_rows, n_cols = destination.shape
    for row in range(0, n_rows, TILE):
        for col in range(0, n_cols, TILE):
            np.copyto(destination[row : row + TILE, col : col + TILE], source[row : row + TILE, col : col + TILE],
                      casting=casting)


def contiguous(image: np.ndarray, dtype: np.dtype | type | str | None = None) -> np.ndarray:
    """``image`` as a C-contiguous array of ``dtype`` (default: its own): itself if it is one already,
    otherwise a copy made by :func:`copy_tiled`."""
    dtype = image.dtype if dtype is None else np.dtype(dtype)
    if image.flags.c_contiguous and image.dtype == dtype:
        return image
    out = np.empty(image.shape, dtype=dtype)
    copy_tiled(out, image, casting="unsafe")
    return out


def shape_ba(shape: tuple[int, int], fitted_axis: str) -> tuple[int, int]:
    """Shape of an image of frame shape ``shape`` in BA orientation."""
    return shape if fitted_axis == "x" else (shape[1], shape[0])


def frame_binning_ab(binning_xy: tuple[int, int], fitted_axis: str) -> tuple[int, int]:
    """(A binning, B binning) from the frame's (binx, biny)."""
    binx, biny = binning_xy
    return (binx, biny) if fitted_axis == "x" else (biny, binx)


@dataclass(frozen=True)
class OrderBounds:
    """Per-order trace positions on a frame, in frame (binned) pixels, BA orientation.

    ``low``/``centre``/``up`` have shape (n_orders, n_b): the axis-A coordinate of each order at
    every frame row along B. ``valid`` marks rows inside the order's extent along B and on the
    detector.
    """

    orders: np.ndarray
    low: np.ndarray
    centre: np.ndarray
    up: np.ndarray
    valid: np.ndarray


def order_bounds(
    table: OrderTable,
    shape_ba: tuple[int, int],
    binning_ab: tuple[int, int],
    *,
    half_width: float | None = None,
    limits_binned: bool = True,
) -> OrderBounds:
    """Evaluate the table's traces on every row along B of a frame in BA orientation.

    With edges in the table, ``low``/``up`` are the fitted edges; otherwise (or if ``half_width``
    is given) they are ``centre ∓ half_width``. ``limits_binned`` says whether the table's
    ``b_min``/``b_max`` are in the frame's binned pixels (mflat output) or unbinned (centre tables).
    """
    a_bin, b_bin = binning_ab
    n_b, n_a = shape_ba
    b_frame = np.arange(n_b, dtype=np.float64)
    orders = np.asarray(table.orders)
    grid_order = orders[:, None].astype(np.float64)
    centre = table.centre.in_frame(grid_order, b_frame[None, :], a_bin, b_bin)
    if table.has_edges and half_width is None:
        low = table.edge_low.in_frame(grid_order, b_frame[None, :], a_bin, b_bin)
        up = table.edge_up.in_frame(grid_order, b_frame[None, :], a_bin, b_bin)
    else:
        width = 0.0 if half_width is None else half_width
        low, up = centre - width, centre + width
    scale = 1.0 if limits_binned else 1.0 / b_bin
    b_low = np.floor(table.b_min * scale)[:, None]
    b_high = np.ceil(table.b_max * scale)[:, None]
    valid = (b_frame[None, :] >= b_low) & (b_frame[None, :] < b_high) & (up >= 0) & (low <= n_a - 1)
    return OrderBounds(orders, low, centre, up, valid)


def order_window(bounds: OrderBounds, k: int, n_a: int, *, margin: float = 0.0) -> slice:
    """Columns (along A) that order ``k``, widened by ``margin`` px, touches on any valid row; empty if none.

    Per-order work confined to this window costs the order's footprint, not the whole frame.
    """
    valid = bounds.valid[k]
    if not valid.any():
        return slice(0, 0)
    start = max(int(np.floor(np.min(bounds.low[k][valid]) - margin)), 0)
    stop = min(int(np.ceil(np.max(bounds.up[k][valid]) + margin)) + 1, n_a)
    return slice(start, max(start, stop))


def order_labels(bounds: OrderBounds, shape_ba: tuple[int, int], *, grow: float = 0.0) -> np.ndarray:
    """Label image (BA orientation): ``k + 1`` where a pixel centre lies within order ``k``'s bounds
    widened by ``grow`` pixels on both sides, 0 elsewhere. Later orders win where grown bounds overlap.
    """
    n_a = shape_ba[1]
    labels = np.zeros(shape_ba, dtype=np.int16)
    for k in range(bounds.orders.size):
        window = order_window(bounds, k, n_a, margin=max(grow, 0.0))
        a = np.arange(window.start, window.stop, dtype=np.float64)[None, :]
        inside = (a >= (bounds.low[k] - grow)[:, None]) & (a <= (bounds.up[k] + grow)[:, None])
        inside &= bounds.valid[k][:, None]
        labels[:, window][inside] = k + 1
    return labels


def inside_orders(bounds: OrderBounds, shape_ba: tuple[int, int], *, grow: float = 0.0) -> np.ndarray:
    """Boolean image (BA orientation): pixel centres within any order's bounds widened by ``grow`` px —
    ``order_labels(bounds, shape_ba, grow=grow) > 0`` without building the label image."""
    usable = bounds.valid & np.isfinite(bounds.low) & np.isfinite(bounds.up)
    start = np.where(usable, np.ceil(bounds.low - grow), 0.0)
    stop = np.where(usable, np.floor(bounds.up + grow) + 1.0, 0.0)
    return interval_mask(start, stop, shape_ba[1])


def interval_mask(start: np.ndarray, stop: np.ndarray, n_a: int) -> np.ndarray:
    """Boolean image (rows × ``n_a``) true at the columns ``start[k, r] <= a < stop[k, r]`` of any interval
    ``k`` of row ``r`` (``start``, ``stop``: intervals × rows, whole numbers, clipped to the frame).

    Each interval adds +1 at its start and −1 at its stop to a row-wise running sum: the cost is one
    pass over the image, however wide the orders' curved footprints are.
    """
    n_rows = start.shape[-1]
    first = np.clip(start, 0, n_a).astype(np.int64)
    last = np.clip(stop, 0, n_a).astype(np.int64)
    kept = last > first
    row_starts = np.broadcast_to(np.arange(n_rows) * (n_a + 1), first.shape)[kept]
    steps = np.zeros((n_rows, n_a + 1), dtype=np.int16)
    # flat indices and values of the array's own type take numpy's fast path (~30x faster than 2-D, int)
    np.add.at(steps.reshape(-1), row_starts + first[kept], np.int16(1))
    np.add.at(steps.reshape(-1), row_starts + last[kept], np.int16(-1))
    np.cumsum(steps, axis=1, dtype=np.int16, out=steps)
    return steps[:, :n_a] > 0


def edge_distance(bounds: OrderBounds, shape_ba: tuple[int, int]) -> np.ndarray:
    """Distance (px, BA orientation) from each in-order pixel centre to the nearer edge of its order;
    negative outside every order (minus the distance to the nearest edge of the nearest order).
    """
    n_a = shape_ba[1]
    a = np.arange(n_a, dtype=np.float64)[None, :]
    distance = np.full(shape_ba, -np.inf)
    for k in range(bounds.orders.size):
        d = np.minimum(a - bounds.low[k][:, None], bounds.up[k][:, None] - a)
        d = np.where(bounds.valid[k][:, None], d, -np.inf)
        distance = np.maximum(distance, d)
    return distance
