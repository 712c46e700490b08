"""Order tables written and read with astropy, as soxspipe writes them.

The simulator's tables are what another pipeline would hand to the recipe; the scorer reads any
table (ours or soxspipe's) with the recipe's own reader, :func:`soxs_mflat.frames.read_order_table`.
"""

from __future__ import annotations

from pathlib import Path

from astropy.io import fits

from soxs_mflat.frames import read_order_table as read_order_table
from soxs_mflat.order_table import OrderTable, to_hdus


def table_header(header: fits.Header) -> fits.Header:
    """A copy of ``header`` for an order table."""
    return header.copy()


def write_order_table(table: OrderTable, path: Path, *, trace_binning: tuple[int, int] = (1, 1)) -> None:
    """Write ``table`` (spec §4.1) with astropy, overwriting ``path``."""
    fits.HDUList(to_hdus(table, trace_binning=trace_binning)).writeto(path, overwrite=True)
