"""Hot pixels of dark, lamp-off and bias frames: pixels well above their local level.

The level is a running median along B, then across columns, so it follows the thermal light of the
orders in NIR lamp-off frames. It is taken per block of rows and interpolated along B to find the
candidates; those are tested with their exact level (:func:`~soxs_mflat.badpixels.local_model.local_model`).
"""

from __future__ import annotations

from dataclasses import dataclass

import bottleneck as bn
import numpy as np

from soxs_mflat.badpixels.bands import (
    EDGE_ZONE,
    BandLayout,
    MaskedImage,
    OrderPixels,
    Pixels,
    chunks,
    cleaned,
    share_orders,
)
from soxs_mflat.badpixels.block_statistics import (
    across_median,
    block_level,
    column_at,
    interpolate_blocks,
    near_marked_columns,
    scatter_at,
    scatter_map,
)
from soxs_mflat.badpixels.local_model import local_model
from soxs_mflat.badpixels.thresholds import CANDIDATE_FRACTION, false_alarm_sigma
from soxs_mflat.footprints import OrderBounds
from soxs_mflat.parallel import WORKERS

LEVEL_WINDOW = 15
"""Rows of the running median along B that gives a dark or bias frame's local level."""
LINE_STEP = 16
"""Every ``LINE_STEP``-th column (row) gives the median of a bias row (column)."""


def hot_in_bands(
    image: MaskedImage,
    err: np.ndarray | None,
    layout: BandLayout,
    tested: np.ndarray,
    inner: np.ndarray,
    zone: Pixels | None,
    *,
    hot_sigma: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the ``tested`` band pixels of a dark, lamp-off or bias frame more than
    ``hot_sigma`` σ above their local level (see :func:`hot_in_frame`); ``inner`` marks where the level
    takes the median across columns, and ``zone`` (tested pixels outside ``inner``, or None) those to
    which a column's excess over its inner pixels is carried.

    The level per block of rows, interpolated along B, gives the robust statistics and the candidates;
    those are then tested with their exact level. With ``err``, which bounds σ from below, the MAD
    scatter is needed at the candidates only.
    """
    excess = image.on(layout)
    n_k, n_blocks = layout.start.shape
    along = block_level(layout, excess, min_count=max(LEVEL_WINDOW // 3, 1), trimmed=True)
    inner_blocks = inner[:, np.arange(n_blocks) * layout.block + layout.block // 2]
    across = across_median(layout, along)
    excess -= interpolate_blocks(layout, np.where(inner_blocks, across, along))
    scatter = None
    if err is None:
        scatter = scatter_map(np.abs(excess), layout)
        lowest = scatter.lowest(layout)
    else:
        err_blocks = layout.take(err).reshape(n_k, n_blocks, layout.block, layout.width).transpose(2, 0, 1, 3)
        lowest = np.fmin.reduce(np.ascontiguousarray(err_blocks), axis=0)
    limit = np.float32(CANDIDATE_FRACTION * hot_sigma) * np.nan_to_num(lowest)
    with np.errstate(invalid="ignore"):
        candidate = excess.reshape(n_k, n_blocks, layout.block, layout.width) > limit[:, :, None, :]
    candidate = candidate.reshape(excess.shape)
    candidate &= tested
    response = None if zone is None else np.where(inner, excess, np.float32(np.nan))

    def hot_among(pixels: Pixels) -> tuple[np.ndarray, np.ndarray]:
        """The ``pixels`` (candidates or carried ones) above their exact level by ``hot_sigma`` σ."""
        k, r, c = pixels
        outside = ~inner[k, r, layout.band_column(k, r, c)]
        level, uncertainty = local_model(image, r, c, outside, LEVEL_WINDOW)
        if scatter is not None:
            sigma = np.hypot(scatter.at(k, r, c), uncertainty)
        else:
            with np.errstate(invalid="ignore"):
                sigma = np.fmax(np.hypot(scatter_at(excess, layout, pixels), uncertainty), err[r, c])
        sigma *= hot_sigma
        with np.errstate(invalid="ignore"):
            hot = image.at(r, c) - level > sigma
            if response is not None:
                hot |= outside & (column_at(response, layout, pixels) > sigma)
        return r[hot], c[hot]

    found = [hot_among(pixels) for pixels in layout.pixels_in_chunks(candidate)]
    if zone is not None:
        with np.errstate(invalid="ignore"):
            high = inner_blocks & (along - across > 0.5 * limit)
        near = near_marked_columns(layout, high, zone)
        for k, r, c in chunks(tuple(part[near] for part in zone)):
            with np.errstate(invalid="ignore"):
                carried = column_at(response, layout, (k, r, c)) > limit[k, r // layout.block, layout.band_column(k, r, c)]
            found.append(hot_among((k[carried], r[carried], c[carried])))
    empty = np.empty(0, dtype=np.int64)
    return np.concatenate([empty, *(r for r, _ in found)]), np.concatenate([empty, *(c for _, c in found)])


def line_structure(bias: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median of each row of a bias frame and then of each column of what is left (from every
    ``LINE_STEP``-th column and row; ``mask`` pixels ignored).

    Row and column offsets are fixed-pattern bias structure that bias subtraction removes exactly; left
    in, a column a few e⁻ above its neighbours would read as a hot column.
    """
    row_offset = np.nan_to_num(bn.nanmedian(cleaned(np.array(bias[:, ::LINE_STEP]), mask[:, ::LINE_STEP]), axis=1))
    rows = cleaned(np.array(bias[::LINE_STEP]), mask[::LINE_STEP]) - row_offset[::LINE_STEP, None]
    return row_offset, np.nan_to_num(bn.nanmedian(rows, axis=0))


def hot_in_frame(
    frame: np.ndarray,
    *,
    hot_sigma: float,
    err: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    distance: np.ndarray | None = None,
) -> np.ndarray:
    """Pixels of a dark, lamp-off or bias frame (BA orientation) more than ``hot_sigma`` σ above their
    local level; the frame's units do not matter.

    The level is a running median over ``LEVEL_WINDOW`` rows, then across columns, so it follows the
    thermal light of the orders in NIR lamp-off frames; ``distance`` (px to the nearest order edge, as in
    :func:`~soxs_mflat.badpixels.find_bad_pixels`) marks where it must not mix columns; there a hot column
    is found from its excess away from the edges. σ is the larger of ``err`` and the local MAD scatter
    combined with the level's uncertainty at edges. Pass ``err``: near the order edges of a lamp-off
    frame the MAD alone understates the noise.
    """
    shape = np.shape(frame)
    layout = BandLayout.whole(shape, max(LEVEL_WINDOW // 3, 1))
    tested = np.broadcast_to((np.arange(layout.n_rows) < shape[0])[None, :, None], (1, layout.n_rows, shape[1]))
    inner, zone = tested, None
    if distance is not None:
        inner = layout.take(np.asarray(distance) >= EDGE_ZONE) & tested
        zone = layout.pixels(tested & ~inner)
    image = MaskedImage(np.asarray(frame), None if mask is None else np.asarray(mask, dtype=bool))
    hot = np.zeros(shape, dtype=bool)
    r, c = hot_in_bands(image, None if err is None else np.asarray(err, dtype=np.float32), layout, tested, inner, zone,
                        hot_sigma=hot_sigma)
    hot[r, c] = True
    return hot


@dataclass(frozen=True)
class CalibrationFrame:
    """A dark (or lamp-off) or bias frame to search for hot pixels: the ``image`` (a bias with its row and
    column structure as offsets), its ERRS ``err`` (or None) and whether it is a bias."""

    image: MaskedImage
    err: np.ndarray | None
    is_bias: bool


def calibration_frames(input_mask: np.ndarray, *, dark_ba: np.ndarray | None, dark_err_ba: np.ndarray | None,
                       bias_ba: np.ndarray | None, bias_err_ba: np.ndarray | None) -> list[CalibrationFrame]:
    """The frames among ``dark_ba`` and ``bias_ba`` (either may be None) to search for hot pixels."""
    frames = []
    for frame, err, is_bias in ((dark_ba, dark_err_ba, False), (bias_ba, bias_err_ba, True)):
        if frame is not None:
            frame = np.asarray(frame)
            offsets = line_structure(frame, input_mask) if is_bias else (None, None)
            err = None if err is None else np.asarray(err, dtype=np.float32)
            frames.append(CalibrationFrame(MaskedImage(frame, input_mask, *offsets), err, is_bias))
    return frames


def calibration_threshold(shape: tuple[int, int], hot_sigma: float) -> float:
    """The hot-pixel threshold (σ) in calibration frames of ``shape``, searched pixel by pixel over the
    whole detector: at least the one with 0.1 pure-noise detection expected.

    Bias frames carry no order structure, so no edge zone applies to them (a fixed-pattern column offset
    is removed by the bias subtraction and is not a hot column).
    """
    return max(hot_sigma, false_alarm_sigma(shape[0] * shape[1]))


def hot_in_calibration_frames(frames: list[CalibrationFrame], orders: OrderPixels, input_mask: np.ndarray, *,
                              hot_sigma: float) -> np.ndarray:
    """Flat indices of the pixels of ``orders`` hot in any of the ``frames`` at ``hot_sigma`` σ."""
    hot = [np.empty(0, dtype=np.int64)]
    if not frames:
        return hot[0]
    layout = orders.layout
    edge = orders.edge_pixels()
    for frame in frames:
        tested = orders.in_order & ~layout.take(input_mask)
        inner = np.broadcast_to(True, tested.shape) if frame.is_bias else orders.inner
        zone = None if frame.is_bias else tuple(part[~input_mask[edge[1], edge[2]]] for part in edge)
        r, c = hot_in_bands(frame.image, frame.err, layout, tested, inner, zone, hot_sigma=hot_sigma)
        hot.append(r * layout.shape[1] + c)
    return np.concatenate(hot)


def calibration_hot_pixels(
    bounds: OrderBounds,
    shape: tuple[int, int],
    *,
    hot_sigma: float,
    dark_ba: np.ndarray | None = None,
    dark_err_ba: np.ndarray | None = None,
    bias_ba: np.ndarray | None = None,
    bias_err_ba: np.ndarray | None = None,
    input_mask_ba: np.ndarray | None = None,
    window: int = 21,
) -> np.ndarray:
    """Flat indices of the in-order pixels hot in ``dark_ba`` or ``bias_ba``: the part of
    :func:`~soxs_mflat.badpixels.find_bad_pixels` that needs no flat, so that it can run beside the
    scattered-light fit and be handed to it as ``frame_hot`` (the same pixels as the search inside it).
    ``window`` is the flat search's running-median length, which sets its bands' blocks of rows."""
    input_mask = np.zeros(shape, dtype=bool) if input_mask_ba is None else np.asarray(input_mask_ba, dtype=bool)
    frames = calibration_frames(input_mask, dark_ba=dark_ba, dark_err_ba=dark_err_ba, bias_ba=bias_ba,
                                bias_err_ba=bias_err_ba)
    threshold = calibration_threshold(shape, hot_sigma)
    found = [hot_in_calibration_frames(frames, OrderPixels.of(group, shape, max(window // 3, 1)), input_mask,
                                       hot_sigma=threshold) for group in share_orders(bounds, WORKERS)]
    return np.concatenate([np.empty(0, dtype=np.int64), *found])
