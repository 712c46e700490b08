"""FITS headers of the simulated frames and products, and the data-organiser SOF name.

Raw headers carry every keyword that classification, verification and preparation read (spec §1):
instrument, arm, DPR keywords, exposure, dates, binning, read speed, gain/CONAD, read noise, slit,
lamp and — for SOXS — the temperature keywords that preparation reads without a default. Dates are
pinned so that repeated runs write identical files.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from astropy.io import fits

from soxs_mflat.instruments import INSTRUME_HEADER, Detector, Keywords, keywords_for
from soxs_mflat.simulate.arms import ArmSpec

START = datetime(2025, 10, 12, 11, 14, 44)
"""DATE-OBS of the first flat of every simulated set."""

_MJD_EPOCH = datetime(1858, 11, 17)

READ_SPEED = {"soxs": 3, "xsh": "1pt/400k/lg"}
"""Read-speed keyword value (SOXS ``DET READ CURID``, X-shooter ``DET READ SPEED``) of UVB/VIS frames."""

SOF_READ_SPEED = {"1pt/400k/lg": "fast", "1pt/100k/hg": "slow"}
"""How the data organiser names X-shooter read speeds."""

TELESCOPE = {"soxs": "ESO-NTT", "xsh": "ESO-VLT-U3"}
N_BIAS = 11
"""Number of bias frames behind the simulated master bias."""


def put(header: fits.Header, key: str, value: object, comment: str = "") -> None:
    """Set a card, as a HIERARCH card when the keyword needs it, cutting the comment to fit 80 chars."""
    name = f"HIERARCH {key}" if len(key) > 8 or " " in key else key
    room = 80 - len(fits.Card(name, value).image.rstrip()) - 3
    header[name] = (value, comment[: max(room, 0)])


def mjd(moment: datetime) -> float:
    """Modified Julian Date of ``moment`` (UTC, no leap seconds)."""
    return (moment - _MJD_EPOCH) / timedelta(days=1)


def iso(moment: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SS.sss`` of ``moment``."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


@dataclass(frozen=True)
class HeaderContext:
    """What every header of one set shares."""

    spec: ArmSpec
    detector: Detector
    binning: tuple[int, int]

    @property
    def keywords(self) -> Keywords:
        """Keyword map of the instrument."""
        return keywords_for(self.spec.instrument)

    @property
    def arm(self) -> str:
        """Arm name."""
        return self.spec.arm

    @property
    def gain(self) -> float:
        """Gain (e⁻/ADU) written to the headers: the detector default."""
        return self.detector.default_gain

    @property
    def ron(self) -> float:
        """Read noise (e⁻) written to the headers: the detector default."""
        return self.detector.default_ron

    @property
    def read_speed(self) -> int | str | None:
        """Read-speed value, or None where the instrument writes none (X-shooter NIR)."""
        if self.arm == "NIR" and self.spec.instrument == "xsh":
            return None
        return READ_SPEED[self.spec.instrument]

    def _common(self, header: fits.Header, moment: datetime) -> None:
        kw = self.keywords
        put(header, "ORIGIN", "ESO-PARANAL" if self.spec.instrument == "xsh" else "ESO-LASILLA", "European Southern Observatory")
        put(header, "TELESCOP", TELESCOPE[self.spec.instrument], "ESO telescope designation")
        put(header, kw.instrume, INSTRUME_HEADER[self.spec.instrument], "Instrument used")
        put(header, "DATE", iso(moment), "Date the file was written")
        put(header, kw.date_obs, iso(moment), "Observing date")
        put(header, kw.mjd_obs, round(mjd(moment), 8), "Obs start")
        put(header, kw.arm, self.arm, "Arm")

    def _detector(self, header: fits.Header) -> None:
        kw = self.keywords
        if self.arm != "NIR":
            binx, biny = self.binning
            put(header, kw.binx, binx, "Binning factor along X")
            put(header, kw.biny, biny, "Binning factor along Y")
            if kw.cdelt1 != kw.binx:
                put(header, kw.cdelt1, float(binx), "Binning factor along X")
                put(header, kw.cdelt2, float(biny), "Binning factor along Y")
        if self.read_speed is not None:
            put(header, kw.read_speed, self.read_speed, "Readout speed")
        put(header, kw.read_type, "Double" if self.arm == "NIR" else "normal", "Readout mode")
        put(header, kw.conad, self.gain, "Conversion from ADUs to electrons")
        put(header, "ESO DET OUT1 GAIN", round(1.0 / self.gain, 6), "Conversion from electrons to ADU")
        put(header, kw.ron, self.ron, "Readout noise per output (e-)")

    def _temperatures(self, header: fits.Header) -> None:
        kw = self.keywords
        if kw.common_path_temp is None:
            return
        put(header, kw.common_path_temp, 12.6, "Common path temperature [C]")
        detector_temp = {"NIR": (40.1, "NIR detector temperature [K]"), "VIS": (153.2, "VIS detector temperature [K]")}
        put(header, kw.detector_temp[self.arm], *detector_temp[self.arm])

    def raw(
        self,
        *,
        dpr_type: str,
        dpr_tech: str,
        exptime: float,
        moment: datetime,
        file_name: str,
        lamp_keyword: str | None = None,
        lamp_name: str | None = None,
    ) -> fits.Header:
        """Header of one raw frame (spec §1)."""
        kw = self.keywords
        header = fits.Header()
        put(header, "BUNIT", "ADU", "Raw detector counts")
        self._common(header, moment)
        put(header, kw.object, dpr_type, "Original target")
        put(header, kw.exptime, float(exptime), "Integration time (s)")
        put(header, "ESO DPR CATG", "CALIB", "Observation category")
        put(header, kw.dpr_type, dpr_type, "Observation type")
        put(header, kw.dpr_tech, dpr_tech, "Observation technique")
        put(header, "ESO OBS NAME", f"Calibration_flat_{self.arm}", "OB name")
        put(header, "ESO TPL ID", f"{INSTRUME_HEADER[self.spec.instrument]}_{self.arm.lower()}_cal_flat", "Template signature ID")
        self._detector(header)
        put(header, kw.slit[self.arm], self.spec.slit_name, "Slit name")
        if lamp_keyword is not None:
            put(header, lamp_keyword, lamp_name, "Lamp name")
        self._temperatures(header)
        if kw.arcfile is not None:
            put(header, kw.arcfile, f"XSHOO.{iso(moment)}.fits", "Archive file name")
            put(header, kw.origfile, file_name, "Original file name")
        return header

    def master_bias(self, *, moment: datetime) -> fits.Header:
        """Header of the master bias product (spec §3)."""
        kw = self.keywords
        header = fits.Header()
        put(header, "EXTNAME", "FLUX")
        put(header, "BUNIT", "electron", "Pixel values in electrons")
        self._common(header, moment)
        put(header, kw.exptime, 0.0, "Integration time (s)")
        self._detector(header)
        self._temperatures(header)
        put(header, kw.pro_catg, f"MASTER_BIAS_{self.arm}", "Product category")
        put(header, kw.pro_type, "REDUCED", "Product type")
        put(header, kw.pro_tech, "IMAGE", "Observation technique")
        put(header, kw.datancom, N_BIAS, "Number of combined frames")
        put(header, "ESO PRO REC1 ID", "soxs-mbias", "Pipeline recipe")
        put(header, kw.qc_raw_ron, self.ron, "[e-] RON in single bias")
        return header

    def order_table(self, *, moment: datetime, table_object: str) -> fits.Header:
        """Primary header of an order-centre table (spec §4.6); binning 1×1 since coefficients are unbinned."""
        kw = self.keywords
        header = fits.Header()
        self._common(header, moment)
        put(header, kw.object, table_object, "Original target")
        put(header, kw.binx, 1, "Binning of the coefficients along X")
        put(header, kw.biny, 1, "Binning of the coefficients along Y")
        put(header, kw.pro_catg, f"ORDER_TAB_{self.arm}", "Product category")
        put(header, kw.pro_type, "REDUCED", "Product type")
        put(header, kw.pro_tech, "ECHELLE,SLIT", "Observation technique")
        put(header, "ESO PRO REC1 ID", "soxs-order-centres", "Pipeline recipe")
        return header

    def sof_stem(self, *, moment: datetime, exptime: float, lamp: str) -> str:
        """SOF file stem as the data organiser writes it (spec §5.4); NIR has no binning field."""
        binning = "" if self.arm == "NIR" else f"{self.binning[0]}x{self.binning[1]}"
        speed = self.read_speed
        speed_text = "" if speed is None else str(SOF_READ_SPEED.get(str(speed), speed))
        fields = [
            moment.strftime("%Y%m%dT%H%M%S"),
            self.arm,
            binning,
            speed_text,
            "MFLAT",
            lamp,
            self.spec.slit_name,
            f"{round(exptime, 2)}S",
            INSTRUME_HEADER[self.spec.instrument],
        ]
        stem = "_".join(field for field in fields if field).upper()
        return stem.replace(" ", "").replace(".", "_")
