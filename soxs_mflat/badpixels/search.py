"""The bad-pixel search of a master flat, shared among threads by sets of orders."""

from __future__ import annotations

from functools import partial

import numpy as np

from soxs_mflat.badpixels.bands import MaskedImage, OrderPixels, share_orders
from soxs_mflat.badpixels.flat_model import NOISE_STEP
from soxs_mflat.badpixels.flat_tests import MeasuredFlat, flag_flat, measure_flat, partial_edges
from soxs_mflat.badpixels.frame_hot import CalibrationFrame, calibration_frames, calibration_threshold, hot_in_calibration_frames
from soxs_mflat.badpixels.result import BadPixelResult, FlaggedPixels
from soxs_mflat.badpixels.thresholds import Thresholds, low_sensitivity_threshold
from soxs_mflat.footprints import OrderBounds
from soxs_mflat.parallel import WORKERS, map_threads


def find_bad_pixels(
    flat_ba: np.ndarray,
    errs_ba: np.ndarray,
    bounds: OrderBounds,
    *,
    low_sensitivity_sigma: float,
    hot_sigma: float,
    dead_limit: float,
    edge_min_fraction: float,
    dark_ba: np.ndarray | None = None,
    dark_err_ba: np.ndarray | None = None,
    bias_ba: np.ndarray | None = None,
    bias_err_ba: np.ndarray | None = None,
    input_mask_ba: np.ndarray | None = None,
    frame_hot: np.ndarray | None = None,
    min_depth: float = 0.08,
    window: int = 21,
) -> BadPixelResult:
    """Flag the bad pixels inside the orders of a background-subtracted master flat (BA orientation).

    * dead: below ``dead_limit`` × the local expectation (or no finite value);
    * low-sensitivity: below 1 − max(``low_sensitivity_sigma`` σ, ``min_depth``) × expectation;
    * hot: above the expectation by ``hot_sigma`` σ (and above both neighbours along B), or hot in
      ``dark_ba`` (NIR combined lamp-off/dark, e⁻) or ``bias_ba`` (UV-VIS master bias) — or, instead of
      searching those, the flat indices ``frame_hot`` that
      :func:`~soxs_mflat.badpixels.calibration_hot_pixels` found in them;
    * partial edge: within 2 px of an edge and below ``edge_min_fraction`` × the row-segment median.

    Dead and low-sensitivity pixels must also lie ``low_sensitivity_sigma`` σ below the expectation;
    where that would let pure noise through (about one such pixel expected over the flat), a higher
    value is used and a warning logged (:func:`~soxs_mflat.badpixels.thresholds.low_sensitivity_threshold`).
    ``window`` is the length (rows) of the running median along the orders. Only pixels inside the
    orders are flagged; pixels of ``input_mask_ba`` are left out of every statistic and count.
    """
    flat = np.asarray(flat_ba, dtype=np.float32)
    shape = flat.shape
    input_mask = np.zeros(shape, dtype=bool) if input_mask_ba is None else np.asarray(input_mask_ba, dtype=bool)
    finite = np.isfinite(flat)
    unusable = input_mask if finite.all() else input_mask | ~finite
    nonfinite = np.flatnonzero(unusable & ~input_mask)
    del finite
    frames: list[CalibrationFrame] = []
    if frame_hot is None:
        frames = calibration_frames(input_mask, dark_ba=dark_ba, dark_err_ba=dark_err_ba, bias_ba=bias_ba,
                                    bias_err_ba=bias_err_ba)
    masked = MaskedImage(flat, unusable)
    errs = np.asarray(errs_ba, dtype=np.float32)
    groups = share_orders(bounds, WORKERS)
    measured = map_threads(partial(_measure_orders, flat=masked, errs=errs, window=window), groups)
    noise = np.concatenate([np.empty(0, dtype=np.float32), *(part.sampled_noise for part in measured)])
    sigma = low_sensitivity_threshold(low_sensitivity_sigma, noise, depth=min(min_depth, 1.0 - dead_limit),
                                      weight=NOISE_STEP)
    found = map_threads(partial(
        _flag_orders, flat=masked, errs=errs, input_mask=input_mask, nonfinite=nonfinite, frames=frames,
        frame_sigma=calibration_threshold(shape, hot_sigma), thresholds=Thresholds(sigma, hot_sigma, dead_limit, min_depth),
        edge_fraction=edge_min_fraction, window=window), measured)
    if frame_hot is not None:
        found.append(FlaggedPixels(hot=np.asarray(frame_hot, dtype=np.int64)))
    return BadPixelResult.of(FlaggedPixels.joined(found), input_mask)


def _measure_orders(bounds: OrderBounds, *, flat: MaskedImage, errs: np.ndarray, window: int) -> MeasuredFlat:
    """The ``flat`` (masked where unusable, with ERRS ``errs``) of the orders of ``bounds`` measured against
    its model."""
    return measure_flat(flat, errs, OrderPixels.of(bounds, flat.data.shape, max(window // 3, 1)), window)


def _flag_orders(measured: MeasuredFlat, *, flat: MaskedImage, errs: np.ndarray, input_mask: np.ndarray,
                 nonfinite: np.ndarray, frames: list[CalibrationFrame], frame_sigma: float, thresholds: Thresholds,
                 edge_fraction: float, window: int) -> FlaggedPixels:
    """The pixels of the ``measured`` orders flagged for each reason: by the tests of the ``flat``, hot in
    the calibration ``frames`` at ``frame_sigma``, partly illuminated at the edges, or ``nonfinite`` (flat
    indices) in the flat."""
    n_a = flat.data.shape[1]
    orders, edge = measured.orders, measured.edge
    hot = hot_in_calibration_frames(frames, orders, input_mask, hot_sigma=frame_sigma)
    tested = flag_flat(flat, measured, errs, input_mask, window, thresholds)
    partial = partial_edges(measured.values, orders, edge, fraction=edge_fraction)
    other = FlaggedPixels(dead=nonfinite[orders.contain(nonfinite)], hot=hot,
                          partial_edge=edge[1][partial] * n_a + edge[2][partial])
    return FlaggedPixels.joined([tested, other])
