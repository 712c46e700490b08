"""Settings: soxspipe-layout YAML merged over the instrument defaults, validated into frozen dataclasses.

The defaults for each instrument live in ``soxs_mflat/settings/<instrument>.yaml`` (also reachable as
``settings/`` at the top of the repository). A user file given with ``-s`` is deep-merged over them,
so it may hold only the keys it changes, and a complete ``soxspipe.yaml`` is accepted unchanged:
top-level keys this recipe does not use (other recipes' blocks, logging, ...) are ignored, while
every key inside ``soxs-mflat`` and ``background-subtraction`` is checked for name, type and range.
"""

from __future__ import annotations

import difflib
import logging
import math
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from soxs_mflat.errors import UserInputError
from soxs_mflat.instruments import ARMS, INSTRUMENTS
from soxs_mflat.qc import METRICS, canonical_name

DEFAULTS_DIR = Path(__file__).parent / "settings"
RECIPE_BLOCK = "soxs-mflat"
BACKGROUND_BLOCK = "background-subtraction"
ARM_BLOCKS = ("uvb", "vis", "nir")
LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class KeySpec:
    """Type and allowed range of one settings key."""

    kind: type
    low: float | None = None
    high: float | None = None

    def describe(self) -> str:
        """Human-readable allowed values."""
        if self.kind is bool:
            return "True or False"
        name = "an integer" if self.kind is int else "a number"
        if self.low is not None and self.high is not None:
            return f"{name} from {self.low:g} to {self.high:g}"
        if self.low is not None:
            return f"{name} of at least {self.low:g}"
        return name


RECIPE_KEYS: Mapping[str, KeySpec] = MappingProxyType(
    {
        "subtract_background": KeySpec(bool),
        "stacked-clipping-sigma": KeySpec(float, 0.5, 1000),
        "stacked-clipping-iterations": KeySpec(int, 1, 100),
    }
)
ARM_KEYS: Mapping[str, KeySpec] = MappingProxyType(
    {
        "centre-order-window": KeySpec(int, 2, 400),
        "slice-length-for-edge-detection": KeySpec(int, 10, 1000),
        "slice-width-for-edge-detection": KeySpec(int, 1, 201),
        "min-percentage-threshold-for-edge-detection": KeySpec(float, 1, 99),
        "max-percentage-threshold-for-edge-detection": KeySpec(float, 1, 99),
        "disp-axis-deg": KeySpec(int, 0, 9),
        "order-deg": KeySpec(int, 0, 9),
        "poly-fitting-residual-clipping-sigma": KeySpec(float, 0.5, 1000),
        "poly-clipping-iteration-limit": KeySpec(int, 1, 100),
        "low-sensitivity-clipping-sigma": KeySpec(float, 0.5, 1000),
        "hot-pixel-clipping-sigma": KeySpec(float, 1, 1000),
        "dead-pixel-response-limit": KeySpec(float, 0, 1),
        "order-edge-min-flat-fraction": KeySpec(float, -1, 1),
        "scale-d2-to-qth": KeySpec(bool),
    }
)
BACKGROUND_KEYS: Mapping[str, KeySpec] = MappingProxyType(
    {"bspline-deg": KeySpec(int, 1, 5), "gaussian-blur-sigma": KeySpec(float, 0.5, 10000)}
)
TOP_LEVEL_KEYS: Mapping[str, KeySpec] = MappingProxyType(
    {"data-extension": KeySpec(int, 0, 100), "save-intermediate-products": KeySpec(bool)}
)


@dataclass(frozen=True)
class ArmSettings:
    """The per-arm ``soxs-mflat`` keys (hyphens become underscores)."""

    centre_order_window: int
    slice_length_for_edge_detection: int
    slice_width_for_edge_detection: int
    min_percentage_threshold_for_edge_detection: float
    max_percentage_threshold_for_edge_detection: float
    disp_axis_deg: int
    order_deg: int
    poly_fitting_residual_clipping_sigma: float
    poly_clipping_iteration_limit: int
    low_sensitivity_clipping_sigma: float
    hot_pixel_clipping_sigma: float
    dead_pixel_response_limit: float
    order_edge_min_flat_fraction: float = 0.5
    scale_d2_to_qth: bool = True
    qc_acceptable_ranges: Mapping[str, tuple[float, float]] = field(default_factory=lambda: MappingProxyType({}))

    def qc_limit(self, qc_name: str) -> tuple[float, float] | None:
        """Acceptable (min, max) of a QC metric, bounds included, or None when the settings give none."""
        return self.qc_acceptable_ranges.get(qc_name)


@dataclass(frozen=True)
class Settings:
    """Validated settings of one run."""

    instrument: str
    data_extension: int
    save_intermediate_products: bool
    workspace_root_dir: str | None
    subtract_background: bool
    stacked_clipping_sigma: float
    stacked_clipping_iterations: int
    bspline_deg: int
    gaussian_blur_sigma: float
    arms: Mapping[str, ArmSettings]
    sources: tuple[Path, ...]
    recipe_block: Mapping[str, Any]

    def arm(self, arm: str) -> ArmSettings:
        """Settings of one arm (``UVB``, ``VIS`` or ``NIR``)."""
        try:
            return self.arms[arm.lower()]
        except KeyError:
            raise UserInputError(
                f"The settings ({self._source_names()}) have no '{RECIPE_BLOCK}: {arm.lower()}' block for the "
                f"{arm.upper()} arm. Add one (see settings/{self.instrument}.yaml for every key)."
            ) from None

    def param_cards(self, arm: str) -> list[tuple[str, str]]:
        """Recipe settings flattened for the ``ESO PRO REC1 PARAMi`` cards (spec §5.1)."""
        flat: dict[str, Any] = {k: v for k, v in self.recipe_block.items() if k not in ARM_BLOCKS}
        flat.update({k: v for k, v in self.recipe_block.get(arm.lower(), {}).items()})
        flat.pop("qc-acceptable-ranges", None)
        cards = []
        for name, value in flat.items():
            text = ", ".join(str(v) for v in value) if isinstance(value, list | tuple) else str(value)
            cards.append((name, text))
        return cards

    def _source_names(self) -> str:
        return ", ".join(str(p) for p in self.sources)


YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's safe loader where PyYAML was built with it (about ten times faster), else the pure-Python one."""


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserInputError(
            f"Settings file {path} does not exist. Check the path given with -s, or leave -s out to use the defaults."
        ) from None
    except OSError as error:
        raise UserInputError(f"Settings file {path} cannot be read ({error}). Check its permissions.") from None
    try:
        content = yaml.load(text, Loader=YAML_LOADER)
    except yaml.YAMLError as error:
        raise UserInputError(
            f"Settings file {path} is not valid YAML: {' '.join(str(error).split())}. "
            "Fix the syntax (indentation with spaces, 'key: value' pairs)."
        ) from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise UserInputError(f"Settings file {path} must hold a mapping of 'key: value' pairs at its top level.")
    return content


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def _unknown_key(key: str, where: str, valid: list[str], sources: str) -> UserInputError:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"Did you mean '{close[0]}'?" if close else f"Valid keys there: {', '.join(sorted(valid))}."
    return UserInputError(
        f"Unknown settings key '{key}' in '{where}' (settings: {sources}). {hint} "
        "Correct or remove the key; docs/settings.md lists every key."
    )


def _check_value(key: str, where: str, value: Any, spec: KeySpec, sources: str) -> Any:
    ok = isinstance(value, bool) if spec.kind is bool else (
        isinstance(value, int | float) and not isinstance(value, bool) and (spec.kind is float or float(value).is_integer())
    )
    if ok and spec.kind is not bool:
        value = spec.kind(value)
        ok = (spec.low is None or value >= spec.low) and (spec.high is None or value <= spec.high)
    if not ok:
        raise UserInputError(
            f"Settings key '{where}: {key}' is {value!r} but must be {spec.describe()} (settings: {sources}). "
            "Correct the value."
        )
    return value


def _check_block(block: Any, where: str, specs: Mapping[str, KeySpec], extra: tuple[str, ...], sources: str) -> dict:
    if not isinstance(block, Mapping):
        raise UserInputError(f"Settings block '{where}' must be a mapping of keys (settings: {sources}).")
    checked = {}
    for key, value in block.items():
        if key in extra:
            continue
        if key not in specs:
            raise _unknown_key(str(key), where, [*specs, *extra], sources)
        checked[key] = _check_value(key, where, value, specs[key], sources)
    return checked


def _check_qc_ranges(ranges: Any, where: str, sources: str) -> Mapping[str, tuple[float, float]]:
    """Validate ``qc-acceptable-ranges``: every key must name a QC metric (in any of the spellings
    ``x-res-sd``, ``x_res_sd``, ``X RES SD``), every value be ``[min, max]``; keyed by the metric's name."""
    if ranges is None:
        return MappingProxyType({})
    if not isinstance(ranges, Mapping):
        raise UserInputError(f"Settings block '{where}' must map QC names to [min, max] (settings: {sources}).")
    checked = {}
    for name, limits in ranges.items():
        metric = canonical_name(str(name))
        if metric is None:
            spellings = [metric.lower().replace(" ", "-") for metric in METRICS]
            close = difflib.get_close_matches(str(name).lower().replace(" ", "-").replace("_", "-"), spellings, n=1,
                                              cutoff=0.5)
            hint = f"Did you mean '{close[0]}'?" if close else f"QC metrics: {', '.join(spellings)}."
            raise UserInputError(
                f"Unknown QC metric '{name}' in '{where}' (settings: {sources}). {hint} Write a metric as the report "
                "prints it ('X RES SD') or hyphenated ('x-res-sd'); docs/qc.md defines every metric."
            )
        numbers = isinstance(limits, list | tuple) and len(limits) == 2 and all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in limits
        )
        if not numbers or limits[0] > limits[1]:
            raise UserInputError(
                f"Settings key '{where}: {name}' is {limits!r} but must be [min, max] with min ≤ max "
                f"(settings: {sources}). Correct the range."
            )
        checked[metric] = (float(limits[0]), float(limits[1]))
    return MappingProxyType(checked)


def _arm_settings(block: Mapping[str, Any], arm: str, sources: str) -> ArmSettings:
    where = f"{RECIPE_BLOCK}: {arm}"
    values = _check_block(block, where, ARM_KEYS, ("qc-acceptable-ranges",), sources)
    required = [
        f.name.replace("_", "-") for f in fields(ArmSettings) if f.default is MISSING and f.default_factory is MISSING
    ]
    missing = [key for key in required if key not in values]
    if missing:
        raise UserInputError(
            f"Settings block '{where}' lacks {', '.join(missing)} (settings: {sources}). "
            "Add the key(s); the defaults in settings/ show suitable values."
        )
    low = values["min-percentage-threshold-for-edge-detection"]
    high = values["max-percentage-threshold-for-edge-detection"]
    if low > high:
        raise UserInputError(
            f"Settings '{where}': min-percentage-threshold-for-edge-detection ({low:g}) is above "
            f"max-percentage-threshold-for-edge-detection ({high:g}) (settings: {sources}). Swap or correct them."
        )
    qc = _check_qc_ranges(block.get("qc-acceptable-ranges"), f"{where}: qc-acceptable-ranges", sources)
    return ArmSettings(**{k.replace("-", "_"): v for k, v in values.items()}, qc_acceptable_ranges=qc)


def default_settings_path(instrument: str) -> Path:
    """Path of the packaged defaults of an instrument (``soxs`` or ``xsh``)."""
    return DEFAULTS_DIR / f"{instrument}.yaml"


def peek_instrument(user_file: Path | None) -> str | None:
    """The ``instrument`` a user settings file asks for, if it says."""
    if user_file is None:
        return None
    value = _read_yaml(user_file).get("instrument")
    return None if value is None else str(value)


def load_settings(*, instrument: str, user_file: Path | None = None, workspace_root: str | None = None) -> Settings:
    """Load the instrument defaults, merge ``user_file`` over them and validate.

    ``workspace_root`` (from ``-o``) replaces ``workspace-root-dir``.
    """
    if instrument not in INSTRUMENTS:
        raise UserInputError(f"Unknown instrument '{instrument}'. The 'instrument' setting must be one of {INSTRUMENTS}.")
    default_path = default_settings_path(instrument)
    merged = _read_yaml(default_path)
    sources: tuple[Path, ...] = (default_path,)
    if user_file is not None:
        user = _read_yaml(user_file)
        requested = user.get("instrument", instrument)
        if requested != instrument:
            raise UserInputError(
                f"Settings file {user_file} says 'instrument: {requested}' but the frames are from '{instrument}'. "
                f"Set 'instrument: {instrument}' in {user_file} or pass frames of the right instrument."
            )
        if not isinstance(user.get(RECIPE_BLOCK), Mapping) or not user[RECIPE_BLOCK]:
            what = "is empty" if not user else f"has no '{RECIPE_BLOCK}' block"
            LOGGER.warning("Settings file %s %s: the %s defaults (%s) are used for every %s key.", user_file, what,
                           instrument, default_path, RECIPE_BLOCK)
        merged = _merge(merged, user)
        sources = (default_path, user_file)
    names = ", ".join(str(s) for s in sources)
    top = {key: merged.get(key) for key in TOP_LEVEL_KEYS}
    for key, spec in TOP_LEVEL_KEYS.items():
        top[key] = _check_value(key, "top level", top[key], spec, names)
    recipe = merged.get(RECIPE_BLOCK)
    values = _check_block(recipe, RECIPE_BLOCK, RECIPE_KEYS, ARM_BLOCKS, names)
    background = _check_block(merged.get(BACKGROUND_BLOCK), BACKGROUND_BLOCK, BACKGROUND_KEYS, (), names)
    for key in (*RECIPE_KEYS, *BACKGROUND_KEYS):
        if key not in values and key not in background:
            raise UserInputError(f"Settings lack the key '{key}' (settings: {names}). Add it.")
    arms = {
        arm.lower(): _arm_settings(recipe[arm.lower()], arm.lower(), names)
        for arm in ARMS[instrument]
        if arm.lower() in recipe
    }
    root = workspace_root if workspace_root is not None else merged.get("workspace-root-dir")
    return Settings(
        instrument=instrument,
        data_extension=top["data-extension"],
        save_intermediate_products=top["save-intermediate-products"],
        workspace_root_dir=None if root in (None, "") else str(root),
        subtract_background=values["subtract_background"],
        stacked_clipping_sigma=values["stacked-clipping-sigma"],
        stacked_clipping_iterations=values["stacked-clipping-iterations"],
        bspline_deg=background["bspline-deg"],
        gaussian_blur_sigma=background["gaussian-blur-sigma"],
        arms=MappingProxyType(arms),
        sources=sources,
        recipe_block=MappingProxyType(dict(recipe)),
    )
