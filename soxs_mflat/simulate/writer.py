"""Write one simulated raw lamp-flat set: frames, calibrations, SOF, settings and ground truth.

Set layout (``docs/simulator.md``)::

    <output_dir>/<stem>.sof      the data-organiser-style SOF (paths relative to this folder)
    <output_dir>/soxspipe.yaml   the instrument's default soxs_mflat settings
    <output_dir>/raw/            raw lamp-on flats (and NIR lamp-off frames), uint16 ADU
    <output_dir>/calib/          master bias (UVB/VIS) and order-centre table(s)
    <output_dir>/truth/          ground truth for the scorer
"""

from __future__ import annotations

import shutil
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from importlib import resources
from pathlib import Path

import numpy as np
from astropy.io import fits

from soxs_mflat.instruments import ARMS, INSTRUMENTS
from soxs_mflat.simulate.centre_table import CentreTable, measured_centre_table
from soxs_mflat.simulate.detector import BIAS_DARK_TIME, RawLayout, add_cosmic_rays, add_photon_noise, bias_pattern
from soxs_mflat.simulate.headers import N_BIAS, START, HeaderContext
from soxs_mflat.simulate.scene import Scene, build_scene
from soxs_mflat.simulate.tables import table_header, write_order_table
from soxs_mflat.simulate.truth import write_truth
from soxs_mflat.simulate.variation import Variation, resolve_variation

OVERHEAD = timedelta(seconds=25)
"""Time between the end of one exposure and the start of the next."""
SETTINGS_NAME = "soxspipe.yaml"


@dataclass(frozen=True)
class SimulatedSet:
    """Paths of a simulated set.

    ``raw_flats`` are the lamp-on flats (both lamps for X-shooter UVB), ``lamp_off`` the NIR lamp-off
    frames and ``calibrations`` the master bias and order-centre table(s).
    """

    sof: Path
    settings: Path
    truth_dir: Path
    raw_flats: list[Path]
    calibrations: list[Path]
    lamp_off: list[Path]
    instrument: str
    arm: str
    binning: tuple[int, int]
    variation: Variation = field(default_factory=Variation)


@dataclass(frozen=True)
class _Writer:
    """What the frame writers share; ``extra_rng`` (varied sets only) draws the per-frame bias drift."""

    output_dir: Path
    scene: Scene
    context: HeaderContext
    raw_layout: RawLayout
    bias_adu: np.ndarray
    start: datetime
    extra_rng: np.random.Generator | None = None


def simulate_set(
    output_dir: Path,
    *,
    instrument: str = "soxs",
    arm: str = "NIR",
    binning: tuple[int, int] = (1, 1),
    nflats: int = 5,
    seed: int = 0,
    scene: Scene | None = None,
    start: datetime = START,
    variation: Variation | Mapping[str, object] | str | Path | None = None,
) -> SimulatedSet:
    """Write a raw lamp-flat set with its calibrations, SOF, settings and ground truth.

    Parameters
    ----------
    output_dir
        Folder to write into (created if needed).
    instrument, arm
        ``"soxs"`` (VIS, NIR) or ``"xsh"`` (UVB, VIS, NIR).
    binning
        (binx, biny), each 1 or 2; NIR is always 1×1.
    nflats
        Number of lamp-on flats (per lamp for X-shooter UVB); NIR sets get as many lamp-off frames.
    seed
        Seed of every random draw; the same arguments always give bit-identical files.
    scene
        A scene already built for this instrument, arm and binning (its lamps' flicker sets the number
        of flats, ``nflats`` is then unused): lets many sets share one rendering (``simulate archive``).
    start
        DATE-OBS of the first flat; the calibrations are dated before it.
    variation
        Scene and detector variation (:mod:`soxs_mflat.simulate.variation`): None or ``"nominal"``
        for the original design (the default; bit-identical to the sets before variation existed),
        ``"random"`` to draw every factor from its range with ``seed``, a
        :class:`~soxs_mflat.simulate.variation.Variation`, or a mapping (or the path of a YAML
        file) of factors set over the nominal design (over a drawn one with ``random: true``). A
        variation that sets ``nflats`` overrides the argument.

    Raises
    ------
    ValueError
        For an unknown instrument or arm, a binning other than 1 or 2 (or any binning on NIR),
        ``nflats < 1``, or an unknown or unreadable variation.
    """
    instrument, arm, binning = _validate(instrument, arm, binning)
    root, variation_seed, extra_seed = _seed_tree(instrument, arm, binning, seed)
    defects_rng, lamp_rng, bias_rng, table_rng, frame_rng = (np.random.default_rng(s) for s in root)
    variation = resolve_variation(variation, np.random.default_rng(variation_seed))
    nflats = variation.nflats if variation.nflats is not None else nflats
    if nflats < 1:
        raise ValueError("nflats must be at least 1")
    output_dir = Path(output_dir)
    for sub in ("raw", "calib", "truth"):
        (output_dir / sub).mkdir(parents=True, exist_ok=True)
    scene_extra, bias_extra, frame_extra, table_extra = (
        (None,) * 4 if variation.is_nominal else (np.random.default_rng(s) for s in extra_seed.spawn(4))
    )
    if scene is None:
        scene = build_scene(instrument, arm, binning, nflats, defects_rng=defects_rng, lamp_rng=lamp_rng,
                            variation=variation, extra_rng=scene_extra)
    context = HeaderContext(scene.layout.spec, scene.layout.detector, binning)
    raw_layout = RawLayout(scene.layout.detector, binning)
    bias = bias_pattern(raw_layout.rotated_shape, scene.layout.spec.bias_adu, bias_rng, variation=variation,
                        extra_rng=bias_extra)
    writer = _Writer(output_dir, scene, context, raw_layout, bias, start, frame_extra)
    flats, lamp_off = _write_frames(writer, frame_rng)
    calibrations = [] if arm == "NIR" else [_write_master_bias(writer, bias_rng)]
    tables = _write_centre_tables(writer, table_rng, table_extra)
    calibrations += [(path, tag) for path, tag, _ in tables]
    lamp_field = "_".join(model.lamp.name.replace("_Lamp", "") for model in scene.lamps)
    stem = context.sof_stem(moment=start, exptime=scene.lamps[0].exptime, lamp=lamp_field)
    sof = _write_sof(output_dir / f"{stem}.sof", flats + lamp_off + calibrations)
    settings = output_dir / SETTINGS_NAME
    with resources.as_file(resources.files("soxs_mflat") / "settings" / f"{instrument}.yaml") as source:
        shutil.copyfile(source, settings)
    write_truth(
        output_dir / "truth",
        scene,
        context,
        seed=seed,
        raw_flats=[path.name for path, _ in flats],
        lamp_off=[path.name for path, _ in lamp_off],
        bias_quality=_master_bias_quality(writer) if arm != "NIR" else None,
        centre_tables=[{"file": path.name, "orders": [int(o) for o in made.table.orders], "missing": list(made.missing),
                        "extra": list(made.extra)} for path, _, made in tables],
    )
    return SimulatedSet(
        sof=sof,
        settings=settings,
        truth_dir=output_dir / "truth",
        raw_flats=[path for path, _ in flats],
        calibrations=[path for path, _ in calibrations],
        lamp_off=[path for path, _ in lamp_off],
        instrument=instrument,
        arm=arm,
        binning=binning,
        variation=variation,
    )


def set_variation(
    variation: Variation | Mapping[str, object] | str | Path | None,
    *,
    instrument: str = "soxs",
    arm: str = "NIR",
    binning: tuple[int, int] = (1, 1),
    seed: int = 0,
) -> Variation:
    """The variation :func:`simulate_set` would use for these arguments, without simulating anything."""
    instrument, arm, binning = _validate(instrument, arm, binning)
    return resolve_variation(variation, np.random.default_rng(_seed_tree(instrument, arm, binning, seed)[1]))


def _seed_tree(
    instrument: str, arm: str, binning: tuple[int, int], seed: int
) -> tuple[list[np.random.SeedSequence], np.random.SeedSequence, np.random.SeedSequence]:
    """The set's seed tree: five nominal children, then the variation's and the extra draws' children.

    The variation children come after the nominal ones, so a nominal set's draws never change.
    """
    root = np.random.SeedSequence([seed, zlib.crc32(f"{instrument}/{arm}/{binning[0]}x{binning[1]}".encode())])
    nominal = root.spawn(5)
    variation_seed, extra_seed = root.spawn(2)
    return nominal, variation_seed, extra_seed


def _validate(instrument: str, arm: str, binning: tuple[int, int]) -> tuple[str, str, tuple[int, int]]:
    instrument = str(instrument).lower()
    arm = str(arm).upper()
    if instrument not in INSTRUMENTS:
        raise ValueError(f"instrument must be one of {', '.join(INSTRUMENTS)}, not {instrument!r}")
    if arm not in ARMS[instrument]:
        raise ValueError(f"{instrument} has no {arm} arm (arms: {', '.join(ARMS[instrument])})")
    binx, biny = (int(value) for value in binning)
    if arm == "NIR" and (binx, biny) != (1, 1):
        raise ValueError("NIR frames are never binned: use binning (1, 1)")
    if binx not in (1, 2) or biny not in (1, 2):
        raise ValueError(f"binning must be 1 or 2 along each axis, not {binx}x{biny}")
    return instrument, arm, (binx, biny)


def _write_frames(writer: _Writer, rng: np.random.Generator) -> tuple[list[tuple[Path, str]], list[tuple[Path, str]]]:
    """Write the lamp-on flats and, on NIR, one lamp-off frame after each; return (path, SOF tag) lists.

    Each lamp-off frame is taken right after its flat and the pairs are three exposures apart, so
    every flat has a unique nearest lamp-off frame in MJD-OBS.
    """
    scene, context = writer.scene, writer.context
    kw = context.keywords
    prefix = "SOXS" if context.spec.instrument == "soxs" else "XSH"
    flats, lamp_off = [], []
    moment = writer.start
    for model in scene.lamps:
        lamp = model.lamp
        additive = scene.additive(model.exptime)
        label = lamp.dpr_type.split(",")[1] if context.arm == "UVB" else "FLAT"
        tag = f"{lamp.dpr_type}_{context.arm}"
        step = OVERHEAD + timedelta(seconds=model.exptime)
        for index in range(model.flicker.size):
            name = f"{prefix}_{context.arm}_{label}_ON_{index + 1:02d}.fits"
            header = context.raw(
                dpr_type=lamp.dpr_type,
                dpr_tech="ECHELLE,SLIT",
                exptime=model.exptime,
                moment=moment,
                file_name=name,
                lamp_keyword=kw.d2_lamp if lamp.name == "D2" else kw.qth_lamp,
                lamp_name=lamp.name,
            )
            expected = model.expected(scene.defects.response, index) + additive
            if scene.defects.traps is not None:
                expected = scene.defects.traps.apply(expected)
            flats.append((_write_raw(writer, name, expected, header, rng, exptime=model.exptime), tag))
            if context.arm != "NIR":
                moment += step
                continue
            name = f"{prefix}_{context.arm}_{label}_OFF_{index + 1:02d}.fits"
            header = context.raw(
                dpr_type=lamp.dpr_type, dpr_tech="IMAGE", exptime=model.exptime, moment=moment + step, file_name=name
            )
            lamp_off.append((_write_raw(writer, name, additive, header, rng, exptime=model.exptime), tag))
            moment += 3 * step
    return flats, lamp_off


def _write_raw(
    writer: _Writer, name: str, expected: np.ndarray, header: fits.Header, rng: np.random.Generator, *, exptime: float
) -> Path:
    """Realise photon noise and cosmic rays, embed in the raw layout and write uint16 ADU to HDU 0."""
    electrons = add_photon_noise(expected.astype(np.float32), rng)
    variation = writer.scene.variation
    add_cosmic_rays(electrons, rng, exptime=exptime, rate_factor=variation.cosmic_ray_factor)
    bias = writer.bias_adu
    if writer.extra_rng is not None:
        bias = bias + variation.bias_drift_rms * writer.extra_rng.standard_normal()
    raw = writer.raw_layout.to_raw(electrons, bias_adu=bias, gain=writer.context.gain, ron=writer.context.ron, rng=rng)
    path = writer.output_dir / "raw" / name
    fits.PrimaryHDU(raw, header=header).writeto(path, overwrite=True)
    return path


def _write_master_bias(writer: _Writer, rng: np.random.Generator) -> tuple[Path, str]:
    """Master bias product (spec §3): bias level in e⁻ plus hot-pixel charge, with the noise of N frames.

    Hot pixels whose bias charge exceeds 10σ of the master are flagged in QUAL, as a bias recipe
    would; ERRS is the read noise over √N (the single-frame read noise where flagged). Pixels that
    are wrong in the master bias only (varied sets) carry their error, half of them flagged.
    """
    context = writer.context
    ron = context.ron
    rows, cols = writer.raw_layout.science
    defects = writer.scene.defects
    hot = defects.hot_rate * BIAS_DARK_TIME
    flux = writer.bias_adu[rows, cols] * context.gain + hot + np.sqrt((ron**2 + hot) / N_BIAS) * rng.standard_normal(hot.shape)
    if defects.bias_offset is not None:
        flux += defects.bias_offset
    bad = _master_bias_quality(writer)
    errs = np.where(bad, ron, ron / np.sqrt(N_BIAS))
    hdul = fits.HDUList(
        [
            fits.PrimaryHDU(flux.astype(np.float32), header=context.master_bias(moment=writer.start - timedelta(minutes=40))),
            fits.ImageHDU(bad.astype(np.uint8), name="QUAL"),
            fits.ImageHDU(
                errs.astype(np.float32), header=fits.Header({"UTYPE": "StdDevUncertainty", "BUNIT": "electron"}), name="ERRS"
            ),
        ]
    )
    path = writer.output_dir / "calib" / f"MASTER_BIAS_{context.arm}.fits"
    hdul.writeto(path, overwrite=True)
    return path, f"MASTER_BIAS_{context.arm}"


def _master_bias_quality(writer: _Writer) -> np.ndarray:
    """QUAL of the master bias: hot pixels above 10σ of the master, and the flagged master-bias-only pixels."""
    defects = writer.scene.defects
    bad = defects.hot_rate * BIAS_DARK_TIME > 10.0 * writer.context.ron / np.sqrt(N_BIAS)
    return bad if defects.bias_flagged is None else bad | defects.bias_flagged


def _write_centre_tables(
    writer: _Writer, rng: np.random.Generator, extra_rng: np.random.Generator | None
) -> list[tuple[Path, str, CentreTable]]:
    """One order-centre table per lamp (``…_DLAMP``/``…_QLAMP`` for X-shooter UVB): (path, SOF tag, table)."""
    context = writer.context
    written = []
    for model in writer.scene.lamps:
        lamp = model.lamp
        header = context.order_table(moment=writer.start - timedelta(minutes=20), table_object=lamp.order_table_object)
        made = measured_centre_table(writer.scene.layout, rng, variation=writer.scene.variation, extra_rng=extra_rng)
        table = replace(made.table, header=table_header(header))
        suffix = f"_{lamp.tag}" if lamp.tag else ""
        path = writer.output_dir / "calib" / f"ORDER_TAB_{context.arm}{suffix}.fits"
        write_order_table(table, path)
        written.append((path, f"ORDER_TAB_{context.arm}", made))
    return written


def _write_sof(path: Path, entries: list[tuple[Path, str]]) -> Path:
    """SOF with one ``<path relative to the SOF folder> <TAG>`` line per input."""
    lines = [f"{file.relative_to(path.parent).as_posix()} {tag}" for file, tag in entries]
    path.write_text("\n".join(lines) + "\n")
    return path
