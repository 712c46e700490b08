"""The terminal report: QC metrics and the products table (spec §5.7)."""

from __future__ import annotations

from collections.abc import Sequence

from soxs_mflat.qc import QCRow
from soxs_mflat.recipe import RecipeResult


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)) + " |"
    return "\n".join([rule, line(headers), rule, *(line(r) for r in rows), rule])


def _value(row: QCRow) -> str:
    return f"{row.value:.4f}" if abs(row.value) < 1e6 else f"{row.value:.4e}"


def format_report(result: RecipeResult, *, verbose: bool = False) -> str:
    """Both tables of the final report, with the QC limits where the settings define them."""
    qc_rows = [
        [r.name, _value(r), r.unit, r.comment, "" if r.limits is None else f"[{r.limits[0]:g}, {r.limits[1]:g}]", r.flag]
        for r in sorted(result.qc, key=lambda r: r.name)
        if r.order == -1
    ]
    qc = _table(["qc_name", "qc_value", "qc_unit", "qc_comment", "qc_range", "qc_flag"], qc_rows)
    headers = ["product_label", "file_name", "file_type", "label", "product_desc"]
    if verbose:
        headers.insert(3, "file_path")
    product_rows = []
    for record in sorted(result.products, key=lambda r: (r.label, r.product_label)):
        row = [record.product_label, record.path.name, record.file_type, record.label, record.description]
        if verbose:
            row.insert(3, str(record.path.parent))
        product_rows.append(row)
    products = _table(headers, product_rows)
    folders = sorted({str(r.path.parent) for r in result.products})
    return (
        f"\n# SOXS-MFLAT QC METRICS ({result.arm})\n{qc}\n\n# SOXS-MFLAT RECIPE PRODUCTS & QC OUTPUTS\n{products}\n"
        f"\nWritten to: {', '.join(folders)}\nLog: {result.log_path}\n"
    )
