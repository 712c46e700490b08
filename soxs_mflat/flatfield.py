"""The last step of a lamp's flat: bad pixels flagged into the mask, 1.0 written between the orders.

FLUX keeps the lamp × blaze × slit-illumination shape inside the orders (normalised to the exposure
level) and is exactly 1.0 between them, so dividing a frame by it leaves the inter-order pixels as
they were instead of amplifying their noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from soxs_mflat import badpixels, edges
from soxs_mflat.footprints import OrderBounds, inside_orders
from soxs_mflat.frames import FrameFile
from soxs_mflat.order_table import OrderTable
from soxs_mflat.qc import QCRow
from soxs_mflat.settings import ArmSettings


@dataclass(frozen=True)
class FinishedFlat:
    """FLUX, QUAL (bool) and the bad-pixel search behind QUAL, BA orientation."""

    data: np.ndarray
    mask: np.ndarray
    inside: np.ndarray
    """The pixels inside the orders."""
    bad_pixels: badpixels.BadPixelResult


def flag_and_finish(flat: np.ndarray, uncertainty: np.ndarray, input_mask: np.ndarray, bounds: OrderBounds,
                    arm: ArmSettings, *, calibration_hot: np.ndarray | None) -> FinishedFlat:
    """Flag dead, hot, low-sensitivity and partly lit edge pixels inside the orders (``calibration_hot``: the
    pixels found hot in the master bias or the darks), then set ``flat`` to 1.0 between the orders, in place:
    it becomes FLUX."""
    bad = badpixels.find_bad_pixels(
        flat,
        uncertainty,
        bounds,
        low_sensitivity_sigma=arm.low_sensitivity_clipping_sigma,
        hot_sigma=arm.hot_pixel_clipping_sigma,
        dead_limit=arm.dead_pixel_response_limit,
        edge_min_fraction=arm.order_edge_min_flat_fraction,
        input_mask_ba=input_mask,
        frame_hot=calibration_hot,
    )
    inside = inside_orders(bounds, flat.shape)
    mask = (input_mask | bad.mask) & inside
    np.copyto(flat, np.float32(1.0), where=~inside | ~np.isfinite(flat))
    return FinishedFlat(flat, mask, inside, bad)


@dataclass(frozen=True)
class LampFlat:
    """The master flat of one lamp (or the stitched one), BA orientation, with what was measured on the way."""

    lamp: str
    """``DLAMP``/``QLAMP`` for one lamp of a stitched run, else empty."""
    data: np.ndarray
    uncertainty: np.ndarray
    mask: np.ndarray
    table: OrderTable
    """Order centres, widths and fitted edges."""
    centres: OrderTable
    """The order-centre table given as input."""
    background: np.ndarray | None
    """The scattered-light model subtracted, if any."""
    qc: list[QCRow]
    flats: tuple[FrameFile, ...]
    detections: edges.EdgeDetections
    fit: edges.EdgeFit
    ordexp: tuple[float, float, float]
    figures: tuple[object, object | None]
    """The described QC figures: order locations, and scattered light (None without background subtraction)."""
