"""QC figures: descriptions built from real step outputs, and the pages matplotlib draws from them."""

from __future__ import annotations

import pickle
import re
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from matplotlib.colors import same_color
from matplotlib.text import Text
from synthetic import synthetic_flat

from soxs_mflat import plots
from soxs_mflat.background import fit_scattered_light
from soxs_mflat.edges import detect_edges, fit_edges, order_location_table
from soxs_mflat.footprints import order_bounds
from soxs_mflat.plots import (
    BackgroundFigure,
    OrderLocationFigure,
    Points,
    background_figure,
    block_average,
    order_location_figure,
    render,
)
from soxs_mflat.qc import QCRow
from soxs_mflat.qc_pages import VERDICT_COLOURS, draw

STEM = "20251012T111444_VIS_1X1_FAST_MFLAT_QTH_0_9X11_15_0S_XSHOOTER"


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
        axis: [order_location_figure(syn.image, detections, fit, table, fitted_axis=axis, title="VIS order edges",
                                     stem=STEM),
               background_figure(syn.image - model.model, model, fitted_axis=axis, title="VIS", stem=STEM)]
        for axis in ("x", "y")
    } | {"shape": syn.image.shape, "orders": syn.orders}


def texts(page: object) -> list[Text]:
    """Every text artist of a drawn page."""
    return [artist for artist in page.findobj(Text) if artist.get_text()]


def axes_named(page: object, label: str) -> object:
    """The axes of ``page`` labelled ``label``."""
    return next(ax for ax in page.axes if ax.get_label() == label)


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
        assert locations.title == f"VIS order edges — {len(figures['orders'])} orders"
        assert locations.stem == background.stem == STEM
        assert len(pickle.dumps(locations)) < 2_000_000


def test_block_average_keeps_pages_small() -> None:
    image = np.arange(4000 * 2000, dtype=np.float32).reshape(4000, 2000)
    image[:3, :3] = np.nan
    pixels, extent = block_average(image, max_side=800)
    assert pixels.shape == (800, 400) and extent == (-0.5, 1999.5, -0.5, 3999.5)
    assert np.isfinite(pixels).all() and np.nanmin(image[:5, :5]) < pixels[0, 0] < np.nanmax(image[:5, :5])
    assert pixels[100, 100] == pytest.approx(image[500:505, 500:505].mean())


def test_block_average_by_bands_equals_the_whole_image_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(6)
    image = rng.normal(size=(1703, 950)).astype(np.float32)
    image[rng.random(image.shape) < 0.01] = np.nan
    where = rng.random(image.shape) < 0.7
    plus = rng.normal(size=image.shape).astype(np.float32)
    whole, extent = block_average(np.where(where, image, np.float32(np.nan)) + plus, max_side=400)
    monkeypatch.setattr(plots, "BAND_PIXELS", 5000)
    banded, banded_extent = block_average(image, max_side=400, where=where, plus=plus)
    np.testing.assert_array_equal(banded, whole)
    assert banded_extent == extent == (-0.5, 950 - 0.5, -0.5, 1700 - 0.5)
    transposed, transposed_extent = block_average(image, max_side=400, where=where, plus=plus, transpose=True)
    np.testing.assert_array_equal(transposed, whole.T)
    assert transposed_extent == (-0.5, 1700 - 0.5, -0.5, 950 - 0.5)


def pdf_objects(data: bytes) -> dict[int, bytes]:
    """The objects of a PDF found through its cross-reference table (each offset must point at its object)."""
    xref = int(re.search(rb"startxref\n(\d+)\n%%EOF", data).group(1))
    assert data[xref:].startswith(b"xref\n0 ")
    count = int(data[xref:].split(b"\n")[1].split()[1])
    entries = data[xref:].split(b"\n")[3 : 2 + count]
    objects = {}
    for number, entry in enumerate(entries, start=1):
        offset, _, kind = entry.split()
        if kind == b"n":
            assert data[int(offset):].startswith(f"{number} 0 obj".encode())
            objects[number] = data[int(offset) : data.index(b"endobj", int(offset))]
    return objects


def test_render_writes_valid_one_page_pdfs(figures: dict, tmp_path) -> None:
    """A valid PDF of one page, titled with the product stem; the scattered-light images are embedded
    at their block-averaged size and the point clouds of the order-location page as rasters."""
    for axis in ("x",):
        for k, figure in enumerate(figures[axis]):
            target = tmp_path / f"{axis}{k}.pdf"
            render(figure, target, qc_rows=[QCRow("X RES SD", 0.01, "pixels", "", limits=(0.0, 0.37))])
            data = target.read_bytes()
            assert data.startswith(b"%PDF-1.") and data.rstrip().endswith(b"%%EOF")
            objects = pdf_objects(data)
            assert any(b"/Type /Catalog" in body for body in objects.values())
            assert [re.search(rb"/Count (\d+)", body).group(1) for body in objects.values()
                    if b"/Type /Pages" in body] == [b"1"]
            assert b"/Title (\xfe\xff" in data and STEM.encode("utf-16-be") in data  # document title, in UTF-16
            images = [body for body in objects.values() if b"/Subtype /Image" in body]
            if k == 1:
                rows, cols = figure.model.pixels.shape
                assert sum(f"/Width {cols} /Height {rows}".encode() in body for body in images) == 3
            else:
                assert images and len(data) < 2_000_000


def test_the_title_names_the_arm_and_the_product_stem(figures: dict) -> None:
    for figure in figures["x"]:
        lines = [text.get_text() for text in texts(draw(figure))]
        assert figure.title in lines and figure.title.startswith("VIS") and STEM in lines


def test_images_are_drawn_at_their_true_aspect_ratio(figures: dict) -> None:
    for axis in ("x", "y"):
        locations, background = figures[axis]
        residual = "data − model on the fitted pixels (±5 robust σ)"
        for figure, labels in ((locations, ("detector image", "fitted edges")),
                               (background, ("data used for the fit", "scattered-light model", residual))):
            page = draw(figure)
            width_in, height_in = page.get_size_inches()
            image = figure.image if figure is locations else figure.model
            left, right, bottom, top = image.extent
            for label in labels:
                ax = axes_named(page, label)
                box = ax.get_position()
                assert box.width * width_in / (box.height * height_in) == pytest.approx((right - left) / (top - bottom))
                assert ax.get_xlim() == pytest.approx((left, right)) and ax.get_ylim() == pytest.approx((bottom, top))


def test_off_scale_residuals_are_counted_and_drawn_on_the_edge(figures: dict) -> None:
    figure = figures["x"][0]
    limit = figure.residual_limit
    wild = figure.residual_up_b.y.copy()
    wild[:7] = 4.0 * limit
    wild[7:12] = -3.0 * limit
    figure = replace(figure, residual_up_b=Points(figure.residual_up_b.x, wild))
    expected = sum(int(np.count_nonzero(np.abs(points.y) > limit))
                   for points in (figure.residual_low_b, figure.residual_up_b, figure.clipped_b))
    assert expected >= 12
    page = draw(figure)
    ax = axes_named(page, "residuals along the orders")
    assert f"{expected} points beyond ±{limit:.3g} px" in ax.get_title()
    edge = np.concatenate([collection.get_offsets()[:, 1] for collection in ax.collections])
    assert edge.size == expected and np.allclose(np.abs(edge), limit)
    assert np.count_nonzero(edge > 0) >= 7 and np.count_nonzero(edge < 0) >= 5
    assert ax.get_ylim() == pytest.approx((-limit, limit))


def test_the_qc_table_shows_limits_and_verdicts_failures_in_red(figures: dict) -> None:
    rows = [QCRow("ORDEXP90", 38108.5, "electrons", "", limits=(10000.0, 150000.0)),
            QCRow("X RES SD", 0.5, "pixels", "", limits=(0.0, 0.37)), QCRow("COLDPIX NUM", 3913.0, "", "")]
    for figure in figures["x"]:
        page = draw(figure, qc_rows=rows)
        by_text = {text.get_text(): text for text in texts(page)}
        assert "QC: 1 of 3 FAIL (X RES SD)" in by_text and "[0, 0.37]" in by_text and "[10000, 150000]" in by_text
        assert same_color(by_text["FAIL"].get_color(), VERDICT_COLOURS["fail"])
        assert same_color(by_text["X RES SD"].get_color(), VERDICT_COLOURS["fail"])
        assert same_color(by_text["pass"].get_color(), VERDICT_COLOURS["pass"]) and "no range" in by_text
        assert "0.5 pixels" in by_text and "38108 electrons" in by_text


def test_a_long_qc_list_keeps_its_failures_and_counts_the_rest(figures: dict) -> None:
    rows = [QCRow(f"N SLICES {k}", 700.0 + k, "", "", limits=(100.0, 10000.0)) for k in range(40)]
    rows.append(QCRow("COLDPIX FRAC", 0.2, "", "", limits=(0.0, 0.01)))
    lines = [text.get_text() for text in texts(draw(figures["x"][0], qc_rows=rows))]
    shown = [line for line in lines if line.startswith("N SLICES")]
    assert "COLDPIX FRAC" in lines and "QC: 1 of 41 FAIL (COLDPIX FRAC)" in lines
    assert 5 < len(shown) < 40 and f"… and {40 - len(shown)} more (0 failing)" in lines


def test_rendering_on_a_worker_thread_leaves_pyplot_and_the_backend_alone(figures: dict, tmp_path) -> None:
    """A host application keeps its matplotlib backend: render never imports pyplot or picks a backend."""
    pickled = tmp_path / "figure.pkl"
    pickled.write_bytes(pickle.dumps(figures["x"][1]))
    script = (
        "import pickle, sys, threading, matplotlib\n"
        "from soxs_mflat.plots import render\n"
        "backend = matplotlib.rcParams._get('backend')\n"
        f"figure = pickle.loads(open({str(pickled)!r}, 'rb').read())\n"
        f"worker = threading.Thread(target=render, args=(figure, {str(tmp_path / 'page.pdf')!r}))\n"
        "worker.start(); worker.join()\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
        "assert matplotlib.rcParams._get('backend') == backend\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    assert (tmp_path / "page.pdf").read_bytes().startswith(b"%PDF")
