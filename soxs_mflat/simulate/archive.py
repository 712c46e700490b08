"""A simulated archive: many nights × arms of lamp-flat sets, a few of them broken, for batch reduction.

Layout (``docs/many-nights.md``)::

    <output_dir>/soxspipe.yaml                  the instrument's default settings (one file for every set)
    <output_dir>/sof/<stem>.sof                 one SOF per set, named as the data organiser names it
    <output_dir>/<night>/<ARM>_<BINX>x<BINY>/   raw/, calib/ and truth/ of one set (``simulate_set``'s layout)
    <output_dir>/archive.json                   what each set is (night, binning, exposure, lamp level,
                                                broken or not, expected outcome) and where its truth is

Night-to-night changes are those of a real archive: the lamp ages (its level drops a little every night
until it is replaced) and jitters by a few per cent; the operator lengthens the exposure in steps when
the lamp has faded; UVB/VIS nights use different binning modes. A few sets are broken the way real
ones are: the night's master bias is missing from the SOF, a flat was truncated in transfer, or only
four flats were taken.

What is shared between nights: the rendered scene of each arm and binning (order images, scattered
light, detector defects and response), the costly part of a set. Each set still has its own noise,
cosmic rays, lamp flicker, calibrations and truth.
"""

from __future__ import annotations

import json
import os
import zlib
from dataclasses import asdict, dataclass, replace
from datetime import timedelta
from pathlib import Path

import numpy as np

from soxs_mflat.instruments import ARMS, INSTRUMENTS
from soxs_mflat.simulate.headers import START
from soxs_mflat.simulate.scene import FLICKER_RMS, Scene, build_scene
from soxs_mflat.simulate.writer import SETTINGS_NAME, simulate_set

MANIFEST = "archive.json"
SOF_DIR = "sof"
BINNING_MODES = {"UVB": ((1, 1), (1, 2), (2, 2)), "VIS": ((1, 1), (1, 2), (2, 2)), "NIR": ((1, 1),)}
BINNING_WEIGHTS = (0.6, 0.15, 0.25)
"""How often each UVB/VIS binning mode is used (1x1 most nights)."""
LAMP_LIFETIME_NIGHTS = 12
"""Nights after which a lamp is replaced; it fades linearly by :data:`LAMP_FADE` until then."""
LAMP_FADE = 0.3
LAMP_JITTER = 0.02
"""RMS of the night-to-night lamp level change on top of the ageing."""
EXPOSURE_STEPS = (1.0, 1.25, 1.5)
"""Factors of the nominal exposure time the operator chooses from to make up for a faded lamp."""
ARM_SPACING = timedelta(minutes=35)
"""Time between the flats of one arm and the next in the same morning."""
BROKEN_KINDS = ("missing master bias", "truncated flat", "only four flats")


@dataclass(frozen=True)
class ArchiveSet:
    """One set of the archive and what a reduction of it should give.

    Paths are relative to the archive folder. ``broken`` is None or one of :data:`BROKEN_KINDS`;
    ``expected`` is ``"done"`` for a good set and ``"failed"`` (a user-input error) for a broken one.
    """

    stem: str
    sof: str
    truth: str
    night: str
    arm: str
    binning: str
    exptime: float
    lamp_level: float
    nflats: int
    broken: str | None
    expected: str


@dataclass(frozen=True)
class NightPlan:
    """What one arm does on one night, drawn before anything is written."""

    night: int
    arm: str
    binning: tuple[int, int]
    level: float
    exposure_step: float
    broken: str | None


def simulate_archive(
    output_dir: Path,
    *,
    nights: int = 10,
    instrument: str = "soxs",
    arms: tuple[str, ...] | None = None,
    seed: int = 0,
) -> list[ArchiveSet]:
    """Write ``nights`` × ``arms`` simulated sets with their SOFs, settings, truth and manifest.

    Parameters
    ----------
    output_dir
        Archive folder (created if needed).
    nights
        Number of consecutive nights (≥ 1).
    instrument, arms
        ``"soxs"`` or ``"xsh"``; the arms to include (default: all the instrument's arms).
    seed
        Seed of every draw: the same arguments give the same archive.

    Raises
    ------
    ValueError
        For an unknown instrument or arm, or ``nights < 1``.
    """
    instrument = str(instrument).lower()
    if instrument not in INSTRUMENTS:
        raise ValueError(f"instrument must be one of {', '.join(INSTRUMENTS)}, not {instrument!r}")
    arms = tuple(a.upper() for a in (arms or ARMS[instrument]))
    unknown = [a for a in arms if a not in ARMS[instrument]]
    if unknown or not arms:
        raise ValueError(f"{instrument} arms are {', '.join(ARMS[instrument])}, not {', '.join(unknown) or 'none'}")
    if nights < 1:
        raise ValueError("nights must be at least 1")
    output_dir = Path(output_dir)
    (output_dir / SOF_DIR).mkdir(parents=True, exist_ok=True)
    plans = plan_nights(nights, arms, np.random.default_rng([seed, zlib.crc32(instrument.encode())]))
    scenes: dict[tuple[str, tuple[int, int]], Scene] = {}
    written = []
    for plan in plans:
        key = (plan.arm, plan.binning)
        if key not in scenes:
            detector_seed = np.random.SeedSequence([seed, zlib.crc32(f"{instrument}/{plan.arm}".encode())])
            defects_rng, lamp_rng = (np.random.default_rng(s) for s in detector_seed.spawn(2))
            scenes[key] = build_scene(instrument, plan.arm, plan.binning, 5, defects_rng=defects_rng, lamp_rng=lamp_rng)
        written.append(_write_night_set(output_dir, instrument, plan, scenes[key], seed=seed))
    manifest = {"instrument": instrument, "nights": nights, "arms": list(arms), "seed": seed,
                "settings": SETTINGS_NAME, "sets": [asdict(s) for s in written]}
    (output_dir / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return written


def plan_nights(nights: int, arms: tuple[str, ...], rng: np.random.Generator) -> list[NightPlan]:
    """Binning, lamp level and exposure step of every night and arm, and which sets are broken.

    About one set in six is broken (at least one, at most one of each kind), each kind on a set it
    can apply to (only UVB/VIS sets have a master bias).
    """
    plans = []
    for night in range(nights):
        for arm in arms:
            modes = BINNING_MODES[arm]
            weights = np.asarray(BINNING_WEIGHTS[: len(modes)])
            binning = modes[rng.choice(len(modes), p=weights / weights.sum())]
            age = (night % LAMP_LIFETIME_NIGHTS) / LAMP_LIFETIME_NIGHTS
            level = (1.0 - LAMP_FADE * age) * (1.0 + LAMP_JITTER * float(rng.standard_normal()))
            step = min(EXPOSURE_STEPS, key=lambda factor: abs(level * factor - 1.0) if level * factor <= 1.05 else 9.0)
            plans.append(NightPlan(night, arm, tuple(int(b) for b in binning), round(level, 4), step, None))
    n_broken = min(len(BROKEN_KINDS), max(1, round(len(plans) / 6)))
    order = list(rng.permutation(len(plans)))
    for kind in list(rng.permutation(BROKEN_KINDS))[:n_broken]:
        eligible = [i for i in order if plans[i].broken is None and (kind != "missing master bias" or plans[i].arm != "NIR")]
        if eligible:
            plans[eligible[0]] = replace(plans[eligible[0]], broken=str(kind))
    return plans


def _write_night_set(output_dir: Path, instrument: str, plan: NightPlan, base: Scene, *, seed: int) -> ArchiveSet:
    """Write one night's set from the shared ``base`` scene, move its SOF to ``sof/`` and break it if planned."""
    rng = np.random.default_rng([seed, plan.night, zlib.crc32(plan.arm.encode())])
    nflats = 4 if plan.broken == "only four flats" else 5
    lamps = tuple(
        replace(model, electrons_per_unit=model.electrons_per_unit * plan.level * plan.exposure_step,
                exptime=round(model.exptime * plan.exposure_step, 2),
                flicker=1.0 + np.clip(FLICKER_RMS * rng.standard_normal(nflats), -0.05, 0.05))
        for model in base.lamps
    )
    arm_index = ("UVB", "VIS", "NIR").index(plan.arm)
    start = START + timedelta(days=plan.night, minutes=float(rng.uniform(0, 30))) + ARM_SPACING * arm_index
    night = (start - timedelta(hours=15)).strftime("%Y-%m-%d")
    binning = f"{plan.binning[0]}x{plan.binning[1]}"
    set_dir = output_dir / night / f"{plan.arm}_{binning}"
    made = simulate_set(set_dir, instrument=instrument, arm=plan.arm, binning=plan.binning, nflats=nflats,
                        seed=int(rng.integers(2**31)), scene=replace(base, lamps=lamps), start=start)
    os.replace(made.settings, output_dir / SETTINGS_NAME)
    entries = [line.split() for line in made.sof.read_text().splitlines() if line.strip()]
    if plan.broken == "missing master bias":
        entries = [(path, tag) for path, tag in entries if not tag.startswith("MASTER_BIAS")]
        (set_dir / "calib" / f"MASTER_BIAS_{plan.arm}.fits").unlink(missing_ok=True)
    if plan.broken == "truncated flat":
        flat = made.raw_flats[len(made.raw_flats) // 2]
        os.truncate(flat, flat.stat().st_size // 2)
    sof = output_dir / SOF_DIR / made.sof.name
    lines = [f"{Path(os.path.relpath(set_dir / path, sof.parent)).as_posix()} {tag}" for path, tag in entries]
    sof.write_text("\n".join(lines) + "\n")
    made.sof.unlink()
    return ArchiveSet(
        stem=sof.stem,
        sof=sof.relative_to(output_dir).as_posix(),
        truth=made.truth_dir.relative_to(output_dir).as_posix(),
        night=night,
        arm=plan.arm,
        binning=binning,
        exptime=lamps[0].exptime,
        lamp_level=plan.level,
        nflats=nflats,
        broken=plan.broken,
        expected="done" if plan.broken is None else "failed",
    )
