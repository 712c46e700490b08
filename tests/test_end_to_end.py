"""End to end: simulate full-size sets, run the recipe through its command line, score against the truth.

Each set is simulated and reduced once (module-scoped fixture; ``make test`` keeps a file on one
xdist worker) and several tests check the products against the issues' accuracy targets.
"""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from astropy.nddata import CCDData

from soxs_mflat.cli import main
from soxs_mflat.frames import science_region
from soxs_mflat.instruments import detector_for
from soxs_mflat.simulate import score, simulate_set

SETS = {
    "soxs-nir": ("soxs", "NIR", (1, 1)),
    "soxs-vis": ("soxs", "VIS", (1, 1)),
    "xsh-nir": ("xsh", "NIR", (1, 1)),
    "xsh-vis": ("xsh", "VIS", (1, 1)),
    "xsh-uvb": ("xsh", "UVB", (1, 1)),
    "xsh-vis-2x2": ("xsh", "VIS", (2, 2)),
    "xsh-uvb-2x2": ("xsh", "UVB", (2, 2)),
}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=list(SETS))
def reduced(request, tmp_path_factory):
    """(name, products dir, score) of one simulated set reduced by the recipe."""
    name = request.param
    instrument, arm, binning = SETS[name]
    base = tmp_path_factory.mktemp(name)
    made = simulate_set(base / "raw", instrument=instrument, arm=arm, binning=binning)
    status = main(["mflat", str(made.sof), "-o", str(base / "out"), "-s", str(made.settings)])
    assert status == 0
    products = base / "out" / "products" / "soxs_mflat"
    return name, products, score(products, made.truth_dir), made


def test_every_order_found_and_none_spurious(reduced) -> None:
    _, _, result, _ = reduced
    assert result["orders_missing"] == [] and result["orders_spurious"] == []


def test_edge_accuracy(reduced) -> None:
    name, _, result, _ = reduced
    edges = result["all"]
    assert edges["median"] <= 0.05, (name, edges)
    assert edges["p95"] <= 0.15, (name, edges)
    assert edges["max"] <= 0.5, (name, edges)


def test_flat_field_at_photon_noise(reduced) -> None:
    name, _, result, _ = reduced
    assert result["flat_error_ratio"] <= 1.05, (name, result["flat_error"], result["flat_noise_expected"])
    assert result["flat_bias_max_abs"] <= 0.002, (name, result["flat_bias_by_order"])
    assert 0.9 <= result["errs_calibration"] <= 1.1, (name, result["errs_calibration"])
    assert result["outlier_fraction_5sigma"] <= 1e-4, (name, result["outlier_fraction_5sigma"])


def test_background_matches_the_true_scattered_light(reduced) -> None:
    name, _, result, _ = reduced
    assert result["background_residual_median_rel"] <= 0.05, (name, result["background_residual_median_rel"])
    assert result["background_fraction_outside_tolerance"] <= 1e-3, (name, result["background_fraction_outside_tolerance"])


def test_bad_pixel_mask(reduced) -> None:
    name, _, result, _ = reduced
    recall = result["mask_recall"]
    assert recall["dead"] >= 0.99, (name, recall)
    assert recall["low_sensitivity"] >= 0.95, (name, recall)
    assert recall.get("hot_detectable", recall["hot"]) >= 0.99, (name, recall)
    assert result["mask_precision"] >= 0.99, (name, result["mask_precision"])
    assert result["dust_masked_fraction"] <= 0.01, (name, result["dust_masked_fraction"])


def test_products_layout(reduced) -> None:
    name, products, _, made = reduced
    arm = SETS[name][1]
    stem = made.sof.stem
    flat_path = products / f"{stem}.fits"
    flat = CCDData.read(flat_path, hdu_mask="QUAL", hdu_uncertainty="ERRS")
    assert flat.data.dtype.kind == "f" and flat.data.dtype.itemsize == 4 and flat.mask.dtype == bool
    header = fits.getheader(flat_path)
    assert header["ESO PRO CATG"] == f"MASTER_FLAT_{arm}"
    assert header["ESO PRO TECH"] == "IMAGE" and header["ESO PRO TYPE"] == "REDUCED"
    assert "ESO DPR TYPE" not in header and "ESO QC ORDEXP90" in header and "ESO QC X RES SD" in header
    assert header["ESO PRO REC1 RAW1 NAME"] and header["ESO PRO REC1 PARAM1 NAME"]
    with fits.open(flat_path) as hdus:
        assert [h.name for h in hdus] == ["FLUX", "QUAL", "ERRS"]
        assert hdus["QUAL"].data.dtype == np.uint8 and set(np.unique(hdus["QUAL"].data)) <= {0, 1}
        assert hdus["ERRS"].header["UTYPE"] == "StdDevUncertainty"
    table_path = products / f"{stem.replace('MFLAT', 'OLOC')}.fits"
    with fits.open(table_path) as hdus:
        assert hdus[0].header["ESO PRO CATG"] == f"ORDER_TAB_{arm}"
        assert [hdu.name for hdu in hdus] == ["PRIMARY", "COEFFS", "ORDER_META", "ORDER_TRACES"]
        assert ("degy_cent" in hdus[1].columns.names) == (SETS[name][:2] != ("soxs", "NIR"))
    log = (products / f"{stem}.log").read_text().strip().splitlines()
    assert log[-1].startswith("Recipe Command: soxspipe -x mflat ")
    assert any(" INFO: Exposure levels (e-): " in line and "values clipped" in line for line in log)  # whatever
    # logging the host set up
    qc_dir = products.parents[1] / "qc" / "soxs_mflat"
    assert (qc_dir / f"{stem}_ORD_LOC.pdf").stat().st_size > 10_000
    lamps = ("_DLAMP", "_QLAMP") if arm == "UVB" else ("",)
    for lamp in lamps:
        assert (qc_dir / f"{stem}_BKGROUND{lamp}.pdf").stat().st_size > 10_000
        assert (products / f"{stem}_BKGROUND{lamp}.fits").exists()
        assert (products / f"{stem}{lamp}.fits").exists()


def test_every_product_passes_strict_verification(reduced) -> None:
    name, products, _, _ = reduced
    written = sorted(products.glob("*.fits"))
    assert len(written) == (9 if SETS[name][1] == "UVB" else 3)
    for path in written:
        with fits.open(path, checksum=True) as hdulist:
            hdulist.verify("exception")
            assert all(hdu.verify_checksum() == 1 and hdu.verify_datasum() == 1 for hdu in hdulist), path.name


def test_prep_cards_reproduce_the_recipe_s_trimming_and_rotation(reduced) -> None:
    """Applying the SOXS PREP cards to a raw flat (as docs/real-data.md does) gives the prepared frame."""
    name, products, _, made = reduced
    instrument, arm, binning = SETS[name]
    header = fits.getheader(products / f"{made.sof.stem}.fits")
    raw_path = next(made.sof.parent.glob("raw/*FLAT*"))
    raw = fits.getdata(raw_path)
    rows, cols = (slice(*map(int, part.split(":"))) for part in header["SOXS PREP TRIMSEC"].split(","))
    prepared = np.rot90(raw, header["SOXS PREP ROTATION"] // 90)[rows, cols]
    assert prepared.shape == fits.getdata(products / f"{made.sof.stem}.fits").shape
    detector = detector_for(instrument, arm)
    np.testing.assert_array_equal(prepared, science_region(raw, detector=detector, binning=binning))
    assert header["SOXS PREP BINNING"] == f"{binning[0]}x{binning[1]}"


def test_rerun_refused_without_overwrite(reduced, capsys) -> None:
    name, products, _, made = reduced
    if name != "soxs-nir":
        pytest.skip("checked once")
    flat_path = products / f"{made.sof.stem}.fits"
    before = flat_path.stat().st_mtime_ns
    status = main(["mflat", str(made.sof), "-o", str(products.parents[1]), "-s", str(made.settings)])
    error = capsys.readouterr().err
    assert status == 2
    assert error.count("already exist") == 1 and "Traceback" not in error
    assert f"\n  products/soxs_mflat/{flat_path.name}\n" in error  # one file a line, relative to the output root
    assert flat_path.stat().st_mtime_ns == before
    assert not list(products.glob("*_ERROR.log"))  # a refusal writes nothing


def test_nearest_darks_still_give_the_hot_pixels(tmp_path) -> None:
    """With fewer lamp-off frames than flats each flat gets its nearest one; the hot pixels are then
    looked for in the clipped mean of all of them (before, not at all: recall 0 on this set)."""
    made = simulate_set(tmp_path / "raw", instrument="soxs", arm="NIR")
    lines = [line for line in made.sof.read_text().splitlines() if "FLAT_OFF_02" not in line and "FLAT_OFF_04" not in line]
    sof = made.sof.with_name(f"{made.sof.stem}_3OFF.sof")
    sof.write_text("\n".join(lines) + "\n")
    assert main(["mflat", str(sof), "-o", str(tmp_path / "out"), "-s", str(made.settings)]) == 0
    products = tmp_path / "out" / "products" / "soxs_mflat"
    log = next(products.glob("*.log")).read_text()
    assert "nearest in MJD-OBS for each flat (3 darks for 5 flats)" in log
    assert "Hot pixels searched in the clipped mean of the 3 darks" in log
    result = score(products, made.truth_dir)
    assert result["mask_recall"]["hot_detectable"] >= 0.99, result["mask_recall"]
    assert result["mask_precision"] >= 0.99, result["mask_precision"]
