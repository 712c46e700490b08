"""The order table (``ORDER_TAB_<ARM>``): dataclass and FITS layout (spec §4).

This module converts between :class:`OrderTable` and astropy FITS HDUs or table columns; reading
and writing files is left to ``frames.py`` and ``products.py``.

Layout: HDU 0 header only; HDU 1 ``COEFFS``, the one-row coefficient table; HDU 2 ``ORDER_META``, one
row per order; HDU 3 ``ORDER_TRACES``. soxspipe reads HDU 1 and 2 by position, so the names are for
people and tools only. Coefficient columns follow the polynomial term order (i-major) because
soxspipe reads them by position too. Columns holding pixel positions or limits carry ``TUNIT = 'pix'``;
the coefficients and degrees carry no unit (coefficient ``ij`` is in pix**(1 - j)).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

import numpy as np
from astropy.io import fits

from soxs_mflat.geometry import Poly2D

COEFFICIENTS_EXTNAME, META_EXTNAME, TRACES_EXTNAME = "COEFFS", "ORDER_META", "ORDER_TRACES"
PIXEL_COLUMN = re.compile(r"[xy](min|max|coord|coord_centre|coord_edgeup|coord_edgelow)")
"""Columns in pixels: the per-order limits and the sampled traces."""
HEADER_ONLY_REMOVED = ("EXTNAME", "BUNIT")
"""Cards of a copied image header that do not describe a header-only primary HDU."""
TRACE_PREFIXES = {"centre": "cent_", "std": "std_", "edge_low": "edgelow_c", "edge_up": "edgeup_c"}
_DEGREE_SUFFIX = {"centre": "cent", "std": "std", "edge_low": "edgelow", "edge_up": "edgeup"}
DEGREE_CHECKED = ("centre", "edge_low", "edge_up")
"""Polynomials whose coefficient columns must match their degree columns; soxspipe ignores the ``std``
degrees (it evaluates ``std_`` with the centre degrees), so those are not held against a table."""


@dataclass(frozen=True)
class OrderTable:
    """Order centres (and, after mflat, edges) of one arm.

    ``fitted_axis`` is axis A (``"x"`` for dispersion-axis x). ``b_min``/``b_max`` are the per-order
    extents along axis B as stored in the table; ``a_min``/``a_max`` are carried through.
    Coefficients are in unbinned pixels.
    """

    fitted_axis: str
    orders: np.ndarray
    b_min: np.ndarray
    b_max: np.ndarray
    a_min: np.ndarray
    a_max: np.ndarray
    centre: Poly2D
    std: Poly2D | None = None
    edge_low: Poly2D | None = None
    edge_up: Poly2D | None = None
    extra_meta: dict[str, np.ndarray] = field(default_factory=dict)
    header: fits.Header = field(default_factory=fits.Header)

    @property
    def along_axis(self) -> str:
        """Axis B: the coordinate along the orders."""
        return "y" if self.fitted_axis == "x" else "x"

    @property
    def has_edges(self) -> bool:
        """True once order edges have been fitted."""
        return self.edge_low is not None and self.edge_up is not None

    def with_edges(self, edge_low: Poly2D, edge_up: Poly2D, **changes: object) -> OrderTable:
        """Copy with edge polynomials (and any other field) replaced."""
        return replace(self, edge_low=edge_low, edge_up=edge_up, **changes)

    def select_orders(self, keep: np.ndarray) -> OrderTable:
        """Copy keeping only the orders where the boolean ``keep`` is true."""
        keep = np.asarray(keep, dtype=bool)
        return replace(
            self,
            orders=self.orders[keep],
            b_min=self.b_min[keep],
            b_max=self.b_max[keep],
            a_min=self.a_min[keep],
            a_max=self.a_max[keep],
            extra_meta={k: v[keep] for k, v in self.extra_meta.items()},
        )


def _coefficient_columns(table: OrderTable) -> list[tuple[str, object]]:
    """(name, value) pairs of the coefficient row in the order soxspipe requires."""
    b = table.along_axis
    columns: list[tuple[str, object]] = []
    for kind in ("centre", "std"):
        poly = getattr(table, kind)
        if poly is None:
            continue
        if kind == "std":
            poly = _padded_like(poly, table.centre)
        suffix = _DEGREE_SUFFIX[kind]
        columns += [(f"degorder_{suffix}", poly.deg_order), (f"deg{b}_{suffix}", poly.deg_b)]
        columns += _terms(TRACE_PREFIXES[kind], poly)
    if table.has_edges:
        columns += [
            ("degorder_edgelow", table.edge_low.deg_order),
            ("degorder_edgeup", table.edge_up.deg_order),
            (f"deg{b}_edgelow", table.edge_low.deg_b),
            (f"deg{b}_edgeup", table.edge_up.deg_b),
        ]
        columns += _terms(TRACE_PREFIXES["edge_low"], table.edge_low)
        columns += _terms(TRACE_PREFIXES["edge_up"], table.edge_up)
    return columns


def _padded_like(poly: Poly2D, reference: Poly2D) -> Poly2D:
    """``poly`` zero-padded to ``reference``'s degrees where it is smaller.

    soxspipe evaluates the ``std_`` coefficients with the centre degrees, so a width polynomial with
    fewer terms would make its reader fail; padding with zeros keeps the same polynomial.
    """
    rows = max(poly.coeffs.shape[0], reference.coeffs.shape[0])
    cols = max(poly.coeffs.shape[1], reference.coeffs.shape[1])
    padded = np.zeros((rows, cols))
    padded[: poly.coeffs.shape[0], : poly.coeffs.shape[1]] = poly.coeffs
    return Poly2D(padded)


def _terms(prefix: str, poly: Poly2D) -> list[tuple[str, object]]:
    if poly.deg_order > 9 or poly.deg_b > 9:
        raise ValueError("order-table polynomial degrees must be at most 9")
    return [
        (f"{prefix}{i}{j}", float(poly.coeffs[i, j]))
        for i in range(poly.deg_order + 1)
        for j in range(poly.deg_b + 1)
    ]


def _read_poly(coefficients: dict[str, np.ndarray], kind: str, along_axis: str) -> Poly2D | None:
    """The polynomial of ``kind`` from its coefficient columns, or None if the table has none.

    Where the table has the degree columns of a :data:`DEGREE_CHECKED` kind (``degorder_<kind>``,
    ``deg<B>_<kind>``), they must be whole numbers and the coefficient columns exactly the terms they
    claim (a ValueError naming the missing or surplus columns otherwise): a table cut short must not
    be read as a lower-degree fit.
    """
    prefix = TRACE_PREFIXES[kind]
    pattern = re.compile(rf"^{prefix}(\d)(\d)$")
    terms = {}
    for name, values in coefficients.items():
        match = pattern.match(name)
        if match:
            terms[(int(match.group(1)), int(match.group(2)))] = float(values[0])
    claimed = _claimed_degrees(coefficients, kind, along_axis) if kind in DEGREE_CHECKED else None
    if claimed is not None:
        expected = {(i, j) for i in range(claimed[0] + 1) for j in range(claimed[1] + 1)}
        missing = sorted(expected - set(terms))
        surplus = sorted(set(terms) - expected)
        if missing or surplus:
            suffix = _DEGREE_SUFFIX[kind]
            claim = f"degorder_{suffix} = {claimed[0]} and deg{along_axis}_{suffix} = {claimed[1]}"
            problems = [f"lacks the column(s) {', '.join(f'{prefix}{i}{j}' for i, j in missing)}"] if missing else []
            problems += [f"has column(s) {', '.join(f'{prefix}{i}{j}' for i, j in surplus)} beyond them"] if surplus else []
            raise ValueError(f"{claim} claim {len(expected)} {prefix} coefficients, but the table {' and '.join(problems)}")
    if not terms:
        return None
    deg_order = max(i for i, _ in terms)
    deg_b = max(j for _, j in terms)
    coeffs = np.zeros((deg_order + 1, deg_b + 1))
    for (i, j), value in terms.items():
        coeffs[i, j] = value
    return Poly2D(coeffs)


def _claimed_degrees(coefficients: dict[str, np.ndarray], kind: str, along_axis: str) -> tuple[int, int] | None:
    """(order degree, axis-B degree) from the kind's degree columns; None when the table has neither."""
    suffix = _DEGREE_SUFFIX[kind]
    names = (f"degorder_{suffix}", f"deg{along_axis}_{suffix}")
    present = [name for name in names if name in coefficients]
    if not present:
        return None
    if len(present) == 1:
        missing = next(name for name in names if name not in coefficients)
        raise ValueError(f"the table has the column {present[0]} but lacks {missing}")
    degrees = []
    for name in names:
        value = np.asarray(coefficients[name]).ravel()[:1]
        number = float(value[0]) if value.size and value.dtype.kind in "biuf" else float("nan")
        if not (number.is_integer() and 0 <= number <= 9):
            raise ValueError(f"the column {name} is {value[0] if value.size else 'empty'}, not a degree from 0 to 9")
        degrees.append(int(number))
    return degrees[0], degrees[1]


def to_hdus(table: OrderTable, *, trace_binning: tuple[int, int] = (1, 1)) -> list[fits.PrimaryHDU | fits.BinTableHDU]:
    """Build the order-table HDUs (spec §4.1): one K (integer) or D (float) column per value.

    ``trace_binning`` is the (A, B) binning of the frame the metadata limits refer to; the
    ``ORDER_TRACES`` extension is sampled at every unbinned axis-B pixel. The primary HDU holds no
    data, so the ``EXTNAME``/``BUNIT`` of an image header it was copied from are left out.
    """
    a, b = table.fitted_axis, table.along_axis
    coefficients = [(name, np.array([value])) for name, value in _coefficient_columns(table)]
    order_values = table.orders.astype(np.float64) if table.has_edges else table.orders.astype(np.int64)
    limits = [(f"{b}min", table.b_min), (f"{b}max", table.b_max), (f"{a}min", table.a_min), (f"{a}max", table.a_max)]
    meta = [("order", order_values)] + [(name, np.asarray(values, dtype=np.float64))
                                        for name, values in [*limits, *table.extra_meta.items()]]
    traces = list(order_traces(table, trace_binning[1]).items())
    header = table.header.copy(strip=True)
    for keyword in HEADER_ONLY_REMOVED:
        header.remove(keyword, ignore_missing=True, remove_all=True)
    return [fits.PrimaryHDU(header=header), _table_hdu(coefficients, name=COEFFICIENTS_EXTNAME),
            _table_hdu(meta, name=META_EXTNAME), _table_hdu(traces, name=TRACES_EXTNAME)]


def _table_hdu(columns: list[tuple[str, np.ndarray]], *, name: str) -> fits.BinTableHDU:
    """A binary table of one int64 (K) or float64 (D) column per array, ``TUNIT = 'pix'`` on pixel columns.

    The rows are given to an empty HDU: ``BinTableHDU(data)`` would first import ``astropy.table``
    (~0.3 s, to check whether the data are a ``Table``), and building from ``Column`` objects is
    ~1.5x slower; the header is the one ``BinTableHDU.from_columns`` writes.
    """
    n_rows = len(columns[0][1]) if columns else 0
    dtype = np.dtype([(column, np.int64 if values.dtype.kind in "biu" else np.float64) for column, values in columns])
    rows = np.empty(n_rows, dtype=dtype)
    for column, values in columns:
        rows[column] = values
    hdu = fits.BinTableHDU(name=name)
    hdu.data = rows
    for column in hdu.columns:
        if PIXEL_COLUMN.fullmatch(column.name):
            column.unit = "pix"
    hdu.update_header()
    return hdu


def order_traces(table: OrderTable, b_bin: int) -> dict[str, np.ndarray]:
    """Traces sampled at every unbinned axis-B pixel of every order (spec §4.5)."""
    a, b = table.fitted_axis, table.along_axis
    coords, orders = [], []
    for order, low, high in zip(table.orders, table.b_min, table.b_max, strict=True):
        start = int(np.floor(low * b_bin))
        stop = int(np.ceil(high * b_bin))
        coords.append(np.arange(start, stop, dtype=np.int64))
        orders.append(np.full(stop - start, int(order), dtype=np.int64))
    coord = np.concatenate(coords) if coords else np.zeros(0, dtype=np.int64)
    order = np.concatenate(orders) if orders else np.zeros(0, dtype=np.int64)
    columns = {f"{b}coord": coord, "order": order, f"{a}coord_centre": table.centre(order, coord)}
    if table.has_edges:
        columns[f"{a}coord_edgeup"] = table.edge_up(order, coord)
        columns[f"{a}coord_edgelow"] = table.edge_low(order, coord)
    return columns


def from_tables(header: fits.Header, coefficients: dict[str, np.ndarray], meta: dict[str, np.ndarray]) -> OrderTable:
    """An order table from its primary header and the columns of HDU 1 (coefficients) and HDU 2 (metadata)."""
    fitted_axis = "x" if "degy_cent" in coefficients else "y"
    a, b = fitted_axis, ("y" if fitted_axis == "x" else "x")
    centre = _read_poly(coefficients, "centre", b)
    if centre is None:
        raise ValueError("order table has no cent_ coefficients")
    known = {"order", f"{b}min", f"{b}max", f"{a}min", f"{a}max"}
    n_orders = len(meta["order"])
    nan = np.full(n_orders, np.nan)
    return OrderTable(
        fitted_axis=fitted_axis,
        orders=np.round(np.asarray(meta["order"], dtype=np.float64)).astype(np.int64),
        b_min=np.asarray(meta[f"{b}min"], dtype=np.float64),
        b_max=np.asarray(meta[f"{b}max"], dtype=np.float64),
        a_min=np.asarray(meta[f"{a}min"], dtype=np.float64) if f"{a}min" in meta else nan,
        a_max=np.asarray(meta[f"{a}max"], dtype=np.float64) if f"{a}max" in meta else nan,
        centre=centre,
        std=_read_poly(coefficients, "std", b),
        edge_low=_read_poly(coefficients, "edge_low", b),
        edge_up=_read_poly(coefficients, "edge_up", b),
        extra_meta={name: np.asarray(values, dtype=np.float64) for name, values in meta.items() if name not in known},
        header=header,
    )
