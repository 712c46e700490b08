"""All-or-nothing product writing, stem locks and deferred stop signals."""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

import pytest

from soxs_mflat.errors import UserInputError
from soxs_mflat.interruption import Interrupted, deferred_signals, install_handlers
from soxs_mflat.transaction import ProductTransaction, StemLock, write_error


def _listing(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_commit_replaces_every_file_at_once(tmp_path: Path) -> None:
    (tmp_path / "a.fits").write_text("old a")
    with ProductTransaction() as transaction:
        transaction.stage_text(tmp_path / "a.fits", "new a")
        transaction.stage_text(tmp_path / "b.csv", "new b")
        assert (tmp_path / "a.fits").read_text() == "old a" and not (tmp_path / "b.csv").exists()
        transaction.commit()
    assert _listing(tmp_path) == {"a.fits": b"new a", "b.csv": b"new b"}


def test_failure_before_commit_leaves_previous_products_and_no_temporary(tmp_path: Path) -> None:
    (tmp_path / "a.fits").write_text("old a")
    with pytest.raises(RuntimeError), ProductTransaction() as transaction:
        transaction.stage_text(tmp_path / "a.fits", "new a")
        raise RuntimeError("a step failed")
    assert _listing(tmp_path) == {"a.fits": b"old a"}


def test_a_write_that_fails_is_a_user_error_naming_the_folder(tmp_path: Path) -> None:
    (tmp_path / "a.fits").write_text("old a")

    def full_disk(temporary: Path) -> None:
        temporary.write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(UserInputError, match=f"{tmp_path}: the disk is full.*Free space") as error, \
            ProductTransaction() as transaction:
        transaction.stage_text(tmp_path / "b.csv", "complete")
        transaction.stage(tmp_path / "a.fits", full_disk)
    assert "Traceback" not in str(error.value)
    assert _listing(tmp_path) == {"a.fits": b"old a"}


@pytest.mark.parametrize(("code", "words"), [(errno.EACCES, "not writable"), (errno.EROFS, "read-only"),
                                             (errno.EIO, "Input/output error")])
def test_write_errors_say_what_happened(tmp_path: Path, code: int, words: str) -> None:
    message = str(write_error(OSError(code, os.strerror(code)), tmp_path))
    assert words in message and str(tmp_path) in message and "-o" in message


def test_second_lock_on_a_stem_is_refused_naming_the_holder(tmp_path: Path) -> None:
    with StemLock(tmp_path, "night"):
        with pytest.raises(UserInputError, match=rf"pid {os.getpid()}.*\.night\.lock.*Nothing was changed"):
            StemLock(tmp_path, "night").acquire()
        with StemLock(tmp_path, "other-night"):
            pass
    with StemLock(tmp_path, "night"):
        pass


def test_signals_are_deferred_while_products_are_renamed() -> None:
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        install_handlers()
        done = []
        with pytest.raises(Interrupted) as stopped:
            with deferred_signals():
                os.kill(os.getpid(), signal.SIGTERM)
                done.append("renamed")
        assert done == ["renamed"] and stopped.value.exit_status == 128 + signal.SIGTERM
        os.kill(os.getpid(), signal.SIGINT)  # a second stop signal while cleaning up is ignored
        install_handlers()
        with pytest.raises(Interrupted):
            os.kill(os.getpid(), signal.SIGHUP)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
