"""Global fits of the order edges: one polynomial A(order, B) per edge, in unbinned pixels.

The lower and upper edges are fitted directly — not as offsets from the centre trace, as soxspipe
does — each with one global polynomial in (order number, unbinned B)
(:func:`soxs_mflat.geometry.fit_poly2d`) with iterative median/MAD sigma clipping. When a fit fails
*numerically* — too few points or distinct positions for its coefficients, a rank-deficient design,
or residuals far above the scatter of the detections themselves — the larger degree is lowered and
both edges are refitted. QC ranges (``X RES SD``) take no part in this: they only grade the product.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from astropy.stats import mad_std

from soxs_mflat.edges.detection import EdgeDetections
from soxs_mflat.errors import UserInputError
from soxs_mflat.geometry import Poly2D, fit_poly2d

MAX_DEGREE_REDUCTIONS = 5
"""Times the larger fit degree is lowered before the edge fit gives up."""
MIN_COVERAGE = 0.5
"""An order whose measured slices span less than this fraction of its searched length is reported."""
MIN_POINTS_PER_COEFF = 2
"""A fit needs at least this many points per coefficient."""
MIN_CLIP_SCALE = 0.01
"""Floor (frame px) of the robust residual scale, so that near-noiseless data are not clipped to numerical noise;
also the floor of the detections' scatter that :data:`RESIDUAL_FAILURE_RATIO` multiplies."""
RESIDUAL_FAILURE_RATIO = 20.0
"""A fit whose robust residual scale is more than this many times the scatter of the detections themselves
has failed: the polynomial does not follow the edges (a good fit's ratio is about 1)."""
MIN_SCATTER_TRIPLES = 10
"""Fewest triples of neighbouring slices from which the scatter of the detections is measured."""


@dataclass(frozen=True, eq=False)
class SingleEdgeFit:
    """The clipped fit of one edge (lower or upper) at one pair of degrees.

    ``poly`` is A(order, B) in unbinned px (None if the fit failed). Per slice of the
    detections: ``residual`` (measured − fit, frame px; NaN where not fitted) and ``clipped``.
    ``residual_scale`` is the robust scale (1.4826 × MAD, frame px) of the unclipped residuals and
    ``failure`` says why the fit failed numerically ('' if it did not).
    """

    poly: Poly2D | None
    residual: np.ndarray
    clipped: np.ndarray
    residual_scale: float
    failure: str


@dataclass(frozen=True, eq=False)
class EdgeFit:
    """Global fits of the lower and upper order edges.

    ``edge_low``/``edge_up`` give A(order, B) in unbinned pixels; ``deg_order``/``deg_b`` are the
    degrees actually used and ``attempts`` one line per fit tried. Per slice of the detections:
    ``residual_low``/``residual_up`` (measured − fit, frame px; NaN where not fitted) and
    ``clipped_low``/``clipped_up``. ``slices_used`` gives, per order of ``orders_kept``, the smaller
    of the numbers of unclipped lower and upper edge points. ``x_res_min``/``x_res_max``/``x_res_sd``
    are the min/max/std of |residual| over the unclipped points of both edges (spec §8, frame px).
    ``scatter_low``/``scatter_up`` are the scatter of the detections themselves (frame px, see
    :func:`detection_scatter`; NaN if too few neighbouring slices).
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
    scatter_low: float
    scatter_up: float


def detection_scatter(order: np.ndarray, b: np.ndarray, edge: np.ndarray) -> float:
    """Scatter (px) of edge measurements about the smooth edge they trace; NaN if too few.

    The second difference ``e[i-1] − 2 e[i] + e[i+1]`` of three equally spaced neighbouring slices
    of one order cancels the edge's position and slope (its curvature over a few slices is far below
    the noise), leaving 6 σ² of variance for independent measurements: σ = 1.4826 MAD / √6. It is a
    property of the measurements alone, whatever the fitted model. NaN ``edge`` values are skipped.
    """
    finite = np.flatnonzero(np.isfinite(edge))
    sequence = finite[np.lexsort((b[finite], order[finite]))]
    order, b, edge = order[sequence], b[sequence], edge[sequence]
    neighbours = (order[:-2] == order[2:]) & (b[1:-1] - b[:-2] == b[2:] - b[1:-1])
    second = (edge[:-2] - 2.0 * edge[1:-1] + edge[2:])[neighbours]
    if second.size < MIN_SCATTER_TRIPLES:
        return np.nan
    return float(mad_std(second) / np.sqrt(6.0))


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


def fit_edge(
    order: np.ndarray,
    b: np.ndarray,
    a: np.ndarray,
    use: np.ndarray,
    *,
    deg_order: int,
    deg_b: int,
    clipping_sigma: float,
    clipping_iterations: int,
    a_bin: int,
    scatter: float,
) -> SingleEdgeFit:
    """Fit ``a = A(order, b)`` (unbinned px) to the points ``use`` with iterative median/MAD clipping.

    Up to ``clipping_iterations`` times, residuals further than ``clipping_sigma`` robust sigmas
    (1.4826 × MAD, at least ``MIN_CLIP_SCALE`` px) from their median are clipped and the rest
    refitted — median/MAD so that a few bad slices cannot hide themselves by inflating the spread.
    The fit fails if the points cannot constrain it, or if its robust residual scale exceeds
    ``RESIDUAL_FAILURE_RATIO`` times ``scatter``, the detections' own scatter (frame px; at least
    ``MIN_CLIP_SCALE``, which also stands in for NaN).
    """
    n_coeffs = (deg_order + 1) * (deg_b + 1)
    points = np.flatnonzero(use)
    order_used, b_used, a_used = order[points], b[points], a[points]
    keep = np.ones(points.size, dtype=bool)
    residual = np.full(points.size, np.nan)
    poly = None
    failure = ""
    for iteration in range(clipping_iterations + 1):
        failure = _fit_problem(order_used[keep], b_used[keep], deg_order, deg_b, n_coeffs)
        if failure:
            break
        result = fit_poly2d(order_used[keep], b_used[keep], a_used[keep], deg_order=deg_order, deg_b=deg_b)
        if not result.full_rank:
            failure = f"rank deficient ({result.rank} of {n_coeffs} coefficients)"
            break
        poly = result.poly
        residual = (a_used - poly(order_used, b_used)) / a_bin
        if iteration == clipping_iterations:
            break
        centre = np.median(residual[keep])
        spread = max(mad_std(residual[keep]), MIN_CLIP_SCALE)
        newly_clipped = keep & (np.abs(residual - centre) > clipping_sigma * spread)
        if not newly_clipped.any():
            break
        keep &= ~newly_clipped
    residual_scale = np.nan if failure else float(mad_std(residual[keep]))
    limit = RESIDUAL_FAILURE_RATIO * np.fmax(scatter, MIN_CLIP_SCALE)
    if not failure and not residual_scale <= limit:
        failure = (
            f"residual scale {residual_scale:.3f} px is above {limit:.3f} px ({RESIDUAL_FAILURE_RATIO:g} times the "
            f"scatter of the edge measurements themselves, {scatter:.4f} px, or of {MIN_CLIP_SCALE} px if larger)"
        )
    residual_all = np.full(use.shape, np.nan)
    residual_all[points] = residual
    clipped = np.zeros(use.shape, dtype=bool)
    clipped[points] = ~keep
    return SingleEdgeFit(None if failure else poly, residual_all, clipped, residual_scale, failure)


def _select_orders(detections: EdgeDetections, min_slices: int, log: Callable[[str], None]) -> tuple[list, list]:
    """(kept, dropped) order numbers: an order is kept if at least ``min_slices`` slices have both edges measured."""
    kept, dropped = [], []
    for order in detections.orders:
        select = detections.order == order
        n_good = min(np.count_nonzero(detections.valid_low & select), np.count_nonzero(detections.valid_up & select))
        if n_good < min_slices:
            dropped.append(order)
            log(
                f"order {order} dropped from the edge fit: only {n_good} of {np.count_nonzero(select)} slices have both "
                f"edges measured (minimum {min_slices}); rejections: {detections.rejection_summary(order)}"
            )
        else:
            kept.append(order)
            _warn_coverage(detections, order, log)
    return kept, dropped


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


def _absolute_residual_statistics(low: SingleEdgeFit, up: SingleEdgeFit) -> tuple[float, float, float]:
    """Min, max and std of |residual| over the unclipped points of both edges (QC X RES MIN/MAX/SD)."""
    absolute = np.abs(np.concatenate([fit.residual[np.isfinite(fit.residual) & ~fit.clipped] for fit in (low, up)]))
    return float(absolute.min()), float(absolute.max()), float(absolute.std())


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
    min_slices_per_order: int = 10,
    log: Callable[[str], None] | None = None,
) -> EdgeFit:
    """Fit one global polynomial A(order, B) per edge to the detections, in unbinned pixels.

    Orders with fewer than ``min_slices_per_order`` slices measured on both edges are dropped
    (each named through ``log``). Each edge is fitted with :func:`fit_edge`. If the fit of either
    edge fails numerically (too few points, rank deficient, residuals over
    ``RESIDUAL_FAILURE_RATIO`` times the detections' own scatter), the larger degree (the order
    degree on a tie) is lowered by one and both edges are refitted, up to
    ``MAX_DEGREE_REDUCTIONS`` times. How large the residuals are against a QC range plays no part.

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
    kept, dropped = _select_orders(detections, min_slices_per_order, log)
    orders_kept = np.asarray(kept, dtype=np.int64)
    if orders_kept.size == 0:
        raise UserInputError(
            f"No order edges could be measured on the flat (rejections: {detections.rejection_summary()}). Check that "
            "the order-centre table matches the flats, that slice-length-for-edge-detection exceeds the order height "
            "plus the gaps next to the orders, and the min-percentage-threshold-for-edge-detection and "
            "max-percentage-threshold-for-edge-detection settings."
        )
    in_kept = np.isin(detections.order, orders_kept)
    a_bin, b_bin = binning_ab
    order = detections.order.astype(np.float64)
    b_unbinned = detections.b * b_bin
    sides = [(detections.low, detections.valid_low & in_kept), (detections.up, detections.valid_up & in_kept)]
    scatters = [detection_scatter(detections.order, detections.b, np.where(use, measured, np.nan)) for measured, use in sides]

    deg_order, deg_b = order_deg, disp_axis_deg
    attempts: list[str] = []
    for attempt in range(MAX_DEGREE_REDUCTIONS + 1):
        low, up = (
            fit_edge(order, b_unbinned, measured * a_bin, use, deg_order=deg_order, deg_b=deg_b,
                     clipping_sigma=clipping_sigma, clipping_iterations=clipping_iterations, a_bin=a_bin, scatter=scatter)
            for (measured, use), scatter in zip(sides, scatters, strict=True)
        )
        failure = "; ".join(f"{name} edge: {fit.failure}" for name, fit in (("lower", low), ("upper", up)) if fit.failure)
        if not failure:
            break
        attempts.append(f"edge fit with order-deg {deg_order}, disp-axis-deg {deg_b}: {failure}")
        log(attempts[-1])
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
    x_res = _absolute_residual_statistics(low, up)
    attempts.append(
        f"edge fit with order-deg {deg_order}, disp-axis-deg {deg_b}: ok, residual std {x_res[2]:.4f} px; robust "
        f"residual scale {low.residual_scale:.4f} / {up.residual_scale:.4f} px (lower / upper edge) for a scatter of "
        f"the edge measurements themselves of {scatters[0]:.4f} / {scatters[1]:.4f} px"
    )
    log(attempts[-1])

    used_low = np.isfinite(low.residual) & ~low.clipped
    used_up = np.isfinite(up.residual) & ~up.clipped
    slices_used = np.array(
        [
            min(np.count_nonzero(used_low & (detections.order == m)), np.count_nonzero(used_up & (detections.order == m)))
            for m in orders_kept
        ],
        dtype=np.int64,
    )
    return EdgeFit(
        edge_low=low.poly,
        edge_up=up.poly,
        deg_order=deg_order,
        deg_b=deg_b,
        attempts=tuple(attempts),
        residual_low=low.residual,
        residual_up=up.residual,
        clipped_low=low.clipped,
        clipped_up=up.clipped,
        orders_kept=orders_kept,
        orders_dropped=np.asarray(dropped, dtype=np.int64),
        slices_used=slices_used,
        binning_ab=(int(binning_ab[0]), int(binning_ab[1])),
        x_res_min=x_res[0],
        x_res_max=x_res[1],
        x_res_sd=x_res[2],
        scatter_low=scatters[0],
        scatter_up=scatters[1],
    )
