"""Order tables written and read with astropy, as soxspipe writes them.

The simulator's tables are what another pipeline would hand to the recipe, so they are written by
astropy rather than by the recipe's own writer; the scorer reads any table (ours or soxspipe's)
with astropy too, so neither depends on :mod:`soxs_mflat.fitsio`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.io import fits

from soxs_mflat.fitsio import Header
from soxs_mflat.order_table import OrderTable, from_tables, to_hdus


def table_header(header: fits.Header) -> Header:
    """An astropy header as the order table's header type."""
    return Header.from_text(header.tostring())


def write_order_table(table: OrderTable, path: Path, *, trace_binning: tuple[int, int] = (1, 1)) -> None:
    """Write ``table`` (spec §4.1) with astropy, overwriting ``path``."""
    primary, *extensions = to_hdus(table, trace_binning=trace_binning)
    hdus = [fits.PrimaryHDU(header=fits.Header.fromstring(primary.header.tostring()))]
    hdus += [fits.BinTableHDU(hdu.data, header=fits.Header.fromstring(hdu.header.tostring())) for hdu in extensions]
    fits.HDUList(hdus).writeto(path, overwrite=True)


def read_order_table(path: Path) -> OrderTable:
    """Read an order table with astropy (HDU 1 and HDU 2 by position, as soxspipe does)."""
    with fits.open(path) as hdulist:
        coefficients, meta = ({name: np.asarray(hdulist[i].data[name]) for name in hdulist[i].columns.names}
                              for i in (1, 2))
        return from_tables(table_header(hdulist[0].header), coefficients, meta)
