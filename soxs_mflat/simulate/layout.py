"""True echelle geometry of one arm: order polynomials, valid extents, blaze, slit illumination and end fall-off.

All coordinates here are **unbinned** prepared-frame pixels; axis A is the fitted coordinate and axis
B runs along the orders (spec §1.5, §4.2). The true centre of each order is the global power series
fitted through the anchors of :mod:`soxs_mflat.simulate.arms`, and the true edges are
``centre ∓ height / 2``, so every truth trace is an exact :class:`~soxs_mflat.geometry.Poly2D` of
degree no higher than the recipe's default edge degrees.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy.special import ndtr

from soxs_mflat.geometry import Poly2D, fit_poly2d
from soxs_mflat.instruments import Detector, detector_for
from soxs_mflat.simulate.arms import ArmSpec, arm_spec
from soxs_mflat.simulate.variation import Variation

EDGE_MARGIN = 3.0
"""Minimum distance (unbinned px) of a true order edge from the frame border for it to count."""

TAPER_WIDTH = 8.0
"""Width (unbinned px, Gaussian σ) of the fall-off where an order starts or ends inside the detector."""


@dataclass(frozen=True)
class ArmLayout:
    """True geometry of one arm in unbinned prepared-frame pixels.

    ``b_start``/``b_stop`` bound, per order, the axis-B range where the whole slit image is
    illuminated and on the detector: the range over which the truth edges are defined.
    """

    spec: ArmSpec
    detector: Detector
    orders: np.ndarray
    centre: Poly2D
    height: Poly2D
    edge_low: Poly2D
    edge_up: Poly2D
    b_start: np.ndarray
    b_stop: np.ndarray
    b_length: int
    a_length: int
    illum_start: np.ndarray
    """Per order, where the illumination starts along B (−inf when the order enters from the frame edge)."""
    illum_stop: np.ndarray
    slit_tilt: float = 0.01
    """Mean slope of the slit illumination (see :meth:`slit_slope`)."""
    slit_curvature: float = 0.0
    """Quadratic term of the slit illumination: its level at both slit ends minus the centre."""

    def wavelength(self, order: np.ndarray | int, b: np.ndarray) -> np.ndarray:
        """Wavelength (nm) at unbinned axis-B coordinate ``b`` of ``order``."""
        index = self._index(order)
        lam0, lam1 = np.asarray(self.spec.wavelengths, dtype=np.float64)[index].T
        return lam0 + (lam1 - lam0) * np.asarray(b, dtype=np.float64) / self.b_length

    def blaze(self, order: int, b: np.ndarray) -> np.ndarray:
        """Grating efficiency along an order: sinc² of the position along the order.

        The peak is offset from mid-frame by a few per cent, differently for each order, so the
        blaze is not perfectly symmetric; the order ends are 2–4× below the peak.
        """
        u = np.asarray(b, dtype=np.float64) / self.b_length - 0.5 - 0.04 * np.sin(1.7 * order)
        return np.sinc(self.spec.blaze_beta * u) ** 2

    def slit_slope(self, order: int) -> float:
        """Fractional change of the slit illumination from the centre to the upper edge (a few %)."""
        return float(0.03 * np.cos(0.9 * order) + self.slit_tilt)

    def taper(self, order: int, b: np.ndarray) -> np.ndarray:
        """Fall-off of the illumination where an order starts or ends inside the detector."""
        index = self._index(order)
        b = np.asarray(b, dtype=np.float64)
        return ndtr((b - self.illum_start[index]) / TAPER_WIDTH) * ndtr((self.illum_stop[index] - b) / TAPER_WIDTH)

    def _index(self, order: np.ndarray | int) -> np.ndarray:
        return np.searchsorted(self.orders, np.asarray(order, dtype=np.int64))


def build_layout(instrument: str, arm: str, *, variation: Variation | None = None) -> ArmLayout:
    """Fit the true order polynomials of one arm and work out each order's valid axis-B range.

    ``variation`` scales the slit height, sets the slit illumination profile and the slit width
    written to the headers (:class:`~soxs_mflat.simulate.variation.Variation`; nominal by default).
    """
    variation = variation or Variation.nominal()
    spec = arm_spec(instrument, arm)
    if variation.slit_width is not None:
        width = f"{variation.slit_width:.1f}"
        spec = replace(spec, slit_name=f"SLIT{width}" if instrument == "soxs" else f"{width}x{spec.slit_arcsec:.0f}")
    detector = detector_for(instrument, arm)
    rows, cols = detector.prepared_shape()
    a_length, b_length = (cols, rows) if detector.dispersion_axis == "x" else (rows, cols)
    orders = np.asarray(spec.orders, dtype=np.int64)
    anchors = np.asarray(spec.anchors, dtype=np.float64)
    nodes = np.linspace(0.0, b_length, anchors.shape[1])
    order_grid, b_grid = np.meshgrid(orders, nodes, indexing="ij")
    deg_order, deg_b = spec.truth_degrees
    centre = fit_poly2d(order_grid.ravel(), b_grid.ravel(), anchors.ravel(), deg_order=deg_order, deg_b=deg_b).poly
    height = _height_poly(spec, orders, b_length)
    if variation.order_height_scale != 1.0:
        height = Poly2D(height.coeffs * variation.order_height_scale)
    half = Poly2D(height.coeffs / 2.0)
    edge_low = _subtract(centre, half)
    edge_up = _add(centre, half)
    illum_start = np.array([spec.b_limits.get(int(m), (-np.inf, np.inf))[0] for m in orders])
    illum_stop = np.array([spec.b_limits.get(int(m), (-np.inf, np.inf))[1] for m in orders])
    b_start, b_stop = _valid_ranges(orders, edge_low, edge_up, illum_start, illum_stop, a_length, b_length)
    return ArmLayout(
        spec=spec,
        detector=detector,
        orders=orders,
        centre=centre,
        height=height,
        edge_low=edge_low,
        edge_up=edge_up,
        b_start=b_start,
        b_stop=b_stop,
        b_length=b_length,
        a_length=a_length,
        illum_start=illum_start,
        illum_stop=illum_stop,
        slit_tilt=variation.slit_tilt,
        slit_curvature=variation.slit_curvature,
    )


def _height_poly(spec: ArmSpec, orders: np.ndarray, b_length: int) -> Poly2D:
    """Slit height, linear in order number, with a 1 % anamorphic change along B."""
    first, last = spec.heights
    slope = (last - first) / max(orders[-1] - orders[0], 1)
    base = first - slope * orders[0]
    tilt = 0.01 / b_length
    return Poly2D(np.array([[base, base * tilt], [slope, slope * tilt]]))


def _pad(coeffs: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    out = np.zeros(shape)
    out[: coeffs.shape[0], : coeffs.shape[1]] = coeffs
    return out


def _add(first: Poly2D, second: Poly2D) -> Poly2D:
    shape = (max(first.deg_order, second.deg_order) + 1, max(first.deg_b, second.deg_b) + 1)
    return Poly2D(_pad(first.coeffs, shape) + _pad(second.coeffs, shape))


def _subtract(first: Poly2D, second: Poly2D) -> Poly2D:
    return _add(first, Poly2D(-second.coeffs))


def _valid_ranges(
    orders: np.ndarray,
    edge_low: Poly2D,
    edge_up: Poly2D,
    illum_start: np.ndarray,
    illum_stop: np.ndarray,
    a_length: int,
    b_length: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Per order, the contiguous axis-B range (half-open, unbinned) of the true edges.

    It is the part of the illuminated range where both edges lie at least :data:`EDGE_MARGIN` px
    inside the frame, taking the longest contiguous run.
    """
    b = np.arange(b_length, dtype=np.float64)
    starts, stops = [], []
    for index, order in enumerate(orders):
        low = edge_low(order, b)
        up = edge_up(order, b)
        good = (low >= EDGE_MARGIN - 0.5) & (up <= a_length - 0.5 - EDGE_MARGIN)
        good &= (b >= illum_start[index]) & (b <= illum_stop[index])
        start, stop = _longest_run(good)
        starts.append(start)
        stops.append(stop)
    return np.asarray(starts, dtype=np.float64), np.asarray(stops, dtype=np.float64)


def _longest_run(good: np.ndarray) -> tuple[int, int]:
    """Start and (exclusive) stop of the longest run of True values."""
    padded = np.concatenate(([False], good, [False])).astype(np.int8)
    changes = np.flatnonzero(np.diff(padded))
    run_starts, run_stops = changes[::2], changes[1::2]
    if run_starts.size == 0:
        return 0, 0
    best = int(np.argmax(run_stops - run_starts))
    return int(run_starts[best]), int(run_stops[best])
