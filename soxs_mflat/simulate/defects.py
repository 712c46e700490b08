"""Pixel response and detector defects: PRNU, dust, dead/low-sensitivity/hot pixels, columns, clusters, traps.

The nominal detector (``Variation.nominal()``) has PRNU, 14 dust donuts, one dead and one weak
partial column and isolated dead, low-sensitivity and hot pixels, all drawn from the defects
generator exactly as the original simulator drew them. A varied detector adds, from a separate
generator, more bad columns (dead or weak, full or partial), clusters of adjacent bad pixels,
charge traps with deferred-charge trails (CCDs) and pixels that are wrong in the master bias only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr

from soxs_mflat.simulate.variation import Variation

DEAD_RESPONSE = (0.0, 0.03)
LOW_SENSITIVITY_COLUMN_RESPONSE = 0.7
PRNU_RMS = 0.01
DUST_MASK_LIMIT = 0.004
"""A pixel is in the dust mask when a dust shadow removes more than this fraction of its light."""
TRAP_CAPACITY = (200.0, 5000.0)
"""Range (e⁻, log-uniform) of the charge a trap holds back from each pixel transferred through it."""
TRAP_TRAIL = (3, 16)
"""Range of the trail length (px) over which a trap releases its charge."""
BIAS_ONLY_OFFSET = (30.0, 3000.0)
"""Range (e⁻, log-uniform, either sign) of the error of a pixel that is wrong in the master bias only."""


@dataclass(frozen=True)
class ChargeTraps:
    """Charge traps: each holds back up to ``capacity`` e⁻ and releases it into the pixels behind it.

    ``trail`` holds, per trap, the flat indices of the pixels read after it along the transfer
    direction (−1 beyond the frame) and ``weight`` the share of the released charge each receives.
    """

    pixel: np.ndarray
    capacity: np.ndarray
    trail: np.ndarray
    weight: np.ndarray

    def apply(self, expected: np.ndarray) -> np.ndarray:
        """Expected electrons after charge transfer: each trap keeps ``min(capacity, signal / 2)``."""
        out = np.array(expected, dtype=np.float64)
        flat = out.reshape(-1)
        captured = np.minimum(self.capacity, 0.5 * np.maximum(flat[self.pixel], 0.0))
        flat[self.pixel] -= captured
        valid = self.trail >= 0
        np.add.at(flat, self.trail[valid], (captured[:, None] * self.weight)[valid])
        return out

    def footprint(self, shape: tuple[int, int]) -> np.ndarray:
        """Mask of the trap pixels and their trails."""
        mask = np.zeros(shape, dtype=bool)
        mask.reshape(-1)[self.pixel] = True
        mask.reshape(-1)[self.trail[self.trail >= 0]] = True
        return mask


@dataclass(frozen=True)
class DetectorDefects:
    """Pixel response and injected defects of one simulated detector (prepared-frame shape).

    ``response`` is the full multiplicative response (PRNU × dust × defects); ``defect_factor`` the
    defects' part alone (1 elsewhere); the boolean masks say where each kind was injected;
    ``hot_rate`` is the dark-current excess (e⁻/s) of hot pixels, zero elsewhere. ``bias_offset``
    (e⁻) is the error of the master bias at pixels that are bad in it only, ``bias_flagged`` those
    of them that its QUAL flags.
    """

    response: np.ndarray
    dead: np.ndarray
    low_sensitivity: np.ndarray
    dust: np.ndarray
    hot: np.ndarray
    hot_rate: np.ndarray
    defect_factor: np.ndarray
    traps: ChargeTraps | None = None
    bias_offset: np.ndarray | None = None
    bias_flagged: np.ndarray | None = None


def make_defects(
    shape: tuple[int, int],
    rng: np.random.Generator,
    *,
    binning: tuple[int, int],
    variation: Variation | None = None,
    extra_rng: np.random.Generator | None = None,
    trail_step: tuple[int, int] = (1, 0),
    ccd: bool = True,
) -> DetectorDefects:
    """Draw PRNU, dust donuts, one dead and one weak partial column, then dead/low-sensitivity/hot pixels.

    Point defects avoid the defective columns, so every pixel has at most one defect kind (dust
    aside, which is a response feature and overlaps freely). A varied detector then adds, from
    ``extra_rng``, bad columns, clusters, charge traps (``ccd`` only; trails run along
    ``trail_step`` = (row, column) step) and master-bias-only pixels (``ccd`` only).
    """
    variation = variation or Variation.nominal()
    n_rows, n_cols = shape
    npix = n_rows * n_cols
    mean_bin = 0.5 * (binning[0] + binning[1])
    response = (1.0 + PRNU_RMS * rng.standard_normal(shape)).astype(np.float64)
    dust_factor = _dust(shape, rng, mean_bin=mean_bin, variation=variation)
    dust = dust_factor < 1.0 - DUST_MASK_LIMIT
    response *= dust_factor

    factor = np.ones(shape)
    dead = np.zeros(shape, dtype=bool)
    low = np.zeros(shape, dtype=bool)
    hot = np.zeros(shape, dtype=bool)
    columns = rng.choice(np.arange(n_cols // 10, 9 * n_cols // 10), size=2, replace=False)
    for mask, value, column in zip((dead, low), (0.01, LOW_SENSITIVITY_COLUMN_RESPONSE), columns, strict=True):
        length = int(rng.integers(n_rows // 3, 2 * n_rows // 3))
        rows = slice(0, length) if rng.random() < 0.5 else slice(n_rows - length, n_rows)
        factor[rows, column] *= value
        mask[rows, column] = True

    count = max(300, int(1.2e-4 * variation.defect_density * npix))
    candidates = rng.choice(npix, size=3 * count + 2 * n_rows, replace=False)
    candidates = candidates[~(dead.ravel()[candidates] | low.ravel()[candidates])][: 3 * count]
    dead_index, low_index, hot_index = candidates[:count], candidates[count : 2 * count], candidates[2 * count :]
    flat_factor = factor.reshape(-1)
    flat_factor[dead_index] *= rng.uniform(*DEAD_RESPONSE, size=count)
    flat_factor[low_index] *= rng.uniform(*variation.low_sensitivity_range, size=count)
    dead.reshape(-1)[dead_index] = True
    low.reshape(-1)[low_index] = True
    hot.reshape(-1)[hot_index] = True

    hot_rate = np.zeros(shape, dtype=np.float64)
    low_rate, high_rate = variation.hot_rate_range
    hot_rate[hot] = np.exp(rng.uniform(np.log(low_rate), np.log(high_rate), size=int(hot.sum())))
    traps = bias_offset = bias_flagged = None
    if extra_rng is not None:
        taken = dead | low | hot
        _bad_columns(factor, dead, low, taken, extra_rng, count=variation.bad_columns, variation=variation)
        _clusters(factor, dead, low, taken | dead | low, extra_rng, count=variation.defect_clusters, variation=variation)
        free = ~(dead | low | hot)
        if ccd and variation.charge_traps:
            traps = _traps(free, extra_rng, count=variation.charge_traps, step=trail_step)
            free &= ~traps.footprint(shape)
        if ccd and variation.bias_only_pixels:
            bias_offset, bias_flagged = _bias_only(free, extra_rng, count=variation.bias_only_pixels)
    response *= factor
    return DetectorDefects(response, dead, low, dust, hot, hot_rate, factor, traps, bias_offset, bias_flagged)


def _dust(shape: tuple[int, int], rng: np.random.Generator, *, mean_bin: float, variation: Variation) -> np.ndarray:
    """Multiplicative shadow of out-of-focus dust: darker rings, a few % deep (nominally 10–30 px radius)."""
    factor = np.ones(shape)
    n_rows, n_cols = shape
    for _ in range(variation.dust_count):
        radius = rng.uniform(*variation.dust_radius) / mean_bin
        width = max(radius / 5.0, 1.0)
        depth = rng.uniform(*variation.dust_depth)
        row = rng.uniform(0, n_rows)
        col = rng.uniform(0, n_cols)
        reach = int(np.ceil(radius + 4 * width))
        r0, r1 = max(int(row) - reach, 0), min(int(row) + reach + 1, n_rows)
        c0, c1 = max(int(col) - reach, 0), min(int(col) + reach + 1, n_cols)
        if r0 >= r1 or c0 >= c1:
            continue
        rr, cc = np.mgrid[r0:r1, c0:c1]
        distance = np.hypot(rr - row, cc - col)
        ring = np.exp(-0.5 * ((distance - radius) / width) ** 2) + 0.35 * ndtr((radius - distance) / width)
        factor[r0:r1, c0:c1] *= 1.0 - depth * ring
    return factor


def _bad_columns(
    factor: np.ndarray, dead: np.ndarray, low: np.ndarray, taken: np.ndarray, rng: np.random.Generator, *,
    count: int, variation: Variation,
) -> None:
    """Dead or weak columns, full (30 %) or from a random row to one end of the frame, in place."""
    n_rows = factor.shape[0]
    free_columns = np.flatnonzero(~(dead | low).any(axis=0))
    for column in rng.choice(free_columns, size=min(count, free_columns.size), replace=False):
        is_dead = rng.random() < 0.5
        value = rng.uniform(*DEAD_RESPONSE) if is_dead else rng.uniform(0.5, variation.low_sensitivity_range[1])
        start = 0 if rng.random() < 0.3 else int(rng.integers(0, n_rows - 1))
        rows = slice(start, n_rows) if rng.random() < 0.5 else slice(0, n_rows - start)
        column_mask = np.zeros(n_rows, dtype=bool)
        column_mask[rows] = True
        column_mask &= ~taken[:, column]
        factor[column_mask, column] *= value
        (dead if is_dead else low)[column_mask, column] = True


def _clusters(
    factor: np.ndarray, dead: np.ndarray, low: np.ndarray, taken: np.ndarray, rng: np.random.Generator, *,
    count: int, variation: Variation,
) -> None:
    """Blobs of 2–40 adjacent dead (40 %) or low-sensitivity pixels grown by a random walk, in place."""
    n_rows, n_cols = factor.shape
    moves = np.array([(0, 1), (1, 0), (0, -1), (-1, 0)])
    for _ in range(count):
        size = int(rng.integers(2, 41))
        steps = moves[rng.integers(0, 4, size=4 * size)]
        path = np.cumsum(np.vstack([[rng.integers(0, n_rows), rng.integers(0, n_cols)], steps]), axis=0)
        path = path[(path[:, 0] >= 0) & (path[:, 0] < n_rows) & (path[:, 1] >= 0) & (path[:, 1] < n_cols)]
        index = np.unique(path[:, 0] * n_cols + path[:, 1])[:size]
        index = index[~taken.reshape(-1)[index]]
        is_dead = rng.random() < 0.4
        level = rng.uniform(*DEAD_RESPONSE) if is_dead else rng.uniform(*variation.low_sensitivity_range)
        factor.reshape(-1)[index] *= level * rng.uniform(0.95, 1.0, size=index.size)
        (dead if is_dead else low).reshape(-1)[index] = True


def _traps(free: np.ndarray, rng: np.random.Generator, *, count: int, step: tuple[int, int]) -> ChargeTraps:
    """Charge traps on free pixels, each with an exponential trail of 3–15 px along ``step``."""
    n_rows, n_cols = free.shape
    pixel = rng.choice(np.flatnonzero(free), size=count, replace=False)
    capacity = np.exp(rng.uniform(*np.log(TRAP_CAPACITY), size=count))
    length = rng.integers(*TRAP_TRAIL, size=count)
    offsets = np.arange(1, TRAP_TRAIL[1])[None, :]
    rows = pixel[:, None] // n_cols + offsets * step[0]
    cols = pixel[:, None] % n_cols + offsets * step[1]
    inside = (offsets < length[:, None]) & (rows >= 0) & (rows < n_rows) & (cols >= 0) & (cols < n_cols)
    trail = np.where(inside, rows * n_cols + cols, -1)
    weight = np.where(offsets < length[:, None], np.exp(-3.0 * (offsets - 1) / length[:, None]), 0.0)
    weight /= weight.sum(axis=1, keepdims=True)
    return ChargeTraps(pixel, capacity, trail, weight)


def _bias_only(free: np.ndarray, rng: np.random.Generator, *, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Master-bias errors (e⁻, either sign) at ``count`` free pixels; half of them flagged."""
    offset = np.zeros(free.shape)
    flagged = np.zeros(free.shape, dtype=bool)
    index = rng.choice(np.flatnonzero(free), size=count, replace=False)
    size = np.exp(rng.uniform(*np.log(BIAS_ONLY_OFFSET), size=count))
    offset.reshape(-1)[index] = rng.choice((-1.0, 1.0), size=count) * size
    flagged.reshape(-1)[index[: count // 2]] = True
    return offset, flagged
