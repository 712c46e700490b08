"""Classify input files by their headers and verify that they make a complete, consistent set.

Classification uses header keywords only, never SOF tags (spec §1.3); the one exception is the
static bad-pixel map, which carries no DPR/PRO keywords and is recognised by its SOF tag
``BP_MAP_RP_<ARM>`` (or a ``PRO CATG`` of that name). Each problem raises one
:class:`UserInputError` that lists the offending files and says how to fix them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum

from astropy.io import fits

from soxs_mflat.errors import UserInputError
from soxs_mflat.frames import FrameFile, header_number, is_finite_number
from soxs_mflat.instruments import Detector, Keywords, detector_for, instrument_from_header, keywords_for

MIN_FLATS = 5
FLAT_TYPES = ("FLAT,LAMP", "LAMP,FLAT")
LAMP_TAGS = ("", "DLAMP", "QLAMP", "DOME")
MAX_BINNING = 16
"""Largest binning factor believed from a header (ESO detectors bin by 1 to 4)."""


class Role(Enum):
    """What an input file is for."""

    FLAT = "lamp flat"
    LAMP_OFF = "lamp-off frame"
    RAW_DARK = "raw dark"
    MASTER_DARK = "master dark"
    MASTER_BIAS = "master bias"
    ORDER_TABLE = "order-centre table"
    BAD_PIXEL_MAP = "static bad-pixel map"
    UNUSED_PRODUCT = "product not used by mflat"


@dataclass(frozen=True)
class Classified:
    """An input file, its role and (for flats and UVB order tables) its lamp tag."""

    frame: FrameFile
    role: Role
    lamp: str = ""


@dataclass(frozen=True)
class LampSet:
    """The flats of one lamp and the order-centre table that goes with them."""

    lamp: str
    flats: tuple[FrameFile, ...]
    order_table: FrameFile
    exptime: float


@dataclass(frozen=True)
class VerifiedInputs:
    """A complete, consistent set of inputs for one arm."""

    instrument: str
    arm: str
    detector: Detector
    keywords: Keywords
    binning: tuple[int, int]
    lamp_sets: tuple[LampSet, ...]
    master_bias: FrameFile | None
    master_dark: FrameFile | None
    darks: tuple[FrameFile, ...]
    bad_pixel_map: FrameFile | None
    gain: float
    gain_source: str
    ron: float
    ron_source: str
    slit: str
    read_speed: str
    notes: tuple[str, ...]

    @property
    def calibrations(self) -> tuple[FrameFile, ...]:
        """Calibration products used (for provenance cards)."""
        tables = tuple(s.order_table for s in self.lamp_sets)
        others = (self.master_bias, self.master_dark, self.bad_pixel_map)
        return tuple(f for f in others if f is not None) + tables


def _names(frames: Iterable[FrameFile]) -> str:
    return ", ".join(str(f.path) for f in frames)


def _value(header: fits.Header, keyword: str | None) -> str:
    if keyword is None:
        return ""
    value = _defined(header.get(keyword, ""))
    return "" if value is None else str(value).strip()


def _defined(value: object) -> object:
    """A header value, None for a card without one (astropy's ``Undefined``)."""
    return None if isinstance(value, fits.card.Undefined) else value


def _exptime(frame: FrameFile, kw: Keywords) -> float:
    return float(header_number(frame, kw.exptime, what="the exposure time", low=0))


def _mjd(frame: FrameFile, kw: Keywords) -> float:
    return float(header_number(frame, kw.mjd_obs, what="the observation time (MJD)"))


def _flat_lamp(frame: FrameFile, kw: Keywords, instrument: str, arm: str) -> str | None:
    """The lamp tag of a lamp flat, or None if the frame is not a lamp flat."""
    h = frame.header
    dpr_type, dpr_tech = _value(h, kw.dpr_type).upper(), _value(h, kw.dpr_tech).upper()
    if dpr_tech != "ECHELLE,SLIT":
        return None
    if dpr_type == "DOME,FLAT":
        return "DOME"
    if dpr_type == "LAMP,QFLAT":
        return "QLAMP"
    if dpr_type == "LAMP,DFLAT":
        return "DLAMP"
    if dpr_type not in FLAT_TYPES:
        return None
    if instrument == "soxs" and arm == "VIS":
        if _value(h, kw.qth_lamp):
            return "QLAMP"
        if _value(h, kw.d2_lamp):
            return "DLAMP"
    return ""


def classify(frames: Iterable[FrameFile], *, instrument: str, arm: str) -> list[Classified]:
    """Give every input a role from its header (spec §1.3)."""
    kw = keywords_for(instrument)
    classified = []
    unknown = []
    for frame in frames:
        h = frame.header
        catg = _value(h, kw.pro_catg).upper()
        tag = (frame.tag or "").upper()
        if catg.startswith("BP_MAP_RP") or (not catg and tag.startswith("BP_MAP_RP")):
            classified.append(Classified(frame, Role.BAD_PIXEL_MAP))
        elif catg.startswith("MASTER_BIAS_"):
            classified.append(Classified(frame, Role.MASTER_BIAS))
        elif catg.startswith("MASTER_DARK_"):
            classified.append(Classified(frame, Role.MASTER_DARK))
        elif catg.startswith("ORDER_TAB_"):
            obj = _value(h, kw.object).upper()
            lamp = "DLAMP" if "DORDERDEF" in obj else "QLAMP" if "QORDERDEF" in obj else ""
            classified.append(Classified(frame, Role.ORDER_TABLE, lamp))
        elif catg:
            classified.append(Classified(frame, Role.UNUSED_PRODUCT))
        else:
            lamp = _flat_lamp(frame, kw, instrument, arm)
            dpr_type, dpr_tech = _value(h, kw.dpr_type).upper(), _value(h, kw.dpr_tech).upper()
            if lamp is not None:
                classified.append(Classified(frame, Role.FLAT, lamp))
            elif dpr_tech == "IMAGE" and dpr_type in FLAT_TYPES:
                classified.append(Classified(frame, Role.LAMP_OFF))
            elif dpr_tech == "IMAGE" and dpr_type == "DARK":
                classified.append(Classified(frame, Role.RAW_DARK))
            else:
                unknown.append(frame)
    if unknown:
        raise UserInputError(
            f"These inputs are not frames the mflat recipe uses (DPR TYPE/TECH not a lamp flat, lamp-off frame or "
            f"dark, and no PRO CATG): {_names(unknown)}. Remove them from the SOF or directory."
        )
    return classified


def identify_instrument_and_arm(frames: list[FrameFile]) -> tuple[str, str]:
    """The instrument setting value and arm shared by all inputs (spec §1.1)."""
    instruments: dict[str, list[FrameFile]] = {}
    for frame in frames:
        if frame.is_table:
            continue
        value = _value(frame.header, "INSTRUME")
        instruments.setdefault(value, []).append(frame)
    if len(instruments) != 1:
        listing = "; ".join(f"{k or '(none)'}: {_names(v)}" for k, v in instruments.items())
        raise UserInputError(
            f"The inputs come from more than one instrument, or lack INSTRUME ({listing}). "
            "Give frames of one instrument only."
        )
    (instrume,) = instruments
    instrument = instrument_from_header(instrume)
    if instrument is None:
        raise UserInputError(
            f"INSTRUME = '{instrume}' in {_names(instruments[instrume])} is neither SOXS nor XSHOOTER. "
            "soxs_mflat reduces SOXS and X-shooter frames only."
        )
    arms: dict[str, list[FrameFile]] = {}
    for frame in frames:
        if frame.is_table:
            continue
        value = _value(frame.header, "ESO SEQ ARM").upper()
        if value:
            arms.setdefault(value, []).append(frame)
    if len(arms) != 1:
        listing = "; ".join(f"{k}: {_names(v)}" for k, v in arms.items()) or "no ESO SEQ ARM card anywhere"
        raise UserInputError(f"The inputs must all be of one arm ({listing}). Split them into one set per arm.")
    (arm,) = arms
    if (instrument, arm) not in {("soxs", "VIS"), ("soxs", "NIR"), ("xsh", "UVB"), ("xsh", "VIS"), ("xsh", "NIR")}:
        raise UserInputError(f"{instrume} has no {arm} arm ({_names(arms[arm])}). Check ESO SEQ ARM.")
    return instrument, arm


def _require(frames: Iterable[FrameFile], keyword: str, what: str) -> None:
    missing = [f for f in frames if keyword not in f.header]
    if missing:
        raise UserInputError(
            f"{_names(missing)} lack(s) the {keyword} keyword, needed for {what}. Use the frames as delivered by the "
            "archive (headers untouched), or add the card."
        )


def _unique(frames: list[FrameFile], read: Callable[[FrameFile], object], what: str, fix: str) -> object:
    groups: dict[object, list[FrameFile]] = {}
    for frame in frames:
        groups.setdefault(read(frame), []).append(frame)
    if len(groups) > 1:
        listing = "; ".join(f"{k}: {_names(v)}" for k, v in groups.items())
        raise UserInputError(f"The flats have more than one {what} ({listing}). {fix}")
    return next(iter(groups))


def _binning(frame: FrameFile, kw: Keywords, arm: str) -> tuple[int, int]:
    """(x, y) binning of a frame; NIR detectors are never binned."""
    return (1, 1) if arm == "NIR" else _header_binning(frame, kw)


def _header_binning(frame: FrameFile, kw: Keywords) -> tuple[int, int]:
    """(x, y) binning the header states, 1 where a card is absent."""
    x, y = (header_number(frame, keyword, what="the binning", required=False, integer=True, low=1, high=MAX_BINNING)
            for keyword in (kw.binx, kw.biny))
    return (x or 1, y or 1)


def _gain(frame: FrameFile, kw: Keywords, instrument: str) -> float | None:
    """The largest positive gain card (CONAD, and GAIN for SOXS), None if none holds one."""
    h = frame.header
    values = [h.get(kw.conad)] + ([h.get(kw.gain)] if instrument == "soxs" else [])
    numbers = [float(v) for v in values if is_finite_number(v) and v > 0]
    return max(numbers) if numbers else None


def verify(classified: list[Classified], *, instrument: str, arm: str) -> VerifiedInputs:
    """Check the classified inputs make one complete, consistent mflat set (spec §1.3–§1.4)."""
    kw = keywords_for(instrument)
    detector = detector_for(instrument, arm)
    by_role: dict[Role, list[Classified]] = {}
    for item in classified:
        by_role.setdefault(item.role, []).append(item)
    flats = [c for c in by_role.get(Role.FLAT, [])]
    if not flats:
        raise UserInputError(
            "No lamp flats were found among the inputs (DPR TECH = ECHELLE,SLIT with DPR TYPE FLAT,LAMP, LAMP,FLAT, "
            "LAMP,QFLAT, LAMP,DFLAT or DOME,FLAT). Add the night's lamp flats to the SOF or directory."
        )
    flat_frames = [c.frame for c in flats]
    for keyword, what in ((kw.exptime, "the exposure-time check"), (kw.mjd_obs, "sorting and dark matching")):
        _require(flat_frames, keyword, what)
    lamps: dict[str, list[FrameFile]] = {}
    for item in flats:
        lamps.setdefault(item.lamp, []).append(item.frame)
    notes: list[str] = []
    if instrument == "xsh" and ({"DLAMP", "QLAMP"} & set(lamps)) and not {"DLAMP", "QLAMP"} <= set(lamps):
        have = "D2 (LAMP,DFLAT)" if "DLAMP" in lamps else "QTH (LAMP,QFLAT)"
        need = "QTH (LAMP,QFLAT)" if "DLAMP" in lamps else "D2 (LAMP,DFLAT)"
        raise UserInputError(
            f"X-shooter {arm} flats of the {have} lamp were given ({_names(lamps.get('DLAMP', lamps.get('QLAMP', [])))}) "
            f"but none of the {need} lamp. Add the other lamp's flats: both are needed to stitch the master flat."
        )
    stitchable = instrument == "xsh" and arm == "UVB" and {"DLAMP", "QLAMP"} <= set(lamps)
    if len(lamps) > 1 and not stitchable:
        listing = "; ".join(f"{k or 'generic'}: {_names(v)}" for k, v in lamps.items())
        raise UserInputError(
            f"Flats of more than one lamp were given ({listing}); only X-shooter UVB D2+QTH flats are stitched. "
            "Reduce each lamp with its own SOF."
        )
    for lamp, frames in lamps.items():
        if len(frames) < MIN_FLATS:
            label = f"{lamp} " if lamp else ""
            raise UserInputError(
                f"Only {len(frames)} {label}lamp flat(s) were given ({_names(frames)}); at least {MIN_FLATS} are needed "
                "for a robust sigma-clipped stack. Add more flats taken with the same setup."
            )
        _unique(frames, lambda f: _exptime(f, kw), "exposure time",
                "Give flats of a single exposure time (one SOF per exposure time).")
    slit_keyword = kw.slit[arm]
    _require(flat_frames, slit_keyword, "the slit check")
    slit = str(_unique(flat_frames, lambda f: _value(f.header, slit_keyword), "slit",
                       "Give flats taken with one slit only."))
    if arm != "NIR":
        _require(flat_frames, kw.binx, "the binning")
        _require(flat_frames, kw.biny, "the binning")
    binning = _unique(flat_frames, lambda f: _binning(f, kw, arm), "binning", "Give flats of one binning only.")
    read_speed = str(_unique(flat_frames, lambda f: _value(f.header, kw.read_speed), "read speed",
                             "Give flats of one readout mode only."))
    gain_value = _unique(flat_frames, lambda f: _gain(f, kw, instrument), "gain",
                         "Give flats read out with one gain setting only.")
    if gain_value is None:
        gain, gain_source = detector.default_gain, "detector default (no gain keyword in the flats)"
        notes.append(f"Gain read from the detector table: {gain} e-/ADU (the flats carry no {kw.conad}).")
    else:
        gain, gain_source = float(gain_value), "header"
    ron_value = _unique(flat_frames, lambda f: header_number(f, kw.ron, what="the read noise", required=False, low=0),
                        f"read noise ({kw.ron})", "Give flats of one readout mode only.")
    ron, ron_source = (detector.default_ron, "detector default") if ron_value is None else (float(ron_value), "header")

    tables = by_role.get(Role.ORDER_TABLE, [])
    wrong_arm = [t.frame for t in tables if _value(t.frame.header, kw.arm).upper() not in ("", arm)]
    if wrong_arm:
        raise UserInputError(
            f"The order-centre table(s) {_names(wrong_arm)} are for another arm than the {arm} flats. Give the "
            f"ORDER_TAB_{arm} product of soxs_order_centres for this arm."
        )
    for t in tables:
        table_binning = _header_binning(t.frame, kw)
        if table_binning not in ((1, 1), binning):
            raise UserInputError(
                f"The order-centre table {t.frame.path} was made at binning {table_binning[0]}x{table_binning[1]} but "
                f"the flats are {binning[0]}x{binning[1]}. Give an order-centre table in unbinned pixels (binning 1x1) "
                "or one made at the flats' binning."
            )
    lamp_sets = []
    for lamp, frames in sorted(lamps.items(), key=lambda item: LAMP_TAGS.index(item[0])):
        candidates = [t for t in tables if t.lamp == lamp]
        if not candidates and not stitchable:
            candidates = tables
        if not candidates:
            what = {"DLAMP": "LAMP,DORDERDEF", "QLAMP": "LAMP,QORDERDEF"}.get(lamp, "")
            extra = f" with OBJECT = {what}" if stitchable else ""
            raise UserInputError(
                f"No order-centre table (PRO CATG = ORDER_TAB_{arm}){extra} was given for the {lamp or 'lamp'} flats "
                f"{_names(frames)}. Add the soxs_order_centres product for this arm (and lamp) to the SOF."
            )
        if len(candidates) > 1:
            raise UserInputError(
                f"More than one order-centre table fits the {lamp or 'lamp'} flats: {_names(c.frame for c in candidates)}. "
                "Keep only the one to use."
            )
        frames.sort(key=lambda f: _mjd(f, kw))
        lamp_sets.append(LampSet(lamp, tuple(frames), candidates[0].frame, _exptime(frames[0], kw)))

    biases = [c.frame for c in by_role.get(Role.MASTER_BIAS, [])]
    master_darks = [c.frame for c in by_role.get(Role.MASTER_DARK, [])]
    darks = [c.frame for c in by_role.get(Role.LAMP_OFF, [])] or [c.frame for c in by_role.get(Role.RAW_DARK, [])]
    _require(darks + master_darks, kw.exptime, "dark scaling")
    _require(darks, kw.mjd_obs, "matching each flat with its nearest dark")
    for dark in darks + master_darks:  # scaled by their exposure times: check them now
        _exptime(dark, kw)
    dark_mjds = {dark.path: _mjd(dark, kw) for dark in darks}
    if arm in ("UVB", "VIS"):
        if not biases:
            raise UserInputError(
                f"No master bias (PRO CATG = MASTER_BIAS_{arm}) was given for the {arm} flats. Run soxs_mbias and add "
                "its product to the SOF."
            )
        if len(biases) > 1:
            raise UserInputError(f"More than one master bias was given ({_names(biases)}). Keep only the one to use.")
    elif not (master_darks or darks):
        raise UserInputError(
            "No dark was given for the NIR flats: add the lamp-off frames taken with them (DPR TECH = IMAGE), raw darks "
            "of the same exposure time, or a MASTER_DARK_NIR product to the SOF."
        )
    if len(master_darks) > 1:
        raise UserInputError(f"More than one master dark was given ({_names(master_darks)}). Keep only the one to use.")
    for calibration in biases + master_darks + darks:
        if _binning(calibration, kw, arm) != binning:
            raise UserInputError(
                f"The calibration {calibration.path} has binning {_binning(calibration, kw, arm)} but the flats have "
                f"{binning}. Give calibrations made at the flats' binning."
            )
        if kw.read_speed in calibration.header and _value(calibration.header, kw.read_speed) != read_speed:
            raise UserInputError(
                f"The calibration {calibration.path} was read out at speed {_value(calibration.header, kw.read_speed)} "
                f"but the flats at {read_speed}. Give calibrations taken in the flats' readout mode."
            )
    master = (biases or master_darks)
    if master:
        measured = master[-1].header.get(kw.qc_raw_ron)
        if is_finite_number(measured) and measured > 0 and kw.datancom in master[-1].header:
            ron, ron_source = float(measured), f"QC RAW RON of {master[-1].path.name}"
    bad_pixel_maps = [c.frame for c in by_role.get(Role.BAD_PIXEL_MAP, [])]
    if len(bad_pixel_maps) > 1:
        raise UserInputError(f"More than one static bad-pixel map was given ({_names(bad_pixel_maps)}). Keep one.")
    unused = [c.frame for c in by_role.get(Role.UNUSED_PRODUCT, [])]
    if unused:
        notes.append(f"Ignored products not used by mflat: {_names(unused)}.")
    return VerifiedInputs(
        instrument=instrument,
        arm=arm,
        detector=detector,
        keywords=kw,
        binning=binning,
        lamp_sets=tuple(lamp_sets),
        master_bias=biases[0] if biases else None,
        master_dark=master_darks[0] if master_darks else None,
        darks=tuple(sorted(darks, key=lambda f: dark_mjds[f.path])),
        bad_pixel_map=bad_pixel_maps[0] if bad_pixel_maps else None,
        gain=gain,
        gain_source=gain_source,
        ron=ron,
        ron_source=ron_source,
        slit=slit,
        read_speed=read_speed,
        notes=tuple(notes),
    )
