"""Settings: defaults, merging, soxspipe.yaml acceptance and every validation error."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from soxs_mflat.errors import UserInputError
from soxs_mflat.settings import ARM_KEYS, BACKGROUND_KEYS, RECIPE_KEYS, default_settings_path, load_settings

DOCS = Path(__file__).parents[1] / "docs" / "settings.md"


def _write(tmp_path: Path, content: dict | str) -> Path:
    path = tmp_path / "user.yaml"
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    return path


@pytest.mark.parametrize("instrument", ["soxs", "xsh"])
def test_defaults_load_and_are_typed(instrument: str) -> None:
    settings = load_settings(instrument=instrument)
    arms = {"soxs": {"vis", "nir"}, "xsh": {"uvb", "vis", "nir"}}[instrument]
    assert set(settings.arms) == arms
    nir = settings.arm("NIR")
    assert isinstance(nir.order_deg, int) and isinstance(nir.poly_fitting_residual_clipping_sigma, float)
    assert settings.bspline_deg == 2 and settings.gaussian_blur_sigma == 65.0
    expected_sigma = {"soxs": 5.0, "xsh": 5.0}[instrument]
    assert settings.stacked_clipping_sigma == expected_sigma


def test_spec_defaults_for_edges() -> None:
    soxs, xsh = load_settings(instrument="soxs"), load_settings(instrument="xsh")
    assert (soxs.arm("VIS").order_deg, soxs.arm("VIS").disp_axis_deg) == (3, 3)
    assert (soxs.arm("NIR").order_deg, soxs.arm("NIR").disp_axis_deg) == (6, 5)
    assert all((xsh.arm(a).order_deg, xsh.arm(a).disp_axis_deg) == (6, 4) for a in ("UVB", "VIS", "NIR"))
    assert soxs.arm("VIS").qc_limit("X RES SD") == (0.0, 0.37)
    assert xsh.arm("VIS").qc_limit("X RES SD") is None


def test_user_file_merges_over_defaults(tmp_path: Path) -> None:
    user = _write(tmp_path, {"soxs-mflat": {"nir": {"order-deg": 4}, "stacked-clipping-sigma": 7}})
    settings = load_settings(instrument="soxs", user_file=user)
    assert settings.arm("NIR").order_deg == 4
    assert settings.arm("NIR").disp_axis_deg == 5
    assert settings.stacked_clipping_sigma == 7.0
    assert settings.sources[-1] == user


def test_workspace_root_from_output_option(tmp_path: Path) -> None:
    user = _write(tmp_path, {"workspace-root-dir": "/somewhere"})
    assert load_settings(instrument="soxs", user_file=user).workspace_root_dir == "/somewhere"
    assert load_settings(instrument="soxs", user_file=user, workspace_root="/out").workspace_root_dir == "/out"


def test_complete_soxspipe_yaml_is_accepted(tmp_path: Path) -> None:
    """A full soxspipe-layout file: other recipes' blocks, logging, and the soxs-mflat keys of spec §7."""
    content = yaml.safe_load(default_settings_path("soxs").read_text())
    content["soxs-mflat"]["nir"].pop("hot-pixel-clipping-sigma")
    content["soxs-mflat"]["vis"].pop("dead-pixel-response-limit")
    content.update({
        "PAE": False, "ignore-dflats": True, "ignore-dome-flats": True, "tune-pipeline": False,
        "soxs-mbias": {"frame-clipping-sigma": 3}, "soxs-order-centres": {"nir": {"order-deg": 6}},
        "logging settings": {"root": {"level": "INFO"}}, "summary-keys": {"verbose": ["EXPTIME"]},
    })
    path = _write(tmp_path, content)
    settings = load_settings(instrument="soxs", user_file=path)
    assert settings.arm("NIR").hot_pixel_clipping_sigma > 0


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        ({"soxs-mflat": {"nir": {"slice-lenght-for-edge-detection": 70}}}, "slice-length-for-edge-detection"),
        ({"soxs-mflat": {"stacked-clipping-sigm": 5}}, "stacked-clipping-sigma"),
        ({"background-subtraction": {"bspline-degree": 3}}, "bspline-deg"),
        ({"soxs-mflat": {"nir": {"order-deg": "six"}}}, r"order-deg.*'six'.*integer from 0 to 9"),
        ({"soxs-mflat": {"nir": {"order-deg": 12}}}, r"order-deg.*12.*0 to 9"),
        ({"soxs-mflat": {"nir": {"order-deg": 2.5}}}, r"order-deg.*2.5"),
        ({"soxs-mflat": {"subtract_background": "yes"}}, r"subtract_background.*True or False"),
        ({"soxs-mflat": {"stacked-clipping-sigma": -1}}, r"stacked-clipping-sigma.*-1"),
        ({"background-subtraction": {"gaussian-blur-sigma": 0}}, r"gaussian-blur-sigma.*0"),
        ({"data-extension": -1}, r"data-extension.*-1"),
        ({"save-intermediate-products": 1}, r"save-intermediate-products.*True or False"),
        ({"soxs-mflat": {"nir": {"min-percentage-threshold-for-edge-detection": 60}}}, r"above max-percentage"),
        ({"soxs-mflat": {"nir": {"qc-acceptable-ranges": {"x-res-sd": [1, 0]}}}}, r"x-res-sd.*min ≤ max"),
        ({"soxs-mflat": {"nir": {"qc-acceptable-ranges": {"x-res-sd": [0, float("nan")]}}}}, r"x-res-sd.*\[min, max\]"),
        ({"soxs-mflat": {"nir": {"qc-acceptable-ranges": {"x-res-sdd": [0, 1]}}}}, r"'x-res-sdd'.*Did you mean 'x-res-sd'"),
        ({"soxs-mflat": {"nir": {"qc-acceptable-ranges": {"COLD PIX": [0, 1]}}}}, r"'COLD PIX'.*Did you mean 'coldpix-"),
        ({"instrument": "xsh"}, r"instrument: xsh.*soxs"),
    ],
)
def test_validation_errors_name_key_and_value(tmp_path: Path, content: dict, pattern: str) -> None:
    path = _write(tmp_path, content)
    with pytest.raises(UserInputError, match=pattern) as error:
        load_settings(instrument="soxs", user_file=path)
    assert str(path) in str(error.value)


def test_block_that_is_not_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="'soxs-mflat: nir' must be a mapping"):
        load_settings(instrument="soxs", user_file=_write(tmp_path, {"soxs-mflat": {"nir": 5}}))


def test_bad_yaml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="not valid YAML"):
        load_settings(instrument="soxs", user_file=_write(tmp_path, "soxs-mflat: [unclosed"))
    with pytest.raises(UserInputError, match="does not exist"):
        load_settings(instrument="soxs", user_file=tmp_path / "nope.yaml")


def test_settings_are_immutable() -> None:
    settings = load_settings(instrument="soxs")
    with pytest.raises(AttributeError):
        settings.arm("NIR").order_deg = 3  # type: ignore[misc]


def test_param_cards_flatten_the_arm_block() -> None:
    cards = dict(load_settings(instrument="soxs").param_cards("NIR"))
    assert cards["order-deg"] == "6"
    assert cards["min-percentage-threshold-for-edge-detection"] == "20"  # full names, never cut
    assert "qc-acceptable-ranges" not in cards


def test_every_settings_key_is_documented() -> None:
    documented = set(re.findall(r"`([a-z0-9_\-]+)`", DOCS.read_text()))
    keys = set(RECIPE_KEYS) | set(ARM_KEYS) | set(BACKGROUND_KEYS)
    for instrument in ("soxs", "xsh"):
        content = yaml.safe_load(default_settings_path(instrument).read_text())
        keys |= {k for k in content if k != "version"}
        for block in content["soxs-mflat"].values():
            if isinstance(block, dict):
                keys |= set(block)
    missing = sorted(keys - documented)
    assert not missing, f"settings keys missing from docs/settings.md: {missing}"


@pytest.mark.parametrize("key", ["X RES SD", "x-res-sd", "x_res_sd", "X-Res-SD"])
def test_qc_range_keys_accept_every_spelling_of_a_metric(tmp_path: Path, key: str) -> None:
    path = _write(tmp_path, {"soxs-mflat": {"nir": {"qc-acceptable-ranges": {key: [0, 0.005]}}}})
    assert load_settings(instrument="soxs", user_file=path).arm("NIR").qc_limit("X RES SD") == (0.0, 0.005)


@pytest.mark.parametrize("content", ["", "# only a comment\n", "instrument: soxs\nworkspace-root-dir: .\n"])
def test_settings_without_a_recipe_block_fall_back_to_defaults_and_say_so(
    tmp_path: Path, content: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = _write(tmp_path, content)
    with caplog.at_level("WARNING", logger="soxs_mflat"):
        settings = load_settings(instrument="soxs", user_file=path)
    assert settings.arm("NIR") == load_settings(instrument="soxs").arm("NIR")
    assert str(path) in caplog.text and "defaults" in caplog.text


def test_a_complete_recipe_block_gives_no_fallback_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _write(tmp_path, {"soxs-mflat": {"nir": {"order-deg": 5}}})
    with caplog.at_level("WARNING", logger="soxs_mflat"):
        assert load_settings(instrument="soxs", user_file=path).arm("NIR").order_deg == 5
    assert "defaults" not in caplog.text
