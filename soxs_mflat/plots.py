"""QC figures. Functions here build and return matplotlib figures; the recipe saves them.

The non-interactive Agg backend is used so the recipe runs on headless machines.
"""

from __future__ import annotations

import warnings

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from soxs_mflat.background import BackgroundModel
from soxs_mflat.edges import EdgeDetections, EdgeFit
from soxs_mflat.order_table import OrderTable


def image_limits(image: np.ndarray, *, low: float = 1.0, high: float = 99.5) -> tuple[float, float]:
    """Display limits from percentiles of the finite pixels."""
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return 0.0, 1.0
    vmin, vmax = np.percentile(finite, [low, high])
    return float(vmin), float(max(vmax, vmin + 1e-6))


def new_figure(*, width: float = 11.0, height: float = 8.5) -> Figure:
    """A figure with constrained layout, at a size legible on screen and on A4."""
    return plt.figure(figsize=(width, height), layout="constrained")


def show_image(ax: object, image: np.ndarray, *, max_size: int = 1000, **options: object) -> object:
    """``imshow`` of ``image`` block-averaged to at most ``max_size`` pixels a side, in pixel coordinates.

    A QC page cannot show more pixels than that anyway; averaging first keeps the PDF small and fast.
    """
    factor = max(1, int(np.ceil(max(image.shape) / max_size)))
    rows, cols = image.shape
    if factor > 1:
        trimmed = image[: rows - rows % factor or rows, : cols - cols % factor or cols]
        shape = (trimmed.shape[0] // factor, factor, trimmed.shape[1] // factor, factor)
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            image = np.nanmean(trimmed.reshape(shape), axis=(1, 3))
        rows, cols = trimmed.shape
    extent = (-0.5, cols - 0.5, -0.5, rows - 0.5)
    return ax.imshow(image, extent=extent, origin="lower", **options)


def save_pdf(fig: Figure, path: object, *, dpi: int = 150) -> None:
    """Save a figure as PDF with its heavy artists (images, dense point clouds, fills) rasterised.

    Thousands of vector markers or a full-resolution image make a PDF slow to write and to open;
    rasterised at ``dpi`` they look the same at any sensible zoom. Axes, labels and lines stay vector.
    """
    for ax in fig.axes:
        for artist in [*ax.images, *ax.collections]:
            artist.set_rasterized(True)
        for line in ax.lines:
            if len(line.get_xdata()) > 500 and line.get_marker() not in (None, "None", ""):
                line.set_rasterized(True)
    fig.savefig(path, format="pdf", dpi=dpi)
    plt.close(fig)


def plot_order_locations(
    flat_ba: np.ndarray,
    detections: EdgeDetections,
    fit: EdgeFit,
    table: OrderTable,
    *,
    binning_ab: tuple[int, int] = (1, 1),
    fitted_axis: str = "x",
    title: str = "",
) -> Figure:
    """QC figure of the order-edge step (``<stem>_ORD_LOC.pdf``).

    Left: the flat in the frame's own orientation (x horizontal) with the measured lower/upper
    edges and the clipped points. Middle: the fitted edges of every order of ``table``, the area
    between them filled, one colour per order and its number. Right: fit residuals (frame px)
    against the dispersion-axis pixel and against the order, with the ``X RES`` QC values.
    """
    a_bin, b_bin = binning_ab
    n_b = flat_ba.shape[0]
    frame = flat_ba if fitted_axis == "x" else flat_ba.T

    def xy(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (a, b) if fitted_axis == "x" else (b, a)

    fig = new_figure()
    grid = fig.add_gridspec(2, 3, width_ratios=(1.0, 1.0, 1.25))
    ax_image = fig.add_subplot(grid[:, 0])
    ax_fit = fig.add_subplot(grid[:, 1], sharex=ax_image, sharey=ax_image)
    ax_res_b = fig.add_subplot(grid[0, 2])
    ax_res_order = fig.add_subplot(grid[1, 2], sharey=ax_res_b)

    vmin, vmax = image_limits(frame)
    stretch = PowerNorm(0.5, vmin=max(vmin, 0.0), vmax=vmax)
    show_image(ax_image, frame, cmap="gray", norm=stretch, aspect="auto")
    edge_styles = (
        ("lower", detections.low, detections.valid_low, fit.clipped_low, "tab:cyan"),
        ("upper", detections.up, detections.valid_up, fit.clipped_up, "tab:orange"),
    )
    handles = []
    for name, edge, valid, clipped, colour in edge_styles:
        used = valid & ~clipped
        ax_image.plot(*xy(edge[used], detections.b[used]), ".", ms=1.5, color=colour)
        handles.append(Line2D([], [], ls="", marker="o", ms=5, color=colour, label=f"{name} edge ({used.sum()})"))
    clipped_a = np.concatenate([detections.low[fit.clipped_low], detections.up[fit.clipped_up]])
    clipped_b = np.concatenate([detections.b[fit.clipped_low], detections.b[fit.clipped_up]])
    ax_image.plot(*xy(clipped_a, clipped_b), "x", ms=5, mew=1.5, color="red")
    handles.append(Line2D([], [], ls="", marker="x", ms=6, mew=1.5, color="red", label=f"clipped ({clipped_a.size})"))
    ax_image.set_title("measured edges")
    ax_image.legend(handles=handles, loc="upper right", fontsize="small", framealpha=0.85)

    b_grid = np.arange(n_b, dtype=np.float64)
    colours = plt.get_cmap("tab10")
    for k, order in enumerate(table.orders):
        low = table.edge_low.in_frame(order, b_grid, a_bin, b_bin)
        up = table.edge_up.in_frame(order, b_grid, a_bin, b_bin)
        colour = colours(k % 10)
        if fitted_axis == "x":
            ax_fit.fill_betweenx(b_grid, low, up, color=colour, alpha=0.6, lw=0)
        else:
            ax_fit.fill_between(b_grid, low, up, color=colour, alpha=0.6, lw=0)
        mid = n_b // 2
        ax_fit.text(
            *xy(0.5 * (low[mid] + up[mid]), b_grid[mid]),
            str(order),
            ha="center",
            va="center",
            fontsize="small",
            fontweight="bold",
            rotation=90 if fitted_axis == "x" else 0,
        )
    ax_fit.set_title(f"fitted edges (degrees {fit.deg_order} × {fit.deg_b})")
    ax_fit.set_xlim(-0.5, frame.shape[1] - 0.5)
    ax_fit.set_ylim(-0.5, frame.shape[0] - 0.5)
    for ax in (ax_image, ax_fit):
        ax.set_xlabel("x (px)")
    ax_image.set_ylabel("y (px)")
    ax_fit.tick_params(labelleft=False)

    b_label = "y" if fitted_axis == "x" else "x"
    residuals = np.concatenate([fit.residual_low[~fit.clipped_low], fit.residual_up[~fit.clipped_up]])
    residuals = residuals[np.isfinite(residuals)]
    limit = 1.2 * max(np.percentile(np.abs(residuals), 99.5), 0.05)
    for name, residual, clipped, colour in (
        ("lower", fit.residual_low, fit.clipped_low, "tab:cyan"),
        ("upper", fit.residual_up, fit.clipped_up, "tab:orange"),
    ):
        used = np.isfinite(residual) & ~clipped
        ax_res_b.plot(detections.b[used], residual[used], ".", ms=2, color=colour)
        ax_res_order.plot(detections.order[used] + (0.15 if name == "upper" else -0.15), residual[used], ".", ms=2, color=colour)
        ax_res_b.plot(detections.b[clipped], np.clip(residual[clipped], -limit, limit), "x", ms=4, color="red")
        ax_res_order.plot(detections.order[clipped], np.clip(residual[clipped], -limit, limit), "x", ms=4, color="red")
    ax_res_b.set_ylim(-limit, limit)
    ax_res_b.axhline(0.0, color="black", lw=0.8)
    ax_res_order.axhline(0.0, color="black", lw=0.8)
    ax_res_b.set_xlabel(f"{b_label} (px, along the orders)")
    ax_res_order.set_xlabel("order")
    ax_res_order.set_xticks(fit.orders_kept)
    ax_res_order.tick_params(axis="x", labelsize="small")
    for ax in (ax_res_b, ax_res_order):
        ax.set_ylabel(f"residual in {fitted_axis} (px)")
        ax.grid(alpha=0.3)
    ax_res_b.set_title(f"fit residuals (colours as left)\nX RES SD {fit.x_res_sd:.3f} px, X RES MAX {fit.x_res_max:.3f} px")
    dropped = f"; dropped orders: {', '.join(str(m) for m in fit.orders_dropped)}" if fit.orders_dropped.size else ""
    fig.suptitle(f"{title}{' — ' if title else ''}order locations ({table.orders.size} orders{dropped})")
    return fig




def plot_background(flat_ba: np.ndarray, model: BackgroundModel, *, fitted_axis: str = "x", title: str = "") -> Figure:
    """QC figure of the scattered-light step (``<stem>_BKGROUND.pdf``), in the frame's own orientation.

    Top: the pixels the model was fitted to, and the model (same colour scale). Bottom left: data −
    model on the fitted pixels (symmetric scale) with the residual statistics. Bottom right: a cut
    across the orders through the middle of the dispersion axis — data, model, fitted pixels.
    """
    flat_ba = np.asarray(flat_ba, dtype=np.float32)
    n_b = flat_ba.shape[0]
    middle = n_b // 2

    def frame(image: np.ndarray) -> np.ndarray:
        return image if fitted_axis == "x" else image.T

    fitted = np.where(model.fitted_pixels, flat_ba, np.nan)
    residual = np.where(model.fitted_pixels, flat_ba - model.model, np.nan)
    vmin, vmax = image_limits(model.model, low=0.5, high=99.5)
    vmin = min(vmin, 0.0)
    spread = 5.0 * model.residual_sigma if np.isfinite(model.residual_sigma) else 1.0
    spread = max(spread, 1e-6)
    along = "y" if fitted_axis == "x" else "x"
    across = fitted_axis

    fig = new_figure(width=12.0, height=9.0)
    axes = fig.subplots(2, 2)
    panels = (
        (axes[0, 0], frame(fitted), "data used for the fit (gap pixels)", "viridis", vmin, vmax),
        (axes[0, 1], frame(model.model), "scattered-light model", "viridis", vmin, vmax),
        (axes[1, 0], frame(residual), "data − model on the fitted pixels (±5 robust σ)", "RdBu_r", -spread, spread),
    )
    for ax, image, label, cmap, low, high in panels:
        shown = show_image(ax, image, aspect="auto", cmap=cmap, vmin=low, vmax=high, interpolation="nearest")
        ax.set_facecolor("0.85")
        ax.set_title(label)
        ax.set_xlabel("x (px)")
        ax.set_ylabel("y (px)")
        fig.colorbar(shown, ax=ax, shrink=0.9, label="normalised flux")
        if fitted_axis == "x":
            ax.axhline(middle, color="k", lw=0.6, ls=":")
        else:
            ax.axvline(middle, color="k", lw=0.6, ls=":")
    axes[1, 0].text(
        0.02,
        0.98,
        f"median {model.residual_median:+.2e}\nrobust σ {model.residual_sigma:.2e}",
        transform=axes[1, 0].transAxes,
        va="top",
        fontsize=9,
        bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"},
    )

    ax = axes[1, 1]
    a = np.arange(flat_ba.shape[1])
    rows = slice(max(middle - 2, 0), middle + 3)
    cut = np.nanmedian(flat_ba[rows], axis=0)
    used = model.fitted_pixels[middle]
    ax.plot(a, cut, color="0.6", lw=0.8, label=f"data (median of {along} = {rows.start}…{rows.stop - 1})")
    ax.plot(a[used], cut[used], ".", color="tab:blue", ms=3, label="fitted pixels")
    ax.plot(a, model.model[middle], color="tab:red", lw=1.4, label="model")
    top = float(np.nanmax(model.model[middle])) if np.isfinite(model.model[middle]).any() else 1.0
    ax.set_ylim(min(vmin, float(np.nanmin(model.model[middle]))) - 0.2 * abs(top), 3.0 * top + 1e-6)
    ax.set_xlabel(f"{across} (px, across the orders)")
    ax.set_ylabel("normalised flux")
    ax.set_title(f"cut across the orders at {along} = {middle} (orders run off the top)")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.suptitle(f"{title}{' — ' if title else ''}scattered light")
    return fig
