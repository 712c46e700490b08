"""Stitch the D2-lamp and QTH-lamp master flats of X-shooter UVB into one (spec §5.8 step 8).

The D2 lamp lights the blue orders, the QTH lamp the red ones. Each order is taken from the lamp
that lights it best; the boundary runs through the inter-order gap between the last D2-side order
and the first QTH-side order, row by row. With ``scale_d2_to_qth`` the D2 flat is first scaled so
that both lamps agree in the orders next to the boundary, which keeps the stitched flat continuous.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from soxs_mflat.footprints import OrderBounds, order_labels


@dataclass(frozen=True)
class StitchResult:
    """The stitched flat (BA orientation) and how it was made."""

    data: np.ndarray
    uncertainty: np.ndarray
    mask: np.ndarray
    from_d2: np.ndarray
    d2_orders: tuple[int, ...]
    boundary_orders: tuple[int, int]
    scale: float


def _order_medians(flat: np.ndarray, labels: np.ndarray, n_orders: int) -> np.ndarray:
    medians = np.full(n_orders, np.nan)
    for k in range(n_orders):
        values = flat[labels == k + 1]
        values = values[np.isfinite(values)]
        if values.size:
            medians[k] = np.median(values)
    return medians


def stitch_lamps(
    d2: tuple[np.ndarray, np.ndarray, np.ndarray],
    qth: tuple[np.ndarray, np.ndarray, np.ndarray],
    bounds: OrderBounds,
    *,
    scale_d2_to_qth: bool,
) -> StitchResult:
    """Combine (data, uncertainty, mask) of the two lamps using the order bounds of the QTH flat."""
    d2_data, d2_err, d2_mask = d2
    q_data, q_err, q_mask = qth
    shape = d2_data.shape
    labels = order_labels(bounds, shape, grow=-2.0)
    n_orders = bounds.orders.size
    d2_level = _order_medians(d2_data, labels, n_orders)
    q_level = _order_medians(q_data, labels, n_orders)
    from_d2 = np.nan_to_num(d2_level, nan=0.0) > np.nan_to_num(q_level, nan=0.0)
    order_a = np.nanmedian(bounds.centre, axis=1)
    sequence = np.argsort(order_a)
    flags = from_d2[sequence]
    changes = np.flatnonzero(flags[1:] != flags[:-1])
    if changes.size != 1:
        raise ValueError("the D2 and QTH lamps do not light two contiguous groups of orders")
    first, second = sequence[changes[0]], sequence[changes[0] + 1]
    d2_side, q_side = (first, second) if from_d2[first] else (second, first)
    both = (labels == d2_side + 1) | (labels == q_side + 1)
    ratio = d2_data[both] / q_data[both]
    ratio = ratio[np.isfinite(ratio) & (ratio > 0)]
    scale = float(np.median(ratio)) if (scale_d2_to_qth and ratio.size) else 1.0
    low_side_is_d2 = bool(from_d2[sequence[0]])
    boundary = 0.5 * (bounds.up[first] + bounds.low[second])
    a = np.arange(shape[1])[None, :]
    take_d2 = (a < boundary[:, None]) if low_side_is_d2 else (a > boundary[:, None])
    data = np.where(take_d2, d2_data / np.float32(scale), q_data).astype(np.float32)
    uncertainty = np.where(take_d2, d2_err / np.float32(scale), q_err).astype(np.float32)
    mask = np.where(take_d2, d2_mask, q_mask)
    d2_orders = tuple(int(m) for m in bounds.orders[from_d2])
    boundary_orders = (int(bounds.orders[d2_side]), int(bounds.orders[q_side]))
    return StitchResult(data, uncertainty, mask, take_d2, d2_orders, boundary_orders, scale)
