"""Stitch the D2-lamp and QTH-lamp master flats of X-shooter UVB into one (spec §5.8 step 8).

The D2 lamp lights the blue orders, the QTH lamp the red ones. Each order is taken from the lamp
that gives it the better signal-to-noise (the lower median relative uncertainty), which splits the
orders into two contiguous groups; the boundary runs through the inter-order gap between them, row
by row. With ``scale_d2_to_qth`` the D2 flat is scaled so that both lamps agree in the two orders
next to the boundary, which keeps the stitched flat continuous.

The final order edges are not re-detected on the stitched flat (where the lamp step at the boundary
disturbs the slices next to it): each order keeps the edge measurements of the lamp it comes from,
and one global fit is made through all of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from soxs_mflat.edges import EdgeDetections, EdgeFit, order_location_table
from soxs_mflat.errors import UserInputError
from soxs_mflat.footprints import OrderBounds, order_bounds, order_labels
from soxs_mflat.order_table import OrderTable

if TYPE_CHECKING:
    from soxs_mflat.flatfield import LampFlat

Lamp = tuple[np.ndarray, np.ndarray, np.ndarray]
"""(data, uncertainty, mask) of one lamp's master flat, BA orientation."""


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


def _order_medians(values: np.ndarray, labels: np.ndarray, n_orders: int) -> np.ndarray:
    medians = np.full(n_orders, np.nan)
    for k in range(n_orders):
        selected = values[labels == k + 1]
        selected = selected[np.isfinite(selected)]
        if selected.size:
            medians[k] = np.median(selected)
    return medians


def choose_lamps(d2: Lamp, qth: Lamp, bounds: OrderBounds) -> np.ndarray:
    """Per order of ``bounds``: True where the D2 flat has the lower median relative uncertainty.

    Raises ``ValueError`` unless the D2 orders form one contiguous group along axis A.
    """
    labels = order_labels(bounds, d2[0].shape, grow=-2.0)
    n_orders = bounds.orders.size
    with np.errstate(divide="ignore", invalid="ignore"):
        d2_noise = _order_medians(d2[1] / np.abs(d2[0]), labels, n_orders)
        q_noise = _order_medians(qth[1] / np.abs(qth[0]), labels, n_orders)
    from_d2 = np.nan_to_num(d2_noise, nan=np.inf) < np.nan_to_num(q_noise, nan=np.inf)
    sequence = np.argsort(np.nanmedian(bounds.centre, axis=1))
    flags = from_d2[sequence]
    if np.count_nonzero(flags[1:] != flags[:-1]) != 1:
        raise ValueError("the D2 and QTH lamps do not light two contiguous groups of orders")
    return from_d2


def merge_detections(d2: EdgeDetections, qth: EdgeDetections, d2_orders: set[int]) -> EdgeDetections:
    """Edge measurements of the D2 orders from the D2 flat and of the others from the QTH flat."""
    def per_slice(name: str) -> np.ndarray:
        return np.concatenate([getattr(d2, name)[np.isin(d2.order, list(d2_orders))],
                               getattr(qth, name)[~np.isin(qth.order, list(d2_orders))]])

    def per_order(name: str) -> np.ndarray:
        values = []
        for order in qth.orders:
            source = d2 if int(order) in d2_orders and order in d2.orders else qth
            values.append(getattr(source, name)[int(np.flatnonzero(source.orders == order)[0])])
        return np.asarray(values)

    slice_fields = ("order", "b", "centre", "low", "up", "flag_low", "flag_up")
    order_fields = ("max_threshold", "min_threshold", "max_value")
    return EdgeDetections(
        orders=qth.orders.copy(),
        **{name: per_slice(name) for name in slice_fields},
        **{name: per_order(name) for name in order_fields},
    )


def stitch_lamps(d2: Lamp, qth: Lamp, bounds: OrderBounds, from_d2: np.ndarray, *, scale_d2_to_qth: bool) -> StitchResult:
    """Combine the two lamps' flats given the final order bounds and the lamp of each order."""
    d2_data, d2_err, d2_mask = d2
    q_data, q_err, q_mask = qth
    shape = d2_data.shape
    sequence = np.argsort(np.nanmedian(bounds.centre, axis=1))
    flags = from_d2[sequence]
    change = int(np.flatnonzero(flags[1:] != flags[:-1])[0])
    first, second = sequence[change], sequence[change + 1]
    d2_side, q_side = (first, second) if from_d2[first] else (second, first)
    labels = order_labels(bounds, shape, grow=-2.0)
    both = (labels == d2_side + 1) | (labels == q_side + 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = d2_data[both] / q_data[both]
    ratio = ratio[np.isfinite(ratio) & (ratio > 0)]
    scale = float(np.median(ratio)) if (scale_d2_to_qth and ratio.size) else 1.0
    boundary = 0.5 * (bounds.up[first] + bounds.low[second])
    a = np.arange(shape[1])[None, :]
    take_d2 = (a < boundary[:, None]) if from_d2[first] else (a > boundary[:, None])
    data = np.where(take_d2, d2_data / np.float32(scale), q_data).astype(np.float32)
    uncertainty = np.where(take_d2, d2_err / np.float32(scale), q_err).astype(np.float32)
    mask = np.where(take_d2, d2_mask, q_mask)
    d2_orders = tuple(int(m) for m in bounds.orders[from_d2])
    boundary_orders = (int(bounds.orders[d2_side]), int(bounds.orders[q_side]))
    return StitchResult(data, uncertainty, mask, take_d2, d2_orders, boundary_orders, scale)


@dataclass(frozen=True)
class StitchedFlat:
    """The stitched flat, its order edges (fitted through both lamps' measurements) and its background."""

    lamps: StitchResult
    detections: EdgeDetections
    fit: EdgeFit
    table: OrderTable
    bounds: OrderBounds
    background: np.ndarray | None


def stitch_lamp_flats(d2: LampFlat, qth: LampFlat, *, binning_ab: tuple[int, int], scale_d2_to_qth: bool,
                      fit_edges: Callable[[EdgeDetections], EdgeFit]) -> StitchedFlat:
    """Choose each order's lamp, fit the edges through the chosen lamps' measurements, and stitch the flats."""
    frame_ba = qth.data.shape
    d2_lamp = (np.where(d2.mask, np.nan, d2.data), d2.uncertainty, d2.mask)
    q_lamp = (np.where(qth.mask, np.nan, qth.data), qth.uncertainty, qth.mask)
    try:
        from_d2 = choose_lamps(d2_lamp, q_lamp, order_bounds(qth.table, frame_ba, binning_ab))
    except ValueError as error:
        raise UserInputError(
            f"The D2 and QTH flats cannot be stitched: {error}. Check that the LAMP,DFLAT and LAMP,QFLAT frames and "
            "their order-centre tables belong together."
        ) from None
    d2_orders = {int(m) for m in qth.table.orders[from_d2]}
    detections = merge_detections(d2.detections, qth.detections, d2_orders)
    fit = fit_edges(detections)
    table = order_location_table(qth.centres, fit, detections, shape_ba=frame_ba, binning_ab=binning_ab)
    bounds = order_bounds(table, frame_ba, binning_ab)
    stitched = stitch_lamps(d2_lamp, q_lamp, bounds, np.isin(bounds.orders, list(d2_orders)),
                            scale_d2_to_qth=scale_d2_to_qth)
    background = None
    if d2.background is not None and qth.background is not None:
        background = np.where(stitched.from_d2, d2.background / np.float32(stitched.scale), qth.background)
    return StitchedFlat(stitched, detections, fit, table, bounds, background)
