"""Normalisation and sigma-clipped stacking of the detrended flats (spec §5.8 steps 3–5).

The flats live in one float32 cube ``(n_flats, rows, columns)`` with masked pixels set to NaN;
every operation here works on that cube in place or in row blocks, so the peak memory stays near
one cube plus a few frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import bottleneck as bn
import numpy as np

from soxs_mflat.detrend import NoiseModel

MAD_TO_SIGMA = 1.482602218505602
BLOCK_ROWS = 256
MAX_SPREAD_RATIO = 1.5


@dataclass(frozen=True)
class ExposureLevels:
    """Per-flat exposure levels measured in the order-centre band (e⁻)."""

    levels: np.ndarray
    percentiles: np.ndarray
    """(n_flats, 3): 10th, 50th and 90th percentile of each flat's band pixels."""

    @property
    def ordexp(self) -> tuple[float, float, float]:
        """ORDEXP10/50/90: median over the flats of each percentile (spec §8.2)."""
        p10, p50, p90 = np.median(self.percentiles, axis=0)
        return round(float(p10), 3), round(float(p50), 3), round(float(p90), 3)


@dataclass(frozen=True)
class StackResult:
    """A combined flat: mean of the surviving values, its 1σ uncertainty, and its mask."""

    data: np.ndarray
    uncertainty: np.ndarray
    mask: np.ndarray
    n_used: np.ndarray
    n_clipped: int


def centre_band_mask(shape_ba: tuple[int, int], centres_ba: np.ndarray, valid: np.ndarray, half_width: int) -> np.ndarray:
    """Pixels (BA orientation) from ``int(centre) − w`` to ``int(centre) + w`` (exclusive) of every order.

    ``centres_ba`` (n_orders, n_rows) are the order-centre A positions on the frame; rows where
    ``valid`` is false are skipped.
    """
    n_a = shape_ba[1]
    band = np.zeros(shape_ba, dtype=bool)
    start = np.floor(centres_ba).astype(np.int64) - half_width
    a = np.arange(n_a)[None, :]
    for k in range(centres_ba.shape[0]):
        inside = (a >= start[k][:, None]) & (a < (start[k] + 2 * half_width)[:, None]) & valid[k][:, None]
        band |= inside
    return band


def measure_levels(cube: np.ndarray, band: np.ndarray) -> ExposureLevels:
    """Robust exposure level of each flat from its finite pixels in the band.

    The level is a 3σ-clipped mean around the median (MAD spread), which ignores defects and cosmic
    rays but keeps the statistical precision of a mean.
    """
    levels, percentiles = [], []
    for frame in cube:
        values = frame[band]
        values = values[np.isfinite(values)]
        if values.size == 0:
            levels.append(np.nan)
            percentiles.append([np.nan] * 3)
            continue
        percentiles.append(np.percentile(values, [10, 50, 90]))
        levels.append(clipped_mean(values, sigma=3.0))
    return ExposureLevels(np.asarray(levels), np.asarray(percentiles))


def clipped_mean(values: np.ndarray, *, sigma: float, iterations: int = 5) -> float:
    """Mean of ``values`` after iterative clipping at ``sigma`` × MAD-σ around the median."""
    keep = values
    for _ in range(iterations):
        centre = np.median(keep)
        spread = MAD_TO_SIGMA * np.median(np.abs(keep - centre))
        if spread == 0:
            break
        inside = keep[np.abs(keep - centre) <= sigma * spread]
        if inside.size == keep.size:
            break
        keep = inside
    return float(np.mean(keep))


def ratio_levels(cube: np.ndarray, reference: np.ndarray, band: np.ndarray) -> np.ndarray:
    """Second-pass level of each flat: clipped mean of ``flat / reference`` over the band."""
    good_reference = band & np.isfinite(reference) & (reference > 0)
    levels = []
    for frame in cube:
        ratio = frame[good_reference] / reference[good_reference]
        ratio = ratio[np.isfinite(ratio)]
        levels.append(clipped_mean(ratio, sigma=3.0) if ratio.size else np.nan)
    return np.asarray(levels)


def sigma_clipped_stack(
    cube: np.ndarray,
    levels: np.ndarray,
    noise: list[NoiseModel],
    *,
    sigma: float,
    iterations: int,
    all_masked: np.ndarray | None = None,
) -> StackResult:
    """Combine normalised flats (cube = flat / level, NaN where masked) pixel by pixel.

    Each pixel's values are clipped iteratively at ``sigma`` × spread around their median, where
    the spread is the MAD-σ of the values bounded by the expected noise of one flat (see
    :func:`_clip_pass`); the survivors are averaged. The uncertainty propagates each survivor's own variance and the calibration
    variance common to all flats. A pixel is masked only if every input was masked there, or every
    value was clipped.
    """
    n_flats, n_rows, n_cols = cube.shape
    data = np.empty((n_rows, n_cols), dtype=np.float32)
    uncertainty = np.empty((n_rows, n_cols), dtype=np.float32)
    n_used = np.empty((n_rows, n_cols), dtype=np.int16)
    inverse_levels = (1.0 / levels).astype(np.float32)
    n_clipped = 0
    for start in range(0, n_rows, BLOCK_ROWS):
        rows = slice(start, min(start + BLOCK_ROWS, n_rows))
        values = cube[:, rows, :].copy()
        own_variance = np.stack(
            [
                noise[i].variance(values[i] * np.float32(levels[i]), rows) * inverse_levels[i] ** 2
                for i in range(n_flats)
            ]
        )
        floor = np.sqrt(bn.nanmean(own_variance, axis=0))
        n_clipped += _clip_in_place(values, floor, sigma=sigma, iterations=iterations)
        finite = np.isfinite(values)
        count = finite.sum(axis=0)
        data[rows] = bn.nanmean(values, axis=0)
        summed_variance = np.where(finite, own_variance, 0).sum(axis=0)
        common = sum(
            noise[i].common(rows) * inverse_levels[i] ** 2 for i in range(n_flats)
        ) / n_flats
        with np.errstate(invalid="ignore", divide="ignore"):
            uncertainty[rows] = np.sqrt(summed_variance / count.astype(np.float32) ** 2 + common)
        n_used[rows] = count
    mask = n_used == 0
    if all_masked is not None:
        mask |= all_masked
    data[mask] = np.nan
    uncertainty[mask] = np.nan
    return StackResult(data, uncertainty, mask, n_used, n_clipped)


def _clip_pass(values: np.ndarray, floor: np.ndarray, sigma: float) -> np.ndarray:
    """Values more than ``sigma`` × spread from their median along axis 0.

    The spread is the values' MAD-σ kept within [1, ``MAX_SPREAD_RATIO``] × ``floor``, the expected
    noise of one flat: with a handful of flats the MAD alone is too noisy a yardstick, sometimes far
    too small (clipping good values) and often several times too large (keeping cosmic rays).
    """
    centre = bn.nanmedian(values, axis=0)
    spread = np.clip(MAD_TO_SIGMA * bn.nanmedian(np.abs(values - centre), axis=0), floor, MAX_SPREAD_RATIO * floor)
    with np.errstate(invalid="ignore"):
        return np.abs(values - centre) > sigma * spread


def _clip_in_place(values: np.ndarray, floor: np.ndarray, *, sigma: float, iterations: int) -> int:
    """Iteratively set outliers along axis 0 to NaN; return how many were clipped.

    The first pass covers every pixel; later passes only the few pixels where something was clipped.
    """
    clip = _clip_pass(values, floor, sigma)
    count = int(clip.sum())
    if count == 0 or iterations < 2:
        values[clip] = np.nan
        return count
    values[clip] = np.nan
    affected = np.flatnonzero(clip.any(axis=0))
    flat_values = values.reshape(values.shape[0], -1)
    subset = flat_values[:, affected]
    subset_floor = floor.reshape(-1)[affected]
    for _ in range(iterations - 1):
        more = _clip_pass(subset, subset_floor, sigma)
        newly = int(more.sum())
        if newly == 0:
            break
        subset[more] = np.nan
        count += newly
    flat_values[:, affected] = subset
    return count
