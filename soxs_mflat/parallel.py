"""The recipe's concurrency, all of it.

numpy, bottleneck and astropy release the GIL in their array loops, so a step that splits its work
into independent pieces (flats, row blocks, slices) runs them on :data:`WORKERS` threads through
:func:`map_threads`. Besides, QC figures are drawn on one thread while the recipe goes on
(:func:`worker_thread`) and the input files are hashed on another (:func:`in_background`). The
steps themselves stay plain functions of arrays.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

WORKERS = 2
"""Threads a step's pieces are shared among (the machines the recipe targets have at least two cores)."""


def map_threads(function: Callable[[Item], Result], items: Iterable[Item], *, workers: int = WORKERS) -> list[Result]:
    """``[function(item) for item in items]``, on ``workers`` threads when there is more than one item."""
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        return [function(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(workers, len(items)), thread_name_prefix="soxs-step") as pool:
        return list(pool.map(function, items))


@contextmanager
def worker_thread() -> Iterator[Callable[..., Future]]:
    """One worker thread for the run's QC figures: yields its ``submit``; leaving the block waits for
    every task (their futures hold their exceptions)."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="soxs-figures") as pool:
        yield pool.submit


def in_background(function: Callable[..., Result], *arguments: object) -> Future:
    """Start ``function(*arguments)`` on a thread of its own and return its future (for work that only
    reads, e.g. hashing the input files, whose result a later step collects)."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="soxs-background")
    future = pool.submit(function, *arguments)
    pool.shutdown(wait=False)
    return future
