"""The thresholds of the bad-pixel tests, and the false-alarm floor under the low-sensitivity threshold."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

LOGGER = logging.getLogger(__name__)

CANDIDATE_FRACTION = 0.7
"""A pixel is tested exactly once it lies beyond this fraction of a limit (with the smallest σ it can
have); the rest covers the difference between the block-wise and the exact expectation."""
FALSE_ALARMS = 1.0
"""Pure-noise low-sensitivity (or dead) detections expected over all searched pixels at the lowest
threshold :func:`low_sensitivity_threshold` lets a setting have."""
HIGHEST_FLOOR = 10.0
"""No floor is set higher than this (σ)."""
FLOOR_STEP = 0.01
"""Resolution (σ) of the floor."""


@dataclass(frozen=True)
class Thresholds:
    """The limits of the tests of the flat: significance (σ) of a deficit and of an excess, the response
    below which a pixel is dead, and the depth a low-sensitivity pixel must reach."""

    low_sensitivity_sigma: float
    hot_sigma: float
    dead_limit: float
    min_depth: float


def false_alarm_sigma(n_pixels: int, *, expected_false: float = 0.1) -> float:
    """One-sided Gaussian threshold (σ) with ``expected_false`` false alarms over ``n_pixels``.

    A frame searched pixel by pixel expects, at a fixed threshold, more pure-noise detections the more
    pixels it has (at 5σ a 4-Mpixel frame expects about one), so a threshold that keeps the false alarms
    rare grows with the number of pixels.
    """
    return -NormalDist().inv_cdf(expected_false / max(n_pixels, 1))


def expected_false_alarms(relative_noise: np.ndarray, *, depth: float, weight: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Pure-noise detections expected of a one-sided test that needs a deficit of ``t`` σ and of ``depth``
    (a fraction of the expectation) over pixels of σ / expectation ``relative_noise`` (each value standing
    for ``weight`` pixels), for ``t`` on a grid of ``FLOOR_STEP`` up to ``HIGHEST_FLOOR``: (grid, expected).

    A pixel whose depth is ``u`` σ is flagged by noise with the probability Q(max(t, u)) of the normal
    tail; ``u`` is rounded down to the grid, which errs towards more false alarms.
    """
    grid = np.arange(round(HIGHEST_FLOOR / FLOOR_STEP) + 1) * FLOOR_STEP
    tail = np.array([NormalDist().cdf(-t) for t in grid])
    with np.errstate(divide="ignore", invalid="ignore"):
        depth_in_sigma = depth / relative_noise
    step = np.floor(depth_in_sigma[depth_in_sigma < HIGHEST_FLOOR] / FLOOR_STEP).astype(np.int64)
    count = weight * np.bincount(step, minlength=grid.size)
    shallower = np.concatenate([[0.0], np.cumsum(count)[:-1]])
    deeper = np.cumsum((count * tail)[::-1])[::-1]
    return grid, tail * shallower + deeper


def low_sensitivity_threshold(requested: float, relative_noise: np.ndarray, *, depth: float, weight: float = 1.0) -> float:
    """The low-sensitivity significance (σ) to use for a ``requested`` one: at least the one at which
    ``FALSE_ALARMS`` pure-noise detection is expected over the searched pixels (:func:`expected_false_alarms`
    of their ``relative_noise``, each standing for ``weight`` pixels, and the ``depth`` a flagged pixel
    must also reach).

    soxspipe's ``low-sensitivity-clipping-sigma: 2`` was chosen for a global clip of the un-flattened
    flat; measured against the local model of a flattened flat, as here, 2σ flags noise wherever the
    flat is too faint for the depth to protect it. Raising the value is logged as a warning naming the
    key and both values.
    """
    grid, expected = expected_false_alarms(relative_noise, depth=depth, weight=weight)
    enough = np.flatnonzero(expected <= FALSE_ALARMS)
    floor = float(grid[enough[0]]) if enough.size else HIGHEST_FLOOR
    if requested >= floor:
        return requested
    LOGGER.warning(
        "low-sensitivity-clipping-sigma %g would flag noise as low-sensitivity pixels in this flat (about %.0f "
        "expected); using low-sensitivity-clipping-sigma %.2f instead, at which about %g is expected",
        requested, expected[int(requested / FLOOR_STEP)], floor, FALSE_ALARMS)
    return floor
