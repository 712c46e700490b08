"""QC figures in two halves: what a figure shows, and drawing it.

The recipe reduces each figure to a small picklable description (block-averaged images, point
lists, titles) with numpy alone. :class:`PlotProcess` hands the descriptions to a child Python
process that imports matplotlib (non-interactive, PDF only) as soon as it starts and draws each
figure while the recipe carries on, so the ~0.3 s matplotlib import and most of the drawing happen
on the other core. ``python -m soxs_mflat.plots`` runs that child; :func:`render` draws one
description in the current process.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import queue
import subprocess
import sys
import tempfile
import threading
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO

import bottleneck as bn
import numpy as np

MAX_IMAGE_SIDE = 800
"""Largest side (px) of an image shown on a QC page; larger images are block-averaged first."""
MAX_TRACE_POINTS = 300
"""Samples along each order of a filled order outline."""


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
    orders_kept: np.ndarray
    residual_title: str


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


def image_limits(image: np.ndarray, *, low: float = 1.0, high: float = 99.5) -> tuple[float, float]:
    """Display limits from percentiles of the finite pixels."""
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return 0.0, 1.0
    vmin, vmax = np.percentile(finite, [low, high])
    return float(vmin), float(max(vmax, vmin + 1e-6))


def block_average(image: np.ndarray, *, max_side: int = MAX_IMAGE_SIDE) -> tuple[np.ndarray, tuple[float, ...]]:
    """``image`` averaged in square blocks to at most ``max_side`` pixels a side, and its extent.

    A QC page cannot show more pixels than that; averaging first keeps the PDF small and fast. NaNs
    are skipped (a block's value is the mean of its rows' means, close enough for display).
    """
    factor = max(1, int(np.ceil(max(image.shape) / max_side)))
    rows, cols = image.shape
    image = np.asarray(image, dtype=np.float32)
    if factor > 1:
        image = image[: rows - rows % factor or rows, : cols - cols % factor or cols]
        rows, cols = image.shape
        along_rows = bn.nanmean(image.reshape(rows, cols // factor, factor), axis=2)
        image = bn.nanmean(along_rows.reshape(rows // factor, factor, cols // factor), axis=1)
    return image, (-0.5, cols - 0.5, -0.5, rows - 0.5)


def reduced_image(image: np.ndarray, *, limits: tuple[float, float] | None = None) -> Image:
    """An :class:`Image` of ``image`` with percentile display limits unless ``limits`` are given."""
    pixels, extent = block_average(image)
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
) -> OrderLocationFigure:
    """Describe the order-edge QC page from the flat, the edge detections, the fit and the order table.

    Left: the flat with the measured lower/upper edges and the clipped points. Middle: the fitted
    edges of every order, the area between them filled. Right: fit residuals (frame px) against the
    dispersion-axis pixel and against the order, with the ``X RES`` QC values.
    """
    a_bin, b_bin = binning_ab
    n_b = flat_ba.shape[0]
    frame = flat_ba if fitted_axis == "x" else flat_ba.T

    def xy(a: np.ndarray, b: np.ndarray) -> Points:
        return Points(a, b) if fitted_axis == "x" else Points(b, a)

    image = reduced_image(frame)
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
    clipped_residual = np.clip(np.concatenate([fit.residual_low[fit.clipped_low], fit.residual_up[fit.clipped_up]]),
                               -limit, limit)
    dropped = f"; dropped orders: {', '.join(str(m) for m in fit.orders_dropped)}" if fit.orders_dropped.size else ""
    return OrderLocationFigure(
        title=f"{title}{' — ' if title else ''}order locations ({orders.size} orders{dropped})",
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
        residual_title=(f"fit residuals (colours as left)\nX RES SD {fit.x_res_sd:.3f} px, "
                        f"X RES MAX {fit.x_res_max:.3f} px"),
    )


def background_figure(flat_ba: np.ndarray, model: object, *, fitted_axis: str = "x", title: str = "") -> BackgroundFigure:
    """Describe the scattered-light QC page, in the frame's own orientation.

    Top: the pixels the model was fitted to, and the model (same colour scale). Bottom left: data −
    model on the fitted pixels (symmetric scale) with the residual statistics. Bottom right: a cut
    across the orders through the middle of the dispersion axis — data, model, fitted pixels.
    """
    n_b = flat_ba.shape[0]
    middle = n_b // 2

    def frame(image: np.ndarray) -> np.ndarray:
        return image if fitted_axis == "x" else image.T

    pixels, extent = block_average(frame(model.model))
    vmin, vmax = image_limits(pixels, low=0.5, high=99.5)
    vmin = min(vmin, 0.0)
    model_image = Image(pixels, extent, vmin, vmax)
    spread = 5.0 * model.residual_sigma if np.isfinite(model.residual_sigma) else 1.0
    spread = max(spread, 1e-6)
    fitted = np.where(model.fitted_pixels, flat_ba, np.float32(np.nan))
    fitted_image = reduced_image(frame(fitted), limits=(vmin, vmax))
    fitted -= model.model
    residual_image = reduced_image(frame(fitted), limits=(-spread, spread))
    del fitted

    rows = slice(max(middle - 2, 0), middle + 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        cut = np.nanmedian(flat_ba[rows], axis=0)
    model_row = np.asarray(model.model[middle], dtype=np.float64)
    top = float(np.nanmax(model_row)) if np.isfinite(model_row).any() else 1.0
    low = min(vmin, float(np.nanmin(model_row)) if np.isfinite(model_row).any() else 0.0) - 0.2 * abs(top)
    along = "y" if fitted_axis == "x" else "x"
    return BackgroundFigure(
        title=f"{title}{' — ' if title else ''}scattered light",
        fitted=fitted_image,
        model=model_image,
        residual=residual_image,
        residual_text=f"median {model.residual_median:+.2e}\nrobust σ {model.residual_sigma:.2e}",
        fitted_axis=fitted_axis,
        middle=middle,
        cut_a=np.arange(flat_ba.shape[1]),
        cut_data=cut,
        cut_used=np.asarray(model.fitted_pixels[middle], dtype=bool),
        cut_model=model_row,
        cut_label=f"data (median of {along} = {rows.start}…{rows.stop - 1})",
        cut_limits=(low, 3.0 * top + 1e-6),
    )


# ----------------------------------------------------------------------------------- drawing
def render(figure: OrderLocationFigure | BackgroundFigure, path: Path | str) -> None:
    """Draw a figure description and save it as PDF at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    if isinstance(figure, OrderLocationFigure):
        fig = Figure(figsize=(11.0, 8.5))
        _draw_order_locations(fig, figure)
    else:
        fig = Figure(figsize=(12.0, 9.0))
        _draw_background(fig, figure)
    for ax in fig.axes:
        for line in ax.lines:
            if len(line.get_xdata()) > 500 and line.get_marker() not in (None, "None", ""):
                line.set_rasterized(True)
    fig.savefig(path, format="pdf", dpi=150)


def _show(ax: object, image: Image, **options: object) -> object:
    return ax.imshow(image.pixels, extent=image.extent, origin="lower", aspect="auto", vmin=image.vmin,
                     vmax=image.vmax, **options)


def _draw_order_locations(fig: object, figure: OrderLocationFigure) -> None:
    from matplotlib import colormaps
    from matplotlib.colors import PowerNorm
    from matplotlib.lines import Line2D

    grid = fig.add_gridspec(2, 3, width_ratios=(1.0, 1.0, 1.25), left=0.06, right=0.98, bottom=0.07, top=0.88,
                            wspace=0.3, hspace=0.35)
    ax_image = fig.add_subplot(grid[:, 0])
    ax_fit = fig.add_subplot(grid[:, 1], sharex=ax_image, sharey=ax_image)
    ax_res_b = fig.add_subplot(grid[0, 2])
    ax_res_order = fig.add_subplot(grid[1, 2], sharey=ax_res_b)

    image = figure.image
    ax_image.imshow(image.pixels, extent=image.extent, origin="lower", aspect="auto", cmap="gray",
                    norm=PowerNorm(0.5, vmin=image.vmin, vmax=image.vmax))
    handles = []
    for name, points, colour in (("lower", figure.measured_low, "tab:cyan"), ("upper", figure.measured_up, "tab:orange")):
        ax_image.plot(points.x, points.y, ".", ms=1.5, color=colour)
        handles.append(Line2D([], [], ls="", marker="o", ms=5, color=colour, label=f"{name} edge ({points.size})"))
    ax_image.plot(figure.clipped.x, figure.clipped.y, "x", ms=5, mew=1.5, color="red")
    handles.append(Line2D([], [], ls="", marker="x", ms=6, mew=1.5, color="red", label=f"clipped ({figure.clipped.size})"))
    ax_image.set_title("measured edges")
    ax_image.legend(handles=handles, loc="upper right", fontsize="small", framealpha=0.85)

    colours = colormaps["tab10"]
    b = figure.outline_b
    mid = b.size // 2
    for k, order in enumerate(figure.orders):
        low, up = figure.outline_low[k], figure.outline_up[k]
        centre = 0.5 * (low[mid] + up[mid])
        if figure.fitted_axis == "x":
            ax_fit.fill_betweenx(b, low, up, color=colours(k % 10), alpha=0.6, lw=0)
            ax_fit.text(centre, b[mid], str(order), ha="center", va="center", fontsize="small", fontweight="bold",
                        rotation=90)
        else:
            ax_fit.fill_between(b, low, up, color=colours(k % 10), alpha=0.6, lw=0)
            ax_fit.text(b[mid], centre, str(order), ha="center", va="center", fontsize="small", fontweight="bold")
    ax_fit.set_title(figure.fit_title)
    ax_fit.set_xlim(image.extent[0], image.extent[1])
    ax_fit.set_ylim(image.extent[2], image.extent[3])
    for ax in (ax_image, ax_fit):
        ax.set_xlabel("x (px)")
    ax_image.set_ylabel("y (px)")
    ax_fit.tick_params(labelleft=False)

    for by_b, by_order, colour in ((figure.residual_low_b, figure.residual_low_order, "tab:cyan"),
                                   (figure.residual_up_b, figure.residual_up_order, "tab:orange")):
        ax_res_b.plot(by_b.x, by_b.y, ".", ms=2, color=colour)
        ax_res_order.plot(by_order.x, by_order.y, ".", ms=2, color=colour)
    ax_res_b.plot(figure.clipped_b.x, figure.clipped_b.y, "x", ms=4, color="red")
    ax_res_order.plot(figure.clipped_order.x, figure.clipped_order.y, "x", ms=4, color="red")
    ax_res_b.set_ylim(-figure.residual_limit, figure.residual_limit)
    for ax in (ax_res_b, ax_res_order):
        ax.axhline(0.0, color="black", lw=0.8)
        ax.set_ylabel(f"residual in {figure.fitted_axis} (px)")
        ax.grid(alpha=0.3)
    b_label = "y" if figure.fitted_axis == "x" else "x"
    ax_res_b.set_xlabel(f"{b_label} (px, along the orders)")
    ax_res_order.set_xlabel("order")
    ax_res_order.set_xticks(figure.orders_kept)
    ax_res_order.tick_params(axis="x", labelsize="small")
    ax_res_b.set_title(figure.residual_title)
    fig.suptitle(figure.title)


def _draw_background(fig: object, figure: BackgroundFigure) -> None:
    axes = fig.subplots(2, 2, gridspec_kw={"left": 0.07, "right": 0.97, "bottom": 0.07, "top": 0.91,
                                           "wspace": 0.3, "hspace": 0.3})
    panels = (
        (axes[0, 0], figure.fitted, "data used for the fit (gap pixels)", "viridis"),
        (axes[0, 1], figure.model, "scattered-light model", "viridis"),
        (axes[1, 0], figure.residual, "data − model on the fitted pixels (±5 robust σ)", "RdBu_r"),
    )
    for ax, image, label, cmap in panels:
        shown = _show(ax, image, cmap=cmap, interpolation="nearest")
        ax.set_facecolor("0.85")
        ax.set_title(label)
        ax.set_xlabel("x (px)")
        ax.set_ylabel("y (px)")
        fig.colorbar(shown, ax=ax, shrink=0.9, label="normalised flux")
        if figure.fitted_axis == "x":
            ax.axhline(figure.middle, color="k", lw=0.6, ls=":")
        else:
            ax.axvline(figure.middle, color="k", lw=0.6, ls=":")
    axes[1, 0].text(0.02, 0.98, figure.residual_text, transform=axes[1, 0].transAxes, va="top", fontsize=9,
                    bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"})

    ax = axes[1, 1]
    used = figure.cut_used
    ax.plot(figure.cut_a, figure.cut_data, color="0.6", lw=0.8, label=figure.cut_label)
    ax.plot(figure.cut_a[used], figure.cut_data[used], ".", color="tab:blue", ms=3, label="fitted pixels")
    ax.plot(figure.cut_a, figure.cut_model, color="tab:red", lw=1.4, label="model")
    ax.set_ylim(*figure.cut_limits)
    across = figure.fitted_axis
    along = "y" if across == "x" else "x"
    ax.set_xlabel(f"{across} (px, across the orders)")
    ax.set_ylabel("normalised flux")
    ax.set_title(f"cut across the orders at {along} = {figure.middle} (orders run off the top)")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.suptitle(figure.title)


# ----------------------------------------------------------------------------------- the child process
class PlotProcess:
    """Draw figures in a child process while the caller goes on.

    :meth:`submit` queues a description and the file to write and returns at once (a feeder thread
    passes it to the child, which reads only between figures); :meth:`finish` waits for every
    figure and returns, per submitted file, ``None`` if it was written or the error message. If the
    child cannot be started the figures are drawn in this process at :meth:`finish`.
    """

    def __init__(self) -> None:
        self._jobs: list[tuple[object, Path]] = []
        self._errors = tempfile.TemporaryFile()
        self._outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._feeder: threading.Thread | None = None
        try:
            self._child: subprocess.Popen | None = subprocess.Popen(
                [sys.executable, "-m", "soxs_mflat.plots"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._errors,
                env={**os.environ, "MPLBACKEND": "Agg", "MALLOC_MMAP_THRESHOLD_": str(4 << 20)},
            )
        except OSError:
            self._child = None
        else:
            self._feeder = threading.Thread(target=self._feed, args=(self._child.stdin,), daemon=True)
            self._feeder.start()

    def _feed(self, stream: IO[bytes]) -> None:
        """Write queued jobs to the child until the end marker (or until the child is gone)."""
        try:
            while (message := self._outbox.get()) is not None:
                stream.write(message)
                stream.flush()
        except OSError:
            pass
        with contextlib.suppress(OSError):
            stream.close()

    def submit(self, figure: OrderLocationFigure | BackgroundFigure, path: Path) -> None:
        """Queue ``figure`` to be drawn into ``path``."""
        self._jobs.append((figure, path))
        if self._child is not None:
            self._outbox.put(pickle.dumps((figure, str(path)), protocol=pickle.HIGHEST_PROTOCOL))

    def finish(self) -> list[str | None]:
        """Wait for every queued figure; per job, ``None`` if written or why it was not."""
        results: list[str | None] = []
        if self._child is not None:
            self._outbox.put(None)
            self._feeder.join()
            lines = self._child.stdout.read().decode("utf-8", "replace").splitlines()
            self._child.wait()
            self._errors.seek(0)
            crash = self._errors.read().decode("utf-8", "replace").strip().splitlines()
            for i in range(len(self._jobs)):
                line = lines[i] if i < len(lines) else f"error the plotting process stopped: {crash[-1:] or ['?']}"
                results.append(None if line == "ok" else line.removeprefix("error "))
            self._child.stdout.close()
            self._child = None
        else:
            for figure, path in self._jobs:
                try:
                    render(figure, path)
                    results.append(None)
                except Exception as error:
                    results.append(f"{type(error).__name__}: {error}")
        self._errors.close()
        self._jobs = []
        return results

    def close(self) -> None:
        """Stop the child without waiting for its work (after a failed run); nothing once finished."""
        if self._child is not None:
            if self._child.poll() is None:
                self._child.kill()
                self._child.wait()
            self._outbox.put(None)
            self._feeder.join()
            self._child.stdout.close()
            self._child = None
        self._errors.close()


def _serve(requests: IO[bytes], replies: IO[str]) -> None:
    """Child side of :class:`PlotProcess`: draw each ``(figure, path)`` read from ``requests``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.backends.backend_pdf  # imported now, while the parent works
    import matplotlib.figure

    while True:
        try:
            figure, path = pickle.load(requests)
        except EOFError:
            break
        try:
            render(figure, path)
            replies.write("ok\n")
        except Exception as error:
            replies.write(f"error {type(error).__name__}: {' '.join(str(error).split())}\n")
        replies.flush()


if __name__ == "__main__":
    from soxs_mflat import plots

    plots._serve(sys.stdin.buffer, sys.stdout)
