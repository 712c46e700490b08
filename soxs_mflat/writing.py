"""Write a run's products: master flat, order table, background image, QC figures and QC table.

Every file is staged in a :class:`~soxs_mflat.transaction.ProductTransaction` and renamed into place
with the others only when all are complete. The QC figures are drawn on one worker thread while the
FITS files are written (:func:`soxs_mflat.parallel.alongside`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
from astropy.io import fits

from soxs_mflat import plots
from soxs_mflat.flatfield import LampFlat
from soxs_mflat.footprints import frame_binning_ab, from_ba
from soxs_mflat.inputs import VerifiedInputs
from soxs_mflat.order_table import to_hdus
from soxs_mflat.parallel import alongside
from soxs_mflat.products import ProductPaths, image_hdus, primary_image_hdu, provenance_header
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


def _write_fits(hdus: Sequence[fits.PrimaryHDU | fits.ImageHDU | fits.BinTableHDU]) -> Callable[[Path], None]:
    """A writer for :meth:`ProductTransaction.stage`: astropy, strict verification, checksums."""
    return lambda temporary: fits.HDUList(list(hdus)).writeto(temporary, output_verify="exception", checksum=True)


def write_products(transaction: ProductTransaction, paths: ProductPaths, inputs: VerifiedInputs, settings: Settings,
                   lamps: Sequence[LampFlat], final: LampFlat) -> list[ProductRecord]:
    """Stage every product of the run (per-lamp products too when lamps were stitched); return their records."""
    outputs = [*((lamp, lamp.lamp) for lamp in lamps), (final, "")] if len(lamps) > 1 else [(final, "")]
    final_qc = deduplicate(final.qc)
    records: list[ProductRecord] = []
    pages = [(partial(plots.render, figure, transaction.temporary(path),
                      qc_rows=[row for row in deduplicate(flat.qc) if row.order == -1]), record)
             for flat, lamp in outputs for figure, path, record in _figures(flat, lamp, paths)]
    with alongside(page for page, _ in pages) as drawn:
        for flat, lamp in outputs:
            records += _stage_fits(transaction, paths, inputs, settings, flat, lamp, deduplicate(flat.qc))
    for future, (_, record) in zip(drawn, pages, strict=True):
        error = future.exception()
        if error is None:
            records.append(record)
        else:  # a QC figure never costs the products
            LOGGER.warning("QC figure %s was not written: %s", record.path.name, error)
            transaction.forget(record.path)
    obs_date = str(final.flats[0].header.get("DATE-OBS", ""))
    table = qc_table(final_qc, obs_date=obs_date, reduction_date=time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()))
    transaction.stage_text(paths.qc_table(), table.to_csv(index=False, float_format="%.10g"))
    records.append(ProductRecord("QC_TABLE", paths.qc_table(), "CSV", "QC", "QC metrics of this run"))
    return records


def _stage_fits(transaction: ProductTransaction, paths: ProductPaths, inputs: VerifiedInputs, settings: Settings,
                flat: LampFlat, lamp: str, qc_rows: list[QCRow]) -> list[ProductRecord]:
    arm, axis = inputs.arm, inputs.detector.fitted_axis
    suffix = f"_{lamp}" if lamp else ""
    header = provenance_header(inputs=inputs, flats=flat.flats, settings=settings, pro_catg=f"MASTER_FLAT_{arm}",
                               pro_tech="IMAGE", qc_rows=qc_rows)
    flux, mask, errs = (from_ba(image, axis) for image in (flat.data, flat.mask, flat.uncertainty))
    transaction.stage(paths.master_flat(lamp), _write_fits(image_hdus(flux, mask, errs, header)))
    records = [ProductRecord(f"MFLAT{suffix}", paths.master_flat(lamp), "FITS", "PROD",
                             f"{arm} master spectroscopic flat frame")]
    table_header = header.copy()
    for name in REMOVED_FROM_ORDER_TABLE:
        table_header.remove(getattr(inputs.keywords, name), ignore_missing=True, remove_all=True)
    table_header["HIERARCH ESO PRO CATG"] = f"ORDER_TAB_{arm}"
    table_header["HIERARCH ESO PRO TECH"] = "ECHELLE,SLIT"
    table = flat.table.with_edges(flat.table.edge_low, flat.table.edge_up, header=table_header)
    binning_ab = frame_binning_ab(inputs.binning, axis)
    transaction.stage(paths.order_table(lamp), _write_fits(to_hdus(table, trace_binning=binning_ab)))
    records.append(ProductRecord(f"ORDER_LOC{suffix}", paths.order_table(lamp), "FITS", "PROD",
                                 "table of coefficients from polynomial fits to order locations"))
    if flat.background is not None:
        background_header = header.copy()
        background_header["HIERARCH ESO PRO CATG"] = f"FLAT_BKGROUND_{arm}"
        background_header["EXTNAME"] = "FLUX"
        image = np.asarray(from_ba(flat.background, axis), dtype=np.float32)
        transaction.stage(paths.background(lamp), _write_fits([primary_image_hdu(image, background_header)]))
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
