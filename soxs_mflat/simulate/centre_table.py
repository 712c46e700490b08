"""The order-centre table handed to the recipe, as soxs_order_centres would measure it.

The true centres are sampled every 4 px along B, perturbed like a measurement and refitted with the
arm's default centre degrees (spec §4.3). The nominal perturbation is small (a smooth 0.1 px rms
error surface, a ripple and jitter); a varied table may also be offset and tilted per order by up to
2 px, miss one true order, or list one order that is not on the lit detector.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from soxs_mflat.geometry import Poly2D, fit_poly2d
from soxs_mflat.order_table import OrderTable
from soxs_mflat.simulate.layout import ArmLayout
from soxs_mflat.simulate.variation import Variation

CENTRE_TABLE_RMS = 0.1
"""RMS (px) of the smooth error of the simulated order-centre table."""
CENTRE_TABLE_MAX = 0.2
"""Largest smooth error (px) of the simulated order-centre table."""
TRACE_STD = 1.2
"""Gaussian σ (px) written as the ``std_`` trace width of the order-centre table."""
SAMPLE_STEP = 4.0
"""Spacing (px along B) of the simulated centre measurements."""


@dataclass(frozen=True)
class CentreTable:
    """A simulated order-centre table and how its order list differs from the truth."""

    table: OrderTable
    missing: tuple[int, ...] = ()
    extra: tuple[int, ...] = ()


def measured_centre_table(
    layout: ArmLayout,
    rng: np.random.Generator,
    *,
    variation: Variation | None = None,
    extra_rng: np.random.Generator | None = None,
) -> CentreTable:
    """An order-centre table as soxs_order_centres would measure it (unbinned coefficients).

    A smooth quadratic error surface in (order, B), scaled to :data:`CENTRE_TABLE_RMS` rms (at most
    :data:`CENTRE_TABLE_MAX`), plus a small ripple along each order and per-sample jitter are added
    to the true centres and the result is refitted. ``extra_rng`` (varied sets) adds the per-order
    offsets and tilts of ``variation`` and drops or adds an order.
    """
    variation = variation or Variation.nominal()
    orders = [int(order) for order in layout.orders]
    ranges = {int(order): (start, stop) for order, start, stop in zip(layout.orders, layout.b_start, layout.b_stop, strict=True)}
    missing: tuple[int, ...] = ()
    extra: tuple[int, ...] = ()
    if extra_rng is not None and variation.table_missing_order and len(orders) > 2:
        missing = (int(extra_rng.choice(orders)),)
    if extra_rng is not None and variation.table_extra_order:
        extra_order, neighbour = _extra_order(layout, extra_rng)
        extra = (extra_order,)
        ranges[extra_order] = ranges[neighbour]
    listed = sorted(set(orders) - set(missing) | set(extra))
    samples = [np.arange(*ranges[order], SAMPLE_STEP) for order in listed]
    order = np.concatenate([np.full(b.size, value, dtype=np.float64) for value, b in zip(listed, samples, strict=True)])
    b = np.concatenate(samples)
    u = 2.0 * (order - layout.orders.min()) / max(np.ptp(layout.orders), 1) - 1.0
    v = 2.0 * b / layout.b_length - 1.0
    error = np.polynomial.chebyshev.chebval2d(u, v, rng.standard_normal((3, 3)))
    error -= error.mean()
    error *= min(CENTRE_TABLE_RMS / np.std(error), CENTRE_TABLE_MAX / np.abs(error).max())
    index = np.searchsorted(listed, order)
    phase = rng.uniform(0.0, 2.0 * np.pi, size=len(listed))[index]
    error += 0.03 * np.sin(7.0 * np.pi * b / layout.b_length + phase) + 0.02 * rng.standard_normal(b.size)
    if extra_rng is not None:
        offset = extra_rng.uniform(-1.0, 1.0, size=len(listed)) * variation.table_offset_max
        tilt = extra_rng.uniform(-1.0, 1.0, size=len(listed)) * variation.table_tilt_max
        start = np.array([ranges[value][0] for value in listed])[index]
        stop = np.array([ranges[value][1] for value in listed])[index]
        error += offset[index] + tilt[index] * ((b - start) / np.maximum(stop - start, 1.0) - 0.5)
    deg_order, deg_b = layout.spec.centre_degrees
    fit = fit_poly2d(order, b, layout.centre(order, b) + error, deg_order=min(deg_order, len(listed) - 1), deg_b=deg_b)
    std = np.zeros_like(fit.poly.coeffs)
    std[0, 0] = TRACE_STD
    centres = [fit.poly(value, b_order) for value, b_order in zip(listed, samples, strict=True)]
    table = OrderTable(
        fitted_axis=layout.detector.fitted_axis,
        orders=np.asarray(listed, dtype=layout.orders.dtype),
        b_min=np.array([ranges[value][0] for value in listed], dtype=np.float64),
        b_max=np.array([ranges[value][1] for value in listed], dtype=np.float64),
        a_min=np.array([values.min() for values in centres]),
        a_max=np.array([values.max() for values in centres]),
        centre=fit.poly,
        std=Poly2D(std),
    )
    return CentreTable(table, missing, extra)


def _extra_order(layout: ArmLayout, rng: np.random.Generator) -> tuple[int, int]:
    """An order number just beyond the arm's, on the side where its extrapolated centre lies most on the
    detector (a random side if neither does), and the neighbouring true order whose B range it takes."""
    first, last = int(layout.orders.min()), int(layout.orders.max())
    b = np.linspace(0.0, layout.b_length, 33)
    on_frame = {
        candidate: float(np.mean((layout.centre(candidate, b) > 0) & (layout.centre(candidate, b) < layout.a_length)))
        for candidate in (first - 1, last + 1)
    }
    if max(on_frame.values()) == 0.0:
        candidate = int(rng.choice(list(on_frame)))
    else:
        candidate = max(on_frame, key=lambda value: on_frame[value])
    return candidate, first if candidate < first else last
