"""Simulator of raw lamp-flat sets with ground truth, and the scorer of master-flat products.

``simulate_set`` writes a realistic raw set (frames, calibrations, SOF, settings) plus a ``truth/``
folder (``variation="random"`` draws every scene and detector factor from its range, see
:class:`Variation`); ``score`` compares a recipe's products with that truth; ``preview_png`` draws a frame so a
person can check it looks like a real echelle flat. See ``docs/simulator.md``.
"""

from soxs_mflat.simulate.preview import preview_png
from soxs_mflat.simulate.score import format_score, score
from soxs_mflat.simulate.variation import Variation, variation_request
from soxs_mflat.simulate.writer import SimulatedSet, simulate_set

__all__ = ["SimulatedSet", "Variation", "format_score", "preview_png", "score", "simulate_set", "variation_request"]
