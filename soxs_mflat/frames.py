"""Reading input files and preparing raw frames (spec §2).

This module and the recipe's writer are the only places that touch disk. Reading errors a user can
fix (not FITS, truncated, missing keyword) become :class:`UserInputError` naming the file.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.utils.exceptions import AstropyUserWarning

from soxs_mflat.errors import UserInputError
from soxs_mflat.instruments import Detector
from soxs_mflat.order_table import OrderTable, from_hdulist
from soxs_mflat.sof import InputFile


@dataclass(frozen=True)
class FrameFile:
    """An input file with the header used to classify it."""

    path: Path
    tag: str | None
    header: fits.Header
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
    header: fits.Header
    path: Path


def _open_error(path: Path, error: Exception) -> UserInputError:
    return UserInputError(
        f"{path} is not a readable FITS file ({' '.join(str(error).split())}). It may be truncated or not FITS at "
        "all: re-copy it from the archive or remove it from the inputs."
    )


def read_frame_file(item: InputFile, *, data_extension: int = 0) -> FrameFile:
    """Read the classification header of one input (HDU ``data_extension``, completed by the primary)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyUserWarning)
            with fits.open(item.path, memmap=False) as hdulist:
                hdulist.verify("silentfix")
                n_hdus = len(hdulist)
                header = hdulist[0].header.copy()
                if 0 < data_extension < n_hdus:
                    extension = hdulist[data_extension].header
                    for card in header.cards:
                        if card.keyword not in extension:
                            extension.append(card)
                    header = extension.copy()
                is_table = n_hdus > 1 and isinstance(hdulist[1], fits.BinTableHDU)
                if not is_table and hdulist[0].header.get("NAXIS", 0) > 0:
                    _check_complete(hdulist)
    except (OSError, ValueError, TypeError, IndexError) as error:
        raise _open_error(item.path, error) from None
    return FrameFile(item.path, item.tag, header, n_hdus, is_table)


def _check_complete(hdulist: fits.HDUList) -> None:
    """Raise ``OSError`` if the primary image is cut short, without reading it (it is read later)."""
    info = hdulist.fileinfo(0)
    header = hdulist[0].header
    if info is None or getattr(info["file"], "compression", None):
        _ = hdulist[0].data.shape
        return
    n_bytes = abs(int(header["BITPIX"])) // 8 * math.prod(int(header[f"NAXIS{i}"]) for i in range(1, header["NAXIS"] + 1))
    size = os.path.getsize(info["filename"])
    if size < info["datLoc"] + n_bytes:
        raise OSError(f"the image needs {n_bytes} bytes after the header but the file ends {info['datLoc'] + n_bytes - size} "
                      "bytes short")


def read_raw_adu(path: Path) -> np.ndarray:
    """HDU 0 pixel data in ADU, in its stored type (scaled to unsigned integers where BZERO says so).

    Raw frames are unsigned integers stored signed with BZERO = 2**(BITPIX-1) (spec §2.2): they are
    read memory-mapped and unscaled, and converted in one pass (see :func:`_unsigned`) instead of
    astropy's read, copy and subtraction (~2× less CPU). Other scalings are left to astropy.
    """
    try:
        with fits.open(path, do_not_scale_image_data=True) as hdulist:
            stored = hdulist[0].data
            if stored is None or stored.ndim != 2:
                raise UserInputError(
                    f"{path} has no 2-D image in its primary HDU. Give the raw frame as it came from the archive."
                )
            if _is_pseudo_unsigned(stored, hdulist[0].header):
                return _unsigned(stored)
        with fits.open(path, memmap=False) as hdulist:
            return hdulist[0].data
    except (OSError, ValueError, TypeError) as error:
        raise _open_error(path, error) from None


def _is_pseudo_unsigned(stored: np.ndarray, header: fits.Header) -> bool:
    """True if signed ``stored`` pixels encode unsigned ones (BSCALE 1, BZERO 2**(BITPIX-1)), which astropy
    reads as unsigned integers whatever BLANK says."""
    bits = 8 * stored.dtype.itemsize
    return stored.dtype.kind == "i" and header.get("BSCALE", 1) == 1 and header.get("BZERO", 0) == 1 << (bits - 1)


def _unsigned(stored: np.ndarray) -> np.ndarray:
    """The native unsigned image of signed big-endian ``stored`` pixels plus 2**(bits-1).

    Adding 2**(bits-1) modulo 2**bits is flipping the sign bit: the same values as astropy's
    scaling, made while converting to native byte order.
    """
    unsigned = np.dtype(f"uint{8 * stored.dtype.itemsize}")
    sign_bit = unsigned.type(1 << (8 * stored.dtype.itemsize - 1))
    return np.bitwise_xor(stored.view(unsigned.newbyteorder(">")), sign_bit, dtype=unsigned)


def read_prepared(path: Path) -> Prepared:
    """A prepared frame or image product: FLUX (HDU 0), QUAL and ERRS extensions (spec §2.3).

    The file is memory-mapped (astropy's default), so each image is read once, by its conversion to
    a native array, rather than read and then converted (~40% less CPU).
    """
    try:
        with fits.open(path) as hdulist:
            header = hdulist[0].header.copy()
            data = np.asarray(hdulist[0].data, dtype=np.float32)
            mask = np.asarray(hdulist["QUAL"].data, dtype=bool) if "QUAL" in hdulist else np.zeros(data.shape, bool)
            if "ERRS" in hdulist:
                uncertainty = np.asarray(hdulist["ERRS"].data, dtype=np.float32)
            else:
                uncertainty = np.zeros(data.shape, np.float32)
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise _open_error(path, error) from None
    if data.ndim != 2 or uncertainty.shape != data.shape or mask.shape != data.shape:
        raise UserInputError(f"{path} does not hold matching FLUX, QUAL and ERRS images. Re-create it with its recipe.")
    return Prepared(data, uncertainty, mask, header, path)


def read_order_table(path: Path) -> OrderTable:
    """An order table (spec §4) from disk."""
    try:
        with fits.open(path, memmap=False) as hdulist:
            return from_hdulist(hdulist)
    except (OSError, ValueError, TypeError, KeyError, IndexError) as error:
        raise UserInputError(
            f"{path} is not a valid order table ({' '.join(str(error).split())}). Give the ORDER_TAB product of "
            "soxs_order_centres for this arm."
        ) from None


def read_bad_pixel_map(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A static bad-pixel map (non-zero = bad) that must match the prepared frame's shape."""
    try:
        with fits.open(path, memmap=False) as hdulist:
            data = np.asarray(hdulist[0].data)
    except (OSError, ValueError, TypeError) as error:
        raise _open_error(path, error) from None
    if data.shape != shape:
        raise UserInputError(
            f"The bad-pixel map {path} has shape {data.shape} but the prepared frames are {shape}. Give the map made "
            "for this arm and binning."
        )
    return data != 0


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
