"""QC figures: descriptions built from real step outputs, drawn in this process and in the plot process."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from synthetic import synthetic_flat

from soxs_mflat.background import fit_scattered_light
from soxs_mflat.edges import detect_edges, fit_edges, order_location_table
from soxs_mflat.footprints import order_bounds
from soxs_mflat.plots import (
    BackgroundFigure,
    OrderLocationFigure,
    PlotProcess,
    background_figure,
    block_average,
    order_location_figure,
    render,
)


@pytest.fixture(scope="module")
def figures() -> dict[str, list]:
    """Both figure descriptions of a synthetic flat, in both frame orientations."""
    syn = synthetic_flat(noise=0.01, scattered=0.02, seed=18)
    detections = detect_edges(syn.image, syn.centre_table, slice_length=50, slice_width=5, min_threshold_pct=20,
                              max_threshold_pct=50)
    fit = fit_edges(detections, order_deg=3, disp_axis_deg=3, clipping_sigma=5, clipping_iterations=2)
    table = order_location_table(syn.centre_table, fit, detections, shape_ba=syn.image.shape, binning_ab=(1, 1))
    model = fit_scattered_light(syn.image, order_bounds(table, syn.image.shape, (1, 1)))
    return {
        axis: [order_location_figure(syn.image, detections, fit, table, fitted_axis=axis, title="synthetic"),
               background_figure(syn.image, model, fitted_axis=axis, title="synthetic")]
        for axis in ("x", "y")
    } | {"shape": syn.image.shape, "orders": syn.orders}


def test_descriptions_are_small_and_in_frame_orientation(figures: dict) -> None:
    n_b, n_a = figures["shape"]
    for axis, expected in (("x", (n_b, n_a)), ("y", (n_a, n_b))):
        locations, background = figures[axis]
        assert isinstance(locations, OrderLocationFigure) and isinstance(background, BackgroundFigure)
        assert locations.image.pixels.shape == expected
        assert background.model.pixels.shape == background.residual.pixels.shape == expected
        assert list(locations.orders) == list(figures["orders"])
        assert locations.outline_low.shape == (len(figures["orders"]), locations.outline_b.size)
        assert np.all(locations.outline_up > locations.outline_low)
        assert locations.measured_low.size > 100 and locations.residual_limit > 0
        assert len(pickle.dumps(locations)) < 2_000_000


def test_block_average_keeps_pages_small() -> None:
    image = np.arange(4000 * 2000, dtype=np.float32).reshape(4000, 2000)
    image[:3, :3] = np.nan
    pixels, extent = block_average(image, max_side=800)
    assert pixels.shape == (800, 400) and extent == (-0.5, 1999.5, -0.5, 3999.5)
    assert np.isfinite(pixels).all() and np.nanmin(image[:5, :5]) < pixels[0, 0] < np.nanmax(image[:5, :5])
    assert pixels[100, 100] == pytest.approx(image[500:505, 500:505].mean())


def test_render_in_process_writes_pdfs(figures: dict, tmp_path) -> None:
    for axis in ("x", "y"):
        for k, figure in enumerate(figures[axis]):
            target = tmp_path / f"{axis}{k}.pdf"
            render(figure, target)
            assert target.read_bytes().startswith(b"%PDF") and target.stat().st_size > 10_000


def test_plot_process_draws_in_a_child_and_reports_failures(figures: dict, tmp_path) -> None:
    plotter = PlotProcess()
    good = [tmp_path / "locations.pdf", tmp_path / "background.pdf"]
    plotter.submit(figures["x"][0], good[0])
    plotter.submit(figures["x"][1], good[1])
    plotter.submit(figures["y"][0], tmp_path / "missing-folder" / "locations.pdf")
    results = plotter.finish()
    assert results[:2] == [None, None]
    assert all(p.read_bytes().startswith(b"%PDF") for p in good)
    assert results[2] is not None and "missing-folder" in results[2]


def test_plot_process_stops_cleanly(figures: dict, tmp_path) -> None:
    """A run that fails drops its figures at once; a child that dies is reported per figure, not raised."""
    plotter = PlotProcess()
    plotter.submit(figures["x"][0], tmp_path / "never.pdf")
    plotter.close()
    crashed = PlotProcess()
    crashed.submit(figures["x"][1], tmp_path / "lost.pdf")
    crashed._child.kill()
    results = crashed.finish()
    assert len(results) == 1 and "stopped" in results[0] and not (tmp_path / "lost.pdf").exists()
