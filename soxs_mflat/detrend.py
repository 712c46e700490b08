"""Bias and dark removal (spec §3.4), with a noise model that follows each frame.

Flats are detrended on demand, row block by row block, while they are stacked (see
:class:`soxs_mflat.stacking.FlatCube`); what that needs of a calibration is a :class:`Detrending`:
the image to subtract, the pixels it masks and a :class:`NoiseModel`. The variance of a detrended
flat is computed from its data rather than stored, so no cube of uncertainties is ever held:
``variance = max(data + photon_pedestal, 0) + ron² + own_sigma²``, plus ``common_sigma²`` shared by
every flat (a master bias or one combined dark subtracted from all of them, whose noise does not
average down in the stack).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Calibration:
    """A bias or dark image in e⁻ with its 1σ uncertainty and mask."""

    data: np.ndarray
    uncertainty: np.ndarray
    mask: np.ndarray
    exptime: float = 0.0

    def scaled(self, scale: float) -> Calibration:
        """This calibration multiplied by ``scale`` (itself when ``scale`` is 1)."""
        if scale == 1.0:
            return self
        factor = np.float32(scale)
        return Calibration(self.data * factor, self.uncertainty * factor, self.mask, self.exptime * scale)


def lowest_dark(darks: Sequence[Calibration]) -> Calibration:
    """The per-pixel lowest of ``darks`` (scaled alike), with the uncertainty of the dark it came from and
    the masks OR-ed: the image in which to look for hot pixels when each flat has its own dark.

    A hot pixel is high in every dark; a cosmic ray or a noise spike in one of them is not.
    """
    if len(darks) == 1:
        return darks[0]
    data, uncertainty, mask = darks[0].data.copy(), darks[0].uncertainty.copy(), darks[0].mask.copy()
    for dark in darks[1:]:
        lower = dark.data < data
        np.copyto(data, dark.data, where=lower)
        np.copyto(uncertainty, dark.uncertainty, where=lower)
        mask |= dark.mask
    return Calibration(data, uncertainty, mask, darks[0].exptime)


@dataclass(frozen=True)
class NoiseModel:
    """How to compute a detrended flat's variance from its data (see module docstring)."""

    ron: float
    photon_pedestal: np.ndarray | float = 0.0
    own_sigma: np.ndarray | float = 0.0
    common_sigma: np.ndarray | float = 0.0

    def variance(self, data: np.ndarray, rows: slice = slice(None), select: np.ndarray | None = None, *,
                 out: np.ndarray | None = None) -> np.ndarray:
        """Variance (e⁻²) of the frame's own noise (excluding the common part) where its rows
        ``rows`` (and, if given, the pixels ``select`` of those rows) hold ``data``; written into
        ``out`` (which may be ``data``) if given."""
        pedestal = pick_pixels(self.photon_pedestal, rows, select)
        if _nonzero(pedestal):
            data = np.add(data, pedestal, out=out, dtype=np.float32)
        variance = np.maximum(data, np.float32(0), out=out, dtype=np.float32)
        variance += np.float32(self.ron**2)
        own_sigma = pick_pixels(self.own_sigma, rows, select)
        if _nonzero(own_sigma):
            variance += np.square(own_sigma, dtype=np.float32)
        return variance

    def common(self, rows: slice = slice(None), select: np.ndarray | None = None) -> np.ndarray | float:
        """The variance shared by every flat, on rows ``rows`` (pixels ``select`` of them if given)."""
        return np.square(pick_pixels(self.common_sigma, rows, select), dtype=np.float32)

    def picked(self, rows: slice, select: np.ndarray | None = None) -> NoiseModel:
        """This model on rows ``rows`` only (pixels ``select`` of them if given), its images flattened."""

        def pick(image: np.ndarray | float) -> np.ndarray | float:
            picked = pick_pixels(image, rows, select)
            return picked.reshape(-1) if isinstance(picked, np.ndarray) else picked

        return NoiseModel(self.ron, pick(self.photon_pedestal), pick(self.own_sigma), pick(self.common_sigma))


def _nonzero(value: np.ndarray | float) -> bool:
    """Whether ``value`` is an array or a non-zero scalar (adding it is not a no-op)."""
    return isinstance(value, np.ndarray) or value != 0


@dataclass(frozen=True)
class Detrending:
    """How a flat is detrended: ``offset`` (e⁻) is subtracted, ``mask`` marks the pixels the
    calibration cannot correct, ``noise`` describes the result's variance."""

    offset: np.ndarray
    mask: np.ndarray
    noise: NoiseModel


def pick_pixels(value: np.ndarray | float, rows: slice, select: np.ndarray | None) -> np.ndarray | float:
    """Rows ``rows`` of a per-pixel array (only pixels ``select`` of them if given); a scalar as it is."""
    if not (isinstance(value, np.ndarray) and value.ndim == 2):
        return value
    return value[rows] if select is None else value[rows][select]


def bias_detrending(
    bias: Calibration,
    *,
    ron: float,
    dark: Calibration | None = None,
    flat_exptime: float = 0.0,
) -> Detrending:
    """UVB/VIS: subtract the master bias, and an optional master dark scaled by exposure time.

    The bias pedestal is not photon noise, so the photon term uses the bias-subtracted signal
    (spec §3.4 step 1). A master dark still holds the pedestal, so its dark current is
    ``(dark − bias) × t_flat / t_dark``.
    """
    if dark is None:
        return Detrending(bias.data, bias.mask, NoiseModel(ron=ron, common_sigma=bias.uncertainty))
    scale = np.float32(flat_exptime / dark.exptime if dark.exptime > 0 else 1.0)
    offset = bias.data + (dark.data - bias.data) * scale
    common = np.sqrt(np.square(bias.uncertainty) + np.square(dark.uncertainty * scale))
    return Detrending(offset, bias.mask | dark.mask, NoiseModel(ron=ron, common_sigma=common))


def dark_detrending(dark: Calibration, *, ron: float, shared: bool) -> Detrending:
    """NIR: subtract a dark or lamp-off frame (already scaled to the flat's exposure time).

    The dark's counts were photons (thermal background, dark current), so they stay in the photon
    term. ``shared`` says whether the same dark is subtracted from every flat (then its noise is
    common to the stack). Nothing is copied: the model refers to the dark's own arrays.
    """
    noise = NoiseModel(
        ron=ron,
        photon_pedestal=dark.data,
        own_sigma=0.0 if shared else dark.uncertainty,
        common_sigma=dark.uncertainty if shared else 0.0,
    )
    return Detrending(dark.data, dark.mask, noise)


def nearest_in_time(flat_mjd: float, dark_mjds: np.ndarray) -> int:
    """Index of the dark closest in MJD-OBS to a flat."""
    return int(np.argmin(np.abs(np.asarray(dark_mjds, dtype=float) - flat_mjd)))


def dark_scale(*, instrument: str, flat_exptime: float, dark_exptime: float) -> float:
    """Exposure-time scaling of a NIR dark: X-shooter scales when times differ by > 1 ms; SOXS never."""
    if instrument == "xsh" and dark_exptime > 0 and abs(flat_exptime - dark_exptime) > 1e-3:
        return flat_exptime / dark_exptime
    return 1.0
