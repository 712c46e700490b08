"""The noiseless scene of a set: lamp light, scattered light, thermal glow and the detector response.

Everything is in prepared-frame orientation, at the set's binning. A lamp's expected electrons in
one flat are ``electrons_per_unit · flicker · (illumination + scatter) · response`` plus the
additive thermal, dark and hot-pixel charge; the raw frames are noisy realisations of that.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from soxs_mflat.simulate.detector import DetectorDefects, make_defects, vignetting
from soxs_mflat.simulate.layout import ArmLayout, Lamp, build_layout
from soxs_mflat.simulate.render import FrameGeometry, ScatterModel, frame_geometry, lamp_level

FLICKER_RMS = 0.02
"""RMS of the lamp-level change from flat to flat (clipped at ±5 %)."""
THERMAL_ORDER_STEP = 3.0
"""Factor by which the thermal light through the slit drops from one order to the next bluer one."""


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
) -> Scene:
    """Lay out the orders, draw the detector and render every lamp's light."""
    layout = build_layout(instrument, arm)
    geometry = frame_geometry(layout, binning)
    defects = make_defects(geometry.frame_shape, defects_rng, binning=binning)
    vignette_ba = geometry.from_frame(vignetting(geometry.frame_shape))
    in_slit = geometry.to_frame(geometry.in_slit()) > 0
    scatter_model = ScatterModel()
    lamps = []
    for lamp in layout.spec.lamps:
        image_ba = geometry.image(lamp_level(layout, lamp.spectrum)) * vignette_ba
        illumination = geometry.to_frame(image_ba)
        lamps.append(
            LampModel(
                lamp=lamp,
                illumination=illumination,
                scatter=geometry.to_frame(scatter_model(image_ba, a_bin=geometry.a_bin, b_bin=geometry.b_bin)),
                electrons_per_unit=layout.spec.peak_electrons / float(np.percentile(illumination[in_slit], 99.9)),
                exptime=lamp.exptime / (binning[0] * binning[1]),
                flicker=1.0 + np.clip(FLICKER_RMS * lamp_rng.standard_normal(nflats), -0.05, 0.05),
            )
        )
    thermal = _thermal_light(layout, geometry) * defects.response + layout.spec.dark_rate
    return Scene(layout, geometry, defects, tuple(lamps), thermal)


def _thermal_light(layout: ArmLayout, geometry: FrameGeometry) -> np.ndarray:
    """Thermal light (e⁻/s/px): a smooth glow plus the slit image of the reddest orders (NIR only)."""
    spec = layout.spec
    if spec.thermal_rate == 0 and spec.thermal_order_rate == 0:
        return np.zeros(geometry.frame_shape)
    reddest = int(layout.orders.min())

    def level(order: int, b: np.ndarray) -> np.ndarray:
        return spec.thermal_order_rate * THERMAL_ORDER_STEP ** (reddest - order) * layout.taper(order, b)

    glow = spec.thermal_rate * (0.6 + 0.8 * np.linspace(0.0, 1.0, geometry.n_a))[None, :]
    return geometry.to_frame(np.broadcast_to(glow, (geometry.n_b, geometry.n_a)) + geometry.image(level))
