"""QC figures. Functions here build and return matplotlib figures; the recipe saves them.

The non-interactive Agg backend is used so the recipe runs on headless machines.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure


def image_limits(image: np.ndarray, *, low: float = 1.0, high: float = 99.5) -> tuple[float, float]:
    """Display limits from percentiles of the finite pixels."""
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return 0.0, 1.0
    vmin, vmax = np.percentile(finite, [low, high])
    return float(vmin), float(max(vmax, vmin + 1e-6))


def new_figure(*, width: float = 11.0, height: float = 8.5) -> Figure:
    """A figure with constrained layout, at a size legible on screen and on A4."""
    return plt.figure(figsize=(width, height), layout="constrained")
