"""Tests of order-edge detection and fitting (soxs_mflat.edges) against synthetic flats with known edges."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import fits
from synthetic import SyntheticFlat, slit_profile, synthetic_flat

from soxs_mflat.cli import main
from soxs_mflat.edges import (
    EdgeDetections,
    EdgeFit,
    SliceFlag,
    detect_edges,
    detection,
    detection_scatter,
    fit_edges,
    measure_slice_edges,
    order_location_table,
)
from soxs_mflat.errors import UserInputError
from soxs_mflat.footprints import order_bounds, to_ba
from soxs_mflat.frames import read_order_table
from soxs_mflat.geometry import Poly2D
from soxs_mflat.order_table import OrderTable, to_hdus
from soxs_mflat.products import write_hdus
from soxs_mflat.qc import qc_row
from soxs_mflat.recipe import fit_order_edges
from soxs_mflat.settings import load_settings

DETECT = {"slice_length": 50, "slice_width": 5, "min_threshold_pct": 20, "max_threshold_pct": 50}
FIT = {"order_deg": 3, "disp_axis_deg": 3, "clipping_sigma": 5, "clipping_iterations": 2}
LEVELS_50X = (0.02, 0.1, 0.5, 1.0, 0.3, 0.04)


def _run(image: np.ndarray, centres: OrderTable, *, binning_ab=(1, 1), mask=None, log=None, **fit_options):
    """Detect and fit with the test defaults; returns (detections, fit)."""
    detections = detect_edges(image, centres, binning_ab=binning_ab, mask_ba=mask, **DETECT)
    fit = fit_edges(detections, binning_ab=binning_ab, log=log, **(FIT | fit_options))
    return detections, fit


def _edge_errors(syn: SyntheticFlat, fit: EdgeFit, binning_ab=(1, 1)) -> np.ndarray:
    """|fitted − true| edge positions (frame px) over every kept order's full true extent."""
    b = np.arange(syn.image.shape[0], dtype=np.float64)
    errors = []
    for k, order in enumerate(syn.orders):
        if order in fit.orders_kept:
            errors.append(fit.edge_low.in_frame(order, b, *binning_ab) - syn.low[k])
            errors.append(fit.edge_up.in_frame(order, b, *binning_ab) - syn.up[k])
    return np.abs(np.concatenate(errors))


def _assert_accurate(errors: np.ndarray) -> None:
    """The accuracy requirement: median ≤ 0.05 px, 95th percentile ≤ 0.15 px, max ≤ 0.5 px."""
    assert np.median(errors) <= 0.05
    assert np.percentile(errors, 95) <= 0.15
    assert errors.max() <= 0.5


def _sprinkle_bad_pixels(image: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Copy of ``image`` with random NaNs, hot pixels and a NaN column; a mask with random pixels and a bad column."""
    rng = np.random.default_rng(seed)
    image = image.copy()
    image[rng.random(image.shape) < 0.02] = np.nan
    image[rng.random(image.shape) < 0.002] += 5.0
    image[:, 101] = np.nan
    mask = rng.random(image.shape) < 0.01
    mask[:, 250] = True
    return image, mask


def _binned(syn: SyntheticFlat, binning_ab: tuple[int, int]) -> OrderTable:
    """The centre table of a flat rendered in binned pixels, rewritten in unbinned coefficients and limits."""
    a_bin, b_bin = binning_ab
    table = syn.centre_table
    scale = a_bin / float(b_bin) ** np.arange(table.centre.deg_b + 1)
    return replace(
        table, centre=Poly2D(table.centre.coeffs * scale[None, :]), b_min=table.b_min * b_bin, b_max=table.b_max * b_bin
    )


@pytest.mark.parametrize("sigma", [0.3, 0.4, 0.6, 0.8, 1.0])
def test_flux_sum_is_unbiased_where_linear_interpolation_is_not(sigma: float) -> None:
    """Noiseless profiles at 41 sub-pixel phases: the edge is exact, a naive interpolation is phase-biased."""
    a = np.arange(60, dtype=np.float64)
    phases = np.linspace(0.0, 1.0, 41)
    low_true, up_true = 12.3 - phases, 40.0 + phases
    profiles = slit_profile(a[None, :], low_true[:, None], up_true[:, None], sigma)
    edges = measure_slice_edges(profiles, centre_index=26, min_threshold_pct=20, max_threshold_pct=50)

    assert np.all(edges.flag_low == SliceFlag.OK) and np.all(edges.flag_up == SliceFlag.OK)
    assert np.abs(edges.low - low_true).max() < 2e-3
    assert np.abs(edges.up - up_true).max() < 2e-3
    first_below = np.argmax((a[None, :] > 26) & (profiles < 0.5), axis=1)
    above, below = profiles[np.arange(phases.size), first_below - 1], profiles[np.arange(phases.size), first_below]
    naive = first_below - 1 + (above - 0.5) / (above - below)
    assert np.ptp(naive - up_true) > max(0.02, 10 * np.ptp(edges.up - up_true))


def test_slice_rejections_name_the_reason() -> None:
    """Touching orders, a slice shorter than the order, off-detector pixels, faint or noisy slices are flagged."""
    a = np.arange(50, dtype=np.float64)
    clean = slit_profile(a, 10.0, 40.0, 0.8)
    touching = clean + slit_profile(a, 40.5, 60.0, 0.8)
    short = slit_profile(a, -5.0, 55.0, 0.8)
    off = clean.copy()
    off[:8] = np.nan
    off_mask = np.zeros((5, a.size), dtype=bool)
    off_mask[3, :8] = True
    noisy = clean + 0.2 * np.random.default_rng(1).standard_normal(a.size)
    profiles = np.stack([clean, touching, short, off, noisy])
    edges = measure_slice_edges(profiles, centre_index=25, min_threshold_pct=20, max_threshold_pct=50, off_detector=off_mask)
    assert edges.flag_low[0] == SliceFlag.OK and edges.flag_up[0] == SliceFlag.OK
    assert edges.flag_low[1] == SliceFlag.OK and edges.flag_up[1] == SliceFlag.NO_CROSSING
    assert edges.flag_low[2] in (SliceFlag.NO_CROSSING, SliceFlag.SHORT_SLICE)
    assert edges.flag_low[3] == SliceFlag.OFF_DETECTOR and edges.flag_up[3] == SliceFlag.OK
    assert edges.flag_low[4] == SliceFlag.FAINT and edges.flag_up[4] == SliceFlag.FAINT
    assert np.isnan(edges.up[1]) and np.isnan(edges.low[3])


@pytest.mark.parametrize(
    ("psf_sigma", "noise", "centre_error", "scattered", "bad_pixels"),
    [
        (0.8, 0.01, 0.3, 0.03, True),
        (0.8, 0.005, 0.1, 0.05, False),
        (0.4, 0.01, 0.2, 0.03, True),
        (0.4, 0.005, 0.3, 0.0, False),
    ],
)
def test_edges_match_truth(psf_sigma: float, noise: float, centre_error: float, scattered: float, bad_pixels: bool) -> None:
    """Fitted edges within the accuracy requirement, for levels spanning 50×, scattered light and bad pixels."""
    syn = synthetic_flat(
        levels=LEVELS_50X,
        psf_sigma=psf_sigma,
        noise=noise,
        centre_error=centre_error,
        scattered=scattered,
        seed=3,
    )
    image, mask = _sprinkle_bad_pixels(syn.image, seed=4) if bad_pixels else (syn.image, None)
    detections, fit = _run(image, syn.centre_table, mask=mask)

    np.testing.assert_array_equal(fit.orders_kept, syn.orders)
    assert fit.orders_dropped.size == 0
    assert fit.deg_order == FIT["order_deg"] and fit.deg_b == FIT["disp_axis_deg"]
    _assert_accurate(_edge_errors(syn, fit))
    assert fit.x_res_sd < 0.05
    assert np.all(fit.slices_used > 0.6 * (detections.order == syn.orders[0]).sum())


def test_faint_order_with_photon_noise_is_traced() -> None:
    """An order 50× fainter than the brightest, with noise growing as its flux drops, is still traced accurately."""
    syn = synthetic_flat(levels=LEVELS_50X, scattered=0.03, centre_error=0.2, seed=7)
    rng = np.random.default_rng(8)
    image = syn.noiseless + 0.005 * np.sqrt(np.maximum(syn.noiseless, 1e-4)) * rng.standard_normal(syn.image.shape)
    _, fit = _run(image.astype(np.float32), syn.centre_table)

    np.testing.assert_array_equal(fit.orders_kept, syn.orders)
    _assert_accurate(_edge_errors(syn, fit))


def test_orders_without_light_are_dropped_and_named() -> None:
    """An order listed in the centre table but unlit, and an order masked almost entirely, are dropped and logged."""
    syn = synthetic_flat(levels=(1.0, 0.8, 0.0, 0.7, 0.6, 0.5), noise=0.01, seed=5)
    image = syn.image + np.float32(1e-3) * np.random.default_rng(6).standard_normal(syn.image.shape).astype(np.float32)
    mask = np.zeros(image.shape, dtype=bool)
    order_14 = int(np.flatnonzero(syn.orders == 14)[0])
    columns = np.arange(image.shape[1])
    for row in range(30, image.shape[0]):
        mask[row, (columns > syn.low[order_14, row] - 4) & (columns < syn.up[order_14, row] + 4)] = True
    messages: list[str] = []
    detections, fit = _run(image, syn.centre_table, mask=mask, log=messages.append)

    np.testing.assert_array_equal(fit.orders_dropped, [12, 14])
    np.testing.assert_array_equal(fit.orders_kept, [10, 11, 13, 15])
    dropped = [message for message in messages if "dropped" in message]
    assert len(dropped) == 2 and "order 12 " in dropped[0] and "order 14 " in dropped[1]
    assert "FAINT" in dropped[0] and "BAD_PIXELS" in dropped[1]
    _assert_accurate(_edge_errors(syn, fit))
    table = order_location_table(syn.centre_table, fit, detections, shape_ba=image.shape, binning_ab=(1, 1))
    np.testing.assert_array_equal(table.orders, [10, 11, 13, 15])


def test_min_order_drops_low_orders() -> None:
    """Orders below ``min_order`` (JH slit rule) are not searched."""
    syn = synthetic_flat(noise=0.01, seed=2)
    detections = detect_edges(syn.image, syn.centre_table, min_order=13, **DETECT)
    np.testing.assert_array_equal(detections.orders, [13, 14, 15])
    assert set(np.unique(detections.order)) == {13, 14, 15}


def test_outliers_are_clipped_without_moving_the_fit() -> None:
    """Measurements displaced by 2 px (a defect next to an edge) are clipped and do not bias the fit."""
    syn = synthetic_flat(noise=0.01, seed=9)
    detections = detect_edges(syn.image, syn.centre_table, **DETECT)
    bad = np.zeros(detections.order.size, dtype=bool)
    bad[::37] = True
    corrupted = replace(detections, low=np.where(bad, detections.low + 2.0, detections.low))
    fit = fit_edges(corrupted, **FIT)

    assert np.all(fit.clipped_low[bad & detections.valid_low])
    assert fit.clipped_low[~bad].sum() < 0.01 * detections.order.size
    _assert_accurate(_edge_errors(syn, fit))
    used = np.concatenate(
        [fit.residual_low[~fit.clipped_low & detections.valid_low], fit.residual_up[~fit.clipped_up & detections.valid_up]]
    )
    assert fit.x_res_max == pytest.approx(np.abs(used).max())
    assert fit.x_res_sd == pytest.approx(np.abs(used).std())
    assert 0.0 <= fit.x_res_min <= fit.x_res_sd <= fit.x_res_max


@pytest.mark.parametrize("binning_ab", [(2, 2), (1, 2), (2, 1)])
def test_binned_frame_gives_unbinned_coefficients(binning_ab: tuple[int, int]) -> None:
    """A flat rendered in binned pixels with an unbinned centre table: unbinned edges whose frame values match."""
    a_bin, b_bin = binning_ab
    syn = synthetic_flat(
        n_b=600 // b_bin,
        n_a=400 // a_bin,
        first_centre=40.0 / a_bin,
        spacing=60.0 / a_bin,
        spacing_slope=2.0 / a_bin,
        height=30.0 / a_bin,
        curvature=4e-5 * b_bin**2 / a_bin,
        psf_sigma=0.4,
        noise=0.01,
        centre_error=0.1,
        seed=11,
    )
    centres = _binned(syn, binning_ab)
    detections = detect_edges(syn.image, centres, binning_ab=binning_ab, **(DETECT | {"slice_length": 50 if a_bin == 1 else 34}))
    fit = fit_edges(detections, binning_ab=binning_ab, **FIT)

    np.testing.assert_array_equal(fit.orders_kept, syn.orders)
    _assert_accurate(_edge_errors(syn, fit, binning_ab))
    b = np.arange(syn.image.shape[0]) * b_bin
    np.testing.assert_allclose(fit.edge_low(12, b), syn.low[2] * a_bin, atol=0.5 * a_bin)
    table = order_location_table(centres, fit, detections, shape_ba=syn.image.shape, binning_ab=binning_ab)
    np.testing.assert_array_equal(table.b_max, syn.image.shape[0])
    bounds = order_bounds(table, syn.image.shape, binning_ab)
    assert np.abs(bounds.up - syn.up).max() < 0.5


def _coefficient_terms(names: list[str], row: object, prefix: str) -> list[float]:
    """Coefficients of one polynomial read as soxspipe does: columns containing ``prefix``, in column order."""
    return [float(row[name]) for name in names if prefix in name]


@pytest.mark.parametrize("fitted_axis", ["x", "y"])
def test_order_location_table_round_trip(fitted_axis: str, tmp_path: Path) -> None:
    """Table → HDUs → table keeps the edges, the column order soxspipe relies on, and the metadata."""
    syn = synthetic_flat(noise=0.01, centre_error=0.2, seed=12)
    frame = syn.image if fitted_axis == "x" else syn.image.T
    centres = replace(syn.centre_table, fitted_axis=fitted_axis)
    flat_ba = to_ba(frame, fitted_axis)
    detections, fit = _run(flat_ba, centres)
    table = order_location_table(centres, fit, detections, shape_ba=flat_ba.shape, binning_ab=(1, 1))
    hdus = to_hdus(table)
    back = read_order_table(write_hdus(hdus, tmp_path / "table.fits"))

    along = "y" if fitted_axis == "x" else "x"
    names = list(hdus[1].data.dtype.names)
    assert ("degy_cent" in names) == (fitted_axis == "x")
    assert f"deg{along}_cent" in names
    edge_start = names.index("degorder_edgelow")
    n_terms = (fit.deg_order + 1) * (fit.deg_b + 1)
    expected_edges = ["degorder_edgelow", "degorder_edgeup", f"deg{along}_edgelow", f"deg{along}_edgeup"]
    expected_edges += [f"edgelow_c{i}{j}" for i in range(fit.deg_order + 1) for j in range(fit.deg_b + 1)]
    expected_edges += [f"edgeup_c{i}{j}" for i in range(fit.deg_order + 1) for j in range(fit.deg_b + 1)]
    assert names[edge_start:] == expected_edges
    assert names.index("degorder_std") < edge_start and names[0] == "degorder_cent"
    row = hdus[1].data[0]
    for prefix, poly in (("edgelow_", table.edge_low), ("edgeup_", table.edge_up), ("cent_", table.centre)):
        terms = _coefficient_terms(names, row, prefix)
        assert len(terms) == poly.coeffs.size
        np.testing.assert_array_equal(terms, poly.coeffs.ravel())
    assert len(_coefficient_terms(names, row, "edgelow_")) == n_terms

    assert list(hdus[2].data.dtype.names) == [
        "order",
        f"{along}min",
        f"{along}max",
        f"{fitted_axis}min",
        f"{fitted_axis}max",
        "maxThreshold",
        "minThreshold",
        "maxvalue",
    ]
    assert back.fitted_axis == fitted_axis
    np.testing.assert_array_equal(back.b_min, 0.0)
    np.testing.assert_array_equal(back.b_max, flat_ba.shape[0])
    np.testing.assert_array_equal(back.centre.coeffs, centres.centre.coeffs)
    grid_order, grid_b = np.meshgrid(centres.orders, np.arange(0, 600, 7))
    np.testing.assert_allclose(back.std(grid_order, grid_b), centres.std(grid_order, grid_b))
    assert back.std.coeffs.shape == back.centre.coeffs.shape
    np.testing.assert_allclose(back.a_min, centres.a_min)
    assert np.all(back.extra_meta["minThreshold"] < back.extra_meta["maxThreshold"])
    assert np.all(back.extra_meta["maxThreshold"] < back.extra_meta["maxvalue"])
    order_grid, b_grid = np.meshgrid(back.orders, np.arange(flat_ba.shape[0]), indexing="ij")
    for before, after in ((table.edge_low, back.edge_low), (table.edge_up, back.edge_up)):
        assert np.abs(after(order_grid, b_grid) - before(order_grid, b_grid)).max() < 1e-3
    bounds = order_bounds(back, flat_ba.shape, (1, 1))
    assert np.abs(bounds.low - syn.low).max() < 0.5
    assert np.abs(bounds.up - syn.up).max() < 0.5


def test_degrees_are_lowered_until_the_fit_works() -> None:
    """Three orders cannot carry order-deg 6: the larger degree is lowered step by step, each try logged."""
    syn = synthetic_flat(orders=(10, 11, 12), noise=0.01, seed=13)
    messages: list[str] = []
    _, fit = _run(syn.image, syn.centre_table, log=messages.append, order_deg=6, disp_axis_deg=4)

    tried = [(6, 4), (5, 4), (4, 4), (3, 4), (3, 3), (2, 3)]
    assert [(fit.deg_order, fit.deg_b)] == tried[-1:]
    assert len(fit.attempts) == len(tried) and list(fit.attempts) == messages
    for (deg_order, deg_b), attempt in zip(tried, fit.attempts, strict=True):
        assert f"order-deg {deg_order}, disp-axis-deg {deg_b}" in attempt
    assert all("rank deficient" in attempt for attempt in fit.attempts[:-1])
    assert "ok" in fit.attempts[-1]
    _assert_accurate(_edge_errors(syn, fit))


def test_x_res_sd_qc_range_keeps_the_degrees_and_only_grades_the_fit() -> None:
    """An X RES SD range far below the achievable residuals: the fit keeps its degrees and succeeds, the QC fails."""
    syn = synthetic_flat(noise=0.01, seed=14)
    detections = detect_edges(syn.image, syn.centre_table, **DETECT)
    defaults = load_settings(instrument="soxs").arm("VIS")
    arm = replace(defaults, order_deg=3, disp_axis_deg=3, poly_fitting_residual_clipping_sigma=5,
                  poly_clipping_iteration_limit=2, qc_acceptable_ranges={"X RES SD": (0.0, 1e-4)})
    fit = fit_order_edges(detections, arm=arm, binning_ab=(1, 1))

    assert (fit.deg_order, fit.deg_b) == (3, 3) and len(fit.attempts) == 1 and "ok" in fit.attempts[0]
    assert fit.x_res_sd > 1e-4
    assert qc_row("X RES SD", fit.x_res_sd, limits=arm.qc_limit("X RES SD")).verdict == "fail"
    _assert_accurate(_edge_errors(syn, fit))


def test_too_few_points_lower_the_degrees() -> None:
    """Six orders of five slices (30 points) cannot carry 16 coefficients (32 needed): degrees go to 2 × 3."""
    syn = synthetic_flat(noise=0.01, seed=22)
    detections = detect_edges(syn.image, syn.centre_table, sample_step=120, **DETECT)
    assert np.all(np.bincount(detections.order)[syn.orders] == 5)
    messages: list[str] = []
    fit = fit_edges(detections, min_slices_per_order=5, log=messages.append, **FIT)

    assert (fit.deg_order, fit.deg_b) == (2, 3)
    assert len(fit.attempts) == 2 and list(fit.attempts) == messages
    assert "30 points for 16 coefficients" in fit.attempts[0] and "ok" in fit.attempts[1]
    assert np.median(_edge_errors(syn, fit)) < 0.1


def test_residuals_far_above_the_scatter_of_the_detections_fail_the_fit() -> None:
    """Lower edges displaced ±1.5 px in blocks of 20 slices: smooth locally (small scatter) but no polynomial
    follows them, so the fit fails at every degree and stops naming the scatter."""
    syn = synthetic_flat(noise=0.01, seed=23)
    detections = detect_edges(syn.image, syn.centre_table, **DETECT)
    blocks = np.where((np.arange(detections.order.size) // 20) % 2 == 0, 1.5, -1.5)
    corrupted = replace(detections, low=detections.low + blocks)
    assert detection_scatter(corrupted.order, corrupted.b, corrupted.low) < 0.05
    messages: list[str] = []
    with pytest.raises(UserInputError, match="order-deg") as caught:
        fit_edges(corrupted, log=messages.append, **FIT)
    assert len(messages) == 6
    assert all("lower edge: residual scale" in message for message in messages)
    assert "upper edge" not in messages[0]
    assert "scatter of the edge measurements themselves" in str(caught.value)


def test_detection_scatter_measures_the_noise_not_the_edge_shape() -> None:
    """Noise of known sigma on curved edges of several orders, some slices missing: sigma recovered within 10 %."""
    rng = np.random.default_rng(24)
    order = np.repeat([3, 4, 5], 1000)
    b = np.tile(np.arange(1000) * 5.0 + 2.0, 3)
    smooth = 100.0 * order + 0.3 * b - 1e-5 * b**2
    edge = smooth + 0.05 * rng.standard_normal(order.size)
    edge[rng.random(order.size) < 0.1] = np.nan
    shuffled = rng.permutation(order.size)
    scatter = detection_scatter(order[shuffled], b[shuffled], edge[shuffled])
    assert scatter == pytest.approx(0.05, rel=0.1)
    assert np.isnan(detection_scatter(order[:5], b[:5], edge[:5]))


def test_x_res_sd_qc_range_never_aborts_the_recipe(tmp_path: Path) -> None:
    """Issue 14: ``x-res-sd: [0, 0.005]`` in qc-acceptable-ranges: exit 0, all products, the QC graded as failed."""
    raw = tmp_path / "raw"
    assert main(["simulate", str(raw), "--instrument=soxs", "--arm=VIS", "--seed=3"]) == 0
    settings = yaml.safe_load((raw / "soxspipe.yaml").read_text())
    settings["soxs-mflat"]["vis"]["qc-acceptable-ranges"]["x-res-sd"] = [0, 0.005]
    strict = tmp_path / "strict.yaml"
    strict.write_text(yaml.safe_dump(settings))
    (sof,) = raw.glob("*.sof")

    assert main(["mflat", str(sof), "-o", str(tmp_path / "out"), "-s", str(strict)]) == 0
    products = tmp_path / "out" / "products" / "soxs_mflat"
    assert len(list(products.glob("*_MFLAT_*SOXS.fits"))) == 1
    (table,) = products.glob("*_OLOC_*.fits")
    with fits.open(table) as hdus:
        assert hdus[1].data["degorder_edgeup"][0] == 3 and hdus[1].data["degy_edgeup"][0] == 3
    (qc_table,) = (tmp_path / "out" / "qc" / "soxs_mflat").glob("*_QC.csv")
    x_res_sd = next(row for row in csv.DictReader(qc_table.open()) if row["qc_name"] == "X RES SD")
    assert float(x_res_sd["qc_value"]) > 0.005
    assert x_res_sd["qc_flag"] == "fail" and float(x_res_sd["qc_value_max"]) == 0.005


def test_impossible_fit_raises_user_input_error() -> None:
    """One slice per order cannot constrain any B dependence: the fit gives up with the settings to change."""
    syn = synthetic_flat(noise=0.01, seed=15)
    detections = detect_edges(syn.image, syn.centre_table, sample_step=10_000, **DETECT)
    assert np.all(np.bincount(detections.order)[syn.orders] == 1)
    with pytest.raises(UserInputError, match="slice-length-for-edge-detection"):
        fit_edges(detections, min_slices_per_order=1, **FIT)
    with pytest.raises(UserInputError, match="No order edges could be measured"):
        fit_edges(detections, **FIT)


@pytest.mark.parametrize(
    ("change", "setting"),
    [
        ({"slice_length": 8}, "slice-length-for-edge-detection"),
        ({"slice_width": 0}, "slice-width-for-edge-detection"),
        ({"min_threshold_pct": 60}, "max-percentage-threshold-for-edge-detection"),
    ],
)
def test_unusable_detection_settings_are_rejected(change: dict, setting: str) -> None:
    """Settings that cannot work stop with a UserInputError naming the setting."""
    syn = synthetic_flat(n_b=50, seed=16)
    with pytest.raises(UserInputError, match=setting):
        detect_edges(syn.image, syn.centre_table, **(DETECT | change))


def test_detections_metadata_and_slice_positions() -> None:
    """Slices sit every ``sample_step`` rows at their central row; thresholds follow the percentages."""
    syn = synthetic_flat(levels=(1.0, 0.5, 0.25, 0.5, 1.0, 2.0), noise=0.005, seed=17)
    detections: EdgeDetections = detect_edges(syn.image, syn.centre_table, sample_step=10, **DETECT)
    first = detections.order == syn.orders[0]
    np.testing.assert_array_equal(np.diff(detections.b[first]), 10)
    assert detections.b[first][0] == 2.0
    np.testing.assert_allclose(detections.max_value, [1.0, 0.5, 0.25, 0.5, 1.0, 2.0], rtol=0.02)
    np.testing.assert_allclose(detections.min_threshold, 0.2 * detections.max_value, rtol=0.05)
    np.testing.assert_allclose(detections.max_threshold, 0.5 * detections.max_value, rtol=0.05)
    assert detections.rejection_summary() == "none"


def test_slice_just_longer_than_the_order_is_enough() -> None:
    """Slices only ~9 px longer than the order (e.g. a binned frame) still measure every edge accurately."""
    syn = synthetic_flat(noise=0.01, centre_error=0.3, seed=19)
    assert (syn.up - syn.low).max() < 32.5
    detections = detect_edges(syn.image, syn.centre_table, **(DETECT | {"slice_length": 42}))
    fit = fit_edges(detections, **FIT)

    assert detections.rejection_summary() == "none"
    _assert_accurate(_edge_errors(syn, fit))


def test_bad_column_running_just_inside_an_edge_does_not_bias_it() -> None:
    """A low-sensitivity column that the (curved) lower edge of an order runs past, 1–3 px inside it."""
    syn = synthetic_flat(noise=0.003, curvature=2e-5)
    image = syn.image.copy()
    k = 2
    column = int(np.round(np.median(syn.low[k]) + 2.0))
    image[:, column] *= 0.7
    inside = np.abs(syn.low[k] + 2.0 - column) < 1.5
    assert inside.sum() > 100, "the edge must run past the column over a long stretch"
    detections = detect_edges(image, syn.centre_table, slice_length=60, slice_width=5, min_threshold_pct=20,
                              max_threshold_pct=50)
    fit = fit_edges(detections, order_deg=3, disp_axis_deg=3, clipping_sigma=5, clipping_iterations=2)
    b = np.arange(image.shape[0], dtype=np.float64)
    error = np.abs(fit.edge_low(syn.orders[k], b) - syn.low[k])
    assert np.max(error[inside]) <= 0.1
    _assert_accurate(_edge_errors(syn, fit))


def test_slices_shared_among_threads_give_the_same_edges(monkeypatch) -> None:
    """Each slice is measured on its own, so splitting the slices among threads changes nothing."""
    syn = synthetic_flat(noise=0.01, seed=21)
    options = {"slice_length": 50, "slice_width": 1, "min_threshold_pct": 20, "max_threshold_pct": 50}
    monkeypatch.setattr(detection, "MIN_SLICES_PER_WORKER", 10)
    monkeypatch.setattr(detection, "WORKERS", 1)
    alone = detect_edges(syn.image, syn.centre_table, **options)
    monkeypatch.setattr(detection, "WORKERS", 2)
    shared = detect_edges(syn.image, syn.centre_table, **options)
    assert alone.order.size > 1000
    for name in ("order", "b", "centre", "low", "up", "flag_low", "flag_up", "max_threshold", "min_threshold"):
        np.testing.assert_array_equal(getattr(shared, name), getattr(alone, name))
