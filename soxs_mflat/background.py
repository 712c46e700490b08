"""Scattered light between the orders: fit a smooth model from the gaps and interpolate it under the orders.

The model is built in BA orientation (rows along the orders, columns across them) in four steps:

1. **Gap samples.** Every inter-order gap (and a band beside the outermost orders) is cut at its
   fitted edges less a margin that keeps the PSF wings out but never empties a narrow gap. The
   gap pixels of each block of rows give one robust level (median), so cosmic rays, hot pixels and
   bad columns cannot pull it.
2. **Smoothing along B.** Each gap's levels are smoothed along the order with a Gaussian of
   ``gaussian_blur_sigma`` px, as a local-linear regression: it follows the blaze trend to the ends
   of the detector without the bias of a plain normalised convolution, and skips rejected blocks.
3. **Spill term.** Light scattered by the orders themselves peaks under the bright orders, which
   a smooth curve through the gaps alone misses. A non-negative mix of the order light convolved
   across A with a few broad kernels is fitted to the gap samples; it carries that structure under
   the orders.
4. **Interpolation across A.** What the spill term leaves in the gaps is interpolated with a spline
   of degree ``bspline_deg`` through the gap samples (one knot per gap), row by row.
"""
