"""QC figures: descriptions built from real step outputs, and the PDF pages drawn from them."""

from __future__ import annotations

import pickle
import re
import zlib

import numpy as np
import pytest
from synthetic import synthetic_flat

from soxs_mflat import plots
from soxs_mflat.background import fit_scattered_light
from soxs_mflat.edges import detect_edges, fit_edges, order_location_table
from soxs_mflat.footprints import order_bounds
from soxs_mflat.pdfpage import Axes, Page, colormap, colour_image, nice_ticks, text_width, tick_label
from soxs_mflat.plots import (
    BackgroundFigure,
    OrderLocationFigure,
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
               background_figure(syn.image - model.model, model, fitted_axis=axis, title="synthetic")]
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


def pdf_objects(data: bytes) -> tuple[dict[int, bytes], list[bytes]]:
    """The objects of a PDF found through its cross-reference table, and its decompressed content streams."""
    xref = int(re.search(rb"startxref\n(\d+)\n%%EOF", data).group(1))
    assert data[xref:].startswith(b"xref\n0 ")
    count = int(data[xref:].split(b"\n")[1].split()[1])
    entries = data[xref:].split(b"\n")[3 : 2 + count]
    objects = {}
    for number, entry in enumerate(entries, start=1):
        offset = int(entry.split()[0])
        assert data[offset:].startswith(f"{number} 0 obj".encode())
        objects[number] = data[offset : data.index(b"endobj", offset)]
    streams = [zlib.decompress(body.split(b"stream\n", 1)[1].rsplit(b"\nendstream", 1)[0])
               for body in objects.values() if b"/FlateDecode" in body and b"/Subtype /Image" not in body]
    return objects, streams


def test_render_writes_valid_pdfs_with_every_point(figures: dict, tmp_path) -> None:
    """Every cross-reference offset points at its object, the image streams have the block-averaged
    size, and every measured edge point is drawn."""
    for axis in ("x", "y"):
        locations, background = figures[axis]
        for k, figure in enumerate((locations, background)):
            target = tmp_path / f"{axis}{k}.pdf"
            render(figure, target)
            data = target.read_bytes()
            assert data.startswith(b"%PDF-1.4") and data.endswith(b"%%EOF\n")
            objects, streams = pdf_objects(data)
            assert any(b"/Type /Catalog" in body for body in objects.values())
            content = streams[0].decode("latin-1")
            images = [body for body in objects.values() if b"/Subtype /Image" in body]
            rows, cols = figure.image.pixels.shape if k == 0 else figure.model.pixels.shape
            assert any(f"/Width {cols} /Height {rows}".encode() in body for body in images)
            if k == 0:
                n_points = 2 * (locations.measured_low.size + locations.measured_up.size)  # image + residual panels
                assert content.count(" re") >= n_points
                assert all(f"({order}) Tj" in content for order in locations.orders)
            else:
                assert "(scattered-light model) Tj" in content


def test_page_text_is_escaped_and_measured(tmp_path) -> None:
    page = Page.inches(4, 3)
    page.text(10, 10, "a (b) \\ c — σ − 5 ×", size=10)
    page.save(tmp_path / "text.pdf")
    _, streams = pdf_objects((tmp_path / "text.pdf").read_bytes())
    assert "(a \\(b\\) \\\\ c \\227 sigma  - 5 \\327) Tj" in streams[0].decode("latin-1")
    assert text_width("ii", 10) == pytest.approx(4.44) and text_width("MM", 10) == pytest.approx(16.66)


def test_ticks_are_round_and_labels_as_precise_as_their_spacing() -> None:
    np.testing.assert_allclose(nice_ticks(-0.5, 3999.5), [0, 1000, 2000, 3000])
    np.testing.assert_allclose(nice_ticks(-0.06, 0.06), [-0.05, -0.025, 0, 0.025, 0.05])
    assert nice_ticks(1.0, 1.0).tolist() == [1.0]
    assert [tick_label(v, 0.025) for v in (-0.05, 0.0, 0.025)] == ["-0.050", "0.000", "0.025"]
    assert tick_label(2000.0, 1000.0) == "2000" and tick_label(0.5, 0.5) == "0.5"


def test_colour_images_map_limits_to_the_ends_of_the_colormap() -> None:
    pixels = np.array([[0.0, 0.5, 1.0, np.nan, 7.0]])
    rgb = colour_image(pixels, vmin=0.0, vmax=1.0, cmap="viridis")
    table = colormap("viridis")
    assert rgb.shape == (1, 5, 3) and rgb.dtype == np.uint8
    assert (rgb[0, 0] == table[0]).all() and (rgb[0, 2] == table[-1]).all() and (rgb[0, 4] == table[-1]).all()
    assert (rgb[0, 3] == 217).all()
    assert tuple(colormap("gray")[128]) == (128, 128, 128)


def test_axes_map_data_to_the_box_and_skip_non_finite_points(tmp_path) -> None:
    page = Page.inches(4, 3)
    ax = Axes.on(page, (0.25, 0.25, 0.75, 0.75), (0.0, 10.0), (-1.0, 1.0))
    px, py = ax.to_page(np.array([0.0, 10.0]), np.array([-1.0, 1.0]))
    np.testing.assert_allclose(px, [72.0, 216.0])
    np.testing.assert_allclose(py, [54.0, 162.0])
    ax.markers(np.array([1.0, np.nan, 3.0]), np.array([0.0, 0.5, np.inf]), (1.0, 0.0, 0.0))
    ax.line(np.arange(6.0), np.array([0.0, 0.1, np.nan, 0.2, 0.3, 0.4]), (0.0, 0.0, 1.0))
    page.save(tmp_path / "axes.pdf")
    _, streams = pdf_objects((tmp_path / "axes.pdf").read_bytes())
    content = streams[0].decode("latin-1")
    assert content.count(" re f") == 1 and content.count(" re") == 3  # one marker, plus two clip boxes
    assert content.count(" m ") == 2 and content.count(" l") == 3  # the line breaks at the NaN


def test_a_figure_that_cannot_be_written_is_logged_not_fatal(figures: dict, tmp_path, caplog) -> None:
    """The recipe draws each figure into a temporary file; one it cannot write costs a warning, not the run."""
    from soxs_mflat.products import product_paths
    from soxs_mflat.recipe import MasterFlatRecipe
    from soxs_mflat.sof import InputSet

    recipe = MasterFlatRecipe(InputSet(source="test", files=(), sof=None))
    recipe._product_paths = product_paths(stem="good", root=tmp_path, instrument="soxs")
    recipe._plot("ORD_LOC", "", lambda: figures["x"][0])
    (tmp_path / "blocked").write_text("a file where the qc folder should go")
    recipe._product_paths = product_paths(stem="bad", root=tmp_path / "blocked", instrument="soxs")
    recipe._plot("BKGROUND", "", lambda: figures["x"][1])
    with caplog.at_level("WARNING", logger="soxs_mflat"):
        written = recipe._finish_plots()
    assert [plot.path.name for plot in written] == ["good_ORD_LOC.pdf"] and written[0].path.exists()
    assert "bad_BKGROUND.pdf was not written" in caplog.text
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "qc" / "soxs_mflat").iterdir())


def test_a_failed_run_stops_drawing_and_leaves_no_temporary_files(figures: dict, tmp_path) -> None:
    from soxs_mflat.products import product_paths
    from soxs_mflat.recipe import MasterFlatRecipe
    from soxs_mflat.sof import InputSet

    def broken() -> None:
        raise RuntimeError("no figure")

    recipe = MasterFlatRecipe(InputSet(source="test", files=(), sof=None))
    recipe._product_paths = product_paths(stem="run", root=tmp_path, instrument="soxs")
    recipe._plot("ORD_LOC", "", lambda: figures["x"][0])
    recipe._plot("BKGROUND", "", broken)
    recipe._discard_plots()
    assert not list(tmp_path.rglob("*.pdf*")) and recipe._plots == []
