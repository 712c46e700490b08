"""Classification by header and verification of complete, consistent input sets."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import frame_header, write_frame, write_order_table

from soxs_mflat.errors import UserInputError
from soxs_mflat.frames import read_frame_file
from soxs_mflat.inputs import Role, classify, identify_instrument_and_arm, verify
from soxs_mflat.sof import InputFile


def _load(paths: list[Path], tags: dict[str, str] | None = None):
    return [read_frame_file(InputFile(p, (tags or {}).get(p.name))) for p in paths]


def _verify(paths: list[Path], tags: dict[str, str] | None = None):
    frames = _load(paths, tags)
    instrument, arm = identify_instrument_and_arm(frames)
    return verify(classify(frames, instrument=instrument, arm=arm), instrument=instrument, arm=arm)


@pytest.mark.parametrize(
    ("instrument", "arm", "kind", "lamp", "role", "lamp_tag"),
    [
        ("soxs", "NIR", "flat", "", Role.FLAT, ""),
        ("soxs", "NIR", "lamp_off", "", Role.LAMP_OFF, ""),
        ("soxs", "NIR", "dark", "", Role.RAW_DARK, ""),
        ("soxs", "NIR", "master_dark", "", Role.MASTER_DARK, ""),
        ("soxs", "VIS", "flat", "", Role.FLAT, "QLAMP"),
        ("soxs", "VIS", "master_bias", "", Role.MASTER_BIAS, ""),
        ("xsh", "NIR", "flat", "", Role.FLAT, ""),
        ("xsh", "NIR", "lamp_off", "", Role.LAMP_OFF, ""),
        ("xsh", "NIR", "dark", "", Role.RAW_DARK, ""),
        ("xsh", "VIS", "flat", "", Role.FLAT, ""),
        ("xsh", "VIS", "master_bias", "", Role.MASTER_BIAS, ""),
        ("xsh", "UVB", "flat", "DLAMP", Role.FLAT, "DLAMP"),
        ("xsh", "UVB", "flat", "QLAMP", Role.FLAT, "QLAMP"),
        ("xsh", "UVB", "master_bias", "", Role.MASTER_BIAS, ""),
    ],
)
def test_classification_by_header(tmp_path: Path, instrument, arm, kind, lamp, role, lamp_tag) -> None:
    path = write_frame(tmp_path / "f.fits", frame_header(instrument=instrument, arm=arm, kind=kind, lamp=lamp),
                       product=kind.startswith("master"))
    (item,) = classify(_load([path], {"f.fits": "MISLEADING_TAG"}), instrument=instrument, arm=arm)
    assert item.role is role
    assert item.lamp == lamp_tag


def test_order_tables_and_bad_pixel_map(tmp_path: Path) -> None:
    d = write_order_table(tmp_path / "d.fits", instrument="xsh", arm="UVB", obj="LAMP,DORDERDEF")
    q = write_order_table(tmp_path / "q.fits", instrument="xsh", arm="UVB", obj="LAMP,QORDERDEF")
    bpm = write_frame(tmp_path / "bpm.fits", frame_header(instrument="xsh", arm="UVB", kind="none"))
    items = classify(_load([d, q, bpm], {"bpm.fits": "BP_MAP_RP_UVB"}), instrument="xsh", arm="UVB")
    assert [(i.role, i.lamp) for i in items] == [(Role.ORDER_TABLE, "DLAMP"), (Role.ORDER_TABLE, "QLAMP"),
                                                  (Role.BAD_PIXEL_MAP, "")]


@pytest.mark.parametrize(("instrument", "arm"), [("soxs", "NIR"), ("soxs", "VIS"), ("xsh", "NIR"), ("xsh", "VIS")])
def test_complete_sets_verify(frame_set, instrument: str, arm: str) -> None:
    inputs = _verify(frame_set(instrument=instrument, arm=arm))
    assert (inputs.instrument, inputs.arm) == (instrument, arm)
    assert len(inputs.lamp_sets) == 1 and len(inputs.lamp_sets[0].flats) == 5
    assert (inputs.master_bias is not None) == (arm != "NIR")
    assert len(inputs.darks) == (5 if arm == "NIR" else 0)
    assert inputs.ron_source.startswith("QC RAW RON") == (arm != "NIR")


def test_uvb_needs_both_lamps_and_pairs_tables(frame_set, tmp_path: Path) -> None:
    inputs = _verify(frame_set(instrument="xsh", arm="UVB", lamps=("DLAMP", "QLAMP")))
    assert [(s.lamp, s.order_table.path.name) for s in inputs.lamp_sets] == [
        ("DLAMP", "order_tabDLAMP.fits"), ("QLAMP", "order_tabQLAMP.fits")]
    only_d = [p for p in frame_set(instrument="xsh", arm="UVB", lamps=("DLAMP",))]
    with pytest.raises(UserInputError, match=r"D2 \(LAMP,DFLAT\).*none of the QTH"):
        _verify(only_d)


def test_too_few_flats(frame_set) -> None:
    with pytest.raises(UserInputError, match=r"Only 4 lamp flat\(s\).*flat_3.fits.*at least 5"):
        _verify(frame_set(n_flats=4))


@pytest.mark.parametrize(
    ("extra", "pattern"),
    [
        ({"EXPTIME": 20.0}, "more than one exposure time"),
        ({"ESO INS NISE NAME": "SLIT5.0"}, "more than one slit"),
        ({"ESO DET READ CURID": 2}, "more than one read speed"),
        ({"ESO DET OUT1 CONAD": 3.1}, "more than one gain"),
    ],
)
def test_inconsistent_flats(frame_set, extra: dict, pattern: str) -> None:
    paths = frame_set(flat_extra=[{}, {}, {}, {}, extra])
    with pytest.raises(UserInputError, match=pattern) as error:
        _verify(paths)
    assert "flat_4.fits" in str(error.value)


def test_mixed_binning_and_arm_and_instrument(frame_set, tmp_path: Path) -> None:
    paths = frame_set(instrument="soxs", arm="VIS", flat_extra=[{}, {}, {}, {}, {"ESO DET BINX": 2}])
    with pytest.raises(UserInputError, match="more than one binning"):
        _verify(paths)
    nir = write_frame(tmp_path / "nir.fits", frame_header(instrument="soxs", arm="NIR", kind="flat"))
    with pytest.raises(UserInputError, match="one arm"):
        _verify([*paths, nir])
    xsh = write_frame(tmp_path / "xsh.fits", frame_header(instrument="xsh", arm="VIS", kind="flat"))
    with pytest.raises(UserInputError, match="more than one instrument"):
        _verify([*paths, xsh])


def test_missing_calibrations(frame_set) -> None:
    with pytest.raises(UserInputError, match=r"No master bias.*MASTER_BIAS_VIS"):
        _verify(frame_set(instrument="soxs", arm="VIS", with_bias=False))
    with pytest.raises(UserInputError, match="No dark was given for the NIR flats"):
        _verify(frame_set(instrument="soxs", arm="NIR", with_darks=False))
    paths = [p for p in frame_set(instrument="soxs", arm="NIR") if p.name != "order_tab.fits"]
    with pytest.raises(UserInputError, match="No order-centre table"):
        _verify(paths)


def test_order_table_of_other_arm_or_binning(frame_set, tmp_path: Path) -> None:
    paths = [p for p in frame_set(instrument="soxs", arm="VIS") if p.name != "order_tab.fits"]
    other_arm = write_order_table(tmp_path / "nir_tab.fits", instrument="soxs", arm="NIR")
    with pytest.raises(UserInputError, match=r"nir_tab.fits are for another arm"):
        _verify([*paths, other_arm])
    binned = write_order_table(tmp_path / "binned_tab.fits", instrument="soxs", arm="VIS", binning=(2, 2))
    with pytest.raises(UserInputError, match=r"binned_tab.fits was made at binning 2x2 but the flats are 1x1"):
        _verify([*paths, binned])


def test_missing_keyword_and_unknown_frame(frame_set, tmp_path: Path) -> None:
    paths = frame_set()
    header = frame_header(instrument="soxs", arm="NIR", kind="flat")
    del header["EXPTIME"]
    broken = write_frame(tmp_path / "no_exptime.fits", header)
    with pytest.raises(UserInputError, match=r"no_exptime.fits lack\(s\) the EXPTIME keyword"):
        _verify([*paths, broken])
    arc = write_frame(tmp_path / "arc.fits", frame_header(instrument="soxs", arm="NIR", kind="x",
                                                          extra={"ESO DPR TYPE": "LAMP,WAVE", "ESO DPR TECH": "ECHELLE,SLIT"}))
    with pytest.raises(UserInputError, match=r"arc.fits.*Remove them"):
        _verify([*paths, arc])


def test_not_fits_and_truncated(tmp_path: Path) -> None:
    text = tmp_path / "notes.fits"
    text.write_text("this is not FITS")
    with pytest.raises(UserInputError, match=r"notes.fits is not a readable FITS file"):
        read_frame_file(InputFile(text))
    good = write_frame(tmp_path / "good.fits", frame_header(instrument="soxs", arm="NIR", kind="flat"),
                       data=__import__("numpy").zeros((64, 64), dtype="uint16"))
    truncated = tmp_path / "truncated.fits"
    truncated.write_bytes(good.read_bytes()[:4000])
    with pytest.raises(UserInputError, match=r"truncated.fits is not a readable FITS file"):
        read_frame_file(InputFile(truncated))
