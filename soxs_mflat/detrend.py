"""Bias and dark removal (spec §3.4), with a noise model that follows each frame.

A detrended flat keeps its data (e⁻) and its mask; its variance is described by a
:class:`NoiseModel` rather than a stored array, so the stack can be built without holding a second
cube of uncertainties in memory: ``variance = max(data + photon_pedestal, 0) + ron² + own_variance``,
plus ``common_variance`` shared by every flat (a master bias or one combined dark subtracted from
all of them, whose noise does not average down in the stack).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np


@dataclass(frozen=True)
class Calibration:
    """A bias or dark image in e⁻ with its 1σ uncertainty and mask."""

    data: np.ndarray
    uncertainty: np.ndarray
    mask: np.ndarray
    exptime: float = 0.0

    @cached_property
    def variance(self) -> np.ndarray:
        """Squared uncertainty, computed once and shared by every flat it is subtracted from."""
        return np.square(self.uncertainty, dtype=np.float32)

    def scaled(self, scale: float) -> Calibration:
        """This calibration multiplied by ``scale`` (itself when ``scale`` is 1)."""
        if scale == 1.0:
            return self
        factor = np.float32(scale)
        return Calibration(self.data * factor, self.uncertainty * factor, self.mask, self.exptime * scale)


@dataclass(frozen=True)
class NoiseModel:
    """How to compute a detrended flat's variance from its data (see module docstring)."""

    ron: float
    photon_pedestal: np.ndarray | float = 0.0
    own_variance: np.ndarray | float = 0.0
    common_variance: np.ndarray | float = 0.0

    def variance(self, data: np.ndarray, rows: slice = slice(None), select: np.ndarray | None = None) -> np.ndarray:
        """Variance (e⁻²) of the frame's own noise (excluding ``common_variance``) where its rows
        ``rows`` (and, if given, the pixels ``select`` of those rows) hold ``data``."""
        pedestal = _pixels(self.photon_pedestal, rows, select)
        variance = np.add(data, pedestal, dtype=np.float32)
        np.maximum(variance, np.float32(0), out=variance)
        variance += np.float32(self.ron**2)
        variance += _pixels(self.own_variance, rows, select)
        return variance

    def common(self, rows: slice = slice(None), select: np.ndarray | None = None) -> np.ndarray | float:
        """The variance shared by every flat, on rows ``rows`` (pixels ``select`` of them if given)."""
        return _pixels(self.common_variance, rows, select)


def _pixels(value: np.ndarray | float, rows: slice, select: np.ndarray | None) -> np.ndarray | float:
    """Rows ``rows`` of a per-pixel array (only pixels ``select`` of them if given); a scalar as it is."""
    if not (isinstance(value, np.ndarray) and value.ndim == 2):
        return value
    return value[rows] if select is None else value[rows][select]


def subtract_bias(
    flat: np.ndarray,
    mask: np.ndarray,
    bias: Calibration,
    *,
    ron: float,
    dark: Calibration | None = None,
    flat_exptime: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, NoiseModel]:
    """UVB/VIS: subtract the master bias, and an optional master dark scaled by exposure time, from
    ``flat`` in place (it is returned).

    The bias pedestal is not photon noise, so the photon term uses the bias-subtracted signal
    (spec §3.4 step 1). A master dark still holds the pedestal, so its dark current is
    ``(dark − bias) × t_flat / t_dark``.
    """
    data = flat
    data -= bias.data
    out_mask = mask | bias.mask
    common = bias.variance
    if dark is not None:
        scale = flat_exptime / dark.exptime if dark.exptime > 0 else 1.0
        data -= (dark.data - bias.data) * np.float32(scale)
        out_mask |= dark.mask
        common = common + dark.variance * np.float32(scale**2)
    return data, out_mask, NoiseModel(ron=ron, common_variance=common)


def subtract_dark(
    flat: np.ndarray,
    mask: np.ndarray,
    dark: Calibration,
    *,
    ron: float,
    shared: bool,
) -> tuple[np.ndarray, np.ndarray, NoiseModel]:
    """NIR: subtract a dark or lamp-off frame (already scaled to the flat's exposure time) from
    ``flat`` in place (it is returned).

    The dark's counts were photons (thermal background, dark current), so they stay in the photon
    term. ``shared`` says whether the same dark is subtracted from every flat (then its noise is
    common to the stack). The noise model refers to the dark's arrays without copying them.
    """
    noise = NoiseModel(
        ron=ron,
        photon_pedestal=dark.data,
        own_variance=0.0 if shared else dark.variance,
        common_variance=dark.variance if shared else 0.0,
    )
    flat -= dark.data
    return flat, mask | dark.mask, noise


def nearest_in_time(flat_mjd: float, dark_mjds: np.ndarray) -> int:
    """Index of the dark closest in MJD-OBS to a flat."""
    return int(np.argmin(np.abs(np.asarray(dark_mjds, dtype=float) - flat_mjd)))


def dark_scale(*, instrument: str, flat_exptime: float, dark_exptime: float) -> float:
    """Exposure-time scaling of a NIR dark: X-shooter scales when times differ by > 1 ms; SOXS never."""
    if instrument == "xsh" and dark_exptime > 0 and abs(flat_exptime - dark_exptime) > 1e-3:
        return flat_exptime / dark_exptime
    return 1.0
