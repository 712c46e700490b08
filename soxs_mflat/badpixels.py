"""Bad pixels of the master flat: dead, hot, low-sensitivity and partly illuminated order-edge pixels.

Every test compares a pixel with a local expectation of the flat, not with the whole frame: the
blaze and the slit illumination would swamp any global clip (which is why soxspipe's never fires).

* **Expectation.** A running median along B (along the order) per column follows the blaze,
  vignetting and dust donuts and ignores single pixels, bad rows and small clusters. Away from the
  edges a 3-px median across A then removes bad columns. Within ``EDGE_ZONE`` px of an edge the
  column's own median is used: the order's tilt sweeps a fixed column symmetrically through the
  slit profile, so the median of a monotonic edge is unbiased, while neighbouring columns are not.
* **Noise.** Deviations are in units of σ, the larger of the local MAD scatter of flat/expectation
  and √(ERRS² + excess scatter² + model error²): the excess (PRNU) is measured per order and block
  of rows, the model error grows with the profile slope at the edges and where the median window is
  one-sided. Faint orders and noisy edges thus get wider limits and precision holds everywhere.
* **Depth.** A low-sensitivity pixel must also lie ``min_depth`` below the expectation, which
  keeps shallow real features (dust, fringes) in the flat. A hot pixel must also stand above both
  its neighbours along B, which a real feature that the median missed does not.
* **Columns.** A bad column's response measured inside the orders is carried to its pixels at the
  edges, where the column's own median cannot see it.
"""

from __future__ import annotations

from dataclasses import dataclass

import bottleneck as bn
import numpy as np

from soxs_mflat.footprints import OrderBounds

MAD_TO_SIGMA = 1.4826
DEAD = np.uint8(1)
HOT = np.uint8(2)
LOW_SENSITIVITY = np.uint8(4)
PARTIAL_EDGE = np.uint8(8)
EDGE_ZONE = 2.0
"""Pixels whose centre is closer than this (px) to an order edge are edge pixels."""
MEDIAN_MASK_GROW = 3.0
"""Pixels (beyond the order edges, plus the tilt over half a window) that the running median may use."""
SIGMA_WINDOW = 96
LEVEL_WINDOW = 15
COLUMN_WINDOW = 400
EDGE_JITTER = 0.05
"""Sub-pixel uncertainty (px) of where a pixel sits in the slit profile; with the profile's
slope it sets the precision of the expectation at the order edges."""


@dataclass(frozen=True)
class BadPixelResult:
    """Bad pixels found in a master flat (BA orientation).

    ``codes`` holds the reasons as bits (:data:`DEAD`, :data:`HOT`, :data:`LOW_SENSITIVITY`,
    :data:`PARTIAL_EDGE`); ``mask`` is the input mask OR any reason; ``expected`` is the local
    model of the flat the tests compared with; ``counts`` gives the pixels newly flagged by each
    kind (not already in the input mask; a pixel may have several reasons).
    """

    codes: np.ndarray
    mask: np.ndarray
    input_mask: np.ndarray
    expected: np.ndarray
    counts: dict[str, int]

    def kind(self, code: np.uint8) -> np.ndarray:
        """Boolean map of the pixels carrying reason ``code``."""
        return (self.codes & code) != 0

    @property
    def order_edge_only(self) -> np.ndarray:
        """Partly illuminated edge pixels that are bad for no other reason (spec §8 ``N ORDER EDGE``)."""
        return (self.codes == PARTIAL_EDGE) & ~self.input_mask


def _running_median(image: np.ndarray, window: int, axis: int, *, min_count: int, odd: bool = False) -> np.ndarray:
    """Centred running median along ``axis`` ignoring NaN.

    The ends are extended by reflection; with ``odd`` the reflection is about a robust end level
    (:func:`_end_level`), which continues a trend, so the window stays balanced at the ends.
    """
    half = window // 2
    data = np.moveaxis(np.asarray(image, dtype=np.float32), axis, 0)
    if half == 0 or data.shape[0] < 2:
        return np.moveaxis(data.copy(), 0, axis)
    reach = min(half, data.shape[0] - 1)
    head = data[1 : reach + 1][::-1]
    tail = data[-reach - 1 : -1][::-1]
    if odd:
        head = 2.0 * _end_level(data) - head
        tail = 2.0 * _end_level(data[::-1]) - tail
    filler = np.full((half - reach, *data.shape[1:]), np.nan, dtype=np.float32)
    padded = np.concatenate([filler, head, data, tail, filler])
    moved = bn.move_median(padded, window, axis=0, min_count=min(min_count, window))
    return np.moveaxis(moved[2 * half :], 0, axis)


def _end_level(data: np.ndarray) -> np.ndarray:
    """Robust value at the first row: medians of rows 0–4 and 5–9, extrapolated linearly to row 0."""
    with np.errstate(all="ignore"):
        first = bn.nanmedian(data[:5], axis=0)
        second = bn.nanmedian(data[5:10], axis=0) if data.shape[0] >= 10 else first
        return np.where(np.isfinite(second), first - 0.4 * (second - first), first)


def _slope(image: np.ndarray, axis: int) -> np.ndarray:
    """Larger of the two one-sided absolute differences along ``axis`` (NaN neighbours ignored, 0 if none)."""
    step = np.abs(np.diff(image, axis=axis))
    pad_low = [(0, 0), (0, 0)]
    pad_high = [(0, 0), (0, 0)]
    pad_low[axis] = (1, 0)
    pad_high[axis] = (0, 1)
    before = np.pad(step, pad_low, constant_values=np.nan)
    after = np.pad(step, pad_high, constant_values=np.nan)
    return np.nan_to_num(np.fmax(before, after))


def local_expectation(
    flat: np.ndarray, support: np.ndarray, distance: np.ndarray, *, window: int = 21
) -> tuple[np.ndarray, np.ndarray]:
    """Local model of an image over ``support`` pixels, and its uncertainty (same units) at the edges.

    Running median along B (``window`` rows), then a 3-px median across A except within
    ``EDGE_ZONE`` px of an edge, where the slit profile is too steep for neighbouring columns to
    stand in for each other. The uncertainty is the profile's relative slope across A times
    ``EDGE_JITTER``, plus, in the rows next to the ends of the detector where the window is
    completed by extrapolation or leaves ``support``, half the trend along B over the missing rows
    (the median of a tilted edge is then one-sided).
    """
    data = np.where(support, flat, np.nan).astype(np.float32)
    along = _running_median(data, window, 0, min_count=max(window // 3, 1), odd=True)
    across = _running_median(along, 3, 1, min_count=1)
    expected = np.where(distance < EDGE_ZONE, along, across)
    slope_a = _slope(along, axis=1)
    slope_b = _slope(along, axis=0)
    present = bn.move_sum(np.pad(support.astype(np.float32), ((window // 2, window // 2), (0, 0))), window, axis=0)
    missing = window - present[2 * (window // 2) :]
    return expected, np.nan_to_num(np.hypot(EDGE_JITTER * slope_a, 0.5 * missing * slope_b))


def _block_median(image: np.ndarray, *, block: int, blocks: int, across: int, min_count: int) -> np.ndarray:
    """Smooth robust local level of ``image`` (NaN ignored): the median of each column over blocks of
    ``block`` rows, then running medians over ``blocks`` blocks along B and ``across`` columns, spread
    back to every row. Much cheaper than a running median over the same tall window."""
    n_b, n_a = image.shape
    n_blocks = -(-n_b // block)
    padded = np.full((n_blocks * block, n_a), np.nan, dtype=np.float32)
    padded[:n_b] = image
    stacked = padded.reshape(n_blocks, block, n_a)
    with np.errstate(all="ignore"):
        level = bn.nanmedian(stacked, axis=1)
    level[np.sum(np.isfinite(stacked), axis=1) < min_count] = np.nan
    level = _running_median(_running_median(level, blocks, 0, min_count=1), across, 1, min_count=1)
    return np.repeat(level, block, axis=0)[:n_b]


def _local_sigma(deviation: np.ndarray) -> np.ndarray:
    """Robust local scatter: MAD of ``deviation`` (NaN ignored) over about ``SIGMA_WINDOW`` rows and
    5 columns, so that one bad column does not inflate its neighbours' limits."""
    return MAD_TO_SIGMA * _block_median(np.abs(deviation), block=SIGMA_WINDOW // 3, blocks=3, across=5, min_count=5)


def _column_response(interior: np.ndarray) -> np.ndarray:
    """Typical value of each column's ``interior`` pixels (NaN elsewhere; median over about
    ``COLUMN_WINDOW`` rows): a bad column's response, or excess, carried to the order edges, where
    the expectation comes from the column itself and cannot see it."""
    return _block_median(interior, block=COLUMN_WINDOW // 5, blocks=5, across=1, min_count=10)


def _excess_scatter(
    deviation: np.ndarray, noise: np.ndarray, bounds: OrderBounds, usable: np.ndarray, *, block: int = 128
) -> np.ndarray:
    """Pixel-to-pixel scatter beyond the ERRS noise (e.g. PRNU), per order and block of rows.

    Measured on pixels ≥ 3 px inside the edges as √max(0, MAD² − median(noise²)) and spread over
    each order's pixels; where the expectation follows a pixel too closely (steep edges) the MAD
    would understate the scatter, so this is what carries it to the edges.
    """
    n_b, n_a = deviation.shape
    extra = np.zeros((n_b, n_a), dtype=np.float32)
    rows = np.arange(n_b)[:, None]
    n_blocks = -(-n_b // block)
    for k in range(bounds.orders.size):
        cols, used = _row_segments(bounds, n_a, k, inset=3.0)
        if cols.shape[1] == 0:
            continue
        rr = np.broadcast_to(rows, cols.shape)
        good = used & usable[rr, cols]
        dev = np.full((n_blocks * block, cols.shape[1]), np.nan, dtype=np.float32)
        var = np.full_like(dev, np.nan)
        dev[:n_b] = np.where(good, deviation[rr, cols], np.nan)
        var[:n_b] = np.where(good, noise[rr, cols] ** 2, np.nan)
        with np.errstate(all="ignore"):
            mad = MAD_TO_SIGMA * bn.nanmedian(np.abs(dev.reshape(n_blocks, -1)), axis=1)
            excess = np.sqrt(np.fmax(mad**2 - bn.nanmedian(var.reshape(n_blocks, -1), axis=1), 0.0))
        excess = np.nan_to_num(np.repeat(excess, block)[:n_b])
        full, inside = _row_segments(bounds, n_a, k, inset=0.0)
        fr = np.broadcast_to(rows, full.shape)
        extra[fr[inside], full[inside]] = np.broadcast_to(excess[:, None], full.shape)[inside]
    return extra


def _column_neighbours_max(image: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Larger of the two pixels above and below each (row, col) along B (NaN ignored).

    They sit at nearly the same place in the slit profile, even at the order edges. A hot pixel
    stands above both; a real response feature that the expectation missed (a dust ring crossing)
    has at least one of them on its own level.
    """
    n_b = image.shape[0]
    above = np.where(rows > 0, image[np.maximum(rows - 1, 0), cols], np.nan)
    below = np.where(rows < n_b - 1, image[np.minimum(rows + 1, n_b - 1), cols], np.nan)
    return np.fmax(above, below)


def _isolated(flat: np.ndarray, candidates: np.ndarray, expected: np.ndarray, limit: np.ndarray) -> np.ndarray:
    """The ``candidates`` that exceed both neighbours along B by more than ``limit`` × expectation."""
    rows, cols = np.nonzero(candidates)
    neighbours = _column_neighbours_max(flat, rows, cols)
    with np.errstate(invalid="ignore", divide="ignore"):
        above = (flat[rows, cols] - neighbours) / expected[rows, cols] > limit[rows, cols]
    isolated = np.zeros(flat.shape, dtype=bool)
    isolated[rows[above], cols[above]] = True
    return isolated


def hot_in_frame(
    frame: np.ndarray,
    *,
    hot_sigma: float,
    err: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    distance: np.ndarray | None = None,
) -> np.ndarray:
    """Pixels of a dark, lamp-off or bias frame (BA orientation) more than ``hot_sigma`` σ above
    their local level; the frame's units do not matter.

    The level is :func:`local_expectation` over ``LEVEL_WINDOW`` rows, so it follows the thermal
    light of the orders in NIR lamp-off frames; ``distance`` (px to the nearest order edge, as in
    :func:`find_bad_pixels`) marks where it must not mix columns; there a hot column is found from
    its excess away from the edges. σ is the larger of ``err`` and the local MAD scatter combined
    with the level's uncertainty at edges. Pass ``err``: near the order edges of a lamp-off frame
    the MAD alone understates the noise.
    """
    data = np.where(np.isfinite(frame), frame, np.nan).astype(np.float32)
    if mask is not None:
        data[np.asarray(mask, dtype=bool)] = np.nan
    distance = np.full(data.shape, np.inf, dtype=np.float32) if distance is None else distance
    level, uncertainty = local_expectation(data, np.ones(data.shape, dtype=bool), distance, window=LEVEL_WINDOW)
    excess = data - level
    sigma = np.hypot(_local_sigma(excess), uncertainty)
    if err is not None:
        sigma = np.fmax(sigma, np.asarray(err, dtype=np.float32))
    zone = distance < EDGE_ZONE
    column = _column_response(np.where(zone, np.nan, excess))
    with np.errstate(invalid="ignore"):
        return (excess > hot_sigma * sigma) | (zone & (column > hot_sigma * sigma))


def _row_segments(bounds: OrderBounds, n_a: int, k: int, *, inset: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Columns (rows × width) of order ``k``'s pixel centres at least ``inset`` px inside its edges,
    and which of them are real."""
    first = np.clip(np.ceil(bounds.low[k] + inset), 0, n_a)
    last = np.clip(np.floor(bounds.up[k] - inset), -1, n_a - 1)
    last = np.where(bounds.valid[k], last, first - 1)
    width = int(max(np.max(last - first + 1, initial=0), 0))
    cols = first[:, None].astype(np.int64) + np.arange(width)[None, :]
    used = cols <= last[:, None]
    return np.clip(cols, 0, n_a - 1), used


def _inside_distance(bounds: OrderBounds, shape: tuple[int, int], *, grow: float) -> np.ndarray:
    """Distance (px) of each pixel centre to the nearer edge of its order: ≥ 0 inside an order,
    negative within ``grow`` px outside one, -inf elsewhere. Like :func:`edge_distance`, but it
    only visits the pixels near the orders."""
    n_b, n_a = shape
    distance = np.full(shape, -np.inf, dtype=np.float32)
    rows = np.arange(n_b)[:, None]
    for k in range(bounds.orders.size):
        cols, used = _row_segments(bounds, n_a, k, inset=-grow)
        if cols.shape[1] == 0:
            continue
        rr = np.broadcast_to(rows, cols.shape)
        d = np.minimum(cols - bounds.low[k][:, None], bounds.up[k][:, None] - cols).astype(np.float32)
        r, c = rr[used], cols[used]
        distance[r, c] = np.maximum(distance[r, c], d[used])
    return distance


def partial_edge_pixels(
    flat: np.ndarray, bounds: OrderBounds, distance: np.ndarray, usable: np.ndarray, *, fraction: float
) -> np.ndarray:
    """In-order pixels within ``EDGE_ZONE`` px of an edge and below ``fraction`` × their row-segment median.

    A segment needs at least 3 usable pixels and a positive median; ``fraction`` ≤ 0 turns it off.
    """
    n_b, n_a = flat.shape
    flagged = np.zeros((n_b, n_a), dtype=bool)
    if fraction <= 0:
        return flagged
    rows = np.arange(n_b)[:, None]
    for k in range(bounds.orders.size):
        cols, used = _row_segments(bounds, n_a, k)
        if cols.shape[1] == 0:
            continue
        rr = np.broadcast_to(rows, cols.shape)
        good = used & usable[rr, cols]
        values = np.where(good, flat[rr, cols], np.nan)
        with np.errstate(all="ignore"):
            median = bn.nanmedian(values, axis=1)
        enough = (np.sum(good, axis=1) >= 3) & (median > 0)
        with np.errstate(invalid="ignore"):
            low = good & enough[:, None] & (values < fraction * median[:, None])
        low &= distance[rr, cols] < EDGE_ZONE
        flagged[rr[low], cols[low]] = True
    return flagged


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
    min_depth: float = 0.08,
    window: int = 21,
) -> BadPixelResult:
    """Flag the bad pixels inside the orders of a background-subtracted master flat (BA orientation).

    * dead: below ``dead_limit`` × the local expectation (or no finite value);
    * low-sensitivity: below 1 − max(``low_sensitivity_sigma`` σ, ``min_depth``) × expectation;
    * hot: above the expectation by ``hot_sigma`` σ (and above both neighbours along B), or hot in
      ``dark_ba`` (NIR combined lamp-off/dark, e⁻) or ``bias_ba`` (UV-VIS master bias);
    * partial edge: within 2 px of an edge and below ``edge_min_fraction`` × the row-segment median.

    Dead and low-sensitivity pixels must also lie ``low_sensitivity_sigma`` σ below the expectation.
    ``window`` is the length (rows) of the running median along the orders. Only pixels inside the
    orders are flagged; pixels of ``input_mask_ba`` are left out of every statistic and count.
    """
    flat = np.asarray(flat_ba, dtype=np.float32)
    shape = flat.shape
    input_mask = np.zeros(shape, dtype=bool) if input_mask_ba is None else np.asarray(input_mask_ba, dtype=bool)
    tilt = np.abs(np.diff(bounds.centre, axis=1))
    sweep = float(np.max(np.where(bounds.valid[:, 1:], tilt, 0.0), initial=0.0)) * (window // 2)
    distance = _inside_distance(bounds, shape, grow=MEDIAN_MASK_GROW + sweep)
    in_order = distance >= 0
    near_order = np.isfinite(distance)
    finite = np.isfinite(flat)
    usable = finite & ~input_mask

    expected, model_error = local_expectation(np.where(usable, flat, np.nan), near_order, distance, window=window)
    with np.errstate(invalid="ignore", divide="ignore"):
        model_error /= expected
        ratio = flat / expected
        testable = in_order & usable & (expected > 0)
        deviation = np.where(testable, ratio - 1.0, np.nan)
        errs = np.asarray(errs_ba, dtype=np.float32)
        noise = np.where(np.isfinite(errs), errs, 0.0) / expected
        extra = _excess_scatter(deviation, noise, bounds, testable)
        sigma = np.fmax(_local_sigma(deviation), np.sqrt(noise**2 + extra**2 + model_error**2))
        deficit = 1.0 - ratio
        significant_low = testable & (deficit > low_sensitivity_sigma * sigma)
        dead = (significant_low & (ratio < dead_limit)) | (in_order & ~finite & ~input_mask)
        low = significant_low & ~dead & (deficit > min_depth)
        candidates = testable & (ratio - 1.0 > hot_sigma * sigma)
        column = _column_response(np.where(testable & (distance >= EDGE_ZONE), ratio, np.nan))
        zone = testable & (distance < EDGE_ZONE)
        dead |= zone & (column < dead_limit)
        low |= zone & ~dead & (1.0 - column > min_depth)

    hot = _isolated(np.where(usable, flat, np.nan), candidates, expected, 0.5 * hot_sigma * sigma)
    for frame, err in ((dark_ba, dark_err_ba), (bias_ba, bias_err_ba)):
        if frame is not None:
            found = hot_in_frame(frame, hot_sigma=hot_sigma, err=err, mask=input_mask, distance=distance)
            hot |= in_order & ~input_mask & found

    edge = partial_edge_pixels(flat, bounds, distance, usable & in_order, fraction=edge_min_fraction)

    codes = np.zeros(shape, dtype=np.uint8)
    for flag, code in ((dead, DEAD), (hot, HOT), (low, LOW_SENSITIVITY), (edge, PARTIAL_EDGE)):
        codes[flag] |= code
    codes[input_mask] = 0
    counts = {
        "dead": int(np.count_nonzero(codes & DEAD)),
        "hot": int(np.count_nonzero(codes & HOT)),
        "low_sensitivity": int(np.count_nonzero(codes & LOW_SENSITIVITY)),
        "partial_edge": int(np.count_nonzero(codes & PARTIAL_EDGE)),
    }
    return BadPixelResult(codes, input_mask | (codes != 0), input_mask, expected, counts)


def bad_pixel_qc(result: BadPixelResult, final_mask: np.ndarray) -> dict[str, float | int]:
    """QC values of spec §8 from a result and the final QUAL mask (bool, BA orientation).

    ``N LOW SENS``: new dead or low-sensitivity pixels; ``N ORDER EDGE``: partial-edge pixels bad
    for no other reason; ``COLDPIX NUM``: bad pixels in ``final_mask`` less those edge pixels;
    ``COLDPIX FRAC``: that number over all pixels, 6 d.p.
    """
    final = np.asarray(final_mask, dtype=bool)
    edge_only = result.order_edge_only
    n_low = int(np.count_nonzero(result.codes & (DEAD | LOW_SENSITIVITY)))
    n_edge = int(np.count_nonzero(edge_only & final))
    coldpix = int(np.count_nonzero(final & ~edge_only))
    return {
        "N LOW SENS": n_low,
        "N ORDER EDGE": n_edge,
        "COLDPIX NUM": coldpix,
        "COLDPIX FRAC": round(coldpix / final.size, 6),
    }
