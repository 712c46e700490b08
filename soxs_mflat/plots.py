"""QC figures in two halves: what a figure shows, and drawing it.

The recipe reduces each figure to a small description (block-averaged images, point lists, titles)
with numpy alone; :func:`render` draws a description, with the run's QC values and verdicts, as a
one-page PDF through matplotlib's PDF canvas (the pages are laid out in :mod:`soxs_mflat.qc_pages`,
imported only when a page is drawn).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import bottleneck as bn
import numpy as np

from soxs_mflat.qc import QCRow

MAX_IMAGE_SIDE = 800
"""Largest side (px) of an image shown on a QC page; larger images are block-averaged first."""
BAND_PIXELS = 1 << 21
"""Pixels block-averaged at a time (see :func:`block_average`)."""
MAX_TRACE_POINTS = 300
"""Samples along each order of a filled order outline."""
RASTER_DPI = 150
"""Resolution of the rasters (images and point clouds) in a QC page's PDF."""


@dataclass(frozen=True)
class Image:
    """A block-averaged image in frame orientation, its extent in frame pixels and display range."""

    pixels: np.ndarray
    extent: tuple[float, float, float, float]
    vmin: float
    vmax: float


@dataclass(frozen=True)
class Points:
    """Marker positions of one series."""

    x: np.ndarray
    y: np.ndarray

    @property
    def size(self) -> int:
        """Number of points."""
        return int(self.x.size)


@dataclass(frozen=True)
class OrderLocationFigure:
    """Content of ``<stem>_ORD_LOC.pdf`` (see :func:`order_location_figure`)."""

    title: str
    image: Image
    measured_low: Points
    measured_up: Points
    clipped: Points
    orders: np.ndarray
    outline_b: np.ndarray
    outline_low: np.ndarray
    outline_up: np.ndarray
    fitted_axis: str
    fit_title: str
    residual_low_b: Points
    residual_up_b: Points
    residual_low_order: Points
    residual_up_order: Points
    clipped_b: Points
    clipped_order: Points
    residual_limit: float
    """Half-height of the residual panels (px); points beyond are drawn at the edge and counted."""
    orders_kept: np.ndarray
    residual_title: str
    stem: str = ""
    """Product stem (night, arm, mode) shown under the title."""


@dataclass(frozen=True)
class BackgroundFigure:
    """Content of ``<stem>_BKGROUND.pdf`` (see :func:`background_figure`)."""

    title: str
    fitted: Image
    model: Image
    residual: Image
    residual_text: str
    fitted_axis: str
    middle: int
    cut_a: np.ndarray
    cut_data: np.ndarray
    cut_used: np.ndarray
    cut_model: np.ndarray
    cut_label: str
    cut_limits: tuple[float, float]
    stem: str = ""
    """Product stem (night, arm, mode) shown under the title."""


def image_limits(image: np.ndarray, *, low: float = 1.0, high: float = 99.5) -> tuple[float, float]:
    """Display limits from percentiles of the finite pixels."""
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return 0.0, 1.0
    vmin, vmax = np.percentile(finite, [low, high])
    return float(vmin), float(max(vmax, vmin + 1e-6))


def block_average(
    image: np.ndarray,
    *,
    max_side: int = MAX_IMAGE_SIDE,
    transpose: bool = False,
    where: np.ndarray | None = None,
    plus: np.ndarray | None = None,
) -> tuple[np.ndarray, tuple[float, ...]]:
    """``image`` averaged in square blocks to at most ``max_side`` pixels a side, and its extent.

    A QC page cannot show more pixels than that; averaging first keeps the PDF small and fast. NaNs
    are skipped (a block's value is the mean of its rows' means, close enough for display). The image
    may be restricted to the pixels ``where`` (NaN elsewhere) and added to ``plus``; ``transpose``
    returns the result in the other orientation. The work goes ``BAND_PIXELS`` of the image at a
    time, so that no full-size temporary is made (figures are drawn beside the bad-pixel search, the
    recipe's peak of memory).
    """
    factor = max(1, int(np.ceil(max(image.shape) / max_side)))
    rows, cols = image.shape
    if factor > 1:
        rows, cols = rows - rows % factor or rows, cols - cols % factor or cols
    out = np.empty((rows // factor, cols // factor), dtype=np.float32)
    step = factor * max(1, BAND_PIXELS // (factor * max(cols, 1)))
    for start in range(0, rows, step):
        band_rows = slice(start, min(start + step, rows))
        band = np.asarray(image[band_rows, :cols], dtype=np.float32)
        if where is not None:
            band = np.where(where[band_rows, :cols], band, np.float32(np.nan))
        if plus is not None:
            band = band + plus[band_rows, :cols]
        if factor > 1:
            n_rows = band.shape[0]
            along_rows = bn.nanmean(band.reshape(n_rows, cols // factor, factor), axis=2)
            band = bn.nanmean(along_rows.reshape(n_rows // factor, factor, cols // factor), axis=1)
        out[start // factor : start // factor + band.shape[0]] = band
    if transpose:
        return np.ascontiguousarray(out.T), (-0.5, rows - 0.5, -0.5, cols - 0.5)
    return out, (-0.5, cols - 0.5, -0.5, rows - 0.5)


def reduced_image(image: np.ndarray, *, limits: tuple[float, float] | None = None, **options: object) -> Image:
    """An :class:`Image` of ``image`` (see :func:`block_average` for ``options``) with percentile display
    limits unless ``limits`` are given."""
    pixels, extent = block_average(image, **options)
    vmin, vmax = limits if limits is not None else image_limits(pixels)
    return Image(pixels, extent, vmin, vmax)


def order_location_figure(
    flat_ba: np.ndarray,
    detections: object,
    fit: object,
    table: object,
    *,
    binning_ab: tuple[int, int] = (1, 1),
    fitted_axis: str = "x",
    title: str = "",
    stem: str = "",
) -> OrderLocationFigure:
    """Describe the order-edge QC page from the flat, the edge detections, the fit and the order table.

    Left: the flat with the measured lower/upper edges and the clipped points. Middle: the fitted
    edges of every order, the area between them filled. Right: fit residuals (frame px) against the
    dispersion-axis pixel and against the order, with the ``X RES`` QC values. ``title`` names the arm
    and pass (e.g. ``VIS order edges``); ``stem`` is the product stem shown under it.
    """
    a_bin, b_bin = binning_ab
    n_b = flat_ba.shape[0]

    def xy(a: np.ndarray, b: np.ndarray) -> Points:
        return Points(a, b) if fitted_axis == "x" else Points(b, a)

    image = reduced_image(flat_ba, transpose=fitted_axis != "x")
    image = replace(image, vmin=max(image.vmin, 0.0))
    used_low = detections.valid_low & ~fit.clipped_low
    used_up = detections.valid_up & ~fit.clipped_up
    clipped = xy(
        np.concatenate([detections.low[fit.clipped_low], detections.up[fit.clipped_up]]),
        np.concatenate([detections.b[fit.clipped_low], detections.b[fit.clipped_up]]),
    )
    outline_b = np.linspace(0.0, n_b - 1.0, min(n_b, MAX_TRACE_POINTS))
    orders = np.asarray(table.orders)
    outline_low = np.array([table.edge_low.in_frame(m, outline_b, a_bin, b_bin) for m in orders]).reshape(-1, outline_b.size)
    outline_up = np.array([table.edge_up.in_frame(m, outline_b, a_bin, b_bin) for m in orders]).reshape(-1, outline_b.size)

    residuals = np.concatenate([fit.residual_low[~fit.clipped_low], fit.residual_up[~fit.clipped_up]])
    residuals = residuals[np.isfinite(residuals)]
    limit = 1.2 * max(float(np.percentile(np.abs(residuals), 99.5)) if residuals.size else 0.0, 0.05)
    ok_low = np.isfinite(fit.residual_low) & ~fit.clipped_low
    ok_up = np.isfinite(fit.residual_up) & ~fit.clipped_up
    clipped_residual = np.concatenate([fit.residual_low[fit.clipped_low], fit.residual_up[fit.clipped_up]])
    dropped = f"; dropped orders: {', '.join(str(m) for m in fit.orders_dropped)}" if fit.orders_dropped.size else ""
    return OrderLocationFigure(
        title=f"{title or 'order locations'} — {orders.size} orders{dropped}",
        image=image,
        measured_low=xy(detections.low[used_low], detections.b[used_low]),
        measured_up=xy(detections.up[used_up], detections.b[used_up]),
        clipped=clipped,
        orders=orders,
        outline_b=outline_b,
        outline_low=outline_low,
        outline_up=outline_up,
        fitted_axis=fitted_axis,
        fit_title=f"fitted edges (degrees {fit.deg_order} × {fit.deg_b})",
        residual_low_b=Points(detections.b[ok_low], fit.residual_low[ok_low]),
        residual_up_b=Points(detections.b[ok_up], fit.residual_up[ok_up]),
        residual_low_order=Points(detections.order[ok_low] - 0.15, fit.residual_low[ok_low]),
        residual_up_order=Points(detections.order[ok_up] + 0.15, fit.residual_up[ok_up]),
        clipped_b=Points(np.concatenate([detections.b[fit.clipped_low], detections.b[fit.clipped_up]]),
                         clipped_residual),
        clipped_order=Points(np.concatenate([detections.order[fit.clipped_low], detections.order[fit.clipped_up]]),
                             clipped_residual),
        residual_limit=limit,
        orders_kept=np.asarray(fit.orders_kept),
        residual_title=f"fit residuals: X RES SD {fit.x_res_sd:.3f} px, X RES MAX {fit.x_res_max:.3f} px",
        stem=stem,
    )


def background_figure(subtracted_ba: np.ndarray, model: object, *, fitted_axis: str = "x",
                      title: str = "", stem: str = "") -> BackgroundFigure:
    """Describe the scattered-light QC page, in the frame's own orientation, from the flat after the
    model was subtracted (``subtracted_ba``) and the model.

    Top: the pixels the model was fitted to and the model (same colour scale), and data − model on
    the fitted pixels (symmetric scale) with the residual statistics. Below: a cut across the orders
    through the middle of the dispersion axis — data, model, fitted pixels. ``title`` names the arm
    (and lamp); ``stem`` is the product stem shown under it.
    """
    n_b = subtracted_ba.shape[0]
    middle = n_b // 2

    transpose = fitted_axis != "x"
    pixels, extent = block_average(model.model, transpose=transpose)
    vmin, vmax = image_limits(pixels, low=0.5, high=99.5)
    vmin = min(vmin, 0.0)
    model_image = Image(pixels, extent, vmin, vmax)
    spread = 5.0 * model.residual_sigma if np.isfinite(model.residual_sigma) else 1.0
    spread = max(spread, 1e-6)
    residual_image = reduced_image(subtracted_ba, limits=(-spread, spread), transpose=transpose,
                                   where=model.fitted_pixels)
    fitted_image = reduced_image(subtracted_ba, limits=(vmin, vmax), transpose=transpose, where=model.fitted_pixels,
                                 plus=model.model)

    rows = slice(max(middle - 2, 0), middle + 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        cut = np.nanmedian(subtracted_ba[rows] + model.model[rows], axis=0)
    model_row = np.asarray(model.model[middle], dtype=np.float64)
    top = float(np.nanmax(model_row)) if np.isfinite(model_row).any() else 1.0
    low = min(vmin, float(np.nanmin(model_row)) if np.isfinite(model_row).any() else 0.0) - 0.2 * abs(top)
    along = "y" if fitted_axis == "x" else "x"
    return BackgroundFigure(
        title=f"{title}{' — ' if title else ''}scattered light",
        fitted=fitted_image,
        model=model_image,
        residual=residual_image,
        residual_text=f"median {model.residual_median:+.2e}, robust σ {model.residual_sigma:.2e}",
        fitted_axis=fitted_axis,
        middle=middle,
        cut_a=np.arange(subtracted_ba.shape[1]),
        cut_data=cut,
        cut_used=np.asarray(model.fitted_pixels[middle], dtype=bool),
        cut_model=model_row,
        cut_label=f"data (median of {along} = {rows.start}…{rows.stop - 1})",
        cut_limits=(low, 3.0 * top + 1e-6),
        stem=stem,
    )


def render(figure: OrderLocationFigure | BackgroundFigure, path: Path | str, *,
           qc_rows: Sequence[QCRow] = ()) -> None:
    """Draw ``figure`` with the QC rows ``qc_rows`` (see :func:`soxs_mflat.qc_pages.draw`) and save it
    as a one-page PDF at ``path``; the point clouds are rasters of ``RASTER_DPI`` dots per inch."""
    from matplotlib.backends.backend_pdf import FigureCanvasPdf

    from soxs_mflat.qc_pages import draw

    canvas = FigureCanvasPdf(draw(figure, qc_rows=qc_rows))
    title = f"{figure.title} ({figure.stem})" if figure.stem else figure.title
    canvas.print_figure(path, format="pdf", dpi=RASTER_DPI,
                        metadata={"Title": title, "Creator": "soxs_mflat", "CreationDate": None})
