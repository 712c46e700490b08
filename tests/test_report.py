"""The terminal report and the command's messages: width, verbosity, colour, QC warnings, unknown commands."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from soxs_mflat.cli import main, unmatched_command_line
from soxs_mflat.products import product_paths
from soxs_mflat.qc import METRICS, qc_row
from soxs_mflat.report import WIDTH, format_report
from soxs_mflat.simulate import simulate_set

ESCAPE = re.compile(r"\033\[[0-9;]*m")
UVB_STEM = "20251012T111444_UVB_2X2_FAST_MFLAT_LAMP_1_0X11_120_0S_XSHOOTER"
STEPS = {"verify inputs": 0.41, "prepare and detrend flats [DLAMP]": 1.2, "fit order edges [QLAMP]": 0.3,
         "write products": 0.8}


def _qc_rows() -> list:
    """Every metric, with large and small values, some ranges passed, one failed, and per-order rows."""
    rows = [qc_row(name, 1234567.891 if index % 2 else 0.000123, limits=(0, 2e6) if index % 3 == 0 else None)
            for index, name in enumerate(name for name in METRICS if name not in ("N SLICES", "ORDEXP90"))]
    rows.append(qc_row("ORDEXP90", 45021.1, limits=(60000, 70000)))
    rows += [qc_row("N SLICES", 40 + order, order=order, to_header=False) for order in range(6, 25)]
    return rows


def _uvb_products(root: Path) -> list[tuple[str, Path, str]]:
    """Every file of a stitched X-shooter UVB run with a long data-organiser stem."""
    paths = product_paths(stem=UVB_STEM, root=root, instrument="xsh")
    products = []
    for lamp in ("DLAMP", "QLAMP", ""):
        tag = f"_{lamp}" if lamp else ""
        products += [(f"MFLAT{tag}", paths.master_flat(lamp), "UVB master spectroscopic flat frame"),
                     (f"ORDER_LOC{tag}", paths.order_table(lamp), "table of coefficients"),
                     (f"BKGROUND{tag}", paths.background(lamp), "modelled scattered background light"),
                     (f"ORDER_LOC_RES{tag}", paths.order_location_plot(lamp), "order edge detections and fits"),
                     (f"BKGROUND{tag}", paths.background_plot(lamp), "scattered-light model")]
    return [*products, ("QC_TABLE", paths.qc_table(), "QC metrics of this run"), ("LOG", paths.log(), "recipe log")]


def _report(tmp_path: Path, **options: bool) -> str:
    root = tmp_path / "out"
    return format_report(arm="UVB", qc=_qc_rows(), products=_uvb_products(root), log_path=root / "products" / "x.log",
                         root=root, step_seconds=STEPS, **options)


def test_default_report_fits_100_columns_and_keeps_every_file_name_whole(tmp_path: Path) -> None:
    report = _report(tmp_path)
    assert max(len(line) for line in report.splitlines()) <= WIDTH == 100
    for _, path, _ in _uvb_products(tmp_path / "out"):
        assert path.name in report.split()
    assert "comment" not in report and "# Per-order QC" not in report and "# Time per step" not in report
    assert not any(METRICS[name].comment in report for name in METRICS)


def test_verbose_report_adds_comments_per_order_qc_and_step_times(tmp_path: Path) -> None:
    report = _report(tmp_path, verbose=True)
    assert all(METRICS[name].comment in report for name in METRICS if name != "N SLICES")
    per_order = report.split("# Per-order QC\n")[1].split("\n\n")[0].splitlines()
    assert per_order[0].startswith("  N SLICES by order: 6:46 7:47 ")
    assert " ".join(per_order).split() == ["N", "SLICES", "by", "order:", *(f"{o}:{40 + o}" for o in range(6, 25))]
    assert all(len(line) <= WIDTH for line in per_order)
    times = report.split("# Time per step\n")[1].split("\n\n")[0].splitlines()
    assert [line.split()[-2] for line in times] == [f"{seconds:.2f}" for seconds in STEPS.values()]
    assert all(step in line for step, line in zip(STEPS, times, strict=True))
    assert "description" in report and "UVB master spectroscopic flat frame" in report


@pytest.mark.parametrize("verbose", [False, True])
def test_colour_codes_only_when_asked(tmp_path: Path, verbose: bool) -> None:
    plain = _report(tmp_path, verbose=verbose)
    coloured = _report(tmp_path, verbose=verbose, colour=True)
    assert "\033[" not in plain
    assert ESCAPE.sub("", coloured) == plain
    failing = next(line for line in coloured.splitlines() if line.lstrip().startswith("ORDEXP90"))
    assert failing.endswith("\033[1;31mfail\033[0m")
    assert any(line.endswith("\033[32mpass\033[0m") for line in coloured.splitlines())


def test_an_unknown_command_says_where_the_other_recipes_come_from(capsys) -> None:
    assert main(["mbias", "x.sof"]) == 2
    error = capsys.readouterr().err
    first, *usage = error.splitlines()
    assert first.startswith("'soxspipe mbias' is not a command of soxs_mflat.")
    assert "'soxspipe mflat'" in first and "'soxspipe simulate'" in first and "soxspipe itself" in first
    assert "Argument(" not in error and "unmatched" not in error
    assert usage[0] == "Usage:" and any("mflat <inputFrames>" in line for line in usage)
    assert main(["mflat"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("The command line matches none of these forms") and "Argument(" not in error


@pytest.mark.parametrize(
    ("argv", "named"),
    [(["order_centres", "a.sof", "-x"], "order_centres"), (["-o", "out", "mdark", "d.sof"], "mdark"),
     (["-s", "mflat.yaml", "mflat"], None), (["simulate"], None), ([], None)],
)
def test_the_command_named_is_found_among_the_options(argv: list[str], named: str | None) -> None:
    usage = "Usage:\n    soxspipe [-Vx] mflat <inputFrames> [-o <dir>]\n    soxspipe simulate <outputDirectory>\n"
    message = unmatched_command_line(argv, usage)
    if named is None:
        assert message.startswith("The command line matches none")
    else:
        assert message.startswith(f"'soxspipe {named}' is not a command of soxs_mflat.")
    assert message.endswith("soxspipe simulate <outputDirectory>")


@pytest.fixture(scope="module")
def failed_qc_run(tmp_path_factory) -> dict:
    """X-shooter VIS 2x2 (the smallest set) reduced by the command with an ORDEXP90 range it misses."""
    base = tmp_path_factory.mktemp("failed-qc")
    made = simulate_set(base / "raw", instrument="xsh", arm="VIS", binning=(2, 2))
    settings = base / "strict.yaml"
    settings.write_text("soxs-mflat:\n    vis:\n        qc-acceptable-ranges:\n            ordexp90: [1.0e+9, 2.0e+9]\n")
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]),
                                                                 os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "soxs_mflat", "mflat", str(made.sof), "-o", str(base / "out"), "-s",
                           str(settings)], capture_output=True, text=True, env=environment, check=False)
    return {"made": made, "done": done, "root": base / "out"}


@pytest.mark.slow
def test_a_failed_qc_is_one_warning_and_the_products_are_written(failed_qc_run: dict) -> None:
    done, root, stem = failed_qc_run["done"], failed_qc_run["root"], failed_qc_run["made"].sof.stem
    assert done.returncode == 0, done.stderr
    products = root / "products" / "soxs_mflat"
    assert (products / f"{stem}.fits").exists() and (products / f"{stem.replace('MFLAT', 'OLOC')}.fits").exists()
    qc = pd.read_csv(root / "qc" / "soxs_mflat" / f"{stem}_QC.csv")
    ordexp90 = qc.loc[qc.qc_name == "ORDEXP90"].iloc[0]
    assert ordexp90.qc_flag == "fail" and (qc.qc_flag == "fail").sum() == 1
    log = (products / f"{stem}.log").read_text()
    for text in (done.stderr, log):
        warnings = [line for line in text.splitlines() if "WARNING" in line]
        assert len(warnings) == 1, warnings
        assert "ORDEXP90" in warnings[0] and f"{ordexp90.qc_value:.6g}" in warnings[0]
        assert "[1e+09, 2e+09]" in warnings[0]
    report = done.stdout.splitlines()
    row = next(line for line in report if line.lstrip().startswith("ORDEXP90"))
    assert row.split()[-1] == "fail" and "\033[" not in done.stdout
    assert all(len(line) <= WIDTH for line in report if not line.startswith("Recipe Command: "))
    assert report[-1].startswith("Recipe Command: soxspipe -x mflat ")


@pytest.mark.slow
def test_the_scorer_prints_json_only_when_asked(failed_qc_run: dict, capsys) -> None:
    made, products = failed_qc_run["made"], failed_qc_run["root"] / "products" / "soxs_mflat"
    assert main(["simulate", "score", str(products), str(made.truth_dir)]) == 0
    summary = capsys.readouterr().out
    assert "{" not in summary and summary.strip()
    assert main(["simulate", "score", str(products), str(made.truth_dir), "--json"]) == 0
    with_json = capsys.readouterr().out
    assert with_json.startswith(summary)
    assert json.loads(with_json[len(summary):])["arm"] == "VIS"
