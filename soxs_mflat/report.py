"""The terminal report at the end of a run: QC verdicts, products, QC files and the log.

At default verbosity every line fits 100 columns: paths are shown relative to the output root and
the long QC comments are left out. ``verbose`` adds the comments, the per-order QC and the time each
step took. Verdicts are coloured only when ``colour`` is set (the CLI sets it when stdout is a
terminal), so a report sent to a file or a pipe holds no escape codes.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from soxs_mflat.qc import FAIL, PASS, QCRow

COLOURS = {PASS: "\033[32m", FAIL: "\033[1;31m"}
DIM, RESET = "\033[2m", "\033[0m"
WIDTH = 100
"""Columns every line fits at default verbosity (the ``Recipe Command`` line printed after the report excepted)."""


def _value(value: float) -> str:
    return f"{value:.6g}" if abs(value) < 1e7 else f"{value:.4e}"


def _range(row: QCRow) -> str:
    return "-" if row.limits is None else f"[{row.limits[0]:g}, {row.limits[1]:g}]"


def _verdict(row: QCRow, *, colour: bool) -> str:
    text = row.verdict
    if not colour:
        return text
    return f"{COLOURS.get(text, DIM)}{text}{RESET}"


def _columns(headers: Sequence[str], rows: Sequence[Sequence[str]], *, last_raw: Sequence[str] | None = None) -> list[str]:
    """Left-aligned columns two spaces apart; ``last_raw`` replaces the last cell of each row after padding
    (coloured text, whose escape codes must not count in the widths)."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  " + "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    lines = [line(headers)]
    for index, row in enumerate(rows):
        text = line(row)
        if last_raw is not None:
            text = text[: len(text) - len(row[-1])] + last_raw[index]
        lines.append(text)
    return lines


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def qc_lines(rows: Iterable[QCRow], *, verbose: bool, colour: bool) -> list[str]:
    """The QC table: metric, value, unit, range, verdict (and the comment when ``verbose``)."""
    frame_rows = sorted((r for r in rows if r.order == -1), key=lambda r: r.name)
    cells = [[r.name, _value(r.value), r.unit or "-", _range(r), r.verdict] for r in frame_rows]
    headers = ["metric", "value", "unit", "range", "verdict"]
    if verbose:
        cells = [[*c[:-1], r.comment, c[-1]] for c, r in zip(cells, frame_rows, strict=True)]
        headers.insert(4, "comment")
    return _columns(headers, cells, last_raw=[_verdict(r, colour=colour) for r in frame_rows])


def per_order_lines(rows: Iterable[QCRow]) -> list[str]:
    """Per-order QC (e.g. ``N SLICES``): ``order:value`` pairs of each metric, wrapped at :data:`WIDTH`."""
    by_name: dict[str, list[QCRow]] = {}
    for row in rows:
        if row.order >= 0:
            by_name.setdefault(row.name, []).append(row)
    lines = []
    for name, named in sorted(by_name.items()):
        pairs = " ".join(f"{r.order}:{_value(r.value)}" for r in sorted(named, key=lambda r: r.order))
        lines += textwrap.wrap(f"{name} by order: {pairs}", WIDTH, initial_indent="  ", subsequent_indent="    ",
                               break_on_hyphens=False)
    return lines


def product_lines(entries: Sequence[tuple[str, Path, str]], *, verbose: bool) -> list[str]:
    """The files written to one folder: label and file name (and what it is when ``verbose``).

    At default verbosity a row too wide for :data:`WIDTH` (a long SOF name) gives its file name a line of
    its own below the label, so the name stays whole and can be copied.
    """
    cells = [[label, path.name] + ([description] if verbose else []) for label, path, description in entries]
    lines = _columns(["product", "file"] + (["description"] if verbose else []), cells)
    if verbose or max(map(len, lines)) <= WIDTH:
        return lines
    return [line for label, path, _ in entries for line in (f"  {label}", f"    {path.name}")]


def format_report(
    *,
    arm: str,
    qc: Sequence[QCRow],
    products: Sequence[tuple[str, Path, str]],
    log_path: Path,
    root: Path,
    step_seconds: Mapping[str, float],
    verbose: bool = False,
    colour: bool = False,
) -> str:
    """The whole report. ``products`` holds (label, path, description) of every file written."""
    lines = [f"# soxs-mflat QC metrics ({arm})", *qc_lines(qc, verbose=verbose, colour=colour)]
    if verbose:
        lines += ["", "# Per-order QC", *per_order_lines(qc)]
        lines += ["", "# Time per step", *(f"  {step:<34}{seconds:7.2f} s" for step, seconds in step_seconds.items())]
    folders: dict[Path, list[tuple[str, Path, str]]] = {}
    for label, path, description in products:
        folders.setdefault(path.parent, []).append((label, path, description))
    for folder, entries in folders.items():
        lines += ["", f"# Written to {_relative(folder, root)}{os.sep}", *product_lines(entries, verbose=verbose)]
    lines += ["", f"Output root: {root}", f"Log: {_relative(log_path, root)}"]
    return "\n".join(lines)
