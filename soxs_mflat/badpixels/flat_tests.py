"""The tests of the master flat: dead, hot, low-sensitivity and partly illuminated edge pixels.

* **Noise.** Deviations are in units of σ, the larger of the local MAD scatter of flat/expectation and
  √(ERRS² + excess scatter² + model error²): the excess (PRNU) is measured per order and block of rows,
  the model error grows with the profile slope at the edges and where the median window is one-sided.
  Faint orders and noisy edges thus get wider limits and precision holds everywhere.
* **Depth.** A low-sensitivity pixel must also lie ``min_depth`` below the expectation, which keeps
  shallow real features (dust, fringes) in the flat. A hot pixel must also stand above both its
  neighbours along B, which a real feature that the median missed does not.
* **Columns.** A bad column's response measured inside the orders is carried to its pixels at the
  edges, where the column's own median cannot see it.

Only the *candidates*, pixels beyond ``CANDIDATE_FRACTION`` of a threshold with the smallest σ they can
have (and, below the expectation, of the depth), get the exact expectation, model error and σ, and are
tested, a bounded number at a time, so that the memory does not grow with their number.
"""

from __future__ import annotations

from dataclasses import dataclass

import bottleneck as bn
import numpy as np

from soxs_mflat.badpixels.bands import MaskedImage, OrderPixels, Pixels, chunks
from soxs_mflat.badpixels.block_statistics import BlockStatistic, column_at, near_marked_columns, scatter_map
from soxs_mflat.badpixels.flat_model import EXCESS_BLOCK, NOISE_STEP, FlatExpectation, excess_scatter, expect_flat
from soxs_mflat.badpixels.local_model import TracedRows, local_model
from soxs_mflat.badpixels.result import FlaggedPixels
from soxs_mflat.badpixels.thresholds import CANDIDATE_FRACTION, Thresholds


@dataclass(frozen=True)
class MeasuredFlat:
    """The flat of a set of ``orders`` measured against its ``model``: the flat on the bands (``values``),
    its ``edge`` pixels, the MAD σ map of |flat / expectation − 1| (``scatter``), the excess scatter per
    order and block of ``EXCESS_BLOCK`` rows (``excess``), and, for the false-alarm floor, σ / expectation
    without the MAD and model terms at the in-order pixels of every ``NOISE_STEP``-th row
    (``sampled_noise``)."""

    orders: OrderPixels
    edge: Pixels
    values: np.ndarray
    model: FlatExpectation
    scatter: BlockStatistic
    excess: np.ndarray
    sampled_noise: np.ndarray


def measure_flat(flat: MaskedImage, errs: np.ndarray, orders: OrderPixels, window: int) -> MeasuredFlat:
    """The ``flat`` (with ERRS ``errs``) of ``orders`` against its expectation for a running median of
    ``window`` rows (:func:`~soxs_mflat.badpixels.flat_model.expect_flat`)."""
    layout = orders.layout
    edge = orders.edge_pixels()
    values = flat.on(layout)
    model = expect_flat(flat, values, orders, edge, window)
    deviation = relative_deviation(values, model.expected)
    np.abs(deviation, out=deviation)
    scatter = scatter_map(deviation, layout)
    excess = excess_scatter(deviation, errs, model.expected, orders)
    rows = np.arange(0, layout.shape[0], NOISE_STEP)
    with np.errstate(invalid="ignore", divide="ignore"):
        noise = np.nan_to_num(layout.take(errs, rows), nan=0.0, posinf=0.0, neginf=0.0) / model.expected[:, rows]
        noise = np.hypot(noise, excess[:, rows // EXCESS_BLOCK, None])
    sampled_noise = noise[orders.in_order[:, rows] & np.isfinite(deviation[:, rows])]
    return MeasuredFlat(orders, edge, values, model, scatter, excess, sampled_noise)


def relative_deviation(values: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """``values`` / ``expected`` − 1 (NaN where the expectation is not positive)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        deviation = values / expected
        np.copyto(deviation, np.float32(np.nan), where=~(expected > 0))
        deviation -= 1.0
    return deviation


def flag_flat(flat: MaskedImage, measured: MeasuredFlat, errs: np.ndarray, input_mask: np.ndarray, window: int,
              thresholds: Thresholds) -> FlaggedPixels:
    """The dead, hot (in the flat) and low-sensitivity pixels of the ``measured`` ``flat``, with ERRS
    ``errs``, by the tests of :func:`~soxs_mflat.badpixels.find_bad_pixels`.

    Candidates are the pixels beyond ``CANDIDATE_FRACTION`` of a limit with the smallest σ of their
    block (below the expectation, also of the depth a dead or low-sensitivity pixel must reach); they are
    tested with the exact expectation, ``CHUNK_PIXELS`` at a time.
    """
    orders, model, scatter, excess = measured.orders, measured.model, measured.scatter, measured.excess
    layout = orders.layout
    n_b = layout.shape[0]
    block_start = np.arange(layout.start.shape[1]) * layout.block
    excess_lowest = np.fmin(excess[:, np.minimum(block_start, n_b - 1) // EXCESS_BLOCK],
                            excess[:, np.minimum(block_start + layout.block - 1, n_b - 1) // EXCESS_BLOCK])
    lowest_sigma = np.fmax(np.nan_to_num(scatter.lowest(layout)), excess_lowest[..., None])[:, :, None, :]
    depth = min(thresholds.min_depth, 1.0 - thresholds.dead_limit)
    low_limit = -CANDIDATE_FRACTION * np.fmax(np.float32(thresholds.low_sensitivity_sigma) * lowest_sigma, np.float32(depth))
    high_limit = np.float32(CANDIDATE_FRACTION * thresholds.hot_sigma) * lowest_sigma
    deviation = relative_deviation(measured.values, model.expected)
    blocks = deviation.reshape(*layout.start.shape, layout.block, layout.width)
    with np.errstate(invalid="ignore"):
        candidate = ((blocks < low_limit) | (blocks > high_limit)).reshape(deviation.shape)
    del deviation, blocks
    found = [flag_candidates(flat, errs, input_mask, orders, window, thresholds, pixels, scatter, excess)
             for pixels in layout.pixels_in_chunks(candidate)]
    del candidate
    with np.errstate(invalid="ignore", divide="ignore"):
        low_blocks = model.inner_level / model.node < 1.0 - 0.5 * thresholds.min_depth
    tested = FlaggedPixels.joined(found)
    carried = carried_columns(measured.values, model.expected, orders, measured.edge, model.at_edges, low_blocks,
                              flat.mask, thresholds)
    low = carried.low_sensitivity[~np.isin(carried.low_sensitivity, tested.dead)]
    return FlaggedPixels.joined([tested, FlaggedPixels(dead=carried.dead, low_sensitivity=low)])


def flag_candidates(flat: MaskedImage, errs: np.ndarray, input_mask: np.ndarray, orders: OrderPixels, window: int,
                    thresholds: Thresholds, pixels: Pixels, scatter: BlockStatistic, excess: np.ndarray) -> FlaggedPixels:
    """The dead, hot and low-sensitivity pixels among the candidate ``pixels`` by the tests of
    :func:`~soxs_mflat.badpixels.find_bad_pixels` with their exact expectation; ``scatter`` is the MAD σ
    map and ``excess`` the excess scatter per order and block of ``EXCESS_BLOCK`` rows."""
    n_a = flat.data.shape[1]
    k, r, c = pixels
    zone = ~orders.inner[k, r, orders.layout.band_column(k, r, c)]
    level, uncertainty = local_model(flat, r, c, zone, window, traced=TracedRows(orders.bounds.valid, k))
    with np.errstate(invalid="ignore", divide="ignore"):
        noise = np.where(np.isfinite(errs[r, c]), errs[r, c], 0.0) / level
        sigma = np.sqrt(noise**2 + excess[k, r // EXCESS_BLOCK] ** 2 + np.nan_to_num(uncertainty / level) ** 2)
        sigma = np.fmax(scatter.at(k, r, c), sigma)
        ratio = flat.data[r, c] / level
        testable = level > 0
        deficit = 1.0 - ratio
        significant_low = testable & (deficit > thresholds.low_sensitivity_sigma * sigma)
        dead = significant_low & (ratio < thresholds.dead_limit)
        low = significant_low & ~dead & (deficit > thresholds.min_depth)
        above = testable & (ratio - 1.0 > thresholds.hot_sigma * sigma)
    hot = above & stands_out(flat.data, input_mask, r, c, level, 0.5 * thresholds.hot_sigma * sigma)
    return FlaggedPixels(dead=r[dead] * n_a + c[dead], hot=r[hot] * n_a + c[hot], low_sensitivity=r[low] * n_a + c[low])


def stands_out(flat: np.ndarray, input_mask: np.ndarray, rows: np.ndarray, cols: np.ndarray, expected: np.ndarray,
               limit: np.ndarray) -> np.ndarray:
    """Which of the candidates at (``rows``, ``cols``) exceed both neighbours along B by more than
    ``limit`` × ``expected`` (both given per candidate); non-finite or masked neighbours are ignored.

    The neighbours sit at nearly the same place in the slit profile, even at the order edges. A hot pixel
    stands above both; a real response feature that the expectation missed (a dust ring crossing) has at
    least one of them on its own level.
    """
    n_b = flat.shape[0]
    neighbours = np.full(rows.shape, np.nan, dtype=np.float32)
    for step, inside in ((-1, rows > 0), (1, rows < n_b - 1)):
        r, c = rows[inside] + step, cols[inside]
        value = flat[r, c]
        neighbours[inside] = np.fmax(neighbours[inside], np.where(np.isfinite(value) & ~input_mask[r, c], value, np.nan))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (flat[rows, cols] - neighbours) / expected > limit


def carried_columns(values: np.ndarray, expected: np.ndarray, orders: OrderPixels, edge: Pixels, edge_expected: np.ndarray,
                    low_blocks: np.ndarray, unusable: np.ndarray, thresholds: Thresholds) -> FlaggedPixels:
    """The usable ``edge`` pixels (their expectation ``edge_expected``) whose column responds below
    ``dead_limit`` (dead) or by more than ``min_depth`` below 1 (low-sensitivity) in the pixels at least
    ``EDGE_ZONE`` inside the order (flat ``values`` / ``expected`` on the bands). Only the columns where a
    band block of ``low_blocks`` lies near can, so only there is the response measured."""
    layout = orders.layout
    near = np.flatnonzero(near_marked_columns(layout, low_blocks, edge))
    if not near.size:
        return FlaggedPixels()
    with np.errstate(invalid="ignore", divide="ignore"):
        response = np.where(orders.inner & (expected > 0), values / expected, np.float32(np.nan))
    found = []
    for k, r, c, at_edge in chunks((*(part[near] for part in edge), edge_expected[near])):
        with np.errstate(invalid="ignore"):
            column = column_at(response, layout, (k, r, c))
            usable = ~unusable[r, c] & (at_edge > 0)
            dead = usable & (column < thresholds.dead_limit)
            low = usable & ~dead & (1.0 - column > thresholds.min_depth)
        index = r * layout.shape[1] + c
        found.append(FlaggedPixels(dead=index[dead], low_sensitivity=index[low]))
    return FlaggedPixels.joined(found)


def partial_edges(values: np.ndarray, orders: OrderPixels, edge: Pixels, *, fraction: float) -> np.ndarray:
    """Which ``edge`` pixels are below ``fraction`` × the median of their order's usable pixels on their
    row (``values`` on the bands, NaN where unusable), which needs at least 3 of them and a positive
    median; ``fraction`` ≤ 0 turns it off.

    Only the rows where an edge pixel lies below ``fraction`` × the row's highest value can hold one, so
    only their medians are taken.
    """
    k, r, c = edge
    if fraction <= 0:
        return np.zeros(r.shape, dtype=bool)
    layout = orders.layout
    row = k * layout.n_rows + r
    value = values.ravel().take(row * layout.width + layout.band_column(k, r, c))
    inside = np.where(orders.in_order, values, np.float32(np.nan)).reshape(-1, layout.width)
    with np.errstate(invalid="ignore"):
        below = value < fraction * bn.nanmax(inside, axis=1)[row]
    picked = np.zeros(inside.shape[0], dtype=bool)
    picked[row[below]] = True
    rows = inside[picked]
    median, count = bn.nanmedian(rows, axis=1), np.count_nonzero(~np.isnan(rows), axis=1)
    at = np.cumsum(picked) - 1
    flagged = np.zeros(r.shape, dtype=bool)
    with np.errstate(invalid="ignore"):
        at = at[row[below]]
        flagged[below] = (count[at] >= 3) & (median[at] > 0) & (value[below] < fraction * median[at])
    return flagged
