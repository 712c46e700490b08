"""Many sets at once: a simulated 4-night SOXS VIS archive reduced on a local Dask cluster and on an
external one (a ``dask scheduler`` and two ``dask worker`` processes started here), against four
single runs; a worker killed mid-set; reruns with and without -x; no process left behind.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
from astropy.io import fits

from soxs_mflat.batch import (
    STATUS_CRASHED,
    STATUS_DONE,
    STATUS_FAILED,
    SetJob,
    SetOutcome,
    exit_status,
    reduce_set,
)
from soxs_mflat.cli import main, set_arguments
from soxs_mflat.products import ProductPaths, product_paths
from soxs_mflat.recipe import MasterFlatRecipe
from soxs_mflat.simulate.archive import MANIFEST, simulate_archive
from soxs_mflat.sof import parse_input_frames

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> tuple[Path, list[dict]]:
    """A 4-night SOXS VIS archive (three binning modes, one broken set) and its manifest's sets."""
    folder = tmp_path_factory.mktemp("archive")
    simulate_archive(folder, nights=4, instrument="soxs", arms=("VIS",), seed=0)
    return folder, json.loads((folder / MANIFEST).read_text())["sets"]


@pytest.fixture(scope="module")
def single_runs(archive, tmp_path_factory) -> Path:
    """Workspace of the four sets reduced one by one by the single-set command."""
    folder, sets = archive
    out = tmp_path_factory.mktemp("single")
    for entry in sets:
        status = main(["mflat", str(folder / entry["sof"]), "-o", str(out), "-s", str(folder / "soxspipe.yaml")])
        assert status == (0 if entry["expected"] == "done" else 2), entry
    return out


def _paths(root: Path, stem: str) -> ProductPaths:
    return product_paths(stem=stem, root=root, instrument="soxs")


def _batch(archive, out: Path, *extra: str) -> int:
    folder, _ = archive
    return main(["mflat", str(folder / "sof"), "-o", str(out), "-s", str(folder / "soxspipe.yaml"), *extra])


def _summary(out: Path) -> pd.DataFrame:
    """The latest CSV summary, checked against its JSON twin."""
    latest = sorted((out / "qc" / "soxs_mflat").glob("soxs-mflat_batch_*.csv"))[-1]
    table = pd.read_csv(latest, keep_default_na=False)
    records = json.loads(latest.with_suffix(".json").read_text())["sets"]
    assert [r["set"] for r in records] == list(table["set"]) and [r["status"] for r in records] == list(table["status"])
    return table.set_index("set")


def _assert_same_products(batch_root: Path, single_root: Path, stems: list[str]) -> None:
    """FLUX/QUAL/ERRS arrays and order-table columns identical; every HDU's checksums valid."""
    for stem in stems:
        batch, single = _paths(batch_root, stem), _paths(single_root, stem)
        for a_path, b_path in ((batch.master_flat(), single.master_flat()), (batch.order_table(), single.order_table())):
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                with fits.open(a_path, checksum=True) as a, fits.open(b_path) as b:
                    assert [h.name for h in a] == [h.name for h in b]
                    for hdu_a, hdu_b in zip(a, b, strict=True):
                        assert hdu_a.verify_checksum() == 1 and hdu_a.verify_datasum() == 1, (a_path, hdu_a.name)
                        if hdu_a.data is None:
                            continue
                        if isinstance(hdu_a, fits.BinTableHDU):
                            for name in hdu_a.columns.names:
                                np.testing.assert_array_equal(hdu_a.data[name], hdu_b.data[name], err_msg=name)
                        else:
                            np.testing.assert_array_equal(hdu_a.data, hdu_b.data, err_msg=f"{a_path} {hdu_a.name}")
        rerun = single.log().read_text().splitlines()[-1].replace(f"-o {single_root}", f"-o {batch_root}")
        assert batch.log().read_text().splitlines()[-1] == rerun, "each set's log reruns that set alone"


def _assert_summary(table: pd.DataFrame, sets: list[dict], *, expected_done: str = STATUS_DONE) -> None:
    for entry in sets:
        row = table.loc[entry["stem"]]
        if entry["expected"] == "done":
            assert row["status"] == expected_done and row["arm"] == "VIS" and row["qc"] in ("pass", "fail"), row
        else:
            assert row["status"] == STATUS_FAILED and row["detail"], row


def _children() -> set[int]:
    """Processes below this one, except multiprocessing's resource tracker (one per process, ends with it)."""
    processes = psutil.Process().children(recursive=True)
    return {p.pid for p in processes if "multiprocessing.resource_tracker" not in " ".join(p.cmdline())}


def test_set_arguments_expand_folders_of_sofs_only(archive, tmp_path: Path) -> None:
    folder, sets = archive
    expanded = set_arguments([str(folder / "sof"), str(folder / sets[0]["sof"])], cwd=tmp_path)
    assert expanded == sorted(str((folder / s["sof"]).resolve()) for s in sets)
    fits_folder = folder / sets[0]["truth"]
    assert set_arguments([str(fits_folder)], cwd=tmp_path) == [str(fits_folder)]


def test_local_cluster_matches_single_runs_and_reruns_skip(archive, single_runs: Path, tmp_path: Path, capsys) -> None:
    _, sets = archive
    good = [s["stem"] for s in sets if s["expected"] == "done"]
    before = _children()
    out = tmp_path / "out"
    assert _batch(archive, out, "--workers=2") == 2
    captured = capsys.readouterr()
    assert "on 2 worker(s)" in captured.err and "SOXS-MFLAT BATCH SUMMARY" in captured.out
    _assert_summary(_summary(out), sets)
    _assert_same_products(out, single_runs, good)
    assert _children() <= before, "the local cluster left processes behind"

    stamps = {stem: _paths(out, stem).master_flat().stat().st_mtime_ns for stem in good}
    assert _batch(archive, out) == 2  # the broken set still fails; nothing else is touched
    assert "Skipping 3 set(s)" in capsys.readouterr().err
    _assert_summary(_summary(out), sets, expected_done="skipped")
    assert stamps == {stem: _paths(out, stem).master_flat().stat().st_mtime_ns for stem in good}

    _paths(out, good[0]).log().unlink()  # an interrupted earlier run: products without their log
    assert _batch(archive, out) == 2
    table = _summary(out)
    assert table.loc[good[0], "status"] == STATUS_FAILED and "already exist" in table.loc[good[0], "detail"]
    assert set(table.loc[good[1:], "status"]) == {"skipped"}

    assert _batch(archive, out, "-x", "--workers=2") == 2
    _assert_summary(_summary(out), sets)
    assert all(_paths(out, stem).master_flat().stat().st_mtime_ns > stamps[stem] for stem in good)
    _assert_same_products(out, single_runs, good)
    assert _children() <= before


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _kill_first_worker_mid_set(watched: list[Path], workers: set[int], killed: list[int], stop: threading.Event) -> None:
    """SIGKILL the first worker seen writing a temporary file (a QC figure or product of the set it runs)."""
    while not stop.is_set():
        for folder in watched:
            for temporary in folder.glob(".*.tmp") if folder.is_dir() else ():
                pid = int(temporary.name.rsplit(".", 2)[-2])
                if pid in workers:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
        time.sleep(0.01)


def test_external_cluster_survives_a_killed_worker(archive, single_runs: Path, tmp_path: Path) -> None:
    from distributed import Client

    _, sets = archive
    good = [s["stem"] for s in sets if s["expected"] == "done"]
    address = f"tcp://127.0.0.1:{_free_port()}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    dask = [sys.executable, "-m", "dask"]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env}
    processes = [subprocess.Popen([*dask, "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1],
                                   "--no-dashboard"], **quiet)]
    try:
        processes += [subprocess.Popen([*dask, "worker", address, "--nthreads", "1", "--nworkers", "1", "--no-dashboard",
                                        "--death-timeout", "60"], **quiet) for _ in range(2)]
        with Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=120)
            workers = set(client.run(os.getpid).values())
        out = tmp_path / "out"
        killed: list[int] = []
        stop = threading.Event()
        watched = [out / "qc" / "soxs_mflat", out / "products" / "soxs_mflat"]
        killer = threading.Thread(target=_kill_first_worker_mid_set, args=(watched, workers, killed, stop))
        killer.start()
        try:
            status = _batch(archive, out, "--scheduler", address)
        finally:
            stop.set()
            killer.join()
        assert status == 2
        assert len(killed) == 1 and not psutil.pid_exists(killed[0])
        table = _summary(out)
        _assert_summary(table, sets)
        assert killed[0] not in {int(w.rsplit(":", 1)[1]) for w in table.loc[good, "worker"]}, "the killed set was redone"
        _assert_same_products(out, single_runs, good)
        leftovers = {int(t.name.rsplit(".", 2)[-2]) for folder in watched for t in folder.glob(".*.tmp")}
        assert leftovers <= set(killed), "only the killed attempt's temporaries may remain (issue 13 removes them)"
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            process.wait(timeout=60)
    deadline = time.monotonic() + 30
    while _children() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _children(), "dask processes left behind"


def test_crash_and_user_error_in_a_task_are_outcomes(archive, monkeypatch, tmp_path: Path) -> None:
    folder, sets = archive
    entry = next(s for s in sets if s["expected"] == "done")
    input_set = parse_input_frames(str(folder / entry["sof"]), cwd=tmp_path)
    job = SetJob(entry["stem"], "VIS", input_set, None, tmp_path, True, "soxspipe -x mflat x", 500.0)

    def crash(self: MasterFlatRecipe) -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(MasterFlatRecipe, "run", crash)
    outcome = reduce_set(job)
    assert outcome.status == STATUS_CRASHED and outcome.detail == "ZeroDivisionError: a bug"
    assert "Traceback" in outcome.log and outcome.peak_mb > 0
    monkeypatch.undo()
    refused = reduce_set(SetJob(entry["stem"], "VIS", input_set, tmp_path / "missing.yaml", tmp_path, True, "", 500.0))
    assert refused.status == STATUS_FAILED and "missing.yaml" in refused.detail


def test_exit_status() -> None:
    done, skipped = SetOutcome("a", "VIS", STATUS_DONE), SetOutcome("b", "VIS", "skipped")
    failed, crashed = SetOutcome("c", "VIS", STATUS_FAILED), SetOutcome("d", "VIS", STATUS_CRASHED)
    assert exit_status([done, skipped]) == 0
    assert exit_status([done, failed]) == 2
    assert exit_status([failed, crashed, done]) == 1


def test_bad_batch_and_archive_options_are_user_errors(archive, tmp_path: Path, capsys) -> None:
    folder, _ = archive
    assert main(["mflat", str(folder / "sof"), "-o", str(tmp_path), "--workers=0"]) == 2
    assert "--workers must be a positive integer" in capsys.readouterr().err
    assert main(["simulate", "archive", str(tmp_path / "a"), "--arms=UVB"]) == 2
    assert "soxs arms are VIS, NIR, not UVB" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
