"""Scene and detector variation of a simulated set: every factor a parameter with a realistic range.

:meth:`Variation.nominal` is the simulator's original design (the sets the recipe was developed on:
Gaussian PSF, fixed slit heights, a given contrast, 5 flats...); :meth:`Variation.draw` draws every
factor from its range, so that a method tuned to the nominal sets meets data it was not designed on.
Single factors are set by name (:meth:`Variation.with_values`, or a YAML file of ``name: value``
lines). ``docs/simulator.md`` explains each factor, its range and why it matters.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import yaml

SLIT_WIDTHS = (0.4, 0.5, 0.7, 0.9, 1.0, 1.2, 1.5, 5.0)
"""Slit widths (arcsec) the two instruments offer; a drawn set uses one of them."""
RANDOM_KEY = "random"
"""Key of a variation mapping or file that asks for every factor to be drawn before the given values apply."""


@dataclass(frozen=True)
class Variation:
    """Every scene and detector factor that a simulated set may vary (lengths in unbinned pixels).

    The defaults are the nominal design; each field's comment gives the range :meth:`draw` uses.
    """

    psf_scale: float = 1.0
    """Core Gaussian σ as a multiple of the arm's nominal σ (0.7–0.85 px); drawn 0.6–1.8."""
    psf_gradient: float = 0.0
    """Fractional σ change across the frame along ``psf_gradient_angle``; drawn 0–0.3."""
    psf_gradient_angle: float = 0.0
    """Direction (rad) of the σ gradient in the (A, B) plane; drawn 0–2π."""
    psf_focus: float = 0.0
    """Fractional σ increase from the frame centre to its corners (defocus); drawn 0–0.3."""
    psf_shoulder: float = 0.0
    """Weight of a one-sided shoulder that makes the PSF asymmetric; drawn 0–0.25."""
    psf_shoulder_offset: float = 0.0
    """Offset of the shoulder from the core, in core σ (sign = side); drawn ±0.5–2."""
    psf_wing_fraction: float = 0.0
    """Fraction of the light in Moffat wings around the core; drawn 0–0.1."""
    psf_wing_alpha: float = 3.0
    """Moffat α of the wings, in core σ; drawn 2–5."""
    psf_wing_beta: float = 3.0
    """Moffat β of the wings (lower = heavier); drawn 2–4.5."""
    soft_end_low: float = 0.0
    """Extra Gaussian σ (px) of the lower slit end (a defocused slit jaw); drawn 0–1.2."""
    soft_end_up: float = 0.0
    """Extra Gaussian σ (px) of the upper slit end; drawn 0–1.2."""
    slit_tilt: float = 0.01
    """Mean linear slope of the slit illumination, centre to upper end (each order adds 0.03·cos(0.9 m)); drawn ±0.08."""
    slit_curvature: float = 0.0
    """Quadratic term of the slit illumination (level at the slit ends minus the centre); drawn ±0.06."""
    order_height_scale: float = 1.0
    """Slit height (order height across the dispersion) as a multiple of the arm's; drawn 0.8–1.05."""
    slit_width: float | None = None
    """Slit width (arcsec) written to the headers and SOF name; None = the arm's usual slit; drawn from :data:`SLIT_WIDTHS`."""
    brightness: float = 1.0
    """Lamp signal as a multiple of the nominal peak charge; drawn 0.2–1 (log-uniform)."""
    order_contrast: float | None = None
    """Brightest over faintest order level (lamp spectrum steepened or flattened); None = the arm's; drawn 3–100."""
    saturated_order_peak: float = 0.0
    """If > 0, one of the 3 brightest orders is brightened to this fraction of full scale; drawn 0 or 0.85–0.95."""
    nflats: int | None = None
    """Number of flats per lamp; None = the ``nflats`` argument; drawn 3–20."""
    scatter_fractions: tuple[float, float] = (0.025, 0.05)
    """Fractions of the order light in the narrow and the broad scattered-light halo; drawn 0.01–0.06, 0.02–0.12."""
    scatter_sigmas: tuple[float, float] = (12.0, 90.0)
    """Gaussian σ (px) of the two halos; drawn 6–30 and 50–300."""
    ghost_fraction: float = 0.0
    """Fraction of the order light in a displaced, defocused ghost image of the orders; drawn 0–0.005."""
    ghost_offset: tuple[float, float] = (0.0, 0.0)
    """Ghost displacement (px) along B and A; drawn ±20–300 and ±10–150."""
    ghost_sigma: float = 8.0
    """Gaussian σ (px) of the ghost's defocus; drawn 4–20."""
    table_offset_max: float = 0.0
    """Largest per-order offset (px) of the order-centre table before its refit; drawn 0–2."""
    table_tilt_max: float = 0.0
    """Largest per-order tilt (px from one end of the order to the other) of the centre table; drawn 0–2."""
    table_missing_order: bool = False
    """The centre table misses one true order; drawn with probability 0.25."""
    table_extra_order: bool = False
    """The centre table lists one order that is not on the detector's lit area; drawn with probability 0.25."""
    bias_column_rms: float = 0.8
    """RMS (ADU) of the stable column-to-column bias pattern; drawn 0.3–3."""
    bias_row_rms: float = 0.0
    """RMS (ADU) of a stable row-to-row bias pattern; drawn 0–2."""
    bias_amplifiers: int = 1
    """Read-out amplifiers, each its own bias level; drawn 1, 2 or 4."""
    bias_amplifier_step: float = 0.0
    """RMS (ADU) of the level differences between amplifiers; drawn 2–40."""
    bias_drift_rms: float = 0.0
    """RMS (ADU) of a per-frame bias level drift that the master bias cannot remove; drawn 0–2."""
    cosmic_ray_factor: float = 1.0
    """Cosmic-ray rate as a multiple of ~25 per Mpx per 10 s; drawn 1–5 (log-uniform)."""
    defect_density: float = 1.0
    """Density of dead, low-sensitivity and hot pixels as a multiple of 1.2e-4 per kind; drawn 0.5–3 (log-uniform)."""
    low_sensitivity_range: tuple[float, float] = (0.4, 0.9)
    """Response range of low-sensitivity pixels and clusters; drawn from 0.3–0.5 up to 0.9–0.97."""
    hot_rate_range: tuple[float, float] = (10.0, 1000.0)
    """Dark-current excess range (e⁻/s, log-uniform) of hot pixels; drawn from 0.3–10 up to 1000–3000."""
    defect_clusters: int = 0
    """Clusters of 2–40 adjacent dead or low-sensitivity pixels; drawn 0–30."""
    bad_columns: int = 0
    """Bad columns beyond the nominal two partial ones (dead or weak, full or partial); drawn 0–6."""
    charge_traps: int = 0
    """Charge traps with a deferred-charge trail along the transfer direction (UVB/VIS CCDs only); drawn 0–40."""
    bias_only_pixels: int = 0
    """Pixels whose master-bias value is wrong (half of them flagged in its QUAL), fine in the flats (UVB/VIS); drawn 0–400."""
    dust_count: int = 14
    """Dust donuts on the detector window; drawn 5–30."""
    dust_radius: tuple[float, float] = (10.0, 30.0)
    """Range of the donut ring radius (px); drawn from 5–10 up to 20–60."""
    dust_depth: tuple[float, float] = (0.02, 0.05)
    """Range of the donut depth (fraction of the light removed on the ring); drawn from 0.01 up to 0.03–0.15."""

    @classmethod
    def nominal(cls) -> Variation:
        """The simulator's original design (what ``simulate_set`` writes by default)."""
        return cls()

    @property
    def is_nominal(self) -> bool:
        """True when every factor has its nominal value."""
        return self == Variation()

    @classmethod
    def draw(cls, rng: np.random.Generator) -> Variation:
        """Draw every factor from its range (the ranges are in the field descriptions)."""

        def uniform(low: float, high: float) -> float:
            return float(rng.uniform(low, high))

        def log_uniform(low: float, high: float) -> float:
            return float(np.exp(rng.uniform(np.log(low), np.log(high))))

        def signed(low: float, high: float) -> float:
            return float(rng.choice((-1.0, 1.0)) * rng.uniform(low, high))

        return cls(
            psf_scale=uniform(0.6, 1.8),
            psf_gradient=uniform(0.0, 0.3),
            psf_gradient_angle=uniform(0.0, 2.0 * np.pi),
            psf_focus=uniform(0.0, 0.3),
            psf_shoulder=uniform(0.0, 0.25),
            psf_shoulder_offset=signed(0.5, 2.0),
            psf_wing_fraction=uniform(0.0, 0.1),
            psf_wing_alpha=uniform(2.0, 5.0),
            psf_wing_beta=uniform(2.0, 4.5),
            soft_end_low=uniform(0.0, 1.2),
            soft_end_up=uniform(0.0, 1.2),
            slit_tilt=uniform(-0.08, 0.08),
            slit_curvature=uniform(-0.06, 0.06),
            order_height_scale=uniform(0.8, 1.05),
            slit_width=float(rng.choice(SLIT_WIDTHS)),
            brightness=log_uniform(0.2, 1.0),
            order_contrast=log_uniform(3.0, 100.0),
            saturated_order_peak=uniform(0.85, 0.95) if rng.random() < 0.5 else 0.0,
            nflats=int(rng.integers(3, 21)),
            scatter_fractions=(uniform(0.01, 0.06), uniform(0.02, 0.12)),
            scatter_sigmas=(uniform(6.0, 30.0), log_uniform(50.0, 300.0)),
            ghost_fraction=uniform(0.0, 0.005),
            ghost_offset=(signed(20.0, 300.0), signed(10.0, 150.0)),
            ghost_sigma=uniform(4.0, 20.0),
            table_offset_max=uniform(0.0, 2.0),
            table_tilt_max=uniform(0.0, 2.0),
            table_missing_order=bool(rng.random() < 0.25),
            table_extra_order=bool(rng.random() < 0.25),
            bias_column_rms=uniform(0.3, 3.0),
            bias_row_rms=uniform(0.0, 2.0),
            bias_amplifiers=int(rng.choice((1, 2, 4))),
            bias_amplifier_step=uniform(2.0, 40.0),
            bias_drift_rms=uniform(0.0, 2.0),
            cosmic_ray_factor=log_uniform(1.0, 5.0),
            defect_density=log_uniform(0.5, 3.0),
            low_sensitivity_range=(uniform(0.3, 0.5), uniform(0.9, 0.97)),
            hot_rate_range=(log_uniform(0.3, 10.0), log_uniform(1000.0, 3000.0)),
            defect_clusters=int(rng.integers(0, 31)),
            bad_columns=int(rng.integers(0, 7)),
            charge_traps=int(rng.integers(0, 41)),
            bias_only_pixels=int(rng.integers(0, 401)),
            dust_count=int(rng.integers(5, 31)),
            dust_radius=(uniform(5.0, 10.0), uniform(20.0, 60.0)),
            dust_depth=(0.01, uniform(0.03, 0.15)),
        )

    def with_values(self, values: Mapping[str, object]) -> Variation:
        """A copy with the factors in ``values`` set (lists become tuples); unknown names raise ValueError."""
        known = {item.name: item for item in fields(self)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown variation factor(s) {', '.join(unknown)}; known factors: {', '.join(known)}")
        converted = {}
        for name, value in values.items():
            current = getattr(self, name)
            if isinstance(current, tuple) or isinstance(value, list | tuple):
                value = tuple(float(item) for item in value)  # type: ignore[union-attr]
                if len(value) != 2:
                    raise ValueError(f"variation factor {name} needs two values, not {len(value)}")
            elif isinstance(current, bool):
                value = bool(value)
            elif isinstance(current, int) or name == "nflats":
                value = None if value is None else int(value)  # type: ignore[call-overload]
            elif value is not None:
                value = float(value)  # type: ignore[arg-type]
            converted[name] = value
        return replace(self, **converted)

    def to_dict(self) -> dict[str, object]:
        """JSON-serialisable factor values (tuples as lists)."""
        return {name: list(value) if isinstance(value, tuple) else value for name, value in asdict(self).items()}

    def factor_values(self) -> dict[str, float]:
        """Every factor as a number (booleans as 0/1, ranges as ``<name>_low``/``<name>_high``, None as NaN)."""
        values: dict[str, float] = {}
        for name, value in asdict(self).items():
            if isinstance(value, tuple):
                values[f"{name}_low"], values[f"{name}_high"] = (float(item) for item in value)
            else:
                values[name] = float("nan") if value is None else float(value)
        return values


def read_variation_file(path: Path) -> dict[str, object]:
    """The ``name: value`` mapping of a variation YAML file (``random: true`` asks for a drawn base)."""
    try:
        content = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"cannot read the variation file {path}: {error}") from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ValueError(f"the variation file {path} must hold 'factor: value' lines")
    return content


def variation_request(*, vary: bool, path: str | Path | None) -> Mapping[str, object] | str | None:
    """What ``simulate_set(variation=...)`` should get for the CLI's ``--vary`` and ``--variation=<file>``."""
    if path is None:
        return "random" if vary else None
    values = read_variation_file(Path(path))
    return {**values, RANDOM_KEY: True} if vary else values


def resolve_variation(request: Variation | Mapping[str, object] | str | Path | None, rng: np.random.Generator) -> Variation:
    """Turn ``simulate_set``'s ``variation`` argument into a :class:`Variation`.

    ``None`` or ``"nominal"``: the nominal design. ``"random"``: every factor drawn from ``rng``. A
    mapping (or the path of a YAML file holding one): those factors set over the nominal design, or
    over a drawn one when it has ``random: true``.
    """
    if request is None or isinstance(request, Variation):
        return request or Variation.nominal()
    if isinstance(request, str) and request in ("nominal", "random"):
        return Variation.draw(rng) if request == "random" else Variation.nominal()
    values = dict(read_variation_file(Path(request)) if isinstance(request, str | Path) else request)
    base = Variation.draw(rng) if values.pop(RANDOM_KEY, False) else Variation.nominal()
    return base.with_values(values)
