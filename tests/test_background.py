"""Scattered-light model: accuracy under the orders against a known truth, robustness, the QC figure."""

from __future__ import annotations

from dataclasses import dataclass

import bottleneck as bn
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from synthetic import slit_profile

from soxs_mflat.background import fit_scattered_light, local_linear_smooth
from soxs_mflat.footprints import OrderBounds, order_labels

GAPS = (40.0, 24.0, 16.0, 10.0, 7.0, 5.0, 4.0, 4.0)


@dataclass(frozen=True)
class Scene:
    """A flat with orders, their true edges, the true scattered light and the per-pixel noise (BA)."""

    image: np.ndarray
    errs: np.ndarray
    lamp: np.ndarray
    scattered: np.ndarray
    bounds: OrderBounds


def make_scene(
    *,
    kernels: tuple[tuple[float, float], ...] = ((12.0, 0.025), (90.0, 0.05)),
    n_b: int = 640,
    n_a: int = 560,
    gaps: tuple[float, ...] = GAPS,
    noise: float = 0.003,
    extended_along_b: bool = False,
    absent_from: tuple[int, int] | None = None,
    seed: int = 1,
) -> Scene:
    """Tilted, curved orders 35–55 px high whose levels span 50× (faint first), a blaze fall-off of 3×,
    separated by ``gaps`` px. The scattered light is the lamp image convolved with Gaussians
    ``(sigma, fraction)``; beyond the detector there is no light, or along B (``extended_along_b``)
    the orders go on. Noise is Gaussian with σ = ``noise`` × √level. ``absent_from = (k, row)``
    removes order ``k`` from that row on (it is then not ``valid`` there).
    """
    rng = np.random.default_rng(seed)
    n = len(gaps) + 1
    heights = np.linspace(55.0, 35.0, n)
    levels = np.geomspace(0.04, 2.0, n)
    b = np.arange(n_b, dtype=np.float64)
    a = np.arange(n_a, dtype=np.float64)
    shape = 0.03 * (b - n_b / 2) + 2e-5 * (b - n_b / 2) ** 2
    lows, ups, position = [], [], 20.0
    for k in range(n):
        lows.append(position + shape)
        ups.append(position + heights[k] + shape)
        position += heights[k] + (gaps[k] if k < len(gaps) else 0.0)
    low, up = np.array(lows), np.array(ups)
    blaze = 1.0 / 3.0 + (2.0 / 3.0) * np.cos((b - 0.45 * n_b) / n_b * 2.2) ** 2
    valid = np.ones(low.shape, dtype=bool)
    if absent_from is not None:
        valid[absent_from[0], absent_from[1] :] = False
    lamp = np.zeros((n_b, n_a))
    for k in range(n):
        lamp += valid[k][:, None] * levels[k] * blaze[:, None] * slit_profile(a[None, :], low[k][:, None], up[k][:, None], 0.8)
    mode = ("reflect", "constant") if extended_along_b else "constant"
    scattered = sum(fraction * gaussian_filter(lamp, sigma, mode=mode) for sigma, fraction in kernels)
    errs = noise * np.sqrt(np.maximum(lamp + scattered, 0.0) + 1e-4)
    image = lamp + scattered + errs * rng.standard_normal(lamp.shape)
    bounds = OrderBounds(np.arange(10, 10 + n), low, 0.5 * (low + up), up, valid)
    return Scene(image.astype(np.float32), errs, lamp, scattered, bounds)


def order_bias(scene: Scene, model: np.ndarray) -> np.ndarray:
    """Per order: mean flat error after subtracting ``model``, as a fraction of the order's level."""
    labels = order_labels(scene.bounds, scene.image.shape)
    residual = model - scene.scattered
    orders = [k for k in range(1, labels.max() + 1) if np.any(labels == k)]
    return np.array([residual[labels == k].mean() / scene.lamp[labels == k].mean() for k in orders])


@pytest.mark.parametrize(
    ("kernels", "extended"),
    [
        (((12.0, 0.025), (90.0, 0.05)), False),
        (((8.0, 0.012), (40.0, 0.016), (200.0, 0.012)), True),
        (((15.0, 0.04),), True),
    ],
)
def test_model_matches_true_scattered_light_under_the_orders(kernels: tuple, extended: bool) -> None:
    scene = make_scene(kernels=kernels, extended_along_b=extended)
    background = fit_scattered_light(scene.image, scene.bounds)

    bias = order_bias(scene, background.model)
    assert np.max(np.abs(bias)) <= 0.002
    inside = order_labels(scene.bounds, scene.image.shape) > 0
    miss = np.abs(background.model - scene.scattered)[inside]
    allowed = np.maximum(0.1 * scene.scattered, scene.errs)[inside]
    assert np.mean(miss > allowed) <= 0.005
    assert np.percentile(miss / allowed, 99) <= 1.0


def test_beats_interpolation_through_the_gaps_alone() -> None:
    """The near-order spill (12 px kernel) is what a curve through the gap levels misses."""
    scene = make_scene()
    background = fit_scattered_light(scene.image, scene.bounds)
    gap_only = np.zeros_like(scene.scattered)
    fitted = background.fitted_pixels
    for row in range(scene.image.shape[0]):
        columns = np.flatnonzero(fitted[row])
        gap_only[row] = np.interp(np.arange(scene.image.shape[1]), columns, scene.scattered[row, columns])
    assert np.max(np.abs(order_bias(scene, background.model))) < 0.25 * np.max(np.abs(order_bias(scene, gap_only)))


def test_fitted_pixels_lie_between_the_orders_and_every_gap_keeps_pixels() -> None:
    scene = make_scene(gaps=(30.0, 12.0, 6.0, 3.0, 2.2))
    background = fit_scattered_light(scene.image, scene.bounds)
    labels_grown = order_labels(scene.bounds, scene.image.shape, grow=0.5)
    assert not np.any(background.fitted_pixels & (labels_grown > 0))
    a = np.arange(scene.image.shape[1])[None, :]
    for k in range(scene.bounds.orders.size - 1):
        in_gap = (a > scene.bounds.up[k][:, None]) & (a < scene.bounds.low[k + 1][:, None])
        assert np.all(np.any(background.fitted_pixels & in_gap, axis=1))
    wide = (a > scene.bounds.up[0][:, None] + 2.0) & (a < scene.bounds.low[1][:, None] - 2.0)
    assert np.all(background.fitted_pixels[wide])
    assert background.model.dtype == np.float32
    assert background.model.shape == scene.image.shape


def test_cosmic_rays_and_hot_pixels_do_not_bias_the_model() -> None:
    scene = make_scene()
    clean = fit_scattered_light(scene.image, scene.bounds).model
    rng = np.random.default_rng(7)
    hit = scene.image.copy()
    struck = rng.random(hit.shape) < 0.01
    hit[struck] += rng.uniform(0.5, 20.0, struck.sum()).astype(np.float32)
    inside = order_labels(scene.bounds, scene.image.shape) > 0
    model = fit_scattered_light(hit, scene.bounds).model
    assert np.percentile(np.abs(model - clean)[inside] / scene.scattered[inside], 99) < 0.02
    assert np.max(np.abs(order_bias(scene, model))) <= 0.002

    hit[:, 300] += 5.0
    mask = np.zeros(hit.shape, dtype=bool)
    mask[:, 300] = True
    masked = fit_scattered_light(hit, scene.bounds, mask_ba=mask).model
    assert np.percentile(np.abs(masked - clean)[inside] / scene.scattered[inside], 99) < 0.02
    assert np.max(np.abs(order_bias(scene, fit_scattered_light(hit, scene.bounds).model))) <= 0.002


def test_masked_pixels_are_ignored_and_absent_orders_leave_a_finite_model() -> None:
    scene = make_scene(absent_from=(3, 400))
    image = scene.image.copy()
    mask = np.zeros(image.shape, dtype=bool)
    mask[100:160, :] = True
    image[mask] = 50.0
    background = fit_scattered_light(image, scene.bounds, mask_ba=mask)
    assert np.all(np.isfinite(background.model))
    assert not np.any(background.fitted_pixels & mask)
    assert np.any(background.fitted_pixels[450:, int(scene.bounds.centre[3, 500])])
    inside = order_labels(scene.bounds, image.shape) > 0
    masked_rows = inside & mask
    assert np.percentile(np.abs(background.model - scene.scattered)[masked_rows] / scene.scattered[masked_rows], 99) < 0.1
    assert np.max(np.abs(order_bias(scene, background.model))) <= 0.002


def test_uniform_pedestal_is_recovered() -> None:
    scene = make_scene(kernels=(), noise=0.002)
    background = fit_scattered_light(scene.image + np.float32(0.02), scene.bounds)
    inside = order_labels(scene.bounds, scene.image.shape) > 0
    assert np.max(np.abs(background.model[inside] - 0.02)) < 1e-3
    assert abs(background.residual_median) < 1e-3


def test_local_linear_smoothing_follows_a_slope_to_the_ends_and_across_holes() -> None:
    x = np.arange(200, dtype=np.float64)
    values = 3.0 + 0.05 * x
    weights = np.ones_like(x)
    weights[80:120] = 0.0
    smoothed = local_linear_smooth(values, weights, 10.0)
    assert np.allclose(smoothed, values, atol=1e-9)


def test_row_binning_matches_nanmedian_with_rejected_pixels() -> None:
    from soxs_mflat.background.binning import bin_rows

    rng = np.random.default_rng(3)
    image = rng.standard_normal((203, 97)).astype(np.float32)
    image[5, 3], image[17, 40], image[40:48, 10] = np.nan, np.inf, np.nan
    mask = rng.random(image.shape) < 0.02
    for block in (1, 2, 5, 8, 9):
        expected_input = np.where(mask | ~np.isfinite(image), np.nan, image)
        padded = np.full((-(-image.shape[0] // block) * block, image.shape[1]), np.nan, dtype=np.float32)
        padded[: image.shape[0]] = expected_input
        expected = bn.nanmedian(padded.reshape(-1, block, image.shape[1]), axis=1)
        np.testing.assert_array_equal(bin_rows(image, mask, block), expected)


def test_median_across_ignores_nan_and_shrinks_at_the_ends() -> None:
    from soxs_mflat.background.binning import median_across

    rng = np.random.default_rng(4)
    image = rng.standard_normal((50, 60)).astype(np.float32)
    image[3, 10:16], image[7, 0] = np.nan, np.nan
    got = median_across(image, 5)
    for row, col in [(0, 0), (0, 1), (5, 30), (3, 12), (3, 9), (7, 0), (7, 59), (49, 58)]:
        window = image[row, max(col - 2, 0) : col + 3]
        expected = np.median(window[np.isfinite(window)]) if np.isfinite(window).any() else np.nan
        np.testing.assert_allclose(got[row, col], expected, rtol=1e-6, equal_nan=True)
    assert np.isnan(got[3, 12]) and np.isnan(got[3, 13])
    assert got.shape == image.shape


@pytest.mark.parametrize("degree", [1, 2, 3, 4, 5])
def test_interpolation_across_matches_scipy_splines_row_by_row(degree: int) -> None:
    from scipy.interpolate import make_interp_spline

    from soxs_mflat.background.gap_levels import interpolate_across

    rng = np.random.default_rng(degree)
    n_a = 300
    positions = np.sort(rng.uniform(0, n_a, (9, 40)), axis=0)
    levels = rng.standard_normal(positions.shape)
    positions[2, 3], levels[4, 5], positions[:, 7], positions[1:, 8], positions[3:, 9] = np.nan, np.nan, np.nan, np.nan, np.nan
    positions[5, 10] = positions[4, 10] + 0.3
    got = interpolate_across(positions, levels, n_a, degree)
    a = np.arange(n_a, dtype=np.float64)
    for row in range(positions.shape[1]):
        ok = np.isfinite(positions[:, row]) & np.isfinite(levels[:, row])
        x, y = positions[ok, row], levels[ok, row]
        if x.size == 0:
            assert np.all(np.isnan(got[row]))
            continue
        distinct = np.r_[True, np.diff(x) > 0.5]
        x, y = x[distinct], y[distinct]
        k = min(degree, x.size - 1)
        expected = make_interp_spline(x, y, k=k)(np.clip(a, x[0], x[-1])) if k > 0 else np.full(n_a, y[0])
        np.testing.assert_allclose(got[row], expected, rtol=0, atol=1e-9 if degree <= 3 else 1e-7)


def test_bounded_solve_of_the_normal_equations_matches_scipy_nnls() -> None:
    """Solved from DᵀD and Dᵀy only, the bounded problem has the least-squares solution of D and y."""
    from scipy.optimize import nnls

    from soxs_mflat.background.joint_fit import bounded_normal_solve

    rng = np.random.default_rng(5)
    for trial in range(20):
        design = rng.standard_normal((80, 12)) * rng.uniform(0.01, 100.0, 12)
        if trial % 2:
            design[:, 3] = design[:, 2] + 1e-3 * design[:, 4]
        data = rng.standard_normal(80)
        gram, rhs = design.T @ design, design.T @ data
        expected, expected_norm = nnls(design, data)
        got = bounded_normal_solve(gram, rhs, np.zeros(12))
        assert np.all(got >= 0.0)
        assert np.linalg.norm(design @ got - data) <= expected_norm * (1 + 1e-6)
        if not trial % 2:
            np.testing.assert_allclose(design @ got, design @ expected, rtol=0, atol=1e-6 * np.abs(data).max())
        lower = np.r_[np.zeros(9), np.full(3, -np.inf)]
        free = bounded_normal_solve(gram, rhs, lower)
        _, split_norm = nnls(np.hstack([design, -design[:, -3:]]), data)
        assert np.all(free[:9] >= 0.0)
        assert np.linalg.norm(design @ free - data) <= split_norm * (1 + 1e-6)


def test_robust_fit_recovers_the_coefficients_despite_outliers() -> None:
    """Non-negative terms that are absent come out zero, free ones may be negative, outliers are dropped."""
    from soxs_mflat.background.joint_fit import robust_bounded_fit

    rng = np.random.default_rng(8)
    design = np.column_stack([rng.uniform(0, 1, (5000, 4)), np.ones(5000), np.linspace(-1, 1, 5000)])
    truth = np.array([2.0, 0.0, 0.5, 0.0, -1.0, -0.3])
    data = design @ truth + 0.01 * rng.standard_normal(5000)
    data[rng.choice(5000, 100, replace=False)] += rng.uniform(0.2, 2.0, 100)
    got = robust_bounded_fit(design, data, n_free=2)
    assert np.all(got[:4] >= 0.0)
    np.testing.assert_allclose(got, truth, rtol=0, atol=2e-3)


def _direct_spill(light: np.ndarray, sigma: float, row_step: int, n_fft: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The light convolved with a Gaussian of ``sigma`` px across A only and in 2-D, by plain FFTs."""
    n_rows, n_a = light.shape
    across = np.exp(-2.0 * (np.pi * sigma * np.fft.rfftfreq(n_fft[1])) ** 2)
    along = np.exp(-2.0 * (np.pi * sigma / row_step * np.fft.fftfreq(n_fft[0])) ** 2)
    per_row = np.fft.irfft(np.fft.rfft(light, n=n_fft[1], axis=1) * across, n=n_fft[1], axis=1)[:, :n_a]
    in_2d = np.fft.irfft2(np.fft.rfft2(light, s=n_fft) * along[:, None] * across, s=n_fft)[:n_rows, :n_a]
    return per_row, in_2d


def _order_light(scene: Scene) -> np.ndarray:
    """The light inside the orders of ``scene`` on every 8th row."""
    return np.where(order_labels(scene.bounds, scene.image.shape) > 0, scene.lamp, 0.0)[4::8].astype(np.float32)


def test_spill_terms_at_the_samples_match_direct_convolution() -> None:
    from soxs_mflat.background.spill import SPILL_SIGMAS, order_light_spectrum, spill_at_samples

    rng = np.random.default_rng(6)
    light = _order_light(make_scene(n_b=480))
    spectrum = order_light_spectrum(light, row_step=8)
    rows, cols = rng.integers(0, light.shape[0], 3000), rng.integers(0, light.shape[1], 3000)
    got = spill_at_samples(spectrum, rows, cols)
    for j, sigma in enumerate(SPILL_SIGMAS):
        per_row, in_2d = _direct_spill(light.astype(np.float64), sigma, 8, (spectrum.n_fft_b, spectrum.n_fft_a))
        for column, image in ((j, per_row), (len(SPILL_SIGMAS) + j, in_2d)):
            np.testing.assert_allclose(got[:, column], image[rows, cols], rtol=0, atol=3e-5 * np.abs(image).max())


def test_weighted_spill_images_match_the_sum_of_the_terms() -> None:
    from soxs_mflat.background.spill import SPILL_SIGMAS, order_light_spectrum, weighted_spill

    light = _order_light(make_scene(n_b=480))
    spectrum = order_light_spectrum(light, row_step=8)
    weights = np.random.default_rng(7).uniform(0.0, 0.01, (2, len(SPILL_SIGMAS)))
    weights[0, :6] = 0.0
    per_row_sum = in_2d_sum = 0.0
    for j, sigma in enumerate(SPILL_SIGMAS):
        per_row, in_2d = _direct_spill(light.astype(np.float64), sigma, 8, (spectrum.n_fft_b, spectrum.n_fft_a))
        per_row_sum = per_row_sum + weights[0, j] * per_row
        in_2d_sum = in_2d_sum + weights[1, j] * in_2d
    raw, smoothed = weighted_spill(spectrum, weights, smooth_rows=65 / 8)
    expected_smoothed = in_2d_sum + local_linear_smooth(per_row_sum, np.ones((light.shape[0], 1)), 65 / 8, axis=0)
    scale = np.abs(raw).max()
    np.testing.assert_allclose(raw, per_row_sum + in_2d_sum, rtol=0, atol=1e-6 * scale)
    np.testing.assert_allclose(smoothed, expected_smoothed, rtol=0, atol=1e-6 * scale)
