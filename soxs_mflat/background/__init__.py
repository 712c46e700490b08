"""Scattered light between the orders: fit a model from the gaps and carry it under the orders.

Everything runs in BA orientation (rows along the orders, columns across them), on the image
median-binned by blocks of rows (robust to cosmic rays and hot pixels, and fast):

1. **Gap pixels** (:mod:`.gaps`). Every inter-order gap, and a band beside the outermost orders, is
   cut at the fitted edges less a margin; in narrow gaps the margin shrinks so that a gap is never empty.
2. **Joint fit on the gap pixels** (:mod:`.joint_fit`; least squares with non-negative physical terms,
   outliers clipped):

   * *PSF wings*: each edge's light leaking into the gap, a free profile in distance from the
     edge (px bins) scaled by the neighbouring order's level. It belongs to the orders, so it is
     fitted but left out of the model; it is what makes gaps of a few pixels usable.
   * *Spill* (:mod:`.spill`): the order light convolved with Gaussians of 4–256 px, once across A only
     (orders going on beyond the detector ends) and once in 2-D (nothing beyond the detector). It
     carries the scattered light's peaks under the bright orders, which no curve through the gaps can see.
   * a smooth low-order surface for stray light not tied to the orders.

3. **Gap residuals** (:mod:`.gap_levels`). What the fit leaves in each gap (per block, median) is
   smoothed along B with a Gaussian of ``gaussian_blur_sigma`` px — a local-linear regression
   (:mod:`.smoothing`), unbiased up to the detector ends — and interpolated across A with a spline of
   degree ``bspline_deg`` through the gaps (one knot per gap), so the model passes through the
   measured gap levels.
4. The row-by-row spill term is smoothed along B the same way, everything is added, and the
   result is interpolated back to every row (:mod:`.binning`).
"""

from soxs_mflat.background.gaps import default_margin
from soxs_mflat.background.model import BackgroundModel, fit_scattered_light
from soxs_mflat.background.smoothing import local_linear_smooth

__all__ = ["BackgroundModel", "default_margin", "fit_scattered_light", "local_linear_smooth"]
