"""Robust statistics shared by the reduction steps."""

from __future__ import annotations

import numpy as np

MAD_TO_SIGMA = 1.482602218505602
"""Standard deviation of a normal distribution per unit of its median absolute deviation: 1 / Φ⁻¹(3/4)."""


def partition_median(values: np.ndarray, *, overwrite: bool = False) -> float:
    """``np.median`` of a non-empty 1-D array without NaN, by single-rank partitions (numpy's own
    partitions for two ranks, which is much slower); ``values`` is reordered in place if ``overwrite``."""
    work = values if overwrite else values.copy()
    middle = (work.size - 1) // 2
    work.partition(middle)
    if work.size % 2:
        return float(work[middle])
    return float((work[middle] + work[middle + 1 :].min()) / work.dtype.type(2))
