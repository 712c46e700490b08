"""Property-based fuzzing of what a user hands the recipe: SOF files and settings values.

Whatever the input, parsing either succeeds or raises the project's UserInputError (a one-paragraph
message for the user), never anything else. CI runs a few hundred examples per property; `make fuzz`
runs the full count (HYPOTHESIS_PROFILE=fuzz, >= 10,000 cases in all).
"""

from __future__ import annotations

import os
import string
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from soxs_mflat.errors import UserInputError
from soxs_mflat.settings import ARM_KEYS, BACKGROUND_KEYS, RECIPE_KEYS, TOP_LEVEL_KEYS, load_settings
from soxs_mflat.sof import parse_input_frames

settings.register_profile("ci", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("fuzz", max_examples=4000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

EXISTING = ("flat_0.fits", "bias.fits.gz", "sub dir/flat 1.fits")
entry = st.one_of(
    st.sampled_from(EXISTING).map(lambda name: f"{name} LAMP,FLAT_NIR"),
    st.sampled_from(["missing.fits MASTER_BIAS_VIS", "/abs/missing.fits.Z TAG", "flat_0.fits"]),
    st.sampled_from(["# comment", "", "   ", "\t#x"]),
    st.text(alphabet=string.printable + "éΣ\u2028\x00", max_size=60),
)
values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30),
              st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12)),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=8,
)
recipe_keys = st.sampled_from([*RECIPE_KEYS, "uvb", "vis", "nir", "unknown-key"])
arm_keys = st.sampled_from([*ARM_KEYS, "qc-acceptable-ranges", "order_deg"])
qc_ranges = st.dictionaries(st.sampled_from(["x-res-sd", "X RES SD", "ORDEXP90", "cold pix", "N DEAD"]), values, max_size=3)


def _files(root: Path) -> None:
    for name in EXISTING:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")


@given(lines=st.lists(entry, max_size=12))
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_sof_parsing_only_ever_raises_user_errors(tmp_path: Path, lines: list[str]) -> None:
    _files(tmp_path)
    sof = tmp_path / "set.sof"
    sof.write_text("\n".join(lines), encoding="utf-8", errors="surrogatepass")
    try:
        parsed = parse_input_frames(str(sof), cwd=tmp_path)
    except UserInputError as error:
        assert str(error)
    else:
        assert parsed.files and all(f.path.exists() for f in parsed.files)


@given(
    top=st.dictionaries(st.sampled_from([*TOP_LEVEL_KEYS, "instrument", "workspace-root-dir"]), values, max_size=3),
    recipe=st.dictionaries(recipe_keys, values, max_size=3),
    arm=st.dictionaries(arm_keys, values, max_size=4),
    ranges=qc_ranges,
    background=st.dictionaries(st.sampled_from([*BACKGROUND_KEYS, "bspline_deg"]), values, max_size=2),
)
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_settings_values_only_ever_raise_user_errors(tmp_path: Path, top: dict, recipe: dict, arm: dict,
                                                     ranges: dict, background: dict) -> None:
    content = dict(top)
    content["soxs-mflat"] = {**recipe, "nir": {**arm, "qc-acceptable-ranges": ranges}}
    content["background-subtraction"] = background
    path = tmp_path / "user.yaml"
    path.write_text(yaml.safe_dump(content, allow_unicode=True))
    try:
        loaded = load_settings(instrument="soxs", user_file=path)
    except UserInputError as error:
        assert str(path) in str(error) or "instrument" in str(error)
    else:
        assert loaded.arm("NIR").order_deg >= 0
