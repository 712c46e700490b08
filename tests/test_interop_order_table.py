"""soxspipe's own order-table reader recovers the edges of the tables soxs_mflat writes.

Runs only where soxspipe 0.19.0 is installed in ``.venv-soxspipe`` (``make interop`` builds it).
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from synthetic import synthetic_flat

from soxs_mflat.edges import detect_edges, fit_edges, order_location_table
from soxs_mflat.order_table import to_hdus
from soxs_mflat.products import write_hdus

SOXSPIPE_PYTHON = Path(__file__).parents[1] / ".venv-soxspipe" / "bin" / "python"

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(not SOXSPIPE_PYTHON.exists(), reason="soxspipe 0.19.0 not installed in .venv-soxspipe (run make interop)"),
]

READER = """
import json, logging, sys
from soxspipe.commonutils.toolkit import unpack_order_table
path, binx, biny, prebinned = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
_, pixels, meta = unpack_order_table(logging.getLogger(), path, binx=binx, biny=biny, prebinned=prebinned)
print(json.dumps({c: pixels[c].tolist() for c in pixels.columns}))
"""


def _soxspipe_read(path: Path, binx: int, biny: int, prebinned: bool) -> dict:
    output = subprocess.run([str(SOXSPIPE_PYTHON), "-c", READER, str(path), str(binx), str(biny), "1" if prebinned else "0"],
                            check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


@pytest.mark.parametrize("fitted_axis", ["x", "y"])
def test_soxspipe_reads_our_edges(tmp_path: Path, fitted_axis: str) -> None:
    flat = synthetic_flat(noise=0.005, centre_error=0.1)
    detections = detect_edges(flat.image, flat.centre_table, slice_length=60, slice_width=5, min_threshold_pct=20,
                              max_threshold_pct=50)
    fit = fit_edges(detections, order_deg=3, disp_axis_deg=3, clipping_sigma=5, clipping_iterations=2)
    table = order_location_table(flat.centre_table, fit, detections, shape_ba=flat.image.shape, binning_ab=(1, 1))
    table = replace(table, fitted_axis=fitted_axis)
    path = tmp_path / "ORDER_TAB.fits"
    write_hdus(to_hdus(table), path)
    read = _soxspipe_read(path, 1, 1, True)
    a, b = fitted_axis, ("y" if fitted_axis == "x" else "x")
    orders = np.asarray(read["order"], dtype=float)
    coords = np.asarray(read[f"{b}coord"], dtype=float)
    for kind, poly in (("edgeup", table.edge_up), ("edgelow", table.edge_low)):
        ours = poly(orders, coords)
        assert np.max(np.abs(np.asarray(read[f"{a}coord_{kind}"]) - ours)) < 1e-3
    index = np.searchsorted(flat.orders, orders.astype(int))
    true_low = flat.low[index, coords.astype(int)]
    assert np.median(np.abs(np.asarray(read[f"{a}coord_edgelow"]) - true_low)) < 0.05
