"""Instrument knowledge: keyword names, detector geometry, defaults.

Everything that differs between SOXS and X-shooter, or between arms, lives in the two tables of
this module so that the processing steps never test the instrument name themselves. Facts follow
the format reference (spec §1.2 and §1.5).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

Axis = Literal["x", "y"]

INSTRUMENTS = ("soxs", "xsh")
"""Values of the ``instrument`` setting."""

INSTRUME_HEADER = MappingProxyType({"soxs": "SOXS", "xsh": "XSHOOTER"})
"""``INSTRUME`` header value for each value of the ``instrument`` setting."""


@dataclass(frozen=True)
class Keywords:
    """FITS keyword names (logical name → card) for one instrument."""

    instrume: str = "INSTRUME"
    arm: str = "ESO SEQ ARM"
    dpr_catg: str = "ESO DPR CATG"
    dpr_type: str = "ESO DPR TYPE"
    dpr_tech: str = "ESO DPR TECH"
    pro_catg: str = "ESO PRO CATG"
    pro_type: str = "ESO PRO TYPE"
    pro_tech: str = "ESO PRO TECH"
    object: str = "OBJECT"
    exptime: str = "EXPTIME"
    mjd_obs: str = "MJD-OBS"
    date_obs: str = "DATE-OBS"
    binx: str = "ESO DET BINX"
    biny: str = "ESO DET BINY"
    cdelt1: str = "ESO DET BINX"
    cdelt2: str = "ESO DET BINY"
    read_speed: str = "ESO DET READ CURID"
    read_type: str = "ESO DET READ CURNAME"
    conad: str = "ESO DET OUT1 CONAD"
    gain: str = "ESO DET OUT1 GAIN"
    ron: str = "ESO DET OUT1 RON"
    slit: MappingProxyType = field(
        default_factory=lambda: MappingProxyType(
            {"UVB": "ESO INS OPTI3 NAME", "VIS": "ESO INS VISE NAME", "NIR": "ESO INS NISE NAME"}
        )
    )
    qth_lamp: str = "ESO INS QTH NAME"
    d2_lamp: str = "ESO INS DEUT NAME"
    datancom: str = "ESO PRO DATANCOM"
    qc_raw_ron: str = "ESO QC RAW RON"
    common_path_temp: str | None = "ESO INS TEMP301 VAL"
    detector_temp: MappingProxyType = field(
        default_factory=lambda: MappingProxyType({"NIR": "ESO INS TEMP217 VAL", "VIS": "ESO INS TEMP104 VAL"})
    )
    arcfile: str | None = None
    origfile: str | None = None


SOXS_KEYWORDS = Keywords()
XSH_KEYWORDS = Keywords(
    binx="ESO DET WIN1 BINX",
    biny="ESO DET WIN1 BINY",
    cdelt1="CDELT1",
    cdelt2="CDELT2",
    read_speed="ESO DET READ SPEED",
    read_type="ESO DET NCORRS NAME",
    gain="GAIN",
    slit=MappingProxyType({"UVB": "ESO INS OPTI3 NAME", "VIS": "ESO INS OPTI4 NAME", "NIR": "ESO INS OPTI5 NAME"}),
    qth_lamp="ESO INS LAMP1 NAME",
    d2_lamp="ESO INS LAMP2 NAME",
    common_path_temp=None,
    detector_temp=MappingProxyType({}),
    arcfile="ARCFILE",
    origfile="ORIGFILE",
)


@dataclass(frozen=True)
class Detector:
    """Geometry and electronics of one arm's detector (spec §1.5).

    ``science_columns``/``science_rows`` are half-open ``(start, end)`` ranges in unbinned pixels of
    the rotated raw frame. ``dispersion_axis`` uses soxspipe's meaning: ``"x"`` means the order
    traces are fitted as x = f(order, y), i.e. the orders run along the rows.
    """

    instrument: str
    arm: str
    rotation_k: int
    science_columns: tuple[int, int]
    science_rows: tuple[int, int]
    dispersion_axis: Axis
    default_gain: float
    default_ron: float
    saturation_adu: float | None
    raw_shape: tuple[int, int]
    """Unbinned raw frame shape (rows, columns) before rotation, as the simulator writes it."""
    binnable: bool
    bad_pixel_map_value: int = 1

    @property
    def fitted_axis(self) -> Axis:
        """Axis A of the order table: the coordinate the traces give (spec §4.2)."""
        return self.dispersion_axis

    @property
    def along_axis(self) -> Axis:
        """Axis B of the order table: the coordinate along the orders."""
        return "y" if self.dispersion_axis == "x" else "x"

    def prepared_shape(self, binx: int = 1, biny: int = 1) -> tuple[int, int]:
        """Shape (rows, columns) of a prepared frame at this binning."""
        rows = self.science_rows[1] // biny - self.science_rows[0] // biny
        cols = self.science_columns[1] // binx - self.science_columns[0] // binx
        return rows, cols


DETECTORS: MappingProxyType = MappingProxyType(
    {
        ("soxs", "VIS"): Detector("soxs", "VIS", 0, (50, 858), (0, 4096), "x", 1.0, 3.8, 65535.0, (4096, 908), True),
        ("soxs", "NIR"): Detector("soxs", "NIR", 0, (4, 2044), (4, 2044), "y", 2.3, 7.3, None, (2048, 2048), False),
        ("xsh", "UVB"): Detector("xsh", "UVB", 2, (48, 2096), (0, 3000), "x", 1.61, 2.6, 65000.0, (3000, 2144), True, 128),
        ("xsh", "VIS"): Detector("xsh", "VIS", 0, (10, 2058), (0, 4000), "x", 1.4, 5.3, 65535.0, (4000, 2106), True, 128),
        ("xsh", "NIR"): Detector("xsh", "NIR", 1, (20, 1076), (4, 2044), "x", 2.12, 8.0, 2.0e5, (1100, 2048), False, 128),
    }
)
"""Detector of each (instrument setting, arm)."""

ARMS: MappingProxyType = MappingProxyType({"soxs": ("VIS", "NIR"), "xsh": ("UVB", "VIS", "NIR")})


def keywords_for(instrument: str) -> Keywords:
    """Keyword map of an instrument (``"soxs"`` or ``"xsh"``)."""
    return SOXS_KEYWORDS if instrument == "soxs" else XSH_KEYWORDS


def detector_for(instrument: str, arm: str) -> Detector:
    """Detector parameters of one arm."""
    return DETECTORS[(instrument, arm.upper())]


def instrument_from_header(instrume: str) -> str | None:
    """Map an ``INSTRUME`` header value to the ``instrument`` setting value, or None."""
    for key, value in INSTRUME_HEADER.items():
        if str(instrume).strip().upper() == value:
            return key
    return None
