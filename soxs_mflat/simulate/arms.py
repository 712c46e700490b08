"""Hard-coded description of every arm: order anchors, slit heights, wavelengths, lamps, detector light levels.

The order positions are realistic: the anchor values below were read once, offline, from the
theoretical line tables that ship with soxspipe (X-shooter ``THEO_TAB_MULT_*``, SOXS ``*_MPH_TAB_*``)
by fitting a global polynomial to the mid-slit pinhole positions and sampling it at equally spaced
axis-B nodes. Slit heights come from the spread of the nine pinholes scaled to the full slit,
wavelength ranges and partial-order limits from the ``SPECTRAL_FORMAT`` tables. Only the numbers were
kept; nothing is read from soxspipe at run time. All lengths are unbinned prepared-frame pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LampSpectrum:
    """Smooth lamp × detector spectral response: a log-parabola in wavelength plus a floor.

    The level is 1 at ``peak_nm`` and falls to ``1 / contrast`` at the reference wavelength of each
    side, so the arm's end orders can be made 10–50× fainter than the brightest one.
    """

    peak_nm: float
    blue: tuple[float, float]
    red: tuple[float, float]
    floor: float = 0.0

    def __call__(self, wavelength_nm: np.ndarray) -> np.ndarray:
        """Relative level at ``wavelength_nm``."""
        log_lam = np.log(np.asarray(wavelength_nm, dtype=np.float64))
        log_peak = np.log(self.peak_nm)
        result = np.empty_like(log_lam)
        for side, (ref_nm, contrast) in (("blue", self.blue), ("red", self.red)):
            select = log_lam < log_peak if side == "blue" else log_lam >= log_peak
            scale = (log_lam[select] - log_peak) / (np.log(ref_nm) - log_peak)
            result[select] = np.exp(-np.log(contrast) * scale**2)
        return (result + self.floor) / (1.0 + self.floor)


@dataclass(frozen=True)
class Lamp:
    """One lamp of a flat set: its spectrum and how its frames are labelled."""

    name: str
    dpr_type: str
    spectrum: LampSpectrum
    exptime: float
    order_table_object: str = "LAMP,ORDERDEF"
    tag: str = ""
    """soxspipe lamp tag (``DLAMP``/``QLAMP``) for the per-lamp X-shooter UVB products; empty otherwise."""
    bright_orders: tuple[int, ...] = ()
    """Orders this lamp contributes to a stitched master flat (X-shooter UVB); empty = all."""


@dataclass(frozen=True)
class ArmSpec:
    """Hard-coded description of one arm (unbinned pixels, nanometres, seconds)."""

    instrument: str
    arm: str
    orders: tuple[int, ...]
    anchors: tuple[tuple[float, ...], ...]
    """Order centre (axis A) at equally spaced axis-B nodes from 0 to the frame length, per order."""
    truth_degrees: tuple[int, int]
    heights: tuple[float, float]
    """Slit height (px along A) of the first and the last order; linear in between."""
    wavelengths: tuple[tuple[float, float], ...]
    """Wavelength (nm) at B = 0 and at B = frame length, per order."""
    b_limits: dict[int, tuple[float, float]]
    """Illuminated axis-B range of orders that start or end inside the detector."""
    psf_sigma: float
    blaze_beta: float
    lamps: tuple[Lamp, ...]
    peak_electrons: float
    slit_arcsec: float
    slit_name: str
    pixel_scale: float
    bias_adu: float
    dark_rate: float
    thermal_rate: float
    """Smooth thermal background (e⁻/s/px); NIR only."""
    thermal_order_rate: float
    """Thermal light through the slit in the reddest order (e⁻/s/px), falling by 3× per order."""
    centre_degrees: tuple[int, int]
    """Default order-centre fit degrees (order, B) of spec §4.3."""


_NIR_QTH_SOXS = LampSpectrum(peak_nm=1150.0, blue=(777.0, 12.0), red=(2033.0, 25.0))
_VIS_QTH_SOXS = LampSpectrum(peak_nm=800.0, blue=(350.0, 35.0), red=(858.0, 1.3))
_UVB_QTH_XSH = LampSpectrum(peak_nm=620.0, blue=(350.0, 6.0), red=(700.0, 1.5))
_UVB_D2_XSH = LampSpectrum(peak_nm=290.0, blue=(250.0, 1.5), red=(355.0, 80.0), floor=0.02)
"""The two UVB lamps cross at order 21: the D2 flat's order 21 is about as bright as the QTH flat's
orders 20 and 22 (after each flat is normalised), so a stitching rule that looks for D(o)/Q(o∓1) ≈ 1
switches lamp at order 21, as the real spectral format does (D2 for orders 21–24, QTH for 13–20)."""
_VIS_QTH_XSH = LampSpectrum(peak_nm=780.0, blue=(525.0, 10.0), red=(1050.0, 15.0))
_NIR_QTH_XSH = LampSpectrum(peak_nm=1250.0, blue=(990.0, 8.0), red=(2480.0, 30.0))

ARM_SPECS: dict[tuple[str, str], ArmSpec] = {
    ("soxs", "NIR"): ArmSpec(
        instrument="soxs",
        arm="NIR",
        orders=tuple(range(10, 25)),
        anchors=(
            (436.9, 394.0, 394.0, 448.3, 549.6),
            (490.1, 441.9, 442.2, 494.4, 595.5),
            (545.9, 493.3, 492.6, 543.1, 643.6),
            (604.8, 548.4, 545.9, 594.7, 694.4),
            (667.4, 607.5, 602.5, 649.6, 748.3),
            (734.3, 670.9, 662.9, 708.1, 805.6),
            (805.9, 738.8, 727.4, 770.5, 866.8),
            (882.8, 811.6, 796.5, 837.2, 932.0),
            (965.2, 889.6, 870.5, 908.5, 1001.6),
            (1053.7, 973.0, 949.7, 984.6, 1075.9),
            (1148.6, 1062.1, 1034.4, 1065.8, 1155.1),
            (1250.2, 1157.3, 1124.9, 1152.4, 1239.4),
            (1358.8, 1258.9, 1221.4, 1244.6, 1329.0),
            (1474.6, 1367.2, 1323.9, 1342.6, 1423.9),
            (1597.9, 1482.6, 1432.8, 1446.5, 1524.4),
        ),
        truth_degrees=(4, 4),
        heights=(33.2, 41.8),
        wavelengths=(
            (1859.1, 2033.4),
            (1691.7, 1850.5),
            (1550.8, 1696.4),
            (1431.1, 1566.9),
            (1329.1, 1455.8),
            (1240.0, 1360.0),
            (1162.3, 1277.2),
            (1096.0, 1198.3),
            (1035.1, 1133.0),
            (981.8, 1073.5),
            (931.9, 1020.6),
            (887.5, 972.4),
            (847.8, 928.6),
            (810.7, 888.6),
            (777.3, 852.2),
        ),
        b_limits={},
        psf_sigma=0.85,
        blaze_beta=1.1,
        lamps=(Lamp("Qth_Lamp", "FLAT,LAMP", _NIR_QTH_SOXS, exptime=10.0),),
        peak_electrons=52000.0,
        slit_arcsec=12.0,
        slit_name="SLIT1.0",
        pixel_scale=0.25,
        bias_adu=300.0,
        dark_rate=0.03,
        thermal_rate=0.8,
        thermal_order_rate=30.0,
        centre_degrees=(6, 5),
    ),
    ("soxs", "VIS"): ArmSpec(
        instrument="soxs",
        arm="VIS",
        orders=(1, 2, 3, 4),
        anchors=(
            (161.1, 168.7, 174.7, 178.6),
            (311.2, 312.4, 317.2, 318.5),
            (462.4, 468.5, 473.2, 477.8),
            (640.6, 644.0, 648.2, 654.7),
        ),
        truth_degrees=(3, 3),
        heights=(43.4, 44.1),
        wavelengths=((528.5, 686.2), (444.9, 349.6), (552.4, 427.0), (665.5, 858.0)),
        b_limits={1: (-200.0, 4087.0), 2: (125.0, 4400.0), 3: (95.0, 4400.0), 4: (-200.0, 4030.0)},
        psf_sigma=0.75,
        blaze_beta=0.9,
        lamps=(Lamp("Qth_Lamp", "FLAT,LAMP", _VIS_QTH_SOXS, exptime=20.0),),
        peak_electrons=42000.0,
        slit_arcsec=12.0,
        slit_name="SLIT1.0",
        pixel_scale=0.28,
        bias_adu=800.0,
        dark_rate=0.0,
        thermal_rate=0.0,
        thermal_order_rate=0.0,
        centre_degrees=(3, 5),
    ),
    ("xsh", "UVB"): ArmSpec(
        instrument="xsh",
        arm="UVB",
        orders=tuple(range(13, 25)),
        anchors=(
            (1684.9, 1728.2, 1736.8, 1710.5, 1649.7),
            (1598.1, 1646.3, 1658.7, 1635.2, 1576.4),
            (1505.2, 1558.9, 1575.5, 1555.1, 1498.5),
            (1405.8, 1465.4, 1486.8, 1469.9, 1415.8),
            (1299.3, 1365.5, 1392.1, 1379.2, 1327.8),
            (1185.2, 1258.7, 1291.1, 1282.5, 1234.1),
            (1062.7, 1144.4, 1183.1, 1179.4, 1134.4),
            (931.4, 1022.0, 1067.8, 1069.3, 1028.0),
            (790.6, 891.0, 944.5, 951.9, 914.7),
            (639.7, 750.8, 812.8, 826.5, 793.9),
            (478.0, 600.5, 671.9, 692.6, 665.1),
            (304.7, 439.6, 521.3, 549.8, 527.8),
        ),
        truth_degrees=(4, 4),
        heights=(63.5, 68.3),
        wavelengths=(
            (540.1, 593.7),
            (501.8, 551.2),
            (468.5, 514.7),
            (439.3, 482.6),
            (413.6, 454.4),
            (390.7, 429.3),
            (370.3, 406.9),
            (351.9, 386.6),
            (335.3, 368.3),
            (320.1, 351.7),
            (306.7, 336.4),
            (294.0, 322.4),
        ),
        b_limits={},
        psf_sigma=0.7,
        blaze_beta=1.1,
        lamps=(
            Lamp(
                "D2",
                "LAMP,DFLAT",
                _UVB_D2_XSH,
                exptime=30.0,
                order_table_object="LAMP,DORDERDEF",
                tag="DLAMP",
                bright_orders=(21, 22, 23, 24),
            ),
            Lamp(
                "QTH",
                "LAMP,QFLAT",
                _UVB_QTH_XSH,
                exptime=15.0,
                order_table_object="LAMP,QORDERDEF",
                tag="QLAMP",
                bright_orders=tuple(range(13, 21)),
            ),
        ),
        peak_electrons=40000.0,
        slit_arcsec=11.0,
        slit_name="1.0x11",
        pixel_scale=0.16,
        bias_adu=230.0,
        dark_rate=0.0,
        thermal_rate=0.0,
        thermal_order_rate=0.0,
        centre_degrees=(6, 5),
    ),
    ("xsh", "VIS"): ArmSpec(
        instrument="xsh",
        arm="VIS",
        orders=tuple(range(16, 31)),
        anchors=(
            (1616.4, 1779.2, 1844.0, 1812.7, 1685.4),
            (1529.7, 1696.3, 1764.1, 1735.1, 1609.3),
            (1438.9, 1609.9, 1681.0, 1654.4, 1530.4),
            (1343.7, 1519.3, 1594.1, 1570.4, 1448.3),
            (1243.5, 1424.3, 1503.2, 1482.5, 1362.7),
            (1137.9, 1324.4, 1407.8, 1390.5, 1273.2),
            (1026.5, 1219.2, 1307.5, 1293.9, 1179.4),
            (908.8, 1108.3, 1201.9, 1192.5, 1081.0),
            (784.2, 991.2, 1090.6, 1085.7, 977.6),
            (652.4, 867.5, 973.3, 973.3, 868.8),
            (512.9, 736.8, 849.5, 854.9, 754.5),
            (365.1, 598.6, 718.8, 730.1, 634.1),
            (208.6, 452.6, 580.9, 598.6, 507.4),
            (42.9, 298.2, 435.5, 460.0, 374.1),
            (-132.4, 135.1, 282.0, 313.9, 233.8),
        ),
        truth_degrees=(4, 4),
        heights=(66.0, 70.4),
        wavelengths=(
            (973.0, 1052.0),
            (915.6, 990.5),
            (864.3, 936.3),
            (819.2, 886.4),
            (778.8, 841.9),
            (741.0, 802.2),
            (707.8, 765.9),
            (676.8, 732.5),
            (648.9, 702.1),
            (622.8, 674.1),
            (598.5, 648.6),
            (576.5, 624.6),
            (556.0, 602.3),
            (537.9, 581.1),
            (521.5, 561.4),
        ),
        b_limits={},
        psf_sigma=0.75,
        blaze_beta=1.1,
        lamps=(Lamp("QTH", "LAMP,FLAT", _VIS_QTH_XSH, exptime=15.0),),
        peak_electrons=40000.0,
        slit_arcsec=11.0,
        slit_name="0.9x11",
        pixel_scale=0.16,
        bias_adu=190.0,
        dark_rate=0.0,
        thermal_rate=0.0,
        thermal_order_rate=0.0,
        centre_degrees=(6, 4),
    ),
    ("xsh", "NIR"): ArmSpec(
        instrument="xsh",
        arm="NIR",
        orders=tuple(range(11, 27)),
        anchors=(
            (777.1, 940.6, 1001.8, 973.8, 848.6),
            (707.3, 870.2, 933.0, 905.8, 783.1),
            (643.1, 805.7, 869.4, 842.7, 721.0),
            (583.0, 745.6, 809.6, 782.9, 661.0),
            (525.7, 688.4, 752.4, 725.2, 602.3),
            (470.2, 633.0, 696.7, 668.6, 543.9),
            (415.4, 578.4, 641.4, 612.0, 485.1),
            (360.6, 523.7, 585.7, 554.8, 425.2),
            (305.1, 468.1, 529.1, 496.1, 363.7),
            (248.5, 411.1, 470.8, 435.6, 300.0),
            (190.3, 352.3, 410.5, 372.8, 233.9),
            (130.5, 291.5, 348.0, 307.6, 165.1),
            (68.8, 228.5, 283.1, 239.8, 93.5),
            (5.5, 163.5, 215.9, 169.6, 19.1),
            (-59.2, 96.6, 146.6, 97.2, -58.2),
            (-124.9, 28.3, 75.5, 23.0, -138.0),
        ),
        truth_degrees=(4, 4),
        heights=(40.4, 44.9),
        wavelengths=(
            (2481.1, 2276.5),
            (2276.4, 2085.2),
            (2101.6, 1927.3),
            (1956.4, 1786.9),
            (1824.2, 1668.2),
            (1710.9, 1564.9),
            (1611.9, 1471.5),
            (1522.8, 1390.1),
            (1443.7, 1316.5),
            (1372.4, 1250.4),
            (1308.5, 1190.2),
            (1249.5, 1136.6),
            (1195.9, 1086.6),
            (1146.8, 1041.6),
            (1101.9, 999.7),
            (1059.9, 962.5),
        ),
        b_limits={
            16: (5.0, 2019.0),
            17: (63.0, 1963.0),
            18: (141.0, 1905.0),
            19: (206.0, 1853.0),
            20: (266.0, 1808.0),
            21: (324.0, 1768.0),
            22: (375.0, 1732.0),
            23: (422.0, 1698.0),
            24: (465.0, 1670.0),
            25: (503.0, 1644.0),
            26: (541.0, 1620.0),
        },
        psf_sigma=0.8,
        blaze_beta=1.1,
        lamps=(Lamp("QTH", "LAMP,FLAT", _NIR_QTH_XSH, exptime=40.0),),
        peak_electrons=45000.0,
        slit_arcsec=11.0,
        slit_name="0.9x11",
        pixel_scale=0.25,
        bias_adu=250.0,
        dark_rate=0.02,
        thermal_rate=0.3,
        thermal_order_rate=8.0,
        centre_degrees=(6, 4),
    ),
}
"""Hard-coded description of every arm, keyed by (instrument setting, arm)."""


def arm_spec(instrument: str, arm: str) -> ArmSpec:
    """Hard-coded description of ``arm`` of ``instrument`` (``"soxs"`` or ``"xsh"``)."""
    try:
        return ARM_SPECS[(instrument, arm.upper())]
    except KeyError:
        raise ValueError(f"no simulator layout for instrument {instrument!r}, arm {arm!r}") from None
