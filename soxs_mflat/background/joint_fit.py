"""The joint fit on the gap pixels: PSF wings, spill and a smooth surface, by robust bounded least squares."""

from __future__ import annotations

from dataclasses import dataclass

import bottleneck as bn
import numpy as np
from numpy.polynomial import legendre
from scipy.linalg import cholesky, solve_triangular
from scipy.optimize import lsq_linear

from soxs_mflat.background.gaps import WING_BIN_EDGES, GapBounds, wing_pixels
from soxs_mflat.background.spill import SPILL_SIGMAS, OrderLightSpectrum, spill_at_samples
from soxs_mflat.robust import MAD_TO_SIGMA

SURFACE_DEGREE = 2
"""Degree in each coordinate of the Legendre surface for stray light not tied to the orders."""
CLIP_SIGMA = 5.0
"""Samples this many robust σ off the fit are left out of it."""
CLIP_PASSES = 3
RIDGE = 1e-9
"""Added to the diagonal of the normal equations (of unit-norm columns), times their trace: keeps them
positive definite when a term is absent (a zero column) or two are nearly the same."""
BLAS_ROWS = 128
"""Rows per matrix product of the normal equations: small enough that BLAS keeps to one thread. Threads gain
nothing at these sizes and stall for long when another process holds the other core."""
N_WING = WING_BIN_EDGES.size - 1
N_SPILL = 2 * len(SPILL_SIGMAS)
N_SURFACE = (SURFACE_DEGREE + 1) ** 2
"""Columns of the design matrix: PSF-wing bins, spill terms, surface coefficients."""


@dataclass(frozen=True)
class JointFit:
    """Coefficients of the joint fit: ``wing_profile`` (light per ``WING_BIN_EDGES`` distance bin from an
    order edge, as a fraction of the order's level), ``spill_weights`` (2 × ``SPILL_SIGMAS``: across A only,
    in 2-D) and ``surface`` (Legendre coefficients, along B × across A)."""

    wing_profile: np.ndarray
    spill_weights: np.ndarray
    surface: np.ndarray


def surface_bases(rows: np.ndarray, cols: np.ndarray, n_rows: int, n_a: int) -> tuple[np.ndarray, np.ndarray]:
    """Legendre polynomials of degree ≤ ``SURFACE_DEGREE`` at ``rows`` and at ``cols``, the image scaled to
    [-1, 1] in each coordinate."""
    v = 2.0 * np.asarray(rows, dtype=np.float64) / max(n_rows - 1, 1) - 1.0
    u = 2.0 * np.asarray(cols, dtype=np.float64) / max(n_a - 1, 1) - 1.0
    return legendre.legvander(v, SURFACE_DEGREE), legendre.legvander(u, SURFACE_DEGREE)


def surface_image(surface: np.ndarray, n_rows: int, n_a: int) -> np.ndarray:
    """The fitted surface on every binned pixel."""
    along, across = surface_bases(np.arange(n_rows), np.arange(n_a), n_rows, n_a)
    return np.einsum("ri,ij,aj->ra", along, surface, across)


def design_matrix(
    rows: np.ndarray,
    cols: np.ndarray,
    gap: np.ndarray,
    gaps: GapBounds,
    order_level: np.ndarray,
    light: OrderLightSpectrum,
    n_rows: int,
) -> np.ndarray:
    """Design matrix of the joint fit on the binned pixels (``rows``, ``cols``) of gaps ``gap``: the PSF
    wings (``N_WING`` columns), the spill terms (``N_SPILL``) and the surface (``N_SURFACE``)."""
    design = np.zeros((rows.size, N_WING + N_SPILL + N_SURFACE))
    for side in (0, 1):
        near, bins, level = wing_pixels(gaps, order_level, side, gap, rows, cols)
        design[near, bins] += level
    design[:, N_WING : N_WING + N_SPILL] = spill_at_samples(light, rows, cols)
    along, across = surface_bases(rows, cols, n_rows, light.n_a)
    surface = design[:, N_WING + N_SPILL :].reshape(rows.size, SURFACE_DEGREE + 1, SURFACE_DEGREE + 1)
    np.multiply(along[:, :, None], across[:, None, :], out=surface)
    return design


def normal_equations(design: np.ndarray, data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DᵀD and Dᵀy, ``BLAS_ROWS`` rows of the design at a time."""
    n_coef = design.shape[1]
    gram, rhs = np.zeros((n_coef, n_coef)), np.zeros(n_coef)
    for start in range(0, design.shape[0], BLAS_ROWS):
        part = design[start : start + BLAS_ROWS]
        gram += part.T @ part
        rhs += part.T @ data[start : start + BLAS_ROWS]
    return gram, rhs


def bounded_normal_solve(gram: np.ndarray, rhs: np.ndarray, lower: np.ndarray) -> np.ndarray:
    """Minimise xᵀ·gram·x − 2·rhsᵀx subject to x ≥ ``lower``, in the coordinates where the columns have unit
    norm. With gram = UᵀU (Cholesky) this is the bounded least-squares problem |U x − U⁻ᵀ rhs|², small
    (coefficients × coefficients) whatever the number of samples, solved by ``lsq_linear``'s BVLS."""
    norm = np.sqrt(np.diag(gram))
    scale = np.where(norm > 0, norm, 1.0)
    unit_gram = gram / np.outer(scale, scale)
    unit_gram[np.diag_indices_from(unit_gram)] += RIDGE * np.trace(unit_gram)
    upper = cholesky(unit_gram)
    target = solve_triangular(upper, rhs / scale, trans="T")
    return lsq_linear(upper, target, bounds=(lower, np.inf), method="bvls").x / scale


def median_and_sigma(values: np.ndarray) -> tuple[float, float]:
    """Median and MAD-based σ of a non-empty 1-D array without NaN, which is overwritten (bottleneck's
    medians: ~10× faster than ``astropy.stats.mad_std`` on the millions of gap pixels of a frame)."""
    centre = float(bn.median(values))
    values -= values.dtype.type(centre)
    return centre, MAD_TO_SIGMA * float(bn.median(np.abs(values, out=values)))


def robust_bounded_fit(design: np.ndarray, data: np.ndarray, *, n_free: int) -> np.ndarray:
    """Least squares of finite ``data`` on ``design`` with all but the last ``n_free`` coefficients
    non-negative, dropping the samples more than ``CLIP_SIGMA`` robust σ off and refitting (at most
    ``CLIP_PASSES`` fits). The normal equations are only updated for the samples dropped or restored."""
    lower = np.r_[np.zeros(design.shape[1] - n_free), np.full(n_free, -np.inf)]
    gram, rhs = normal_equations(design, data)
    keep = np.ones(data.size, dtype=bool)
    for _ in range(CLIP_PASSES):
        coef = bounded_normal_solve(gram, rhs, lower)
        residual = data - np.einsum("sc,c->s", design, coef)
        _, sigma = median_and_sigma(residual[keep])
        new_keep = np.abs(residual) <= CLIP_SIGMA * max(sigma, 1e-12)
        if np.array_equal(new_keep, keep):
            break
        for changed, sign in ((new_keep & ~keep, 1.0), (keep & ~new_keep, -1.0)):
            part_gram, part_rhs = normal_equations(design[changed], data[changed])
            gram += sign * part_gram
            rhs += sign * part_rhs
        keep = new_keep
    return coef


def fit_gap_samples(
    binned: np.ndarray,
    samples: tuple[np.ndarray, np.ndarray, np.ndarray],
    gaps: GapBounds,
    order_level: np.ndarray,
    light: OrderLightSpectrum,
) -> JointFit:
    """Fit the joint model to the binned image at ``samples`` (rows, columns and gaps of gap pixels, see
    :func:`soxs_mflat.background.gaps.fit_samples`)."""
    rows, cols, gap = samples
    design = design_matrix(rows, cols, gap, gaps, order_level, light, binned.shape[0])
    coef = robust_bounded_fit(design, binned[rows, cols].astype(np.float64), n_free=N_SURFACE)
    return JointFit(
        wing_profile=coef[:N_WING],
        spill_weights=coef[N_WING : N_WING + N_SPILL].reshape(2, len(SPILL_SIGMAS)),
        surface=coef[N_WING + N_SPILL :].reshape(SURFACE_DEGREE + 1, SURFACE_DEGREE + 1),
    )
