"""The QC pages drawn with matplotlib from the figure descriptions of :mod:`soxs_mflat.plots`.

Only the object-oriented API is used (a ``Figure`` of its own, never pyplot), so a page can be drawn
on a worker thread and a host application's backend and settings are left alone. Images keep their
true aspect ratio; the point clouds of a panel are drawn, with its background and image, as one
opaque raster (tens of thousands of vector markers take seconds to write and to display), while
axes, text and the few markers that matter (clipped and off-scale points) stay vector.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.collections import PolyCollection
from matplotlib.colors import Normalize, PowerNorm
from matplotlib.figure import Figure
from matplotlib.image import AxesImage

from soxs_mflat.plots import BackgroundFigure, Image, OrderLocationFigure, Points
from soxs_mflat.qc import QCRow

LOWER, UPPER, CLIPPED = "tab:cyan", "tab:orange", "tab:red"
VERDICT_COLOURS = {"pass": "tab:green", "fail": "tab:red", "no range": "0.4"}
MISSING = "0.8"
"""Colour of image pixels without a value."""
RASTER_BELOW = 1.5
"""Artists of a panel below this z-order (its background, image and point clouds) make one raster."""
TEXT_SIZE = 7.5
"""Size (pt) of tick labels, legends and the QC table; titles are larger."""
Box = tuple[float, float, float, float]
"""An area of the page: left, bottom, width, height as fractions of the page."""


def draw(figure: OrderLocationFigure | BackgroundFigure, *, qc_rows: Sequence[QCRow] = ()) -> Figure:
    """The page of a figure description: its title, the product stem, the panels and, when ``qc_rows``
    are given, a summary of the verdicts by the title and a table of the values, acceptable ranges
    and verdicts (failures in red)."""
    rows = list(qc_rows)
    if isinstance(figure, OrderLocationFigure):
        page = Figure(figsize=(11.0, 8.5))
        table = _order_location_panels(page, figure, with_table=bool(rows))
    else:
        page = Figure(figsize=(12.0, 9.0))
        table = _background_panels(page, figure, with_table=bool(rows))
    page.text(0.5, 0.985, figure.title, size=13.0, weight="bold", ha="center", va="top")
    page.text(0.02, 0.95, figure.stem, size=9.0, color="0.3", va="top", family="monospace")
    if rows:
        failures = [row.name for row in rows if row.verdict == "fail"]
        listed = ", ".join(failures[:3]) + (", …" if len(failures) > 3 else "")
        summary = f"QC: {len(failures)} of {len(rows)} FAIL ({listed})" if failures else f"QC: no failure in {len(rows)} values"
        page.text(0.98, 0.95, summary, size=10.0, weight="bold", color=VERDICT_COLOURS["fail" if failures else "pass"],
                  ha="right", va="top")
        _qc_table(page, table, rows)
    return page


def _order_location_panels(page: Figure, figure: OrderLocationFigure, *, with_table: bool) -> Box:
    """Measured edges on the flat, fitted edges, residuals along the orders and by order; returns the
    box left for the QC table."""
    image = figure.image
    ax_image = _image_axes(page, (0.06, 0.06, 0.28, 0.81), image.extent, label="detector image")
    _show(ax_image, image, "gray", gamma=0.5, under_points=True)
    for points, colour, name in ((figure.measured_low, LOWER, "lower edge"), (figure.measured_up, UPPER, "upper edge")):
        ax_image.plot(points.x, points.y, ls="none", marker="s", ms=1.2, mew=0.0, color=colour,
                      label=f"{name} ({points.size})", zorder=RASTER_BELOW - 0.1)
    ax_image.plot(figure.clipped.x, figure.clipped.y, ls="none", marker="x", ms=4.0, mew=0.9, color=CLIPPED,
                  label=f"clipped ({figure.clipped.size})")
    ax_image.set(xlim=image.extent[:2], ylim=image.extent[2:])
    _labels(ax_image, "measured edges", "x (px)", "y (px)", size=10.0)
    legend = page.legend(handles=ax_image.get_lines(), loc="upper left", bbox_to_anchor=(0.05, 0.935), ncol=3,
                         fontsize=TEXT_SIZE, frameon=False)
    for handle in legend.legend_handles:
        handle.set_markersize(5.0)

    ax_fit = _image_axes(page, (0.355, 0.06, 0.28, 0.81), image.extent, label="fitted edges")
    b, vertical = figure.outline_b, figure.fitted_axis == "x"
    across = np.concatenate([figure.outline_low, figure.outline_up[:, ::-1]], axis=1)
    along = np.broadcast_to(np.concatenate([b, b[::-1]]), across.shape)
    outlines = np.stack([across, along] if vertical else [along, across], axis=-1)
    palette = colormaps["tab10"].colors  # as RGB: "C0"…"C9" would be looked up in the settings at each use
    ax_fit.add_collection(PolyCollection(outlines, facecolors=[palette[k % 10] for k in range(len(outlines))], alpha=0.6,
                                         linewidths=0))
    centres = 0.5 * (figure.outline_low[:, b.size // 2] + figure.outline_up[:, b.size // 2])
    for order, centre in zip(figure.orders, centres, strict=True):
        ax_fit.text(*((centre, b[b.size // 2]) if vertical else (b[b.size // 2], centre)), str(order), size=7.0,
                    weight="bold", ha="center", va="center", rotation=90 if vertical else 0)
    ax_fit.set(xlim=image.extent[:2], ylim=image.extent[2:], facecolor="white")
    ax_fit.tick_params(labelleft=False)
    _labels(ax_fit, figure.fit_title, "x (px)", "", size=10.0)

    (b_bottom, b_height), (order_bottom, order_height) = ((0.63, 0.25), (0.35, 0.19)) if with_table else (
        (0.55, 0.33), (0.07, 0.38))
    ax_b = page.add_axes((0.7, b_bottom, 0.28, b_height), label="residuals along the orders")
    by_b = [(figure.residual_low_b, LOWER), (figure.residual_up_b, UPPER), (figure.clipped_b, CLIPPED)]
    beyond = _residuals(ax_b, by_b, figure.residual_limit)
    ax_b.set_xlim(_span(np.concatenate([points.x for points, _ in by_b])))
    note = f"\n{beyond} points beyond ±{figure.residual_limit:.3g} px: ▲▼ on the edge" if beyond else ""
    residual_label = f"residual in {figure.fitted_axis} (px)"
    _labels(ax_b, figure.residual_title + note, f"{'y' if vertical else 'x'} (px, along the orders)", residual_label)

    ax_order = page.add_axes((0.7, order_bottom, 0.28, order_height), label="residuals by order")
    _residuals(ax_order, [(figure.residual_low_order, LOWER), (figure.residual_up_order, UPPER),
                          (figure.clipped_order, CLIPPED)], figure.residual_limit)
    orders = np.asarray(figure.orders_kept, dtype=np.float64)
    if orders.size:
        ax_order.set_xlim(orders.min() - 0.7, orders.max() + 0.7)
        ax_order.set_xticks(orders, [str(int(m)) for m in orders], size=TEXT_SIZE - 1.0 if orders.size > 16 else TEXT_SIZE)
    _labels(ax_order, "", "order", residual_label)
    return (0.68, 0.01, 0.31, 0.27)


def _background_panels(page: Figure, figure: BackgroundFigure, *, with_table: bool) -> Box:
    """Fitted data, model and residual images over a cut across the orders; returns the box left for
    the QC table."""
    panels = (
        (figure.fitted, "data used for the fit\n(pixels between the orders)", "viridis"),
        (figure.model, "scattered-light model\n(colour scale shared with the left panel)", "viridis"),
        (figure.residual, f"data − model on the fitted pixels (±5 robust σ)\n{figure.residual_text}", "RdBu_r"),
    )
    for k, (image, title, cmap) in enumerate(panels):
        ax = _image_axes(page, (0.05 + 0.32 * k, 0.47, 0.22, 0.41), image.extent, label=title.split("\n")[0])
        shown = _show(ax, image, cmap)
        (ax.axhline if figure.fitted_axis == "x" else ax.axvline)(figure.middle, color="black", lw=0.6, ls=":")
        _labels(ax, title, "x (px)", "" if k else "y (px)")
        if k:  # the model's colour bar serves the fitted data too
            _colour_bar(page, ax, shown, label="normalised flux")

    ax = page.add_axes((0.06, 0.07, 0.55 if with_table else 0.9, 0.3), label="cut across the orders")
    used = figure.cut_used
    ax.plot(figure.cut_a, figure.cut_data, color="0.6", lw=0.8, label=figure.cut_label)
    ax.plot(figure.cut_a[used], figure.cut_data[used], ls="none", marker="s", ms=2.0, mew=0.0, color="tab:blue",
            label="fitted pixels")
    ax.plot(figure.cut_a, figure.cut_model, color="tab:red", lw=1.4, label="model")
    ax.set(xlim=_span(figure.cut_a, margin=0.0), ylim=figure.cut_limits)
    ax.grid(True, lw=0.4, color="0.85")
    ax.legend(fontsize=TEXT_SIZE, loc="upper right", markerscale=2.0)
    across, along = figure.fitted_axis, "y" if figure.fitted_axis == "x" else "x"
    _labels(ax, f"cut across the orders at {along} = {figure.middle} (dotted line above; orders run off the top)",
            f"{across} (px, across the orders)", "normalised flux")
    return (0.67, 0.03, 0.31, 0.36)


def _image_axes(page: Figure, cell: Box, extent: Sequence[float], *, label: str) -> Axes:
    """Axes at the top middle of ``cell`` with the true aspect ratio of an image of ``extent`` (a
    pixel as wide as it is high), a few ticks and the missing-pixel colour as background."""
    page_width, page_height = page.get_size_inches()
    left, bottom, width, height = cell
    data_width, data_height = extent[1] - extent[0], extent[3] - extent[2]
    inches_per_pixel = min(width * page_width / data_width, height * page_height / data_height)
    box_width, box_height = data_width * inches_per_pixel / page_width, data_height * inches_per_pixel / page_height
    ax = page.add_axes((left + 0.5 * (width - box_width), bottom + height - box_height, box_width, box_height),
                       label=label)
    ax.set(facecolor=MISSING, aspect="equal")
    ax.locator_params(axis="x", nbins=4 if box_width * page_width > 1.5 else 2)  # tick labels must not touch
    ax.locator_params(axis="y", nbins=4)
    return ax


def _show(ax: Axes, image: Image, cmap: str, *, gamma: float = 1.0, under_points: bool = False) -> AxesImage:
    """``image`` on ``ax`` at its extent, opaque (missing pixels in the missing colour): embedded in the
    PDF as it is, or, ``under_points``, as part of the raster of the panel's point clouds."""
    norm = Normalize(image.vmin, image.vmax) if gamma == 1.0 else PowerNorm(gamma, image.vmin, image.vmax)
    if under_points:
        ax.set_rasterization_zorder(RASTER_BELOW)
    return ax.imshow(image.pixels, extent=image.extent, origin="lower", cmap=colormaps[cmap].with_extremes(bad=MISSING),
                     norm=norm, interpolation="antialiased" if under_points else "none", zorder=0)


def _colour_bar(page: Figure, ax: Axes, shown: AxesImage, *, label: str) -> None:
    """The colour scale of the image ``shown`` right of ``ax``, drawn as a one-column image (matplotlib's
    colour bar writes 256 separate patches to a PDF, a tenth of a second each time)."""
    left, bottom, width, height = ax.get_position().bounds
    bar = page.add_axes((left + width + 0.006, bottom, 0.01, height), label=f"{ax.get_label()} colour scale")
    norm = shown.norm
    bar.imshow(np.linspace(norm.vmin, norm.vmax, 256)[:, None], cmap=shown.get_cmap(), norm=norm, origin="lower",
               extent=(0.0, 1.0, norm.vmin, norm.vmax), aspect="auto", interpolation="none")
    bar.set_xticks([])
    bar.yaxis.tick_right()
    bar.yaxis.set_label_position("right")
    bar.set_ylabel(label, size=7.0)
    bar.tick_params(labelsize=TEXT_SIZE - 0.5)


def _labels(ax: Axes, title: str, xlabel: str, ylabel: str, *, size: float = 9.0) -> None:
    """Title and axis labels; the title sits just above the axes (matplotlib's search for room above
    the tick labels is a large share of a page's drawing time)."""
    ax.set_title(title, size=size, y=1.0)
    ax.set_xlabel(xlabel, size=8.0)
    ax.set_ylabel(ylabel, size=8.0)
    ax.tick_params(labelsize=TEXT_SIZE)


def _residuals(ax: Axes, series: Sequence[tuple[Points, str]], limit: float) -> int:
    """Residual (points, colour) series within ±``limit``, the last one (the clipped points) as crosses;
    points beyond are drawn as triangles on the edge they lie past. Returns how many lie beyond."""
    edge_x, edge_y, edge_colours = [], [], []
    for k, (points, colour) in enumerate(series):
        beyond = np.abs(points.y) > limit
        crosses = k == len(series) - 1
        ax.plot(points.x[~beyond], points.y[~beyond], ls="none", marker="x" if crosses else "s",
                ms=3.5 if crosses else 2.0, mew=0.8 if crosses else 0.0, color=colour,
                zorder=3 if crosses else RASTER_BELOW - 0.1)
        edge_x.append(points.x[beyond])
        edge_y.append(np.copysign(limit, points.y[beyond]))
        edge_colours += [colour] * int(beyond.sum())
    x, y, colours = np.concatenate(edge_x), np.concatenate(edge_y), np.array(edge_colours, dtype=object)
    for side, triangle in ((y > 0, "^"), (y < 0, "v")):
        ax.scatter(x[side], y[side], s=22.0, c=list(colours[side]), marker=triangle, edgecolors="black",
                   linewidths=0.4, clip_on=False, zorder=3)
    ax.set_ylim(-limit, limit)
    ax.axhline(0.0, color="black", lw=0.6)
    ax.grid(True, lw=0.4, color="0.85")
    ax.locator_params(nbins=4)
    ax.set_rasterization_zorder(RASTER_BELOW)
    return int(x.size)


def _span(values: np.ndarray, *, margin: float = 0.02) -> tuple[float, float]:
    """Limits of the finite ``values`` widened by ``margin`` of their range."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return 0.0, 1.0
    low, high = float(finite.min()), float(finite.max())
    pad = margin * (high - low) or 0.5
    return low - pad, high + pad


def _qc_table(page: Figure, box: Box, rows: Sequence[QCRow]) -> None:
    """The QC rows in ``box``: name, value and unit, acceptable range (bounds inclusive) and verdict,
    failing rows in bold red. Rows that do not fit are counted; failures are listed first then."""
    left, bottom, width, height = box
    line = 1.3 * TEXT_SIZE / 72.0 / page.get_size_inches()[1]
    capacity = max(int(height / line) - 2, 1)
    shown = list(rows) if len(rows) <= capacity else sorted(rows, key=lambda row: row.verdict != "fail")[: capacity - 1]
    columns = ((0.0, "left"), (0.62, "right"), (0.65, "left"), (1.0, "right"))
    lines = [(("QC", "value", "range (incl.)", "verdict"), "black", "bold")]
    for row in shown:
        failing = row.verdict == "fail"
        limits = "—" if row.limits is None else f"[{row.limits[0]:g}, {row.limits[1]:g}]"
        cells = (row.name, f"{row.value:.5g} {row.unit}".strip(), limits, "FAIL" if failing else row.verdict)
        lines.append((cells, VERDICT_COLOURS["fail"] if failing else "black", "bold" if failing else "normal"))
    for k, (cells, colour, weight) in enumerate(lines):
        for (x, align), text in zip(columns, cells, strict=True):
            verdict_colour = VERDICT_COLOURS.get(text.lower(), colour) if k and x == 1.0 else colour
            page.text(left + x * width, bottom + height - k * line, text, size=TEXT_SIZE, ha=align, va="top",
                      color=verdict_colour, weight=weight)
    if len(shown) < len(rows):
        failing = sum(row.verdict == "fail" for row in rows) - sum(row.verdict == "fail" for row in shown)
        page.text(left, bottom + height - len(lines) * line, f"… and {len(rows) - len(shown)} more ({failing} failing)",
                  size=TEXT_SIZE, va="top", style="italic")
