"""Tests of the raw-set simulator (``soxs_mflat.simulate``) and of the scorer."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from soxs_mflat.geometry import Poly2D
from soxs_mflat.instruments import detector_for, keywords_for
from soxs_mflat.simulate import SimulatedSet, format_score, preview_png, score, simulate_set
from soxs_mflat.simulate.detector import RawLayout
from soxs_mflat.simulate.render import profile_antiderivative
from soxs_mflat.simulate.tables import read_order_table, write_order_table
from soxs_mflat.simulate.truth import Truth

SETS = {
    "soxs-NIR": ("soxs", "NIR", (1, 1)),
    "soxs-VIS": ("soxs", "VIS", (1, 1)),
    "xsh-NIR": ("xsh", "NIR", (1, 1)),
    "xsh-VIS": ("xsh", "VIS", (1, 1)),
    "xsh-VIS-2x2": ("xsh", "VIS", (2, 2)),
    "xsh-UVB": ("xsh", "UVB", (1, 1)),
    "xsh-UVB-2x2": ("xsh", "UVB", (2, 2)),
}


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SimulatedSet]:
    """Every arm (and two binned sets), each simulated once with two flats per lamp."""
    root = tmp_path_factory.mktemp("sets")
    return {
        name: simulate_set(root / name, instrument=instrument, arm=arm, binning=binning, nflats=2, seed=3)
        for name, (instrument, arm, binning) in SETS.items()
    }


def _prepared(path: Path, instrument: str, arm: str, binning: tuple[int, int]) -> np.ndarray:
    """A raw frame rotated, trimmed and converted to electrons as soxspipe prepares it."""
    detector = detector_for(instrument, arm)
    return RawLayout(detector, binning).prepare(fits.getdata(path).astype(np.float64)) * detector.default_gain


@pytest.mark.parametrize("name", SETS)
def test_set_has_every_file_and_a_data_organiser_sof(sets: dict[str, SimulatedSet], name: str) -> None:
    simulated = sets[name]
    _, arm, binning = SETS[name]
    binning_field = "" if arm == "NIR" else f"_{binning[0]}X{binning[1]}"
    assert re.fullmatch(rf"\d{{8}}T\d{{6}}_{arm}{binning_field}(_[^_]+)?_MFLAT_.*S_(SOXS|XSHOOTER)\.sof", simulated.sof.name)
    lines = [line.split() for line in simulated.sof.read_text().splitlines()]
    for relative, _tag in lines:
        assert (simulated.sof.parent / relative).is_file()
    tags = {tag for _, tag in lines}
    assert f"ORDER_TAB_{arm}" in tags
    assert (f"MASTER_BIAS_{arm}" in tags) == (arm != "NIR")
    assert len(simulated.lamp_off) == (len(simulated.raw_flats) if arm == "NIR" else 0)
    assert len(simulated.raw_flats) == (4 if arm == "UVB" else 2)
    assert simulated.settings.is_file() and "soxs-mflat" in simulated.settings.read_text()
    assert (simulated.truth_dir / "lamps.fits").is_file() == (arm == "UVB")
    for file in ("truth.json", "signal.fits", "scatter.fits", "response.fits", "noise_rel.fits", "defects.fits", "edges.fits"):
        assert (simulated.truth_dir / file).is_file()


@pytest.mark.parametrize("name", SETS)
def test_raw_headers_carry_the_classification_keywords(sets: dict[str, SimulatedSet], name: str) -> None:
    simulated = sets[name]
    instrument, arm, binning = SETS[name]
    kw = keywords_for(instrument)
    header = fits.getheader(simulated.raw_flats[0])
    assert header["INSTRUME"] == ("SOXS" if instrument == "soxs" else "XSHOOTER")
    assert header[kw.arm] == arm
    assert header["ESO DPR CATG"] == "CALIB"
    assert header[kw.dpr_tech] == "ECHELLE,SLIT"
    expected_type = {"soxs": "FLAT,LAMP", "xsh": "LAMP,FLAT"}[instrument]
    if arm == "UVB":
        assert {fits.getheader(path)[kw.dpr_type] for path in simulated.raw_flats} == {"LAMP,DFLAT", "LAMP,QFLAT"}
    else:
        assert header[kw.dpr_type] == expected_type
    for key in (kw.exptime, kw.mjd_obs, kw.date_obs, kw.conad, kw.ron, kw.slit[arm]):
        assert key in header
    assert header[kw.conad] == pytest.approx(detector_for(instrument, arm).default_gain)
    if arm != "NIR":
        assert (header[kw.binx], header[kw.biny]) == binning
        assert kw.read_speed in header
    if instrument == "soxs":
        assert kw.common_path_temp in header and kw.detector_temp[arm] in header
        assert kw.gain in header
    if instrument == "soxs" and arm == "VIS":
        assert header[kw.qth_lamp] == "Qth_Lamp"
    for path in simulated.lamp_off:
        off = fits.getheader(path)
        assert (off[kw.dpr_type], off[kw.dpr_tech]) == (expected_type, "IMAGE")
        assert off[kw.exptime] == header[kw.exptime]
        assert kw.qth_lamp not in off


@pytest.mark.parametrize("name", SETS)
def test_raw_layout_and_preparation(sets: dict[str, SimulatedSet], name: str) -> None:
    simulated = sets[name]
    instrument, arm, binning = SETS[name]
    detector = detector_for(instrument, arm)
    raw = fits.getdata(simulated.raw_flats[-1])
    assert raw.dtype.name == "uint16"
    assert raw.shape == (detector.raw_shape[0] // binning[1], detector.raw_shape[1] // binning[0])
    prepared = _prepared(simulated.raw_flats[-1], instrument, arm, binning)
    assert prepared.shape == detector.prepared_shape(*binning)
    truth = Truth.read(simulated.truth_dir)
    signal = truth.image("signal.fits")
    bright = signal > 0.5
    # the lamp light lands where the truth says: bright pixels are much brighter than the inter-order ones
    assert np.median(prepared[bright]) > 5 * np.median(prepared[signal < 1e-3])


@pytest.mark.parametrize("name", ["xsh-VIS", "xsh-UVB-2x2", "soxs-VIS"])
def test_master_bias_product(sets: dict[str, SimulatedSet], name: str) -> None:
    simulated = sets[name]
    instrument, arm, binning = SETS[name]
    kw = keywords_for(instrument)
    with fits.open(simulated.calibrations[0]) as hdul:
        assert [hdu.name for hdu in hdul] == ["FLUX", "QUAL", "ERRS"]
        header = hdul[0].header
        assert header[kw.pro_catg] == f"MASTER_BIAS_{arm}"
        assert (header[kw.pro_type], header[kw.pro_tech]) == ("REDUCED", "IMAGE")
        assert header[kw.datancom] > 1 and header[kw.qc_raw_ron] > 0
        assert (header[kw.binx], header[kw.biny]) == binning
        assert hdul["ERRS"].header["UTYPE"] == "StdDevUncertainty"
        assert hdul[0].data.shape == detector_for(instrument, arm).prepared_shape(*binning)
        assert (hdul[0].data.dtype.name, hdul["QUAL"].data.dtype.name) == ("float32", "uint8")
        hot = Truth.read(simulated.truth_dir).defects()["hot"]
        assert hdul["QUAL"].data[hot].mean() > 0.5
        assert hdul["QUAL"].data[~hot].mean() < 1e-3


@pytest.mark.parametrize("name", SETS)
def test_centre_table_round_trips_and_is_close_to_the_truth(sets: dict[str, SimulatedSet], name: str) -> None:
    simulated = sets[name]
    instrument, arm, _ = SETS[name]
    kw = keywords_for(instrument)
    truth = Truth.read(simulated.truth_dir)
    edges = truth.edges()
    a_bin, b_bin = truth.binning
    tables = [path for path in simulated.calibrations if path.name.startswith("ORDER_TAB")]
    assert len(tables) == (2 if arm == "UVB" else 1)
    objects = set()
    for path in tables:
        table = read_order_table(path)
        header = table.header
        objects.add(header[kw.object])
        assert header[kw.pro_catg] == f"ORDER_TAB_{arm}"
        assert (header[kw.pro_tech], header[kw.pro_type]) == ("ECHELLE,SLIT", "REDUCED")
        assert (header[kw.binx], header[kw.biny]) == (1, 1)
        assert table.std is not None and not table.has_edges
        assert table.fitted_axis == detector_for(instrument, arm).fitted_axis
        assert list(table.orders) == truth.meta["orders"]
        measured = table.centre.in_frame(np.asarray(edges["order"]), np.asarray(edges["b"]), a_bin, b_bin)
        error = np.abs(measured - np.asarray(edges["centre"]))
        assert error.max() < 0.3 / a_bin + 1e-9
        assert 0.02 < np.sqrt(np.mean(error**2)) * a_bin < 0.2
    if arm == "UVB":
        assert objects == {"LAMP,DORDERDEF", "LAMP,QORDERDEF"}


@pytest.mark.parametrize("name", SETS)
def test_truth_signal_follows_the_true_edges(sets: dict[str, SimulatedSet], name: str) -> None:
    truth = Truth.read(sets[name].truth_dir)
    signal = truth.image("signal.fits")
    defects = truth.defects()
    bad = defects["dead"] | defects["low_sensitivity"]
    if truth.dispersion_axis == "y":
        signal, bad = signal.T, bad.T
    sigma = truth.meta["psf_sigma_frame"]
    edges = truth.edges()
    order_column = np.asarray(edges["order"])
    crossing_errors = []
    for order in truth.meta["orders"]:
        select = order_column == order
        rows = np.asarray(edges["b"][select])[20:-20:7]
        low = np.asarray(edges["edge_low"][select])[20:-20:7]
        up = np.asarray(edges["edge_up"][select])[20:-20:7]
        for row, lo, hi in zip(rows, low, up, strict=True):
            line, line_bad = signal[row], bad[row]
            inside = np.arange(int(np.ceil(lo + 2)), int(np.floor(hi - 2)) + 1)
            inside = inside[~line_bad[inside]]
            if inside.size < 5:
                continue
            assert line[inside].min() > 0.01
            level = np.median(line[inside])
            for edge, step in ((lo, -1), (hi, 1)):
                far = round(edge + step * (4 * sigma + 1.5))
                if 0 <= far < line.size and line[far] < 0.05 * level:
                    assert line[far] < 1e-3 * level + 2e-3
                near = int(np.floor(edge))
                if 0 <= near < line.size - 1 and not line_bad[near - 3 : near + 4].any():
                    local = np.median(line[round(edge - step * 4) + np.arange(-1, 2)])
                    a0, a1 = line[near] / local, line[near + 1] / local
                    crossing_errors.append(near + (0.5 - a0) / (a1 - a0) - edge)
    assert np.median(np.abs(crossing_errors)) < 0.1


def test_injected_defects_show_in_a_prepared_frame(sets: dict[str, SimulatedSet]) -> None:
    simulated = sets["xsh-VIS"]
    truth = Truth.read(simulated.truth_dir)
    defects = truth.defects()
    bias = fits.getdata(simulated.calibrations[0]).astype(np.float64)
    flat = _prepared(simulated.raw_flats[0], "xsh", "VIS", (1, 1)) - bias
    response = truth.image("response.fits")
    light = (truth.image("signal.fits") + truth.image("scatter.fits")) / np.maximum(response, 1e-3)
    in_order = light > 0.3
    measured = flat / light
    measured /= np.median(measured[in_order & (np.abs(response - 1) < 0.02)])
    dead = defects["dead"] & in_order
    low = defects["low_sensitivity"] & in_order
    assert dead.sum() > 50 and low.sum() > 50
    assert np.median(measured[dead]) < 0.1
    assert 0.35 < np.median(measured[low]) < 0.95
    assert np.median(np.abs(measured[low] - response[low])) < 0.03
    dust = defects["dust"] & in_order & (response < 0.97)
    assert np.median(measured[dust]) < 0.985

    nir = sets["soxs-NIR"]
    off = _prepared(nir.lamp_off[0], "soxs", "NIR", (1, 1))
    hot = Truth.read(nir.truth_dir).defects()["hot"]
    assert np.median(off[hot]) - np.median(off[~hot]) > 10 * detector_for("soxs", "NIR").default_ron


def test_same_arguments_give_bit_identical_files(tmp_path: Path) -> None:
    first = simulate_set(tmp_path / "a", instrument="soxs", arm="VIS", nflats=1, seed=7)
    second = simulate_set(tmp_path / "b", instrument="soxs", arm="VIS", nflats=1, seed=7)
    files_a = sorted(path.relative_to(tmp_path / "a") for path in (tmp_path / "a").rglob("*") if path.is_file())
    files_b = sorted(path.relative_to(tmp_path / "b") for path in (tmp_path / "b").rglob("*") if path.is_file())
    assert files_a == files_b
    for relative in files_a:
        assert (tmp_path / "a" / relative).read_bytes() == (tmp_path / "b" / relative).read_bytes(), relative
    third = simulate_set(tmp_path / "c", instrument="soxs", arm="VIS", nflats=1, seed=8)
    assert first.raw_flats[0].read_bytes() != third.raw_flats[0].read_bytes()
    assert second.sof.name == third.sof.name


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"instrument": "soxs", "arm": "NIR", "binning": (2, 2)}, "never binned"),
        ({"instrument": "soxs", "arm": "UVB"}, "no UVB arm"),
        ({"instrument": "xsh", "arm": "VIS", "binning": (4, 4)}, "binning"),
        ({"instrument": "uves", "arm": "VIS"}, "instrument"),
        ({"instrument": "xsh", "arm": "VIS", "nflats": 0}, "nflats"),
    ],
)
def test_invalid_arguments_are_refused(tmp_path: Path, arguments: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        simulate_set(tmp_path, **arguments)


def _write_product(directory: Path, truth: Truth, *, flux: np.ndarray, shift: float = 0.0) -> None:
    """A fake recipe output: a MASTER_FLAT (FLUX/QUAL/ERRS) and the true order table, edges shifted."""
    directory.mkdir(parents=True, exist_ok=True)
    defects = truth.defects()
    qual = (defects["dead"] | defects["hot"] | defects["low_sensitivity"]).astype(np.uint8)
    errs = np.nan_to_num(truth.image("noise_rel.fits") * truth.image("signal.fits"), nan=1.0)
    header = fits.Header({"HIERARCH ESO PRO CATG": f"MASTER_FLAT_{truth.meta['arm']}"})
    fits.HDUList(
        [
            fits.PrimaryHDU(flux.astype(np.float32), header=header),
            fits.ImageHDU(qual, name="QUAL"),
            fits.ImageHDU(errs.astype(np.float32), name="ERRS"),
        ]
    ).writeto(directory / "master_flat.fits", overwrite=True)
    table = read_order_table(truth.directory / "order_table.fits")
    offset = np.zeros_like(table.edge_low.coeffs)
    offset[0, 0] = shift * truth.binning[0]
    shifted = table.with_edges(Poly2D(table.edge_low.coeffs + offset), Poly2D(table.edge_up.coeffs + offset))
    write_order_table(shifted, directory / "order_table.fits", trace_binning=truth.binning)


@pytest.mark.parametrize("name", ["soxs-NIR", "xsh-UVB-2x2"])
def test_scorer_gives_the_truth_a_perfect_score_and_a_perturbed_copy_a_worse_one(
    sets: dict[str, SimulatedSet], tmp_path: Path, name: str
) -> None:
    truth = Truth.read(sets[name].truth_dir)
    signal = truth.image("signal.fits")
    _write_product(tmp_path / "perfect", truth, flux=signal)
    perfect = score(tmp_path / "perfect", truth.directory)
    assert perfect["orders_missing"] == [] and perfect["orders_spurious"] == []
    assert perfect["orders_found"] == truth.meta["orders"]
    assert perfect["all"]["max"] < 1e-6
    assert perfect["flat_error"] < 1e-6
    assert perfect["flat_bias_max_abs"] < 1e-6
    assert 0.002 < perfect["flat_noise_expected"] < 0.02
    assert perfect["mask_precision"] == 1.0
    assert all(value == 1.0 for value in perfect["mask_recall"].values())
    assert perfect["dust_masked_fraction"] == 0.0
    if truth.meta["lamp_groups"]:
        groups = truth.meta["lamp_groups"]
        assert perfect["flat_lamp_by_order"] == {str(o): lamp for lamp, orders in groups.items() for o in orders}
    assert "orders" in format_score(perfect)

    noisy = signal * (1.0 + 0.01 * np.random.default_rng(1).standard_normal(signal.shape))
    _write_product(tmp_path / "perturbed", truth, flux=noisy, shift=0.3)
    perturbed = score(tmp_path / "perturbed", truth.directory)
    assert perturbed["all"]["median"] == pytest.approx(0.3, abs=1e-6)
    assert perturbed["flat_error"] == pytest.approx(0.01, rel=0.1)
    assert perturbed["flat_error_ratio"] > 1.4
    assert perturbed["errs_calibration"] > 1.3

    _write_product(tmp_path / "unsubtracted", truth, flux=signal + truth.image("scatter.fits"))
    assert score(tmp_path / "unsubtracted", truth.directory, include_scattered_light=True)["flat_error"] < 1e-6
    assert score(tmp_path / "unsubtracted", truth.directory)["flat_error"] > 1e-3


def test_profile_closed_form_matches_numerical_integration() -> None:
    low, up, sigma, slope = 10.3, 52.7, 0.8, 0.04
    boundaries = np.arange(0, 65) - 0.5
    pixels = np.diff(profile_antiderivative(boundaries, low, up, sigma, slope))
    t = np.linspace(low, up, 8001)
    illumination = 1 + slope * (t - 0.5 * (low + up)) / (0.5 * (up - low))
    x = np.linspace(-0.5, 63.5, 64 * 40 + 1)
    kernel = np.exp(-0.5 * ((x[:, None] - t[None, :]) / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi))
    blurred = np.trapezoid(kernel * illumination[None, :], t, axis=1)
    numeric = np.array([np.trapezoid(blurred[i * 40 : (i + 1) * 40 + 1], x[i * 40 : (i + 1) * 40 + 1]) for i in range(64)])
    assert np.abs(pixels - numeric).max() < 1e-4


def test_preview_png_draws_a_frame(sets: dict[str, SimulatedSet], tmp_path: Path) -> None:
    png = tmp_path / "flat.png"
    preview_png(sets["xsh-NIR"].raw_flats[0], png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
