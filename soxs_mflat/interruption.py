"""Signals that stop a run (SIGTERM, SIGINT, SIGHUP) become an :class:`Interrupted` exception.

The command line installs the handlers; the recipe's cleanup then removes every temporary file as
the exception unwinds. While the finished products are renamed into place the signals are deferred
(:func:`deferred_signals`), so a run stops either before the first rename (previous products all
unchanged) or after the last (all replaced), never in between. Without the handlers installed (a
library call, a Dask worker thread) :func:`deferred_signals` does nothing.
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


def _handle(signum: int, _frame: object) -> None:
    global _pending
    if _deferring:
        _pending = signum
        return
    raise Interrupted(signum)


def install_handlers() -> None:
    """Turn the stop signals into :class:`Interrupted` (main thread only, as Python requires)."""
    if threading.current_thread() is threading.main_thread():
        for signum in STOP_SIGNALS:
            signal.signal(signum, _handle)


@contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold back stop signals inside the block; one that arrived meanwhile is raised when it ends."""
    global _deferring, _pending
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
        if not _deferring and _pending is not None:
            signum, _pending = _pending, None
            raise Interrupted(signum)
