"""Robust statistics shared by the reduction steps."""

from __future__ import annotations

MAD_TO_SIGMA = 1.482602218505602
"""Standard deviation of a normal distribution per unit of its median absolute deviation: 1 / Φ⁻¹(3/4)."""
