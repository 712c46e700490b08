"""The scattered-light model of a flat: the steps of :mod:`soxs_mflat.background` put together."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from soxs_mflat.background.binning import bin_rows, bin_traces, fill_along_rows, median_across, rows_per_chunk, unbin_rows
from soxs_mflat.background.gap_levels import gap_residual_levels, interpolate_across, smooth_gap_levels
from soxs_mflat.background.gaps import (
    WING_BIN_EDGES,
    default_margin,
    fit_samples,
    fitted_pixel_mask,
    gap_bounds,
    gap_centres,
    gap_pixels,
    interval_mask,
    order_levels,
    sorted_edges,
)
from soxs_mflat.background.joint_fit import fit_gap_samples, median_and_sigma, surface_image
from soxs_mflat.background.spill import SPILL_SIGMAS, order_light_spectrum, weighted_spill
from soxs_mflat.footprints import OrderBounds

MAX_FIT_SAMPLES = 60_000
"""Gap pixels (of the binned image) the joint fit uses at most."""
ORDER_LIGHT_MEDIAN_WIDTH = 5
"""Columns of the median across A applied to the order light, so that a hot column cannot pose as a bright line."""


@dataclass(frozen=True)
class BackgroundModel:
    """Fitted scattered light (BA orientation, units of the flat) and how well it fits the gaps.

    ``fitted_pixels`` marks the gap pixels the model was fitted to. ``residual_median`` and
    ``residual_sigma`` (MAD-based) describe data − model on those pixels;
    ``wing_profile`` is the fitted edge leakage per distance bin (fraction of the order level) with
    ``wing_bin_edges`` in px; ``spill_weights`` (2 × n) are the fitted spill weights per Gaussian
    width in ``spill_sigmas`` (px), across A only (row 0) and in 2-D (row 1).
    """

    model: np.ndarray
    fitted_pixels: np.ndarray
    residual_median: float
    residual_sigma: float
    wing_profile: np.ndarray
    wing_bin_edges: np.ndarray
    spill_weights: np.ndarray
    spill_sigmas: np.ndarray


def order_light(binned: np.ndarray, low: np.ndarray, up: np.ndarray) -> np.ndarray:
    """The light inside the orders (zero between them) on the binned image: after a median across A of
    ``ORDER_LIGHT_MEDIAN_WIDTH`` columns, with masked pixels filled along B."""
    light = median_across(binned, ORDER_LIGHT_MEDIAN_WIDTH)
    if np.isnan(light).any():
        light = fill_along_rows(light)
    inside = interval_mask(np.ceil(low), np.floor(up) + 1.0, binned.shape[1])
    inside &= np.isfinite(light)
    np.copyto(light, np.float32(0.0), where=~inside)
    return light


def residual_statistics(data: np.ndarray, model: np.ndarray, fitted: np.ndarray) -> tuple[float, float]:
    """Median and MAD-based σ of data − model on the ``fitted`` pixels (NaN if none), gathered a chunk of
    rows at a time."""
    residual = np.empty(np.count_nonzero(fitted), dtype=np.float32)
    if residual.size == 0:
        return float("nan"), float("nan")
    filled = 0
    step = rows_per_chunk(data.shape[1])
    for start in range(0, data.shape[0], step):
        rows = slice(start, start + step)
        part = (data[rows] - model[rows])[fitted[rows]]
        residual[filled : filled + part.size] = part
        filled += part.size
    return median_and_sigma(residual)


def fit_scattered_light(
    flat_ba: np.ndarray,
    bounds: OrderBounds,
    *,
    bspline_deg: int = 2,
    gaussian_blur_sigma: float = 65,
    margin: float | None = None,
    mask_ba: np.ndarray | None = None,
    block: int = 8,
    outer_band: float = 25.0,
) -> BackgroundModel:
    """Model the scattered light of a flat (BA orientation) from the pixels between its orders.

    ``margin`` (px) is kept free beside every order edge (default: :func:`default_margin`);
    ``mask_ba`` marks pixels to ignore; ``block`` rows are median-combined before fitting;
    ``outer_band`` (px) is the width used beyond the outermost orders. Without any usable gap
    pixel the model is zero. Only the model and the map of fitted pixels are full-frame arrays: the
    fit works on the binned image.
    """
    flat = np.asarray(flat_ba, dtype=np.float32)
    mask = None if mask_ba is None else np.asarray(mask_ba, dtype=bool)
    n_b, n_a = flat.shape
    margin = default_margin(bounds) if margin is None else float(margin)
    low, up = sorted_edges(bounds)

    binned = bin_rows(flat, mask, block)
    n_rows = binned.shape[0]
    low_b, up_b = bin_traces(low, block), bin_traces(up, block)
    gaps = gap_bounds(low_b, up_b, n_a, margin=margin, outer=outer_band)
    pixels = gap_pixels(binned, gaps)
    if not pixels.counts.any():
        return BackgroundModel(
            model=np.zeros((n_b, n_a), np.float32),
            fitted_pixels=fitted_pixel_mask(flat, mask, low, up, margin=margin, outer=outer_band),
            residual_median=float("nan"),
            residual_sigma=float("nan"),
            wing_profile=np.zeros(WING_BIN_EDGES.size - 1),
            wing_bin_edges=WING_BIN_EDGES.copy(),
            spill_weights=np.zeros((2, len(SPILL_SIGMAS))),
            spill_sigmas=np.asarray(SPILL_SIGMAS),
        )
    order_level = order_levels(binned, low_b, up_b)
    light = order_light_spectrum(order_light(binned, low_b, up_b), row_step=block)
    fit = fit_gap_samples(binned, fit_samples(pixels, max_samples=MAX_FIT_SAMPLES), gaps, order_level, light)

    sigma_rows = gaussian_blur_sigma / block
    binned_model = surface_image(fit.surface, n_rows, n_a)
    raw_spill, smoothed_spill = weighted_spill(light, fit.spill_weights, smooth_rows=sigma_rows)
    del light
    residual = binned - binned_model
    del binned
    residual -= raw_spill
    levels, weights = gap_residual_levels(residual, pixels, gaps, order_level, fit.wing_profile)
    del residual, raw_spill
    binned_model += smoothed_spill
    del smoothed_spill
    smoothed_levels = smooth_gap_levels(levels, weights, sigma_rows)
    binned_model += np.nan_to_num(interpolate_across(gap_centres(gaps, n_a), smoothed_levels, n_a, bspline_deg), copy=False)
    model = unbin_rows(binned_model, block, n_b)
    del binned_model

    fitted = fitted_pixel_mask(flat, mask, low, up, margin=margin, outer=outer_band)
    centre, spread = residual_statistics(flat, model, fitted)
    return BackgroundModel(
        model=model,
        fitted_pixels=fitted,
        residual_median=centre,
        residual_sigma=spread,
        wing_profile=fit.wing_profile,
        wing_bin_edges=WING_BIN_EDGES.copy(),
        spill_weights=fit.spill_weights,
        spill_sigmas=np.asarray(SPILL_SIGMAS),
    )
