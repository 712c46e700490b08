"""Bad pixels of the master flat: dead, hot, low-sensitivity and partly illuminated order-edge pixels.

Every test compares a pixel with a local expectation of the flat, not with the whole frame: the blaze
and the slit illumination would swamp any global clip (which is why soxspipe's never fires).

The modules, in the order the search uses them:

* :mod:`.bands`: the pixels near the orders laid out as bands (one band column is one detector column
  over a block of rows), the frame read on them, and the search's share of orders per thread;
* :mod:`.block_statistics`: running levels, medians across columns and MAD scatter per block of rows;
* :mod:`.local_model`: the exact local expectation at scattered pixels (the candidates);
* :mod:`.flat_model`: the flat's expectation on the bands and its scatter beyond the ERRS noise;
* :mod:`.flat_tests`: the tests of the flat (dead, hot, low-sensitivity, partial edge);
* :mod:`.frame_hot`: hot pixels of dark, lamp-off and bias frames;
* :mod:`.thresholds`: the tests' limits and the false-alarm floor under a significance threshold;
* :mod:`.search`: :func:`find_bad_pixels`, which runs them on sets of orders in threads;
* :mod:`.result`: the reasons as bits, the mask, counts and QC.
"""

from soxs_mflat.badpixels.frame_hot import calibration_hot_pixels, hot_in_frame
from soxs_mflat.badpixels.result import DEAD, HOT, LOW_SENSITIVITY, PARTIAL_EDGE, BadPixelResult
from soxs_mflat.badpixels.search import find_bad_pixels

__all__ = [
    "DEAD",
    "HOT",
    "LOW_SENSITIVITY",
    "PARTIAL_EDGE",
    "BadPixelResult",
    "calibration_hot_pixels",
    "find_bad_pixels",
    "hot_in_frame",
]
