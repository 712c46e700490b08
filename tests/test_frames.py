"""Raw-frame preparation (rotation, trim, gain, uncertainty, mask), image reading and atomic product writing."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from soxs_mflat.errors import UserInputError
from soxs_mflat.frames import prepare_raw, read_prepared, read_raw_adu
from soxs_mflat.instruments import DETECTORS
from soxs_mflat.products import image_hdus, primary_image_hdu, product_paths, write_hdus


def _raw_index_of(prepared_row: int, prepared_col: int, *, k: int, raw_shape: tuple[int, int],
                  row0: int, col0: int) -> tuple[int, int]:
    """Hand-written inverse of rotate-then-trim: which raw pixel lands at a prepared pixel."""
    i, j = prepared_row + row0, prepared_col + col0
    n_rows, n_cols = raw_shape
    if k == 0:
        return i, j
    if k == 1:
        return j, n_cols - 1 - i
    if k == 2:
        return n_rows - 1 - i, n_cols - 1 - j
    raise AssertionError(k)


@pytest.mark.parametrize("key", list(DETECTORS))
@pytest.mark.parametrize("binning", [(1, 1), (2, 2)])
def test_prepare_each_arm(key: tuple[str, str], binning: tuple[int, int]) -> None:
    detector = DETECTORS[key]
    if binning != (1, 1) and not detector.binnable:
        pytest.skip("NIR detectors are never binned")
    binx, biny = binning
    raw_shape = (detector.raw_shape[0] // (biny if detector.rotation_k % 2 == 0 else binx),
                 detector.raw_shape[1] // (binx if detector.rotation_k % 2 == 0 else biny))
    rng = np.random.default_rng(1)
    raw = rng.integers(100, 20000, size=raw_shape).astype(np.float32)
    saturated_at = None
    if detector.saturation_adu is not None:
        raw[raw_shape[0] // 2, raw_shape[1] // 2] = detector.saturation_adu
        saturated_at = (raw_shape[0] // 2, raw_shape[1] // 2)
    static = np.zeros(detector.prepared_shape(binx, biny), dtype=bool)
    static[3, 5] = True
    gain, ron = 1.7, 4.2
    data, uncertainty, mask = prepare_raw(raw, detector=detector, binning=binning, gain=gain, ron=ron, static_mask=static)
    assert data.shape == detector.prepared_shape(binx, biny)
    assert data.dtype == np.float32 and uncertainty.dtype == np.float32 and mask.dtype == bool
    row0, col0 = detector.science_rows[0] // biny, detector.science_columns[0] // binx
    for r, c in [(0, 0), (7, 11), (data.shape[0] - 1, data.shape[1] - 1)]:
        raw_r, raw_c = _raw_index_of(r, c, k=detector.rotation_k, raw_shape=raw_shape, row0=row0, col0=col0)
        assert data[r, c] == pytest.approx(raw[raw_r, raw_c] * gain, rel=1e-6)
        assert uncertainty[r, c] == pytest.approx(np.sqrt(raw[raw_r, raw_c] * gain + ron**2), rel=1e-5)
    assert mask[3, 5]
    if saturated_at is not None:
        assert mask.sum() == 2
    else:
        assert mask.sum() == 1


def test_negative_values_count_as_zero_and_bias_uncertainty() -> None:
    detector = DETECTORS[("soxs", "NIR")]
    raw = np.full(detector.raw_shape, -50.0, dtype=np.float32)
    _, uncertainty, _ = prepare_raw(raw, detector=detector, binning=(1, 1), gain=2.0, ron=3.0)
    assert np.allclose(uncertainty, 3.0)
    raw[:] = 1000
    _, uncertainty, _ = prepare_raw(raw, detector=detector, binning=(1, 1), gain=2.0, ron=3.0, is_bias=True)
    assert np.allclose(uncertainty, 3.0)


def test_wrong_raw_shape_is_a_user_error() -> None:
    with pytest.raises(UserInputError, match="cannot be trimmed"):
        prepare_raw(np.zeros((100, 100), np.float32), detector=DETECTORS[("xsh", "VIS")], binning=(1, 1), gain=1, ron=1)


def test_product_names_never_collide() -> None:
    organiser = product_paths(stem="20250125T023824_NIR_1X1_3_MFLAT_QTH_SLIT1_5_10_0S_SOXS", root=Path("/w"), instrument="soxs")
    assert organiser.master_flat().name == "20250125T023824_NIR_1X1_3_MFLAT_QTH_SLIT1_5_10_0S_SOXS.fits"
    assert organiser.order_table().name == "20250125T023824_NIR_1X1_3_OLOC_QTH_SLIT1_5_10_0S_SOXS.fits"
    assert organiser.master_flat().parent == Path("/w/products/soxs_mflat")
    assert organiser.order_location_plot().parent == Path("/w/qc/soxs_mflat")
    for stem in ("MYSET", "myset", "my_mflat_set"):
        hazard = product_paths(stem=stem, root=Path("/w"), instrument="soxs")
        assert hazard.order_table().name.lower() != hazard.master_flat().name.lower()
    uvb = product_paths(stem="20250125T023824_UVB_1X1_FAST_MFLAT_SLIT1_0_10_0S_XSHOOTER", root=Path("/w"), instrument="xsh")
    assert uvb.order_table("DLAMP").name.endswith("_OLOC_SLIT1_0_10_0S_XSHOOTER_DLAMP.fits")
    assert len({uvb.master_flat(), uvb.master_flat("DLAMP"), uvb.master_flat("QLAMP"), uvb.order_table(),
                uvb.order_table("QLAMP"), uvb.background(), uvb.background("DLAMP")}) == 7


@pytest.mark.parametrize(
    ("dtype", "cards"),
    [
        (np.uint16, {}),
        (np.uint32, {}),
        (np.int16, {}),
        (np.uint8, {}),
        (np.float32, {}),
        (np.int16, {"BZERO": 32768.0, "BSCALE": 1.0, "BLANK": -32768}),
        (np.int16, {"BSCALE": 2.0, "BZERO": 10.0}),
        (np.int16, {"BLANK": 7}),
        (np.int32, {"BZERO": 2.0**31}),
        (np.int8, {}),
    ],
)
def test_raw_reading_matches_astropy(tmp_path: Path, dtype: type, cards: dict[str, float]) -> None:
    """The one-pass unsigned conversion gives astropy's values and dtype; other scalings (BLANK without
    BSCALE makes a float image with NaN; int8 is stored as uint8 with BZERO -128) are astropy's own."""
    rng = np.random.default_rng(2)
    image = rng.integers(0, np.iinfo(dtype).max, (30, 20)) if np.dtype(dtype).kind in "iu" else rng.random((30, 20))
    hdu = fits.PrimaryHDU(image.astype(dtype))
    hdu.header.update(cards)
    hdu.writeto(tmp_path / "raw.fits")
    with fits.open(tmp_path / "raw.fits", memmap=False) as hdulist:
        expected = hdulist[0].data
    data = read_raw_adu(tmp_path / "raw.fits")
    assert data.dtype.newbyteorder("=") == expected.dtype.newbyteorder("=")
    np.testing.assert_array_equal(data, expected)


def test_image_product_round_trip_with_valid_checksums(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    data = rng.normal(size=(40, 30)).astype(np.float32)
    uncertainty = np.asfortranarray(np.abs(data))  # copied to C order on the way
    mask = rng.random((40, 30)) < 0.1
    path = write_hdus(image_hdus(data, mask, uncertainty, fits.Header([("OBJECT", "FLAT")])), tmp_path / "p.fits")
    write_hdus([primary_image_hdu(data, fits.Header())], tmp_path / "b.fits")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with fits.open(path, checksum=True) as hdulist, fits.open(tmp_path / "b.fits", checksum=True) as bkg:
            assert [hdu.name for hdu in hdulist] == ["FLUX", "QUAL", "ERRS"]
            assert hdulist[0].header["BITPIX"] == -32 and hdulist[1].header["BITPIX"] == 8
            np.testing.assert_array_equal(bkg[0].data, data)
    prepared = read_prepared(path)
    np.testing.assert_array_equal(prepared.data, data)
    np.testing.assert_array_equal(prepared.uncertainty, uncertainty)
    np.testing.assert_array_equal(prepared.mask, mask)
