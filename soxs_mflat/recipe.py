"""The master-flat recipe: one linear sequence of steps, each a call into a module named for it.

Only this module (through ``products``) and ``frames`` touch disk. The order of the steps follows
the recipe documentation: verify → prepare → detrend → normalise and stack (two passes) → order
edges → scattered light → bad pixels → (UVB) stitch lamps → QC → write products and report.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from soxs_mflat import background, badpixels, edges, plots, stitching
from soxs_mflat.detrend import (
    Calibration,
    Detrending,
    NoiseModel,
    bias_detrending,
    dark_detrending,
    dark_scale,
    lowest_dark,
    nearest_in_time,
)
from soxs_mflat.errors import UserInputError
from soxs_mflat.fitsio import HDU, Header
from soxs_mflat.footprints import (
    OrderBounds,
    contiguous,
    copy_tiled,
    frame_binning_ab,
    from_ba,
    inside_orders,
    order_bounds,
    shape_ba,
    to_ba,
)
from soxs_mflat.frames import (
    FrameFile,
    Prepared,
    prepare_flux,
    prepare_raw,
    read_bad_pixel_map,
    read_frame_file,
    read_order_table,
    read_prepared,
    read_raw_adu,
    science_region,
)
from soxs_mflat.inputs import LampSet, VerifiedInputs, classify, identify_instrument_and_arm, verify
from soxs_mflat.order_table import OrderTable, to_hdus
from soxs_mflat.products import (
    ProductPaths,
    commit,
    image_hdus,
    night_from_mjd,
    night_from_sof_name,
    product_paths,
    provenance_header,
    start_checksums,
    temporary_path,
    write_hdus,
    write_text,
)
from soxs_mflat.qc import QCRow, deduplicate, failed, qc_row
from soxs_mflat.settings import ArmSettings, Settings, load_settings, peek_instrument
from soxs_mflat.sof import InputSet
from soxs_mflat.stacking import (
    FlatCube,
    band_sample,
    centre_band_mask,
    measure_levels,
    ratio_levels,
    sigma_clipped_stack,
)

LOGGER = logging.getLogger("soxs_mflat")
LOAD_WORKERS = 2
"""Threads reading and converting the flats into the stack's cube (numpy releases the GIL while copying)."""


@dataclass(frozen=True)
class ProductRecord:
    """One row of the products table (spec §5.7)."""

    product_label: str
    path: Path
    file_type: str
    label: str
    description: str


@dataclass(frozen=True)
class PendingPlot:
    """A QC figure being drawn into ``temporary`` (done when ``drawn`` is), to be renamed onto ``path`` with the
    products."""

    lamp: str
    path: Path
    temporary: Path
    product_label: str
    description: str
    drawn: Future


@dataclass(frozen=True)
class RecipeResult:
    """What a run produced."""

    products: list[ProductRecord]
    qc: list[QCRow]
    arm: str
    log_path: Path
    run_seconds: float


@dataclass
class LampResult:
    """The master flat of one lamp (BA orientation) and what was measured on the way."""

    lamp: str
    data: np.ndarray
    uncertainty: np.ndarray
    mask: np.ndarray
    table: OrderTable
    centres: OrderTable
    background: np.ndarray | None
    qc: list[QCRow]
    header: Header
    detections: edges.EdgeDetections


class MasterFlatRecipe:
    """Build the master flat of one arm from lamp flats and their calibrations."""

    def __init__(
        self,
        inputs: InputSet,
        *,
        settings_file: Path | None = None,
        output_dir: Path | None = None,
        overwrite: bool = False,
        command: str = "",
    ) -> None:
        self.input_set = inputs
        self.settings_file = settings_file
        self.output_dir = output_dir
        self.overwrite = overwrite
        self.command = command
        self.log_buffer = io.StringIO()
        self._plots: list[PendingPlot] = []
        self._side_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="soxs-side")
        self._product_paths: ProductPaths | None = None
        self._checksums: dict[Path, Future] = {}

    def run(self) -> RecipeResult:
        """Run every step and write the products; return their paths and the QC table."""
        started = time.monotonic()
        handler = logging.StreamHandler(self.log_buffer)
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        LOGGER.addHandler(handler)
        level = LOGGER.level
        if LOGGER.getEffectiveLevel() > logging.INFO:  # a host application's logging must not empty the product log
            LOGGER.setLevel(logging.INFO)
        paths: ProductPaths | None = None
        try:
            inputs, settings = self._verified_inputs()
            paths = self._paths(inputs, settings)
            self._refuse_to_clobber(paths, inputs)
            self._product_paths = paths
            self._checksums = start_checksums(c.path for c in inputs.calibrations)
            arm_settings = settings.arm(inputs.arm)
            results = [self._reduce_lamp(lamp_set, inputs, settings, arm_settings) for lamp_set in inputs.lamp_sets]
            final = results[0] if len(results) == 1 else self._stitch(results, inputs, settings, arm_settings)
            products = self._write(paths, inputs, settings, results, final)
        except Exception as error:
            if paths is not None:
                LOGGER.error("%s", error)
                self._write_log(paths.log().with_name(f"{paths.stem}_ERROR.log"), started)
            raise
        finally:
            LOGGER.removeHandler(handler)
            LOGGER.setLevel(level)
            self._discard_plots()
            self._side_thread.shutdown()
        elapsed = time.monotonic() - started
        qc_rows = deduplicate(final.qc)
        self._write_log(paths.log(), started)
        return RecipeResult(products, qc_rows, inputs.arm, paths.log(), elapsed)

    # ----------------------------------------------------------------------------------- steps
    def _verified_inputs(self) -> tuple[VerifiedInputs, Settings]:
        requested = peek_instrument(self.settings_file)
        data_extension = 0
        if requested is not None:
            data_extension = load_settings(instrument=requested, user_file=self.settings_file).data_extension
        frames = [read_frame_file(item, data_extension=data_extension) for item in self.input_set.files]
        instrument, arm = identify_instrument_and_arm(frames)
        root = str(self.output_dir) if self.output_dir is not None else None
        settings = load_settings(instrument=instrument, user_file=self.settings_file, workspace_root=root)
        inputs = verify(classify(frames, instrument=instrument, arm=arm), instrument=instrument, arm=arm)
        LOGGER.info("Input set: %s (%d files), %s %s, binning %dx%d", self.input_set.source, len(frames),
                    instrument, arm, *inputs.binning)
        for lamp_set in inputs.lamp_sets:
            LOGGER.info("%d %s flats of %.3f s; order-centre table %s", len(lamp_set.flats), lamp_set.lamp or "lamp",
                        lamp_set.exptime, lamp_set.order_table.path.name)
        LOGGER.info("Gain %.4g e-/ADU (%s); read noise %.4g e- (%s)", inputs.gain, inputs.gain_source, inputs.ron,
                    inputs.ron_source)
        for note in inputs.notes:
            LOGGER.info("%s", note)
        return inputs, settings

    def plan(self) -> tuple[VerifiedInputs, ProductPaths]:
        """Verify the inputs and name the products :meth:`run` would write, reducing nothing (the output
        folders are created, as a run does first): how a batch finds sets already reduced and sizes its workers.

        ``ProductPaths.existing`` then says which of them exist.
        """
        inputs, settings = self._verified_inputs()
        return inputs, self._paths(inputs, settings)

    def _paths(self, inputs: VerifiedInputs, settings: Settings) -> ProductPaths:
        sof = self.input_set.sof
        if sof is not None:
            stem = sof.stem
        else:
            first_mjd = min(float(f.header[inputs.keywords.mjd_obs]) for s in inputs.lamp_sets for f in s.flats)
            stem = f"soxs-mflat_{inputs.arm}_{night_from_mjd(first_mjd)}"
        if sof is not None and night_from_sof_name(sof.name) is None:
            LOGGER.info("SOF name %s does not start with YYYYMMDDTHHMMSS; products are named after it anyway", sof.name)
        root = Path(settings.workspace_root_dir or ".").expanduser()
        if not root.is_absolute():
            root = Path.cwd() / root
        paths = product_paths(stem=stem, root=root.resolve(), instrument=inputs.instrument)
        for folder in (paths.products_dir, paths.qc_dir):  # before any work, so a run cannot fail at its end
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise UserInputError(
                    f"The output folder {folder} cannot be created ({error.strerror or error}). Nothing was written. "
                    "Choose another output directory with -o, or remove or rename what stands in the way."
                ) from None
        return paths

    def _refuse_to_clobber(self, paths: ProductPaths, inputs: VerifiedInputs) -> None:
        existing = paths.existing(s.lamp for s in inputs.lamp_sets)
        if existing and not self.overwrite:
            raise UserInputError(
                f"Products of this recipe already exist: {', '.join(str(p) for p in existing)}. Nothing was changed. "
                "Rerun with -x to overwrite them, or choose another output directory with -o."
            )

    def _prepare(self, frame: FrameFile, inputs: VerifiedInputs, static_mask: np.ndarray | None) -> Prepared:
        if frame.is_prepared:
            prepared = read_prepared(frame.path)
            expected = inputs.detector.prepared_shape(*inputs.binning)
            if prepared.data.shape != expected:
                raise UserInputError(
                    f"{frame.path} has shape {prepared.data.shape} but {inputs.arm} frames at binning "
                    f"{inputs.binning[0]}x{inputs.binning[1]} are {expected}. Give products made for this arm and binning."
                )
            return prepared
        data, uncertainty, mask = prepare_raw(
            read_raw_adu(frame.path),
            detector=inputs.detector,
            binning=inputs.binning,
            gain=inputs.gain,
            ron=inputs.ron,
            static_mask=static_mask,
        )
        return Prepared(data, uncertainty, mask, frame.header, frame.path)

    def _flux_into(self, frame: FrameFile, inputs: VerifiedInputs, static_mask: np.ndarray | None, out: np.ndarray,
                   settings: Settings) -> np.ndarray:
        """Prepare one flat's electrons straight into ``out`` (frame orientation); return its mask."""
        if frame.is_prepared or settings.save_intermediate_products:
            prepared = self._prepare(frame, inputs, static_mask)
            if settings.save_intermediate_products and not frame.is_prepared:
                self._save_prepared(prepared, settings)
            out[...] = prepared.data
            return prepared.mask
        return prepare_flux(read_raw_adu(frame.path), detector=inputs.detector, binning=inputs.binning,
                            gain=inputs.gain, out=out, static_mask=static_mask)

    def _flat_cube(self, frames: tuple[FrameFile, ...], inputs: VerifiedInputs, static_mask: np.ndarray | None,
                   fitted_axis: str, settings: Settings, detrendings: list[Detrending]) -> FlatCube:
        """The frames' science regions in one cube (BA orientation), detrended by ``detrendings`` (one per
        frame, or none) when read.

        Untouched 8/16-bit raw frames are kept as stored, half the memory of float32 or less, and
        converted block by block; other frames are prepared into float32 electrons, NaN where masked.
        """
        detector = inputs.detector
        shape = shape_ba(detector.prepared_shape(*inputs.binning), fitted_axis)
        compact = None if settings.save_intermediate_products else _compact_dtype(frames)
        stored = np.empty((len(frames), *shape), dtype=compact or np.float32)

        def load(i: int) -> None:
            if compact is not None:
                region = science_region(read_raw_adu(frames[i].path), detector=detector, binning=inputs.binning)
                copy_tiled(from_ba(stored[i], fitted_axis), region, casting="safe")
            else:
                mask = self._flux_into(frames[i], inputs, static_mask, from_ba(stored[i], fitted_axis), settings)
                stored[i][to_ba(mask, fitted_axis) | ~np.isfinite(stored[i])] = np.nan

        with ThreadPoolExecutor(max_workers=LOAD_WORKERS) as pool:
            list(pool.map(load, range(len(frames))))
        per_frame = detrendings or [None] * len(frames)
        static_ba = to_ba(static_mask, fitted_axis) if compact is not None and static_mask is not None else None
        combined: dict[int, np.ndarray | None] = {}
        masks = []
        for detrending in per_frame:
            own = None if detrending is None else detrending.mask
            if id(own) not in combined:
                combined[id(own)] = static_ba if own is None else (own if static_ba is None else own | static_ba)
            masks.append(combined[id(own)])
        return FlatCube(
            stored,
            scale=inputs.gain if compact is not None else 1.0,
            offsets=tuple(None if d is None else d.offset for d in per_frame),
            masks=tuple(masks),
            saturation=detector.saturation_adu if compact is not None else None,
        )

    def _save_prepared(self, prepared: Prepared, settings: Settings) -> None:
        root = Path(settings.workspace_root_dir or ".")
        stem = prepared.path.name.removesuffix(".Z").removesuffix(".fits")
        header = prepared.header.copy()
        header["SXSPRE"] = (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()), "UTC timestamp")
        write_hdus(image_hdus(prepared.data, prepared.mask, prepared.uncertainty, header), root / f"{stem}_pre.fits")

    def _calibration(self, frame: FrameFile, inputs: VerifiedInputs, static_mask: np.ndarray | None,
                     fitted_axis: str) -> Calibration:
        prepared = self._prepare(frame, inputs, static_mask)
        exptime = float(frame.header.get(inputs.keywords.exptime, 0.0) or 0.0)
        data, uncertainty, mask = (contiguous(to_ba(image, fitted_axis))
                                   for image in (prepared.data, prepared.uncertainty, prepared.mask))
        return Calibration(data, uncertainty, mask, exptime)

    def _darks(self, inputs: VerifiedInputs, lamp_set: LampSet, static_mask: np.ndarray | None, fitted_axis: str,
               settings: Settings) -> tuple[list[Calibration], list[int], bool]:
        """NIR darks for each flat: (calibrations, index per flat, shared by all flats)."""
        n_flats = len(lamp_set.flats)
        if inputs.master_dark is not None:
            LOGGER.info("Dark: master dark %s subtracted from every flat", inputs.master_dark.path.name)
            return [self._calibration(inputs.master_dark, inputs, static_mask, fitted_axis)], [0] * n_flats, True
        if len(inputs.darks) == n_flats and n_flats > 1:
            combined = self._combined_dark(inputs, static_mask, fitted_axis, settings)
            LOGGER.info("Dark: %d lamp-off/dark frames combined (clipped mean) and subtracted from every flat",
                        len(inputs.darks))
            return [combined], [0] * n_flats, True
        darks = [self._calibration(f, inputs, static_mask, fitted_axis) for f in inputs.darks]
        mjds = np.array([float(f.header[inputs.keywords.mjd_obs]) for f in inputs.darks])
        chosen = [nearest_in_time(float(f.header[inputs.keywords.mjd_obs]), mjds) for f in lamp_set.flats]
        LOGGER.info("Dark: nearest in MJD-OBS for each flat (%d darks for %d flats): %s", len(darks), n_flats,
                    ", ".join(inputs.darks[i].path.name for i in chosen))
        return darks, chosen, len(set(chosen)) == 1

    def _hot_search_dark(self, inputs: VerifiedInputs, lamp_set: LampSet, darks: list[Calibration], dark_index: list[int],
                         shared_dark: bool, static_mask: np.ndarray | None, fitted_axis: str, settings: Settings,
                         ) -> Calibration:
        """The dark in which to look for hot pixels (scaled to the flats' exposure).

        The dark every flat shares; else, when each flat has its nearest dark, the clipped mean of all
        the darks (as in the combined mode: cosmic rays clipped, noise down by √n), or with only two
        the per-pixel lowest of them (a mean of two would keep their cosmic rays).
        """
        if shared_dark:
            return darks[dark_index[0]]
        if len(inputs.darks) >= 3:
            combined = self._combined_dark(inputs, static_mask, fitted_axis, settings)
            LOGGER.info("Hot pixels searched in the clipped mean of the %d darks", len(inputs.darks))
            return combined.scaled(dark_scale(instrument=inputs.instrument, flat_exptime=lamp_set.exptime,
                                              dark_exptime=combined.exptime))
        LOGGER.info("Hot pixels searched in the per-pixel lowest of the %d darks", len(darks))
        return lowest_dark(darks)

    def _combined_dark(self, inputs: VerifiedInputs, static_mask: np.ndarray | None, fitted_axis: str,
                       settings: Settings) -> Calibration:
        """Clipped mean of the lamp-off/dark frames: a cleaner dark than any single one.

        The frames are held once, in a :class:`FlatCube`, and detrended block by block while stacked.
        """
        cube = self._flat_cube(inputs.darks, inputs, static_mask, fitted_axis, settings, [])
        exptimes = [float(frame.header.get(inputs.keywords.exptime, 0.0) or 0.0) for frame in inputs.darks]
        stacked = sigma_clipped_stack(cube, [NoiseModel(ron=inputs.ron)] * cube.n_flats,
                                      sigma=settings.stacked_clipping_sigma,
                                      iterations=settings.stacked_clipping_iterations)
        del cube
        data = np.where(stacked.mask, np.float32(0.0), stacked.data)
        uncertainty = np.where(stacked.mask, np.float32(inputs.ron), stacked.uncertainty)
        return Calibration(data, uncertainty, stacked.mask, float(np.mean(exptimes)))

    def _reduce_lamp(self, lamp_set: LampSet, inputs: VerifiedInputs, settings: Settings,
                     arm: ArmSettings) -> LampResult:
        detector = inputs.detector
        fitted_axis = detector.fitted_axis
        binning_ab = frame_binning_ab(inputs.binning, fitted_axis)
        shape = detector.prepared_shape(*inputs.binning)
        frame_ba = shape_ba(shape, fitted_axis)
        tag = f" [{lamp_set.lamp}]" if lamp_set.lamp else ""
        static_mask = read_bad_pixel_map(inputs.bad_pixel_map.path, shape) if inputs.bad_pixel_map else None

        LOGGER.info("Preparing and detrending %d flats%s", len(lamp_set.flats), tag)
        bias = dark_cal = None
        darks: list[Calibration] = []
        dark_index: list[int] = []
        shared_dark = False
        if inputs.master_bias is not None:
            bias = self._calibration(inputs.master_bias, inputs, static_mask, fitted_axis)
            if inputs.master_dark is not None:
                dark_cal = self._calibration(inputs.master_dark, inputs, static_mask, fitted_axis)
                LOGGER.info("Master dark %s subtracted too, scaled by exposure time", inputs.master_dark.path.name)
        else:
            darks, dark_index, shared_dark = self._darks(inputs, lamp_set, static_mask, fitted_axis, settings)
            darks = [dark.scaled(dark_scale(instrument=inputs.instrument, flat_exptime=lamp_set.exptime,
                                            dark_exptime=dark.exptime)) for dark in darks]
        if bias is not None:
            detrendings = [bias_detrending(bias, ron=inputs.ron, dark=dark_cal, flat_exptime=lamp_set.exptime)]
            detrendings *= len(lamp_set.flats)
        else:
            by_dark = [dark_detrending(dark, ron=inputs.ron, shared=shared_dark) for dark in darks]
            detrendings = [by_dark[index] for index in dark_index]
        noise = [d.noise for d in detrendings]
        cube = self._flat_cube(lamp_set.flats, inputs, static_mask, fitted_axis, settings, detrendings)

        centres = read_order_table(lamp_set.order_table.path)
        if centres.fitted_axis != fitted_axis:
            raise UserInputError(
                f"The order-centre table {lamp_set.order_table.path} traces the orders along {centres.along_axis}, but "
                f"{inputs.arm} orders run along {'y' if fitted_axis == 'x' else 'x'}. Give the table made for this arm."
            )
        centre_bounds = order_bounds(centres, frame_ba, binning_ab, half_width=0.0, limits_binned=False)
        half_width = max(1, arm.centre_order_window // 2 // binning_ab[0])
        band = centre_band_mask(frame_ba, centre_bounds.centre, centre_bounds.valid, half_width)
        first_levels = measure_levels(cube, band)
        if not np.all(np.isfinite(first_levels.levels) & (first_levels.levels > 0)):
            bad = [f.path.name for f, level in zip(lamp_set.flats, first_levels.levels, strict=True)
                   if not (np.isfinite(level) and level > 0)]
            raise UserInputError(
                f"No lamp light was found around the order centres in {', '.join(bad)}. Check that these are lamp-on "
                f"flats and that {lamp_set.order_table.path.name} is the order-centre table of this arm and slit."
            )
        cube = cube.with_levels(first_levels.levels)
        LOGGER.info("Exposure levels (e-): %s", ", ".join(f"{v:.1f}" for v in first_levels.levels))
        sample = band_sample(band)  # the relative levels of the second pass need no more (see band_sample)
        first = sigma_clipped_stack(cube, noise, sigma=settings.stacked_clipping_sigma,
                                    iterations=settings.stacked_clipping_iterations, where=sample)
        relative = ratio_levels(cube, first.data, sample)
        del first
        cube = cube.with_levels(first_levels.levels * relative)
        LOGGER.info("Second pass: relative levels %s", ", ".join(f"{v:.5f}" for v in relative))
        combined = sigma_clipped_stack(cube, noise, sigma=settings.stacked_clipping_sigma,
                                       iterations=settings.stacked_clipping_iterations)
        del cube, detrendings, noise
        LOGGER.info("Stacked: %d values clipped", combined.n_clipped)
        flat, uncertainty, flat_mask = combined.data, combined.uncertainty, combined.mask
        del combined

        # The stack's masked pixels are NaN in its data, which edge detection and the scattered-light fit
        # skip anyway: they are not handed the mask as well (a full-frame gather each).
        LOGGER.info("Detecting order edges%s", tag)
        a_bin = binning_ab[0]
        jh = inputs.arm == "NIR" and "JH" in inputs.slit.upper()
        detections = edges.detect_edges(
            flat,
            centres,
            binning_ab=binning_ab,
            slice_length=max(13, arm.slice_length_for_edge_detection // a_bin),
            slice_width=arm.slice_width_for_edge_detection,
            min_threshold_pct=arm.min_percentage_threshold_for_edge_detection,
            max_threshold_pct=arm.max_percentage_threshold_for_edge_detection,
            min_order=13 if jh else None,
        )
        fit = _fit_edges(detections, arm, binning_ab)
        table = edges.order_location_table(centres, fit, detections, shape_ba=frame_ba, binning_ab=binning_ab)
        bounds = order_bounds(table, frame_ba, binning_ab)
        frame_hot = None
        if bias is not None or darks:  # needs no flat: runs beside the scattered-light fit
            hot_dark = None if not darks else partial(self._hot_search_dark, inputs, lamp_set, darks, dark_index,
                                                      shared_dark, static_mask, fitted_axis, settings)
            frame_hot = self._side_thread.submit(_calibration_hot_pixels, bounds, frame_ba, flat_mask, bias, hot_dark,
                                                 hot_sigma=arm.hot_pixel_clipping_sigma)
        plot_lamp = lamp_set.lamp if len(inputs.lamp_sets) > 1 else ""
        locations_drawn = self._plot("ORD_LOC", plot_lamp, partial(
            plots.order_location_figure, flat, detections, fit, table, binning_ab=binning_ab,
            fitted_axis=fitted_axis, title=f"{inputs.arm}{tag} order edges"))

        model = None
        reading_flat = locations_drawn  # a figure reading the flat: the flat may change only once it is done
        if settings.subtract_background:
            LOGGER.info("Fitting scattered light%s", tag)
            fitted = background.fit_scattered_light(flat, bounds, bspline_deg=settings.bspline_deg,
                                                    gaussian_blur_sigma=settings.gaussian_blur_sigma)
            model = fitted.model
            wait([reading_flat])
            flat -= model
            reading_flat = self._plot("BKGROUND", plot_lamp, partial(
                plots.background_figure, flat, fitted, fitted_axis=fitted_axis, title=f"{inputs.arm}{tag}"))
        data, mask, counts = self._flag_and_fill(flat, uncertainty, flat_mask, bounds, arm,
                                                 frame_hot=None if frame_hot is None else frame_hot.result(),
                                                 reading_flat=reading_flat)
        del flat, flat_mask
        qc = self._lamp_qc(first_levels.ordexp, fit, counts, lamp_set, inputs, arm)
        header = lamp_set.flats[0].header
        return LampResult(lamp_set.lamp, data, uncertainty, mask, table, centres, model, qc, header, detections)

    def _flag_and_fill(self, flat: np.ndarray, uncertainty: np.ndarray, input_mask: np.ndarray, bounds: OrderBounds,
                       arm: ArmSettings, *, frame_hot: np.ndarray | None, reading_flat: Future,
                       ) -> tuple[np.ndarray, np.ndarray, dict]:
        """Flag bad pixels (``frame_hot``: the pixels found hot in the bias or in the darks, see
        :func:`badpixels.calibration_hot_pixels` and :func:`lowest_dark`) and set the inter-order FLUX to 1.0.

        The flat becomes the FLUX in place (one frame less at the recipe's peak of memory) once
        ``reading_flat``, the figure that reads it, is drawn.
        """
        bad = badpixels.find_bad_pixels(
            flat,
            uncertainty,
            bounds,
            low_sensitivity_sigma=arm.low_sensitivity_clipping_sigma,
            hot_sigma=arm.hot_pixel_clipping_sigma,
            dead_limit=arm.dead_pixel_response_limit,
            edge_min_fraction=arm.order_edge_min_flat_fraction,
            input_mask_ba=input_mask,
            frame_hot=frame_hot,
        )
        inside = inside_orders(bounds, flat.shape)
        mask = (input_mask | bad.mask) & inside
        LOGGER.info("Bad pixels newly flagged: %s", ", ".join(f"{k} {v}" for k, v in bad.counts.items()))
        counts: dict[str, float] = dict(badpixels.bad_pixel_qc(bad, mask))
        good_values = flat[inside & ~mask & np.isfinite(flat)]
        counts["INNER ORDER PIX MEAN"] = round(float(np.mean(good_values)), 3)
        counts["INNER ORDER PIX SUM"] = round(float(np.sum(good_values)), 3)
        del good_values
        wait([reading_flat])
        data = flat
        np.copyto(data, np.float32(1.0), where=~inside)
        data[~np.isfinite(data)] = np.float32(1.0)
        return data, mask, counts

    def _lamp_qc(self, ordexp: tuple[float, float, float], fit: edges.EdgeFit, counts: dict, lamp_set: LampSet,
                 inputs: VerifiedInputs, arm: ArmSettings) -> list[QCRow]:
        def row(name: str, value: float, **options: object) -> QCRow:
            return qc_row(name, value, limits=arm.qc_limit(name), **options)

        rows = [row("ORDEXP10", ordexp[0]), row("ORDEXP50", ordexp[1]), row("ORDEXP90", ordexp[2]),
                row("X RES MIN", round(fit.x_res_min, 5)), row("X RES MAX", round(fit.x_res_max, 5)),
                row("X RES SD", round(fit.x_res_sd, 5))]
        names = ["COLDPIX NUM", "COLDPIX FRAC", "INNER ORDER PIX MEAN", "INNER ORDER PIX SUM"]
        if not lamp_set.lamp or len(inputs.lamp_sets) == 1:
            names = ["N LOW SENS", "N ORDER EDGE", *names]
        rows += [row(name, counts[name]) for name in names]
        rows += [row("N SLICES", count, to_header=False, order=int(order))
                 for order, count in zip(fit.orders_kept, fit.slices_used, strict=True)]
        last = lamp_set.flats[-1].header
        kw = inputs.keywords
        detector_temp = kw.detector_temp.get(inputs.arm)
        if detector_temp and detector_temp in last:
            unit = "kelvin" if inputs.arm == "NIR" else "celsius"
            rows.append(row("DETECTOR TEMP", float(last[detector_temp]), to_header=False, unit=unit))
        if kw.common_path_temp and kw.common_path_temp in last:
            rows.append(row("CPATH TEMP", float(last[kw.common_path_temp]), to_header=False))
        return rows

    def _stitch(self, results: list[LampResult], inputs: VerifiedInputs, settings: Settings,
                arm: ArmSettings) -> LampResult:
        d2 = next(r for r in results if r.lamp == "DLAMP")
        qth = next(r for r in results if r.lamp == "QLAMP")
        fitted_axis = inputs.detector.fitted_axis
        binning_ab = frame_binning_ab(inputs.binning, fitted_axis)
        frame_ba = qth.data.shape
        d2_lamp = (np.where(d2.mask, np.nan, d2.data), d2.uncertainty, d2.mask)
        q_lamp = (np.where(qth.mask, np.nan, qth.data), qth.uncertainty, qth.mask)
        lamp_bounds = order_bounds(qth.table, frame_ba, binning_ab)
        try:
            from_d2 = stitching.choose_lamps(d2_lamp, q_lamp, lamp_bounds)
        except ValueError as error:
            raise UserInputError(
                f"The D2 and QTH flats cannot be stitched: {error}. Check that the LAMP,DFLAT and LAMP,QFLAT frames "
                "and their order-centre tables belong together."
            ) from None
        d2_orders = {int(m) for m in lamp_bounds.orders[from_d2]}
        LOGGER.info("Fitting the order edges of the stitched flat: D2 measurements for orders %s, QTH for the rest",
                    sorted(d2_orders))
        detections = stitching.merge_detections(d2.detections, qth.detections, d2_orders)
        fit = _fit_edges(detections, arm, binning_ab)
        table = edges.order_location_table(qth.centres, fit, detections, shape_ba=frame_ba, binning_ab=binning_ab)
        bounds = order_bounds(table, frame_ba, binning_ab)
        stitched = stitching.stitch_lamps(d2_lamp, q_lamp, bounds, np.isin(bounds.orders, list(d2_orders)),
                                          scale_d2_to_qth=arm.scale_d2_to_qth)
        LOGGER.info("Stitched: D2 orders %s, boundary between orders %s, D2 flat divided by %.4f", stitched.d2_orders,
                    stitched.boundary_orders, stitched.scale)
        locations_drawn = self._plot("ORD_LOC", "", partial(
            plots.order_location_figure, stitched.data, detections, fit, table, binning_ab=binning_ab,
            fitted_axis=fitted_axis, title="UVB stitched order edges"))
        data, mask, counts = self._flag_and_fill(stitched.data, stitched.uncertainty, stitched.mask, bounds,
                                                 arm, frame_hot=None, reading_flat=locations_drawn)
        all_flats = LampSet("", tuple(f for s in inputs.lamp_sets for f in s.flats),
                            inputs.lamp_sets[-1].order_table, inputs.lamp_sets[-1].exptime)
        ordexp = tuple(float(r.value) for r in qth.qc if r.name.startswith("ORDEXP"))
        qc = self._lamp_qc(ordexp, fit, counts, all_flats, inputs, arm)
        model = None
        if d2.background is not None and qth.background is not None:
            model = np.where(stitched.from_d2, d2.background / np.float32(stitched.scale), qth.background)
        return LampResult("", data, stitched.uncertainty, mask, table, qth.centres, model, qc, qth.header, detections)

    # ----------------------------------------------------------------------------------- writing
    def _write(self, paths: ProductPaths, inputs: VerifiedInputs, settings: Settings, results: list[LampResult],
               final: LampResult) -> list[ProductRecord]:
        arm = inputs.arm
        fitted_axis = inputs.detector.fitted_axis
        binning_ab = frame_binning_ab(inputs.binning, fitted_axis)
        raw = [f for s in inputs.lamp_sets for f in s.flats]
        categories = [f"{f.header.get(inputs.keywords.dpr_type, 'FLAT')}_{arm}" for f in raw]
        params = settings.param_cards(arm)
        outputs = [(r, r.lamp) for r in results] if len(results) > 1 else []
        outputs.append((final, ""))
        checksums = {path: future.result() for path, future in self._checksums.items()}
        per_lamp: dict[str, list[ProductRecord]] = {}
        for result, lamp in outputs:
            lamp_records = per_lamp.setdefault(lamp, [])
            suffix = f"_{lamp}" if lamp else ""
            flats = [f for s in inputs.lamp_sets if s.lamp == lamp or not lamp for f in s.flats]
            base = min(flats, key=lambda f: float(f.header[inputs.keywords.mjd_obs])).header
            qc_rows = deduplicate(result.qc)
            header = provenance_header(base, inputs=inputs, raw_frames=[f.path for f in flats],
                                       raw_categories=[c for f, c in zip(raw, categories, strict=True) if f in flats],
                                       params=params, pro_catg=f"MASTER_FLAT_{arm}", pro_tech="IMAGE", qc_rows=qc_rows,
                                       checksums=checksums)
            background_written = None
            if result.background is not None:  # written on the side thread while this one writes the rest
                bkg_header = header.copy()
                bkg_header["HIERARCH ESO PRO CATG"] = f"FLAT_BKGROUND_{arm}"
                bkg_header["EXTNAME"] = "FLUX"
                bkg = HDU(bkg_header, from_ba(result.background, fitted_axis))  # converted while written
                background_written = self._side_thread.submit(write_hdus, [bkg], paths.background(lamp))
            flux, mask, errs = (from_ba(image, fitted_axis) for image in (result.data, result.mask, result.uncertainty))
            flat_path = write_hdus(image_hdus(flux, mask, errs, header), paths.master_flat(lamp))
            lamp_records.append(
                ProductRecord(f"MFLAT{suffix}", flat_path, "FITS", "PROD", f"{arm} master spectroscopic flat frame")
            )
            table_header = header.copy()
            for keyword in (inputs.keywords.read_speed, inputs.keywords.conad, inputs.keywords.gain, inputs.keywords.ron):
                table_header.remove(keyword)
            table_header["HIERARCH ESO PRO CATG"] = f"ORDER_TAB_{arm}"
            table_header["HIERARCH ESO PRO TECH"] = "ECHELLE,SLIT"
            table_header["EXTNAME"] = "FLUX"
            table = result.table.with_edges(result.table.edge_low, result.table.edge_up, header=table_header)
            table_path = write_hdus(to_hdus(table, trace_binning=binning_ab), paths.order_table(lamp))
            lamp_records.append(ProductRecord(f"ORDER_LOC{suffix}", table_path, "FITS", "PROD",
                                         "table of coefficients from polynomial fits to order locations"))
            if background_written is not None:
                lamp_records.append(ProductRecord(f"BKGROUND{suffix}", background_written.result(), "FITS", "QC",
                                             "modelled scatter background light image (removed from master flat)"))
        records: list[ProductRecord] = []
        written_plots = self._finish_plots()
        for lamp, fits_records in per_lamp.items():
            suffix = f"_{lamp}" if lamp else ""
            records += fits_records
            records += [ProductRecord(f"{plot.product_label}{suffix}", plot.path, "PDF", "QC", plot.description)
                        for plot in written_plots if plot.lamp == lamp]
        qc_path = write_text(qc_csv(deduplicate(final.qc), obs_date=str(final.header.get("DATE-OBS", ""))),
                             paths.qc_table())
        records.append(ProductRecord("QC_TABLE", qc_path, "CSV", "QC", "QC metrics of this run"))
        failures = failed(deduplicate(final.qc))
        if failures:
            LOGGER.warning("QC outside the acceptable limits: %s", ", ".join(
                f"{r.name} = {r.value:g} (limits {r.limits})" for r in failures))
        return records

    def _plot(self, name: str, lamp: str, describe: Callable[[], plots.OrderLocationFigure | plots.BackgroundFigure],
              ) -> Future:
        """Describe and draw a QC figure (``ORD_LOC`` or ``BKGROUND``) of product lamp tag ``lamp`` on the side
        thread, while the steps go on, into a temporary file renamed into place with the products.

        ``describe`` (arguments bound, not a closure over variables that change) may only read arrays
        that no step changes before the returned future is done.
        """
        if name == "ORD_LOC":
            path = self._product_paths.order_location_plot(lamp)
            label, description = "ORDER_LOC_RES", "visualisation of goodness of order edge fitting"
        else:
            path = self._product_paths.background_plot(lamp)
            label, description = "BKGROUND", "Fitted intra-order image background"
        temporary = temporary_path(path)
        drawn = self._side_thread.submit(_draw, describe, temporary)
        self._plots.append(PendingPlot(lamp, path, temporary, label, description, drawn))
        return drawn

    def _finish_plots(self) -> list[PendingPlot]:
        """Wait for the QC figures and rename them into place; a figure that failed is logged, not fatal."""
        written = []
        for plot in self._plots:
            error = plot.drawn.exception()
            if error is None:
                commit(plot.temporary, plot.path)
                written.append(plot)
            else:
                LOGGER.warning("QC plot %s was not written: %s", plot.path.name, error)
                _remove(plot.temporary)
        self._plots = []
        return written

    def _discard_plots(self) -> None:
        """Stop drawing and remove the figures of a run that failed before its products were written."""
        for plot in self._plots:
            plot.drawn.cancel()
        wait([plot.drawn for plot in self._plots])
        for plot in self._plots:
            _remove(plot.temporary)
        self._plots = []

    def _write_log(self, path: Path, started: float) -> None:
        text = self.log_buffer.getvalue()
        text += f"Recipe Run Time: {time.monotonic() - started:.1f}s\n"
        text += f"Recipe Command: {self.command}\n"
        write_text(text, path)


def _draw(describe: Callable[[], plots.OrderLocationFigure | plots.BackgroundFigure], temporary: Path) -> None:
    """Describe a QC figure and draw it into ``temporary`` (on the side thread)."""
    temporary.parent.mkdir(parents=True, exist_ok=True)
    plots.render(describe(), temporary)


def _calibration_hot_pixels(bounds: OrderBounds, frame_ba: tuple[int, int], input_mask: np.ndarray,
                            bias: Calibration | None, dark: Callable[[], Calibration] | None, *,
                            hot_sigma: float) -> np.ndarray:
    """:func:`badpixels.calibration_hot_pixels` in ``bias`` and in the dark ``dark()`` makes (on the side thread)."""
    dark_frame = None if dark is None else dark()
    return badpixels.calibration_hot_pixels(
        bounds, frame_ba, hot_sigma=hot_sigma, input_mask_ba=input_mask,
        dark_ba=None if dark_frame is None else dark_frame.data,
        dark_err_ba=None if dark_frame is None else dark_frame.uncertainty,
        bias_ba=None if bias is None else bias.data, bias_err_ba=None if bias is None else bias.uncertainty)


def _remove(path: Path) -> None:
    """Delete ``path`` if it exists."""
    with contextlib.suppress(OSError):
        os.unlink(path)


def _compact_dtype(frames: tuple[FrameFile, ...]) -> np.dtype | None:
    """The integer type every frame's raw image reads as, if they all share one of at most 16 bits
    and are read unscaled (no BSCALE, no BLANK, BZERO only as the unsigned-integer offset)."""
    kinds = set()
    for frame in frames:
        header = frame.header
        if frame.is_prepared or "BLANK" in header or float(header.get("BSCALE", 1)) != 1:
            return None
        bitpix, bzero = int(header.get("BITPIX", 0)), float(header.get("BZERO", 0))
        kinds.add((bitpix, bzero))
    if len(kinds) != 1:
        return None
    return {(8, 0.0): np.dtype(np.uint8), (16, 0.0): np.dtype(np.int16), (16, 32768.0): np.dtype(np.uint16)}.get(kinds.pop())


def _fit_edges(detections: edges.EdgeDetections, arm: ArmSettings, binning_ab: tuple[int, int]) -> edges.EdgeFit:
    """The global edge fits with the arm's degrees and clipping, failing over the X RES SD limit."""
    limit = arm.qc_limit("X RES SD")
    return edges.fit_edges(
        detections,
        order_deg=arm.order_deg,
        disp_axis_deg=arm.disp_axis_deg,
        clipping_sigma=arm.poly_fitting_residual_clipping_sigma,
        clipping_iterations=arm.poly_clipping_iteration_limit,
        binning_ab=binning_ab,
        max_residual_sd=None if limit is None else limit[1],
        log=LOGGER.info,
    )


def qc_csv(rows: list[QCRow], *, obs_date: str) -> str:
    """The QC table as CSV (spec §8.1 columns)."""
    reduction = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    lines = ["soxspipe_recipe,qc_name,qc_value,qc_unit,qc_comment,obs_date_utc,reduction_date_utc,to_header,qc_order,"
             "qc_flag,qc_value_min,qc_value_max"]
    for row in sorted(rows, key=lambda r: (r.name, r.order)):
        low, high = row.limits if row.limits else ("", "")
        lines.append(f'soxs-mflat,{row.name},{row.value:.6g},{row.unit},"{row.comment}",{obs_date},{reduction},'
                     f"{row.to_header},{row.order},{row.flag},{low},{high}")
    return "\n".join(lines) + "\n"
