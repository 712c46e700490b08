"""The recipe's concurrency, all of it: threads over independent pieces of one step.

numpy, bottleneck and astropy release the GIL in their array loops, so a step that splits its work
into independent pieces (flats, row blocks, slices) runs them on :data:`WORKERS` threads through
:func:`map_threads`; QC figures are drawn on one thread alongside the writing of the FITS products
(:func:`alongside`). The steps themselves stay plain functions of arrays: they only ever call these two.
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
def alongside(tasks: Iterable[Callable[[], None]]) -> Iterator[list[Future]]:
    """Run ``tasks`` one after the other on a worker thread while the body of the ``with`` runs; the block
    ends when they are all done (their futures hold their exceptions)."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="soxs-alongside") as pool:
        yield [pool.submit(task) for task in tasks]
