"""Fault matrix, part 2 (issue 13): bad inputs, settings and SOFs on tiny header-only sets.

Every case runs the command line (in-process, ``-x``) over an output root holding previous products
of the same stem, and asserts: exit status 2, one ``ERROR:`` line naming the file or key, no
traceback, and the output folders afterwards exactly as before (no temporary file; an
``_ERROR.log`` only for failures after the run claimed its outputs). Frames are 4×4 pixels, so a set
that passes every check fails after the claim, where the 4×4 frames cannot be trimmed: that is how
the cases that must pass a check (a settings spelling, a notice) show they got through.
"""

from __future__ import annotations

import gzip
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from test_faults import ENV, PRODUCTS, QC, hidden, one_error_line, snapshot, visible

from soxs_mflat.cli import main
from soxs_mflat.frames import read_frame_file, read_raw_adu
from soxs_mflat.sof import InputFile

STEM = "20250125T023824_NIR_3_MFLAT_QTH_SLIT1_0_10_0S_SOXS"
Z_FLAT = Path(__file__).parent / "data" / "flat_soxs_nir.fits.Z"
"""``compress -c`` of conftest's SOXS NIR flat header (MJD-OBS 60700.1) over a 4×4 uint16 ``arange(16)`` image."""
NOT_TRIMMED = "cannot be trimmed"
"""The error of a set that passed every check: its 4×4 frames are not a detector's size."""


@dataclass
class TinySet:
    """A case's inputs: the files, their SOF, the output root with previous products, and extra arguments."""

    folder: Path
    paths: list[Path]
    sof: Path
    root: Path
    arguments: list[str]

    def path(self, name: str) -> Path:
        return self.folder / name

    def write_sof(self, extra_lines: tuple[str, ...] = ()) -> None:
        lines = [f"{p.name} TAG" for p in self.paths] + list(extra_lines)
        self.sof.write_text("\n".join(lines) + "\n")

    def replace(self, old: str, new: Path) -> Path:
        """Swap an input for ``new`` in the set and its SOF."""
        self.path(old).unlink()
        self.paths = [new if p.name == old else p for p in self.paths]
        self.write_sof()
        return new

    def settings(self, content: dict | str) -> Path:
        path = self.folder / "user.yaml"
        path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
        self.arguments += ["-s", str(path)]
        return path


def with_card(path: Path, keyword: str, image: str) -> bytes:
    """The file's bytes with the header card of ``keyword`` replaced by the raw 80-character ``image``."""
    data = bytearray(path.read_bytes())
    start = data.index(keyword.ljust(8).encode())
    data[start:start + 80] = image.ljust(80).encode()
    return bytes(data)


def gzipped(case: TinySet, name: str, content: bytes) -> Path:
    """Replace input ``name`` by a gzipped file holding ``content``."""
    target = case.path(f"{name}.gz")
    target.write_bytes(gzip.compress(content))
    return case.replace(name, target)


def raw_card(name: str, keyword: str, image: str) -> Callable[[TinySet], list[str]]:
    def mutate(case: TinySet) -> list[str]:
        case.path(name).write_bytes(with_card(case.path(name), keyword, image))
        return [str(case.path(name)), keyword]
    return mutate


def header_value(name: str, keyword: str, value: object) -> Callable[[TinySet], list[str]]:
    def mutate(case: TinySet) -> list[str]:
        from astropy.io import fits

        fits.setval(case.path(name), keyword, value=value)
        return [str(case.path(name)), f"{keyword} = {value!r}"]
    return mutate


def sof_line(line: str, expected: str) -> Callable[[TinySet], list[str]]:
    def mutate(case: TinySet) -> list[str]:
        case.write_sof((line,))
        return [str(case.sof), expected.format(line=len(case.paths) + 1)]
    return mutate


def user_settings(content: dict | str, *expected: str, named: bool = True) -> Callable[[TinySet], list[str]]:
    """Pass a settings file; the message must name it (``named``) and hold ``expected``."""
    def mutate(case: TinySet) -> list[str]:
        path = case.settings(content)
        return [str(path), *expected] if named else list(expected)
    return mutate


def missing_settings(case: TinySet) -> list[str]:
    case.arguments += ["-s", str(case.folder / "nope.yaml")]
    return [str(case.folder / "nope.yaml"), "does not exist"]


def missing_sof(case: TinySet) -> list[str]:
    case.sof = case.folder / "elsewhere.sof"
    return [str(case.sof), "does not exist"]


def not_utf8_sof(case: TinySet) -> list[str]:
    case.sof.write_bytes(b"flat_0.fits TAG\n\xff\xfe\xfa broken\n")
    return [str(case.sof), "cannot be read"]


def only_comments_sof(case: TinySet) -> list[str]:
    case.sof.write_text("# the frames were here\n\n")
    return [str(case.sof), "lists no FITS files"]


def too_few_flats(case: TinySet) -> list[str]:
    case.paths = [p for p in case.paths if p.name != "flat_4.fits"]
    case.write_sof()
    return ["Only 4 lamp flat(s)", str(case.path("flat_0.fits"))]


def unknown_frame(case: TinySet) -> list[str]:
    from astropy.io import fits

    fits.setval(case.path("lampoff_0.fits"), "HIERARCH ESO DPR TYPE", value="OBJECT")
    return [str(case.path("lampoff_0.fits")), "not frames the mflat recipe uses"]


def not_fits(case: TinySet) -> list[str]:
    case.path("flat_3.fits").write_bytes(b"<html>404 Not Found</html>\n" * 200)
    return [str(case.path("flat_3.fits")), "not a readable FITS file"]


def truncated(case: TinySet) -> list[str]:
    content = case.path("flat_3.fits").read_bytes()
    case.path("flat_3.fits").write_bytes(content[: len(content) // 2 + 100])
    return [str(case.path("flat_3.fits")), "not a readable FITS file"]


def order_table_of_another_arm(case: TinySet) -> list[str]:
    from astropy.io import fits

    fits.setval(case.path("order_tab.fits"), "HIERARCH ESO SEQ ARM", value="VIS")
    return [str(case.path("order_tab.fits")), "another arm"]


def z_without_decompressor(case: TinySet, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setattr("astropy.io.fits.file.HAS_UNCOMPRESSPY", False)
    target = case.path("flat_0.fits.Z")
    shutil.copyfile(Z_FLAT, target)
    case.replace("flat_0.fits", target)
    return [str(target), "pip install uncompresspy", "uncompress"]


def gzipped_card(keyword: str, image: str, *expected: str) -> Callable[[TinySet], list[str]]:
    def mutate(case: TinySet) -> list[str]:
        target = gzipped(case, "flat_1.fits", with_card(case.path("flat_1.fits"), keyword, image))
        return [str(target), *expected]
    return mutate


def truncated_gzip(case: TinySet) -> list[str]:
    target = case.path("flat_1.fits.gz")
    target.write_bytes(gzip.compress(case.path("flat_1.fits").read_bytes())[:-40])
    case.replace("flat_1.fits", target)
    return [str(target), "not a readable FITS file"]


def output_blocked_by_a_file(case: TinySet) -> list[str]:
    shutil.rmtree(case.root / QC)
    (case.root / QC).write_text("a file where the QC folder goes")
    return [str(case.root / QC), "cannot be created"]


CASES: dict[str, tuple[dict, Callable[..., list[str]], bool]] = {
    # name: (frame_set options, mutation returning the fragments the message must hold, _ERROR.log expected)
    "sof-bare-tag": ({}, sof_line("FLAT,LAMP_NIR", "line(s) {line}"), False),
    "sof-prose": ({}, sof_line("These are last night's flats.", "line(s) {line}"), False),
    "sof-punctuation": ({}, sof_line("--- ;;; ---", "line(s) {line}"), False),
    "sof-missing-file": ({}, sof_line("gone.fits FLAT,LAMP_NIR", "Line {line}"), False),
    "sof-only-comments": ({}, only_comments_sof, False),
    "sof-not-utf8": ({}, not_utf8_sof, False),
    "sof-missing": ({}, missing_sof, False),
    "settings-misspelt-qc-metric": ({}, user_settings({"soxs-mflat": {"nir": {"qc-acceptable-ranges": {
        "x-res-sdd": [0, 0.005]}}}}, "x-res-sdd", "Did you mean 'x-res-sd'"), False),
    "settings-reversed-qc-range": ({}, user_settings({"soxs-mflat": {"nir": {"qc-acceptable-ranges": {
        "X RES SD": [0.5, 0]}}}}, "X RES SD", "min ≤ max"), False),
    "settings-report-spelling-accepted": ({}, user_settings({"soxs-mflat": {"nir": {"qc-acceptable-ranges": {
        "X RES SD": [0, 0.5]}}}}, NOT_TRIMMED, named=False), True),
    "settings-unknown-key": ({}, user_settings({"soxs-mflat": {"nir": {"order_deg": 4}}}, "order_deg",
                                               "Did you mean 'order-deg'"), False),
    "settings-wrong-type": ({}, user_settings({"soxs-mflat": {"stacked-clipping-sigma": "five"}},
                                              "stacked-clipping-sigma", "'five'"), False),
    "settings-invalid-yaml": ({}, user_settings("soxs-mflat: [unclosed\n", "not valid YAML"), False),
    "settings-other-instrument": ({}, user_settings({"instrument": "xsh"}, "instrument: xsh"), False),
    "settings-missing": ({}, missing_settings, False),
    "too-few-flats": ({}, too_few_flats, False),
    "mixed-exposure-times": ({"flat_extra": [{}, {"EXPTIME": 20.0}]},
                             lambda case: ["more than one exposure time", str(case.path("flat_1.fits"))], False),
    "no-dark": ({"with_darks": False}, lambda case: ["No dark was given"], False),
    "no-master-bias": ({"arm": "VIS", "with_bias": False}, lambda case: ["No master bias", "MASTER_BIAS_VIS"], False),
    "unknown-frame": ({}, unknown_frame, False),
    "two-instruments": ({"flat_extra": [{}, {}, {"INSTRUME": "XSHOOTER"}]},
                        lambda case: ["more than one instrument", str(case.path("flat_2.fits"))], False),
    "not-fits": ({}, not_fits, False),
    "truncated-fits": ({}, truncated, False),
    "order-table-of-another-arm": ({}, order_table_of_another_arm, False),
    "exptime-nan": ({}, raw_card("flat_2.fits", "EXPTIME", "EXPTIME = NAN"), False),
    "mjd-without-value": ({}, raw_card("flat_2.fits", "MJD-OBS", "MJD-OBS ="), False),
    "binning-absurd": ({"arm": "VIS"}, header_value("flat_2.fits", "ESO DET BINX", 1000), False),
    "read-noise-text": ({}, header_value("flat_2.fits", "ESO DET OUT1 RON", "fast"), False),
    "z-without-decompressor": ({}, z_without_decompressor, False),
    "gzip-simple-false": ({}, gzipped_card("SIMPLE", "SIMPLE  =                    F", "SIMPLE = T"), False),
    "gzip-simple-missing": ({}, gzipped_card("SIMPLE", "COMMENT where SIMPLE was", "SIMPLE = T"), False),
    "gzip-bzero-text": ({}, gzipped_card("BZERO", "BZERO   = 'abc'", "BZERO = 'abc'"), False),
    "gzip-exptime-unterminated": ({}, gzipped_card("EXPTIME", "EXPTIME = 'ten seconds", "EXPTIME"), False),
    "gzip-truncated": ({}, truncated_gzip, False),
    "output-blocked-by-a-file": ({}, output_blocked_by_a_file, False),
}


@pytest.fixture(autouse=True)
def _guarded(request):
    """Give pytest its signal handlers back after ``main()``, and stop a case that hangs (astropy reading a
    gzipped ``SIMPLE = F`` file used to loop for ever) after a minute instead of eating the machine."""
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}

    def hung(_signum, _frame):
        raise TimeoutError(f"{request.node.name} still running after 60 s")

    previous_alarm = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous_alarm)
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def tiny_set(frame_set, tmp_path: Path, **options) -> TinySet:
    """A tiny set, its SOF, and an output root holding previous products of the SOF's stem."""
    paths = frame_set(**options)
    case = TinySet(paths[0].parent, paths, tmp_path / f"{STEM}.sof", tmp_path / "out", [])
    case.write_sof()
    for name, content in ((PRODUCTS / f"{STEM}.fits", "previous master flat"), (PRODUCTS / f"{STEM}.log", "log"),
                          (PRODUCTS / f".{STEM}.lock", "soxs_mflat run pid 1"), (QC / f"{STEM}_QC.csv", "qc")):
        (case.root / name).parent.mkdir(parents=True, exist_ok=True)
        (case.root / name).write_text(content)
    return case


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_paragraph_and_changes_no_product(name: str, frame_set, tmp_path: Path, capsys,
                                                           monkeypatch) -> None:
    options, mutate, error_log = CASES[name]
    case = tiny_set(frame_set, tmp_path, **options)
    expected = mutate(case, monkeypatch) if mutate is z_without_decompressor else mutate(case)
    before = visible(snapshot(case.root))
    status = main(["-x", "mflat", str(case.sof), "-o", str(case.root), *case.arguments])
    message = one_error_line(capsys.readouterr().err)
    assert status == 2
    for fragment in expected:
        assert fragment in message, (fragment, message)
    after = visible(snapshot(case.root))
    assert (after.pop(str(PRODUCTS / f"{STEM}_ERROR.log"), None) is not None) is error_log
    assert after == before
    assert hidden(case.root) == [f".{STEM}.lock"]


@pytest.mark.parametrize("content", ["", "logging:\n  level: INFO\n"], ids=["empty", "no-recipe-block"])
def test_settings_that_change_nothing_are_announced_on_stderr_and_in_the_log(content: str, frame_set,
                                                                            tmp_path: Path) -> None:
    case = tiny_set(frame_set, tmp_path)
    settings = case.settings(content)
    done = subprocess.run([sys.executable, "-m", "soxs_mflat", "-x", "mflat", str(case.sof), "-o", str(case.root),
                           *case.arguments], env=ENV, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 2 and NOT_TRIMMED in one_error_line(done.stderr)
    notice = f"Settings file {settings} {'is empty' if not content else 'has no'}"
    assert notice in done.stderr and "defaults" in done.stderr
    assert notice in (case.root / PRODUCTS / f"{STEM}_ERROR.log").read_text()


def test_unix_compressed_input_reads_like_the_plain_file(frame_set) -> None:
    plain = frame_set()[0]
    compressed = read_frame_file(InputFile(Z_FLAT))
    assert compressed.header == read_frame_file(InputFile(plain)).header
    assert read_raw_adu(Z_FLAT).ravel().tolist() == list(range(16))
