"""Product headers and file names on one full simulated run (SOXS NIR, 5 flats and 5 lamp-off frames).

The expectations come from the inputs themselves (the SOF, the files' bytes, the settings file, the
QC table), never from the code that writes the headers.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import ccdproc
import numpy as np
import pandas as pd
import pytest
import yaml
from astropy.io import fits
from astropy.nddata import CCDData

from soxs_mflat.cli import main
from soxs_mflat.frames import science_region
from soxs_mflat.instruments import detector_for
from soxs_mflat.products import product_paths
from soxs_mflat.qc import METRICS
from soxs_mflat.simulate import simulate_set


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    """The simulated set, its products and the UTC dates around the run."""
    base = tmp_path_factory.mktemp("soxs-nir-headers")
    made = simulate_set(base / "raw", instrument="soxs", arm="NIR")
    before = datetime.now(UTC).date().isoformat()
    assert main(["mflat", str(made.sof), "-o", str(base / "out"), "-s", str(made.settings)]) == 0
    after = datetime.now(UTC).date().isoformat()
    products = base / "out" / "products" / "soxs_mflat"
    stem = made.sof.stem
    sof_lines = [line.split() for line in made.sof.read_text().splitlines() if line.strip() and not line.startswith("#")]
    return {
        "made": made,
        "dates": {before, after},
        "flat": products / f"{stem}.fits",
        "table": products / f"{stem.replace('MFLAT', 'OLOC')}.fits",
        "background": products / f"{stem}_BKGROUND.fits",
        "qc_csv": base / "out" / "qc" / "soxs_mflat" / f"{stem}_QC.csv",
        "sof": [(made.sof.parent / path, tag) for path, tag in sof_lines],
    }


def _headers(run: dict) -> list[fits.Header]:
    return [fits.getheader(run[name]) for name in ("flat", "table", "background")]


def _numbered(header: fits.Header, prefix: str, field: str) -> list[str]:
    """Values of ``<prefix><i> <field>`` for i = 1, 2, ... in order."""
    values, index = [], 1
    while f"{prefix}{index} {field}" in header:
        values.append(header[f"{prefix}{index} {field}"])
        index += 1
    return values


@pytest.mark.slow
def test_every_product_passes_strict_verification(run: dict) -> None:
    for name in ("flat", "table", "background"):
        with fits.open(run[name], checksum=True) as hdulist:
            hdulist.verify("exception")
            assert all(hdu.verify_checksum() == 1 for hdu in hdulist)


@pytest.mark.slow
def test_raw_lists_every_flat_and_every_lamp_off_frame(run: dict) -> None:
    raw = {path.name: f"{fits.getheader(path)['ESO DPR TYPE']}_NIR" for path, _ in run["sof"] if "FLAT_O" in path.name}
    assert len(raw) == 10 and sum("FLAT_OFF" in name for name in raw) == 5
    for header in _headers(run):
        names = _numbered(header, "ESO PRO REC1 RAW", "NAME")
        assert len(names) == 10
        assert dict(zip(names, _numbered(header, "ESO PRO REC1 RAW", "CATG"), strict=True)) == raw
        assert header["ESO PRO DATANCOM"] == 5


@pytest.mark.slow
def test_cal_lists_every_calibration_with_the_md5_of_its_file(run: dict) -> None:
    calibrations = [path for path, _ in run["sof"] if "FLAT_O" not in path.name]
    assert calibrations
    for header in _headers(run):
        assert _numbered(header, "ESO PRO REC1 CAL", "NAME") == [path.name for path in calibrations]
        assert _numbered(header, "ESO PRO REC1 CAL", "DATAMD5") == [hashlib.md5(path.read_bytes()).hexdigest()
                                                                    for path in calibrations]
        assert _numbered(header, "ESO PRO REC1 CAL", "CATG") == [fits.getheader(path)["ESO PRO CATG"]
                                                                 for path in calibrations]


@pytest.mark.slow
def test_date_is_the_day_the_file_was_written(run: dict) -> None:
    for header in _headers(run):
        assert header["DATE"][:10] in run["dates"] and header["ESO PRO DATE"][:10] in run["dates"]
        assert header["DATE"][:10] != header["DATE-OBS"][:10]
        assert header.comments["DATE"] == "Date the file was written"


@pytest.mark.slow
def test_params_hold_the_full_names_and_values_of_the_settings(run: dict) -> None:
    settings = yaml.safe_load(run["made"].settings.read_text())
    recipe = settings["soxs-mflat"]
    expected = {name: value for name, value in recipe.items() if not isinstance(value, dict)}
    expected |= {name: value for name, value in recipe["nir"].items() if name != "qc-acceptable-ranges"}
    expected |= settings["background-subtraction"]
    assert "min-percentage-threshold-for-edge-detection" in expected  # the longest name, cut by soxspipe
    for header in _headers(run):
        names = _numbered(header, "ESO PRO REC1 PARAM", "NAME")
        values = [yaml.safe_load(value) for value in _numbered(header, "ESO PRO REC1 PARAM", "VALUE")]
        assert names == list(expected)
        assert values == list(expected.values())


@pytest.mark.slow
def test_qc_cards_are_whole_and_match_the_qc_table(run: dict) -> None:
    table = pd.read_csv(run["qc_csv"])
    frame = table[(table.qc_order == -1) & table.to_header]
    units = table.set_index("qc_name").qc_unit
    assert units["DETECTOR TEMP"] == "kelvin" and units["CPATH TEMP"] == "celsius"  # SOXS NIR header cards
    for header in _headers(run):
        cards = {card.keyword.removeprefix("ESO QC "): card for card in header.cards if card.keyword.startswith("ESO QC ")}
        assert sorted(cards) == sorted(frame.qc_name)
        for name, card in cards.items():
            assert card.comment == METRICS[name].comment  # whole, not cut mid-word
            assert card.value == pytest.approx(frame.loc[frame.qc_name == name, "qc_value"].item(), rel=1e-6)


@pytest.mark.slow
def test_prep_cards_map_the_product_to_the_raw_detector(run: dict) -> None:
    detector = detector_for("soxs", "NIR")
    raw_path = next(path for path, _ in run["sof"] if "FLAT_ON" in path.name)
    raw = fits.getdata(raw_path).astype(np.float64)
    for header in _headers(run):
        assert header["SOXS PREP ROTATION"] == 90 * detector.rotation_k and header["SOXS PREP BINNING"] == "1x1"
        rows, cols = (slice(*map(int, part.split(":"))) for part in header["SOXS PREP TRIMSEC"].split(","))
        prepared = np.rot90(raw, header["SOXS PREP ROTATION"] // 90)[rows, cols]
        np.testing.assert_array_equal(prepared, science_region(raw, detector=detector, binning=(1, 1)))


@pytest.mark.slow
def test_the_documented_way_to_apply_the_flat_to_a_raw_frame(run: dict) -> None:
    """docs/real-data.md: prepare the raw frame with the header's SOXS PREP cards, then divide (ccdproc)."""
    flat = CCDData.read(run["flat"], hdu_uncertainty="ERRS", hdu_mask="QUAL", unit="")
    raw_path = next(path for path, _ in run["sof"] if "FLAT_ON" in path.name)
    raw = CCDData.read(raw_path, unit="adu")
    k = flat.header["HIERARCH SOXS PREP ROTATION"] // 90
    rows, cols = (slice(*map(int, part.split(":"))) for part in flat.header["HIERARCH SOXS PREP TRIMSEC"].split(","))
    science = np.rot90(raw.data, k)[rows, cols]
    assert science.shape == flat.shape
    corrected = ccdproc.flat_correct(CCDData(science, unit="adu"), flat, norm_value=1)
    assert corrected.unit == "adu"
    np.testing.assert_array_equal(corrected.mask, flat.mask)
    good = ~flat.mask
    np.testing.assert_allclose(corrected.data[good], science[good] / flat.data[good], rtol=1e-6)
    # the prepared raw flat is bright inside the orders and dark between them (where FLUX is exactly 1)
    between, inside = flat.data == 1.0, (flat.data != 1.0) & ~flat.mask
    assert np.median(science[between]) < 0.2 * np.median(science[inside])


@pytest.mark.slow
def test_order_table_extensions_are_named_and_columns_carry_units(run: dict) -> None:
    with fits.open(run["table"]) as hdulist:
        assert [hdu.name for hdu in hdulist] == ["PRIMARY", "COEFFS", "ORDER_META", "ORDER_TRACES"]
        assert "EXTNAME" not in hdulist[0].header and "BUNIT" not in hdulist[0].header
        meta, traces = hdulist["ORDER_META"].columns, hdulist["ORDER_TRACES"].columns
        assert dict(zip(meta.names, meta.units, strict=True)) == {
            "order": "", "xmin": "pix", "xmax": "pix", "ymin": "pix", "ymax": "pix",
            "maxThreshold": "", "minThreshold": "", "maxvalue": ""}
        assert dict(zip(traces.names, traces.units, strict=True)) == {
            "xcoord": "pix", "order": "", "ycoord_centre": "pix", "ycoord_edgeup": "pix", "ycoord_edgelow": "pix"}
        assert not any(hdulist["COEFFS"].columns.units)


@pytest.mark.parametrize(
    ("stem", "table"),
    [
        ("20250125T023824_NIR_1X1_3_MFLAT_QTH_SLIT1_5_10_0S_SOXS", "20250125T023824_NIR_1X1_3_OLOC_QTH_SLIT1_5_10_0S_SOXS"),
        ("soxs-mflat_NIR_2025-01-24", "soxs-mflat_NIR_2025-01-24_OLOC"),
        ("my_flats", "my_flats_OLOC"),
        ("MYSET", "MYSET_OLOC"),
    ],
)
def test_one_stem_scheme_for_every_input(stem: str, table: str) -> None:
    """The data organiser's MFLAT → OLOC where the stem has MFLAT (downstream SOFs expect it), else ``_OLOC``."""
    paths = product_paths(stem=stem, root=Path("/w"), instrument="soxs")
    assert paths.master_flat().name == f"{stem}.fits"
    assert paths.order_table().name == f"{table}.fits"
    assert paths.order_table("DLAMP").name == f"{table}_DLAMP.fits"
    assert paths.background().name == f"{stem}_BKGROUND.fits"
    assert paths.order_table().name.lower() != paths.master_flat().name.lower()
