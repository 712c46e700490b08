"""Order footprints computed in per-order column windows equal their whole-frame definitions."""

from __future__ import annotations

import numpy as np
import pytest

from soxs_mflat.footprints import OrderBounds, inside_orders, order_labels, order_window
from soxs_mflat.stacking import centre_band_mask


def _bounds(seed: int, n_b: int = 300, n_a: int = 200) -> OrderBounds:
    """Curved, overlapping-when-grown orders; the first runs off the left edge, the last off the right."""
    rng = np.random.default_rng(seed)
    b = np.arange(n_b)
    centres = np.array([-5.0, 40.0, 80.5, 121.0, 160.0, 203.0])[:, None] + 1e-4 * (b - n_b / 2) ** 2 * rng.uniform(0.5, 1.5)
    half = rng.uniform(8.0, 14.0, (centres.shape[0], 1))
    valid = np.ones(centres.shape, dtype=bool)
    valid[2, :40] = False
    valid[4, :] = False
    return OrderBounds(np.arange(10, 16), centres - half, centres, centres + half, valid)


@pytest.mark.parametrize("grow", [0.0, 3.0, -2.0, 25.0])
def test_order_labels_match_the_whole_frame_definition(grow: float) -> None:
    bounds = _bounds(1)
    shape = (300, 200)
    expected = np.zeros(shape, dtype=np.int16)
    a = np.arange(shape[1])[None, :]
    for k in range(bounds.orders.size):
        inside = (a >= (bounds.low[k] - grow)[:, None]) & (a <= (bounds.up[k] + grow)[:, None]) & bounds.valid[k][:, None]
        expected[inside] = k + 1
    np.testing.assert_array_equal(order_labels(bounds, shape, grow=grow), expected)
    assert order_window(bounds, 4, shape[1]) == slice(0, 0)


def test_centre_band_matches_the_whole_frame_definition() -> None:
    bounds = _bounds(2)
    shape = (300, 200)
    expected = np.zeros(shape, dtype=bool)
    a = np.arange(shape[1])[None, :]
    start = np.floor(bounds.centre).astype(int) - 4
    for k in range(bounds.orders.size):
        expected |= (a >= start[k][:, None]) & (a < (start[k] + 8)[:, None]) & bounds.valid[k][:, None]
    np.testing.assert_array_equal(centre_band_mask(shape, bounds.centre, bounds.valid, 4), expected)


@pytest.mark.parametrize("grow", [0.0, 3.0, -2.0, 25.0])
def test_inside_orders_is_where_there_is_a_label(grow: float) -> None:
    """The running-sum mask equals the label image's footprint (non-finite bounds are never valid, as
    :func:`order_bounds` makes them)."""
    bounds = _bounds(3)
    bounds.low[1, 100:110] = np.nan
    bounds.valid[1, 100:110] = False
    shape = (300, 200)
    np.testing.assert_array_equal(inside_orders(bounds, shape, grow=grow), order_labels(bounds, shape, grow=grow) > 0)


def test_tiled_copies_equal_plain_ones() -> None:
    """Tile by tile, also across tile edges and for transposed views and a change of type."""
    from soxs_mflat.footprints import TILE, contiguous, copy_tiled

    image = np.arange((TILE + 37) * (2 * TILE + 5), dtype=np.uint16).reshape(TILE + 37, 2 * TILE + 5)
    target = np.empty(image.T.shape, dtype=np.uint16)
    copy_tiled(target, image.T, casting="safe")
    np.testing.assert_array_equal(target, image.T)
    converted = contiguous(image.T, ">f4")
    assert converted.flags.c_contiguous and converted.dtype == np.dtype(">f4")
    np.testing.assert_array_equal(converted, image.T.astype(np.float32))
    assert contiguous(image) is image
