"""The master-flat recipe: the steps of its documentation, top to bottom, each a call into a module named for it.

verify inputs → prepare and detrend the flats → normalise and stack (two passes) → detect and fit the
order edges → fit and subtract the scattered light → flag bad pixels → (X-shooter UVB) stitch the D2
and QTH flats → QC → write the products. Only this module, :mod:`soxs_mflat.frames` /
:mod:`soxs_mflat.loading` (reading) and :mod:`soxs_mflat.writing` touch disk.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from soxs_mflat import background, badpixels, edges, plots, stitching
from soxs_mflat.errors import UserInputError
from soxs_mflat.flatfield import LampFlat, flag_and_finish
from soxs_mflat.footprints import frame_binning_ab, order_bounds, shape_ba
from soxs_mflat.frames import read_bad_pixel_map, read_frame_file, read_order_table
from soxs_mflat.inputs import LampSet, VerifiedInputs, classify, identify_instrument_and_arm, verify
from soxs_mflat.loading import lamp_calibrations, load_flat_cube
from soxs_mflat.normalisation import normalise_and_stack
from soxs_mflat.order_table import OrderTable
from soxs_mflat.parallel import in_background, worker_thread
from soxs_mflat.products import ProductPaths, md5_of, night_from_mjd, night_from_sof_name, product_paths
from soxs_mflat.qc import QCRow, deduplicate, failed, lamp_qc
from soxs_mflat.settings import ArmSettings, Settings, load_settings, peek_instrument
from soxs_mflat.sof import InputSet
from soxs_mflat.stacking import centre_band_mask
from soxs_mflat.transaction import ProductTransaction, StemLock, remove_stale_temporaries
from soxs_mflat.writing import ProductRecord, draw_figures, write_products

LOGGER = logging.getLogger("soxs_mflat")


@dataclass(frozen=True)
class RecipeResult:
    """What a run produced."""

    products: list[ProductRecord]
    qc: list[QCRow]
    arm: str
    log_path: Path
    run_seconds: float
    root: Path
    """The output root: products/ and qc/ are below it."""
    step_seconds: dict[str, float]
    """Wall time of each step, in the order they ran."""


class MasterFlatRecipe:
    """Build the master flat of one arm from lamp flats and their calibrations."""

    def __init__(self, inputs: InputSet, *, settings_file: Path | None = None, output_dir: Path | None = None,
                 overwrite: bool = False, command: str = "") -> None:
        self.input_set = inputs
        self.settings_file = settings_file
        self.output_dir = output_dir
        self.overwrite = overwrite
        self.command = command
        self.step_seconds: dict[str, float] = {}
        self._log = io.StringIO()

    def run(self) -> RecipeResult:
        """Run every step and write the products; return their paths and the QC table."""
        started = time.monotonic()
        with self._product_log(), ExitStack() as held:
            # The recipe's least-squares systems are small: BLAS threads would only compete with the figure thread.
            held.enter_context(threadpool_limits(limits=1, user_api="blas"))
            with self._step("verify inputs"):
                inputs, settings = self._verify_inputs()
            paths = self._claim_outputs(inputs, settings, held)
            checksums = in_background(md5_of, [c.path for c in inputs.calibrations])
            transaction = held.enter_context(ProductTransaction())
            draw = held.enter_context(worker_thread())
            try:
                lamps, figures = [], []
                for lamp_set in inputs.lamp_sets:
                    lamps.append(self._reduce_lamp(lamp_set, inputs, settings))
                    if len(inputs.lamp_sets) > 1:
                        figures += draw_figures(transaction, paths, lamps[-1], lamp_set.lamp, draw)
                final = lamps[0] if len(lamps) == 1 else self._stitch(lamps, inputs, settings.arm(inputs.arm))
                figures += draw_figures(transaction, paths, final, "", draw)
                for row in failed(final.qc):
                    LOGGER.warning("%s; the products are written all the same.", row.describe_failure())
                outputs = [*((lamp, lamp.lamp) for lamp in lamps), (final, "")] if len(lamps) > 1 else [(final, "")]
                with self._step("write products"):
                    products = write_products(transaction, paths, inputs, settings, outputs, figures,
                                              checksums=checksums.result())
                    transaction.stage_text(paths.log(), self._log_text(started))
                    transaction.obsolete(paths.error_log())
                    transaction.commit()
                paths.error_log().unlink(missing_ok=True)  # a failure of an earlier run, now superseded
            except Exception as error:
                self._write_error_log(paths, error, started)
                raise
        elapsed = time.monotonic() - started
        products.append(ProductRecord("LOG", paths.log(), "TXT", "PROD", "recipe log; its last line reruns it"))
        return RecipeResult(products, deduplicate(final.qc), inputs.arm, paths.log(), elapsed, paths.root,
                            dict(self.step_seconds))

    def _reduce_lamp(self, lamp_set: LampSet, inputs: VerifiedInputs, settings: Settings) -> LampFlat:
        """The master flat of one lamp's flats, with its order edges, scattered light and bad pixels."""
        arm = settings.arm(inputs.arm)
        axis = inputs.detector.fitted_axis
        binning_ab = frame_binning_ab(inputs.binning, axis)
        frame_ba = shape_ba(inputs.detector.prepared_shape(*inputs.binning), axis)
        tag = f" [{lamp_set.lamp}]" if lamp_set.lamp else ""
        static_mask = self._static_mask(inputs)
        with self._step(f"prepare and detrend flats{tag}"):
            calibrations = lamp_calibrations(lamp_set, inputs, static_mask, clipping_sigma=settings.stacked_clipping_sigma,
                                             clipping_iterations=settings.stacked_clipping_iterations)
            cube = load_flat_cube(lamp_set.flats, inputs, static_mask, calibrations.detrendings,
                                  save_prepared_to=self._intermediate_folder(settings))
        centres = self._order_centres(lamp_set, inputs)
        centre_bounds = order_bounds(centres, frame_ba, binning_ab, half_width=0.0, limits_binned=False)
        band = centre_band_mask(frame_ba, centre_bounds.centre, centre_bounds.valid,
                                max(1, arm.centre_order_window // 2 // binning_ab[0]))
        with self._step(f"normalise and stack{tag}"):
            stacked = normalise_and_stack(cube, calibrations.noise, band, sigma=settings.stacked_clipping_sigma,
                                          iterations=settings.stacked_clipping_iterations,
                                          names=[f.path.name for f in lamp_set.flats])
        del cube
        LOGGER.info("Exposure levels (e-): %s; second-pass relative levels %s; %d values clipped",
                    ", ".join(f"{v:.1f}" for v in stacked.first_levels.levels),
                    ", ".join(f"{v:.5f}" for v in stacked.relative_levels), stacked.combined.n_clipped)
        combined = stacked.combined
        with self._step(f"detect order edges{tag}"):
            detections = edges.detect_edges(
                combined.data, centres, binning_ab=binning_ab,
                slice_length=max(13, arm.slice_length_for_edge_detection // binning_ab[0]),
                slice_width=arm.slice_width_for_edge_detection,
                min_threshold_pct=arm.min_percentage_threshold_for_edge_detection,
                max_threshold_pct=arm.max_percentage_threshold_for_edge_detection,
                min_order=13 if inputs.arm == "NIR" and "JH" in inputs.slit.upper() else None)
        with self._step(f"fit order edges{tag}"):
            fit = fit_order_edges(detections, arm=arm, binning_ab=binning_ab)
            table = edges.order_location_table(centres, fit, detections, shape_ba=frame_ba, binning_ab=binning_ab)
        bounds = order_bounds(table, frame_ba, binning_ab)
        edge_figure = plots.order_location_figure(combined.data, detections, fit, table, binning_ab=binning_ab,
                                                  fitted_axis=axis, title=f"{inputs.arm}{tag} order edges")
        with self._step(f"flag bad pixels{tag}"):  # in the bias or darks first: that needs the orders, not the flat
            calibration_hot = badpixels.calibration_hot_pixels(
                bounds, frame_ba, hot_sigma=arm.hot_pixel_clipping_sigma, input_mask_ba=combined.mask,
                **calibrations.hot_search_frames())
        del calibrations, band
        flat, light, light_figure = combined.data, None, None
        if settings.subtract_background:
            with self._step(f"fit scattered light{tag}"):
                light = background.fit_scattered_light(flat, bounds, bspline_deg=settings.bspline_deg,
                                                       gaussian_blur_sigma=settings.gaussian_blur_sigma)
                flat -= light.model  # in place: the stacked flat is not needed any more
            light_figure = plots.background_figure(flat, light, fitted_axis=axis, title=f"{inputs.arm}{tag}")
        with self._step(f"flag bad pixels{tag}"):
            finished = flag_and_finish(flat, combined.uncertainty, combined.mask, bounds, arm,
                                       calibration_hot=calibration_hot)
        qc = lamp_qc(ordexp=stacked.first_levels.ordexp, fit=fit, finished=finished, limits=arm.qc_limit, inputs=inputs,
                     flats=lamp_set.flats, bad_pixel_counts_too=not lamp_set.lamp or len(inputs.lamp_sets) == 1)
        return LampFlat(lamp_set.lamp, finished.data, combined.uncertainty, finished.mask, table, centres,
                        None if light is None else light.model, qc, lamp_set.flats, detections, fit,
                        stacked.first_levels.ordexp, (edge_figure, light_figure))

    def _stitch(self, lamps: list[LampFlat], inputs: VerifiedInputs, arm: ArmSettings) -> LampFlat:
        """X-shooter UVB: one flat from the D2 and QTH flats, order by order, with edges fitted through both."""
        d2, qth = (next(lamp for lamp in lamps if lamp.lamp == name) for name in ("DLAMP", "QLAMP"))
        binning_ab = frame_binning_ab(inputs.binning, inputs.detector.fitted_axis)
        with self._step("stitch D2 and QTH flats"):
            stitched = stitching.stitch_lamp_flats(d2, qth, binning_ab=binning_ab, scale_d2_to_qth=arm.scale_d2_to_qth,
                                                   fit_edges=partial(fit_order_edges, arm=arm, binning_ab=binning_ab))
        lamps_used = stitched.lamps
        LOGGER.info("Stitched: D2 orders %s, boundary between orders %s, D2 flat divided by %.4f", lamps_used.d2_orders,
                    lamps_used.boundary_orders, lamps_used.scale)
        figure = plots.order_location_figure(lamps_used.data, stitched.detections, stitched.fit, stitched.table,
                                             binning_ab=binning_ab, fitted_axis=inputs.detector.fitted_axis,
                                             title="UVB stitched order edges")
        with self._step("flag bad pixels [stitched]"):
            finished = flag_and_finish(lamps_used.data, lamps_used.uncertainty, lamps_used.mask, stitched.bounds, arm,
                                       calibration_hot=None)
        flats = (*d2.flats, *qth.flats)
        qc = lamp_qc(ordexp=qth.ordexp, fit=stitched.fit, finished=finished, limits=arm.qc_limit, inputs=inputs,
                     flats=flats, bad_pixel_counts_too=True)
        return LampFlat("", finished.data, lamps_used.uncertainty, finished.mask, stitched.table, qth.centres,
                        stitched.background, qc, flats, stitched.detections, stitched.fit, qth.ordexp, (figure, None))

    # ------------------------------------------------------------------------------------ inputs
    def _verify_inputs(self) -> tuple[VerifiedInputs, Settings]:
        requested = peek_instrument(self.settings_file)
        extension = 0 if requested is None else load_settings(instrument=requested,
                                                                user_file=self.settings_file).data_extension
        frames = [read_frame_file(item, data_extension=extension) for item in self.input_set.files]
        instrument, arm = identify_instrument_and_arm(frames)
        root = None if self.output_dir is None else str(self.output_dir)
        settings = load_settings(instrument=instrument, user_file=self.settings_file, workspace_root=root)
        inputs = verify(classify(frames, instrument=instrument, arm=arm), instrument=instrument, arm=arm)
        LOGGER.info("Input set: %s (%d files), %s %s, binning %dx%d", self.input_set.source, len(frames), instrument,
                    arm, *inputs.binning)
        for lamp_set in inputs.lamp_sets:
            LOGGER.info("%d %s flats of %.3f s; order-centre table %s", len(lamp_set.flats), lamp_set.lamp or "lamp",
                        lamp_set.exptime, lamp_set.order_table.path.name)
        LOGGER.info("Gain %.4g e-/ADU (%s); read noise %.4g e- (%s)", inputs.gain, inputs.gain_source, inputs.ron,
                    inputs.ron_source)
        for note in inputs.notes:
            LOGGER.info("%s", note)
        return inputs, settings

    def _static_mask(self, inputs: VerifiedInputs) -> np.ndarray | None:
        if inputs.bad_pixel_map is None:
            return None
        return read_bad_pixel_map(inputs.bad_pixel_map.path, inputs.detector.prepared_shape(*inputs.binning))

    def _order_centres(self, lamp_set: LampSet, inputs: VerifiedInputs) -> OrderTable:
        centres = read_order_table(lamp_set.order_table.path)
        if centres.fitted_axis != inputs.detector.fitted_axis:
            raise UserInputError(
                f"The order-centre table {lamp_set.order_table.path} traces the orders along {centres.along_axis}, but "
                f"{inputs.arm} orders run along {'y' if inputs.detector.fitted_axis == 'x' else 'x'}. Give the table "
                "made for this arm."
            )
        return centres

    def _intermediate_folder(self, settings: Settings) -> Path | None:
        return Path(settings.workspace_root_dir or ".") if settings.save_intermediate_products else None

    # ------------------------------------------------------------------------------------ outputs
    def plan(self) -> tuple[VerifiedInputs, ProductPaths]:
        """Verify the inputs and name the products :meth:`run` would write, reducing and writing nothing: how a
        batch finds the sets already reduced and sizes its workers (``ProductPaths.existing`` says what exists)."""
        inputs, settings = self._verify_inputs()
        return inputs, self._product_paths(inputs, settings)

    def _product_paths(self, inputs: VerifiedInputs, settings: Settings) -> ProductPaths:
        return product_paths(stem=self._stem(inputs), root=_absolute_root(settings), instrument=inputs.instrument)

    def _claim_outputs(self, inputs: VerifiedInputs, settings: Settings, held: ExitStack) -> ProductPaths:
        """The product paths, once their folders exist, this run holds the stem's lock, and nothing would be
        overwritten without ``-x``; all checked before any work."""
        paths = self._product_paths(inputs, settings)
        for folder in (paths.products_dir, paths.qc_dir):
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise UserInputError(
                    f"The output folder {folder} cannot be created ({error.strerror or error}). Nothing was written. "
                    "Choose another output directory with -o, or remove or rename what stands in the way."
                ) from None
        held.enter_context(StemLock(paths.products_dir, paths.stem))
        lamps = [s.lamp for s in inputs.lamp_sets]
        for stale in remove_stale_temporaries([*paths.every(lamps), paths.error_log()]):
            LOGGER.info("Removed %s, left by a run of this set that was killed before it could clean up", stale.name)
        existing = paths.existing(lamps)
        if existing and not self.overwrite:
            raise UserInputError(
                f"Products of this set already exist in {paths.root}; nothing was changed. Rerun with -x to overwrite "
                "them, or choose another output directory with -o. The files:",
                details=tuple(str(path.relative_to(paths.root)) for path in existing),
            )
        return paths

    def _stem(self, inputs: VerifiedInputs) -> str:
        sof = self.input_set.sof
        if sof is None:
            first_mjd = min(float(f.header[inputs.keywords.mjd_obs]) for s in inputs.lamp_sets for f in s.flats)
            return f"soxs-mflat_{inputs.arm}_{night_from_mjd(first_mjd)}"
        if night_from_sof_name(sof.name) is None:
            LOGGER.info("SOF name %s does not start with YYYYMMDDTHHMMSS; products are named after it anyway", sof.name)
        return sof.stem

    def _write_error_log(self, paths: ProductPaths, error: Exception, started: float) -> None:
        """Leave ``<stem>_ERROR.log``, whole or not at all (the folder may be the very thing that failed)."""
        LOGGER.error("%s", error)
        try:
            with ProductTransaction() as transaction:
                transaction.stage_text(paths.error_log(), self._log_text(started))
                transaction.commit()
        except UserInputError:
            LOGGER.debug("could not write %s", paths.error_log())

    # ------------------------------------------------------------------------------------ bookkeeping
    @contextmanager
    def _step(self, name: str) -> Iterator[None]:
        """Time a step (``-V`` reports the times) and log its start."""
        LOGGER.info("%s%s", name[0].upper(), name[1:])
        started = time.monotonic()
        try:
            yield
        finally:
            self.step_seconds[name] = self.step_seconds.get(name, 0.0) + time.monotonic() - started

    @contextmanager
    def _product_log(self) -> Iterator[None]:
        """Capture the run's INFO log lines for the product log, whatever the host application's log level."""
        handler = logging.StreamHandler(self._log)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s: %(message)s", "%Y-%m-%dT%H:%M:%S"))
        handler.setLevel(logging.INFO)
        level = LOGGER.level
        LOGGER.addHandler(handler)
        if LOGGER.getEffectiveLevel() > logging.INFO:
            LOGGER.setLevel(logging.INFO)
        try:
            yield
        finally:
            LOGGER.removeHandler(handler)
            LOGGER.setLevel(level)

    def _log_text(self, started: float) -> str:
        return (f"{self._log.getvalue()}Recipe Run Time: {time.monotonic() - started:.1f}s\n"
                f"Recipe Command: {self.command}\n")


def fit_order_edges(detections: edges.EdgeDetections, *, arm: ArmSettings, binning_ab: tuple[int, int]) -> edges.EdgeFit:
    """The global edge fits with the arm's degrees and clipping."""
    return edges.fit_edges(detections, order_deg=arm.order_deg, disp_axis_deg=arm.disp_axis_deg,
                           clipping_sigma=arm.poly_fitting_residual_clipping_sigma,
                           clipping_iterations=arm.poly_clipping_iteration_limit, binning_ab=binning_ab,
                           log=LOGGER.info)


def _absolute_root(settings: Settings) -> Path:
    root = Path(settings.workspace_root_dir or ".").expanduser()
    return (root if root.is_absolute() else Path.cwd() / root).resolve()
