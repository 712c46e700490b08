"""Detector effects: pixel response, defects, bias, noise, cosmic rays and the raw-frame layout.

Everything is built in prepared-frame coordinates (rotated and trimmed, at the set's binning, in
electrons) and only at the end embedded in the full rotated frame with its pre/overscan and turned
back into the raw orientation with ``np.rot90(full, -k)`` — the inverse of soxspipe's preparation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr

from soxs_mflat.instruments import Detector

BIAS_DARK_TIME = 3.0
"""Effective dark time (s) of a bias frame: how much hot-pixel charge a zero-second frame collects."""

DEAD_RESPONSE = (0.0, 0.03)
LOW_SENSITIVITY_RESPONSE = (0.4, 0.9)
LOW_SENSITIVITY_COLUMN_RESPONSE = 0.7
PRNU_RMS = 0.01
DUST_MASK_LIMIT = 0.004
"""A pixel is in the dust mask when a dust shadow removes more than this fraction of its light."""


@dataclass(frozen=True)
class DetectorDefects:
    """Pixel response and injected defects of one simulated detector (prepared-frame shape).

    ``response`` is the full multiplicative response (PRNU × dust × dead × low-sensitivity); the
    boolean masks say where each kind was injected; ``hot_rate`` is the dark-current excess (e⁻/s)
    of hot pixels, zero elsewhere.
    """

    response: np.ndarray
    dead: np.ndarray
    low_sensitivity: np.ndarray
    dust: np.ndarray
    hot: np.ndarray
    hot_rate: np.ndarray


def make_defects(shape: tuple[int, int], rng: np.random.Generator, *, binning: tuple[int, int]) -> DetectorDefects:
    """Draw PRNU, dust donuts, one dead and one weak partial column, then dead/low-sensitivity/hot pixels.

    Point defects avoid the defective columns, so every pixel has at most one defect kind (dust
    aside, which is a response feature and overlaps freely).
    """
    n_rows, n_cols = shape
    npix = n_rows * n_cols
    mean_bin = 0.5 * (binning[0] + binning[1])
    response = (1.0 + PRNU_RMS * rng.standard_normal(shape)).astype(np.float64)
    dust_factor = _dust(shape, rng, mean_bin=mean_bin)
    dust = dust_factor < 1.0 - DUST_MASK_LIMIT
    response *= dust_factor

    dead = np.zeros(shape, dtype=bool)
    low = np.zeros(shape, dtype=bool)
    hot = np.zeros(shape, dtype=bool)
    columns = rng.choice(np.arange(n_cols // 10, 9 * n_cols // 10), size=2, replace=False)
    for mask, factor, column in zip((dead, low), (0.01, LOW_SENSITIVITY_COLUMN_RESPONSE), columns, strict=True):
        length = int(rng.integers(n_rows // 3, 2 * n_rows // 3))
        rows = slice(0, length) if rng.random() < 0.5 else slice(n_rows - length, n_rows)
        response[rows, column] *= factor
        mask[rows, column] = True

    count = max(300, int(1.2e-4 * npix))
    candidates = rng.choice(npix, size=3 * count + 2 * n_rows, replace=False)
    candidates = candidates[~(dead.ravel()[candidates] | low.ravel()[candidates])][: 3 * count]
    dead_index, low_index, hot_index = candidates[:count], candidates[count : 2 * count], candidates[2 * count :]
    flat_response = response.reshape(-1)
    flat_response[dead_index] *= rng.uniform(*DEAD_RESPONSE, size=count)
    flat_response[low_index] *= rng.uniform(*LOW_SENSITIVITY_RESPONSE, size=count)
    dead.reshape(-1)[dead_index] = True
    low.reshape(-1)[low_index] = True
    hot.reshape(-1)[hot_index] = True

    hot_rate = np.zeros(shape, dtype=np.float64)
    hot_rate[hot] = np.exp(rng.uniform(np.log(10.0), np.log(1000.0), size=int(hot.sum())))
    return DetectorDefects(response, dead, low, dust, hot, hot_rate)


def _dust(shape: tuple[int, int], rng: np.random.Generator, *, mean_bin: float) -> np.ndarray:
    """Multiplicative shadow of out-of-focus dust: darker rings 10–30 px across, a few % deep."""
    factor = np.ones(shape)
    n_rows, n_cols = shape
    number = 14
    for _ in range(number):
        radius = rng.uniform(10.0, 30.0) / mean_bin
        width = max(radius / 5.0, 1.0)
        depth = rng.uniform(0.02, 0.05)
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


def vignetting(shape: tuple[int, int]) -> np.ndarray:
    """Smooth illumination fall-off of a few % towards one corner of the frame."""
    n_rows, n_cols = shape
    y = (np.arange(n_rows)[:, None] + 0.5) / n_rows - 0.45
    x = (np.arange(n_cols)[None, :] + 0.5) / n_cols - 0.55
    return 1.0 - 0.05 * (x * x + y * y) / 0.5


def bias_pattern(shape: tuple[int, int], level_adu: float, rng: np.random.Generator) -> np.ndarray:
    """Stable bias structure (ADU) of the full rotated frame: level, column offsets and a gentle ramp."""
    n_rows, n_cols = shape
    columns = 0.8 * rng.standard_normal(n_cols)
    ramp = 2.0 * np.linspace(-0.5, 0.5, n_rows)
    return (level_adu + columns[None, :] + ramp[:, None]).astype(np.float64)


def add_photon_noise(expected: np.ndarray, rng: np.random.Generator, *, exact_below: float = 20.0) -> np.ndarray:
    """Poisson realisation of ``expected`` e⁻ (Gaussian approximation above ``exact_below``)."""
    expected = np.maximum(expected, 0.0)
    noisy = expected + np.sqrt(expected) * rng.standard_normal(expected.shape, dtype=np.float32)
    low = expected < exact_below
    noisy[low] = rng.poisson(expected[low])
    return noisy


def cosmic_rays(shape: tuple[int, int], count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices and charges (e⁻) of ``count`` short straight cosmic-ray tracks."""
    n_rows, n_cols = shape
    length = rng.integers(1, 9, size=count)
    angle = rng.uniform(0, np.pi, size=count)
    start_row = rng.uniform(0, n_rows, size=count)
    start_col = rng.uniform(0, n_cols, size=count)
    charge = np.exp(rng.uniform(np.log(300.0), np.log(20000.0), size=count))
    step = np.arange(8)[None, :]
    rows = np.floor(start_row[:, None] + step * np.sin(angle)[:, None]).astype(np.int64)
    cols = np.floor(start_col[:, None] + step * np.cos(angle)[:, None]).astype(np.int64)
    keep = (step < length[:, None]) & (rows >= 0) & (rows < n_rows) & (cols >= 0) & (cols < n_cols)
    deposit = np.broadcast_to(charge[:, None], rows.shape) * rng.uniform(0.5, 1.0, size=rows.shape)
    return (rows * n_cols + cols)[keep], deposit[keep]


def add_cosmic_rays(image: np.ndarray, rng: np.random.Generator, *, exptime: float) -> int:
    """Add cosmic-ray hits (about 25 per Mpx per 10 s) to ``image`` in place; return their number."""
    count = int(rng.poisson(2.5e-6 * image.size * max(exptime, 1.0)))
    index, charge = cosmic_rays(image.shape, count, rng)
    np.add.at(image.reshape(-1), index, charge.astype(image.dtype))
    return count


@dataclass(frozen=True)
class RawLayout:
    """Where the prepared frame sits in the rotated, binned raw frame (spec §1.5, §2.2)."""

    detector: Detector
    binning: tuple[int, int]

    @property
    def raw_shape(self) -> tuple[int, int]:
        """Binned raw shape (rows, columns) as written to disk."""
        binx, biny = self.binning
        return self.detector.raw_shape[0] // biny, self.detector.raw_shape[1] // binx

    @property
    def rotated_shape(self) -> tuple[int, int]:
        """Shape after soxspipe's ``rot90(raw, k)``."""
        rows, cols = self.raw_shape
        return (cols, rows) if self.detector.rotation_k % 2 else (rows, cols)

    @property
    def science(self) -> tuple[slice, slice]:
        """Row and column slices of the science region in the rotated frame."""
        binx, biny = self.binning
        rows = slice(self.detector.science_rows[0] // biny, self.detector.science_rows[1] // biny)
        cols = slice(self.detector.science_columns[0] // binx, self.detector.science_columns[1] // binx)
        return rows, cols

    def prepare(self, raw: np.ndarray) -> np.ndarray:
        """Rotate and trim a raw array exactly as soxspipe's preparation does (no gain applied)."""
        rows, cols = self.science
        return np.rot90(raw, self.detector.rotation_k)[rows, cols]

    def to_raw(
        self,
        prepared_electrons: np.ndarray,
        *,
        bias_adu: np.ndarray,
        gain: float,
        ron: float,
        rng: np.random.Generator,
    ) -> np.ndarray:
        """Raw uint16 ADU frame: bias + read noise everywhere, the prepared signal in the science region."""
        full = bias_adu + (ron / gain) * rng.standard_normal(self.rotated_shape, dtype=np.float32)
        rows, cols = self.science
        full[rows, cols] += prepared_electrons / gain
        raw = np.rot90(full, -self.detector.rotation_k)
        return np.clip(np.rint(raw), 0, 65535).astype(np.uint16)
