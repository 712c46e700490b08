"""The mflat order-location table: the input centre table plus the fitted edges and edge-detection metadata."""

from __future__ import annotations

import numpy as np

from soxs_mflat.edges.detection import EdgeDetections
from soxs_mflat.edges.fit import EdgeFit
from soxs_mflat.order_table import OrderTable


def order_location_table(
    centres: OrderTable,
    fit: EdgeFit,
    detections: EdgeDetections,
    *,
    shape_ba: tuple[int, int],
    binning_ab: tuple[int, int],
) -> OrderTable:
    """The mflat order-location table content (spec §4.4, §4.10).

    Centre and std polynomials unchanged, the fitted edges added, orders dropped by the fit
    removed, ``b_min = 0`` and ``b_max`` = the frame size along B in the frame's own (binned)
    pixels (soxspipe's arithmetic), ``a_min``/``a_max`` copied, and the per-order edge-detection
    metadata ``maxThreshold``, ``minThreshold`` and ``maxvalue`` appended.
    """
    if tuple(binning_ab) != fit.binning_ab:
        raise ValueError(f"binning {binning_ab} differs from the binning {fit.binning_ab} the edges were fitted with")
    table = centres.select_orders(np.isin(centres.orders, fit.orders_kept))
    position = {int(order): k for k, order in enumerate(detections.orders)}
    index = np.array([position[int(order)] for order in table.orders], dtype=np.int64)
    extra_meta = dict(table.extra_meta)
    extra_meta["maxThreshold"] = detections.max_threshold[index]
    extra_meta["minThreshold"] = detections.min_threshold[index]
    extra_meta["maxvalue"] = detections.max_value[index]
    n_orders = table.orders.size
    return table.with_edges(
        fit.edge_low,
        fit.edge_up,
        b_min=np.zeros(n_orders),
        b_max=np.full(n_orders, float(shape_ba[0])),
        extra_meta=extra_meta,
    )
