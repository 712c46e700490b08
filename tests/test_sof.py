"""Input parsing: SOF files, directories and comma-separated lists."""

from __future__ import annotations

from pathlib import Path

import pytest

from soxs_mflat.errors import UserInputError
from soxs_mflat.sof import parse_input_frames


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_sof_comments_blank_lines_and_relative_paths(tmp_path: Path) -> None:
    raw = _touch(tmp_path / "sets" / "raw" / "flat_0.fits")
    cwd_only = _touch(tmp_path / "elsewhere" / "bias.fits")
    sof = tmp_path / "sets" / "20250125T023824_NIR_1X1_3_MFLAT_QTH_SLIT1_0_10_0S_SOXS.sof"
    sof.write_text(f"# a comment\n\nraw/flat_0.fits LAMP,FLAT_NIR\n  \nbias.fits MASTER_BIAS_NIR\n{raw} LAMP,FLAT_NIR\n")
    parsed = parse_input_frames(str(sof), cwd=tmp_path / "elsewhere")
    assert [f.path for f in parsed.files] == [raw, cwd_only, raw]
    assert [f.tag for f in parsed.files] == ["LAMP,FLAT_NIR", "MASTER_BIAS_NIR", "LAMP,FLAT_NIR"]
    assert parsed.sof == sof


def test_sof_prefers_its_own_folder(tmp_path: Path) -> None:
    in_sof_dir = _touch(tmp_path / "a" / "x.fits")
    _touch(tmp_path / "b" / "x.fits")
    sof = tmp_path / "a" / "set.sof"
    sof.write_text("x.fits TAG\n")
    assert parse_input_frames(str(sof), cwd=tmp_path / "b").files[0].path == in_sof_dir


def test_sof_missing_file_names_line_and_file(tmp_path: Path) -> None:
    sof = tmp_path / "set.sof"
    sof.write_text("# header\nmissing_flat.fits LAMP,FLAT_NIR\n")
    with pytest.raises(UserInputError, match=r"Line 2 of the SOF file .*set.sof names missing_flat.fits"):
        parse_input_frames(str(sof), cwd=tmp_path)


def test_missing_or_empty_sof(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="does not exist"):
        parse_input_frames(str(tmp_path / "none.sof"), cwd=tmp_path)
    empty = tmp_path / "empty.sof"
    empty.write_text("# nothing\n")
    with pytest.raises(UserInputError, match="lists no FITS files"):
        parse_input_frames(str(empty), cwd=tmp_path)


def test_directory_and_list(tmp_path: Path) -> None:
    a = _touch(tmp_path / "d" / "a.fits")
    b = _touch(tmp_path / "d" / "B.FITS")
    _touch(tmp_path / "d" / "notes.txt")
    _touch(tmp_path / "d" / "sub" / "c.fits")
    assert [f.path for f in parse_input_frames(str(tmp_path / "d"), cwd=tmp_path).files] == sorted([a, b])
    listed = parse_input_frames("d/a.fits,d/B.FITS", cwd=tmp_path)
    assert [f.path for f in listed.files] == [a, b]
    with pytest.raises(UserInputError, match="does not exist"):
        parse_input_frames("d/a.fits,d/zzz.fits", cwd=tmp_path)
    text_only = _touch(tmp_path / "e" / "x.txt").parent
    with pytest.raises(UserInputError, match="holds no FITS files"):
        parse_input_frames(str(text_only), cwd=tmp_path)


@pytest.mark.parametrize("garbage", ["LAMP,FLAT_NIR", "this set was taken on a cloudy night", "----", "flat.txt LAMP,FLAT"])
def test_sof_with_garbage_lines_is_an_error_naming_the_lines(tmp_path: Path, garbage: str) -> None:
    _touch(tmp_path / "flat_0.fits")
    sof = tmp_path / "set.sof"
    sof.write_text(f"# header\nflat_0.fits LAMP,FLAT_NIR\n{garbage}\n\nflat_0.fits LAMP,FLAT_NIR\n{garbage}\n")
    with pytest.raises(UserInputError, match=r"set\.sof is damaged: line\(s\) 3, 6 ") as error:
        parse_input_frames(str(sof), cwd=tmp_path)
    assert "regenerate it" in str(error.value)


def test_compressed_fits_names_are_entries(tmp_path: Path) -> None:
    files = [_touch(tmp_path / name) for name in ("a.fits.gz", "b.fits.Z", "c.fits.fz", "d.fit")]
    sof = tmp_path / "set.sof"
    sof.write_text("".join(f"{f.name} LAMP,FLAT_NIR\n" for f in files))
    assert [f.path for f in parse_input_frames(str(sof), cwd=tmp_path).files] == files


def test_existing_supplementary_files_are_not_damage(tmp_path: Path) -> None:
    flat = _touch(tmp_path / "flat_0.fits")
    _touch(tmp_path / "extra" / "lines.csv")
    sof = tmp_path / "set.sof"
    sof.write_text("flat_0.fits LAMP,FLAT_NIR\nextra/lines.csv LINE_LIST_NIR\n")
    assert [f.path for f in parse_input_frames(str(sof), cwd=tmp_path).files] == [flat]
