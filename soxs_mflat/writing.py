"""Write a run's products: master flat, order table, background image, QC figures and QC table.

Every file is staged in a :class:`~soxs_mflat.transaction.ProductTransaction` and renamed into place
with the others only when all are complete. The QC pages of a lamp's flat are drawn on the run's figure
thread (:func:`soxs_mflat.parallel.worker_thread`) as soon as the flat and its QC are known, while the
recipe goes on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from soxs_mflat import plots
from soxs_mflat.flatfield import LampFlat
from soxs_mflat.footprints import frame_binning_ab, from_ba
from soxs_mflat.inputs import VerifiedInputs
from soxs_mflat.order_table import to_hdus
from soxs_mflat.products import ProductPaths, fits_writer, image_hdus, primary_image_hdu, provenance_header
from soxs_mflat.qc import QCRow, deduplicate, qc_table
from soxs_mflat.settings import Settings
from soxs_mflat.transaction import ProductTransaction

LOGGER = logging.getLogger(__name__)
REMOVED_FROM_ORDER_TABLE = ("read_speed", "conad", "gain", "ron")
"""Keyword-map entries of detector read-out cards that an order table does not carry."""


@dataclass(frozen=True)
class ProductRecord:
    """One file written (spec §5.7): its label, path, file type, PROD or QC, and what it is."""

    product_label: str
    path: Path
    file_type: str
    label: str
    description: str


@dataclass(frozen=True)
class PendingFigure:
    """A QC page being drawn into its temporary file, and the record it gets once drawn."""

    drawn: Future
    record: ProductRecord


def draw_figures(transaction: ProductTransaction, paths: ProductPaths, flat: LampFlat, lamp: str,
                 submit: Callable[..., Future]) -> list[PendingFigure]:
    """Start drawing ``flat``'s QC pages (``submit``: the run's figure thread) as soon as its QC is known,
    into temporaries of ``transaction``; ``lamp`` is the products' lamp tag (empty for the run's final flat)."""
    frame_rows = [row for row in deduplicate(flat.qc) if row.order == -1]
    return [PendingFigure(submit(_render, figure, transaction.temporary(path), transaction, frame_rows), record)
            for figure, path, record in _figures(flat, lamp, paths)]


def _render(figure: object, temporary: Path, transaction: ProductTransaction, qc_rows: list[QCRow]) -> None:
    """Draw one page into its temporary; if the run was abandoned meanwhile, remove what was drawn."""
    plots.render(figure, temporary, qc_rows=qc_rows)
    if not transaction.open:
        temporary.unlink(missing_ok=True)


def write_products(transaction: ProductTransaction, paths: ProductPaths, inputs: VerifiedInputs, settings: Settings,
                   outputs: Sequence[tuple[LampFlat, str]], figures: Sequence[PendingFigure], *,
                   checksums: Mapping[Path, str]) -> list[ProductRecord]:
    """Stage every product of the run, ``outputs`` being (flat, lamp tag) with the final flat last, and collect
    the QC pages being drawn; return the records. ``checksums``: the MD5 of every calibration file."""
    records: list[ProductRecord] = []
    for flat, lamp in outputs:
        records += _stage_fits(transaction, paths, inputs, settings, flat, lamp, deduplicate(flat.qc), checksums)
    for figure in figures:
        error = figure.drawn.exception()
        if error is None:
            records.append(figure.record)
        else:  # a QC figure never costs the products
            LOGGER.warning("QC figure %s was not written: %s", figure.record.path.name, error)
            transaction.forget(figure.record.path)
    final = outputs[-1][0]
    obs_date = str(final.flats[0].header.get("DATE-OBS", ""))
    table = qc_table(deduplicate(final.qc), obs_date=obs_date,
                     reduction_date=time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()))
    transaction.stage_text(paths.qc_table(), table)
    records.append(ProductRecord("QC_TABLE", paths.qc_table(), "CSV", "QC", "QC metrics of this run"))
    return records


def _stage_fits(transaction: ProductTransaction, paths: ProductPaths, inputs: VerifiedInputs, settings: Settings,
                flat: LampFlat, lamp: str, qc_rows: list[QCRow], checksums: Mapping[Path, str]) -> list[ProductRecord]:
    arm, axis = inputs.arm, inputs.detector.fitted_axis
    suffix = f"_{lamp}" if lamp else ""
    header = provenance_header(inputs=inputs, flats=flat.flats, settings=settings, pro_catg=f"MASTER_FLAT_{arm}",
                               pro_tech="IMAGE", qc_rows=qc_rows, checksums=checksums)
    flux, mask, errs = (from_ba(image, axis) for image in (flat.data, flat.mask, flat.uncertainty))
    transaction.stage(paths.master_flat(lamp), fits_writer(image_hdus(flux, mask, errs, header)))
    records = [ProductRecord(f"MFLAT{suffix}", paths.master_flat(lamp), "FITS", "PROD",
                             f"{arm} master spectroscopic flat frame")]
    table_header = header.copy()
    for name in REMOVED_FROM_ORDER_TABLE:
        table_header.remove(getattr(inputs.keywords, name), ignore_missing=True, remove_all=True)
    table_header["HIERARCH ESO PRO CATG"] = f"ORDER_TAB_{arm}"
    table_header["HIERARCH ESO PRO TECH"] = "ECHELLE,SLIT"
    table = flat.table.with_edges(flat.table.edge_low, flat.table.edge_up, header=table_header)
    binning_ab = frame_binning_ab(inputs.binning, axis)
    transaction.stage(paths.order_table(lamp), fits_writer(to_hdus(table, trace_binning=binning_ab)))
    records.append(ProductRecord(f"ORDER_LOC{suffix}", paths.order_table(lamp), "FITS", "PROD",
                                 "table of coefficients from polynomial fits to order locations"))
    if flat.background is not None:
        background_header = header.copy()
        background_header["HIERARCH ESO PRO CATG"] = f"FLAT_BKGROUND_{arm}"
        background_header["EXTNAME"] = "FLUX"
        image = np.asarray(from_ba(flat.background, axis), dtype=np.float32)
        transaction.stage(paths.background(lamp), fits_writer([primary_image_hdu(image, background_header)]))
        records.append(ProductRecord(f"BKGROUND{suffix}", paths.background(lamp), "FITS", "QC",
                                     "modelled scattered background light (removed from the master flat)"))
    return records


def _figures(flat: LampFlat, lamp: str, paths: ProductPaths) -> list[tuple[object, Path, ProductRecord]]:
    """The QC figures described for ``flat``, where each goes, and its record."""
    suffix = f"_{lamp}" if lamp else ""
    edges_figure, light_figure = (None if figure is None else replace(figure, stem=paths.stem) for figure in flat.figures)
    figures = [(edges_figure, paths.order_location_plot(lamp),
                ProductRecord(f"ORDER_LOC_RES{suffix}", paths.order_location_plot(lamp), "PDF", "QC",
                              "order edge detections, fits and residuals"))]
    if light_figure is not None:
        figures.append((light_figure, paths.background_plot(lamp),
                        ProductRecord(f"BKGROUND{suffix}", paths.background_plot(lamp), "PDF", "QC",
                                      "scattered-light model, data between the orders and residuals")))
    return figures
