"""QC metrics: what each one measures, its unit, and how a value is graded against its acceptable range.

Every metric is defined in :data:`METRICS` (the user documentation in ``docs/qc.md`` lists the same
definitions). A value is graded ``pass`` when it lies inside its range *including the bounds*
(soxspipe fails a value equal to a bound, so an ``X RES MIN`` of exactly 0 would fail there), ``fail``
outside it, and ``no range`` when the settings give it none. A failed metric never stops a run: the
products are written and the failure is reported as a warning.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from soxs_mflat.badpixels import DEAD, HOT, LOW_SENSITIVITY, PARTIAL_EDGE, BadPixelResult

if TYPE_CHECKING:
    from soxs_mflat.edges import EdgeFit
    from soxs_mflat.flatfield import FinishedFlat
    from soxs_mflat.frames import FrameFile
    from soxs_mflat.inputs import VerifiedInputs

PASS, FAIL, NO_RANGE = "pass", "fail", "no range"


@dataclass(frozen=True)
class MetricDefinition:
    """Unit, short FITS-card comment and full description of one QC metric."""

    unit: str
    comment: str
    """Fits on a ``HIERARCH ESO QC`` card next to any value (at most :data:`COMMENT_LENGTH` characters)."""
    description: str


COMMENT_LENGTH = 30

METRICS: dict[str, MetricDefinition] = {
    "ORDEXP10": MetricDefinition(
        "electrons", "[e-] p10 of order-centre flux",
        "Median over the flats of the 10th percentile of each flat's bias/dark-subtracted flux (electrons per "
        "pixel) in the band of centre-order-window pixels around the order centres (first pass)."),
    "ORDEXP50": MetricDefinition(
        "electrons", "[e-] median order-centre flux",
        "Median over the flats of the median bias/dark-subtracted flux (electrons per pixel) in the band around "
        "the order centres."),
    "ORDEXP90": MetricDefinition(
        "electrons", "[e-] p90 of order-centre flux",
        "Median over the flats of the 90th percentile of the bias/dark-subtracted flux (electrons per pixel) in "
        "the band around the order centres."),
    "X RES MIN": MetricDefinition(
        "pixels", "[px] min |residual|, edge fits",
        "Smallest absolute residual (detection minus fit, across the dispersion, in frame pixels) of the unclipped "
        "points of the upper and lower order-edge fits together. Named X on every arm, as in soxspipe."),
    "X RES MAX": MetricDefinition(
        "pixels", "[px] max |residual|, edge fits",
        "Largest absolute residual of the unclipped points of both order-edge fits (frame pixels)."),
    "X RES SD": MetricDefinition(
        "pixels", "[px] SD of |residual|, edges",
        "Standard deviation of the absolute residuals of the unclipped points of both order-edge fits (frame "
        "pixels), as soxspipe defines it."),
    "N DEAD": MetricDefinition(
        "pixels", "Dead pixels found in the flat",
        "Pixels inside the orders whose response is below dead-pixel-response-limit of their neighbours', newly "
        "flagged by this recipe."),
    "N HOT": MetricDefinition(
        "pixels", "Hot pixels found",
        "Pixels inside the orders flagged as hot in the flat, the master bias or the darks, newly flagged by this "
        "recipe."),
    "N LOW SENS": MetricDefinition(
        "pixels", "Low-sensitivity pixels found",
        "Pixels inside the orders whose response is significantly below their neighbours' but above the dead "
        "limit, newly flagged by this recipe."),
    "N ORDER EDGE": MetricDefinition(
        "pixels", "Masked partly lit edge pixels",
        "Pixels at the order edges masked because they receive less than order-edge-min-flat-fraction of the "
        "order's light, and bad for no other reason."),
    "COLDPIX NUM": MetricDefinition(
        "pixels", "Dead + low-sensitivity pixels",
        "Cold pixels: the dead and low-sensitivity pixels newly flagged inside the orders (N DEAD + N LOW SENS, "
        "a pixel counted once)."),
    "COLDPIX FRAC": MetricDefinition(
        "", "Cold pixels / all pixels",
        "COLDPIX NUM divided by the number of pixels of the frame (unitless)."),
    "BADPIX NUM": MetricDefinition(
        "pixels", "All bad pixels in orders",
        "Every pixel flagged in QUAL inside the orders, for any reason (input masks, saturation, dead, hot, "
        "low sensitivity, order edge)."),
    "INNER ORDER PIX MEAN": MetricDefinition(
        "", "Mean flat value in orders",
        "Mean of the master flat (unitless: normalised to the exposure level) over the good pixels inside the "
        "orders."),
    "INNER ORDER PIX SUM": MetricDefinition(
        "", "Sum of flat values in orders",
        "Sum of the master flat (unitless) over the good pixels inside the orders."),
    "DETECTOR TEMP": MetricDefinition(
        "kelvin", "Detector temperature",
        "Detector temperature from the last flat's header (SOXS only): kelvin on NIR, celsius on VIS (the unit "
        "of the header card; soxspipe labels both kelvin)."),
    "CPATH TEMP": MetricDefinition(
        "celsius", "[C] common path temperature",
        "Temperature of the common path, from the last flat's header (SOXS only)."),
    "N SLICES": MetricDefinition(
        "", "Slices used in the edge fit",
        "Cross-dispersion slices of one order whose edges entered the global edge fits (per order; not written "
        "to the header)."),
}


@dataclass(frozen=True)
class QCRow:
    """One measured QC metric and its acceptable range."""

    name: str
    value: float
    unit: str
    comment: str
    to_header: bool = True
    limits: tuple[float, float] | None = None
    order: int = -1
    """Echelle order the metric refers to; -1 for metrics of the whole frame."""

    @property
    def verdict(self) -> str:
        """``pass`` inside the range (bounds included), ``fail`` outside it or when not finite, ``no range``."""
        if self.limits is None:
            return NO_RANGE
        low, high = self.limits
        return PASS if math.isfinite(self.value) and low <= self.value <= high else FAIL

    @property
    def passed(self) -> bool:
        """False only for a metric that misses its range."""
        return self.verdict != FAIL

    @property
    def description(self) -> str:
        """The full definition of the metric."""
        return METRICS[self.name].description

    def describe_failure(self) -> str:
        """One line naming the metric, its value and its range."""
        low, high = self.limits or (math.nan, math.nan)
        where = "" if self.order < 0 else f" (order {self.order})"
        return f"QC {self.name}{where} = {self.value:.6g} {self.unit} is outside its acceptable range [{low:g}, {high:g}]"


def qc_row(name: str, value: float, *, limits: tuple[float, float] | None = None, to_header: bool = True,
           unit: str | None = None, order: int = -1) -> QCRow:
    """A QC row with the standard unit and comment of ``name``."""
    definition = METRICS[name]
    return QCRow(name, float(value), definition.unit if unit is None else unit, definition.comment, to_header, limits,
                 order)


def failed(rows: Iterable[QCRow]) -> list[QCRow]:
    """The rows outside their acceptable range."""
    return [row for row in rows if row.verdict == FAIL]


def deduplicate(rows: Iterable[QCRow]) -> list[QCRow]:
    """Keep the last row of each name and order (a later lamp pass wins, as in soxspipe)."""
    latest: dict[tuple[str, int], QCRow] = {}
    for row in rows:
        latest[(row.name, row.order)] = row
    return list(latest.values())


def canonical_name(key: str) -> str | None:
    """The metric a ``qc-acceptable-ranges`` key names (``x-res-sd``, ``X RES SD``, ``x_res_sd``), or None."""
    wanted = " ".join(str(key).replace("-", " ").replace("_", " ").upper().split())
    return wanted if wanted in METRICS else None


QC_TABLE_COLUMNS = ("soxspipe_recipe", "qc_name", "qc_value", "qc_unit", "qc_comment", "obs_date_utc",
                    "reduction_date_utc", "to_header", "qc_order", "qc_flag", "qc_value_min", "qc_value_max")


def qc_table(rows: Iterable[QCRow], *, obs_date: str, reduction_date: str) -> str:
    """The QC table as CSV (spec §8.1 columns, plus the range and its verdict), one row per metric and order.

    Written with the standard library's csv module: pandas would add ~0.4 s and ~35 MB to every run for a
    table of twenty rows."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=QC_TABLE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in sorted(rows, key=lambda r: (r.name, r.order)):
        writer.writerow({
            "soxspipe_recipe": "soxs-mflat", "qc_name": row.name, "qc_value": f"{row.value:.10g}",
            "qc_unit": row.unit, "qc_comment": row.comment, "obs_date_utc": obs_date,
            "reduction_date_utc": reduction_date, "to_header": row.to_header, "qc_order": row.order,
            "qc_flag": row.verdict, "qc_value_min": "" if row.limits is None else f"{row.limits[0]:.10g}",
            "qc_value_max": "" if row.limits is None else f"{row.limits[1]:.10g}",
        })
    return text.getvalue()

def bad_pixel_counts(found: BadPixelResult, final_mask: np.ndarray, inside: np.ndarray) -> dict[str, float]:
    """N DEAD, N HOT, N LOW SENS, N ORDER EDGE, COLDPIX NUM/FRAC and BADPIX NUM (see :data:`METRICS`)."""
    codes = found.codes
    new = inside & ~found.input_mask
    dead = np.count_nonzero(new & ((codes & DEAD) != 0))
    cold = np.count_nonzero(new & ((codes & (DEAD | LOW_SENSITIVITY)) != 0))
    return {
        "N DEAD": dead,
        "N HOT": np.count_nonzero(new & ((codes & HOT) != 0)),
        "N LOW SENS": np.count_nonzero(new & ((codes & LOW_SENSITIVITY) != 0) & ((codes & DEAD) == 0)),
        "N ORDER EDGE": np.count_nonzero(new & (codes == PARTIAL_EDGE)),
        "COLDPIX NUM": cold,
        "COLDPIX FRAC": round(cold / final_mask.size, 6),
        "BADPIX NUM": np.count_nonzero(final_mask & inside),
    }


def lamp_qc(*, ordexp: tuple[float, float, float], fit: EdgeFit, finished: FinishedFlat,
            limits: Callable[[str], tuple[float, float] | None], inputs: VerifiedInputs,
            flats: Sequence[FrameFile], bad_pixel_counts_too: bool) -> list[QCRow]:
    """Every QC metric of one lamp's (or the stitched) master flat, with its acceptable range.

    The bad-pixel counts are measured for the generic or stitched flat only, as soxspipe does
    (``bad_pixel_counts_too``); ``flats`` are the raw flats (their last header gives the temperatures).
    """

    def row(name: str, value: float, **options: object) -> QCRow:
        return qc_row(name, value, limits=limits(name), **options)

    rows = [row("ORDEXP10", ordexp[0]), row("ORDEXP50", ordexp[1]), row("ORDEXP90", ordexp[2]),
            row("X RES MIN", round(fit.x_res_min, 5)), row("X RES MAX", round(fit.x_res_max, 5)),
            row("X RES SD", round(fit.x_res_sd, 5))]
    counts = bad_pixel_counts(finished.bad_pixels, finished.mask, finished.inside)
    if not bad_pixel_counts_too:
        counts = {name: counts[name] for name in ("COLDPIX NUM", "COLDPIX FRAC", "BADPIX NUM")}
    rows += [row(name, value) for name, value in counts.items()]
    good = finished.data[finished.inside & ~finished.mask]
    rows += [row("INNER ORDER PIX MEAN", round(float(np.mean(good)), 3)),
             row("INNER ORDER PIX SUM", round(float(np.sum(good, dtype=np.float64)), 3))]
    rows += [row("N SLICES", count, to_header=False, order=int(order))
             for order, count in zip(fit.orders_kept, fit.slices_used, strict=True)]
    last, keywords = flats[-1].header, inputs.keywords
    detector_temp = keywords.detector_temp.get(inputs.arm)
    if detector_temp and detector_temp in last:
        rows.append(row("DETECTOR TEMP", float(last[detector_temp]), to_header=False,
                        unit="kelvin" if inputs.arm == "NIR" else "celsius"))
    if keywords.common_path_temp and keywords.common_path_temp in last:
        rows.append(row("CPATH TEMP", float(last[keywords.common_path_temp]), to_header=False))
    return rows
