"""The order-geometry convention: global polynomials in (order number, axis-B pixel).

soxspipe stores every trace (centre, edges) as a plain power series (spec §4.3)::

    A(m, B) = Σ_i Σ_j c[i, j] · m**i · B**j

with ``m`` the true echelle order number and ``A``/``B`` in **unbinned** pixels of the prepared
frame. Axis A is the fitted coordinate (``x`` when the dispersion axis is ``x``), axis B runs
along the orders. A binned frame's pixel ``p`` sits at unbinned coordinate ``p · bin`` (soxspipe's
arithmetic, spec §4.7–4.8), so ``binned = unbinned / bin`` on both axes.

Fits are made in a scaled Chebyshev basis, which is well conditioned, and converted exactly to the
power series that the file format needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import comb

import numpy as np
from numpy.polynomial import chebyshev, polynomial


@dataclass(frozen=True)
class Poly2D:
    """A power series ``A(m, B) = Σ c[i, j] m**i B**j`` (unbinned pixels)."""

    coeffs: np.ndarray

    def __post_init__(self) -> None:
        coeffs = np.atleast_2d(np.asarray(self.coeffs, dtype=np.float64))
        object.__setattr__(self, "coeffs", coeffs)

    @property
    def deg_order(self) -> int:
        """Degree in the order number."""
        return self.coeffs.shape[0] - 1

    @property
    def deg_b(self) -> int:
        """Degree in the axis-B coordinate."""
        return self.coeffs.shape[1] - 1

    def __call__(self, order: np.ndarray | float, b: np.ndarray | float) -> np.ndarray:
        """Evaluate at order number(s) ``order`` and unbinned axis-B coordinate(s) ``b``."""
        order, b = np.broadcast_arrays(np.asarray(order, dtype=np.float64), np.asarray(b, dtype=np.float64))
        return polynomial.polyval2d(order, b, self.coeffs)

    def in_frame(self, order: np.ndarray | float, b_frame: np.ndarray | float, a_bin: int, b_bin: int) -> np.ndarray:
        """Evaluate at binned frame coordinate ``b_frame`` and return the binned A coordinate."""
        return self(order, np.asarray(b_frame, dtype=np.float64) * b_bin) / a_bin


@dataclass(frozen=True)
class FitResult:
    """Outcome of a least-squares fit of a :class:`Poly2D`."""

    poly: Poly2D
    rank: int
    n_coeffs: int
    residuals: np.ndarray

    @property
    def full_rank(self) -> bool:
        """True if every coefficient was constrained by the data."""
        return self.rank == self.n_coeffs


def _scale(values: np.ndarray) -> tuple[float, float]:
    """Centre and half-range mapping ``values`` onto [-1, 1] (half-range at least 1)."""
    low, high = float(np.min(values)), float(np.max(values))
    return 0.5 * (low + high), max(0.5 * (high - low), 1.0)


def _chebyshev_to_power(deg: int, centre: float, half_range: float) -> np.ndarray:
    """Matrix M with ``T_k((v - centre)/half_range) = Σ_q M[k, q] v**q``."""
    cheb_in_u = np.zeros((deg + 1, deg + 1))
    for k in range(deg + 1):
        unit = np.zeros(deg + 1)
        unit[k] = 1.0
        power = chebyshev.cheb2poly(unit)
        cheb_in_u[k, : power.size] = power
    u_in_v = np.zeros((deg + 1, deg + 1))
    for p in range(deg + 1):
        for q in range(p + 1):
            u_in_v[p, q] = comb(p, q) * (-centre) ** (p - q) / half_range**p
    return cheb_in_u @ u_in_v


def fit_poly2d(
    order: np.ndarray,
    b: np.ndarray,
    a: np.ndarray,
    *,
    deg_order: int,
    deg_b: int,
) -> FitResult:
    """Least-squares fit of ``a = A(order, b)`` returning power-series coefficients.

    The design matrix is built from Chebyshev polynomials of the coordinates scaled to [-1, 1];
    the solution is converted exactly to the power series of the file format.
    """
    order = np.asarray(order, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a = np.asarray(a, dtype=np.float64)
    order_centre, order_half = _scale(order)
    b_centre, b_half = _scale(b)
    design = chebyshev.chebvander2d((order - order_centre) / order_half, (b - b_centre) / b_half, [deg_order, deg_b])
    n_coeffs = design.shape[1]
    if a.size < n_coeffs:
        empty = Poly2D(np.zeros((deg_order + 1, deg_b + 1)))
        return FitResult(empty, min(a.size, n_coeffs), n_coeffs, np.full(a.size, np.nan))
    solution, _, rank, _ = np.linalg.lstsq(design, a, rcond=None)
    cheb = solution.reshape(deg_order + 1, deg_b + 1)
    to_power_order = _chebyshev_to_power(deg_order, order_centre, order_half)
    to_power_b = _chebyshev_to_power(deg_b, b_centre, b_half)
    poly = Poly2D(to_power_order.T @ cheb @ to_power_b)
    residuals = a - design @ solution
    return FitResult(poly, int(rank), n_coeffs, residuals)
