"""A small synthetic echelle flat with known order edges, for fast unit tests.

Images are in BA orientation (rows along the orders, columns across them) and unbinned. Each order
is a top-hat slit image between ``low(B)`` and ``up(B)``, blurred by a Gaussian PSF and integrated
over each pixel (pixel centres at integer indices), so the true edge is where the profile falls to
half the level next to it — the same convention as the simulator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr

from soxs_mflat.geometry import Poly2D, fit_poly2d
from soxs_mflat.order_table import OrderTable

SQRT_2PI = np.sqrt(2.0 * np.pi)


def _integrated_step(a: np.ndarray, edge: np.ndarray, sigma: float) -> np.ndarray:
    """Pixel-integrated normal CDF: mean over [a-0.5, a+0.5] of Φ((t - edge)/σ)."""

    def antiderivative(t: np.ndarray) -> np.ndarray:
        z = (t - edge) / sigma
        return sigma * (z * ndtr(z) + np.exp(-0.5 * z * z) / SQRT_2PI)

    return antiderivative(a + 0.5) - antiderivative(a - 0.5)


def slit_profile(a: np.ndarray, low: np.ndarray, up: np.ndarray, sigma: float) -> np.ndarray:
    """Pixel-integrated, PSF-blurred top-hat between ``low`` and ``up`` (1 inside)."""
    return _integrated_step(a, low, sigma) - _integrated_step(a, up, sigma)


@dataclass(frozen=True)
class SyntheticFlat:
    """A synthetic normalised flat and its truth (BA orientation, unbinned)."""

    image: np.ndarray
    noiseless: np.ndarray
    orders: np.ndarray
    low: np.ndarray
    up: np.ndarray
    centre_table: OrderTable
    edge_low: Poly2D
    edge_up: Poly2D


def synthetic_flat(
    *,
    n_b: int = 600,
    n_a: int = 400,
    orders: tuple[int, ...] = (10, 11, 12, 13, 14, 15),
    first_centre: float = 40.0,
    spacing: float = 60.0,
    spacing_slope: float = 2.0,
    height: float = 30.0,
    curvature: float = 4e-5,
    psf_sigma: float = 0.8,
    levels: tuple[float, ...] | None = None,
    scattered: float = 0.0,
    noise: float = 0.0,
    centre_error: float = 0.0,
    seed: int = 0,
) -> SyntheticFlat:
    """Build a flat whose orders are curved, spaced by ``spacing`` (+``spacing_slope`` per order).

    ``levels`` sets each order's in-order level (default 1); ``scattered`` adds a smooth pedestal
    of that fraction of the mean level; ``noise`` is the relative Gaussian noise per pixel;
    ``centre_error`` (px) shifts the centre table's traces from the truth like a measurement would.
    """
    rng = np.random.default_rng(seed)
    orders_arr = np.asarray(orders)
    levels_arr = np.ones(orders_arr.size) if levels is None else np.asarray(levels, dtype=float)
    b = np.arange(n_b, dtype=np.float64)
    a = np.arange(n_a, dtype=np.float64)
    index = np.arange(orders_arr.size)
    offsets = first_centre + index * spacing + 0.5 * spacing_slope * index * (index - 1)
    centre = offsets[:, None] + curvature * (b[None, :] - n_b / 2) ** 2 + 0.01 * b[None, :]
    low = centre - height / 2 - 0.002 * b[None, :]
    up = centre + height / 2 + 0.002 * b[None, :]
    noiseless = np.zeros((n_b, n_a))
    for k in range(orders_arr.size):
        profile = slit_profile(a[None, :], low[k][:, None], up[k][:, None], psf_sigma)
        noiseless += levels_arr[k] * profile
    if scattered:
        noiseless += scattered * levels_arr.mean() * (0.5 + 0.5 * np.sin(a / n_a * np.pi))[None, :]
    image = noiseless * (1.0 + noise * rng.standard_normal(noiseless.shape)) if noise else noiseless.copy()
    grid_order = np.repeat(orders_arr, n_b).astype(float)
    grid_b = np.tile(b, orders_arr.size)
    fit = lambda values: fit_poly2d(grid_order, grid_b, values.ravel(), deg_order=3, deg_b=3).poly  # noqa: E731
    edge_low, edge_up = fit(low), fit(up)
    measured = centre + centre_error * np.sin(b / n_b * 3.0)[None, :]
    centre_poly = fit(measured)
    table = OrderTable(
        fitted_axis="x",
        orders=orders_arr,
        b_min=np.zeros(orders_arr.size),
        b_max=np.full(orders_arr.size, float(n_b)),
        a_min=centre.min(axis=1),
        a_max=centre.max(axis=1),
        centre=centre_poly,
        std=Poly2D(np.array([[1.0]])),
    )
    return SyntheticFlat(image.astype(np.float32), noiseless, orders_arr, low, up, table, edge_low, edge_up)
