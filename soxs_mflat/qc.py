"""QC metrics: names, units, comments and the pass/fail rule of spec §8."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class QCRow:
    """One QC metric."""

    name: str
    value: float
    unit: str
    comment: str
    to_header: bool = True
    limits: tuple[float, float] | None = None
    order: int = -1
    """Echelle order the metric refers to; -1 for metrics of the whole frame."""

    @property
    def passed(self) -> bool:
        """soxspipe's rule: a value fails when ≤ min or ≥ max (the limits themselves fail)."""
        if self.limits is None or not np.isfinite(self.value):
            return True
        low, high = self.limits
        return low < self.value < high

    @property
    def flag(self) -> str:
        """``pass`` or ``fail``."""
        return "pass" if self.passed else "fail"


COMMENTS = {
    "ORDEXP10": ("electrons", "[e-] 10th percentile inter-order flux"),
    "ORDEXP50": ("electrons", "[e-] 50th percentile inter-order flux"),
    "ORDEXP90": ("electrons", "[e-] 90th percentile inter-order flux"),
    "X RES MIN": ("pixels", "[px] Minimum residual in order edge fit along x-axis"),
    "X RES MAX": ("pixels", "[px] Maximum residual in order edge fit along x-axis"),
    "X RES SD": ("pixels", "[px] Std-dev of residual order edge fit along x-axis"),
    "N LOW SENS": ("pixels", "Number of low-sensitivity pixels found in master flat"),
    "N ORDER EDGE": ("pixels", "Number of partly illuminated order-edge pixels masked in master flat"),
    "COLDPIX NUM": ("", "Number of cold pixels"),
    "COLDPIX FRAC": ("", "Fraction of cold pixels"),
    "INNER ORDER PIX MEAN": ("", "Mean inner-order pixel value"),
    "INNER ORDER PIX SUM": ("", "Sum of all inner-order pixel values"),
    "DETECTOR TEMP": ("", "temp of detector"),
    "CPATH TEMP": ("celsius", "[C] temp of common path"),
    "N SLICES": ("", "Cross-dispersion slices used in the order edge fit"),
}


def qc_row(name: str, value: float, *, limits: tuple[float, float] | None = None, to_header: bool = True,
           unit: str | None = None, order: int = -1) -> QCRow:
    """A QC row with the standard unit and comment of ``name``."""
    default_unit, comment = COMMENTS[name]
    return QCRow(name, float(value), default_unit if unit is None else unit, comment, to_header, limits, order)


def failed(rows: Iterable[QCRow]) -> list[QCRow]:
    """The rows outside their acceptable range."""
    return [row for row in rows if not row.passed]


def deduplicate(rows: Iterable[QCRow]) -> list[QCRow]:
    """Keep the last row of each name (a later lamp pass wins, as in soxspipe)."""
    latest: dict[tuple[str, int], QCRow] = {}
    for row in rows:
        latest[(row.name, row.order)] = row
    return list(latest.values())
