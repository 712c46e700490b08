"""Tests of the raw-set simulator (``soxs_mflat.simulate``) and of the scorer."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from soxs_mflat.cli import main
from soxs_mflat.geometry import Poly2D
from soxs_mflat.instruments import detector_for, keywords_for
from soxs_mflat.simulate import SimulatedSet, format_score, preview_png, score, simulate_set
from soxs_mflat.simulate.detector import RawLayout
from soxs_mflat.simulate.psf import PsfModel
from soxs_mflat.simulate.render import profile_antiderivative
from soxs_mflat.simulate.tables import read_order_table, write_order_table
from soxs_mflat.simulate.truth import Truth
from soxs_mflat.simulate.variation import Variation

SETS = {
    "soxs-NIR": ("soxs", "NIR", (1, 1)),
    "soxs-VIS": ("soxs", "VIS", (1, 1)),
    "xsh-NIR": ("xsh", "NIR", (1, 1)),
    "xsh-VIS": ("xsh", "VIS", (1, 1)),
    "xsh-VIS-2x2": ("xsh", "VIS", (2, 2)),
    "xsh-UVB": ("xsh", "UVB", (1, 1)),
    "xsh-UVB-2x2": ("xsh", "UVB", (2, 2)),
    "soxs-VIS-varied": ("soxs", "VIS", (1, 1)),
}
VARIED = {
    "random": True,
    "nflats": 2,
    "psf_shoulder": 0.2,
    "psf_wing_fraction": 0.08,
    "saturated_order_peak": 0.9,
    "charge_traps": 40,
    "bias_only_pixels": 200,
    "table_missing_order": True,
    "table_extra_order": True,
    "order_height_scale": 0.85,
}
"""A drawn set with every optional factor switched on (and two flats, to stay fast)."""


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SimulatedSet]:
    """Every arm (and two binned sets), each simulated once with two flats per lamp."""
    root = tmp_path_factory.mktemp("sets")
    return {
        name: simulate_set(root / name, instrument=instrument, arm=arm, binning=binning, nflats=2, seed=3,
                           variation=VARIED if name.endswith("varied") else None)
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
        if name.endswith("varied"):
            record = next(item for item in truth.meta["centre_tables"] if item["file"] == path.name)
            assert len(record["missing"]) == len(record["extra"]) == 1
            assert set(table.orders) == set(truth.meta["orders"]) - set(record["missing"]) | set(record["extra"])
            assert record["extra"][0] not in truth.meta["orders"]
            listed = np.isin(np.asarray(edges["order"]), table.orders)
            measured = table.centre.in_frame(np.asarray(edges["order"])[listed], np.asarray(edges["b"])[listed], a_bin, b_bin)
            error = np.abs(measured - np.asarray(edges["centre"])[listed])
            assert error.max() < 3.0
            continue
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
    wings = truth.meta.get("variation", {}).get("psf_wing_fraction", 0.0)
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
                    assert line[far] < (1e-3 + wings) * level + 2e-3
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
    second = simulate_set(tmp_path / "b", instrument="soxs", arm="VIS", nflats=1, seed=7, variation=Variation.nominal())
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
        ({"instrument": "xsh", "arm": "VIS", "variation": {"psf_width": 2.0}}, "unknown variation factor"),
        ({"instrument": "xsh", "arm": "VIS", "variation": {"dust_radius": [1.0]}}, "two values"),
        ({"instrument": "xsh", "arm": "VIS", "variation": "missing.yaml"}, "cannot read the variation file"),
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


@pytest.mark.parametrize(("sigma_up", "curvature"), [(0.8, 0.0), (1.3, 0.07), (0.5, -0.05)])
def test_profile_closed_form_matches_numerical_integration(sigma_up: float, curvature: float) -> None:
    low, up, sigma, slope = 10.3, 52.7, 0.8, 0.04
    boundaries = np.arange(0, 65) - 0.5
    pixels = np.diff(profile_antiderivative(boundaries, low, up, sigma, slope, sigma_up=sigma_up, curvature=curvature))
    x = np.linspace(-0.5, 63.5, 64 * 40 + 1)
    # the slit image is the difference of two steps lit beyond each edge, each blurred by its end's σ
    blurred = np.zeros_like(x)
    for edge, width, sign in ((low, sigma, 1.0), (up, sigma_up, -1.0)):
        t = np.linspace(edge, 80.0, 8001)
        s = (t - 0.5 * (low + up)) / (0.5 * (up - low))
        illumination = 1 + slope * s + curvature * s * s
        kernel = np.exp(-0.5 * ((x[:, None] - t[None, :]) / width) ** 2) / (width * np.sqrt(2 * np.pi))
        blurred += sign * np.trapezoid(kernel * illumination[None, :], t, axis=1)
    numeric = np.array([np.trapezoid(blurred[i * 40 : (i + 1) * 40 + 1], x[i * 40 : (i + 1) * 40 + 1]) for i in range(64)])
    assert np.abs(pixels - numeric).max() < 1e-4


@pytest.mark.parametrize("binning", [1, 2])
def test_asymmetric_winged_psf_keeps_the_half_level_crossing_at_the_geometric_edge(binning: int) -> None:
    psf = PsfModel(sigma=0.9, shoulder=0.25, shoulder_offset=-1.7, wing_fraction=0.1, wing_alpha=3.0, wing_beta=2.5,
                   soft_ends=(0.6, 1.1))
    low, up = np.array([[40.0]]), np.array([[140.0]])
    core = np.array([[psf.sigma / binning]])
    sigmas = psf.edge_sigmas(core, binning)
    boundaries = np.arange(181)[None, :] - 0.5

    def render(symmetric: bool) -> np.ndarray:
        total = np.zeros((1, 180))
        pairs = zip(psf.components(sigmas[0], symmetric=symmetric), psf.components(sigmas[1], symmetric=symmetric), strict=True)
        for at_low, at_up in pairs:
            antiderivative = profile_antiderivative(boundaries, low + at_low.shift, up + at_up.shift, at_low.sigma, 0.0,
                                                    sigma_up=at_up.sigma)
            total += at_low.weight * np.diff(antiderivative, axis=1)
        return total

    core_image = render(False)
    assert not np.allclose(core_image[0, 36:45], core_image[0, 144:135:-1], atol=1e-3)  # the edges are not mirror images
    image = psf.add_wings(core_image, render(True), sigma_frame=float(core[0, 0]))
    # pixel centres 40 and 140 sit exactly on the edges: half of the unit in-order level there
    assert image[0, 40] == pytest.approx(0.5, abs=2e-6)
    assert image[0, 140] == pytest.approx(0.5, abs=2e-6)
    assert image[0, 90] == pytest.approx(1.0, abs=2e-3)
    assert image.sum() == pytest.approx(100.0, abs=0.05)


def test_drawn_variations_stay_in_their_ranges_and_are_reproducible(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    drawn = [Variation.draw(rng) for _ in range(200)]
    values = {name: np.array([v.factor_values()[name] for v in drawn]) for name in drawn[0].factor_values()}
    assert 0.6 <= values["psf_scale"].min() and values["psf_scale"].max() <= 1.8
    assert 0.2 <= values["brightness"].min() and values["brightness"].max() <= 1.0
    assert 3.0 <= values["order_contrast"].min() and values["order_contrast"].max() <= 100.0
    assert set(values["nflats"]) <= set(range(3, 21)) and values["nflats"].min() == 3
    assert 0.01 <= values["dust_depth_low"].min() and values["dust_depth_high"].max() <= 0.15
    assert 0.1 < values["table_missing_order"].mean() < 0.4
    assert np.all(np.abs(values["table_offset_max"]) <= 2.0)
    assert Variation.draw(np.random.default_rng(5)) == drawn[0]
    assert Variation.nominal().is_nominal and not drawn[0].is_nominal
    assert Variation().with_values({"dust_radius": [5, 60], "nflats": 7}) == Variation(dust_radius=(5.0, 60.0), nflats=7)

    files = tmp_path / "variation.yaml"
    files.write_text("psf_scale: 1.5\nnflats: 1\n")
    status = main(["simulate", str(tmp_path / "set"), "--instrument=soxs", "--arm=VIS", "--seed=4", "--vary",
                   f"--variation={files}"])
    assert status == 0
    meta = Truth.read(tmp_path / "set" / "truth").meta
    assert meta["variation"]["psf_scale"] == 1.5 and meta["variation"]["nflats"] == 1
    assert meta["psf_sigma_unbinned"] == pytest.approx(1.5 * 0.75)
    assert meta["variation"]["slit_width"] in (0.4, 0.5, 0.7, 0.9, 1.0, 1.2, 1.5, 5.0)
    assert len(meta["raw_flats"]) == 1
    again = simulate_set(tmp_path / "again", instrument="soxs", arm="VIS", seed=4, variation={"random": True,
                                                                                              "psf_scale": 1.5, "nflats": 1})
    assert again.raw_flats[0].read_bytes() == (tmp_path / "set" / "raw" / again.raw_flats[0].name).read_bytes()


def test_varied_set_truth_describes_its_extra_factors(sets: dict[str, SimulatedSet]) -> None:
    simulated = sets["soxs-VIS-varied"]
    truth = Truth.read(simulated.truth_dir)
    meta = truth.meta
    assert meta["variation"]["order_height_scale"] == 0.85
    nominal = Truth.read(sets["soxs-VIS"].truth_dir)
    for varied_extent, nominal_extent in zip(meta["order_extents"], nominal.meta["order_extents"], strict=True):
        assert varied_extent["slit_height_frame_px"] == pytest.approx(0.85 * nominal_extent["slit_height_frame_px"])
    header = fits.getheader(simulated.raw_flats[0])
    assert header[keywords_for("soxs").slit["VIS"]] == f"SLIT{meta['variation']['slit_width']:.1f}"

    bias = fits.getdata(simulated.calibrations[0]).astype(np.float64)
    bias_qual = fits.getdata(simulated.calibrations[0], "QUAL")
    bias_only = truth.optional_defect("BIAS_ONLY")
    assert (bias_only != 0).sum() == 200 and (bias_only == 2).sum() == 100
    assert np.all(bias_qual[bias_only == 2] == 1) and np.array_equal(truth.optional_defect("BIAS_QUAL"), bias_qual)
    smooth = np.median(bias)
    assert np.median(np.abs(bias[bias_only != 0] - smooth)) > 25.0

    flats = [_prepared(path, "soxs", "VIS", (1, 1)) - bias for path in simulated.raw_flats]
    flat = np.mean(flats, axis=0)
    trap = truth.optional_defect("TRAP")
    factor = truth.optional_defect("DEFECT_FACTOR")
    light = truth.image("signal.fits") + truth.image("scatter.fits")
    lit = light > 0.2 * np.median(light[light > 0.1])
    measured = flat / np.where(lit, light, np.nan)
    trap_pixels = (trap == 2) & lit & (factor < 0.97)
    assert trap_pixels.sum() >= 3
    assert np.median(measured[trap_pixels]) < 0.99 * np.nanmedian(measured)
    defects = truth.defects()
    assert np.all(factor[(trap == 1) & ~defects["dead"] & ~defects["low_sensitivity"]] >= 1.0 - 1e-6)
    assert np.all(factor[trap == 2] <= 1.0)

    detect_sigma = truth.optional_defect("DETECT_SIGMA")
    ron = detector_for("soxs", "VIS").default_ron
    assert np.median(detect_sigma) == pytest.approx(ron / np.sqrt(11), rel=1e-4)
    assert np.all(detect_sigma[defects["hot"]] > ron / np.sqrt(11))

    saturation = meta["near_saturation"]
    assert saturation["peak_adu"] == pytest.approx(0.9 * 65535, rel=0.01)
    raw = np.max([fits.getdata(path) for path in simulated.raw_flats], axis=0)
    assert np.mean(raw == 65535) < 1e-4


def test_scorer_counts_flags_carried_over_from_the_master_bias_as_correct(sets: dict[str, SimulatedSet], tmp_path: Path) -> None:
    truth = Truth.read(sets["soxs-VIS-varied"].truth_dir)
    signal = truth.image("signal.fits")
    _write_product(tmp_path / "perfect", truth, flux=signal)
    perfect = score(tmp_path / "perfect", truth.directory)
    assert perfect["orders_found"] == truth.meta["orders"] and perfect["all"]["max"] < 1e-6
    assert perfect["flat_error"] < 1e-6 and perfect["mask_precision"] == 1.0
    assert perfect["mask_recall"]["dead"] == 1.0 and perfect["mask_recall"]["low_sensitivity"] == 1.0

    with fits.open(tmp_path / "perfect" / "master_flat.fits", mode="update") as hdul:
        hdul["QUAL"].data |= truth.optional_defect("BIAS_QUAL")
        hdul["QUAL"].data[(truth.optional_defect("DEFECT_FACTOR") > 0.9) & truth.defects()["low_sensitivity"]] = 0
    carried = score(tmp_path / "perfect", truth.directory)
    assert carried["mask_precision"] == 1.0
    assert carried["mask_recall"]["low_sensitivity"] == 1.0


def test_preview_png_draws_a_frame(sets: dict[str, SimulatedSet], tmp_path: Path) -> None:
    png = tmp_path / "flat.png"
    preview_png(sets["xsh-NIR"].raw_flats[0], png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
