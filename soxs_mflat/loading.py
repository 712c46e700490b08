"""Reading a verified set into arrays: prepared calibrations, how each flat is detrended, the flat cube.

With :mod:`soxs_mflat.frames` (which reads single files) this is the recipe's reading side; every
array it returns is in the BA orientation the steps work in (see :mod:`soxs_mflat.footprints`).
Untouched 8/16-bit raw flats are held as stored, half the memory of float32 or less, and prepared,
detrended and normalised block by block whenever a step reads the cube.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from soxs_mflat.detrend import (
    Calibration,
    Detrending,
    NoiseModel,
    bias_detrending,
    dark_detrending,
    dark_scale,
    lowest_dark,
    nearest_in_time,
)
from soxs_mflat.errors import UserInputError
from soxs_mflat.footprints import contiguous, copy_tiled, from_ba, shape_ba, to_ba
from soxs_mflat.frames import (
    FrameFile,
    Prepared,
    prepare_flux,
    prepare_raw,
    read_prepared,
    read_raw_adu,
    science_region,
)
from soxs_mflat.inputs import LampSet, VerifiedInputs
from soxs_mflat.products import image_hdus, write_hdus
from soxs_mflat.stacking import FlatCube, sigma_clipped_stack

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class LampCalibrations:
    """How the flats of one lamp are detrended, and the calibration frames to search for hot pixels."""

    detrendings: tuple[Detrending, ...]
    """One per flat (often the same object for all)."""
    bias: Calibration | None
    """The master bias (UVB/VIS), searched for hot pixels."""
    hot_search_dark: Calibration | None
    """The dark (NIR, scaled to the flats' exposure) in which hot pixels are searched."""

    @property
    def noise(self) -> list[NoiseModel]:
        """The noise model of each detrended flat."""
        return [d.noise for d in self.detrendings]

    def hot_search_frames(self) -> dict[str, np.ndarray | None]:
        """The images and uncertainties searched for hot pixels, as keyword arguments of
        :func:`soxs_mflat.badpixels.calibration_hot_pixels`."""
        bias, dark = self.bias, self.hot_search_dark
        return {"bias_ba": None if bias is None else bias.data, "bias_err_ba": None if bias is None else bias.uncertainty,
                "dark_ba": None if dark is None else dark.data, "dark_err_ba": None if dark is None else dark.uncertainty}


def prepare_frame(frame: FrameFile, inputs: VerifiedInputs, static_mask: np.ndarray | None) -> Prepared:
    """A raw frame prepared (trimmed, rotated, in e⁻ with uncertainty and mask), or a prepared product read back."""
    if frame.is_prepared:
        prepared = read_prepared(frame.path)
        expected = inputs.detector.prepared_shape(*inputs.binning)
        if prepared.data.shape != expected:
            raise UserInputError(
                f"{frame.path} has shape {prepared.data.shape} but {inputs.arm} frames at binning "
                f"{inputs.binning[0]}x{inputs.binning[1]} are {expected}. Give products made for this arm and binning."
            )
        return prepared
    data, uncertainty, mask = prepare_raw(read_raw_adu(frame.path), detector=inputs.detector, binning=inputs.binning,
                                          gain=inputs.gain, ron=inputs.ron, static_mask=static_mask)
    return Prepared(data, uncertainty, mask, frame.header, frame.path)


def load_calibration(frame: FrameFile, inputs: VerifiedInputs, static_mask: np.ndarray | None) -> Calibration:
    """A master bias, master dark or dark frame as a :class:`Calibration` (BA orientation)."""
    prepared = prepare_frame(frame, inputs, static_mask)
    axis = inputs.detector.fitted_axis
    exptime = float(frame.header.get(inputs.keywords.exptime, 0.0) or 0.0)
    data, uncertainty, mask = (contiguous(to_ba(image, axis)) for image in (prepared.data, prepared.uncertainty,
                                                                             prepared.mask))
    return Calibration(data, uncertainty, mask, exptime)


def compact_dtype(frames: tuple[FrameFile, ...]) -> np.dtype | None:
    """The integer type every frame's raw image reads as, if they all share one of at most 16 bits
    and are read unscaled (no BSCALE, no BLANK, BZERO only as the unsigned-integer offset)."""
    kinds = set()
    for frame in frames:
        header = frame.header
        if frame.is_prepared or "BLANK" in header or float(header.get("BSCALE", 1)) != 1:
            return None
        kinds.add((int(header.get("BITPIX", 0)), float(header.get("BZERO", 0))))
    if len(kinds) != 1:
        return None
    return {(8, 0.0): np.dtype(np.uint8), (16, 0.0): np.dtype(np.int16), (16, 32768.0): np.dtype(np.uint16)}.get(kinds.pop())


def load_flat_cube(frames: tuple[FrameFile, ...], inputs: VerifiedInputs, static_mask: np.ndarray | None,
                   detrendings: tuple[Detrending, ...], *, save_prepared_to: Path | None = None) -> FlatCube:
    """The frames' science regions in one cube (BA orientation), detrended by ``detrendings`` (one per
    frame, or none) when read. ``save_prepared_to``: also write each prepared frame there as ``<raw>_pre.fits``."""
    detector, axis = inputs.detector, inputs.detector.fitted_axis
    shape = shape_ba(detector.prepared_shape(*inputs.binning), axis)
    compact = None if save_prepared_to is not None else compact_dtype(frames)
    stored = np.empty((len(frames), *shape), dtype=compact or np.float32)
    for index, frame in enumerate(frames):
        if compact is not None:
            region = science_region(read_raw_adu(frame.path), detector=detector, binning=inputs.binning)
            copy_tiled(from_ba(stored[index], axis), region, casting="safe")
        elif frame.is_prepared or save_prepared_to is not None:
            prepared = prepare_frame(frame, inputs, static_mask)
            if save_prepared_to is not None and not frame.is_prepared:
                _save_prepared(prepared, save_prepared_to)
            copy_tiled(from_ba(stored[index], axis), prepared.data)
            stored[index][to_ba(prepared.mask, axis) | ~np.isfinite(stored[index])] = np.nan
        else:
            mask = prepare_flux(read_raw_adu(frame.path), detector=detector, binning=inputs.binning, gain=inputs.gain,
                                out=from_ba(stored[index], axis), static_mask=static_mask)
            stored[index][to_ba(mask, axis) | ~np.isfinite(stored[index])] = np.nan
    per_frame = detrendings or (None,) * len(frames)
    static_ba = to_ba(static_mask, axis) if compact is not None and static_mask is not None else None
    masks = []
    for detrending in per_frame:
        own = None if detrending is None else detrending.mask
        masks.append(static_ba if own is None else (own if static_ba is None else own | static_ba))
    return FlatCube(stored, scale=inputs.gain if compact is not None else 1.0,
                    offsets=tuple(None if d is None else d.offset for d in per_frame), masks=tuple(masks),
                    saturation=detector.saturation_adu if compact is not None else None)


def _save_prepared(prepared: Prepared, folder: Path) -> None:
    stem = prepared.path.name.removesuffix(".Z").removesuffix(".gz").removesuffix(".fits")
    header = prepared.header.copy()
    header["SXSPRE"] = (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()), "UTC timestamp")
    write_hdus(image_hdus(prepared.data, prepared.mask, prepared.uncertainty, header), folder / f"{stem}_pre.fits")


def combined_dark(inputs: VerifiedInputs, static_mask: np.ndarray | None, *, clipping_sigma: float,
                  clipping_iterations: int) -> Calibration:
    """Clipped mean of the lamp-off/dark frames: a cleaner dark than any single one."""
    cube = load_flat_cube(inputs.darks, inputs, static_mask, ())
    exptimes = [float(frame.header.get(inputs.keywords.exptime, 0.0) or 0.0) for frame in inputs.darks]
    stacked = sigma_clipped_stack(cube, [NoiseModel(ron=inputs.ron)] * cube.n_flats, sigma=clipping_sigma,
                                  iterations=clipping_iterations)
    del cube
    data = np.where(stacked.mask, np.float32(0.0), stacked.data)
    uncertainty = np.where(stacked.mask, np.float32(inputs.ron), stacked.uncertainty)
    return Calibration(data, uncertainty, stacked.mask, float(np.mean(exptimes)))


def lamp_calibrations(lamp_set: LampSet, inputs: VerifiedInputs, static_mask: np.ndarray | None, *,
                      clipping_sigma: float, clipping_iterations: int) -> LampCalibrations:
    """Prepare the bias or darks of one lamp's flats and decide how each flat is detrended.

    UVB/VIS: the master bias (and a master dark scaled by exposure time, if given) from every flat.
    NIR: a master dark from every flat; else as many lamp-off/dark frames as flats are combined into
    one clean dark; else each flat gets the dark nearest in time, and hot pixels are searched in the
    clipped mean of the darks (≥ 3) or their per-pixel lowest (2).
    """
    n_flats = len(lamp_set.flats)
    clipping = {"clipping_sigma": clipping_sigma, "clipping_iterations": clipping_iterations}
    if inputs.master_bias is not None:
        bias = load_calibration(inputs.master_bias, inputs, static_mask)
        dark = None
        if inputs.master_dark is not None:
            dark = load_calibration(inputs.master_dark, inputs, static_mask)
            LOGGER.info("Master dark %s subtracted too, scaled by exposure time", inputs.master_dark.path.name)
        detrending = bias_detrending(bias, ron=inputs.ron, dark=dark, flat_exptime=lamp_set.exptime)
        return LampCalibrations((detrending,) * n_flats, bias, None)

    def scaled(dark: Calibration) -> Calibration:
        return dark.scaled(dark_scale(instrument=inputs.instrument, flat_exptime=lamp_set.exptime,
                                      dark_exptime=dark.exptime))

    if inputs.master_dark is not None or (len(inputs.darks) == n_flats and n_flats > 1):
        if inputs.master_dark is not None:
            LOGGER.info("Dark: master dark %s subtracted from every flat", inputs.master_dark.path.name)
            dark = scaled(load_calibration(inputs.master_dark, inputs, static_mask))
        else:
            LOGGER.info("Dark: %d lamp-off/dark frames combined (clipped mean) and subtracted from every flat",
                        len(inputs.darks))
            dark = scaled(combined_dark(inputs, static_mask, **clipping))
        return LampCalibrations((dark_detrending(dark, ron=inputs.ron, shared=True),) * n_flats, None, dark)

    darks = [scaled(load_calibration(frame, inputs, static_mask)) for frame in inputs.darks]
    mjds = np.array([float(frame.header[inputs.keywords.mjd_obs]) for frame in inputs.darks])
    chosen = [nearest_in_time(float(flat.header[inputs.keywords.mjd_obs]), mjds) for flat in lamp_set.flats]
    LOGGER.info("Dark: nearest in MJD-OBS for each flat (%d darks for %d flats): %s", len(darks), n_flats,
                ", ".join(inputs.darks[i].path.name for i in chosen))
    shared = len(set(chosen)) == 1
    by_dark = [dark_detrending(dark, ron=inputs.ron, shared=shared) for dark in darks]
    if shared:
        hot_dark = darks[chosen[0]]
    elif len(inputs.darks) >= 3:
        LOGGER.info("Hot pixels searched in the clipped mean of the %d darks", len(inputs.darks))
        hot_dark = scaled(combined_dark(inputs, static_mask, **clipping))
    else:
        LOGGER.info("Hot pixels searched in the per-pixel lowest of the %d darks", len(darks))
        hot_dark = lowest_dark(darks)
    return LampCalibrations(tuple(by_dark[i] for i in chosen), None, hot_dark)
