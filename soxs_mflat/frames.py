"""Reading input files and preparing raw frames (spec §2).

This module and the recipe's writer are the only places that touch disk. Reading errors a user can
fix (not FITS, truncated, missing keyword) become :class:`UserInputError` naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from soxs_mflat.errors import UserInputError
from soxs_mflat.fitsio import FitsFile, Header
from soxs_mflat.instruments import Detector
from soxs_mflat.order_table import OrderTable, from_tables
from soxs_mflat.sof import InputFile

READ_ERRORS = (OSError, ValueError, TypeError, KeyError, IndexError)


@dataclass(frozen=True)
class FrameFile:
    """An input file with the header used to classify it."""

    path: Path
    tag: str | None
    header: Header
    n_hdus: int
    is_table: bool

    @property
    def is_prepared(self) -> bool:
        """Already prepared, or a product: more than one HDU or an ``SXSPRE`` card (spec §2.1)."""
        return self.n_hdus > 1 or "SXSPRE" in self.header


@dataclass
class Prepared:
    """A frame in electrons with its 1σ uncertainty and bad-pixel mask (float32, float32, bool)."""

    data: np.ndarray
    uncertainty: np.ndarray
    mask: np.ndarray
    header: Header
    path: Path


def _open_error(path: Path, error: Exception) -> UserInputError:
    return UserInputError(
        f"{path} is not a readable FITS file ({' '.join(str(error).split())}). It may be truncated or not FITS at "
        "all: re-copy it from the archive or remove it from the inputs."
    )


def _open(path: Path) -> FitsFile:
    """The file's HDUs (headers read, every data unit checked to be complete)."""
    try:
        return FitsFile.open(path)
    except READ_ERRORS as error:
        raise _open_error(path, error) from None


def read_frame_file(item: InputFile, *, data_extension: int = 0) -> FrameFile:
    """Read the classification header of one input (HDU ``data_extension``, completed by the primary)."""
    fits_file = _open(item.path)
    n_hdus = len(fits_file)
    header = fits_file.header(0).copy()
    if 0 < data_extension < n_hdus:
        extension = fits_file.header(data_extension).copy()
        for card in header.cards:
            if not card.is_commentary and card.keyword not in extension:
                extension.append(card)
        header = extension
    return FrameFile(item.path, item.tag, header, n_hdus, n_hdus > 1 and fits_file.is_table(1))


def read_raw_adu(path: Path) -> np.ndarray:
    """HDU 0 pixel data in ADU, scaled as astropy scales it (see :meth:`FitsFile.image`).

    Raw frames are unsigned integers stored signed with BZERO = 2**(BITPIX-1) (spec §2.2): they are
    read memory-mapped and converted in one pass to native unsigned integers.
    """
    fits_file = _open(path)
    try:
        image = fits_file.image(0)
    except READ_ERRORS as error:
        raise _open_error(path, error) from None
    if image is None or image.ndim != 2:
        raise UserInputError(f"{path} has no 2-D image in its primary HDU. Give the raw frame as it came from the archive.")
    return image


def read_prepared(path: Path) -> Prepared:
    """A prepared frame or image product: FLUX (HDU 0), QUAL and ERRS extensions (spec §2.3).

    The file is memory-mapped, so each image is read once, by its conversion to a native array.
    """
    fits_file = _open(path)
    try:
        data = np.asarray(fits_file.image(0), dtype=np.float32)
        qual, errs = fits_file.index("QUAL"), fits_file.index("ERRS")
        mask = np.zeros(data.shape, bool) if qual is None else np.asarray(fits_file.image(qual), dtype=bool)
        uncertainty = np.zeros(data.shape, np.float32) if errs is None else np.asarray(fits_file.image(errs), np.float32)
    except READ_ERRORS as error:
        raise _open_error(path, error) from None
    if data.ndim != 2 or uncertainty.shape != data.shape or mask.shape != data.shape:
        raise UserInputError(f"{path} does not hold matching FLUX, QUAL and ERRS images. Re-create it with its recipe.")
    return Prepared(data, uncertainty, mask, fits_file.header(0).copy(), path)


def read_order_table(path: Path) -> OrderTable:
    """An order table (spec §4) from disk: HDU 1 and HDU 2 by position, as soxspipe reads them."""
    try:
        fits_file = FitsFile.open(path)
        return from_tables(fits_file.header(0).copy(), fits_file.table(1), fits_file.table(2))
    except READ_ERRORS as error:
        raise UserInputError(
            f"{path} is not a valid order table ({' '.join(str(error).split())}). Give the ORDER_TAB product of "
            "soxs_order_centres for this arm."
        ) from None


def read_bad_pixel_map(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A static bad-pixel map (non-zero = bad) that must match the prepared frame's shape."""
    fits_file = _open(path)
    try:
        image = fits_file.image(0)
    except READ_ERRORS as error:
        raise _open_error(path, error) from None
    data_shape = None if image is None else image.shape
    if data_shape != shape:
        raise UserInputError(
            f"The bad-pixel map {path} has shape {data_shape} but the prepared frames are {shape}. Give the map made "
            "for this arm and binning."
        )
    return image != 0


def science_region(raw_adu: np.ndarray, *, detector: Detector, binning: tuple[int, int]) -> np.ndarray:
    """View of a raw frame rotated to the pipeline orientation and trimmed to the science region."""
    binx, biny = binning
    rotated = np.rot90(raw_adu, detector.rotation_k)
    rows = slice(detector.science_rows[0] // biny, detector.science_rows[1] // biny)
    cols = slice(detector.science_columns[0] // binx, detector.science_columns[1] // binx)
    trimmed = rotated[rows, cols]
    expected = detector.prepared_shape(binx, biny)
    if trimmed.shape != expected:
        raise UserInputError(
            f"A raw frame of shape {raw_adu.shape} cannot be trimmed to the {detector.arm} science region "
            f"{expected} at binning {binx}x{biny}. Check that the file is an untouched raw frame of this arm."
        )
    return trimmed


def prepare_flux(
    raw_adu: np.ndarray,
    *,
    detector: Detector,
    binning: tuple[int, int],
    gain: float,
    out: np.ndarray,
    static_mask: np.ndarray | None = None,
) -> np.ndarray:
    """Write the science region in electrons into ``out`` (float32, prepared shape); return the mask.

    Saturated raw pixels (at or above the detector's saturation level, in ADU) are masked too —
    soxspipe ignores saturation. No uncertainty image is made: flats going into the stack carry a
    noise model instead, and writing straight into the caller's array avoids full-frame copies.
    """
    trimmed = science_region(raw_adu, detector=detector, binning=binning)
    np.multiply(trimmed, np.float32(gain), out=out, casting="unsafe")
    mask = np.zeros(out.shape, dtype=bool) if static_mask is None else static_mask.copy()
    if detector.saturation_adu is not None:
        mask |= trimmed >= detector.saturation_adu
    return mask


def prepare_raw(
    raw_adu: np.ndarray,
    *,
    detector: Detector,
    binning: tuple[int, int],
    gain: float,
    ron: float,
    is_bias: bool = False,
    static_mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rotate, trim, convert to electrons; build the uncertainty and the mask (spec §2.2).

    Returns float32 data (e⁻), float32 1σ uncertainty (e⁻), bool mask (see :func:`prepare_flux`).
    """
    data = np.empty(detector.prepared_shape(*binning), dtype=np.float32)
    mask = prepare_flux(raw_adu, detector=detector, binning=binning, gain=gain, out=data, static_mask=static_mask)
    if is_bias:
        uncertainty = np.full(data.shape, ron, dtype=np.float32)
    else:
        uncertainty = np.maximum(data, np.float32(0))
        uncertainty += np.float32(ron) ** 2
        np.sqrt(uncertainty, out=uncertainty)
    return data, uncertainty, mask
