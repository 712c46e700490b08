"""Order-edge detection and global edge fits (spec §5.8 step 6) — the mflat ``ORDER_TAB`` content.

**Detection.** Every order is cut into cross-dispersion slices centred on its (input) centre trace;
each slice is median-collapsed along B and both edges are measured on the 1-D profile. An edge is the
geometric boundary of the illuminated slit image, i.e. where the PSF-blurred, pixel-integrated
profile falls to half of the local in-order level above the local outside level (the simulator's
convention). It is measured with a *flux-sum* estimator rather than by interpolating between the two
pixels that straddle the half level: for a step blurred by any symmetric PSF and integrated over
pixels, the sum of the normalised samples ``(P_i − out) / (in − out)`` over a window that holds the
whole transition equals the distance from the window start to the edge exactly, whatever the PSF
width or the sub-pixel phase. Linear interpolation is biased by up to 0.07 px at a PSF sigma of
0.3 px, depending on the phase; the flux sum is exact to 2e-3 px for sigma ≤ 1 px.

**Fit.** The lower and upper edges are fitted directly — not as offsets from the centre trace, as
soxspipe does — each with one global polynomial in (order number, unbinned B) with iterative
median/MAD sigma clipping, lowering the degrees automatically when a fit is impossible.

Everything works in BA orientation (see :mod:`soxs_mflat.footprints`): rows along B, columns along
A, frame (possibly binned) pixels; polynomials are in unbinned pixels (:mod:`soxs_mflat.geometry`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from enum import IntEnum

import bottleneck as bn
import numpy as np

from soxs_mflat.errors import UserInputError
from soxs_mflat.geometry import Poly2D, fit_poly2d
from soxs_mflat.order_table import OrderTable
from soxs_mflat.robust import MAD_TO_SIGMA

HALF_WINDOW = 3
"""Half-width (px) of the flux-sum window around an edge: holds the transition for PSF sigma ≤ 1.2 px."""
INSIDE_OFFSETS = np.arange(-6, -2)
"""Pixels (relative to the window centre, towards the order) whose median is the local in-order level."""
OUTSIDE_OFFSETS = np.arange(3, 6)
"""Pixels (relative to the window centre, away from the order) whose median is the local outside level; only
those up to the gap midpoint and the slice end are used, and in a gap too narrow for any the one just before."""
REFINE_ITERATIONS = 3
"""Flux-sum passes, each re-centring the window on the previous estimate."""
THRESHOLD_STEPS = 11
"""Levels tried from the min to the max percentage threshold (steps of 10 % of the range, as soxspipe)."""
MIN_SNR = 10.0
"""Smallest accepted edge contrast, and slice level, in units of the slice's pixel noise."""
MIN_HALF_GAP = 2.0
"""Smallest accepted distance (px) from an edge to the midpoint of the gap to the next order."""
MAX_OUTSIDE_SPREAD = 0.25
"""Largest accepted spread of the outside-level pixels, as a fraction of the edge contrast."""
MIN_ORDER_WIDTH = 10.0
"""Smallest accepted distance (frame px) between the lower and upper edge of a slice, as soxspipe."""
FLOOR_QUANTILE = 0.05
"""Quantile of a slice taken as its floor (the inter-order level), robust to noise and dead pixels."""
MAX_DEGREE_REDUCTIONS = 5
"""Times the larger fit degree is lowered before the edge fit gives up."""
MIN_COVERAGE = 0.5
"""An order whose measured slices span less than this fraction of its searched length is reported."""
MIN_POINTS_PER_COEFF = 2
"""A fit needs at least this many points per coefficient."""
MIN_CLIP_SCALE = 0.01
"""Floor (frame px) of the robust residual scale, so that near-noiseless data are not clipped to numerical noise."""
PLATEAU_FRACTION = 0.65
"""Fraction of the slice span above which a pixel counts as on the in-order plateau."""
DEFECT_SIGMA = 4.0
"""A plateau pixel this many times the slice's pixel-to-pixel scatter below (above) both of its
neighbours is treated as a pixel defect in a slice."""
DEFECT_FLOOR = 0.01
"""...and at least this fraction of the span (for nearly noiseless slices)."""
WORKERS = min(2, os.cpu_count() or 1)
"""Threads sharing the slices of :func:`detect_edges` (each slice is measured on its own)."""
MIN_SLICES_PER_WORKER = 500


class SliceFlag(IntEnum):
    """Why an edge measurement of one slice was rejected (``OK`` if it was not)."""

    OK = 0
    NO_CROSSING = 1
    """The profile never falls below the max-percentage threshold on that side (orders touch)."""
    SHORT_SLICE = 2
    """The edge and its level windows do not fit in the slice (slice length too small)."""
    OFF_DETECTOR = 3
    """The centre, edge or level windows fall off the detector."""
    BAD_PIXELS = 4
    """NaN or masked pixels in the edge window, or no finite pixels for a level."""
    FAINT = 5
    """The slice level or the edge contrast is below ``MIN_SNR`` times the noise."""
    CONTAMINATED = 6
    """The local levels are inconsistent with an isolated edge (neighbouring order, bad column), or the gap to
    the next order is narrower than twice ``MIN_HALF_GAP``."""
    NARROW = 7
    """Lower and upper edges closer than ``MIN_ORDER_WIDTH``."""
    UNSTABLE = 8
    """The flux-sum estimate left its window (no clean step)."""


@dataclass(frozen=True, eq=False)
class SliceEdges:
    """Edges measured on a stack of 1-D slice profiles (slice pixel coordinates).

    ``low``/``up`` are NaN where the matching flag is not ``OK``; ``level`` is the in-order level
    near the slice centre, ``floor`` the slice's inter-order level and ``noise`` its pixel noise.
    """

    low: np.ndarray
    up: np.ndarray
    flag_low: np.ndarray
    flag_up: np.ndarray
    level: np.ndarray
    floor: np.ndarray
    noise: np.ndarray


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


@dataclass(frozen=True, eq=False)
class EdgeFit:
    """Global fits of the lower and upper order edges.

    ``edge_low``/``edge_up`` give A(order, B) in unbinned pixels; ``deg_order``/``deg_b`` are the
    degrees actually used and ``attempts`` one line per fit tried. Per slice of the detections:
    ``residual_low``/``residual_up`` (measured − fit, frame px; NaN where not fitted) and
    ``clipped_low``/``clipped_up``. ``slices_used`` gives, per order of ``orders_kept``, the smaller
    of the numbers of unclipped lower and upper edge points. ``x_res_min``/``x_res_max``/``x_res_sd``
    are the min/max/std of |residual| over the unclipped points of both edges (spec §8, frame px).
    """

    edge_low: Poly2D
    edge_up: Poly2D
    deg_order: int
    deg_b: int
    attempts: tuple[str, ...]
    residual_low: np.ndarray
    residual_up: np.ndarray
    clipped_low: np.ndarray
    clipped_up: np.ndarray
    orders_kept: np.ndarray
    orders_dropped: np.ndarray
    slices_used: np.ndarray
    binning_ab: tuple[int, int]
    x_res_min: float
    x_res_max: float
    x_res_sd: float


def _take(profiles: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Values of ``profiles`` at per-row ``index`` (NaN outside the slice) and an in-slice mask."""
    inside = (index >= 0) & (index < profiles.shape[1])
    values = np.take_along_axis(profiles, np.clip(index, 0, profiles.shape[1] - 1), axis=1)
    return np.where(inside, values, np.nan), inside


def _row_quantile(values: np.ndarray, quantile: float) -> np.ndarray:
    """Per-row quantile of the finite values (nearest rank; NaN for rows without any)."""
    finite = np.isfinite(values)
    ordered = np.sort(np.where(finite, values, np.inf), axis=1)
    count = finite.sum(axis=1)
    rank = np.floor(quantile * np.maximum(count - 1, 0)).astype(np.int64)
    result = np.take_along_axis(ordered, rank[:, None], axis=1)[:, 0]
    return np.where(count > 0, result, np.nan)


def _crossing(profiles: np.ndarray, index: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """Linear-interpolated position where the profile crosses ``threshold`` between ``index - 1`` and ``index``."""
    before, _ = _take(profiles, (index - 1)[:, None])
    after, _ = _take(profiles, index[:, None])
    position = index - 1 + (before[:, 0] - threshold) / (before[:, 0] - after[:, 0])
    return np.where(np.isfinite(position), position, index - 0.5)


def _upper_edges(
    profiles: np.ndarray,
    off_detector: np.ndarray,
    centre_index: int,
    floor: np.ndarray,
    span: np.ndarray,
    noise: np.ndarray,
    fractions: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Edge (slice px) and flag of the edge at larger index of every profile.

    A coarse crossing is found walking outwards from the centre at the lowest threshold level
    (``floor + fraction × span``) that the profile drops below. Where the profile rises again
    (the next order), the gap midpoint bounds the flux-sum window and the outside-level pixels,
    so that a narrow gap does not bias the edge: the neighbour's tail inside the window then
    replaces this edge's tail beyond it. The outside-level pixels also stop at the slice end.
    The flux-sum estimate is iterated on windows re-centred on each estimate.
    """
    n, length = profiles.shape
    rows = np.arange(n)
    index = np.arange(length)[None, :]
    finite = np.isfinite(profiles)
    walk = np.where(finite, profiles, np.inf)
    walk[:, :centre_index] = np.inf
    running_min = np.minimum.accumulate(walk, axis=1)
    levels = floor[:, None] + fractions[None, :] * span[:, None]
    below = levels > running_min[:, -1:]
    found = below.any(axis=1)
    threshold = levels[rows, np.argmax(below, axis=1)]
    first_below = np.argmax(running_min < threshold[:, None], axis=1)
    flag = np.full(n, SliceFlag.OK, dtype=np.uint8)
    side_off = off_detector[:, centre_index:].any(axis=1)
    flag[~found] = np.where(side_off[~found], SliceFlag.OFF_DETECTOR, SliceFlag.NO_CROSSING)

    rising = (index > first_below[:, None]) & finite & (profiles >= threshold[:, None])
    rise = np.where(rising.any(axis=1), np.argmax(rising, axis=1), length + 2 * HALF_WINDOW + 2)
    midpoint = 0.5 * (_crossing(profiles, first_below, threshold) + _crossing(profiles, rise, threshold))
    last_in_gap = np.rint(midpoint).astype(np.int64)
    last = np.minimum(last_in_gap, length - 1)

    centre = first_below - 1
    offsets = np.arange(-HALF_WINDOW, HALF_WINDOW + 1)
    outside_offsets = np.arange(OUTSIDE_OFFSETS[0] - 1, OUTSIDE_OFFSETS[-1] + 1)
    for _ in range(REFINE_ITERATIONS):
        window_index = centre[:, None] + offsets
        in_gap = window_index <= last[:, None]
        window, in_window = _take(profiles, window_index)
        inside, in_inside = _take(profiles, centre[:, None] + INSIDE_OFFSETS)
        outside_index = centre[:, None] + outside_offsets
        usable = outside_index <= last[:, None]
        gap_blocks = centre + OUTSIDE_OFFSETS[0] > last_in_gap
        use_outside = usable & ((outside_offsets >= OUTSIDE_OFFSETS[0]) | gap_blocks[:, None])
        outside, _ = _take(profiles, outside_index)
        outside = np.where(use_outside, outside, np.nan)
        inside_level = bn.nanmedian(inside, axis=1)
        outside_level = bn.nanmedian(outside, axis=1)
        outside_spread = bn.nanmax(outside, axis=1) - bn.nanmin(outside, axis=1)
        fraction = (window - outside_level[:, None]) / (inside_level - outside_level)[:, None]
        edge = centre - HALF_WINDOW - 0.5 + np.where(in_gap, fraction, 0.0).sum(axis=1)
        window_ok = (in_window | ~in_gap).all(axis=1) & in_inside.all(axis=1) & use_outside.any(axis=1)
        stable = np.isfinite(edge) & window_ok
        last_centre = centre
        centre = np.where(stable, np.rint(np.where(stable, edge, 0.0)).astype(np.int64), centre)

    touched = centre[:, None] + np.arange(INSIDE_OFFSETS[0], OUTSIDE_OFFSETS[-1] + 1)
    touches_off, _ = _take(off_detector.astype(np.float64), touched)
    contrast = inside_level - outside_level
    max_level = floor + fractions[-1] * span
    isolated = (outside_level < max_level) & (inside_level > max_level) & (outside_spread <= MAX_OUTSIDE_SPREAD * contrast)
    narrow_gap = ~(midpoint - np.where(np.isfinite(edge), edge, last_centre) >= MIN_HALF_GAP)
    checks = [
        (narrow_gap, SliceFlag.CONTAMINATED),
        (~window_ok, SliceFlag.SHORT_SLICE),
        (bn.nansum(touches_off, axis=1) > 0, SliceFlag.OFF_DETECTOR),
        (~np.isfinite(edge), SliceFlag.BAD_PIXELS),
        (~(contrast >= MIN_SNR * noise), SliceFlag.FAINT),
        (~isolated, SliceFlag.CONTAMINATED),
        (~(np.abs(edge - last_centre) <= 1.0), SliceFlag.UNSTABLE),
    ]
    for failed, reason in checks:
        flag[(flag == SliceFlag.OK) & failed] = reason
    return np.where(flag == SliceFlag.OK, edge, np.nan), flag


def _repair_plateau_defects(profiles: np.ndarray, floor: np.ndarray, span: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Replace single-pixel dips (bumps) on the in-order plateau by their higher (lower) neighbour.

    A bad column (dead, low-sensitivity, hot) a pixel or two inside an order edge survives the
    median across the slice width, because it sits at the same place in every row of the slice;
    in the flux-sum edge measurement it reads as missing (or extra) light and moves the edge by up
    to a few tenths of a pixel over the whole stretch of the order where the edge runs past it.
    Only pixels whose two neighbours are both on the plateau (above ``PLATEAU_FRACTION`` of the
    span) are touched, so the slopes of the edges and narrow inter-order gaps are left alone. Dips
    are repaired first, so a good pixel next to a dip is not taken for a bump.
    """
    plateau = (floor + PLATEAU_FRACTION * span)[:, None]
    margin = np.fmax(DEFECT_FLOOR * span, DEFECT_SIGMA * noise)[:, None]
    repaired = profiles.copy()
    for sign in (1.0, -1.0):
        left, middle, right = repaired[:, :-2], repaired[:, 1:-1], repaired[:, 2:]
        with np.errstate(invalid="ignore"):
            on_plateau = np.fmin(left, right) >= plateau
            if sign > 0:
                neighbour = np.fmax(left, right)
                defect = on_plateau & (middle < np.fmin(left, right) - margin)
            else:
                neighbour = np.fmin(left, right)
                defect = on_plateau & (middle > np.fmax(left, right) + margin)
        repaired[:, 1:-1] = np.where(defect, neighbour, middle)
    return repaired


def measure_slice_edges(
    profiles: np.ndarray,
    *,
    centre_index: int,
    min_threshold_pct: float,
    max_threshold_pct: float,
    off_detector: np.ndarray | None = None,
) -> SliceEdges:
    """Measure the lower and upper edge of the order in every 1-D slice profile.

    Parameters
    ----------
    profiles
        (n_slices, slice_length) cross-order profiles, NaN where unusable.
    centre_index
        Index of the order centre in every profile; edges are searched walking outwards from it.
    min_threshold_pct, max_threshold_pct
        Bounds, in % of the slice span (in-order level above the floor), within which the profile
        must drop below a threshold on each side for an edge to exist there; a crossing is sought
        at the min level first, then in steps of 10 % of the range up to the max level (as
        soxspipe), and the local outside level must stay below the max level. The edge itself is
        then measured at half of the *local* contrast, independent of these settings.
    off_detector
        Same shape as ``profiles``: True where a pixel is off the detector (for the rejection flag).

    Returns
    -------
    SliceEdges
        Edges in slice pixel coordinates (index of the pixel centre) and their flags.
    """
    profiles = np.asarray(profiles, dtype=np.float64)
    n, length = profiles.shape
    off = np.zeros(profiles.shape, dtype=bool) if off_detector is None else np.asarray(off_detector, dtype=bool)
    core_half = max(2, min(8, length // 10))
    core = profiles[:, max(0, centre_index - core_half) : centre_index + core_half + 1]
    level = bn.nanmedian(core, axis=1)
    noise = MAD_TO_SIGMA / np.sqrt(2.0) * bn.nanmedian(np.abs(np.diff(core, axis=1)), axis=1)
    floor = _row_quantile(profiles, FLOOR_QUANTILE)
    span = level - floor
    profiles = _repair_plateau_defects(profiles, floor, span, noise)
    fractions = np.linspace(min_threshold_pct, max_threshold_pct, THRESHOLD_STEPS) / 100.0

    up, flag_up = _upper_edges(profiles, off, centre_index, floor, span, noise, fractions)
    mirrored = length - 1 - centre_index
    low_mirrored, flag_low = _upper_edges(profiles[:, ::-1], off[:, ::-1], mirrored, floor, span, noise, fractions)
    low = length - 1 - low_mirrored

    slice_flag = np.full(n, SliceFlag.OK, dtype=np.uint8)
    slice_flag[~(span >= MIN_SNR * noise)] = SliceFlag.FAINT
    slice_flag[~np.isfinite(level)] = SliceFlag.BAD_PIXELS
    slice_flag[off[:, centre_index]] = SliceFlag.OFF_DETECTOR
    narrow = (flag_low == SliceFlag.OK) & (flag_up == SliceFlag.OK) & (up - low < MIN_ORDER_WIDTH)
    slice_flag[(slice_flag == SliceFlag.OK) & narrow] = SliceFlag.NARROW
    for flag in (flag_low, flag_up):
        flag[slice_flag != SliceFlag.OK] = slice_flag[slice_flag != SliceFlag.OK]
    low = np.where(flag_low == SliceFlag.OK, low, np.nan)
    up = np.where(flag_up == SliceFlag.OK, up, np.nan)
    return SliceEdges(low, up, flag_low, flag_up, level, floor, noise)


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
    step = slice_width if sample_step is None else sample_step
    searched = np.ones(centres.orders.size, dtype=bool) if min_order is None else centres.orders >= min_order
    orders = np.asarray(centres.orders)[searched]

    starts, slice_orders = [], []
    for order, b_min, b_max in zip(orders, centres.b_min[searched], centres.b_max[searched], strict=True):
        first = max(int(np.ceil(b_min / b_bin)), 0)
        stop = min(int(np.ceil(b_max / b_bin)), n_b) - slice_width + 1
        start = np.arange(first, max(stop, first), step, dtype=np.int64)
        starts.append(start)
        slice_orders.append(np.full(start.size, order, dtype=np.int64))
    start = np.concatenate(starts) if starts else np.zeros(0, dtype=np.int64)
    order = np.concatenate(slice_orders) if slice_orders else np.zeros(0, dtype=np.int64)
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
        with ThreadPoolExecutor(WORKERS) as pool:
            measured = list(pool.map(measure, parts))
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


def _order_thresholds(
    orders: np.ndarray, order: np.ndarray, edges: SliceEdges, min_pct: float, max_pct: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-order (max threshold, min threshold, max value): medians over the order's measured slices."""
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


@dataclass(frozen=True, eq=False)
class _EdgeSolution:
    """One clipped fit of one edge: polynomial, residuals (frame px) of all points, clipped flags."""

    poly: Poly2D | None
    residual: np.ndarray
    clipped: np.ndarray
    problem: str


@dataclass(frozen=True, eq=False)
class _EdgePair:
    """Fits of both edges at one pair of degrees, expanded to all slices; ``problem`` '' if usable."""

    low: _EdgeSolution
    up: _EdgeSolution
    problem: str
    x_res: tuple[float, float, float]


def _fit_edge(
    order: np.ndarray,
    b: np.ndarray,
    a: np.ndarray,
    *,
    deg_order: int,
    deg_b: int,
    clipping_sigma: float,
    clipping_iterations: int,
    a_bin: int,
) -> _EdgeSolution:
    """Fit one edge with iterative median/MAD clipping; ``problem`` explains a failure ('' if none)."""
    n_coeffs = (deg_order + 1) * (deg_b + 1)
    keep = np.ones(a.size, dtype=bool)
    residual = np.full(a.size, np.nan)
    for iteration in range(clipping_iterations + 1):
        problem = _fit_problem(order[keep], b[keep], deg_order, deg_b, n_coeffs)
        if problem:
            return _EdgeSolution(None, residual, ~keep, problem)
        result = fit_poly2d(order[keep], b[keep], a[keep], deg_order=deg_order, deg_b=deg_b)
        if not result.full_rank:
            return _EdgeSolution(None, residual, ~keep, f"rank deficient ({result.rank} of {n_coeffs} coefficients)")
        residual = (a - result.poly(order, b)) / a_bin
        if iteration == clipping_iterations:
            break
        centre = np.median(residual[keep])
        scale = max(MAD_TO_SIGMA * np.median(np.abs(residual[keep] - centre)), MIN_CLIP_SCALE)
        newly_clipped = keep & (np.abs(residual - centre) > clipping_sigma * scale)
        if not newly_clipped.any():
            break
        keep &= ~newly_clipped
    return _EdgeSolution(result.poly, residual, ~keep, "")


def _fit_problem(order: np.ndarray, b: np.ndarray, deg_order: int, deg_b: int, n_coeffs: int) -> str:
    """Why points cannot constrain a fit of these degrees ('' if they can)."""
    if order.size < MIN_POINTS_PER_COEFF * n_coeffs:
        return f"{order.size} points for {n_coeffs} coefficients (need {MIN_POINTS_PER_COEFF * n_coeffs})"
    n_orders = np.unique(order).size
    if n_orders <= deg_order:
        return f"rank deficient ({n_orders} orders for order degree {deg_order})"
    n_b = np.unique(b).size
    if n_b <= deg_b:
        return f"rank deficient ({n_b} distinct positions along the orders for degree {deg_b})"
    return ""


def _fit_both_edges(
    detections: EdgeDetections,
    in_kept: np.ndarray,
    *,
    deg_order: int,
    deg_b: int,
    clipping_sigma: float,
    clipping_iterations: int,
    binning_ab: tuple[int, int],
    max_residual_sd: float | None,
) -> _EdgePair:
    """Fit the lower and upper edges at one pair of degrees and judge the result."""
    a_bin, b_bin = binning_ab
    n_slices = detections.order.size
    order = detections.order.astype(np.float64)
    b_unbinned = detections.b * b_bin
    solutions = []
    for measured, valid in ((detections.low, detections.valid_low), (detections.up, detections.valid_up)):
        use = valid & in_kept
        solution = _fit_edge(
            order[use],
            b_unbinned[use],
            measured[use] * a_bin,
            deg_order=deg_order,
            deg_b=deg_b,
            clipping_sigma=clipping_sigma,
            clipping_iterations=clipping_iterations,
            a_bin=a_bin,
        )
        residual = np.full(n_slices, np.nan)
        residual[use] = solution.residual
        clipped = np.zeros(n_slices, dtype=bool)
        clipped[use] = solution.clipped
        solutions.append(_EdgeSolution(solution.poly, residual, clipped, solution.problem))
    low, up = solutions
    problem = "; ".join(f"{name} edge: {s.problem}" for name, s in (("lower", low), ("upper", up)) if s.problem)
    if problem:
        return _EdgePair(low, up, problem, (np.nan, np.nan, np.nan))
    absolute = np.abs(np.concatenate([s.residual[np.isfinite(s.residual) & ~s.clipped] for s in solutions]))
    x_res = (float(absolute.min()), float(absolute.max()), float(absolute.std()))
    if max_residual_sd is not None and not x_res[2] <= max_residual_sd:
        problem = f"residual std {x_res[2]:.3f} px above the limit {max_residual_sd} px"
    return _EdgePair(low, up, problem, x_res)


def _warn_coverage(detections: EdgeDetections, order: int, log: Callable[[str], None]) -> None:
    """Log a warning if the measured slices of ``order`` cover too little of its length along B."""
    select = detections.order == order
    measured = select & detections.valid_low & detections.valid_up
    searched = np.ptp(detections.b[select])
    coverage = np.ptp(detections.b[measured]) / searched if searched > 0 else 1.0
    if coverage < MIN_COVERAGE:
        log(
            f"order {order}: edges measured over only {coverage:.0%} of its length along the orders "
            f"(B {detections.b[measured].min():.0f}-{detections.b[measured].max():.0f} of "
            f"{detections.b[select].min():.0f}-{detections.b[select].max():.0f} px); the edge fit extrapolates beyond"
        )


def _noop(message: str) -> None:
    """Default logger: discard the message."""


def fit_edges(
    detections: EdgeDetections,
    *,
    order_deg: int,
    disp_axis_deg: int,
    clipping_sigma: float,
    clipping_iterations: int,
    binning_ab: tuple[int, int] = (1, 1),
    max_residual_sd: float | None = None,
    min_slices_per_order: int = 10,
    log: Callable[[str], None] | None = None,
) -> EdgeFit:
    """Fit one global polynomial A(order, B) per edge to the detections, in unbinned pixels.

    Orders with fewer than ``min_slices_per_order`` slices measured on both edges are dropped
    (each named through ``log``). Each edge is fitted with :func:`soxs_mflat.geometry.fit_poly2d`
    and up to ``clipping_iterations`` rounds of clipping of residuals further than
    ``clipping_sigma`` robust sigmas (1.4826 × MAD, at least ``MIN_CLIP_SCALE`` px) from their
    median, refitting after each round — median/MAD so that a few bad slices cannot hide
    themselves by inflating the spread. If the fit of either edge fails (too few points, rank
    deficient, or ``x_res_sd`` above ``max_residual_sd``), the larger degree (the order degree on a
    tie) is lowered by one and both edges are refitted, up to ``MAX_DEGREE_REDUCTIONS`` times.

    Parameters
    ----------
    detections
        Output of :func:`detect_edges`.
    order_deg, disp_axis_deg
        Starting degrees in order number and along B (settings ``order-deg``, ``disp-axis-deg``).
    clipping_sigma, clipping_iterations
        ``poly-fitting-residual-clipping-sigma`` and ``poly-clipping-iteration-limit``.
    binning_ab
        The frame's (A, B) binning: detections are scaled by it to unbinned pixels.
    max_residual_sd
        Upper limit on ``x_res_sd`` (the arm's QC limit); None for no limit.
    min_slices_per_order
        Orders with fewer slices measured on both edges are dropped.
    log
        Called with one message per dropped order and per fit attempt.

    Returns
    -------
    EdgeFit
        The edge polynomials, residuals, clipping flags and QC values.

    Raises
    ------
    UserInputError
        If no order has enough measured slices, or the fit still fails after the last degree reduction.
    """
    log = _noop if log is None else log
    kept, dropped = [], []
    for order in detections.orders:
        select = detections.order == order
        n_good = min(np.count_nonzero(detections.valid_low & select), np.count_nonzero(detections.valid_up & select))
        if n_good < min_slices_per_order:
            dropped.append(order)
            log(
                f"order {order} dropped from the edge fit: only {n_good} of {np.count_nonzero(select)} slices have both "
                f"edges measured (minimum {min_slices_per_order}); rejections: {detections.rejection_summary(order)}"
            )
        else:
            kept.append(order)
            _warn_coverage(detections, order, log)
    orders_kept = np.asarray(kept, dtype=np.int64)
    if orders_kept.size == 0:
        raise UserInputError(
            f"No order edges could be measured on the flat (rejections: {detections.rejection_summary()}). Check that "
            "the order-centre table matches the flats, that slice-length-for-edge-detection exceeds the order height "
            "plus the gaps next to the orders, and the min-percentage-threshold-for-edge-detection and "
            "max-percentage-threshold-for-edge-detection settings."
        )
    in_kept = np.isin(detections.order, orders_kept)

    deg_order, deg_b = order_deg, disp_axis_deg
    attempts: list[str] = []
    for attempt in range(MAX_DEGREE_REDUCTIONS + 1):
        pair = _fit_both_edges(
            detections,
            in_kept,
            deg_order=deg_order,
            deg_b=deg_b,
            clipping_sigma=clipping_sigma,
            clipping_iterations=clipping_iterations,
            binning_ab=binning_ab,
            max_residual_sd=max_residual_sd,
        )
        attempts.append(
            f"edge fit with order-deg {deg_order}, disp-axis-deg {deg_b}: "
            + (pair.problem or f"ok, residual std {pair.x_res[2]:.4f} px")
        )
        log(attempts[-1])
        if not pair.problem:
            break
        if attempt == MAX_DEGREE_REDUCTIONS or deg_order + deg_b == 0:
            raise UserInputError(
                f"The order edges could not be fitted: {' | '.join(attempts)}. Lower order-deg and/or disp-axis-deg in "
                "the soxs-mflat settings of this arm; if too few edges were measured, check "
                "slice-length-for-edge-detection (it must exceed the order height plus the gaps next to the orders), "
                "slice-width-for-edge-detection and the min-percentage-threshold-for-edge-detection and "
                "max-percentage-threshold-for-edge-detection settings."
            )
        if deg_order >= deg_b:
            deg_order -= 1
        else:
            deg_b -= 1

    used_low = np.isfinite(pair.low.residual) & ~pair.low.clipped
    used_up = np.isfinite(pair.up.residual) & ~pair.up.clipped
    slices_used = np.array(
        [
            min(np.count_nonzero(used_low & (detections.order == m)), np.count_nonzero(used_up & (detections.order == m)))
            for m in orders_kept
        ],
        dtype=np.int64,
    )
    return EdgeFit(
        edge_low=pair.low.poly,
        edge_up=pair.up.poly,
        deg_order=deg_order,
        deg_b=deg_b,
        attempts=tuple(attempts),
        residual_low=pair.low.residual,
        residual_up=pair.up.residual,
        clipped_low=pair.low.clipped,
        clipped_up=pair.up.clipped,
        orders_kept=orders_kept,
        orders_dropped=np.asarray(dropped, dtype=np.int64),
        slices_used=slices_used,
        binning_ab=(int(binning_ab[0]), int(binning_ab[1])),
        x_res_min=pair.x_res[0],
        x_res_max=pair.x_res[1],
        x_res_sd=pair.x_res[2],
    )


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
