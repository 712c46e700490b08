"""The command line: parsing, exit statuses, one-paragraph errors, rerun command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from soxs_mflat import __version__
from soxs_mflat.cli import main, rerun_command


def test_version_and_help(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--version"])
    assert __version__ in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["-h"])
    assert "soxspipe [-Vx] mflat <inputFrames>" in capsys.readouterr().out


def test_bad_arguments_exit_2(capsys) -> None:
    assert main(["mflat"]) == 2
    assert "Usage" in capsys.readouterr().err
    assert main(["flatten", "x.sof"]) == 2


def test_python_module_entry_point() -> None:
    done = subprocess.run([sys.executable, "-m", "soxs_mflat", "--version"], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and __version__ in done.stdout


def test_verification_error_is_one_paragraph_without_traceback(frame_set, tmp_path: Path, capsys) -> None:
    paths = frame_set(n_flats=4)
    sof = tmp_path / "20250125T023824_NIR_3_MFLAT_QTH_SLIT1_0_10_0S_SOXS.sof"
    sof.write_text("".join(f"{p.name} TAG\n" for p in paths))
    status = main(["mflat", str(sof), "-o", str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert status == 2
    message = [line for line in error.splitlines() if line.startswith("ERROR:")]
    assert len(message) == 1 and "Only 4 lamp flat(s)" in message[0] and "flat_0.fits" in message[0]
    assert "Traceback" not in error
    assert not (tmp_path / "out" / "products").exists()


def test_unusable_output_folder_is_one_paragraph_before_any_work(frame_set, tmp_path: Path, capsys) -> None:
    paths = frame_set()
    (tmp_path / "out" / "qc").mkdir(parents=True)
    (tmp_path / "out" / "qc" / "soxs_mflat").write_text("a file where the QC folder should go")
    status = main(["mflat", ",".join(str(p) for p in paths), "-o", str(tmp_path / "out")])
    error = capsys.readouterr().err
    message = [line for line in error.splitlines() if line.startswith("ERROR:")]
    assert status == 2 and len(message) == 1 and "Traceback" not in error
    assert str(tmp_path / "out" / "qc" / "soxs_mflat") in message[0] and "-o" in message[0]
    assert not any((tmp_path / "out" / "products" / "soxs_mflat").iterdir())


def test_verbose_shows_the_traceback(frame_set, tmp_path: Path, capsys) -> None:
    paths = frame_set(with_darks=False)
    status = main(["-V", "mflat", ",".join(str(p) for p in paths)])
    error = capsys.readouterr().err
    assert status == 2 and "Traceback" in error and "No dark was given" in error


def test_missing_sof_and_settings(tmp_path: Path, frame_set, capsys) -> None:
    assert main(["mflat", str(tmp_path / "missing.sof")]) == 2
    assert "does not exist" in capsys.readouterr().err
    paths = frame_set()
    status = main(["mflat", str(paths[0].parent), "-s", str(tmp_path / "nope.yaml")])
    assert status == 2 and "nope.yaml" in capsys.readouterr().err


def test_rerun_command_is_absolute_with_overwrite(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    command = rerun_command({"<inputFrames>": "set.sof", "-s": "my settings.yaml"}, tmp_path / "out", verbose=False)
    assert command == f"soxspipe -x mflat {tmp_path}/set.sof -o {tmp_path}/out -s '{tmp_path}/my settings.yaml'"
    listed = rerun_command({"<inputFrames>": "a.fits,b.fits", "-s": None}, tmp_path, verbose=True)
    assert listed == f"soxspipe -Vx mflat {tmp_path}/a.fits,{tmp_path}/b.fits -o {tmp_path}"


def test_recipe_start_up_stays_light() -> None:
    """The command-line process imports no plotting and no heavy astropy sub-packages (they cost ~1 s and
    ~80 MB at every start); figures are drawn by the plot process."""
    heavy = ("matplotlib", "astropy.table", "astropy.time")
    code = ("import sys, soxs_mflat.cli, soxs_mflat.recipe; "
            f"print(','.join(m for m in {heavy!r} if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == ""
