"""The noiseless scene of a set: lamp light, scattered light, thermal glow and the detector response.

Everything is in prepared-frame orientation, at the set's binning. A lamp's expected electrons in
one flat are ``electrons_per_unit · flicker · (illumination + scatter) · response`` plus the
additive thermal, dark and hot-pixel charge; the raw frames are noisy realisations of that.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from soxs_mflat.simulate.arms import Lamp, LampSpectrum
from soxs_mflat.simulate.defects import DetectorDefects, make_defects
from soxs_mflat.simulate.detector import vignetting
from soxs_mflat.simulate.layout import ArmLayout, build_layout
from soxs_mflat.simulate.psf import PsfModel
from soxs_mflat.simulate.render import FrameGeometry, ScatterModel, frame_geometry, lamp_level
from soxs_mflat.simulate.variation import Variation

FLICKER_RMS = 0.02
"""RMS of the lamp-level change from flat to flat (clipped at ±5 %)."""
THERMAL_ORDER_STEP = 3.0
"""Factor by which the thermal light through the slit drops from one order to the next bluer one."""
FULL_SCALE_ADU = 65535.0
"""ADC range of the raw frames (uint16)."""
BRIGHTEST_ORDERS = 3
"""The order brought near saturation is one of this many brightest orders of its lamp."""
CONTRAST_POWER = (0.3, 3.0)
"""Limits of the power applied to a lamp spectrum to reach a requested order contrast."""


@dataclass(frozen=True)
class NearSaturation:
    """The order brightened towards saturation: its lamp, order, extra light factor and peak (ADU)."""

    lamp: str
    order: int
    factor: float
    peak_adu: float


@dataclass(frozen=True)
class LampModel:
    """Noiseless model of one lamp's flats.

    ``illumination`` and ``scatter`` are the direct and scattered lamp light before the pixel
    response, in units where ``electrons_per_unit`` converts them to electrons in one flat;
    ``flicker`` is each flat's relative lamp level.
    """

    lamp: Lamp
    illumination: np.ndarray
    scatter: np.ndarray
    electrons_per_unit: float
    exptime: float
    flicker: np.ndarray

    def expected(self, response: np.ndarray, index: int) -> np.ndarray:
        """Expected lamp electrons (direct + scattered, through the response) of flat ``index``."""
        return self.electrons_per_unit * self.flicker[index] * (self.illumination + self.scatter) * response


@dataclass(frozen=True)
class Scene:
    """Everything noiseless about a set."""

    layout: ArmLayout
    geometry: FrameGeometry
    defects: DetectorDefects
    lamps: tuple[LampModel, ...]
    thermal_rate: np.ndarray
    """Thermal light through the response plus dark current (e⁻/s/px); zero for the CCD arms."""
    variation: Variation
    scatter_model: ScatterModel
    near_saturation: NearSaturation | None = None

    def additive(self, exptime: float) -> np.ndarray:
        """Lamp-independent charge of one exposure: thermal, dark current and hot pixels (e⁻)."""
        return (self.thermal_rate + self.defects.hot_rate) * exptime


def build_scene(
    instrument: str,
    arm: str,
    binning: tuple[int, int],
    nflats: int,
    *,
    defects_rng: np.random.Generator,
    lamp_rng: np.random.Generator,
    variation: Variation | None = None,
    extra_rng: np.random.Generator | None = None,
) -> Scene:
    """Lay out the orders, draw the detector and render every lamp's light.

    ``extra_rng`` (varied sets only) draws what the nominal design does not have: more defect
    morphologies and which order is brought near saturation.
    """
    variation = variation or Variation.nominal()
    layout = build_layout(instrument, arm, variation=variation)
    geometry = frame_geometry(layout, binning, PsfModel.from_variation(layout.spec.psf_sigma, variation))
    defects_extra, saturation_rng = extra_rng.spawn(2) if extra_rng is not None else (None, None)
    defects = make_defects(geometry.frame_shape, defects_rng, binning=binning, variation=variation, extra_rng=defects_extra,
                           trail_step=_transfer_step(layout.detector.rotation_k), ccd=arm != "NIR")
    vignette_ba = geometry.from_frame(vignetting(geometry.frame_shape))
    in_slit = geometry.to_frame(geometry.in_slit()) > 0
    scatter_model = ScatterModel(fractions=variation.scatter_fractions, sigmas=variation.scatter_sigmas,
                                 ghost_fraction=variation.ghost_fraction, ghost_offset=variation.ghost_offset,
                                 ghost_sigma=variation.ghost_sigma)
    lamps = []
    for lamp in layout.spec.lamps:
        spectrum = _with_contrast(lamp.spectrum, layout, lamp, variation.order_contrast)
        image_ba = geometry.light(lamp_level(layout, spectrum)) * vignette_ba
        illumination = geometry.to_frame(image_ba)
        lamps.append(
            LampModel(
                lamp=lamp,
                illumination=illumination,
                scatter=geometry.to_frame(scatter_model(image_ba, a_bin=geometry.a_bin, b_bin=geometry.b_bin)),
                electrons_per_unit=layout.spec.peak_electrons * variation.brightness
                / float(np.percentile(illumination[in_slit], 99.9)),
                exptime=lamp.exptime / (binning[0] * binning[1]),
                flicker=1.0 + np.clip(FLICKER_RMS * lamp_rng.standard_normal(nflats), -0.05, 0.05),
            )
        )
    thermal = _thermal_light(layout, geometry) * defects.response + layout.spec.dark_rate
    scene = Scene(layout, geometry, defects, tuple(lamps), thermal, variation, scatter_model)
    if saturation_rng is not None and variation.saturated_order_peak > 0:
        scene = _near_saturation(scene, saturation_rng, vignette_ba)
    return scene


def _transfer_step(rotation_k: int) -> tuple[int, int]:
    """(row, column) step in the prepared frame from a raw pixel to the one read after it (next raw row)."""
    probe = np.zeros((3, 3))
    probe[1, 1], probe[2, 1] = 1.0, 2.0
    turned = np.rot90(probe, rotation_k)
    first, second = (np.argwhere(turned == value)[0] for value in (1.0, 2.0))
    return int(second[0] - first[0]), int(second[1] - first[1])


def _with_contrast(spectrum: LampSpectrum, layout: ArmLayout, lamp: Lamp, contrast: float | None) -> Callable:
    """The lamp spectrum raised to the power that makes its brightest/faintest order ratio ``contrast``.

    The natural ratio is measured at the middle of each order the lamp serves (all orders for a
    single lamp); the power is kept within :data:`CONTRAST_POWER`.
    """
    if contrast is None:
        return spectrum
    orders = np.asarray(lamp.bright_orders or layout.orders)
    levels = spectrum(layout.wavelength(orders, np.full(orders.size, layout.b_length / 2.0)))
    natural = float(levels.max() / levels.min())
    power = float(np.clip(np.log(contrast) / np.log(max(natural, 1.01)), *CONTRAST_POWER))

    def steepened(wavelength_nm: np.ndarray) -> np.ndarray:
        return spectrum(wavelength_nm) ** power

    return steepened


def _near_saturation(scene: Scene, rng: np.random.Generator, vignette_ba: np.ndarray) -> Scene:
    """Brighten one of the brightest orders of one lamp until its brightest pixel reaches the requested fraction
    of the ADC range (as when a flat's exposure is set by its brightest order).

    The extra light is the order's own image (and its scattered light) times a factor chosen so that
    the brightest non-hot pixel of the brightest flat reaches the target, bias level and structure
    allowed for.
    """
    layout, geometry, variation = scene.layout, scene.geometry, scene.variation
    index = int(rng.integers(len(scene.lamps)))
    model = scene.lamps[index]
    candidates = np.asarray(model.lamp.bright_orders or layout.orders)
    order_map = geometry.to_frame(geometry.in_slit())
    levels = [float(np.median(model.illumination[order_map == value])) if np.any(order_map == value) else 0.0
              for value in candidates]
    order = int(rng.choice(candidates[np.argsort(levels)[-BRIGHTEST_ORDERS:]]))
    spectrum = _with_contrast(model.lamp.spectrum, layout, model.lamp, variation.order_contrast)
    base = lamp_level(layout, spectrum)

    def own_level(other: int, b: np.ndarray) -> np.ndarray:
        return base(other, b) if other == order else np.zeros_like(b)

    image_ba = geometry.light(own_level) * vignette_ba
    own = geometry.to_frame(image_ba)
    own_scatter = geometry.to_frame(scene.scatter_model(image_ba, a_bin=geometry.a_bin, b_bin=geometry.b_bin))
    detector = layout.detector
    full_scale = min(detector.saturation_adu or FULL_SCALE_ADU, FULL_SCALE_ADU)
    structure = 3.0 * variation.bias_amplifier_step + 5.0 * (variation.bias_column_rms + variation.bias_row_rms
                                                             + variation.bias_drift_rms) + 10.0
    target = (variation.saturated_order_peak * full_scale - layout.spec.bias_adu - structure) * detector.default_gain
    brightest = model.electrons_per_unit * float(model.flicker.max())
    present = brightest * (model.illumination + model.scatter) * scene.defects.response + scene.additive(model.exptime)
    extra = brightest * (own + own_scatter) * scene.defects.response
    usable = (extra > 0.5 * extra.max()) & ~scene.defects.hot
    factor = max(float(np.min((target - present[usable]) / extra[usable])), 0.0)
    boosted = replace(model, illumination=model.illumination + factor * own, scatter=model.scatter + factor * own_scatter)
    lamps = (*scene.lamps[:index], boosted, *scene.lamps[index + 1 :])
    peak = float(np.max((present + factor * extra)[usable])) / detector.default_gain + layout.spec.bias_adu
    return replace(scene, lamps=lamps, near_saturation=NearSaturation(model.lamp.name, order, 1.0 + factor, peak))


def _thermal_light(layout: ArmLayout, geometry: FrameGeometry) -> np.ndarray:
    """Thermal light (e⁻/s/px): a smooth glow plus the slit image of the reddest orders (NIR only)."""
    spec = layout.spec
    if spec.thermal_rate == 0 and spec.thermal_order_rate == 0:
        return np.zeros(geometry.frame_shape)
    reddest = int(layout.orders.min())

    def level(order: int, b: np.ndarray) -> np.ndarray:
        return spec.thermal_order_rate * THERMAL_ORDER_STEP ** (reddest - order) * layout.taper(order, b)

    glow = spec.thermal_rate * (0.6 + 0.8 * np.linspace(0.0, 1.0, geometry.n_a))[None, :]
    return geometry.to_frame(np.broadcast_to(glow, (geometry.n_b, geometry.n_a)) + geometry.light(level))
