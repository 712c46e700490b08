"""soxs_mflat.fitsio against astropy: header values, images, tables and checksums, both ways."""

from __future__ import annotations

import gzip
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from soxs_mflat.fitsio import HDU, FitsFile, FitsFormatError, Header, format_card, write_fits

TRICKY_CARDS = [
    "SIMPLE  =                    T / conforms to FITS standard",
    "BITPIX  =                    8",
    "NAXIS   =                    0",
    "EXTEND  =                    T",
    "OBJECT  = 'it''s a flat'      / quotes escaped",
    "LEADING = '  spaced  '",
    "EMPTY   = ''",
    "BLANKSTR= '        '",
    "NOVALUE =                      / undefined value",
    "EXPTIME =                 20.0 / Integration time (s)",
    "DEXP    =             1.5D-03 / Fortran exponent",
    "BIGINT  =  1234567890123456789",
    "NEGINT  =                  -42",
    "LOGIC   =                    F",
    "CPLX    = (1.5, -2.0)",
    "MJD-OBS =       60960.46856481 / Obs start",
    "HIERARCH ESO DET OUT1 GAIN = 1.4 / Conversion",
    "HIERARCH ESO INS SLIT NAME = '1.0x11  ' / slit",
    "HIERARCH ESO QC FLAG = T",
    "LONGSTR = 'first part of a long string that continues on the next card&' / lead",
    "CONTINUE  'and ends here' / tail",
    "COMMENT   a comment card, kept as text",
    "HISTORY   history line",
    "        blank keyword commentary",
    "REPEAT  =                    1 / first",
    "REPEAT  =                    2 / second",
]


def _write_raw_header(path: Path, cards: list[str]) -> None:
    text = "".join(f"{card:80}" for card in cards) + f"{'END':80}"
    path.write_bytes(text.ljust(-(-len(text) // 2880) * 2880).encode("ascii"))


def test_header_values_match_astropy(tmp_path: Path) -> None:
    path = tmp_path / "cards.fits"
    _write_raw_header(path, TRICKY_CARDS)
    ours = FitsFile.open(path).header(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = fits.getheader(path)
    for keyword in expected:
        if keyword in ("COMMENT", "HISTORY", ""):
            continue
        value = expected[keyword]
        value = None if isinstance(value, fits.card.Undefined) else value
        assert ours[keyword] == value and type(ours[keyword]) is type(value), keyword
    assert ours["HIERARCH ESO DET OUT1 GAIN"] == ours["eso det out1 gain"] == 1.4
    assert ours["LONGSTR"] == "first part of a long string that continues on the next cardand ends here"
    assert ours["REPEAT"] == 1 and "NOPE" not in ours and ours.get("NOPE", 3) == 3
    with pytest.raises(KeyError):
        ours["NOPE"]


def test_unchanged_cards_are_written_back_verbatim_and_changed_ones_reformatted(tmp_path: Path) -> None:
    path = tmp_path / "cards.fits"
    _write_raw_header(path, TRICKY_CARDS)
    header = FitsFile.open(path).header(0).copy(strip=True)
    assert "SIMPLE" not in header and "NAXIS" not in header
    header["EXPTIME"] = (30.5, "changed")
    header["HIERARCH ESO PRO CATG"] = "MASTER_FLAT_VIS"
    header.remove("REPEAT")
    text = header.tostring()
    assert len(text) % 2880 == 0
    assert f"{TRICKY_CARDS[4]:80}" in text and f"{TRICKY_CARDS[20]:80}" in text
    assert f"{'EXPTIME =                 30.5 / changed':80}" in text
    assert f"{'HIERARCH ESO PRO CATG = ' + chr(39) + 'MASTER_FLAT_VIS' + chr(39):80}" in text
    assert "REPEAT" not in text


@pytest.mark.parametrize(
    ("keyword", "value", "comment"),
    [
        ("EXPTIME", 20.0, "s"),
        ("TINY", 7.5e-05, ""),
        ("HUGE", 1e300, ""),
        ("THIRD", 1 / 3, "a repeating fraction"),
        ("NEGZERO", -0.0, ""),
        ("NUMPY", np.float32(0.1), ""),
        ("COUNT", np.int64(12), ""),
        ("FLAG", np.bool_(True), ""),
        ("ESO QC X RES SD", 0.00979, "[px] Std-dev of residual order edge fit along x, long enough to be cut"),
        ("ESO PRO REC1 PARAM1 VALUE", "True", ""),
        ("QUOTE", "it's", "quoted"),
        ("LONG", "x" * 150 + "'" * 5, "after a long string"),
        ("ESO OBS LONG NAME", "y" * 100, ""),
    ],
)
def test_formatted_cards_read_back_by_astropy(keyword: str, value: object, comment: str) -> None:
    text = format_card(keyword, value, comment)
    assert len(text) % 80 == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        expected = fits.Header.fromstring(text)
    read = expected[keyword]
    if isinstance(value, float | np.floating):
        assert read == float(value) and isinstance(read, float)
    else:
        assert read == value
    assert Header.from_text(text)[keyword] == read
    assert expected.comments[keyword] == comment[: len(expected.comments[keyword])]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "non-ascii é", object()])
def test_unwritable_values_raise(bad: object) -> None:
    with pytest.raises(ValueError):
        format_card("BAD", bad)


def test_written_files_verify_in_astropy(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    header = Header({"OBJECT": "FLAT", "HIERARCH ESO QC VALUE": (1.25, "a QC value")})
    header["NAXIS"] = 99  # storage cards given by a caller are replaced by the data's own
    image = rng.normal(size=(31, 17)).astype(np.float32)
    big_endian = rng.normal(size=(31, 17)).astype(">f4")
    mask = rng.random((31, 17)) < 0.3
    rows = np.zeros(3, dtype=[("order", np.int64), ("ymin", np.float64)])
    rows["order"], rows["ymin"] = [10, 11, 12], [0.5, 1.5, 2.5]
    path = tmp_path / "out.fits"
    write_fits(path, [HDU(header, image), HDU(Header({"EXTNAME": "QUAL"}), mask),
                      HDU(Header({"EXTNAME": "ERRS"}), big_endian), HDU(Header({"EXTNAME": "TAB"}), rows),
                      HDU(Header({"EXTNAME": "EMPTY"}))])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with fits.open(path, checksum=True) as hdulist:
            hdulist.verify("exception")
            assert [hdu.name for hdu in hdulist] == ["PRIMARY", "QUAL", "ERRS", "TAB", "EMPTY"]
            assert hdulist[0].header["NAXIS"] == 2 and hdulist[0].header["ESO QC VALUE"] == 1.25
            np.testing.assert_array_equal(hdulist[0].data, image)
            np.testing.assert_array_equal(hdulist[1].data, mask.astype(np.uint8))
            np.testing.assert_array_equal(hdulist[2].data, big_endian)
            assert hdulist[3].columns.formats == ["K", "D"]
            np.testing.assert_array_equal(hdulist[3].data["ymin"], rows["ymin"])
            assert hdulist[4].data is None
    single = tmp_path / "single.fits"
    write_fits(single, [HDU(header, image)])
    image_cards = ["BITPIX", "NAXIS", "NAXIS1", "NAXIS2"]
    expected = [["SIMPLE", *image_cards, "EXTEND"], ["XTENSION", *image_cards, "PCOUNT", "GCOUNT"],
                ["XTENSION", *image_cards, "PCOUNT", "GCOUNT"], ["XTENSION", *image_cards, "PCOUNT", "GCOUNT", "TFIELDS"],
                ["XTENSION", "BITPIX", "NAXIS", "PCOUNT", "GCOUNT"], ["SIMPLE", *image_cards]]
    with fits.open(path) as hdulist, fits.open(single) as alone:
        for hdu, keywords in zip([*hdulist, *alone], expected, strict=True):
            assert [keyword for keyword in hdu.header if keyword in [*expected[1], *expected[0], "TFIELDS"]] == keywords
    ours = FitsFile.open(path)
    assert len(ours) == 5 and ours.index("errs") == 2 and ours.index("NONE") is None
    np.testing.assert_array_equal(ours.image(0), image)
    np.testing.assert_array_equal(ours.table(3)["order"], rows["order"])
    assert ours.table(3)["order"].dtype == np.dtype(np.int64)


def test_tables_written_by_astropy_are_read_with_their_types(tmp_path: Path) -> None:
    columns = [
        fits.Column(name="flag", format="L", array=np.array([True, False, True])),
        fits.Column(name="name", format="8A", array=np.array(["a", "bb", "ccc"])),
        fits.Column(name="short", format="I", array=np.array([1, -2, 3], np.int16)),
        fits.Column(name="int", format="J", array=np.array([1, 2, 3], np.int32)),
        fits.Column(name="single", format="E", array=np.array([0.5, 1.5, 2.5], np.float32)),
        fits.Column(name="pair", format="2D", array=np.arange(6.0).reshape(3, 2)),
        fits.Column(name="scaled", format="I", array=np.array([0, 2, 5], np.int16)),
    ]
    path = tmp_path / "table.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(columns)]).writeto(path)
    fits.setval(path, "TSCAL7", value=0.5, ext=1)
    fits.setval(path, "TZERO7", value=10.0, ext=1)
    table = FitsFile.open(path).table(1)
    with fits.open(path) as hdulist:
        for name in hdulist[1].columns.names:
            np.testing.assert_array_equal(table[name], hdulist[1].data[name])
    assert table["flag"].dtype == bool and table["single"].dtype == np.float32


@pytest.mark.parametrize(
    ("dtype", "cards"),
    [(np.float64, {}), (np.int32, {}), (np.float32, {"BSCALE": 2.0, "BZERO": 1.0}),
     (np.int32, {"BZERO": 2.0**31, "BSCALE": 1.0}), (np.int16, {"BSCALE": 0.5, "BZERO": 3.0, "BLANK": 7})],
)
def test_images_scale_as_astropy(tmp_path: Path, dtype: type, cards: dict[str, float]) -> None:
    rng = np.random.default_rng(5)
    info = np.iinfo(dtype) if np.dtype(dtype).kind == "i" else None
    image = rng.integers(info.min, info.max, (12, 9)) if info else rng.normal(size=(12, 9))
    hdu = fits.PrimaryHDU(image.astype(dtype))
    hdu.header.update(cards)
    hdu.writeto(tmp_path / "image.fits")
    with fits.open(tmp_path / "image.fits", memmap=False) as hdulist:
        expected = hdulist[0].data
    ours = FitsFile.open(tmp_path / "image.fits").image(0)
    assert ours.dtype.newbyteorder("=") == expected.dtype.newbyteorder("=")
    np.testing.assert_array_equal(ours, expected)


def test_compressed_files_are_read_through_astropy(tmp_path: Path) -> None:
    image = np.arange(20, dtype=np.uint16).reshape(4, 5)
    plain = tmp_path / "raw.fits"
    fits.PrimaryHDU(image, header=fits.Header({"OBJECT": "FLAT"})).writeto(plain)
    packed = tmp_path / "raw.fits.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    ours = FitsFile.open(packed)
    assert ours.header(0)["OBJECT"] == "FLAT"
    np.testing.assert_array_equal(ours.image(0), image)


def test_broken_files_raise_format_errors(tmp_path: Path) -> None:
    text = tmp_path / "notes.fits"
    text.write_text("not a FITS file at all" * 200)
    with pytest.raises(FitsFormatError, match="SIMPLE"):
        FitsFile.open(text)
    whole = tmp_path / "whole.fits"
    fits.PrimaryHDU(np.zeros((50, 50), np.float32)).writeto(whole)
    cut = tmp_path / "cut.fits"
    cut.write_bytes(whole.read_bytes()[:-3000])
    with pytest.raises(FitsFormatError, match="bytes short"):
        FitsFile.open(cut)
    no_end = tmp_path / "no_end.fits"
    no_end.write_bytes(whole.read_bytes()[:80 * 5])
    with pytest.raises(FitsFormatError, match="END"):
        FitsFile.open(no_end)
