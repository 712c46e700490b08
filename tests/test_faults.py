"""Fault matrix, part 1 (issue 13): real faults while a full-size set is reduced.

Each case runs the command line on one simulated SOXS VIS set (simulated and reduced once per module:
the "previous products") and asserts the exit status, the one-paragraph message naming the folder or
file, that no traceback is printed, and the exact state of the output folders afterwards: previous
products byte-identical, no temporary file, the lock file, and an ``_ERROR.log`` only where the
recipe documents one. Faults are real: stop signals sent to a subprocess the moment a temporary
product appears; permissions enforced by running as root without CAP_DAC_OVERRIDE (``setpriv``; root
ignores ``chmod`` otherwise); a read-only bind mount and a small tmpfs in a private mount namespace
(``unshare -m``); two processes on the same products. Only the figure failure is injected in-process.
Part 2 (``test_faults_inputs.py``) covers bad inputs on tiny header-only sets.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from soxs_mflat.cli import main
from soxs_mflat.simulate import simulate_set

WORKTREE = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(WORKTREE)}
PRODUCTS = Path("products") / "soxs_mflat"
QC = Path("qc") / "soxs_mflat"
ROOT_BYPASS_DROPPED = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner"]
"""Run a command as root but subject to file permissions (no capability to override them)."""


def snapshot(root: Path) -> dict[str, str]:
    """Every file below ``root`` (hidden ones too): relative path → SHA-256 of its bytes."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}


def visible(state: dict[str, str]) -> dict[str, str]:
    """The products, QC files and logs of a snapshot (not the hidden lock and temporary files)."""
    return {name: digest for name, digest in state.items() if not Path(name).name.startswith(".")}


def hidden(root: Path) -> list[str]:
    """Names of the hidden files below ``root``: the stem's lock, and temporaries if anything went wrong."""
    return sorted(p.name for p in root.rglob(".*") if p.is_file())


def one_error_line(stderr: str) -> str:
    """The single ``ERROR:`` line of a failed run (and no traceback anywhere)."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("ERROR:")]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.fixture(autouse=True)
def _restore_signal_handlers():
    """``main()`` run in-process installs the stop-signal handlers: give pytest its own back."""
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


@pytest.fixture(scope="module")
def full_set(tmp_path_factory):
    """(simulated set, output root of a successful run, its snapshot, product stem)."""
    base = tmp_path_factory.mktemp("faults")
    made = simulate_set(base / "raw", instrument="soxs", arm="VIS")
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        assert main(["mflat", str(made.sof), "-o", str(base / "previous"), "-s", str(made.settings)]) == 0
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
    return made, base / "previous", snapshot(base / "previous"), made.sof.stem


@pytest.fixture
def previous(full_set, tmp_path: Path) -> Path:
    """A fresh copy of the previous products, as the output root of the run under test."""
    root = tmp_path / "out"
    shutil.copytree(full_set[1], root)
    return root


def mflat_command(full_set, root: Path, *extra: str) -> list[str]:
    made = full_set[0]
    return [sys.executable, "-m", "soxs_mflat", *extra, "mflat", str(made.sof), "-o", str(root), "-s",
            str(made.settings)]


def run(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=600, check=False)


def assert_previous_intact(full_set, root: Path, *, error_log: bool = False) -> None:
    """Previous products byte-identical, only the lock hidden (no temporary), ``_ERROR.log`` as stated."""
    stem = full_set[3]
    after = visible(snapshot(root))
    error_name = str(PRODUCTS / f"{stem}_ERROR.log")
    assert (error_name in after) is error_log
    after.pop(error_name, None)
    assert after == visible(full_set[2])
    assert hidden(root) == [f".{stem}.lock"]


def wait_for_temporary(process: subprocess.Popen, folder: Path) -> None:
    """Return once a temporary product appears in ``folder`` (the run is writing its products)."""
    deadline = time.monotonic() + 600
    while not any(folder.glob(".*.tmp")):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.005)


@pytest.mark.parametrize(("signum", "folder", "repeats"), [
    (signal.SIGTERM, PRODUCTS, 1),
    (signal.SIGINT, PRODUCTS, 3),  # Ctrl-C pressed three times: the later ones must not cut the cleanup short
    (signal.SIGHUP, QC, 1),  # the terminal closes while a QC figure is being saved
], ids=["SIGTERM", "SIGINT-three-times", "SIGHUP-during-figure"])
def test_stop_signal_while_writing_leaves_previous_products_and_no_temporary(full_set, previous: Path, signum: int,
                                                                             folder: Path, repeats: int) -> None:
    process = subprocess.Popen(mflat_command(full_set, previous, "-x"), env=ENV, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    wait_for_temporary(process, previous / folder)
    for _ in range(repeats):
        process.send_signal(signum)
        time.sleep(0.02)
    _, stderr = process.communicate(timeout=600)
    # A repeated SIGINT that lands after the cleanup, while Python exits, ends the process by the signal
    # itself (-2), which a shell reports as the same status 130.
    assert process.returncode in ((128 + signum,) if repeats == 1 else (128 + signum, -signum))
    assert "Traceback" not in stderr
    stopped = [line for line in stderr.splitlines() if line.startswith("Stopped by")]
    assert stopped == [f"Stopped by {signal.Signals(signum).name}: no product was changed or half-written and no "
                       "temporary file was left; rerun the same command to start again."]
    assert_previous_intact(full_set, previous)


def test_second_run_on_the_same_products_stops_at_the_lock_and_changes_nothing(full_set, previous: Path) -> None:
    """Two terminals on one set. The first run is paused (SIGSTOP) while it holds the lock, so that the
    second's effect is seen alone: refused, naming the first's lock, not one byte changed. The first then
    completes, replacing every product and removing the stem's old ``_ERROR.log`` and the temporaries
    that a run killed outright left behind."""
    stem = full_set[3]
    dead = subprocess.Popen(["true"])
    dead.wait()
    (previous / PRODUCTS / f"{stem}_ERROR.log").write_text("a failed run of yesterday\n")
    for leftover in (previous / PRODUCTS / f".{stem}.fits.{dead.pid}.tmp", previous / QC / f".{stem}_QC.csv.{dead.pid}.tmp"):
        leftover.write_text("half-written by a run killed with SIGKILL")
    lock = previous / PRODUCTS / f".{stem}.lock"
    first = subprocess.Popen(mflat_command(full_set, previous, "-x"), env=ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while f"pid {first.pid} " not in lock.read_text():
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.01)
    first.send_signal(signal.SIGSTOP)
    try:
        before = snapshot(previous)
        second = run(mflat_command(full_set, previous, "-x"))
        assert snapshot(previous) == before
    finally:
        first.send_signal(signal.SIGCONT)
    message = one_error_line(second.stderr)
    assert second.returncode == 2
    assert f"pid {first.pid}" in message and str(lock) in message and "Nothing was changed" in message
    _, first_err = first.communicate(timeout=600)
    assert first.returncode == 0, first_err
    after = snapshot(previous)
    assert set(visible(after)) == set(visible(full_set[2]))
    assert all(after[name] != full_set[2][name] for name in visible(after) if name.endswith((".fits", ".log", ".csv")))
    assert hidden(previous) == [f".{stem}.lock"]


def test_read_only_products_folder_is_one_paragraph_and_changes_nothing(full_set, previous: Path,
                                                                        permissions_enforced: list[str]) -> None:
    folder = previous / PRODUCTS
    folder.chmod(0o555)
    try:
        done = run([*permissions_enforced, *mflat_command(full_set, previous, "-x")])
    finally:
        folder.chmod(0o755)
    message = one_error_line(done.stderr)
    assert done.returncode == 2
    assert f"written to {folder}: it is not writable" in message and "Make the folder writable" in message
    assert_previous_intact(full_set, previous)


@pytest.mark.parametrize("read_only", ["root", "products"], ids=["output-root", "empty-products-folder"])
def test_read_only_output_before_any_product_is_one_paragraph(full_set, tmp_path: Path, read_only: str,
                                                              permissions_enforced: list[str]) -> None:
    root = tmp_path / "fresh"
    (root / "products" / "soxs_mflat").mkdir(parents=True)
    locked = root if read_only == "root" else root / PRODUCTS
    if read_only == "root":
        shutil.rmtree(root / "products")
    locked.chmod(0o555)
    try:
        done = run([*permissions_enforced, *mflat_command(full_set, root)])
    finally:
        locked.chmod(0o755)
    message = one_error_line(done.stderr)
    assert done.returncode == 2 and str(locked) in message and "-o" in message
    assert [p for p in root.rglob("*") if p.is_file()] == []


@pytest.fixture(scope="module")
def permissions_enforced() -> list[str]:
    """The command prefix under which ``chmod`` binds: none for a user, ``setpriv`` without the overrides for root."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: chmod would not stop root's writes")
    return ROOT_BYPASS_DROPPED


def namespace(script: str) -> subprocess.CompletedProcess:
    """Run a shell script in a private mount namespace (its mounts vanish with it)."""
    return subprocess.run(["unshare", "-m", "sh", "-c", script], env=ENV, capture_output=True, text=True,
                          timeout=600, check=False)


@pytest.fixture(scope="module")
def can_mount(tmp_path_factory) -> None:
    target = tmp_path_factory.mktemp("mount-check")
    if shutil.which("unshare") is None or namespace(f"mount -t tmpfs -o size=64k tmpfs {target}").returncode != 0:
        pytest.skip("no private mount namespace here (unshare -m and mount need root)")


def test_read_only_file_system_is_one_paragraph_and_changes_nothing(full_set, previous: Path, can_mount) -> None:
    command = shlex.join(mflat_command(full_set, previous, "-x"))
    done = namespace(f"mount --bind {previous} {previous} && mount -o remount,ro,bind {previous} && {command}")
    message = one_error_line(done.stderr)
    assert done.returncode == 2 and f"{previous / PRODUCTS}: its file system is read-only" in message
    assert_previous_intact(full_set, previous)


def test_full_disk_is_one_paragraph_and_keeps_the_previous_products(full_set, tmp_path: Path, can_mount) -> None:
    """A tmpfs with the previous products and 2 MB to spare: the new master flat cannot be written."""
    root, copy = tmp_path / "disk", tmp_path / "after"
    root.mkdir()
    size_kb = sum(p.stat().st_size for p in full_set[1].rglob("*") if p.is_file()) // 1024 + 2048
    command = shlex.join(mflat_command(full_set, root, "-x"))
    done = namespace(f"mount -t tmpfs -o size={size_kb}k tmpfs {root} && cp -a {full_set[1]}/. {root}/ && "
                     f"{{ {command}; status=$?; cp -a {root} {copy}; exit $status; }}")
    message = one_error_line(done.stderr)
    assert done.returncode == 2 and f"written to {root / PRODUCTS}: the disk is full" in message
    assert "Free space" in message
    assert_previous_intact(full_set, copy, error_log=True)
    error_log = (copy / PRODUCTS / f"{full_set[3]}_ERROR.log").read_text()
    assert "the disk is full" in error_log and error_log.rstrip().splitlines()[-1].startswith("Recipe Command:")


def test_refusal_without_overwrite_writes_nothing(full_set, previous: Path) -> None:
    done = run(mflat_command(full_set, previous))
    message = one_error_line(done.stderr)
    assert done.returncode == 2 and "nothing was changed" in message and "-x" in message
    assert f"{PRODUCTS / full_set[3]}.fits" in done.stderr
    assert_previous_intact(full_set, previous)


def test_order_table_missing_the_terms_its_degrees_claim_is_an_error_naming_columns(full_set, previous: Path,
                                                                                   tmp_path: Path) -> None:
    from astropy.io import fits

    made = full_set[0]
    table = next(made.sof.parent.glob("calib/ORDER_TAB_*.fits"))
    damaged_set = tmp_path / "raw"
    shutil.copytree(made.sof.parent, damaged_set)
    damaged = damaged_set / table.relative_to(made.sof.parent)
    with fits.open(table) as hdus:
        columns = [c for c in hdus[1].columns if not c.name.startswith("cent_3")]
        hdus[1] = fits.BinTableHDU.from_columns(columns)
        hdus.writeto(damaged, overwrite=True)
    done = run([sys.executable, "-m", "soxs_mflat", "-x", "mflat", str(damaged_set / made.sof.name), "-o", str(previous),
                "-s", str(made.settings)])
    message = one_error_line(done.stderr)
    assert done.returncode == 2 and str(damaged) in message and "degorder_cent = 3" in message
    assert "lacks the column(s) cent_30, cent_31" in message
    assert_previous_intact(full_set, previous, error_log=True)


def test_figure_that_cannot_be_drawn_is_a_warning_and_costs_no_product(full_set, tmp_path: Path, monkeypatch) -> None:
    from soxs_mflat import plots

    draw = plots.render

    def failing_render(figure, path: Path, **options) -> None:
        if "_ORD_LOC" in path.name:
            path.write_bytes(b"%PDF-1.4 half a figure")
            raise RuntimeError("injected: the figure cannot be drawn")
        draw(figure, path, **options)

    monkeypatch.setattr(plots, "render", failing_render)
    made, root = full_set[0], tmp_path / "out"
    assert main(["mflat", str(made.sof), "-o", str(root), "-s", str(made.settings)]) == 0
    names = set(visible(snapshot(root)))
    assert names == set(visible(full_set[2])) - {str(QC / f"{full_set[3]}_ORD_LOC.pdf")}
    assert hidden(root) == [f".{full_set[3]}.lock"]
    log = (root / PRODUCTS / f"{full_set[3]}.log").read_text()
    assert f"QC figure {full_set[3]}_ORD_LOC.pdf was not written: injected" in log


def test_full_disk_as_astropy_reports_it_is_recognised(tmp_path: Path) -> None:
    """astropy re-raises a FITS write that ran out of space as an OSError without errno (numpy's short write
    inside): the message must still say the disk is full, not echo astropy's text."""
    from soxs_mflat.transaction import write_error

    try:
        try:
            raise OSError("8000000 requested and 130712 written")
        except OSError as short_write:
            raise OSError(f"Not enough space on disk: requested 8000000, available 0. {short_write}") from None
    except OSError as error:
        message = str(write_error(error, tmp_path))
    assert f"written to {tmp_path}: the disk is full" in message and "requested" not in message
