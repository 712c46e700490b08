"""Order-edge detection on a flat: cross-dispersion slices along every order, measured by :mod:`.slices`.

Every order is cut into slices centred on its (input) centre trace; each slice is median-collapsed
along B and both edges are measured on the 1-D profile. Works in BA orientation (see
:mod:`soxs_mflat.footprints`): rows along B, columns along A, frame (possibly binned) pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import bottleneck as bn
import numpy as np

from soxs_mflat.edges.slices import HALF_WINDOW, SliceEdges, SliceFlag, measure_slice_edges
from soxs_mflat.errors import UserInputError
from soxs_mflat.order_table import OrderTable
from soxs_mflat.parallel import WORKERS, map_threads

"""Threads sharing the slices of :func:`detect_edges` (each slice is measured on its own)."""
MIN_SLICES_PER_WORKER = 500
"""Fewer slices per thread than this are measured on one thread (threads would not pay)."""


@dataclass(frozen=True, eq=False)
class EdgeDetections:
    """Per-slice edge measurements of every order (frame pixels, BA orientation).

    Per slice (length ``n_slices``): ``order``, ``b`` (slice centre along B), ``centre`` (the input
    centre trace at ``b``, along A), ``low``/``up`` (edges along A, NaN if rejected) and
    ``flag_low``/``flag_up`` (:class:`SliceFlag` values). Per order (aligned with ``orders``):
    soxspipe's metadata ``max_threshold``, ``min_threshold`` and ``max_value`` (normalised flux),
    the medians over the order's slices of ``floor + pct/100 × (level − floor)`` and of ``level``.
    """

    orders: np.ndarray
    order: np.ndarray
    b: np.ndarray
    centre: np.ndarray
    low: np.ndarray
    up: np.ndarray
    flag_low: np.ndarray
    flag_up: np.ndarray
    max_threshold: np.ndarray
    min_threshold: np.ndarray
    max_value: np.ndarray

    @property
    def valid_low(self) -> np.ndarray:
        """True where the lower edge was measured."""
        return self.flag_low == SliceFlag.OK

    @property
    def valid_up(self) -> np.ndarray:
        """True where the upper edge was measured."""
        return self.flag_up == SliceFlag.OK

    def rejection_summary(self, order: int | None = None) -> str:
        """Counts of rejected edge measurements by reason, e.g. ``"FAINT 12, NARROW 3"``."""
        select = np.ones(self.order.size, dtype=bool) if order is None else self.order == order
        flags = np.concatenate([self.flag_low[select], self.flag_up[select]])
        counts = [(flag.name, int(np.count_nonzero(flags == flag))) for flag in SliceFlag if flag != SliceFlag.OK]
        return ", ".join(f"{name} {count}" for name, count in counts if count) or "none"


def _check_detection_settings(slice_length: int, slice_width: int, min_pct: float, max_pct: float) -> None:
    """Raise :class:`UserInputError` for edge-detection settings that cannot work."""
    if slice_length < 2 * (HALF_WINDOW + 3) + 1:
        raise UserInputError(
            f"slice-length-for-edge-detection is {slice_length} px; it must be at least {2 * (HALF_WINDOW + 3) + 1} "
            "and should exceed the order height plus about 10 px so that both edges fall inside the slices."
        )
    if slice_width < 1:
        raise UserInputError(f"slice-width-for-edge-detection is {slice_width}; it must be at least 1 pixel.")
    if not 0.0 <= min_pct < max_pct <= 100.0:
        raise UserInputError(
            f"min-percentage-threshold-for-edge-detection ({min_pct}) and max-percentage-threshold-for-edge-detection "
            f"({max_pct}) must satisfy 0 <= min < max <= 100."
        )


def _slice_starts(
    centres: OrderTable, orders_searched: np.ndarray, *, n_b: int, b_bin: int, slice_width: int, step: int
) -> tuple[np.ndarray, np.ndarray]:
    """First frame row along B and order number of every slice: every ``step`` rows within each order's ``b`` range."""
    starts, slice_orders = [], []
    for order, b_min, b_max in zip(
        centres.orders[orders_searched], centres.b_min[orders_searched], centres.b_max[orders_searched], strict=True
    ):
        first = max(int(np.ceil(b_min / b_bin)), 0)
        stop = min(int(np.ceil(b_max / b_bin)), n_b) - slice_width + 1
        start = np.arange(first, max(stop, first), step, dtype=np.int64)
        starts.append(start)
        slice_orders.append(np.full(start.size, order, dtype=np.int64))
    if not starts:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(starts), np.concatenate(slice_orders)


def _order_thresholds(
    orders: np.ndarray, order: np.ndarray, edges: SliceEdges, min_pct: float, max_pct: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-order (max threshold, min threshold, max value): medians over the order's measured slices.

    Orders without a measured edge use all their slices with a finite level (NaN if none).
    """
    measured = (edges.flag_low == SliceFlag.OK) | (edges.flag_up == SliceFlag.OK)
    result = np.full((3, orders.size), np.nan)
    for k, value in enumerate(orders):
        select = (order == value) & measured
        if not select.any():
            select = (order == value) & np.isfinite(edges.level)
        if select.any():
            floor = np.median(edges.floor[select])
            level = np.median(edges.level[select])
            result[:, k] = floor + max_pct / 100 * (level - floor), floor + min_pct / 100 * (level - floor), level
    return result[0], result[1], result[2]


def detect_edges(
    flat_ba: np.ndarray,
    centres: OrderTable,
    *,
    binning_ab: tuple[int, int] = (1, 1),
    slice_length: int,
    slice_width: int,
    min_threshold_pct: float,
    max_threshold_pct: float,
    sample_step: int | None = None,
    mask_ba: np.ndarray | None = None,
    min_order: int | None = None,
) -> EdgeDetections:
    """Measure the lower and upper edge of every order in cross-dispersion slices of a flat.

    Parameters
    ----------
    flat_ba
        The combined normalised flat in BA orientation, frame (possibly binned) pixels; NaN allowed.
    centres
        The input order-centre table (coefficients and ``b_min``/``b_max`` in unbinned pixels).
    binning_ab
        The frame's (A, B) binning.
    slice_length, slice_width
        Length (along A) and width (along B, median-collapsed) of each slice, in frame pixels.
    min_threshold_pct, max_threshold_pct
        Bounds of the edge-crossing search (see :func:`measure_slice_edges`).
    sample_step
        Distance (frame px along B) between slice starts. Default ``slice_width``: adjacent,
        non-overlapping slices that use every row once — a few hundred to a thousand per order.
    mask_ba
        True where a pixel is bad; treated as NaN.
    min_order
        Orders below it are not searched (JH slit rule, spec §1.4).

    Returns
    -------
    EdgeDetections
        Per-slice edges (frame px) and flags, and per-order threshold metadata.
    """
    _check_detection_settings(slice_length, slice_width, min_threshold_pct, max_threshold_pct)
    image = np.asarray(flat_ba, dtype=np.float32)
    n_b, n_a = image.shape
    a_bin, b_bin = binning_ab
    searched = np.ones(centres.orders.size, dtype=bool) if min_order is None else centres.orders >= min_order
    orders = np.asarray(centres.orders)[searched]
    start, order = _slice_starts(centres, searched, n_b=n_b, b_bin=b_bin, slice_width=slice_width,
                                step=slice_width if sample_step is None else sample_step)
    b = start + 0.5 * (slice_width - 1)
    centre = centres.centre.in_frame(order, b, a_bin, b_bin)

    centre_index = slice_length // 2
    first_column = np.rint(centre).astype(np.int64) - centre_index
    columns = first_column[:, None] + np.arange(slice_length)[None, :]
    rows = start[:, None] + np.arange(slice_width)[None, :]
    off_detector = (columns < 0) | (columns >= n_a)
    safe_columns = np.clip(columns, 0, n_a - 1)
    mask = None if mask_ba is None else np.asarray(mask_ba, dtype=bool)

    def measure(part: slice) -> SliceEdges:
        """Gather, median-collapse and measure the slices ``part`` (each slice on its own)."""
        cube = image[rows[part, :, None], safe_columns[part, None, :]]
        if mask is not None:
            cube = np.where(mask[rows[part, :, None], safe_columns[part, None, :]], np.nan, cube)
        profiles = bn.nanmedian(cube, axis=1).astype(np.float64)
        profiles[off_detector[part]] = np.nan
        return measure_slice_edges(profiles, centre_index=centre_index, min_threshold_pct=min_threshold_pct,
                                   max_threshold_pct=max_threshold_pct, off_detector=off_detector[part])

    n_slices = start.size
    if n_slices < WORKERS * MIN_SLICES_PER_WORKER:
        edges = measure(slice(0, n_slices))
    else:
        parts = [slice(k * n_slices // WORKERS, (k + 1) * n_slices // WORKERS) for k in range(WORKERS)]
        measured = map_threads(measure, parts)
        edges = SliceEdges(*(np.concatenate([getattr(m, f.name) for m in measured]) for f in fields(SliceEdges)))
    max_threshold, min_threshold, max_value = _order_thresholds(orders, order, edges, min_threshold_pct, max_threshold_pct)
    return EdgeDetections(
        orders=orders,
        order=order,
        b=b,
        centre=centre,
        low=edges.low + first_column,
        up=edges.up + first_column,
        flag_low=edges.flag_low,
        flag_up=edges.flag_up,
        max_threshold=max_threshold,
        min_threshold=min_threshold,
        max_value=max_value,
    )
