"""Product names, headers and atomic writing (spec §5).

Every file is written to a hidden temporary name in its destination folder and renamed into place
only when complete, so an interrupted run never leaves a half-written or clobbered product.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from astropy.io import fits

from soxs_mflat import __version__
from soxs_mflat.inputs import VerifiedInputs
from soxs_mflat.qc import QCRow

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
        """The order-location table name of spec §5.4; never the master flat's path."""
        name = f"{self.stem}.fits".replace("MFLAT", "FLAT").upper().replace("FLAT", "OLOC").replace(".FITS", ".fits")
        if name.lower() == f"{self.stem}.fits".lower():  # the same file on a case-insensitive file system
            name = f"{self.stem}_OLOC.fits"
        return self.products_dir / name.replace(".fits", f"{_tag(lamp)}.fits")

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

    def existing(self, lamps: Iterable[str]) -> list[Path]:
        """Products of this stem that already exist."""
        candidates = [self.master_flat(), self.order_table(), self.background(), self.log(), self.qc_table()]
        for lamp in lamps:
            if lamp:
                candidates += [self.master_flat(lamp), self.order_table(lamp), self.background(lamp)]
        candidates += [self.order_location_plot(), self.background_plot()]
        return [p for p in dict.fromkeys(candidates) if p.exists()]


def _tag(lamp: str) -> str:
    return f"_{lamp}" if lamp else ""


def product_paths(*, stem: str, root: Path, instrument: str) -> ProductPaths:
    """Paths under ``<root>/products/soxs_mflat`` and ``<root>/qc/soxs_mflat``."""
    return ProductPaths(stem, root / PRODUCTS_SUBDIR, root / QC_SUBDIR, instrument)


def temporary_path(path: Path) -> Path:
    """Hidden temporary name for ``path`` in the same folder (so renaming it onto ``path`` is atomic)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def commit(temporary: Path, path: Path) -> Path:
    """Flush ``temporary`` to disk and rename it onto ``path``."""
    with open(temporary, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    return path


def write_atomic(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(temporary_path)`` then rename the result onto ``path``.

    The temporary file lives in the same folder (so the rename is atomic) and is removed if
    writing fails; an existing file at ``path`` is untouched until the rename.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_path(path)
    try:
        write(temporary)
        commit(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()
    return path


def write_hdus(hdus: list[fits.PrimaryHDU | fits.ImageHDU | fits.BinTableHDU], path: Path) -> Path:
    """Write FITS HDUs atomically with astropy, with CHECKSUM/DATASUM cards; a header that is not
    standard FITS raises astropy's ``VerifyError`` (nothing is written)."""
    return write_atomic(path, lambda tmp: fits.HDUList(hdus).writeto(tmp, output_verify="exception", checksum=True))


def write_text(text: str, path: Path) -> Path:
    """Write a text file atomically."""
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def md5_of(path: Path) -> str:
    """MD5 of a file's bytes (for the CAL DATAMD5 cards)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def start_checksums(paths: Iterable[Path]) -> dict[Path, Future]:
    """Hash files on a background thread (hashlib releases the GIL) while the recipe works."""
    pool = ThreadPoolExecutor(max_workers=1)
    futures = {path: pool.submit(md5_of, path) for path in dict.fromkeys(paths)}
    pool.shutdown(wait=False)
    return futures


def _short(name: str, limit: int = 40) -> str:
    return name if len(name) <= limit else name[: limit - 3] + "..."


def _product_header(header: fits.Header) -> fits.Header:
    """A copy of an input's header without the cards that describe how its data were stored."""
    copied = header.copy(strip=True)
    for keyword in STORAGE_KEYWORDS:
        copied.remove(keyword, ignore_missing=True, remove_all=True)
    return copied


def provenance_header(
    base: fits.Header,
    *,
    inputs: VerifiedInputs,
    raw_frames: Iterable[Path],
    raw_categories: Iterable[str],
    params: list[tuple[str, str]],
    pro_catg: str,
    pro_tech: str,
    qc_rows: Iterable[QCRow],
    checksums: Mapping[Path, str] | None = None,
) -> fits.Header:
    """Product header: the earliest flat's header without DPR cards, plus PRO, REC1 and QC cards.

    ``checksums`` holds calibration MD5s already computed (see :func:`start_checksums`); any other
    calibration file is hashed here.
    """
    checksums = checksums or {}
    header = _product_header(base)
    for keyword in (*REMOVED_KEYWORDS, "EXTNAME", "BUNIT", "SXSPRE", "RADECSYS"):
        header.remove(keyword, ignore_missing=True, remove_all=True)
    header["HIERARCH ESO PRO CATG"] = pro_catg
    header["HIERARCH ESO PRO TYPE"] = "REDUCED"
    header["HIERARCH ESO PRO TECH"] = pro_tech
    header["HIERARCH ESO SEQ ARM"] = inputs.arm
    header["HIERARCH ESO PRO REC1 ID"] = RECIPE_ID
    header["HIERARCH ESO PRO REC1 PIPE ID"] = PIPE_ID
    header["HIERARCH ESO PRO DATE"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    raw_frames = list(raw_frames)
    header["HIERARCH ESO PRO DATANCOM"] = len(raw_frames)
    for i, (path, category) in enumerate(zip(raw_frames, raw_categories, strict=True), start=1):
        header[f"HIERARCH ESO PRO REC1 RAW{i} NAME"] = _short(Path(path).name, 45)
        header[f"HIERARCH ESO PRO REC1 RAW{i} CATG"] = category
    for i, calibration in enumerate(inputs.calibrations, start=1):
        header[f"HIERARCH ESO PRO REC1 CAL{i} NAME"] = _short(calibration.path.name, 45)
        catg = calibration.header.get(inputs.keywords.pro_catg, calibration.tag or "")
        header[f"HIERARCH ESO PRO REC1 CAL{i} CATG"] = str(catg)
        header[f"HIERARCH ESO PRO REC1 CAL{i} DATAMD5"] = checksums.get(calibration.path) or md5_of(calibration.path)
    for i, (name, value) in enumerate(params, start=1):
        header[f"HIERARCH ESO PRO REC1 PARAM{i} NAME"] = name
        header[f"HIERARCH ESO PRO REC1 PARAM{i} VALUE"] = _short(value, 30)
    for row in qc_rows:
        if row.to_header and np.isfinite(row.value):
            keyword = f"HIERARCH ESO QC {row.name}"
            value = int(row.value) if float(row.value).is_integer() and abs(row.value) < 2**53 else row.value
            room = 80 - len(fits.Card(keyword, value).image.rstrip()) - 3
            header[keyword] = (value, row.comment[: max(room, 0)])
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
