"""Detector effects: vignetting, bias structure, noise, cosmic rays and the raw-frame layout.

Everything is built in prepared-frame coordinates (rotated and trimmed, at the set's binning, in
electrons) and only at the end embedded in the full rotated frame with its pre/overscan and turned
back into the raw orientation with ``np.rot90(full, -k)`` — the inverse of soxspipe's preparation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from soxs_mflat.instruments import Detector
from soxs_mflat.simulate.variation import Variation

BIAS_DARK_TIME = 3.0
"""Effective dark time (s) of a bias frame: how much hot-pixel charge a zero-second frame collects."""

def vignetting(shape: tuple[int, int]) -> np.ndarray:
    """Smooth illumination fall-off of a few % towards one corner of the frame."""
    n_rows, n_cols = shape
    y = (np.arange(n_rows)[:, None] + 0.5) / n_rows - 0.45
    x = (np.arange(n_cols)[None, :] + 0.5) / n_cols - 0.55
    return 1.0 - 0.05 * (x * x + y * y) / 0.5


def bias_pattern(
    shape: tuple[int, int],
    level_adu: float,
    rng: np.random.Generator,
    *,
    variation: Variation | None = None,
    extra_rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Stable bias structure (ADU) of the full rotated frame: level, column offsets and a gentle ramp.

    A varied detector (``extra_rng`` given) adds row offsets and per-amplifier levels: the frame is
    split across its columns into ``bias_amplifiers`` equal read-out regions.
    """
    variation = variation or Variation.nominal()
    n_rows, n_cols = shape
    columns = variation.bias_column_rms * rng.standard_normal(n_cols)
    ramp = 2.0 * np.linspace(-0.5, 0.5, n_rows)
    pattern = (level_adu + columns[None, :] + ramp[:, None]).astype(np.float64)
    if extra_rng is not None:
        pattern += variation.bias_row_rms * extra_rng.standard_normal(n_rows)[:, None]
        steps = variation.bias_amplifier_step * extra_rng.standard_normal(variation.bias_amplifiers)
        amplifier = np.arange(n_cols) * variation.bias_amplifiers // n_cols
        pattern += (steps - steps.mean())[amplifier][None, :]
    return pattern


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


def add_cosmic_rays(image: np.ndarray, rng: np.random.Generator, *, exptime: float, rate_factor: float = 1.0) -> int:
    """Add cosmic-ray hits (about 25 per Mpx per 10 s, times ``rate_factor``) to ``image`` in place; return their number."""
    count = int(rng.poisson(2.5e-6 * image.size * max(exptime, 1.0) * rate_factor))
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
