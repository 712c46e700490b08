"""FITS through astropy: our readers on files astropy writes, and the products astropy must accept.

Each ``test_defect_*`` pins one way the project's former private FITS reader/writer differed from
astropy; every input file here is written by astropy in the test, not by our writer.
"""

from __future__ import annotations

import gzip
import logging
import warnings
from pathlib import Path

import astropy.units as u
import numpy as np
import pytest
from astropy.io import fits
from astropy.io.fits.verify import VerifyError
from astropy.nddata import CCDData, StdDevUncertainty

from soxs_mflat.errors import UserInputError
from soxs_mflat.frames import (
    read_bad_pixel_map,
    read_frame_file,
    read_order_table,
    read_prepared,
    read_raw_adu,
    table_columns,
)
from soxs_mflat.products import image_hdus, primary_image_hdu, write_hdus
from soxs_mflat.sof import InputFile

LENIENT_CARDS = [
    "OBJECT  = 'unterminated string",
    "BADNUM  =                 1_000",
    "NANVALUE=                  NAN",
    "lowkey  =                    3",
    "hierarch eso det out1 gain = 1.5",
    "DP1     = 'AXIS.1: 1'",
]
"""Raw cards an archive may hold: astropy repairs the first five; the last is a record-valued card."""


def _raw_frame(path: Path, cards: list[str], data: np.ndarray | None = None) -> Path:
    """A raw frame written by astropy, then each of its placeholder cards overwritten by one of ``cards``
    (80-character images that astropy would repair while writing them)."""
    hdu = fits.PrimaryHDU(np.arange(48, dtype=np.uint16).reshape(6, 8) if data is None else data)
    hdu.header["EXPTIME"] = 10.0
    placeholders = [fits.Card(f"HOLD{i:04d}", i) for i in range(len(cards))]
    hdu.header.extend(placeholders)
    hdu.writeto(path)
    content = path.read_bytes()
    for placeholder, image in zip(placeholders, cards, strict=True):
        content = content.replace(placeholder.image.encode("ascii"), f"{image:80}".encode("ascii"), 1)
    path.write_bytes(content)
    return path


def _gzipped(path: Path) -> Path:
    packed = path.with_name(path.name + ".gz")
    packed.write_bytes(gzip.compress(path.read_bytes()))
    return packed


def _order_table(path: Path, meta: list[fits.Column], *, primary: fits.PrimaryHDU | None = None,
                 table: type[fits.BinTableHDU] | type[fits.TableHDU] = fits.BinTableHDU) -> Path:
    """An order table (x fitted, centre degrees 1 × 1) written by astropy with the metadata columns ``meta``."""
    names = ["degorder_cent", "degy_cent", "cent_00", "cent_01", "cent_10", "cent_11"]
    values = [1, 1, -900.0, 0.0, 100.0, 0.5]
    formats = ["I4", "I4", "E15.7", "E15.7", "E15.7", "E15.7"] if table is fits.TableHDU else ["K", "K", "D", "D", "D", "D"]
    coefficients = [fits.Column(name=n, format=f, array=np.array([v])) for n, f, v in zip(names, formats, values, strict=True)]
    hdus = [primary or fits.PrimaryHDU(), table.from_columns(coefficients), table.from_columns(meta)]
    fits.HDUList(hdus).writeto(path)
    return path


def _limits(formats: tuple[str, str] = ("D", "K")) -> list[fits.Column]:
    return [fits.Column(name="order", format=formats[1], array=np.array([10, 11])),
            *(fits.Column(name=name, format=formats[0], array=np.array([1.5, 2.5]))
              for name in ("ymin", "ymax", "xmin", "xmax"))]


def _product(path: Path, header: fits.Header, shape: tuple[int, int] = (20, 30)) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(7)
    flux = rng.normal(1.0, 0.1, shape).astype(np.float32)
    mask = rng.random(shape) < 0.1
    return write_hdus(image_hdus(flux, mask, np.abs(flux) / 10, header), path), flux


def test_products_verify_and_carry_astropy_checksums(tmp_path: Path) -> None:
    header = fits.Header([("OBJECT", "FLAT"), ("BZERO", 32768), ("NAXIS", 2), ("HIERARCH ESO QC VALUE", 1.25)])
    path, flux = _product(tmp_path / "flat.fits", header)
    background = write_hdus([primary_image_hdu(flux.T, header)], tmp_path / "bkg.fits")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with fits.open(path, checksum=True) as hdulist, fits.open(background, checksum=True) as single:
            hdulist.verify("exception")
            single.verify("exception")
            assert [hdu.name for hdu in hdulist] == ["FLUX", "QUAL", "ERRS"]
            assert [hdu.header["BITPIX"] for hdu in hdulist] == [-32, 8, -32]
            assert all(hdu.verify_checksum() == 1 and hdu.verify_datasum() == 1 for hdu in [*hdulist, *single])
            assert "BZERO" not in hdulist[0].header and hdulist[0].header["EXTEND"] is True
            assert "EXTEND" not in single[0].header
            assert hdulist[2].header["UTYPE"] == "StdDevUncertainty"
            np.testing.assert_array_equal(single[0].data, flux.T)


@pytest.mark.parametrize("unit", ["electron", u.dimensionless_unscaled])
def test_master_flat_reads_as_ccddata(tmp_path: Path, unit: str | u.UnitBase) -> None:
    path, flux = _product(tmp_path / "flat.fits", fits.Header([("OBJECT", "FLAT")]))
    flat = CCDData.read(path, hdu_uncertainty="ERRS", hdu_mask="QUAL", unit=unit)
    prepared = read_prepared(path)
    assert flat.unit == u.Unit(unit) and isinstance(flat.uncertainty, StdDevUncertainty)
    np.testing.assert_array_equal(flat.data, flux)
    np.testing.assert_array_equal(flat.mask, prepared.mask)
    np.testing.assert_array_equal(flat.uncertainty.array, prepared.uncertainty)


def test_failed_write_leaves_no_temporary_and_keeps_the_old_product(tmp_path: Path) -> None:
    path, _ = _product(tmp_path / "flat.fits", fits.Header([("OBJECT", "FIRST")]))
    header = fits.Header()
    header["HIERARCH ESO " + "X" * 62] = "a string the card has no room for"
    with pytest.raises(VerifyError):
        _product(path, header)
    assert [p.name for p in tmp_path.iterdir()] == ["flat.fits"]
    assert fits.getval(path, "OBJECT") == "FIRST"


@pytest.mark.parametrize("compressed", [False, True])
def test_calibrations_and_bad_pixel_maps_written_by_astropy(tmp_path: Path, compressed: bool) -> None:
    rng = np.random.default_rng(3)
    level = rng.normal(200.0, 3.0, (12, 10)).astype(np.float32)
    qual = (rng.random((12, 10)) < 0.2).astype(np.uint8)
    bias = tmp_path / "MASTER_BIAS.fits"
    fits.HDUList([fits.PrimaryHDU(level), fits.ImageHDU(qual, name="QUAL"),
                  fits.ImageHDU(np.full((12, 10), 3.8, np.float32), name="ERRS")]).writeto(bias)
    bad_pixels = tmp_path / "BP_MAP.fits"
    fits.PrimaryHDU(np.where(qual == 1, 128, 0).astype(np.int16)).writeto(bad_pixels)
    if compressed:
        bias, bad_pixels = _gzipped(bias), _gzipped(bad_pixels)
    prepared = read_prepared(bias)
    assert prepared.data.dtype == prepared.uncertainty.dtype == np.float32 and prepared.mask.dtype == bool
    np.testing.assert_array_equal(prepared.data, level)
    np.testing.assert_array_equal(prepared.mask, qual == 1)
    np.testing.assert_array_equal(prepared.uncertainty, np.float32(3.8))
    np.testing.assert_array_equal(read_bad_pixel_map(bad_pixels, (12, 10)), qual == 1)
    with pytest.raises(UserInputError, match=r"BP_MAP.*\(12, 10\) but the prepared frames are \(10, 12\)"):
        read_bad_pixel_map(bad_pixels, (10, 12))


def test_defect_1_hierarch_card_too_long_for_its_value_raises(tmp_path: Path) -> None:
    """A 66-character HIERARCH keyword leaves no room for a string value: writing raises, naming it."""
    keyword = "ESO QC " + "X" * 59
    assert len(keyword) >= 66
    header = fits.Header()
    header[f"HIERARCH {keyword}"] = "value"
    with pytest.raises(VerifyError, match=keyword):
        _product(tmp_path / "flat.fits", header)


def test_defect_2_scaled_float32_table_columns_in_double_precision(tmp_path: Path) -> None:
    fractions = np.array([0.46856481, 0.2], np.float32)
    path = _order_table(tmp_path / "table.fits", [*_limits(), fits.Column(name="mjd", format="E", array=fractions)])
    fits.setval(path, "TZERO6", value=60960.0, ext=2)
    fits.setval(path, "TSCAL6", value=1.0, ext=2)
    table = read_order_table(path)
    with fits.open(path) as hdulist:
        np.testing.assert_array_equal(table.extra_meta["mjd"], hdulist[2].data["mjd"])
    np.testing.assert_allclose(table.extra_meta["mjd"], 60960.0 + fractions.astype(np.float64), rtol=0, atol=1e-9)


def test_defect_3_blank_and_lenient_cards_read_alike_plain_and_compressed(tmp_path: Path) -> None:
    image = np.arange(48, dtype=np.int16).reshape(6, 8)
    image[2, 3] = -999
    plain = _raw_frame(tmp_path / "raw.fits", ["BLANK   =                 -999", *LENIENT_CARDS], data=image)
    packed = _gzipped(plain)
    data, data_gz = read_raw_adu(plain), read_raw_adu(packed)
    assert data.dtype == data_gz.dtype == np.float32
    assert np.isnan(data[2, 3]) and np.isnan(data).sum() == 1
    np.testing.assert_array_equal(data, data_gz)
    header, header_gz = (read_frame_file(InputFile(p)).header for p in (plain, packed))
    assert [card.image for card in header.cards] == [card.image for card in header_gz.cards]
    with fits.open(plain) as hdulist:
        hdulist.verify("silentfix")
        expected = hdulist[0].header
        for keyword in ("BADNUM", "NANVALUE", "LOWKEY", "DP1.AXIS.1"):
            assert header[keyword] == expected[keyword], keyword


def test_defect_4_unsigned_integer_table_columns(tmp_path: Path) -> None:
    big = np.array([2**63 + 5, 2**64 - 1], np.uint64)
    meta = [fits.Column(name="order", format="I", bzero=2**15, array=np.array([40000, 40001], np.uint16)),
            *_limits()[1:], fits.Column(name="u32", format="J", bzero=2**31, array=np.array([3_000_000_000, 7], np.uint32)),
            fits.Column(name="u64", format="K", bzero=2**63, array=big)]
    table = read_order_table(_order_table(tmp_path / "table.fits", meta))
    np.testing.assert_array_equal(table.orders, [40000, 40001])
    np.testing.assert_array_equal(table.extra_meta["u32"], [3e9, 7.0])
    np.testing.assert_array_equal(table.extra_meta["u64"], big.astype(np.float64))


def test_defect_5_random_groups_primary_does_not_hide_extensions(tmp_path: Path) -> None:
    groups = fits.GroupData(np.zeros((3, 1, 2, 2), np.float32), parnames=["uu"], pardata=[np.arange(3.0)], bitpix=-32)
    path = _order_table(tmp_path / "table.fits", _limits(), primary=fits.GroupsHDU(groups))
    frame = read_frame_file(InputFile(path))
    assert frame.n_hdus == 3 and frame.is_table
    np.testing.assert_array_equal(read_order_table(path).orders, [10, 11])


def test_defect_6_unterminated_string_card_is_repaired_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _raw_frame(tmp_path / "raw.fits", LENIENT_CARDS[:1])
    with caplog.at_level(logging.WARNING, logger="soxs_mflat"):
        header = read_frame_file(InputFile(path)).header
    assert header["EXPTIME"] == 10.0 and "unterminated string" in header["OBJECT"]
    assert any(str(path) in record.getMessage() and "'OBJECT'" in record.getMessage() for record in caplog.records)
    np.testing.assert_array_equal(read_raw_adu(path), np.arange(48).reshape(6, 8))


def test_defect_7_raw_cards_reach_products_only_as_standard_fits(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    raw = _raw_frame(tmp_path / "raw.fits", [*LENIENT_CARDS, "BAD*KEY =                    1"])
    with caplog.at_level(logging.WARNING, logger="soxs_mflat"):
        header = read_frame_file(InputFile(raw)).header
    assert "BAD*KEY" not in header
    messages = " ".join(record.getMessage() for record in caplog.records)
    assert all(f"'{keyword}'" in messages for keyword in ("OBJECT", "BADNUM", "NANVALUE", "BAD*KEY"))
    path, _ = _product(tmp_path / "flat.fits", header)
    raw_images = {f"{image:80}" for image in LENIENT_CARDS[:4]}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with fits.open(path, checksum=True) as hdulist:
            hdulist.verify("exception")
            assert not raw_images & {card.image for card in hdulist[0].header.cards}
            assert hdulist[0].header["DP1.AXIS.1"] == 1.0 and hdulist[0].header["EXPTIME"] == 10.0


def test_defect_8_tdim_and_ascii_tables(tmp_path: Path) -> None:
    cube = np.arange(12.0).reshape(2, 2, 3)
    path = _order_table(tmp_path / "tdim.fits", [*_limits(), fits.Column(name="shape", format="6D", dim="(3,2)", array=cube)])
    with fits.open(path) as hdulist:
        columns = table_columns(hdulist[2])
        assert columns["shape"].shape == hdulist[2].data["shape"].shape == (2, 2, 3)
    np.testing.assert_array_equal(columns["shape"], cube)
    ascii_path = _order_table(tmp_path / "ascii.fits", _limits(("F8.2", "I4")), table=fits.TableHDU)
    table = read_order_table(ascii_path)
    frame = read_frame_file(InputFile(ascii_path))
    assert frame.is_table
    np.testing.assert_array_equal(table.orders, [10, 11])
    np.testing.assert_array_equal(table.b_max, [1.5, 2.5])
    assert table.centre.coeffs[1, 1] == 0.5


@pytest.mark.parametrize("reader", [read_raw_adu, read_prepared, read_order_table,
                                    lambda path: read_frame_file(InputFile(path))])
@pytest.mark.parametrize("damage", ["empty", "text", "truncated", "truncated_gz"])
def test_broken_files_are_one_paragraph_user_errors(tmp_path: Path, reader: object, damage: str) -> None:
    whole = _raw_frame(tmp_path / "whole.fits", [], data=np.zeros((60, 60), np.uint16)).read_bytes()
    content = {"empty": b"", "text": b"this is not FITS" * 300, "truncated": whole[:4000],
               "truncated_gz": gzip.compress(whole[:4000])}[damage]
    path = tmp_path / ("broken.fits.gz" if damage.endswith("gz") else "broken.fits")
    path.write_bytes(content)
    if damage == "truncated_gz" and reader not in (read_raw_adu, read_prepared, read_order_table):
        pytest.skip("classification reads headers only: a cut compressed file is reported when its pixels are read")
    with pytest.raises(UserInputError, match=path.name) as raised:
        reader(path)
    assert "\n" not in str(raised.value)
