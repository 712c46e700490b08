"""Quick-look PNG of a raw or prepared frame, to check by eye that a simulated flat looks real."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.io import fits
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

MAX_SIDE_INCHES = 14.0


def preview_png(fits_path: Path, png_path: Path) -> None:
    """Draw HDU 0 of ``fits_path`` with an asinh stretch between robust limits and save it as PNG.

    The lower limit is the 0.5th percentile and the upper one the 99.8th, so the faint inter-order
    light, the bias/overscan and the bright orders are all visible. Uses the Agg canvas directly, so
    it never touches the pyplot state or needs a display.
    """
    with fits.open(fits_path) as hdul:
        data = np.asarray(hdul[0].data, dtype=np.float64)
        header = hdul[0].header
    finite = data[np.isfinite(data)]
    low, high = np.percentile(finite, [0.5, 99.8]) if finite.size else (0.0, 1.0)
    scaled = np.clip((data - low) / max(high - low, 1e-12), 0.0, 1.0)
    softening = 60.0
    stretched = np.arcsinh(softening * scaled) / np.arcsinh(softening)

    rows, cols = data.shape
    aspect = cols / rows
    height = MAX_SIDE_INCHES if aspect <= 1 else MAX_SIDE_INCHES / aspect
    figure = Figure(figsize=(max(height * aspect, 3.0) + 1.5, height + 0.8), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(stretched, origin="lower", cmap="gray", interpolation="antialiased", aspect="equal")
    colorbar = figure.colorbar(image, ax=axes, fraction=0.05, pad=0.02)
    ticks = np.linspace(0.0, 1.0, 6)
    colorbar.set_ticks(ticks)
    colorbar.set_ticklabels([f"{low + (high - low) * np.sinh(t * np.arcsinh(softening)) / softening:.4g}" for t in ticks])
    axes.set_xlabel("x (column)")
    axes.set_ylabel("y (row)")
    axes.set_title(_title(Path(fits_path).name, header), fontsize=9)
    figure.savefig(png_path)


def _title(name: str, header: fits.Header) -> str:
    """File name plus the instrument, arm and frame type from the header."""
    parts = [name]
    for key in ("INSTRUME", "ESO SEQ ARM", "ESO DPR TYPE", "ESO DPR TECH", "ESO PRO CATG", "EXPTIME"):
        if key in header:
            parts.append(f"{key.replace('ESO ', '')}={header[key]}")
    return "  ".join(parts)
