"""The line-spread function across the orders: a Gaussian core, an optional shoulder and Moffat wings.

The core σ may vary across the detector (a gradient and a defocus towards the corners). A shoulder —
a second Gaussian of weight ``shoulder`` displaced by ``shoulder_offset`` core σ — makes the PSF
asymmetric; the two components are shifted together so that the *pixel-integrated* edge-spread
function crosses one half exactly at the geometric edge, which keeps the truth's edge definition
(half of the in-order level) exact. Moffat wings are a symmetric discrete kernel applied along A to
the image rendered with a symmetric core, which keeps that crossing exact too (a symmetric kernel
maps a step that is antisymmetric about the edge to another one).

Each slit end may be softer than the PSF (a defocused slit jaw): an extra Gaussian σ per end, added
in quadrature to the core at that edge.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import signal
from scipy.special import ndtr, stdtr

from soxs_mflat.simulate.variation import Variation

MEDIAN_ITERATIONS = 60
"""Bisection steps of the shift that puts the median of the pixel-integrated core at zero (2⁻⁶⁰ of the bracket)."""
WING_REACH = 40.0
"""The wing kernel extends to this many Moffat α on each side (at most a quarter of the frame)."""

_INV_SQRT_2PI = 1.0 / np.sqrt(2.0 * np.pi)


@dataclass(frozen=True)
class CoreComponent:
    """One Gaussian of the core at an edge: weight, shift (frame px) and σ (frame px) per row."""

    weight: float
    shift: np.ndarray | float
    sigma: np.ndarray


@dataclass(frozen=True)
class PsfModel:
    """Line-spread function along axis A; lengths in unbinned pixels unless said otherwise."""

    sigma: float
    """Core σ at the frame centre."""
    gradient: float = 0.0
    gradient_angle: float = 0.0
    focus: float = 0.0
    shoulder: float = 0.0
    shoulder_offset: float = 0.0
    """Shoulder offset in core σ (signed, along +A)."""
    wing_fraction: float = 0.0
    wing_alpha: float = 3.0
    """Moffat α in core σ."""
    wing_beta: float = 3.0
    soft_ends: tuple[float, float] = (0.0, 0.0)
    """Extra Gaussian σ of the lower and the upper slit end."""

    @classmethod
    def from_variation(cls, nominal_sigma: float, variation: Variation) -> PsfModel:
        """The PSF of an arm whose nominal core σ is ``nominal_sigma``, under ``variation``."""
        return cls(
            sigma=nominal_sigma * variation.psf_scale,
            gradient=variation.psf_gradient,
            gradient_angle=variation.psf_gradient_angle,
            focus=variation.psf_focus,
            shoulder=variation.psf_shoulder,
            shoulder_offset=variation.psf_shoulder_offset,
            wing_fraction=variation.psf_wing_fraction,
            wing_alpha=variation.psf_wing_alpha,
            wing_beta=variation.psf_wing_beta,
            soft_ends=(variation.soft_end_low, variation.soft_end_up),
        )

    @property
    def asymmetric(self) -> bool:
        """True when the core has a shoulder."""
        return self.shoulder > 0.0 and self.shoulder_offset != 0.0

    def sigma_at(self, a: np.ndarray, b: np.ndarray, *, a_length: int, b_length: int) -> np.ndarray:
        """Core σ (unbinned px) at unbinned coordinates ``(a, b)``."""
        a, b = np.broadcast_arrays(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
        if self.gradient == 0.0 and self.focus == 0.0:
            return np.full(a.shape, self.sigma)
        u = 2.0 * a / a_length - 1.0
        v = 2.0 * b / b_length - 1.0
        along = u * np.cos(self.gradient_angle) + v * np.sin(self.gradient_angle)
        return self.sigma * (1.0 + self.gradient * along + 0.5 * self.focus * (u * u + v * v))

    def edge_sigmas(self, core_frame: np.ndarray, a_bin: int) -> tuple[np.ndarray, np.ndarray]:
        """σ (frame px) at the lower and the upper slit end: the core with each end's softening in quadrature."""
        low, up = (np.hypot(core_frame, soft / a_bin) if soft else core_frame for soft in self.soft_ends)
        return low, up

    def components(self, edge_sigma: np.ndarray, *, symmetric: bool = False) -> tuple[CoreComponent, ...]:
        """Gaussian components of the core at an edge whose core σ (frame px) is ``edge_sigma``.

        With a shoulder, both components are shifted so that the median of the core convolved with
        one pixel is zero: the pixel-integrated edge-spread function then crosses 1/2 at the edge.
        ``symmetric`` drops the shoulder (the core under the Moffat wings).
        """
        if symmetric or not self.asymmetric:
            return (CoreComponent(1.0, 0.0, edge_sigma),)
        offset = self.shoulder_offset * edge_sigma
        shift = _pixel_median(self.shoulder, offset, edge_sigma)
        return (
            CoreComponent(1.0 - self.shoulder, -shift, edge_sigma),
            CoreComponent(self.shoulder, offset - shift, edge_sigma),
        )

    def reach(self, edge_sigma: np.ndarray) -> float:
        """Largest |shift| (frame px) of any core component, for the rendering window."""
        if not self.asymmetric:
            return 0.0
        return float(np.max(np.abs(self.shoulder_offset * edge_sigma))) + 1.0

    def wing_kernel(self, sigma_frame: float, n_a: int) -> np.ndarray:
        """Pixel-integrated, symmetric Moffat line-spread kernel (sums to 1) for a core σ of ``sigma_frame``.

        The line-spread function of a circular Moffat of index β is a Student-t profile with
        ν = 2β − 2 degrees of freedom and scale α/√ν.
        """
        alpha = self.wing_alpha * sigma_frame
        nu = 2.0 * self.wing_beta - 2.0
        half = int(min(np.ceil(WING_REACH * alpha), n_a // 4))
        bounds = (np.arange(-half, half + 2) - 0.5) * np.sqrt(nu) / alpha
        kernel = np.diff(stdtr(nu, bounds))
        kernel = 0.5 * (kernel + kernel[::-1])
        return kernel / kernel.sum()

    def add_wings(self, core_ba: np.ndarray, symmetric_ba: np.ndarray, *, sigma_frame: float) -> np.ndarray:
        """``(1 − f)·core + f·(wing kernel ⊛ symmetric core)`` along axis A of ``[b, a]`` images."""
        if self.wing_fraction == 0.0:
            return core_ba
        kernel = self.wing_kernel(sigma_frame, core_ba.shape[1])
        wings = signal.oaconvolve(symmetric_ba, kernel[None, :], mode="same", axes=1)
        return (1.0 - self.wing_fraction) * core_ba + self.wing_fraction * wings


def _box_cdf(x: np.ndarray, mean: np.ndarray | float, sigma: np.ndarray) -> np.ndarray:
    """CDF at ``x`` of a Gaussian convolved with a one-pixel box."""

    def antiderivative(v: np.ndarray) -> np.ndarray:
        return v * ndtr(v) + np.exp(-0.5 * v * v) * _INV_SQRT_2PI

    return sigma * (antiderivative((x + 0.5 - mean) / sigma) - antiderivative((x - 0.5 - mean) / sigma))


def _pixel_median(weight: float, offset: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Median of ``(1 − weight)·N(0, σ) + weight·N(offset, σ)`` convolved with a one-pixel box (bisection)."""
    low = np.minimum(offset, 0.0) - 1.0
    high = np.maximum(offset, 0.0) + 1.0
    for _ in range(MEDIAN_ITERATIONS):
        middle = 0.5 * (low + high)
        cdf = (1.0 - weight) * _box_cdf(middle, 0.0, sigma) + weight * _box_cdf(middle, offset, sigma)
        below = cdf < 0.5
        low = np.where(below, middle, low)
        high = np.where(below, high, middle)
    return 0.5 * (low + high)
