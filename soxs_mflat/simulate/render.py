"""Noiseless images of the slit orders and of the scattered light.

Across an order (axis A) the recorded profile is the slit image — a top-hat between the true edges,
times a gentle linear slit-illumination slope — convolved with a Gaussian PSF and integrated over
each pixel. The pixel integral has a closed form in the normal CDF Φ and density φ, evaluated at the
pixel boundaries, so no per-pixel loop or numerical quadrature is needed. The edge is therefore where
the blurred profile falls to half of the in-order level next to it.

Images are built in "BA" orientation, ``[b, a]``, and turned into prepared-frame ``[row, column]``
orientation by :meth:`FrameGeometry.to_frame`. Binned frames are rendered directly in binned pixels
with ``edge_binned(Bb) = edge_unbinned(Bb · binB) / binA`` and ``σ_binned = σ / binA``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.special import ndtr

from soxs_mflat.simulate.layout import TAPER_WIDTH, ArmLayout

PSF_HALF_WIDTH = 6.0
"""Half-width of the rendering window beyond each edge, in PSF sigmas."""

_INV_SQRT_2PI = 1.0 / np.sqrt(2.0 * np.pi)


def profile_antiderivative(
    x: np.ndarray,
    low: np.ndarray,
    up: np.ndarray,
    sigma: float,
    slope: np.ndarray | float,
) -> np.ndarray:
    """Antiderivative in ``x`` of the PSF-blurred slit image (unit level at the slit centre).

    The slit image is ``1 + slope · (t − c) / (h / 2)`` for ``low ≤ t ≤ up`` (``c`` the midpoint and
    ``h`` the height), zero elsewhere. The integral of the blurred profile over a pixel
    ``[x1, x2]`` is ``F(x2) − F(x1)``. With ``v = (e − x) / σ``, ``G(v) = vΦ + φ`` (the antiderivative
    of Φ) and ``H(v) = ((v² − 1)Φ + vφ) / 2`` (that of ``vΦ``), each edge ``e`` contributes
    ``∓σG`` for the top-hat and ``∓(−σ(e − c)G + σ²H + σ²Φ)`` for the slope term.
    """
    centre = 0.5 * (low + up)
    slope_factor = 2.0 * np.asarray(slope) / (up - low)
    total = np.zeros(np.broadcast_shapes(np.shape(x), np.shape(low)))
    for edge, sign in ((up, 1.0), (low, -1.0)):
        v = (edge - x) / sigma
        cdf = ndtr(v)
        pdf = np.exp(-0.5 * v * v) * _INV_SQRT_2PI
        g = v * cdf + pdf
        h = 0.5 * ((v * v - 1.0) * cdf + v * pdf)
        top_hat = -sigma * g
        linear = -sigma * (edge - centre) * g + sigma * sigma * (h + cdf)
        total += sign * (top_hat + slope_factor * linear)
    return total


@dataclass(frozen=True)
class OrderWindow:
    """Pixel-integrated profile of one order inside a per-row window along A."""

    order: int
    b_index: np.ndarray
    """Frame axis-B rows where the order is rendered."""
    a_start: np.ndarray
    """First axis-A pixel of the window in each rendered row."""
    profile: np.ndarray
    """(rows, window) profile values, unit level at the slit centre."""

    def a_index(self) -> np.ndarray:
        """(rows, window) axis-A pixel indices of :attr:`profile`."""
        return self.a_start[:, None] + np.arange(self.profile.shape[1])[None, :]


@dataclass(frozen=True)
class FrameGeometry:
    """The arm's true geometry at one binning, with the rendered order profiles."""

    layout: ArmLayout
    a_bin: int
    b_bin: int
    n_a: int
    n_b: int
    windows: tuple[OrderWindow, ...] = field(repr=False)

    @property
    def sigma(self) -> float:
        """PSF sigma along A in frame pixels."""
        return self.layout.spec.psf_sigma / self.a_bin

    @property
    def frame_shape(self) -> tuple[int, int]:
        """Prepared-frame shape (rows, columns)."""
        return (self.n_b, self.n_a) if self.layout.detector.dispersion_axis == "x" else (self.n_a, self.n_b)

    def to_frame(self, image_ba: np.ndarray) -> np.ndarray:
        """Turn a ``[b, a]`` image into prepared-frame ``[row, column]`` orientation."""
        return image_ba if self.layout.detector.dispersion_axis == "x" else np.ascontiguousarray(image_ba.T)

    def from_frame(self, image: np.ndarray) -> np.ndarray:
        """Turn a prepared-frame image into ``[b, a]`` orientation."""
        return image if self.layout.detector.dispersion_axis == "x" else np.ascontiguousarray(image.T)

    def b_unbinned(self, b_frame: np.ndarray) -> np.ndarray:
        """Unbinned axis-B coordinate of frame rows (soxspipe's ``unbinned = binned · bin``)."""
        return np.asarray(b_frame, dtype=np.float64) * self.b_bin

    def edges(self, order: int, b_frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """True lower and upper edges (frame pixels along A) at frame rows ``b_frame``."""
        low = self.layout.edge_low.in_frame(order, b_frame, self.a_bin, self.b_bin)
        up = self.layout.edge_up.in_frame(order, b_frame, self.a_bin, self.b_bin)
        return low, up

    def true_rows(self, index: int) -> np.ndarray:
        """Frame axis-B rows inside the true extent of the order at ``index``."""
        start = int(np.ceil(self.layout.b_start[index] / self.b_bin))
        stop = int(np.ceil(self.layout.b_stop[index] / self.b_bin))
        return np.arange(start, min(stop, self.n_b))

    def image(self, level: Callable[[int, np.ndarray], np.ndarray]) -> np.ndarray:
        """Sum over orders of profile × ``level(order, b_unbinned)`` as a ``[b, a]`` float64 image."""
        image = np.zeros((self.n_b, self.n_a))
        flat = image.ravel()
        for window in self.windows:
            values = window.profile * level(window.order, self.b_unbinned(window.b_index))[:, None]
            a_index = window.a_index()
            inside = (a_index >= 0) & (a_index < self.n_a)
            flat_index = window.b_index[:, None] * self.n_a + a_index
            flat[flat_index[inside]] += values[inside]
        return image

    def in_slit(self, *, inset: float = 0.0) -> np.ndarray:
        """``[b, a]`` map of the order number of pixels whose centre is ``inset`` px inside the true edges.

        Zero where no order's true extent covers the pixel.
        """
        order_map = np.zeros((self.n_b, self.n_a), dtype=np.int16)
        a = np.arange(self.n_a)[None, :]
        for index, order in enumerate(self.layout.orders):
            rows = self.true_rows(index)
            if rows.size == 0:
                continue
            low, up = self.edges(int(order), rows)
            inside = (a >= low[:, None] + inset) & (a <= up[:, None] - inset)
            order_map[rows[0] : rows[-1] + 1][inside] = order
        return order_map


def frame_geometry(layout: ArmLayout, binning: tuple[int, int]) -> FrameGeometry:
    """Render the unit-level profile window of every order at ``binning`` = (binx, biny)."""
    binx, biny = binning
    a_bin, b_bin = (binx, biny) if layout.detector.dispersion_axis == "x" else (biny, binx)
    rows, cols = layout.detector.prepared_shape(binx, biny)
    n_a, n_b = (cols, rows) if layout.detector.dispersion_axis == "x" else (rows, cols)
    sigma = layout.spec.psf_sigma / a_bin
    b_frame = np.arange(n_b)
    windows = []
    for index, order in enumerate(layout.orders):
        order = int(order)
        reach = 5.0 * TAPER_WIDTH
        lit = (b_frame * b_bin >= layout.illum_start[index] - reach) & (b_frame * b_bin <= layout.illum_stop[index] + reach)
        low = layout.edge_low.in_frame(order, b_frame, a_bin, b_bin)
        up = layout.edge_up.in_frame(order, b_frame, a_bin, b_bin)
        margin = PSF_HALF_WIDTH * sigma
        lit &= (up + margin > -0.5) & (low - margin < n_a - 0.5)
        rows_lit = b_frame[lit]
        if rows_lit.size == 0:
            continue
        low, up = low[lit], up[lit]
        a_start = np.floor(low - margin).astype(np.int64)
        width = int(np.ceil(np.max(up - a_start) + margin)) + 1
        boundaries = a_start[:, None] + np.arange(width + 1)[None, :] - 0.5
        antiderivative = profile_antiderivative(boundaries, low[:, None], up[:, None], sigma, layout.slit_slope(order))
        windows.append(OrderWindow(order, rows_lit, a_start, np.diff(antiderivative, axis=1)))
    return FrameGeometry(layout, a_bin, b_bin, n_a, n_b, tuple(windows))


def lamp_level(layout: ArmLayout, spectrum: Callable[[np.ndarray], np.ndarray]) -> Callable[[int, np.ndarray], np.ndarray]:
    """Level along each order: lamp spectrum × blaze × end taper, as ``level(order, b_unbinned)``."""

    def level(order: int, b: np.ndarray) -> np.ndarray:
        return spectrum(layout.wavelength(order, b)) * layout.blaze(order, b) * layout.taper(order, b)

    return level


@dataclass(frozen=True)
class ScatterModel:
    """Scattered light as the lamp image convolved with a two-component Gaussian kernel.

    ``fractions`` are the fractions of the in-order light redistributed by each component and
    ``sigmas`` their widths in unbinned pixels.
    """

    fractions: tuple[float, ...] = (0.025, 0.05)
    sigmas: tuple[float, ...] = (12.0, 90.0)
    block: int = 4

    def __call__(self, image_ba: np.ndarray, *, a_bin: int, b_bin: int) -> np.ndarray:
        """Scattered-light image for ``image_ba`` (computed on a block-averaged grid, then upsampled)."""
        n_b, n_a = image_ba.shape
        block = self.block
        pad_b, pad_a = (-n_b) % block, (-n_a) % block
        padded = np.pad(image_ba, ((0, pad_b), (0, pad_a)), mode="constant")
        small = padded.reshape(padded.shape[0] // block, block, padded.shape[1] // block, block).mean(axis=(1, 3))
        scattered = np.zeros_like(small)
        for fraction, sigma in zip(self.fractions, self.sigmas, strict=True):
            sigma_small = (sigma / b_bin / block, sigma / a_bin / block)
            scattered += fraction * ndimage.gaussian_filter(small, sigma_small, mode="constant", truncate=4.0)
        zoomed = ndimage.zoom(scattered, block, order=1, mode="nearest", grid_mode=True)
        return zoomed[:n_b, :n_a]
