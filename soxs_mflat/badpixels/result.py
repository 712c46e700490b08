"""What the bad-pixel search returns: the reasons per pixel as bits, the mask, the counts and the QC."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

DEAD = np.uint8(1)
HOT = np.uint8(2)
LOW_SENSITIVITY = np.uint8(4)
PARTIAL_EDGE = np.uint8(8)


def _no_pixels() -> np.ndarray:
    return np.empty(0, dtype=np.int64)


@dataclass(frozen=True)
class FlaggedPixels:
    """Flat indices of the pixels flagged for each reason (unsorted; a pixel may appear more than once)."""

    dead: np.ndarray = field(default_factory=_no_pixels)
    hot: np.ndarray = field(default_factory=_no_pixels)
    low_sensitivity: np.ndarray = field(default_factory=_no_pixels)
    partial_edge: np.ndarray = field(default_factory=_no_pixels)

    @classmethod
    def joined(cls, parts: Iterable[FlaggedPixels]) -> FlaggedPixels:
        """All the pixels of ``parts``, reason by reason."""
        parts = list(parts)
        return cls(*(np.concatenate([_no_pixels(), *(getattr(part, name) for part in parts)])
                     for name in ("dead", "hot", "low_sensitivity", "partial_edge")))


@dataclass(frozen=True)
class BadPixelResult:
    """Bad pixels found in a master flat (BA orientation).

    ``codes`` holds the reasons as bits (:data:`DEAD`, :data:`HOT`, :data:`LOW_SENSITIVITY`,
    :data:`PARTIAL_EDGE`); ``mask`` is the input mask OR any reason; ``counts`` gives the pixels newly
    flagged by each kind (not already in the input mask; a pixel may have several reasons).
    """

    codes: np.ndarray
    mask: np.ndarray
    input_mask: np.ndarray
    counts: dict[str, int]

    @classmethod
    def of(cls, flagged: FlaggedPixels, input_mask: np.ndarray) -> BadPixelResult:
        """The result of the ``flagged`` pixels of a frame with ``input_mask`` (none of them in it)."""
        codes = np.zeros(input_mask.shape, dtype=np.uint8)
        counts = {}
        for name, code in (("dead", DEAD), ("hot", HOT), ("low_sensitivity", LOW_SENSITIVITY), ("partial_edge", PARTIAL_EDGE)):
            index = np.unique(getattr(flagged, name))
            codes.ravel()[index] |= code
            counts[name] = int(index.size)
        return cls(codes, input_mask | (codes != 0), input_mask, counts)

    def kind(self, code: np.uint8) -> np.ndarray:
        """Boolean map of the pixels carrying reason ``code``."""
        return (self.codes & code) != 0

    @property
    def order_edge_only(self) -> np.ndarray:
        """Partly illuminated edge pixels that are bad for no other reason (spec §8 ``N ORDER EDGE``)."""
        return (self.codes == PARTIAL_EDGE) & ~self.input_mask
