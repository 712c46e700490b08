"""Order-edge detection and global edge fits (spec §5.8 step 6) — the mflat ``ORDER_TAB`` content.

* :mod:`.slices` — sub-pixel (flux-sum) measurement of both edges on stacks of 1-D slice profiles;
* :mod:`.detection` — cutting the flat into cross-dispersion slices along every order and measuring them;
* :mod:`.fit` — one global polynomial A(order, B) per edge, with clipping and a degree fallback for
  fits that fail numerically;
* :mod:`.table` — the order-location table written as the product.

Everything works in BA orientation (see :mod:`soxs_mflat.footprints`): rows along B, columns along
A, frame (possibly binned) pixels; polynomials are in unbinned pixels (:mod:`soxs_mflat.geometry`).
"""

from soxs_mflat.edges.detection import EdgeDetections, detect_edges
from soxs_mflat.edges.fit import EdgeFit, SingleEdgeFit, detection_scatter, fit_edge, fit_edges
from soxs_mflat.edges.slices import SliceEdges, SliceFlag, measure_slice_edges
from soxs_mflat.edges.table import order_location_table

__all__ = [
    "EdgeDetections",
    "EdgeFit",
    "SingleEdgeFit",
    "SliceEdges",
    "SliceFlag",
    "detect_edges",
    "detection_scatter",
    "fit_edge",
    "fit_edges",
    "measure_slice_edges",
    "order_location_table",
]
