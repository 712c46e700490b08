"""Shared fixtures: small FITS files with complete headers for classification and verification tests."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

sys.path.insert(0, str(Path(__file__).parent))

from soxs_mflat.geometry import Poly2D
from soxs_mflat.instruments import INSTRUME_HEADER, detector_for, keywords_for
from soxs_mflat.order_table import OrderTable, to_hdus
from soxs_mflat.products import write_hdus

SLITS = {"soxs": "SLIT1.0", "xsh": "1.0x11"}


def frame_header(*, instrument: str, arm: str, kind: str, exptime: float = 10.0, mjd: float = 60700.1,
                 binning: tuple[int, int] = (1, 1), lamp: str = "", extra: dict | None = None) -> fits.Header:
    """Header of a raw frame or product of the given kind (flat, lamp_off, dark, master_bias, master_dark)."""
    kw = keywords_for(instrument)
    detector = detector_for(instrument, arm)
    h = fits.Header()
    h["INSTRUME"] = INSTRUME_HEADER[instrument]
    h["HIERARCH ESO SEQ ARM"] = arm
    h["EXPTIME"] = exptime
    h["MJD-OBS"] = mjd
    h["DATE-OBS"] = "2025-01-25T02:38:24.000"
    h[f"HIERARCH {kw.read_speed}"] = "400k/1pt/hg" if instrument == "xsh" else 1
    h[f"HIERARCH {kw.conad}"] = detector.default_gain
    h[f"HIERARCH {kw.ron}"] = detector.default_ron
    h[f"HIERARCH {kw.slit[arm]}"] = SLITS[instrument]
    if arm != "NIR" or instrument == "soxs":
        h[f"HIERARCH {kw.binx}"] = binning[0]
        h[f"HIERARCH {kw.biny}"] = binning[1]
    if instrument == "xsh":
        h["CDELT1"], h["CDELT2"] = binning
    else:
        h["HIERARCH ESO INS TEMP301 VAL"] = 12.0
        h["HIERARCH ESO INS TEMP217 VAL" if arm == "NIR" else "HIERARCH ESO INS TEMP104 VAL"] = 40.0
    if kind == "flat":
        flat_type = {"DLAMP": "LAMP,DFLAT", "QLAMP": "LAMP,QFLAT"}.get(lamp, "FLAT,LAMP" if instrument == "soxs" else "LAMP,FLAT")
        if instrument == "soxs" and arm == "VIS":
            flat_type = "LAMP,FLAT"
            h["HIERARCH ESO INS QTH NAME"] = "Qth_Lamp"
        h["HIERARCH ESO DPR CATG"], h["HIERARCH ESO DPR TYPE"], h["HIERARCH ESO DPR TECH"] = "CALIB", flat_type, "ECHELLE,SLIT"
    elif kind == "lamp_off":
        off_type = "FLAT,LAMP" if instrument == "soxs" else "LAMP,FLAT"
        h["HIERARCH ESO DPR CATG"], h["HIERARCH ESO DPR TYPE"], h["HIERARCH ESO DPR TECH"] = "CALIB", off_type, "IMAGE"
    elif kind == "dark":
        h["HIERARCH ESO DPR CATG"], h["HIERARCH ESO DPR TYPE"], h["HIERARCH ESO DPR TECH"] = "CALIB", "DARK", "IMAGE"
    elif kind in ("master_bias", "master_dark"):
        h["HIERARCH ESO PRO CATG"] = f"MASTER_{'BIAS' if kind == 'master_bias' else 'DARK'}_{arm}"
        h["HIERARCH ESO PRO TYPE"], h["HIERARCH ESO PRO TECH"] = "REDUCED", "IMAGE"
        h["HIERARCH ESO QC RAW RON"] = detector.default_ron * 1.1
        h["HIERARCH ESO PRO DATANCOM"] = 5
    for key, value in (extra or {}).items():
        h[key if len(key) <= 8 and " " not in key else f"HIERARCH {key}"] = value
    return h


def write_frame(path: Path, header: fits.Header, *, data: np.ndarray | None = None, product: bool = False) -> Path:
    """Write a one-HDU raw frame or a FLUX/QUAL/ERRS product."""
    if data is None:
        data = np.zeros((4, 4), dtype=np.uint16)
    if product:
        hdus = [fits.PrimaryHDU(np.asarray(data, np.float32), header=header),
                fits.ImageHDU(np.zeros(data.shape, np.uint8), name="QUAL"),
                fits.ImageHDU(np.ones(data.shape, np.float32), name="ERRS")]
    else:
        hdus = [fits.PrimaryHDU(data, header=header)]
    fits.HDUList(hdus).writeto(path, overwrite=True)
    return path


def write_order_table(path: Path, *, instrument: str, arm: str, binning: tuple[int, int] = (1, 1),
                      obj: str | None = None, fitted_axis: str | None = None) -> Path:
    """A small order-centre table (spec §4) for the given arm."""
    kw = keywords_for(instrument)
    axis = fitted_axis or detector_for(instrument, arm).fitted_axis
    header = fits.Header()
    header["INSTRUME"] = INSTRUME_HEADER[instrument]
    header["HIERARCH ESO SEQ ARM"] = arm
    header["HIERARCH ESO PRO CATG"] = f"ORDER_TAB_{arm}"
    header["HIERARCH ESO PRO TECH"] = "ECHELLE,SLIT"
    header["HIERARCH ESO PRO TYPE"] = "REDUCED"
    header[f"HIERARCH {kw.binx}"], header[f"HIERARCH {kw.biny}"] = binning
    if obj:
        header["OBJECT"] = obj
    table = OrderTable(axis, np.array([10, 11]), np.zeros(2), np.full(2, 2000.0), np.array([100.0, 200.0]),
                       np.array([150.0, 250.0]), Poly2D([[-900.0, 0.0], [100.0, 0.0]]), Poly2D([[2.0]]), header=header)
    write_hdus(to_hdus(table), path)
    return path


@pytest.fixture
def frame_set(tmp_path: Path):
    """Factory writing a complete header-only input set; returns the list of paths."""

    def build(*, instrument: str = "soxs", arm: str = "NIR", n_flats: int = 5, lamps: tuple[str, ...] = ("",),
              with_bias: bool | None = None, with_darks: bool | None = None, flat_extra: list[dict] | None = None,
              binning: tuple[int, int] = (1, 1)) -> list[Path]:
        paths = []
        for lamp in lamps:
            for i in range(n_flats):
                extra = flat_extra[i] if flat_extra and i < len(flat_extra) else None
                header = frame_header(instrument=instrument, arm=arm, kind="flat", mjd=60700.1 + i * 0.001,
                                      lamp=lamp, extra=extra, binning=binning)
                paths.append(write_frame(tmp_path / f"flat{lamp}_{i}.fits", header))
            if instrument == "xsh" and arm == "UVB":
                obj = "LAMP,DORDERDEF" if lamp == "DLAMP" else "LAMP,QORDERDEF"
                paths.append(write_order_table(tmp_path / f"order_tab{lamp}.fits", instrument=instrument, arm=arm, obj=obj))
        if not (instrument == "xsh" and arm == "UVB"):
            paths.append(write_order_table(tmp_path / "order_tab.fits", instrument=instrument, arm=arm))
        if with_bias if with_bias is not None else arm != "NIR":
            header = frame_header(instrument=instrument, arm=arm, kind="master_bias", binning=binning)
            paths.append(write_frame(tmp_path / "master_bias.fits", header, product=True))
        if with_darks if with_darks is not None else arm == "NIR":
            for i in range(n_flats):
                header = frame_header(instrument=instrument, arm=arm, kind="lamp_off", mjd=60700.2 + i * 0.001)
                paths.append(write_frame(tmp_path / f"lampoff_{i}.fits", header))
        return paths

    return build
