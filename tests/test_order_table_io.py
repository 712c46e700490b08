"""The order-table HDUs (built from structured arrays) must be what astropy's ``from_columns`` makes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from soxs_mflat.frames import read_order_table
from soxs_mflat.geometry import Poly2D
from soxs_mflat.order_table import OrderTable, to_hdus
from soxs_mflat.products import write_hdus


def _table(*, edges: bool) -> OrderTable:
    rng = np.random.default_rng(4)
    table = OrderTable("x", np.array([10, 11, 12]), np.array([0.0, 5.5, 10.0]), np.array([2000.0, 1990.2, 1980.0]),
                       np.array([100.0, 200.0, 300.0]), np.array([150.0, 250.0, 350.0]), Poly2D(rng.normal(size=(3, 4))),
                       Poly2D(rng.normal(size=(2, 2))), extra_meta={"maxThreshold": np.array([1.0, 2.0, 3.0])},
                       header=fits.Header([("OBJECT", "it's a flat"), ("EXTNAME", "FLUX"), ("BUNIT", "electron")]))
    if not edges:
        return table
    return table.with_edges(Poly2D(rng.normal(size=(3, 4))), Poly2D(rng.normal(size=(4, 3))))


def _reference(hdu: fits.BinTableHDU) -> fits.BinTableHDU:
    """The same table built by astropy, column by column."""
    columns = [fits.Column(name=column.name, format="K" if hdu.data[column.name].dtype.kind == "i" else "D",
                           unit=column.unit, array=hdu.data[column.name]) for column in hdu.columns]
    return fits.BinTableHDU.from_columns(columns, name=hdu.name or None)


@pytest.mark.parametrize("edges", [False, True])
@pytest.mark.parametrize("trace_binning", [(1, 1), (2, 2)])
def test_tables_match_astropy_card_for_card(tmp_path: Path, edges: bool, trace_binning: tuple[int, int]) -> None:
    path = write_hdus(to_hdus(_table(edges=edges), trace_binning=trace_binning), tmp_path / "table.fits")
    with fits.open(path, checksum=True) as hdulist:
        hdulist.verify("exception")
        assert hdulist[0].header["OBJECT"] == "it's a flat"
        assert hdulist[1].columns.formats[:2] == ["K", "K"]
        assert hdulist[2].columns.formats[0] == ("D" if edges else "K")
        assert [hdu.name for hdu in hdulist] == ["PRIMARY", "COEFFS", "ORDER_META", "ORDER_TRACES"]
        assert "EXTNAME" not in hdulist[0].header and "BUNIT" not in hdulist[0].header
        assert set(hdulist[2].columns.units) == {"pix", ""} and set(hdulist[3].columns.units) == {"pix", ""}
        assert [unit == "pix" for unit in hdulist[2].columns.units] == [name != "order" and name[1:] in ("min", "max")
                                                                       for name in hdulist[2].columns.names]
        assert [unit == "pix" for unit in hdulist[3].columns.units] == [name != "order" for name in hdulist[3].columns.names]
        assert not any(hdulist[1].columns.units)
        for hdu in hdulist[1:]:
            reference = _reference(hdu)
            written = [card.image for card in hdu.header.cards if card.keyword not in ("CHECKSUM", "DATASUM")]
            assert written == [card.image for card in reference.header.cards]
            assert fits.TableDataDiff(reference.data, hdu.data).identical


def test_round_trip(tmp_path: Path) -> None:
    table = _table(edges=True)
    back = read_order_table(write_hdus(to_hdus(table), tmp_path / "table.fits"))
    np.testing.assert_array_equal(back.orders, table.orders)
    np.testing.assert_array_equal(back.edge_up.coeffs, table.edge_up.coeffs)
    np.testing.assert_array_equal(back.extra_meta["maxThreshold"], table.extra_meta["maxThreshold"])
    assert back.header["OBJECT"] == "it's a flat"
