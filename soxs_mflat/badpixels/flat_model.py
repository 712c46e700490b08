"""The local expectation of the master flat on the bands, and its scatter beyond the ERRS noise.

Away from the order edges the running median along B is taken once per block of rows (the median of
three block medians over the same rows as the window) and interpolated along B; at the edge pixels,
and where the flat bends along B (where an order's illumination sets in), it is exact, run through
strips of the columns (:func:`~soxs_mflat.badpixels.local_model.exact_along`).
"""

from __future__ import annotations

from dataclasses import dataclass

import bottleneck as bn
import numpy as np

from soxs_mflat.badpixels.bands import MaskedImage, OrderPixels, Pixels
from soxs_mflat.badpixels.block_statistics import ACROSS_WIDTH, across_median, block_level, interpolate_blocks, running_across
from soxs_mflat.badpixels.local_model import exact_along
from soxs_mflat.robust import MAD_TO_SIGMA

CURVED = 0.01
"""Band blocks whose expectation bends along B by more than this fraction (typically where an order's
illumination sets in) get the exact expectation rather than one interpolated between blocks."""
EXCESS_BLOCK = 128
"""Rows (along B) of the blocks in which the excess scatter is measured."""
EXCESS_INSET = 3.0
"""Pixels (px inside the edges) on which the excess scatter is measured."""
NOISE_STEP = 4
"""The ERRS noise, smooth along B, is taken on every ``NOISE_STEP``-th row for the excess scatter."""


@dataclass(frozen=True)
class FlatExpectation:
    """The local expectation of the flat: on the bands (``expected``, NaN outside the orders), exactly at
    the edge pixels (``at_edges``), and per band block the running median along B of the pixels away
    from the edges (``inner_level``) and the expectation there after the median across columns (``node``)."""

    expected: np.ndarray
    at_edges: np.ndarray
    inner_level: np.ndarray
    node: np.ndarray


def expect_flat(flat: MaskedImage, values: np.ndarray, orders: OrderPixels, edge: Pixels, window: int) -> FlatExpectation:
    """The expectation of the ``flat`` (``values`` on the bands of ``orders``; ``edge`` its edge pixels)
    for a running median of ``window`` rows: per block of rows away from the edges, interpolated along
    B, and exact at the edge pixels and where the flat curves along B."""
    layout = orders.layout
    k, r, c = edge
    at_edges = exact_along(flat, orders.bounds.valid, edge, window)
    inner_level = block_level(layout, np.where(orders.inner, values, np.float32(np.nan)), min_count=max(window // 3, 1))
    along = inner_level.copy()
    central = r % layout.block == layout.block // 2
    along[k[central], r[central] // layout.block, layout.band_column(k, r, c)[central]] = at_edges[central]
    node = across_median(layout, along)
    expected = interpolate_blocks(layout, node)
    follow_curvature(expected, node, flat, orders, window)
    np.copyto(expected, np.float32(np.nan), where=~orders.in_order)
    expected[k, r, layout.band_column(k, r, c)] = at_edges
    return FlatExpectation(expected, at_edges, inner_level, node)


def follow_curvature(expected: np.ndarray, node: np.ndarray, flat: MaskedImage, orders: OrderPixels, window: int) -> None:
    """Make ``expected`` exact on the band blocks where the flat curves along B (where an order's
    illumination sets in or ends), which interpolating between blocks would not follow: there the
    running median along B of every band column is taken exactly, then the median across columns."""
    layout = orders.layout
    with np.errstate(invalid="ignore", divide="ignore"):
        curvature = np.abs(layout.aligned(node, -1) + layout.aligned(node, 1) - 2.0 * node) / np.abs(node)
    curvature = np.where(np.isfinite(curvature), curvature, np.float32(0.0))
    k, q = np.nonzero(np.median(curvature, axis=2) > CURVED)
    if not k.size:
        return
    k, r = np.repeat(k, layout.block), (q[:, None] * layout.block + np.arange(layout.block)).ravel()
    k, r = k[r < layout.shape[0]], r[r < layout.shape[0]]
    along = np.full((r.size, layout.width + ACROSS_WIDTH - 1), np.nan, dtype=np.float32)
    half = ACROSS_WIDTH // 2
    columns = layout.start[k, r // layout.block][:, None] + np.arange(layout.width)
    inside = columns < layout.shape[1]
    pixels = (np.broadcast_to(k[:, None], columns.shape)[inside], np.broadcast_to(r[:, None], columns.shape)[inside],
              columns[inside])
    along[:, half : half + layout.width][inside] = exact_along(flat, orders.bounds.valid, pixels, window)
    expected[k, r] = np.where(orders.inner[k, r], running_across(along), expected[k, r])


def excess_scatter(deviation: np.ndarray, errs: np.ndarray, expected: np.ndarray, orders: OrderPixels) -> np.ndarray:
    """Pixel-to-pixel scatter beyond the ERRS noise (e.g. PRNU), per order (rows) and block of
    ``EXCESS_BLOCK`` rows (columns), from |flat / expectation − 1| (``deviation``) and the ``expected``
    on the bands.

    Measured on the pixels ≥ ``EXCESS_INSET`` px inside the edges as √max(0, MAD² − median(noise²));
    where the expectation follows a pixel too closely (steep edges) the MAD would understate the scatter,
    so this is what carries it to the edges. The noise, smooth along B, is taken on every
    ``NOISE_STEP``-th row.
    """
    layout = orders.layout
    n_b = layout.shape[0]
    n_k = layout.start.shape[0]
    n_blocks = -(-n_b // EXCESS_BLOCK)
    rows = np.arange(n_b)
    core = orders.inset(EXCESS_INSET, rows)
    core_deviation = np.full((n_k, n_blocks * EXCESS_BLOCK, layout.width), np.nan, dtype=np.float32)
    np.copyto(core_deviation[:, :n_b], deviation[:, :n_b], where=core)
    mad = MAD_TO_SIGMA * bn.nanmedian(core_deviation.reshape(n_k, n_blocks, -1), axis=-1)
    del core_deviation
    sampled = rows[::NOISE_STEP]
    with np.errstate(invalid="ignore", divide="ignore"):
        noise = np.nan_to_num(layout.take(errs, sampled), nan=0.0, posinf=0.0, neginf=0.0) / expected[:, sampled]
        variance = np.where(core[:, ::NOISE_STEP] & np.isfinite(deviation[:, sampled]), np.square(noise), np.float32(np.nan))
    padding = ((0, 0), (0, n_blocks * (EXCESS_BLOCK // NOISE_STEP) - sampled.size), (0, 0))
    variance = np.pad(variance, padding, constant_values=np.nan).reshape(n_k, n_blocks, -1)
    return np.nan_to_num(np.sqrt(np.fmax(mad**2 - bn.nanmedian(variance, axis=-1), 0.0)))
