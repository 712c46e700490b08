"""Normalise each flat to its exposure level and stack them, in two passes (spec §5.8 steps 4-5).

First pass: each flat's level is a robust mean of its pixels in the band around the order centres;
the flats divided by their levels are sigma-clip stacked. Second pass: each flat is divided by that
first master, its level re-derived from the ratio (which removes the lamp's and the blaze's shape,
so flicker between exposures is measured, not the spectrum) and the flats are stacked again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from soxs_mflat.detrend import NoiseModel
from soxs_mflat.errors import UserInputError
from soxs_mflat.stacking import (
    ExposureLevels,
    FlatCube,
    StackResult,
    band_sample,
    measure_levels,
    ratio_levels,
    sigma_clipped_stack,
)


@dataclass(frozen=True)
class NormalisedStack:
    """The combined flat of the second pass and the levels that normalised each flat."""

    combined: StackResult
    first_levels: ExposureLevels
    relative_levels: np.ndarray
    """Second-pass level of each flat relative to its first-pass level."""


def normalise_and_stack(cube: FlatCube, noise: list[NoiseModel], band: np.ndarray, *, sigma: float, iterations: int,
                        names: list[str]) -> NormalisedStack:
    """Both passes; ``band`` marks the order-centre pixels, ``names`` the flats (for the error message)."""
    first_levels = measure_levels(cube, band)
    usable = np.isfinite(first_levels.levels) & (first_levels.levels > 0)
    if not np.all(usable):
        dark = [name for name, ok in zip(names, usable, strict=True) if not ok]
        raise UserInputError(
            f"No lamp light was found around the order centres in {', '.join(dark)}. Check that these are lamp-on "
            "flats and that the order-centre table is the one of this arm and slit."
        )
    cube = cube.with_levels(first_levels.levels)
    sample = band_sample(band)  # the second pass's relative levels need no more pixels than this
    first = sigma_clipped_stack(cube, noise, sigma=sigma, iterations=iterations, where=sample)
    relative = ratio_levels(cube, first.data, sample)
    del first
    combined = sigma_clipped_stack(cube.with_levels(first_levels.levels * relative), noise, sigma=sigma,
                                   iterations=iterations)
    return NormalisedStack(combined, first_levels, relative)
