"""All-or-nothing product writing, and one run at a time per product stem.

A :class:`ProductTransaction` writes every file of a run to a hidden temporary name in its
destination folder (so a rename onto the final name is atomic), and renames them all into place only
when every one is complete, with stop signals deferred meanwhile. A failure or interruption before
that removes the temporaries and leaves the previous products exactly as they were.

A :class:`StemLock` is an OS file lock (``fcntl.flock``) on ``.<stem>.lock`` in the products folder,
held from before the first check for existing products until the last rename: a second run on the
same products stops at once, naming the lock and the run that holds it. The run that takes the lock
removes the temporaries of that stem that a run killed outright (SIGKILL, a power cut) left behind.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import os
import re
import socket
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType

from soxs_mflat.errors import UserInputError
from soxs_mflat.interruption import deferred_signals

TEMPORARY_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.tmp$")
"""A name made by :func:`temporary_path`: the final name and the pid of the run writing it."""

def temporary_path(path: Path) -> Path:
    """Hidden temporary name for ``path`` in the same folder (so renaming it onto ``path`` is atomic)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


ASTROPY_DISK_FULL = "Not enough space on disk"
"""How astropy words a FITS write that failed for lack of space (its OSError carries no errno)."""


def error_number(error: BaseException) -> int | None:
    """The errno of ``error`` or of the first exception it was raised from or while handling.

    astropy re-raises a failed FITS write as a new OSError without one, the original in its context.
    """
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno is not None:
            return seen.errno
        if ASTROPY_DISK_FULL in str(seen):
            return errno.ENOSPC
        seen = seen.__cause__ or seen.__context__
    return None


def write_error(error: OSError, folder: Path) -> UserInputError:
    """A one-paragraph error for a file that could not be written into ``folder``."""
    number = error_number(error)
    if number in (errno.ENOSPC, errno.EDQUOT):
        fix = "Free space on that file system (or raise the quota), or choose another output directory with -o"
        what = "the disk is full"
    elif number in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "Make the folder writable, or choose another output directory with -o"
        what = "it is not writable" if number != errno.EROFS else "its file system is read-only"
    else:
        fix = "Check the folder and the file system, or choose another output directory with -o"
        what = " ".join((error.strerror or str(error)).split())
    return UserInputError(
        f"The products could not be written to {folder}: {what}. No product was changed: the previous products, if "
        f"any, are intact and no temporary file was left. {fix}, then rerun the same command."
    )


class ProductTransaction:
    """Stage files under temporary names, then :meth:`commit` them all at once (a context manager)."""

    def __init__(self) -> None:
        self._staged: dict[Path, Path] = {}
        self._obsolete: list[Path] = []
        self._committed = False
        self._discarded = False

    @property
    def open(self) -> bool:
        """Neither committed nor discarded: files may still be staged."""
        return not (self._committed or self._discarded)

    def temporary(self, path: Path) -> Path:
        """Register ``path`` and return the temporary name its content must be written to."""
        temporary = temporary_path(path)
        self._staged[path] = temporary
        return temporary

    def obsolete(self, path: Path) -> None:
        """Remove ``path`` (a file of an earlier run that must not outlive this one) as part of :meth:`commit`."""
        self._obsolete.append(path)

    def forget(self, path: Path) -> None:
        """Drop ``path`` from the transaction and remove its temporary (a file that could not be made)."""
        self._staged.pop(path).unlink(missing_ok=True)

    def stage(self, path: Path, write: Callable[[Path], None]) -> Path:
        """Write ``path``'s content through ``write(temporary)``; a write that fails is a user error."""
        temporary = self.temporary(path)
        try:
            write(temporary)
        except OSError as error:
            self.discard()
            raise write_error(error, path.parent) from None
        return path

    def stage_text(self, path: Path, text: str) -> Path:
        """Stage a text file."""
        return self.stage(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))

    def commit(self) -> list[Path]:
        """Flush every staged file to disk, then rename them all into place and remove the obsolete files, with
        stop signals deferred."""
        try:
            for temporary in self._staged.values():
                with open(temporary, "rb+") as handle:
                    os.fsync(handle.fileno())
        except OSError as error:
            self.discard()
            raise write_error(error, next(iter(self._staged)).parent) from None
        with deferred_signals():
            for path, temporary in self._staged.items():
                os.replace(temporary, path)
            self._committed = True
            for path in self._obsolete:
                path.unlink(missing_ok=True)
        return list(self._staged)

    def discard(self) -> None:
        """Remove every temporary file (nothing was renamed yet)."""
        self._discarded = True
        for temporary in self._staged.values():
            temporary.unlink(missing_ok=True)

    def __enter__(self) -> ProductTransaction:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if not self._committed:
            self.discard()


class StemLock:
    """Exclusive lock on the products of one stem, held while the run works (a context manager).

    The lock file is ``folder/.<stem>.lock``.
    """

    def __init__(self, folder: Path, stem: str) -> None:
        self.path = folder / f".{stem}.lock"
        self._descriptor: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise a :class:`UserInputError` naming the run that holds it."""
        try:
            descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise write_error(error, self.path.parent) from None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 400, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(descriptor)
            raise UserInputError(
                f"Another run is writing these products: {holder} holds the lock {self.path}. Nothing was changed. "
                "Wait for that run to finish (or stop it), then rerun; or choose another output directory with -o."
            ) from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"soxs_mflat run pid {os.getpid()} on {socket.gethostname()} since "
                              f"{time.strftime('%Y-%m-%dT%H:%M:%S')}".encode(), 0)
        self._descriptor = descriptor

    def release(self) -> None:
        """Let the next run in (the lock file stays: removing it could let two runs lock different files)."""
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None

    def __enter__(self) -> StemLock:
        self.acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.release()


def remove_stale_temporaries(products: Iterable[Path]) -> list[Path]:
    """Remove the temporaries of ``products`` whose writing process no longer exists (a run killed outright).

    Call it only while holding the products' :class:`StemLock`. A process that cannot be asked about
    (another user's) counts as alive; a file that cannot be removed is left for a later run.
    """
    removed = []
    for product in products:
        for candidate in product.parent.glob(f".{glob.escape(product.name)}.*.tmp"):
            match = TEMPORARY_NAME.match(candidate.name)
            if match is None or _process_exists(int(match["pid"])):
                continue
            try:
                candidate.unlink()
            except OSError:
                continue
            removed.append(candidate)
    return removed


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True
