"""Normalisation and sigma-clipped stacking of the detrended flats (spec §5.8 steps 3–5).

The flats are held once, in a :class:`FlatCube` of their raw values (16-bit integers for raw
frames: half the memory of float32), and detrended, masked and normalised on the fly for each
cache-sized row block or set of pixels a step reads, so the peak memory stays near that cube plus
a few frames.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from itertools import pairwise
from typing import Any

import bottleneck as bn
import numpy as np

from soxs_mflat.detrend import NoiseModel
from soxs_mflat.footprints import interval_mask
from soxs_mflat.parallel import map_threads
from soxs_mflat.robust import MAD_TO_SIGMA

CHUNK_PIXELS = 1 << 17
SAMPLE_SIZE = 1 << 18
MAX_SPREAD_RATIO = 1.5
RATIO_SAMPLE_PIXELS = 1 << 18


@dataclass(frozen=True)
class FlatCube:
    """The flats of one stack (BA orientation), read detrended, masked and normalised.

    A value read is ``(stored × scale − offset) / level``, NaN where the flat's ``mask`` is set, the
    stored value is NaN, or it is at or above ``saturation`` (in stored units). ``offsets`` and
    ``masks`` are per flat and usually the same arrays for every flat (one bias, one dark).
    """

    stored: np.ndarray
    scale: float = 1.0
    offsets: tuple[np.ndarray | None, ...] = ()
    masks: tuple[np.ndarray | None, ...] = ()
    saturation: float | None = None
    levels: np.ndarray | None = None
    _selections: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def of_frames(cls, frames: np.ndarray) -> FlatCube:
        """A cube of frames already in e⁻ (NaN where masked), not yet normalised."""
        return cls(np.asarray(frames, dtype=np.float32))

    def __post_init__(self) -> None:
        n_flats = self.stored.shape[0]
        object.__setattr__(self, "offsets", tuple(self.offsets) or (None,) * n_flats)
        object.__setattr__(self, "masks", tuple(self.masks) or (None,) * n_flats)
        levels = np.ones(n_flats) if self.levels is None else np.asarray(self.levels, dtype=np.float64)
        object.__setattr__(self, "levels", levels)

    @property
    def n_flats(self) -> int:
        """Number of flats."""
        return self.stored.shape[0]

    @property
    def frame_shape(self) -> tuple[int, int]:
        """Shape of one flat."""
        return self.stored.shape[1:]

    def with_levels(self, levels: np.ndarray) -> FlatCube:
        """The same flats normalised by ``levels`` instead (no data is copied)."""
        return replace(self, levels=np.asarray(levels, dtype=np.float64), _selections={})

    def block(self, rows: slice, select: np.ndarray | None = None) -> np.ndarray:
        """Values of rows ``rows`` of every flat — only pixels ``select`` of them if given — as
        float32 (n_flats, rows, columns) or (n_flats, n_selected).

        Offset and mask images shared by several flats are picked once per block.
        """
        positions = None if select is None else np.flatnonzero(select)
        size = self.stored[0, rows].shape if positions is None else positions.shape
        out = np.empty((self.n_flats, *size), dtype=np.float32)

        def pick(image: np.ndarray) -> np.ndarray:
            return image[rows] if positions is None else np.take(image[rows], positions)

        picked: dict[tuple[int, int], tuple[np.ndarray | None, np.ndarray | None]] = {}
        saturated = self._may_saturate(self.stored[:, rows])
        for i in range(self.n_flats):
            stored = self.stored[i, rows] if positions is None else np.take(self.stored[i, rows], positions)
            self._read(i, stored, out[i], *self._calibration(i, pick, picked), saturated=saturated)
        return out

    def values(self, index: int, select: np.ndarray) -> np.ndarray:
        """Values of flat ``index`` at the pixels ``select`` (a boolean frame), float32.

        The positions of ``select`` and the offset and mask images, usually shared by every flat,
        gathered there are computed once and kept (with ``select``) for the other flats, until
        :meth:`with_levels` makes a new cube.
        """
        positions = self._cached((id(select),), (select,), lambda: np.flatnonzero(select))
        offset, mask = self.offsets[index], self.masks[index]
        key = (id(select), id(offset), id(mask))
        gathered = self._cached(key, (select, offset, mask),
                                lambda: self._calibration(index, lambda image: np.take(image, positions), {}))
        stored = np.take(self.stored[index], positions)
        out = np.empty(stored.size, dtype=np.float32)
        self._read(index, stored, out, *gathered, saturated=self._may_saturate(stored))
        return out

    def _cached(self, key: tuple[int, ...], objects: tuple, compute: Callable[[], Any]) -> Any:
        """``compute()``, kept under ``key`` (the ids of ``objects``) while those objects are alive."""
        cached = self._selections.get(key)
        if cached is None or any(kept is not obj for kept, obj in zip(cached[0], objects, strict=True)):
            cached = self._selections[key] = (objects, compute())
        return cached[1]

    def _calibration(self, index: int, pick: Callable[[np.ndarray], np.ndarray],
                     picked: dict[tuple[int, int], tuple[np.ndarray | None, np.ndarray | None]],
                     ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Flat ``index``'s offset picked by ``pick`` and the positions its mask sets there, taken
        from ``picked`` (keyed by the images' ids) when another flat shares both images."""
        offset, mask = self.offsets[index], self.masks[index]
        key = (id(offset), id(mask))
        if key not in picked:
            picked[key] = (None if offset is None else pick(offset),
                           None if mask is None else np.flatnonzero(pick(mask)))
        return picked[key]

    def _may_saturate(self, stored: np.ndarray) -> bool:
        """Whether some of ``stored`` may be at or above the saturation level (or NaN)."""
        return self.saturation is not None and stored.size > 0 and not stored.max() < self.saturation

    def _read(self, index: int, stored: np.ndarray, out: np.ndarray, offset: np.ndarray | None,
              masked: np.ndarray | None, *, saturated: bool) -> None:
        """Detrend, mask and normalise ``stored`` (some pixels of flat ``index``) into ``out`` (contiguous);
        ``offset`` holds the same pixels of the flat's offset, ``masked`` the flat positions its mask sets,
        and only if ``saturated`` are the values compared with the saturation level."""
        np.multiply(stored, np.float32(self.scale), out=out, casting="unsafe")
        if offset is not None:
            out -= offset
        if saturated:
            out[stored >= self.saturation] = np.nan
        if masked is not None and masked.size:
            out.reshape(-1)[masked] = np.nan
        if self.levels[index] != 1.0:
            out /= np.float32(self.levels[index])


@dataclass(frozen=True)
class ExposureLevels:
    """Per-flat exposure levels measured in the order-centre band (e⁻)."""

    levels: np.ndarray
    percentiles: np.ndarray
    """(n_flats, 3): 10th, 50th and 90th percentile of each flat's band pixels."""

    @property
    def ordexp(self) -> tuple[float, float, float]:
        """ORDEXP10/50/90: median over the flats of each percentile (spec §8.2)."""
        p10, p50, p90 = np.median(self.percentiles, axis=0)
        return round(float(p10), 3), round(float(p50), 3), round(float(p90), 3)


@dataclass(frozen=True)
class StackResult:
    """A combined flat: mean of the surviving values, its 1σ uncertainty, and its mask."""

    data: np.ndarray
    uncertainty: np.ndarray
    mask: np.ndarray
    n_used: np.ndarray
    n_clipped: int


def centre_band_mask(shape_ba: tuple[int, int], centres_ba: np.ndarray, valid: np.ndarray, half_width: int) -> np.ndarray:
    """Pixels (BA orientation) from ``int(centre) − w`` to ``int(centre) + w`` (exclusive) of every order.

    ``centres_ba`` (n_orders, n_rows) are the order-centre A positions on the frame; rows where
    ``valid`` is false are skipped.
    """
    usable = valid & np.isfinite(centres_ba)
    start = np.where(usable, np.floor(np.where(usable, centres_ba, 0.0)) - half_width, 0.0)
    return interval_mask(start, np.where(usable, start + 2 * half_width, 0.0), shape_ba[1])


def band_sample(band: np.ndarray, *, max_pixels: int = RATIO_SAMPLE_PIXELS) -> np.ndarray:
    """Every k-th pixel of ``band`` (a boolean frame), k as small as keeps at most ``max_pixels`` of them.

    The second pass only needs each flat's level relative to the first-pass master, a ratio close to 1
    everywhere whose mean over 2^18 pixels is as good as over all of them (its error, ~1 % pixel noise
    / 512, is far below anything the stack can see); the first-pass stack is then needed at those
    pixels only (X-shooter VIS: 1.2 M band pixels, ~0.35 s less).
    """
    positions = np.flatnonzero(band)
    step = max(1, -(-positions.size // max_pixels))
    sample = np.zeros(band.shape, dtype=bool)
    sample.ravel()[positions[::step]] = True
    return sample


def measure_levels(cube: FlatCube, band: np.ndarray) -> ExposureLevels:
    """Robust exposure level (e⁻) of each flat from its finite pixels in the band.

    The level is a 3σ-clipped mean around the median (MAD spread), which ignores defects and cosmic
    rays but keeps the statistical precision of a mean.
    """
    cube = cube.with_levels(np.ones(cube.n_flats))

    def measure(index: int) -> tuple[float, np.ndarray]:
        values = cube.values(index, band)
        values = values[np.isfinite(values)]
        if values.size == 0:
            return np.nan, np.full(3, np.nan)
        return clipped_mean(values, sigma=3.0), np.percentile(values, (10, 50, 90))

    measured = map_threads(measure, range(cube.n_flats))
    return ExposureLevels(np.array([m[0] for m in measured]), np.array([m[1] for m in measured]))


def clipped_mean(values: np.ndarray, *, sigma: float, iterations: int = 5) -> float:
    """Mean of ``values`` within ``sigma`` × MAD-σ of their median, both found by iterative clipping.

    The clipping limits converge on an evenly spaced sample of at most ``SAMPLE_SIZE`` values (they
    only decide which values count, so their sampling noise is far below the data's own), and
    the mean is then taken over every value inside them.
    """
    sample = values[:: max(1, values.size // SAMPLE_SIZE)]
    centre = spread = 0.0
    for _ in range(iterations):
        centre = float(bn.median(sample))
        spread = MAD_TO_SIGMA * float(bn.median(np.abs(sample - np.float32(centre))))
        if spread == 0:
            return centre
        inside = sample[np.abs(sample - np.float32(centre)) <= sigma * spread]
        if inside.size == sample.size:
            break
        sample = inside
    return float(np.mean(values[np.abs(values - np.float32(centre)) <= sigma * spread], dtype=np.float64))


def ratio_levels(cube: FlatCube, reference: np.ndarray, band: np.ndarray) -> np.ndarray:
    """Second-pass level of each (normalised) flat: clipped mean of ``flat / reference`` over the band."""
    good_reference = band & np.isfinite(reference) & (reference > 0)
    reference_values = reference[good_reference]

    def level(index: int) -> float:
        ratio = cube.values(index, good_reference)
        ratio /= reference_values
        ratio = ratio[np.isfinite(ratio)]
        return clipped_mean(ratio, sigma=3.0) if ratio.size else np.nan

    return np.array(map_threads(level, range(cube.n_flats)))


def sigma_clipped_stack(
    cube: FlatCube,
    noise: list[NoiseModel],
    *,
    sigma: float,
    iterations: int,
    where: np.ndarray | None = None,
) -> StackResult:
    """Combine the normalised flats of ``cube`` pixel by pixel.

    Each pixel's values are clipped iteratively at ``sigma`` × spread around their median, where
    the spread is the MAD-σ of the values bounded by the expected noise of one flat (see
    :func:`_clip_pass`); the survivors are averaged. The uncertainty propagates each survivor's own
    variance and the calibration variance common to all flats. A pixel is masked only if every input
    was masked there, or every value was clipped. ``where`` restricts the work to those pixels (the
    rest come back NaN and masked).

    The spread is never below the expected noise, so a pixel whose values span less than ``sigma``
    times that noise cannot lose a value: only the few pixels that fail this test are sorted and
    clipped. Row blocks small enough to stay in cache are shared among threads.
    """
    n_rows, n_cols = cube.frame_shape
    allocate = np.empty if where is None else partial(np.full, fill_value=np.nan)
    data = allocate((n_rows, n_cols), dtype=np.float32)
    uncertainty = allocate((n_rows, n_cols), dtype=np.float32)
    n_used = np.zeros((n_rows, n_cols), dtype=np.uint16)
    block = _Block(cube, noise, np.float32(sigma), iterations, where)
    outputs = (data, uncertainty, n_used)
    blocks = _row_blocks(n_rows, n_cols, where)
    n_clipped = sum(map_threads(lambda rows: block.combine(rows, outputs), blocks))
    return StackResult(data, uncertainty, n_used == 0, n_used, int(n_clipped))


def _row_blocks(n_rows: int, n_cols: int, where: np.ndarray | None) -> list[slice]:
    """Row blocks of about ``CHUNK_PIXELS`` pixels to stack, counting only the pixels ``where`` if given
    (a sparse selection then takes a few blocks instead of one per ``CHUNK_PIXELS`` of frame)."""
    if where is None:
        step = max(1, CHUNK_PIXELS // max(n_cols, 1))
        return [slice(start, min(start + step, n_rows)) for start in range(0, n_rows, step)]
    selected = np.cumsum(np.count_nonzero(where, axis=1))
    ends = np.searchsorted(selected, np.arange(CHUNK_PIXELS, selected[-1] if n_rows else 0, CHUNK_PIXELS), side="right")
    edges = [0, *sorted(set(ends.tolist()) - {0, n_rows}), n_rows]
    return [slice(start, stop) for start, stop in pairwise(edges)]


@dataclass(frozen=True)
class _Block:
    """What every row block of one stack needs."""

    cube: FlatCube
    noise: list[NoiseModel]
    sigma: np.float32
    iterations: int
    where: np.ndarray | None
    scales: np.ndarray = field(init=False)
    inverse_squared: np.ndarray = field(init=False)
    models: list[tuple[NoiseModel, slice | list[int], np.float32]] = field(init=False)
    """Each distinct noise model, the flats it describes (all: a slice), and its weight in the common variance."""

    def __post_init__(self) -> None:
        levels = self.cube.levels
        inverse_squared = (1.0 / levels**2).astype(np.float32)
        flats_of: dict[int, list[int]] = {}
        for i, model in enumerate(self.noise):
            flats_of.setdefault(id(model), []).append(i)
        models = [(self.noise[flats[0]], slice(None) if len(flats_of) == 1 else flats,
                   np.float32(np.sum(inverse_squared[flats], dtype=np.float64) / len(self.noise)))
                  for flats in flats_of.values()]
        object.__setattr__(self, "scales", levels.astype(np.float32))
        object.__setattr__(self, "inverse_squared", inverse_squared)
        object.__setattr__(self, "models", models)

    def combine(self, rows: slice, outputs: tuple[np.ndarray, np.ndarray, np.ndarray]) -> int:
        """Stack rows ``rows`` into ``outputs`` (data, uncertainty, count); return the values clipped."""
        select = None if self.where is None else self.where[rows]
        if select is not None and not select.any():
            return 0
        values = self.cube.block(rows, select)
        n_flats = values.shape[0]
        values = values.reshape(n_flats, -1)
        variance, common = self._variances(values, rows, select)
        summed, summed_variance, count = _finite_sums(values, variance)
        with np.errstate(invalid="ignore", divide="ignore"):
            floor = np.sqrt(summed_variance / count)
            suspect = np.flatnonzero(np.fmax.reduce(values, axis=0) - np.fmin.reduce(values, axis=0) > self.sigma * floor)
        n_clipped = 0
        if suspect.size:
            candidates = values[:, suspect]
            clipped = _clip(candidates, floor[suspect], sigma=float(self.sigma), iterations=self.iterations)
            n_clipped = int(clipped.sum())
            if n_clipped:
                candidates[clipped] = np.nan
                for total, part in zip((summed, summed_variance, count), _finite_sums(candidates, variance[:, suspect]),
                                       strict=True):
                    total[suspect] = part
        data, uncertainty, n_used = outputs
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = summed / count
            sigma_mean = np.sqrt(summed_variance / np.square(count, dtype=np.float32) + common)
        if select is None:
            shape = data[rows].shape
            data[rows], uncertainty[rows], n_used[rows] = mean.reshape(shape), sigma_mean.reshape(shape), count.reshape(shape)
        else:
            positions = np.flatnonzero(select)
            for output, result in zip(outputs, (mean, sigma_mean, count), strict=True):
                output[rows].reshape(-1)[positions] = result
        return n_clipped

    def _variances(self, values: np.ndarray, rows: slice, select: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | float]:
        """Each normalised value's own variance, and the common variance of the mean of all flats.

        Each distinct noise model is picked for the block once; when all flats share one, they are
        computed together.
        """
        variance = np.empty_like(values)
        common: np.ndarray | float = 0.0
        for model, flats, weight in self.models:
            picked = model.picked(rows, select)
            for which in [flats] if isinstance(flats, slice) else flats:
                part = np.multiply(values[which], self.scales[which, None], out=variance[which])
                picked.variance(part, out=part)
                part *= self.inverse_squared[which, None]
            common = common + picked.common() * weight
        return variance, common


def _finite_sums(values: np.ndarray, variance: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sums of the non-NaN ``values`` (n_flats, n_pixels), of their ``variance``, and their count.

    Plain sums, redone NaN-aware only for the few pixels holding a NaN.
    """
    summed = values.sum(axis=0)
    summed_variance = variance.sum(axis=0)
    count = np.full(summed.shape, values.shape[0], dtype=np.uint16)
    holes = np.flatnonzero(np.isnan(summed))
    if holes.size:
        finite = ~np.isnan(values[:, holes])
        summed[holes] = np.where(finite, values[:, holes], np.float32(0)).sum(axis=0)
        summed_variance[holes] = np.where(finite, variance[:, holes], np.float32(0)).sum(axis=0)
        count[holes] = finite.sum(axis=0, dtype=np.uint16)
    return summed, summed_variance, count


def _clip_pass(values: np.ndarray, floor: np.ndarray, sigma: float) -> np.ndarray:
    """Values more than ``sigma`` × spread from their median along axis 0.

    The spread is the values' MAD-σ kept within [1, ``MAX_SPREAD_RATIO``] × ``floor``, the expected
    noise of one flat: with a handful of flats the MAD alone is too noisy a yardstick, sometimes far
    too small (clipping good values) and often several times too large (keeping cosmic rays).
    """
    deviation = np.abs(values - bn.nanmedian(values, axis=0))
    spread = np.clip(MAD_TO_SIGMA * bn.nanmedian(deviation, axis=0), floor, MAX_SPREAD_RATIO * floor)
    with np.errstate(invalid="ignore"):
        return deviation > sigma * spread


def _clip(values: np.ndarray, floor: np.ndarray, *, sigma: float, iterations: int) -> np.ndarray:
    """Which of ``values`` (n_flats, n_pixels) iterative clipping rejects.

    Each pass re-examines only the pixels where the previous pass rejected something.
    """
    work = values.copy()
    clipped = np.zeros(values.shape, dtype=bool)
    active = np.arange(values.shape[1])
    for _ in range(max(iterations, 1)):
        subset = work[:, active]
        more = _clip_pass(subset, floor[active], sigma)
        if not more.any():
            break
        subset[more] = np.nan
        work[:, active] = subset
        clipped[:, active] |= more
        active = active[more.any(axis=0)]
    return clipped
