"""Property-based fuzzing of what a user hands the recipe: SOF files, settings values, and every header
value that classification and verification read.

Whatever the input, parsing either succeeds or raises the project's UserInputError (a one-paragraph
message for the user), never anything else. CI runs a few hundred examples per property; `make fuzz`
runs the full count (HYPOTHESIS_PROFILE=fuzz, 4,000 per property, 12,000 cases in all).
"""

from __future__ import annotations

import io
import math
import os
import string
from pathlib import Path

import numpy as np
import yaml
from astropy.io import fits
from conftest import frame_header
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from soxs_mflat.errors import UserInputError
from soxs_mflat.frames import read_frame_file
from soxs_mflat.geometry import Poly2D
from soxs_mflat.inputs import classify, identify_instrument_and_arm, verify
from soxs_mflat.instruments import INSTRUME_HEADER, keywords_for
from soxs_mflat.order_table import OrderTable, to_hdus
from soxs_mflat.settings import ARM_KEYS, BACKGROUND_KEYS, RECIPE_KEYS, TOP_LEVEL_KEYS, load_settings
from soxs_mflat.sof import InputFile, parse_input_frames

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


# ---------------------------------------------------------------------------------------- header values
ARM_SETS = (("soxs", "NIR"), ("soxs", "VIS"), ("xsh", "UVB"), ("xsh", "VIS"), ("xsh", "NIR"))


def _fits_bytes(hdus: list) -> bytes:
    buffer = io.BytesIO()
    fits.HDUList(hdus).writeto(buffer)
    return buffer.getvalue()


def _input_files(instrument: str, arm: str) -> list[tuple[str, bytes]]:
    """(name, FITS bytes) of a complete set of one arm: 5 flats per lamp, order tables, bias or lamp-off frames."""
    lamps = ("DLAMP", "QLAMP") if arm == "UVB" else ("",)
    image = np.zeros((4, 4), dtype=np.uint16)
    files = []
    for lamp in lamps:
        for i in range(5):
            header = frame_header(instrument=instrument, arm=arm, kind="flat", lamp=lamp, mjd=60700.1 + i * 0.001)
            files.append((f"flat{lamp}_{i}.fits", _fits_bytes([fits.PrimaryHDU(image, header=header)])))
        header = fits.Header({"INSTRUME": INSTRUME_HEADER[instrument], "HIERARCH ESO SEQ ARM": arm,
                              "HIERARCH ESO PRO CATG": f"ORDER_TAB_{arm}", "OBJECT": f"LAMP,{lamp[:1]}ORDERDEF"})
        table = OrderTable("x" if (instrument, arm) != ("soxs", "NIR") else "y", np.array([10, 11]), np.zeros(2),
                           np.full(2, 2000.0), np.zeros(2), np.ones(2), Poly2D([[-900.0, 0.0], [100.0, 0.0]]),
                           header=header)
        files.append((f"order_tab{lamp}.fits", _fits_bytes(to_hdus(table))))
    if arm == "NIR":
        for i in range(5):
            header = frame_header(instrument=instrument, arm=arm, kind="lamp_off", mjd=60700.2 + i * 0.001)
            files.append((f"lampoff_{i}.fits", _fits_bytes([fits.PrimaryHDU(image, header=header)])))
    else:
        header = frame_header(instrument=instrument, arm=arm, kind="master_bias")
        files.append(("master_bias.fits", _fits_bytes([fits.PrimaryHDU(image.astype(np.float32), header=header),
                                                       fits.ImageHDU(image.astype(np.uint8), name="QUAL"),
                                                       fits.ImageHDU(image.astype(np.float32), name="ERRS")])))
    return files


INPUT_SETS = {arm_set: _input_files(*arm_set) for arm_set in ARM_SETS}
UNCHANGED_FRAMES: dict[Path, dict[str, object]] = {}
"""The frames of the unchanged files of each set, read once per test run (keyed by their folder)."""


def _read_keywords(instrument: str, arm: str) -> list[str]:
    """Every card classification and verification read, and the pixel-scaling cards checked with them."""
    kw = keywords_for(instrument)
    return ["INSTRUME", kw.arm, kw.dpr_catg, kw.dpr_type, kw.dpr_tech, kw.pro_catg, kw.object, kw.exptime, kw.mjd_obs,
            kw.binx, kw.biny, kw.read_speed, kw.conad, kw.gain, kw.ron, kw.slit[arm], kw.qth_lamp, kw.d2_lamp,
            kw.datancom, kw.qc_raw_ron, "BZERO", "BSCALE"]


def _card_start(keyword: str) -> bytes:
    return (f"HIERARCH {keyword} =" if len(keyword) > 8 or " " in keyword else f"{keyword:<8}=").encode()


def _with_card(content: bytes, keyword: str, value_image: str | None) -> bytes:
    """``content`` with the primary-header card of ``keyword`` replaced by ``keyword = value_image``
    (a raw image, parsed as astropy parses a file), added if absent, or removed (None)."""
    header_end = next(i for i in range(0, len(content), 80) if content[i:i + 80].rstrip() == b"END")
    cards = [content[i:i + 80] for i in range(0, header_end, 80)]
    kept = [card for card in cards if not card.startswith(_card_start(keyword))]
    if value_image is not None:
        kept.append((_card_start(keyword) + b" " + value_image.encode("latin-1")).ljust(80)[:80])
    header = b"".join(kept) + b"END".ljust(80)
    header += b" " * (-len(header) % 2880)
    data_start = header_end + 80 + (-(header_end + 80) % 2880)
    return header + content[data_start:]


VALUE_IMAGES = st.one_of(
    st.sampled_from(["NAN", "INF", "-INF", "1e999", "-1E999", "''", "'   '", "", "1_000", "T", "F", "(1, 2)",
                     "(1.5e3, NAN)", "0x10", "'abc", "--1", "1D5", "12345678901234567890123", "0", "-1", "1.5",
                     "'FLAT,LAMP'", "'ECHELLE,SLIT'", "'IMAGE'", "'DARK'", "'SOXS'", "'XSHOOTER'", "'NIR'", "'VIS'",
                     "'UVB'", "'ORDER_TAB_NIR'", "'MASTER_BIAS_VIS'", "'MASTER_DARK_NIR'", "'LAMP,QFLAT'"]),
    st.floats().map(repr),
    st.integers(min_value=-(10**40), max_value=10**40).map(str),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=255), max_size=30).map(lambda t: f"'{t}'"),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=255), max_size=30),
)


@st.composite
def header_damage(draw) -> tuple[tuple[str, str], list[tuple[str, str, str | None]]]:
    """An arm's set and 1 to 4 (file, keyword, raw value image or None to remove the card) changes."""
    arm_set = draw(st.sampled_from(ARM_SETS))
    names, keywords = sorted(name for name, _ in INPUT_SETS[arm_set]), _read_keywords(*arm_set)
    changes = st.tuples(st.sampled_from(names), st.sampled_from(keywords), st.none() | VALUE_IMAGES)
    return arm_set, draw(st.lists(changes, min_size=1, max_size=4))


@given(case=header_damage())
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_header_values_only_ever_raise_user_errors(tmp_path: Path, case) -> None:
    """Reading, classifying and verifying a set with damaged header values refuses it with a UserInputError
    or accepts it with finite, in-range values; nothing else escapes."""
    (instrument, arm), changes = case
    files = dict(INPUT_SETS[(instrument, arm)])
    for name, keyword, image in changes:
        files[name] = _with_card(files[name], keyword, image)
    folder = tmp_path / f"{instrument}{arm}"
    if folder not in UNCHANGED_FRAMES:  # read once per run: the files no example changes
        folder.mkdir()
        for name, content in INPUT_SETS[(instrument, arm)]:
            (folder / name).write_bytes(content)
        UNCHANGED_FRAMES[folder] = {name: read_frame_file(InputFile(folder / name)) for name in files}
    changed = {name for name, _, _ in changes}
    try:
        frames = []
        for name in sorted(files):
            if name in changed:
                (folder / f"changed_{name}").write_bytes(files[name])
                frames.append(read_frame_file(InputFile(folder / f"changed_{name}")))
            else:
                frames.append(UNCHANGED_FRAMES[folder][name])
        found = identify_instrument_and_arm(frames)
        verified = verify(classify(frames, instrument=found[0], arm=found[1]), instrument=found[0], arm=found[1])
    except UserInputError as error:
        assert str(error)
        event("refused")
        return
    event("accepted")
    assert all(isinstance(b, int) and b >= 1 for b in verified.binning)
    assert math.isfinite(verified.gain) and verified.gain > 0 and math.isfinite(verified.ron) and verified.ron >= 0
    assert all(math.isfinite(s.exptime) and s.exptime >= 0 for s in verified.lamp_sets)
