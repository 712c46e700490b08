"""Noiseless images of the slit orders and of the scattered light.

Across an order (axis A) the recorded profile is the slit image — a top-hat between the true edges,
times a slit-illumination profile (linear slope plus an optional quadratic term) — convolved with the
PSF (:mod:`soxs_mflat.simulate.psf`: Gaussian components, each slit end optionally softer) and
integrated over each pixel. The pixel integral has a closed form in the normal CDF Φ and density φ,
evaluated at the pixel boundaries, so no per-pixel loop or numerical quadrature is needed. The edge
is where the blurred profile falls to half of the in-order level next to it.

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
from soxs_mflat.simulate.psf import PsfModel

PSF_HALF_WIDTH = 6.0
"""Half-width of the rendering window beyond each edge, in PSF sigmas."""

_INV_SQRT_2PI = 1.0 / np.sqrt(2.0 * np.pi)


def profile_antiderivative(
    x: np.ndarray,
    low: np.ndarray,
    up: np.ndarray,
    sigma: np.ndarray | float,
    slope: np.ndarray | float,
    *,
    sigma_up: np.ndarray | float | None = None,
    curvature: float = 0.0,
) -> np.ndarray:
    """Antiderivative in ``x`` of the PSF-blurred slit image (unit level at the slit centre).

    The slit image is ``1 + slope · s + curvature · s²`` with ``s = (t − c) / (h / 2)`` for
    ``low ≤ t ≤ up`` (``c`` the midpoint and ``h`` the height), zero elsewhere, blurred by a Gaussian
    of σ ``sigma`` at the lower end and ``sigma_up`` (default: the same) at the upper end. The
    integral of the blurred profile over a pixel ``[x1, x2]`` is ``F(x2) − F(x1)``. With
    ``v = (e − x) / σ``, ``G(v) = vΦ + φ`` (the antiderivative of Φ) and ``H(v) = ((v² − 1)Φ + vφ) / 2``
    (that of ``vΦ``), each edge ``e`` contributes ``∓σG`` for the top-hat and
    ``∓(−σ(e − c)G + σ²H + σ²Φ)`` for the slope term; the quadratic term uses the moments
    ``N_k(v) = ∫_v^∞ z^k Φ(−z) dz`` of the Taylor expansion of the profile at ``x``.
    """
    centre = 0.5 * (low + up)
    half_height = 0.5 * (up - low)
    slope_factor = 2.0 * np.asarray(slope) / (up - low)
    total = np.zeros(np.broadcast_shapes(np.shape(x), np.shape(low)))
    sigma_up = sigma if sigma_up is None else sigma_up
    for edge, sign, edge_sigma in ((up, 1.0, sigma_up), (low, -1.0, sigma)):
        v = (edge - x) / edge_sigma
        cdf = ndtr(v)
        pdf = np.exp(-0.5 * v * v) * _INV_SQRT_2PI
        g = v * cdf + pdf
        h = 0.5 * ((v * v - 1.0) * cdf + v * pdf)
        top_hat = -edge_sigma * g
        linear = -edge_sigma * (edge - centre) * g + edge_sigma * edge_sigma * (h + cdf)
        total += sign * (top_hat + slope_factor * linear)
        if curvature:
            total -= sign * curvature * _quadratic_term(x, v, cdf, pdf, edge_sigma, centre, half_height)
    return total


def _quadratic_term(
    x: np.ndarray,
    v: np.ndarray,
    cdf: np.ndarray,
    pdf: np.ndarray,
    sigma: np.ndarray | float,
    centre: np.ndarray,
    half_height: np.ndarray,
) -> np.ndarray:
    """Antiderivative, from −∞, of a step at ``e`` (lit beyond it) whose light is ``s²``, PSF-blurred."""
    tail = 1.0 - cdf
    v2 = v * v
    moment0 = pdf - v * tail
    moment1 = 0.5 * (tail * (1.0 - v2) + v * pdf)
    moment2 = ((v2 + 2.0) * pdf - v2 * v * tail) / 3.0
    s = (x - centre) / half_height
    step = sigma / half_height
    return sigma * (s * s * moment0 + 2.0 * s * step * moment1 + step * step * moment2)


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
    symmetric: np.ndarray | None = None
    """The same with the PSF's shoulder left out (the core under the Moffat wings); None when the PSF has none."""

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
    psf: PsfModel = field(repr=False)

    @property
    def sigma(self) -> float:
        """PSF core sigma along A at the frame centre, in frame pixels."""
        return self.psf.sigma / self.a_bin

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

    def light(self, level: Callable[[int, np.ndarray], np.ndarray]) -> np.ndarray:
        """The ``[b, a]`` image of light whose level along each order is ``level``, PSF wings included."""
        core = self.image(level)
        if self.psf.wing_fraction == 0.0:
            return core
        symmetric = self.image(level, symmetric=True) if self.psf.asymmetric else core
        return self.psf.add_wings(core, symmetric, sigma_frame=self.sigma)

    def image(self, level: Callable[[int, np.ndarray], np.ndarray], *, symmetric: bool = False) -> np.ndarray:
        """Sum over orders of profile × ``level(order, b_unbinned)`` as a ``[b, a]`` float64 image.

        ``symmetric`` uses the profiles rendered without the PSF's shoulder.
        """
        image = np.zeros((self.n_b, self.n_a))
        flat = image.ravel()
        for window in self.windows:
            profile = window.symmetric if symmetric and window.symmetric is not None else window.profile
            values = profile * level(window.order, self.b_unbinned(window.b_index))[:, None]
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


def frame_geometry(layout: ArmLayout, binning: tuple[int, int], psf: PsfModel | None = None) -> FrameGeometry:
    """Render the unit-level profile window of every order at ``binning`` = (binx, biny).

    ``psf`` defaults to the arm's nominal Gaussian; its core σ is evaluated at each row's order centre.
    """
    psf = psf or PsfModel(layout.spec.psf_sigma)
    binx, biny = binning
    a_bin, b_bin = (binx, biny) if layout.detector.dispersion_axis == "x" else (biny, binx)
    rows, cols = layout.detector.prepared_shape(binx, biny)
    n_a, n_b = (cols, rows) if layout.detector.dispersion_axis == "x" else (rows, cols)
    b_frame = np.arange(n_b)
    windows = []
    for index, order in enumerate(layout.orders):
        order = int(order)
        reach = 5.0 * TAPER_WIDTH
        lit = (b_frame * b_bin >= layout.illum_start[index] - reach) & (b_frame * b_bin <= layout.illum_stop[index] + reach)
        low = layout.edge_low.in_frame(order, b_frame, a_bin, b_bin)
        up = layout.edge_up.in_frame(order, b_frame, a_bin, b_bin)
        core = psf.sigma_at(layout.centre.in_frame(order, b_frame, 1, b_bin), b_frame * b_bin,
                            a_length=layout.a_length, b_length=layout.b_length) / a_bin
        sigma_low, sigma_up = psf.edge_sigmas(core, a_bin)
        widest = np.maximum(sigma_low, sigma_up)
        margin = PSF_HALF_WIDTH * float(np.max(widest)) + psf.reach(widest)
        lit &= (up + margin > -0.5) & (low - margin < n_a - 0.5)
        rows_lit = b_frame[lit]
        if rows_lit.size == 0:
            continue
        low, up = low[lit], up[lit]
        a_start = np.floor(low - margin).astype(np.int64)
        width = int(np.ceil(np.max(up - a_start) + margin)) + 1
        boundaries = a_start[:, None] + np.arange(width + 1)[None, :] - 0.5
        edge_sigmas = (sigma_low[lit][:, None], sigma_up[lit][:, None])

        profile = _order_profile(layout, psf, order, boundaries, low, up, edge_sigmas, symmetric=False)
        symmetric = None
        if psf.asymmetric and psf.wing_fraction > 0.0:
            symmetric = _order_profile(layout, psf, order, boundaries, low, up, edge_sigmas, symmetric=True)
        windows.append(OrderWindow(order, rows_lit, a_start, profile, symmetric))
    return FrameGeometry(layout, a_bin, b_bin, n_a, n_b, tuple(windows), psf)


def _order_profile(
    layout: ArmLayout,
    psf: PsfModel,
    order: int,
    boundaries: np.ndarray,
    low: np.ndarray,
    up: np.ndarray,
    edge_sigmas: tuple[np.ndarray, np.ndarray],
    *,
    symmetric: bool,
) -> np.ndarray:
    """Pixel-integrated profile (rows, window) of one order: the sum over the PSF core's components."""
    profile = np.zeros((boundaries.shape[0], boundaries.shape[1] - 1))
    pairs = zip(psf.components(edge_sigmas[0], symmetric=symmetric), psf.components(edge_sigmas[1], symmetric=symmetric),
                strict=True)
    for at_low, at_up in pairs:
        antiderivative = profile_antiderivative(
            boundaries,
            low[:, None] + at_low.shift,
            up[:, None] + at_up.shift,
            at_low.sigma,
            layout.slit_slope(order),
            sigma_up=at_up.sigma,
            curvature=layout.slit_curvature,
        )
        profile += at_low.weight * np.diff(antiderivative, axis=1)
    return profile


def lamp_level(layout: ArmLayout, spectrum: Callable[[np.ndarray], np.ndarray]) -> Callable[[int, np.ndarray], np.ndarray]:
    """Level along each order: lamp spectrum × blaze × end taper, as ``level(order, b_unbinned)``."""

    def level(order: int, b: np.ndarray) -> np.ndarray:
        return spectrum(layout.wavelength(order, b)) * layout.blaze(order, b) * layout.taper(order, b)

    return level


@dataclass(frozen=True)
class ScatterModel:
    """Scattered light: the lamp image convolved with a two-component Gaussian kernel, plus a ghost.

    ``fractions`` are the fractions of the in-order light redistributed by each component and
    ``sigmas`` their widths in unbinned pixels. The ghost is a copy of the lamp image holding
    ``ghost_fraction`` of its light, displaced by ``ghost_offset`` (B, A) and blurred by ``ghost_sigma``.
    """

    fractions: tuple[float, ...] = (0.025, 0.05)
    sigmas: tuple[float, ...] = (12.0, 90.0)
    block: int = 4
    ghost_fraction: float = 0.0
    ghost_offset: tuple[float, float] = (0.0, 0.0)
    ghost_sigma: float = 8.0

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
        if self.ghost_fraction:
            offset = (self.ghost_offset[0] / b_bin / block, self.ghost_offset[1] / a_bin / block)
            ghost = ndimage.shift(small, offset, order=1, mode="constant")
            sigma_small = (self.ghost_sigma / b_bin / block, self.ghost_sigma / a_bin / block)
            scattered += self.ghost_fraction * ndimage.gaussian_filter(ghost, sigma_small, mode="constant", truncate=4.0)
        zoomed = ndimage.zoom(scattered, block, order=1, mode="nearest", grid_mode=True)
        return zoomed[:n_b, :n_a]
