"""Product names, headers and atomic writing (spec §5).

Every file is written to a hidden temporary name in its destination folder and renamed into place
only when complete, so an interrupted run never leaves a half-written or clobbered product.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from astropy.io import fits

from soxs_mflat import __version__
from soxs_mflat.frames import FrameFile
from soxs_mflat.inputs import VerifiedInputs
from soxs_mflat.qc import QCRow
from soxs_mflat.settings import BACKGROUND_KEYS, Settings
from soxs_mflat.transaction import ProductTransaction

RECIPE_ID = "soxs-mflat"
PIPE_ID = f"soxs_mflat/v{__version__}"
PRODUCTS_SUBDIR = Path("products") / "soxs_mflat"
QC_SUBDIR = Path("qc") / "soxs_mflat"
MJD_EPOCH = datetime(1858, 11, 17)
"""Day zero of the Modified Julian Date."""
REMOVED_KEYWORDS = ("ESO DPR TYPE", "ESO DPR TECH", "ESO DPR CATG", "ARCFILE")
STORAGE_KEYWORDS = ("BSCALE", "BZERO", "BLANK", "CHECKSUM", "DATASUM")
"""Cards of an input's data storage that :meth:`astropy.io.fits.Header.strip` keeps but a product must not copy."""


def night_from_sof_name(name: str) -> str | None:
    """Start-of-night date (obs time − 15 h) from a SOF name starting ``YYYYMMDDTHHMMSS`` (spec §5.5)."""
    match = re.match(r"^(\d{8}T\d{6})", name)
    if match is None:
        return None
    moment = datetime.strptime(match.group(1), "%Y%m%dT%H%M%S") - timedelta(hours=15)
    return moment.strftime("%Y-%m-%d")


def night_from_mjd(mjd: float) -> str:
    """Start-of-night date of an MJD-OBS."""
    return (MJD_EPOCH + timedelta(days=mjd) - timedelta(hours=15)).strftime("%Y-%m-%d")


@dataclass(frozen=True)
class ProductPaths:
    """Where every file of one run goes."""

    stem: str
    products_dir: Path
    qc_dir: Path
    instrument: str

    def master_flat(self, lamp: str = "") -> Path:
        """``<stem>.fits``; per-lamp flats of a stitched run carry the lamp tag."""
        return self.products_dir / f"{self.stem}{_tag(lamp)}.fits"

    def order_table(self, lamp: str = "") -> Path:
        """The order-location table: the stem with ``MFLAT`` replaced by ``OLOC``, else ``<stem>_OLOC``.

        The data organiser's SOF names contain ``MFLAT``; downstream SOFs expect the table under the
        replaced name, which is also what soxspipe writes for them. Other stems (``soxs-mflat_<ARM>_<night>``
        of a directory or list input, hand-made SOF names) keep their spelling and gain ``_OLOC``, so the
        table never shares the master flat's path, even on a case-insensitive file system.
        """
        name = self.stem.replace("MFLAT", "OLOC") if "MFLAT" in self.stem else f"{self.stem}_OLOC"
        return self.products_dir / f"{name}{_tag(lamp)}.fits"

    def background(self, lamp: str = "") -> Path:
        """Scattered-light image ``<stem>_BKGROUND[_LAMP].fits``."""
        return self.products_dir / f"{self.stem}_BKGROUND{_tag(lamp)}.fits"

    def order_location_plot(self, lamp: str = "") -> Path:
        """QC plot of the edge detections and fits."""
        return self.qc_dir / f"{self.stem}_ORD_LOC{_tag(lamp)}.pdf"

    def background_plot(self, lamp: str = "") -> Path:
        """QC plot of the scattered-light model."""
        return self.qc_dir / f"{self.stem}_BKGROUND{_tag(lamp)}.pdf"

    def qc_table(self) -> Path:
        """QC metrics as CSV."""
        return self.qc_dir / f"{self.stem}_QC.csv"

    def log(self) -> Path:
        """Recipe log."""
        return self.products_dir / f"{self.stem}.log"

    def error_log(self) -> Path:
        """Log of a run that failed after it claimed its outputs (removed by the next successful run)."""
        return self.products_dir / f"{self.stem}_ERROR.log"

    @property
    def root(self) -> Path:
        """The output root holding ``products/`` and ``qc/``."""
        return self.products_dir.parents[1]

    def every(self, lamps: Iterable[str]) -> list[Path]:
        """Every file a run of this stem may write, for the given lamp tags."""
        candidates = [self.master_flat(), self.order_table(), self.background(), self.log(), self.qc_table()]
        for lamp in lamps:
            if lamp:
                candidates += [self.master_flat(lamp), self.order_table(lamp), self.background(lamp),
                               self.order_location_plot(lamp), self.background_plot(lamp)]
        candidates += [self.order_location_plot(), self.background_plot()]
        return list(dict.fromkeys(candidates))

    def existing(self, lamps: Iterable[str]) -> list[Path]:
        """Products of this stem that already exist."""
        return [path for path in self.every(lamps) if path.exists()]


def _tag(lamp: str) -> str:
    return f"_{lamp}" if lamp else ""


def product_paths(*, stem: str, root: Path, instrument: str) -> ProductPaths:
    """Paths under ``<root>/products/soxs_mflat`` and ``<root>/qc/soxs_mflat``."""
    return ProductPaths(stem, root / PRODUCTS_SUBDIR, root / QC_SUBDIR, instrument)


def fits_writer(hdus: Sequence[fits.PrimaryHDU | fits.ImageHDU | fits.BinTableHDU]) -> Callable[[Path], None]:
    """A writer for :meth:`ProductTransaction.stage`: astropy, strict verification, checksums."""
    return lambda temporary: fits.HDUList(list(hdus)).writeto(temporary, output_verify="exception", checksum=True)


def write_hdus(hdus: Sequence[fits.PrimaryHDU | fits.ImageHDU | fits.BinTableHDU], path: Path) -> Path:
    """Write one FITS file (an intermediate product) atomically with :func:`fits_writer`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with ProductTransaction() as transaction:
        transaction.stage(path, fits_writer(hdus))
        transaction.commit()
    return path


def md5_of(paths: Iterable[Path]) -> dict[Path, str]:
    """MD5 of each file's bytes (for the CAL DATAMD5 cards)."""
    return {path: _md5(path) for path in paths}


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _product_header(header: fits.Header) -> fits.Header:
    """A copy of an input's header without the cards that describe how its data were stored."""
    copied = header.copy(strip=True)
    for keyword in STORAGE_KEYWORDS:
        copied.remove(keyword, ignore_missing=True, remove_all=True)
    return copied


def _category(frame: FrameFile, inputs: VerifiedInputs) -> str:
    """A raw frame's category as soxspipe's data organiser tags it: ``<DPR TYPE>_<ARM>``."""
    return f"{frame.header.get(inputs.keywords.dpr_type, 'FLAT')}_{inputs.arm}"


def _set_comment_fitting(header: fits.Header, keyword: str, value: object, comment: str) -> None:
    """Set a card whose comment is cut at a word boundary to fit the card (never mid-word)."""
    room = 80 - len(fits.Card(keyword, value).image.rstrip()) - 3
    if len(comment) > room:
        comment = comment[: max(room, 0) + 1].rsplit(" ", 1)[0] if room > 0 else ""
    header[keyword] = (value, comment)


def provenance_header(*, inputs: VerifiedInputs, flats: Sequence[FrameFile], settings: Settings, pro_catg: str,
                      pro_tech: str, qc_rows: Iterable[QCRow], checksums: Mapping[Path, str]) -> fits.Header:
    """Product header: the earliest flat's header without its DPR and storage cards, plus the PRO and REC1
    cards (every raw frame and calibration used, every parameter in full: the ``soxs-mflat`` keys of the
    arm, then the ``background-subtraction`` keys), how the prepared frame maps to
    the raw detector (``SOXS PREP`` cards), and the QC cards.

    ``flats`` are the flats combined into this product; the darks and lamp-off frames subtracted from
    them are listed as raw inputs too.
    """
    base = min(flats, key=lambda f: float(f.header.get(inputs.keywords.mjd_obs, np.inf))).header
    header = _product_header(base)
    for keyword in (*REMOVED_KEYWORDS, "EXTNAME", "BUNIT", "SXSPRE", "RADECSYS"):
        header.remove(keyword, ignore_missing=True, remove_all=True)
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    header["DATE"] = (now, "Date the file was written")
    header["HIERARCH ESO PRO CATG"] = pro_catg
    header["HIERARCH ESO PRO TYPE"] = "REDUCED"
    header["HIERARCH ESO PRO TECH"] = pro_tech
    header["HIERARCH ESO SEQ ARM"] = inputs.arm
    header["HIERARCH ESO PRO REC1 ID"] = RECIPE_ID
    header["HIERARCH ESO PRO REC1 PIPE ID"] = PIPE_ID
    header["HIERARCH ESO PRO DATE"] = now
    raw = [*flats, *inputs.darks]
    header["HIERARCH ESO PRO DATANCOM"] = len(flats)
    for i, frame in enumerate(raw, start=1):
        header[f"HIERARCH ESO PRO REC1 RAW{i} NAME"] = frame.path.name
        header[f"HIERARCH ESO PRO REC1 RAW{i} CATG"] = _category(frame, inputs)
    for i, calibration in enumerate(inputs.calibrations, start=1):
        header[f"HIERARCH ESO PRO REC1 CAL{i} NAME"] = calibration.path.name
        header[f"HIERARCH ESO PRO REC1 CAL{i} CATG"] = str(calibration.header.get(inputs.keywords.pro_catg,
                                                                                   calibration.tag or ""))
        header[f"HIERARCH ESO PRO REC1 CAL{i} DATAMD5"] = checksums[calibration.path]
    background = [(name, str(getattr(settings, name.replace("-", "_")))) for name in BACKGROUND_KEYS]
    for i, (name, value) in enumerate([*settings.param_cards(inputs.arm), *background], start=1):
        header[f"HIERARCH ESO PRO REC1 PARAM{i} NAME"] = name
        header[f"HIERARCH ESO PRO REC1 PARAM{i} VALUE"] = value
    detector, (binx, biny) = inputs.detector, inputs.binning
    rows = (detector.science_rows[0] // biny, detector.science_rows[1] // biny)
    cols = (detector.science_columns[0] // binx, detector.science_columns[1] // binx)
    header["HIERARCH SOXS PREP ROTATION"] = (90 * detector.rotation_k, "[deg] raw turned by np.rot90")
    header["HIERARCH SOXS PREP TRIMSEC"] = (f"{rows[0]}:{rows[1]},{cols[0]}:{cols[1]}", "rows,cols slices after rot90")
    header["HIERARCH SOXS PREP BINNING"] = (f"{binx}x{biny}", "raw binning, x by y")
    for row in qc_rows:
        if row.to_header and np.isfinite(row.value):
            value = int(row.value) if float(row.value).is_integer() and abs(row.value) < 2**53 else row.value
            _set_comment_fitting(header, f"HIERARCH ESO QC {row.name}", value, row.comment)
    return header


def image_hdus(data: np.ndarray, mask: np.ndarray, uncertainty: np.ndarray,
               header: fits.Header) -> list[fits.PrimaryHDU | fits.ImageHDU]:
    """FLUX (float32) / QUAL (uint8) / ERRS (float32) HDUs (spec §2.3, §5.1)."""
    flux = primary_image_hdu(data, header)
    flux.header["EXTNAME"] = "FLUX"
    flux.header["BUNIT"] = ""
    errs_header = fits.Header([("EXTNAME", "ERRS"), ("UTYPE", "StdDevUncertainty"), ("BUNIT", "")])
    return [flux, fits.ImageHDU(_fits_image(mask, np.uint8), fits.Header([("EXTNAME", "QUAL")])),
            fits.ImageHDU(_fits_image(uncertainty, np.float32), errs_header)]


def primary_image_hdu(image: np.ndarray, header: fits.Header) -> fits.PrimaryHDU:
    """A float32 image with a copy of ``header`` (its storage cards left out) as a primary HDU."""
    return fits.PrimaryHDU(_fits_image(image, np.float32), _product_header(header))


def _fits_image(image: np.ndarray, dtype: type) -> np.ndarray:
    """``image`` as the C-ordered big-endian ``dtype`` array that FITS stores (a copy unless it is one).

    astropy writes and checksums such an array as it is. Given a little-endian array, it would
    byte-swap it twice (checksum, then write), in place if writable, which other threads reading the
    image meanwhile would see, or into two more copies if not: one conversion here is faster. The
    copies live until the file is written (~9 bytes a pixel for FLUX, QUAL and ERRS), well below the
    recipe's peak memory, which comes earlier.
    """
    return np.ascontiguousarray(image, dtype=np.dtype(dtype).newbyteorder(">"))
