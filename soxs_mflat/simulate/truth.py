"""Ground truth of a simulated set: computing it, writing it, and reading it back for the scorer.

Every image is in prepared-frame orientation and at the set's binning; ``docs/simulator.md``
describes each file.

The truth signal is what a perfect master flat would be up to one global scale: the direct lamp
light times the pixel response, normalised to a median of 1 over the central half of every slit.
For X-shooter UVB the D2 lamp supplies the pixels nearest to its orders (21–24) and the QTH lamp the
rest, the D2 part scaled so that its order 21 matches QTH order 20 (where the two lamps cross).

The relative noise map is the 1σ noise of a perfect master built from the set: the mean of the
flats, each detrended (minus the master bias, or minus its own lamp-off frame on NIR) and divided by
its lamp level. Per flat the variance is the Poisson variance of lamp + scattered + thermal + dark +
hot-pixel charge, plus read noise and ADU quantisation (and the same again for the lamp-off frame);
the master bias adds its own variance, common to all flats.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table

from soxs_mflat.geometry import Poly2D
from soxs_mflat.instruments import INSTRUME_HEADER
from soxs_mflat.order_table import OrderTable
from soxs_mflat.simulate.detector import BIAS_DARK_TIME
from soxs_mflat.simulate.headers import N_BIAS, START, HeaderContext, put
from soxs_mflat.simulate.render import FrameGeometry
from soxs_mflat.simulate.scene import LampModel, Scene
from soxs_mflat.simulate.tables import table_header, write_order_table

TRUTH_JSON = "truth.json"
SIGNAL = "signal.fits"
SCATTER = "scatter.fits"
RESPONSE = "response.fits"
NOISE = "noise_rel.fits"
DEFECTS = "defects.fits"
EDGES = "edges.fits"
ORDER_TABLE = "order_table.fits"
LAMPS = "lamps.fits"
"""Per-lamp signal, scatter and noise (two-lamp X-shooter UVB sets only)."""
DEFECT_KINDS = ("dead", "hot", "low_sensitivity", "dust")
"""Defect kinds, each an image extension of ``defects.fits`` (EXTNAME upper-cased)."""
NOISE_SIGNAL_FLOOR = 0.01
"""The relative noise is NaN where the truth signal is below this (between the orders)."""


@dataclass(frozen=True)
class _LampTruth:
    signal: np.ndarray
    scatter: np.ndarray
    variance: np.ndarray


def write_truth(
    truth_dir: Path,
    scene: Scene,
    context: HeaderContext,
    *,
    seed: int,
    raw_flats: list[str],
    lamp_off: list[str],
    bias_quality: np.ndarray | None = None,
    centre_tables: list[dict] | None = None,
) -> None:
    """Compute and write every truth file of a set into ``truth_dir``.

    ``bias_quality`` is the master bias's QUAL and ``centre_tables`` says which orders each
    order-centre table lists; both are recorded for varied sets only (with the variation itself),
    so that a nominal set's truth stays as it always was.
    """
    geometry = scene.geometry
    per_lamp = [_lamp_truth(scene, model, context) for model in scene.lamps]
    order_map = geometry.to_frame(geometry.in_slit(inset=_centre_inset(geometry)))
    scales = [1.0] * len(per_lamp)
    if len(per_lamp) == 1:
        stitched = per_lamp[0]
    else:
        blue, red = (model.lamp.bright_orders for model in scene.lamps)
        blue_level = np.median(per_lamp[0].signal[order_map == min(blue)])
        scales[0] = float(np.median(per_lamp[1].signal[order_map == max(red)]) / blue_level)
        shape = geometry.frame_shape
        stitched = _LampTruth(np.zeros(shape), np.zeros(shape), np.zeros(shape))
        for model, truth, scale in zip(scene.lamps, per_lamp, scales, strict=True):
            where = _territory(geometry, model.lamp.bright_orders)
            stitched.signal[where] = scale * truth.signal[where]
            stitched.scatter[where] = scale * truth.scatter[where]
            stitched.variance[where] = scale**2 * truth.variance[where]
    norm = float(np.median(stitched.signal[order_map > 0]))

    header = fits.Header()
    put(header, "INSTRUME", INSTRUME_HEADER[context.spec.instrument])
    put(header, "ESO SEQ ARM", context.arm)
    put(header, "BINX", context.binning[0], "Binning along x of the set")
    put(header, "BINY", context.binning[1], "Binning along y of the set")
    signal, scatter, relative = _normalised(stitched, norm)
    images = (
        (SIGNAL, signal, "noiseless normalised in-order lamp signal", "normalised"),
        (SCATTER, scatter, "scattered light, units of the signal", "normalised"),
        (RESPONSE, scene.defects.response, "pixel response with dust and defects", ""),
        (NOISE, relative, "1 sigma relative noise of a perfect master", "fraction"),
    )
    for name, data, content, unit in images:
        hdu = fits.PrimaryHDU(np.asarray(data, dtype=np.float32), header=header.copy())
        hdu.header["CONTENT"] = content
        hdu.header["BUNIT"] = unit
        hdu.writeto(truth_dir / name, overwrite=True)
    if len(per_lamp) > 1:
        hdus = [fits.PrimaryHDU(header=header.copy())]
        for model, truth in zip(scene.lamps, per_lamp, strict=True):
            own = np.isin(order_map, model.lamp.bright_orders)
            planes = _normalised(truth, float(np.median(truth.signal[own])))
            for kind, data in zip(("SIGNAL", "SCATTER", "NOISE"), planes, strict=True):
                hdus.append(fits.ImageHDU(np.asarray(data, dtype=np.float32), name=f"{kind}_{model.lamp.name}"))
        fits.HDUList(hdus).writeto(truth_dir / LAMPS, overwrite=True)
    defects = scene.defects
    masks = {"dead": defects.dead, "hot": defects.hot, "low_sensitivity": defects.low_sensitivity, "dust": defects.dust}
    hdus = [fits.PrimaryHDU(header=header.copy())]
    hdus += [fits.ImageHDU(masks[kind].astype(np.uint8), name=kind.upper()) for kind in DEFECT_KINDS]
    hdus.append(fits.ImageHDU(defects.hot_rate.astype(np.float32), name="HOT_RATE"))
    if not scene.variation.is_nominal:
        hdus += _varied_defects(scene, context, bias_quality)
    fits.HDUList(hdus).writeto(truth_dir / DEFECTS, overwrite=True)
    _write_traces(truth_dir, scene, context)
    meta = _metadata(scene, context, scales, norm, seed=seed)
    meta["raw_flats"] = raw_flats
    meta["lamp_off"] = lamp_off
    if not scene.variation.is_nominal:
        meta["variation"] = scene.variation.to_dict()
        meta["centre_tables"] = centre_tables or []
        saturation = scene.near_saturation
        meta["near_saturation"] = None if saturation is None else {
            "lamp": saturation.lamp, "order": saturation.order, "factor": saturation.factor, "peak_adu": saturation.peak_adu}
    (truth_dir / TRUTH_JSON).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")


def _varied_defects(scene: Scene, context: HeaderContext, bias_quality: np.ndarray | None) -> list[fits.ImageHDU]:
    """Extensions only varied sets have: the effective defect factor, traps, master-bias-only pixels, its
    QUAL, and the noise against which a hot pixel is detected.

    ``DEFECT_FACTOR`` is what a perfect flat shows at each pixel relative to the smooth response:
    the dead/low-sensitivity factor, and at traps and their trails the ratio of the charge a flat of
    nominal level records to the charge that arrived (from the lamp that supplies the truth there).
    ``DETECT_SIGMA`` is the 1σ noise (e⁻) of a pixel in the set's own detrending frames: the mean of
    the lamp-off frames on NIR (read noise, thermal light, dark current and hot-pixel charge), the
    master bias on UVB/VIS (read noise and hot-pixel charge).
    """
    defects, geometry = scene.defects, scene.geometry
    factor = defects.defect_factor.copy()
    trap = np.zeros(factor.shape, dtype=np.uint8)
    if defects.traps is not None:
        trap[defects.traps.footprint(factor.shape)] = 1
        trap.reshape(-1)[defects.traps.pixel] = 2
        ratio = np.ones(factor.shape)
        for model in scene.lamps:
            expected = model.expected(defects.response, 0) / model.flicker[0]
            with np.errstate(divide="ignore", invalid="ignore"):
                lamp_ratio = np.where(expected > 0, defects.traps.apply(expected) / expected, 1.0)
            where = _territory(geometry, model.lamp.bright_orders) if model.lamp.bright_orders else np.ones(factor.shape, bool)
            ratio[where] = lamp_ratio[where]
        factor *= ratio
    bias_only = np.zeros(factor.shape, dtype=np.uint8)
    if defects.bias_offset is not None:
        bias_only[defects.bias_offset != 0] = 1
        bias_only[defects.bias_flagged] = 2
    quality = np.zeros(factor.shape, dtype=np.uint8) if bias_quality is None else bias_quality.astype(np.uint8)
    if context.arm == "NIR":
        model = scene.lamps[0]
        charge = (scene.thermal_rate + defects.hot_rate) * model.exptime
        detect_sigma = np.sqrt((context.ron**2 + charge) / model.flicker.size)
    else:
        detect_sigma = np.sqrt((context.ron**2 + defects.hot_rate * BIAS_DARK_TIME) / N_BIAS)
    return [
        fits.ImageHDU(factor.astype(np.float32), name="DEFECT_FACTOR"),
        fits.ImageHDU(trap, name="TRAP"),
        fits.ImageHDU(bias_only, name="BIAS_ONLY"),
        fits.ImageHDU(quality, name="BIAS_QUAL"),
        fits.ImageHDU(detect_sigma.astype(np.float32), name="DETECT_SIGMA"),
    ]


def _normalised(truth: _LampTruth, norm: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Signal and scatter divided by ``norm``, and the relative noise (NaN where the signal is faint)."""
    signal = truth.signal / norm
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = np.sqrt(truth.variance) / truth.signal
    relative[signal < NOISE_SIGNAL_FLOOR] = np.nan
    return signal, truth.scatter / norm, relative


def _lamp_truth(scene: Scene, model: LampModel, context: HeaderContext) -> _LampTruth:
    """Signal, scatter and master-flat variance of one lamp, in units of its per-flat light level."""
    response = scene.defects.response
    signal = model.illumination * response
    scatter = model.scatter * response
    additive = scene.additive(model.exptime)
    read = context.ron**2 + context.gain**2 / 12.0
    if context.arm == "NIR":
        additive, read = 2.0 * additive, 2.0 * read
    n = model.flicker.size
    per_unit = model.electrons_per_unit
    inverse = float(np.sum(1.0 / model.flicker))
    inverse_sq = float(np.sum(1.0 / model.flicker**2))
    variance = ((signal + scatter) * inverse / per_unit + (additive + read) * inverse_sq / per_unit**2) / n**2
    if context.arm != "NIR":
        bias_variance = (context.ron**2 + scene.defects.hot_rate * BIAS_DARK_TIME) / N_BIAS
        variance = variance + bias_variance * (inverse / (n * per_unit)) ** 2
    return _LampTruth(signal, scatter, variance)


def _centre_inset(geometry: FrameGeometry) -> float:
    """Inset (frame px) that keeps the central half of the narrowest slit."""
    layout = geometry.layout
    return 0.25 * float(np.min(layout.height(layout.orders, layout.b_length / 2))) / geometry.a_bin


def _territory(geometry: FrameGeometry, orders: tuple[int, ...]) -> np.ndarray:
    """Prepared-frame mask of pixels nearer (along A) to the centre of one of ``orders`` than to any other."""
    layout = geometry.layout
    b_frame = np.arange(geometry.n_b)
    a = np.arange(geometry.n_a)[None, :]
    best = np.full((geometry.n_b, geometry.n_a), np.inf)
    owned = np.zeros((geometry.n_b, geometry.n_a), dtype=bool)
    for order in layout.orders:
        distance = np.abs(a - layout.centre.in_frame(int(order), b_frame, geometry.a_bin, geometry.b_bin)[:, None])
        closer = distance < best
        best = np.where(closer, distance, best)
        owned = np.where(closer, int(order) in orders, owned)
    return geometry.to_frame(owned)


def _write_traces(truth_dir: Path, scene: Scene, context: HeaderContext) -> None:
    """Per-pixel true traces (``edges.fits``) and the true order table (``order_table.fits``)."""
    layout, geometry = scene.layout, scene.geometry
    columns: dict[str, list[np.ndarray]] = {"order": [], "b": [], "centre": [], "edge_low": [], "edge_up": []}
    b_min, b_max = [], []
    for index, order in enumerate(layout.orders):
        rows = geometry.true_rows(index)
        low, up = geometry.edges(int(order), rows)
        columns["order"].append(np.full(rows.size, order, dtype=np.int16))
        columns["b"].append(rows.astype(np.int32))
        columns["centre"].append(layout.centre.in_frame(int(order), rows, geometry.a_bin, geometry.b_bin))
        columns["edge_low"].append(low)
        columns["edge_up"].append(up)
        b_min.append(float(rows[0]) if rows.size else 0.0)
        b_max.append(float(rows[-1] + 1) if rows.size else 0.0)
    table = Table({name: np.concatenate(values) for name, values in columns.items()})
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU(table, name="EDGES")]).writeto(truth_dir / EDGES, overwrite=True)

    kw = context.keywords
    header = context.order_table(moment=START, table_object="TRUTH")
    put(header, kw.binx, context.binning[0], "Binning of the frame along X")
    put(header, kw.biny, context.binning[1], "Binning of the frame along Y")
    std = np.zeros_like(layout.centre.coeffs)
    std[0, 0] = geometry.psf.sigma
    centres = [
        layout.centre(order, np.arange(start, stop))
        for order, start, stop in zip(layout.orders, layout.b_start, layout.b_stop, strict=True)
    ]
    true_table = OrderTable(
        fitted_axis=layout.detector.fitted_axis,
        orders=layout.orders.copy(),
        b_min=np.asarray(b_min),
        b_max=np.asarray(b_max),
        a_min=np.array([values.min() if values.size else np.nan for values in centres]),
        a_max=np.array([values.max() if values.size else np.nan for values in centres]),
        centre=layout.centre,
        std=Poly2D(std),
        edge_low=layout.edge_low,
        edge_up=layout.edge_up,
        header=table_header(header),
    )
    write_order_table(true_table, truth_dir / ORDER_TABLE, trace_binning=(geometry.a_bin, geometry.b_bin))


def _metadata(scene: Scene, context: HeaderContext, scales: list[float], norm: float, *, seed: int) -> dict:
    """Everything about the set that is not an image (``truth.json``)."""
    layout, geometry, spec = scene.layout, scene.geometry, scene.layout.spec
    extents = []
    for index, order in enumerate(layout.orders):
        rows = geometry.true_rows(index)
        lamp = next((m.lamp.name for m in scene.lamps if int(order) in m.lamp.bright_orders), scene.lamps[0].lamp.name)
        extents.append(
            {
                "order": int(order),
                "b_start_unbinned": float(layout.b_start[index]),
                "b_stop_unbinned": float(layout.b_stop[index]),
                "b_first_frame": int(rows[0]) if rows.size else None,
                "b_last_frame": int(rows[-1]) if rows.size else None,
                "slit_height_frame_px": float(layout.height(order, layout.b_length / 2) / geometry.a_bin),
                "lamp": lamp,
            }
        )
    scatter = scene.scatter_model
    defects = scene.defects
    return {
        "format_version": 1,
        "instrument": spec.instrument,
        "arm": spec.arm,
        "binning": list(context.binning),
        "a_bin": geometry.a_bin,
        "b_bin": geometry.b_bin,
        "frame_shape": list(geometry.frame_shape),
        "fitted_axis": layout.detector.fitted_axis,
        "along_axis": layout.detector.along_axis,
        "orders": [int(order) for order in layout.orders],
        "order_extents": extents,
        "polynomials_unbinned": {
            name: getattr(layout, name).coeffs.tolist() for name in ("centre", "edge_low", "edge_up", "height")
        },
        "slit_arcsec": spec.slit_arcsec,
        "pixel_scale_arcsec": spec.pixel_scale,
        "psf_sigma_unbinned": geometry.psf.sigma,
        "psf_sigma_frame": geometry.sigma,
        "lamps": [
            {
                "name": model.lamp.name,
                "dpr_type": model.lamp.dpr_type,
                "exptime": model.exptime,
                "n_flats": int(model.flicker.size),
                "flicker": model.flicker.tolist(),
                "peak_electrons": spec.peak_electrons,
                "electrons_per_unit_signal": norm * model.electrons_per_unit / scale,
                "stitch_orders": list(model.lamp.bright_orders),
                "stitch_scale": scale,
            }
            for model, scale in zip(scene.lamps, scales, strict=True)
        ],
        "lamp_groups": {m.lamp.name: list(m.lamp.bright_orders) for m in scene.lamps if m.lamp.bright_orders},
        "lamp_file": LAMPS if len(scene.lamps) > 1 else None,
        "normalisation": "signal = lamp light x response / its median over the central half of every slit",
        "gain": context.gain,
        "ron": context.ron,
        "bias_adu": spec.bias_adu,
        "n_bias": N_BIAS if context.arm != "NIR" else 0,
        "bias_dark_time": BIAS_DARK_TIME,
        "dark_rate": spec.dark_rate,
        "thermal_rate": spec.thermal_rate,
        "thermal_order_rate": spec.thermal_order_rate,
        "scattered_light": {"fractions": list(scatter.fractions), "sigmas_unbinned": list(scatter.sigmas)},
        "defect_counts": {kind: int(getattr(defects, kind).sum()) for kind in DEFECT_KINDS},
        "seed": seed,
    }


@dataclass(frozen=True)
class Truth:
    """A truth directory, read back."""

    directory: Path
    meta: dict

    @classmethod
    def read(cls, directory: Path) -> Truth:
        """Read ``truth.json`` of ``directory``; images are loaded on demand."""
        directory = Path(directory)
        return cls(directory, json.loads((directory / TRUTH_JSON).read_text()))

    def image(self, name: str) -> np.ndarray:
        """A float64 truth image by file name."""
        return fits.getdata(self.directory / name).astype(np.float64)

    def defects(self) -> dict[str, np.ndarray]:
        """Boolean mask of each defect kind."""
        with fits.open(self.directory / DEFECTS) as hdul:
            return {kind: hdul[kind.upper()].data.astype(bool) for kind in DEFECT_KINDS}

    def optional_defect(self, name: str) -> np.ndarray | None:
        """An extension of ``defects.fits`` that only varied sets have (``DEFECT_FACTOR``, ``TRAP``,
        ``BIAS_ONLY``, ``BIAS_QUAL``, ``DETECT_SIGMA``), or None."""
        with fits.open(self.directory / DEFECTS) as hdul:
            return np.asarray(hdul[name].data) if name in hdul else None

    def hot_rate(self) -> np.ndarray:
        """Dark-current excess (e⁻/s) of the hot pixels, zero elsewhere."""
        with fits.open(self.directory / DEFECTS) as hdul:
            return hdul["HOT_RATE"].data.astype(np.float64)

    def lamp_planes(self) -> dict[str, dict[str, np.ndarray]]:
        """Per-lamp ``signal``, ``scatter`` and ``noise`` images of a two-lamp set (empty otherwise)."""
        if not self.meta.get("lamp_file"):
            return {}
        planes: dict[str, dict[str, np.ndarray]] = {}
        with fits.open(self.directory / self.meta["lamp_file"]) as hdul:
            for lamp in self.meta["lamp_groups"]:
                planes[lamp] = {
                    kind.lower(): hdul[f"{kind}_{lamp}"].data.astype(np.float64) for kind in ("SIGNAL", "SCATTER", "NOISE")
                }
        return planes

    def edges(self) -> Table:
        """Per-pixel true traces: columns ``order``, ``b``, ``centre``, ``edge_low``, ``edge_up``."""
        return Table.read(self.directory / EDGES, hdu="EDGES")

    @property
    def binning(self) -> tuple[int, int]:
        """(a_bin, b_bin): binning along the fitted axis A and along the orders."""
        return int(self.meta["a_bin"]), int(self.meta["b_bin"])

    @property
    def dispersion_axis(self) -> str:
        """``"x"`` when the orders run along the rows (axis A = x)."""
        return self.meta["fitted_axis"]
