"""Signals that stop a run (SIGTERM, SIGINT, SIGHUP) become an :class:`Interrupted` exception.

The command line installs the handlers; the recipe's cleanup then removes every temporary file as
the exception unwinds. While the finished products are renamed into place the signals are deferred
(:func:`deferred_signals`), so a run stops either before the first rename (previous products all
unchanged) or after the last (all replaced), never in between. Once a stop signal has been raised,
further ones are ignored, so that a second Ctrl-C cannot cut the cleanup short. Without the handlers
installed (a library call, a Dask worker thread) :func:`deferred_signals` does nothing.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Interrupted(BaseException):
    """A stop signal arrived; a BaseException so that no ``except Exception`` swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_status(self) -> int:
        """The shell convention for a process ended by a signal: 128 + its number."""
        return 128 + self.signum


_deferring = 0
_pending: int | None = None
_stopping = False


def _handle(signum: int, _frame: object) -> None:
    global _pending, _stopping
    if _stopping:
        return
    if _deferring:
        _pending = signum
        return
    _stopping = True
    raise Interrupted(signum)


def install_handlers() -> None:
    """Turn the stop signals into :class:`Interrupted` (main thread only, as Python requires)."""
    global _pending, _stopping
    if threading.current_thread() is threading.main_thread():
        _pending, _stopping = None, False
        for signum in STOP_SIGNALS:
            signal.signal(signum, _handle)


@contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold back stop signals inside the block; one that arrived meanwhile is raised when it ends."""
    global _deferring, _pending, _stopping
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
        if not _deferring and _pending is not None:
            signum, _pending, _stopping = _pending, None, True
            raise Interrupted(signum)
