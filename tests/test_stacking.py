"""Detrending, normalisation and sigma-clipped stacking on synthetic cubes with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from soxs_mflat.detrend import (
    Calibration,
    NoiseModel,
    bias_detrending,
    dark_detrending,
    dark_scale,
    lowest_dark,
    nearest_in_time,
)
from soxs_mflat.robust import MAD_TO_SIGMA
from soxs_mflat.stacking import (
    MAX_SPREAD_RATIO,
    FlatCube,
    band_sample,
    centre_band_mask,
    clipped_mean,
    measure_levels,
    ratio_levels,
    sigma_clipped_stack,
)

RON = 5.0


def _flats(n: int = 5, shape: tuple[int, int] = (300, 200), level: float = 20000.0, seed: int = 0,
           flicker: tuple[float, ...] | None = None):
    """Noisy flats of a known response pattern (e⁻), each with its own lamp level."""
    rng = np.random.default_rng(seed)
    response = 1.0 + 0.05 * np.sin(np.arange(shape[1]) / 7.0)[None, :] * np.ones(shape)
    scales = np.ones(n) if flicker is None else np.asarray(flicker)
    signal = level * response[None] * scales[:, None, None]
    frames = rng.normal(signal, np.sqrt(signal + RON**2)).astype(np.float32)
    return frames, response, scales


def _stack(frames: np.ndarray, *, sigma: float = 5.0, iterations: int = 5):
    band = np.ones(frames.shape[1:], dtype=bool)
    cube = FlatCube.of_frames(frames)
    levels = measure_levels(cube, band)
    cube = cube.with_levels(levels.levels)
    noise = [NoiseModel(ron=RON) for _ in frames]
    first = sigma_clipped_stack(cube, noise, sigma=sigma, iterations=iterations)
    relative = ratio_levels(cube, first.data, band)
    cube = cube.with_levels(levels.levels * relative)
    return sigma_clipped_stack(cube, noise, sigma=sigma, iterations=iterations), levels


def test_stack_recovers_response_at_photon_noise() -> None:
    frames, response, _ = _flats()
    result, levels = _stack(frames)
    ratio = result.data / response
    ratio /= np.median(ratio)
    expected = np.sqrt(20000 + RON**2) / 20000 / np.sqrt(5)
    assert np.std(ratio - 1) == pytest.approx(expected, rel=0.05)
    pulls = (result.data - response * np.median(result.data / response)) / result.uncertainty
    assert np.std(pulls) == pytest.approx(1.0, abs=0.05)
    assert levels.ordexp[1] == pytest.approx(20000, rel=0.01)


def test_lamp_flicker_is_normalised_away() -> None:
    frames, response, _ = _flats(flicker=(1.0, 0.8, 1.2, 1.05, 0.95))
    result, levels = _stack(frames)
    assert levels.levels / levels.levels[0] == pytest.approx([1.0, 0.8, 1.2, 1.05, 0.95], rel=2e-3)
    ratio = result.data / response
    per_column = np.median(ratio, axis=0) / np.median(ratio)
    assert np.max(np.abs(per_column - 1)) < 1e-3
    assert result.n_clipped < 0.001 * frames.size


def test_cosmic_rays_leave_no_trace() -> None:
    frames, response, _ = _flats(seed=3)
    rng = np.random.default_rng(4)
    hits = rng.integers(0, frames.size, 400)
    frames.reshape(-1)[hits] += rng.uniform(3000, 50000, hits.size).astype(np.float32)
    result, _ = _stack(frames)
    truth = response * np.median(result.data / response)
    pulls = np.abs(result.data - truth) / result.uncertainty
    assert np.mean(pulls > 5) <= 1e-4


def test_nans_and_fully_masked_pixels() -> None:
    frames, _, _ = _flats(seed=5)
    frames[0, 10, 10] = np.nan
    frames[:, 20, 20] = np.nan
    result, _ = _stack(frames)
    assert not result.mask[10, 10] and np.isfinite(result.data[10, 10]) and result.n_used[10, 10] == 4
    assert result.mask[20, 20] and np.isnan(result.data[20, 20])
    assert result.mask.sum() == 1


def test_all_masked_input_stays_masked() -> None:
    frames, _, _ = _flats(seed=6)
    frames[:, 5, 6] = np.nan
    band = np.ones(frames.shape[1:], dtype=bool)
    cube = FlatCube.of_frames(frames)
    cube = cube.with_levels(measure_levels(cube, band).levels)
    result = sigma_clipped_stack(cube, [NoiseModel(ron=RON)] * 5, sigma=5, iterations=3)
    assert result.mask[5, 6] and result.mask.sum() == 1 and result.n_used[5, 6] == 0


def test_bias_detrending_propagates_and_masks() -> None:
    flat = np.full((4, 4), 1500.0, np.float32)
    bias_mask = np.zeros((4, 4), bool)
    bias_mask[1, 1] = True
    bias = Calibration(np.full((4, 4), 500.0, np.float32), np.full((4, 4), 2.0, np.float32), bias_mask)
    detrending = bias_detrending(bias, ron=RON)
    data = flat - detrending.offset
    assert np.allclose(data, 1000.0) and detrending.mask[1, 1] and detrending.mask.sum() == 1
    assert np.allclose(detrending.noise.variance(data), 1000.0 + RON**2)
    assert np.allclose(detrending.noise.common(), 4.0)
    dark = Calibration(np.full((4, 4), 520.0, np.float32), np.full((4, 4), 1.0, np.float32), np.zeros((4, 4), bool), 20.0)
    with_dark = bias_detrending(bias, ron=RON, dark=dark, flat_exptime=10.0)
    assert np.allclose(flat - with_dark.offset, 990.0)
    assert np.allclose(with_dark.noise.common(), 4.0 + 0.25)


def test_dark_detrending_keeps_dark_photons_in_the_noise() -> None:
    flat = np.full((3, 3), 3000.0, np.float32)
    dark = Calibration(np.full((3, 3), 200.0, np.float32), np.full((3, 3), 15.0, np.float32), np.zeros((3, 3), bool), 10.0)
    detrending = dark_detrending(dark, ron=RON, shared=False)
    assert dark.scaled(2.0).data[0, 0] == 400.0 and dark.scaled(2.0).uncertainty[0, 0] == 30.0
    data = flat - detrending.offset
    assert np.allclose(data, 2800.0)
    assert np.allclose(detrending.noise.variance(data), 3000.0 + RON**2 + 225.0)
    assert np.allclose(dark_detrending(dark, ron=RON, shared=True).noise.common(), 225.0)
    assert dark_scale(instrument="soxs", flat_exptime=20, dark_exptime=10) == 1.0
    assert dark_scale(instrument="xsh", flat_exptime=20, dark_exptime=10) == 2.0
    assert nearest_in_time(60000.5, np.array([60000.1, 60000.45, 60000.9])) == 1


def test_compact_cube_reads_like_prepared_frames() -> None:
    """Raw 16-bit values read back as (raw × gain − offset) / level with saturation and masks as NaN."""
    rng = np.random.default_rng(9)
    raw = rng.integers(1000, 60000, (3, 40, 30)).astype(np.uint16)
    raw[1, 3, 4] = 65535
    offset = rng.normal(300, 5, (40, 30)).astype(np.float32)
    mask = np.zeros((40, 30), bool)
    mask[7, 8] = True
    levels = np.array([1.0, 2.0, 0.5])
    cube = FlatCube(raw, scale=1.5, offsets=(offset,) * 3, masks=(mask,) * 3, saturation=65535.0, levels=levels)
    expected = (raw.astype(np.float32) * np.float32(1.5) - offset) / levels[:, None, None].astype(np.float32)
    expected[:, mask] = np.nan
    expected[1, 3, 4] = np.nan
    rows = slice(2, 20)
    np.testing.assert_allclose(cube.block(rows), expected[:, rows], rtol=1e-6)
    select = rng.random((18, 30)) < 0.3
    np.testing.assert_allclose(cube.block(rows, select), expected[:, rows][:, select], rtol=1e-6)
    band = rng.random((40, 30)) < 0.5
    for index in (1, 0, 2):
        np.testing.assert_allclose(cube.values(index, band), expected[index][band], rtol=1e-6)
    other = ~band
    np.testing.assert_allclose(cube.values(2, other), expected[2][other], rtol=1e-6)


def _reference_stack(values: np.ndarray, variance: np.ndarray, sigma: float, iterations: int):
    """Plain per-pixel clipping over the whole cube: the definition the fast stack must match."""
    values = values.copy()
    floor = np.sqrt(np.nanmean(variance, axis=0))
    for _ in range(iterations):
        centre = np.nanmedian(values, axis=0)
        spread = np.clip(MAD_TO_SIGMA * np.nanmedian(np.abs(values - centre), axis=0), floor, MAX_SPREAD_RATIO * floor)
        clip = np.abs(values - centre) > sigma * spread
        if not clip.any():
            break
        values[clip] = np.nan
    return np.nanmean(values, axis=0), np.isfinite(values).sum(axis=0)


@pytest.mark.parametrize("sigma", [5.0, 2.5])
def test_fast_stack_equals_plain_clipping(sigma: float) -> None:
    """Only pixels whose values span more than sigma × noise are clipped; the result is the same."""
    frames, _, _ = _flats(seed=11, shape=(120, 90))
    rng = np.random.default_rng(12)
    hits = rng.integers(0, frames.size, 300)
    frames.reshape(-1)[hits] += rng.uniform(100, 20000, hits.size).astype(np.float32)
    frames[rng.random(frames.shape) < 0.01] = np.nan
    noise = [NoiseModel(ron=RON)] * 5
    result = sigma_clipped_stack(FlatCube.of_frames(frames), noise, sigma=sigma, iterations=4)
    variance = np.stack([n.variance(f) for n, f in zip(noise, frames, strict=True)])
    variance[np.isnan(frames)] = np.nan
    mean, count = _reference_stack(frames, variance, sigma, 4)
    np.testing.assert_array_equal(result.n_used, count)
    np.testing.assert_allclose(result.data, mean, rtol=1e-6)
    assert result.n_clipped == np.isfinite(frames).sum() - count.sum()


def test_centre_band_and_clipped_mean() -> None:
    centres = np.array([[10.7] * 5, [30.2] * 5])
    valid = np.ones((2, 5), bool)
    valid[1, 4] = False
    band = centre_band_mask((5, 50), centres, valid, 3)
    assert list(np.flatnonzero(band[0])) == [7, 8, 9, 10, 11, 12, 27, 28, 29, 30, 31, 32]
    assert list(np.flatnonzero(band[4])) == [7, 8, 9, 10, 11, 12]
    values = np.r_[np.random.default_rng(0).normal(100, 1, 10000), [1e6] * 10]
    assert clipped_mean(values, sigma=3) == pytest.approx(100, abs=0.05)


def test_band_sample_spreads_at_most_the_requested_pixels_over_the_band() -> None:
    band = np.zeros((400, 300), dtype=bool)
    band[:, 100:120] = True
    band[:, 200:215] = True
    sample = band_sample(band, max_pixels=1000)
    assert 0.9 * 1000 < np.count_nonzero(sample) <= 1000 and not np.any(sample & ~band)
    rows = np.flatnonzero(sample.any(axis=1))
    assert rows[0] < 10 and rows[-1] > 390  # spread over the whole band, not its start
    assert np.array_equal(band_sample(band, max_pixels=band.size), band)


def test_lowest_dark_keeps_hot_pixels_and_drops_single_frame_spikes() -> None:
    rng = np.random.default_rng(8)
    darks = []
    for _ in range(3):
        data = rng.normal(100.0, 3.0, (20, 30)).astype(np.float32)
        data[5, 5] += 500.0  # hot: in every dark
        darks.append(Calibration(data, np.full(data.shape, 3.0 + _, np.float32), np.zeros(data.shape, bool), 10.0))
    darks[1].data[7, 9] += 3000.0  # a cosmic ray in one dark
    darks[2].mask[0, 0] = True
    lowest = lowest_dark(darks)
    assert lowest.data[5, 5] > 500.0 and lowest.data[7, 9] < 120.0
    np.testing.assert_array_equal(lowest.data, np.minimum.reduce([d.data for d in darks]))
    chosen = np.argmin([d.data for d in darks], axis=0)
    np.testing.assert_array_equal(lowest.uncertainty, np.float32(3.0) + chosen)
    assert lowest.mask[0, 0] and lowest.mask.sum() == 1
    assert lowest_dark(darks[:1]) is darks[0]
