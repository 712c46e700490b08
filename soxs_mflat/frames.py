"""Reading input files and preparing raw frames (spec §2).

This module and the recipe's writer are the only places that touch disk; FITS is read with
``astropy.io.fits``. Reading errors a user can fix (not FITS, truncated, missing keyword) become
:class:`UserInputError` naming the file. Header cards astropy must repair are repaired by astropy
when an input is classified, and each repair is logged, so that no product copies a broken card.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.io.fits.verify import VerifyError
from astropy.utils.exceptions import AstropyUserWarning

from soxs_mflat.errors import UserInputError
from soxs_mflat.instruments import Detector
from soxs_mflat.order_table import OrderTable, from_tables
from soxs_mflat.sof import InputFile

LOGGER = logging.getLogger(__name__)
READ_ERRORS = (OSError, EOFError, ValueError, TypeError, KeyError, IndexError, VerifyError, AstropyUserWarning)
COMMENTARY = frozenset({"", "COMMENT", "HISTORY"})
SCALING_CARDS = ("BSCALE", "BZERO", "BLANK")
"""Primary-header cards that say how stored pixels become values: they must be numbers."""
TRUNCATED = "File may have been truncated"
"""Start of the warning astropy gives while reading the headers of a file that ends too early."""


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


def _open(path: Path, *, do_not_scale_image_data: bool = False) -> fits.HDUList:
    """The file's HDUs, every header read (data memory-mapped, read when asked for).

    A compressed file whose decompressor is not installed, and a file whose first HDU is not a
    standard primary HDU (``SIMPLE = T``), are user errors naming the file. The primary HDU is
    checked before astropy looks for further HDUs: in a gzipped file with ``SIMPLE = F`` astropy
    would otherwise read the first HDU again and again without end.
    """
    try:
        hdulist = fits.open(path, do_not_scale_image_data=do_not_scale_image_data)
    except ImportError as error:
        raise UserInputError(
            f"{path} is compressed, but its decompressor is not installed ({error}). Install the project's "
            "dependencies again (pip install uncompresspy for Unix-compressed .Z files), or decompress the file "
            f"(uncompress or gunzip {path.name}) and give the decompressed file instead."
        ) from None
    except READ_ERRORS as error:
        raise _open_error(path, error) from None
    try:
        if not isinstance(hdulist[0], fits.PrimaryHDU):
            raise VerifyError("the first header is not a standard FITS primary header (SIMPLE = T)")
        len(hdulist)  # reads every header
    except (*READ_ERRORS, AttributeError) as error:
        hdulist.close()
        raise _open_error(path, error) from None
    return hdulist


def read_frame_file(item: InputFile, *, data_extension: int = 0) -> FrameFile:
    """Read the classification header of one input (HDU ``data_extension``, completed by the primary).

    The file must be complete (astropy's truncation warning is an error here). Cards astropy has to
    repair are repaired (see :func:`standard_header`).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=TRUNCATED, category=AstropyUserWarning)
        hdulist = _open(item.path)
    with hdulist:
        return frame_from_hdus(item, hdulist, data_extension=data_extension)


def frame_from_hdus(item: InputFile, hdulist: fits.HDUList, *, data_extension: int = 0) -> FrameFile:
    """The :class:`FrameFile` of an opened input (see :func:`read_frame_file`).

    Image scaling cards that are not numbers (``BZERO = 'abc'``) make the pixels unreadable: a user
    error naming the file, raised here rather than when the pixels are first read.
    """
    n_hdus = len(hdulist)
    header = hdulist[0].header
    unreadable = [card.image.strip() for card in header.cards
                  if card.keyword in SCALING_CARDS and not is_finite_number(_card_value(card))]
    if unreadable:
        raise _open_error(item.path, ValueError(f"the scaling card(s) {'; '.join(unreadable)} must be numbers"))
    if 0 < data_extension < n_hdus:
        extension = hdulist[data_extension].header.copy()
        for card in header.cards:
            if card.keyword not in COMMENTARY and card.keyword not in extension:
                extension.append(card)
        header = extension
    is_table = n_hdus > 1 and isinstance(hdulist[1], fits.BinTableHDU | fits.TableHDU)
    return FrameFile(item.path, item.tag, standard_header(header, item.path), n_hdus, is_table)


def is_finite_number(value: object) -> bool:
    """True for a finite int or float header value (a FITS logical T/F is not a number)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def header_number(frame: FrameFile, keyword: str, *, what: str, required: bool = True, integer: bool = False,
                  low: float | None = None, high: float | None = None) -> float | None:
    """The value of a numeric card of an input, for ``what`` it is needed; None if the card is absent or has
    no value and is not ``required``.

    A value that is not a finite number in ``[low, high]`` (a whole one if ``integer``), or a required
    card without a value, is a :class:`UserInputError` naming the file, the card and the value.
    """
    value = frame.header.get(keyword)
    value = None if isinstance(value, fits.card.Undefined) else value
    if value is None and not required:
        return None
    valid = is_finite_number(value) and (not integer or float(value).is_integer()) and (low is None or value >= low) and (
        high is None or value <= high)
    if not valid:
        kind = "a whole number" if integer else "a finite number"
        limits = f" from {low:g} to {high:g}" if low is not None and high is not None else (
            f" of at least {low:g}" if low is not None else "")
        shown = f"no value in {keyword}" if value is None else f"{keyword} = {value!r}"
        raise UserInputError(
            f"{frame.path} has {shown}, but {what} needs {kind}{limits} there. Use the file as delivered by the "
            "archive (headers untouched), or correct the card."
        )
    return int(value) if integer else float(value)


def _card_value(card: fits.Card) -> object:
    """The value of a card, None if astropy cannot parse it."""
    try:
        return card.value
    except (VerifyError, ValueError):
        return None


def standard_header(header: fits.Header, path: Path) -> fits.Header:
    """A copy of ``header`` whose cards all pass astropy's verification, for copying into products.

    Each card astropy can fix (a value such as ``NAN`` or ``1_000``, an unterminated string, a
    lower-case keyword) is fixed by astropy; one it cannot fix is dropped. Both are logged as warnings
    naming ``path`` and the keyword.
    """
    cards = []
    for card in header.cards:
        try:
            card.verify("exception")
            cards.append(card)
        except (VerifyError, ValueError):
            repaired = _repaired(card, path)
            if repaired is not None:
                cards.append(repaired)
    return fits.Header(cards)


def _repaired(card: fits.Card, path: Path) -> fits.Card | None:
    """The card astropy makes of ``card``, checked as it will be written; log what astropy did, or that it
    could not (None)."""
    keyword = card.keyword
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            card.verify("fix+warn")
            repaired = fits.Card.fromstring(card.image)
            repaired.verify("exception")
        except (VerifyError, ValueError) as error:
            LOGGER.warning("%s: header card %r is not standard FITS and astropy cannot repair it (%s); it is left "
                           "out of the products", path, keyword, _verify_text(str(error)))
            return None
    report = _verify_text(" ".join(str(warning.message) for warning in caught))
    LOGGER.warning("%s: header card %r repaired by astropy: %s", path, keyword, report)
    return repaired


def _verify_text(message: str) -> str:
    """An astropy verification report without its framing lines, on one line."""
    framing = ("Verification reported errors:", "Note: astropy.io.fits uses zero-based indexing.")
    for line in framing:
        message = message.replace(line, " ")
    return " ".join(message.split())


def read_raw_adu(path: Path) -> np.ndarray:
    """HDU 0 pixel data in ADU, with astropy's values and types.

    Raw frames are unsigned integers stored signed with BZERO = 2**(BITPIX-1) (spec §2.2): read
    unscaled and memory-mapped, they are converted in one pass to native unsigned integers (see
    :func:`_pseudo_unsigned`), half the time of astropy's copy-then-subtract and no more memory.
    Any other scaling (a BLANK card makes an integer image float with NaN there) is astropy's.
    """
    with _open(path, do_not_scale_image_data=True) as hdulist:
        stored = _data(hdulist, 0, path)
        pseudo = stored is not None and _is_pseudo_unsigned(stored.dtype, hdulist[0].header)
        image = _pseudo_unsigned(stored) if pseudo else None
    if not pseudo:
        with _open(path) as hdulist:
            image = _data(hdulist, 0, path)
    if image is None or image.ndim != 2:
        raise UserInputError(f"{path} has no 2-D image in its primary HDU. Give the raw frame as it came from the archive.")
    return image


def _data(hdulist: fits.HDUList, extension: int | str, path: Path) -> np.ndarray | None:
    """The data of one HDU (None if it has none); a file cut short raises a :class:`UserInputError`."""
    try:
        return hdulist[extension].data
    except READ_ERRORS as error:
        raise _open_error(path, error) from None


def _is_pseudo_unsigned(stored: np.dtype, header: fits.Header) -> bool:
    """True if astropy reads these signed pixels as unsigned: BSCALE 1 and BZERO 2**(bits-1), 16 bits or more."""
    bits = 8 * stored.itemsize
    return stored.kind == "i" and bits >= 16 and header.get("BSCALE", 1) == 1 and header.get("BZERO", 0) == 1 << (bits - 1)


def _pseudo_unsigned(stored: np.ndarray) -> np.ndarray:
    """The native unsigned image of signed big-endian ``stored`` pixels plus 2**(bits-1).

    Adding 2**(bits-1) modulo 2**bits is flipping the sign bit: the same values as astropy's
    scaling, made in one pass while converting to native byte order.
    """
    unsigned = np.dtype(f"uint{8 * stored.dtype.itemsize}")
    sign_bit = unsigned.type(1 << (8 * stored.dtype.itemsize - 1))
    return np.bitwise_xor(stored.view(unsigned.newbyteorder(">")), sign_bit, dtype=unsigned)


def read_prepared(path: Path) -> Prepared:
    """A prepared frame or image product: FLUX (HDU 0), QUAL and ERRS extensions (spec §2.3).

    The file is memory-mapped, so each image is read once, by its conversion to a native array.
    """
    with _open(path) as hdulist:
        data = np.asarray(_data(hdulist, 0, path), dtype=np.float32)
        mask = np.asarray(_data(hdulist, "QUAL", path), dtype=bool) if "QUAL" in hdulist else np.zeros(data.shape, bool)
        errs = _data(hdulist, "ERRS", path) if "ERRS" in hdulist else np.zeros(data.shape, np.float32)
        uncertainty = np.asarray(errs, dtype=np.float32)
        header = hdulist[0].header.copy()
    if data.ndim != 2 or uncertainty.shape != data.shape or mask.shape != data.shape:
        raise UserInputError(f"{path} does not hold matching FLUX, QUAL and ERRS images. Re-create it with its recipe.")
    return Prepared(data, uncertainty, mask, header, path)


def table_columns(hdu: fits.BinTableHDU | fits.TableHDU) -> dict[str, np.ndarray]:
    """The columns of a binary or ASCII table as astropy reads them (TSCAL/TZERO, TDIM, unsigned types)."""
    return {name: np.asarray(hdu.data[name]) for name in hdu.columns.names}


def read_order_table(path: Path) -> OrderTable:
    """An order table (spec §4) from disk: HDU 1 and HDU 2 by position, as soxspipe reads them.

    A table that cannot be read, or whose columns contradict each other (a degree column claiming
    coefficients the table lacks), is a user error naming the file.
    """
    with _open(path) as hdulist:
        try:
            return from_tables(hdulist[0].header.copy(), table_columns(hdulist[1]), table_columns(hdulist[2]))
        except (*READ_ERRORS, AttributeError) as error:
            raise UserInputError(
                f"{path} is not a valid order table ({' '.join(str(error).split())}). Give the ORDER_TAB product of "
                "soxs_order_centres for this arm."
            ) from None


def read_bad_pixel_map(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A static bad-pixel map (non-zero = bad) that must match the prepared frame's shape."""
    with _open(path) as hdulist:
        image = _data(hdulist, 0, path)
        data_shape = None if image is None else image.shape
        if data_shape == shape:
            return image != 0
    raise UserInputError(
        f"The bad-pixel map {path} has shape {data_shape} but the prepared frames are {shape}. Give the map made "
        "for this arm and binning."
    )


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
