"""soxs_mflat command line: a drop-in for ``soxspipe mflat``, plus the simulator.

Usage:
    soxspipe [-Vx] mflat <inputFrames>... [-o <outputDirectory> -s <pathToSettingsFile>] [--workers=<n>] [--scheduler=<address>]
    soxspipe simulate score <productsDirectory> <truthDirectory> [--json]
    soxspipe simulate preview <fitsFile> <pngFile>
    soxspipe simulate archive <outputDirectory> [--nights=<n>] [--instrument=<inst>] [--arms=<arms>] [--seed=<n>]
    soxspipe simulate <outputDirectory> [--instrument=<inst>] [--arm=<arm>] [--binning=<XxY>] [--nflats=<n>] [--seed=<n>]
                            [--vary] [--variation=<file>]
    soxspipe --version
    soxspipe -h | --help

Commands:
    mflat       Build the master flat and order-location table from lamp flats.
                <inputFrames> is a SOF file, a directory of FITS files, or a
                comma-separated list of FITS files. Several of them, or a directory
                holding SOF files, reduce every set on a Dask cluster (local worker
                processes unless --scheduler is given); see docs/many-nights.md.
    simulate    Write a simulated raw flat set with ground truth (for demos and tests);
                `simulate score` scores products against that truth; `simulate preview`
                draws a FITS image as a PNG; `simulate archive` writes nights x arms of
                sets, a few of them broken, for batch reduction.

Options:
    -h --help                  Show this help.
    --version                  Show the version.
    -V --verbose               Show more detail, and a traceback on errors.
    -x --overwrite             Overwrite existing products of the same name.
    -o <outputDirectory>       Workspace root for products/ and qc/ (default: the settings'
                               workspace-root-dir, else the current directory).
    -s <pathToSettingsFile>    Settings YAML merged over the instrument defaults.
    --workers=<n>              Local worker processes for several sets (default: the cores,
                               as many as memory allows).
    --scheduler=<address>      Reduce several sets on the Dask cluster at this address
                               (tcp://host:port); it must see the same file system.
    --nights=<n>               Nights in a simulated archive [default: 10].
    --arms=<arms>              Comma-separated arms of a simulated archive (default: all).
    --instrument=<inst>        soxs or xsh [default: soxs].
    --arm=<arm>                UVB, VIS or NIR [default: NIR].
    --binning=<XxY>            Binning, e.g. 2x2 (UVB/VIS only) [default: 1x1].
    --nflats=<n>               Number of lamp flats (per lamp) [default: 5].
    --seed=<n>                 Random seed [default: 0].
    --vary                     Draw every scene and detector factor of the set from its range (docs/simulator.md).
    --variation=<file>         YAML file of variation factors (name: value) set over the nominal or drawn set.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
import traceback
from pathlib import Path

from docopt import DocoptExit, docopt

from soxs_mflat import __version__
from soxs_mflat.errors import UserInputError
from soxs_mflat.interruption import Interrupted, install_handlers
from soxs_mflat.sof import InputSet

EXIT_USER_ERROR = 2


def _absolute(path: str) -> str:
    return str(Path(path).expanduser().resolve())


def rerun_command(arguments: dict, output_root: Path, *, verbose: bool) -> str:
    """The exact command, with absolute paths and ``-x``, that reruns this reduction (``arguments["<inputFrames>"]``
    one set)."""
    frames = arguments["<inputFrames>"]
    frames = ",".join(_absolute(p) for p in frames.split(",")) if "," in frames else _absolute(frames)
    parts = ["soxspipe", "-Vx" if verbose else "-x", "mflat", frames, "-o", str(output_root)]
    if arguments["-s"]:
        parts += ["-s", _absolute(arguments["-s"])]
    return shlex.join(parts)


def set_arguments(frames: list[str], *, cwd: Path) -> list[str]:
    """The sets named by the ``<inputFrames>`` arguments: a folder holding SOF files is every SOF in it
    (sorted); anything else (a SOF, a folder of FITS files, a comma-separated list) is one set. Repeats
    of the same file count once."""
    sets: dict[str, str] = {}
    for argument in frames:
        path = Path(argument).expanduser()
        path = path if path.is_absolute() else cwd / path
        sofs = sorted(p for p in path.glob("*.sof") if p.is_file()) if path.is_dir() else []
        for item in [str(p) for p in sofs] or [argument]:
            candidate = Path(item).expanduser()
            candidate = candidate if candidate.is_absolute() else cwd / candidate
            sets.setdefault(str(candidate.resolve()) if candidate.exists() else item, item)
    return list(sets.values())


def _run_mflat(arguments: dict, *, verbose: bool) -> int:
    cwd = Path.cwd()
    sets = set_arguments(arguments["<inputFrames>"], cwd=cwd)
    settings_file = Path(arguments["-s"]).expanduser().resolve() if arguments["-s"] else None
    output = Path(arguments["-o"]).expanduser().resolve() if arguments["-o"] else None
    if len(sets) > 1:
        return _run_batch(arguments, sets, cwd=cwd, settings_file=settings_file, output=output, verbose=verbose)
    from soxs_mflat.recipe import MasterFlatRecipe
    from soxs_mflat.report import format_report
    from soxs_mflat.sof import parse_input_frames

    single = {**arguments, "<inputFrames>": sets[0]}
    input_set = parse_input_frames(sets[0], cwd=cwd)
    recipe = MasterFlatRecipe(input_set, settings_file=settings_file, output_dir=output,
                              overwrite=arguments["--overwrite"], command="")
    recipe.command = rerun_command(single, output or cwd, verbose=verbose)
    result = recipe.run()
    print(format_report(arm=result.arm, qc=result.qc, log_path=result.log_path, root=result.root,
                        products=[(r.product_label, r.path, r.description) for r in result.products],
                        step_seconds=result.step_seconds, verbose=verbose, colour=sys.stdout.isatty()))
    print(f"Recipe Run Time: {result.run_seconds:.1f}s")
    print(f"Recipe Command: {recipe.command}")
    return 0


def _run_batch(arguments: dict, sets: list[str], *, cwd: Path, settings_file: Path | None, output: Path | None,
               verbose: bool) -> int:
    from soxs_mflat.batch import run_batch

    workers = arguments["--workers"]
    if workers is not None and not (workers.isdigit() and int(workers) > 0):
        raise UserInputError(f"--workers must be a positive integer (got {workers}).")

    def command_for(input_set: InputSet, root: Path) -> str:
        return rerun_command({**arguments, "<inputFrames>": input_set.source}, root, verbose=verbose)

    return run_batch(sets, cwd=cwd, settings_file=settings_file, output_dir=output,
                     overwrite=arguments["--overwrite"], workers=workers and int(workers), scheduler=arguments["--scheduler"],
                     command_for=command_for, verbose=verbose)


def _run_simulate(arguments: dict) -> int:
    from soxs_mflat import simulate

    if arguments["archive"]:
        return _run_simulate_archive(arguments)
    if arguments["score"]:
        result = simulate.score(Path(arguments["<productsDirectory>"]), Path(arguments["<truthDirectory>"]))
        print(simulate.format_score(result))
        if arguments["--json"]:
            print(json.dumps(result, indent=2))
        return 0
    if arguments["preview"]:
        simulate.preview_png(Path(arguments["<fitsFile>"]), Path(arguments["<pngFile>"]))
        print(f"Wrote {arguments['<pngFile>']}")
        return 0
    try:
        binx, biny = (int(v) for v in arguments["--binning"].lower().split("x"))
        nflats, seed = int(arguments["--nflats"]), int(arguments["--seed"])
    except ValueError:
        raise UserInputError(
            f"--binning must look like 2x2 and --nflats/--seed must be integers (got {arguments['--binning']}, "
            f"{arguments['--nflats']}, {arguments['--seed']})."
        ) from None
    instrument = arguments["--instrument"].lower()
    arm = arguments["--arm"].upper()
    try:
        made = simulate.simulate_set(Path(arguments["<outputDirectory>"]), instrument=instrument, arm=arm,
                                     binning=(binx, biny), nflats=nflats, seed=seed,
                                     variation=simulate.variation_request(vary=arguments["--vary"],
                                                                          path=arguments["--variation"]))
    except ValueError as error:
        raise UserInputError(f"Cannot simulate {instrument} {arm} {binx}x{biny}: {error}.") from None
    print(f"SOF: {made.sof}\nSettings: {made.settings}\nTruth: {made.truth_dir}")
    return 0


def _run_simulate_archive(arguments: dict) -> int:
    from soxs_mflat.simulate.archive import simulate_archive

    arms = tuple(a.strip() for a in arguments["--arms"].split(",") if a.strip()) if arguments["--arms"] else None
    try:
        nights, seed = int(arguments["--nights"]), int(arguments["--seed"])
        sets = simulate_archive(Path(arguments["<outputDirectory>"]), nights=nights,
                                instrument=arguments["--instrument"], arms=arms, seed=seed)
    except ValueError as error:
        raise UserInputError(f"Cannot simulate the archive: {error}. Check --nights, --seed, --instrument and --arms.") from None
    broken = [s for s in sets if s.broken]
    print(f"Wrote {len(sets)} sets ({len(broken)} broken: " + ", ".join(f"{s.stem} {s.broken}" for s in broken) + ")")
    folder = Path(arguments["<outputDirectory>"])
    print(f"SOFs: {folder / 'sof'}\nSettings: {folder / 'soxspipe.yaml'}\nManifest: {folder / 'archive.json'}")
    return 0


def unmatched_command_line(argv: list[str], usage: str) -> str:
    """What to say when the command line matches no usage form (instead of docopt's internal text).

    A command this tool does not have (``soxspipe mbias``, ``soxspipe order_centres``, ...) is most likely
    one of soxspipe's other recipes: say where those come from. The commands are read from ``usage``.
    """
    usage_words = ([word for word in line.split() if word.isidentifier()] for line in usage.splitlines())
    commands = {words[1] for words in usage_words if len(words) > 1}
    option_values = {index + 1 for index, word in enumerate(argv) if word in ("-o", "-s")}
    given = next((word for index, word in enumerate(argv) if not word.startswith("-") and index not in option_values),
                 None)
    if given is not None and given not in commands:
        return (f"'soxspipe {given}' is not a command of soxs_mflat. This tool provides the master-flat recipe, "
                "'soxspipe mflat' (and 'soxspipe simulate', simulated flat sets for demos and tests); the other "
                f"soxspipe recipes ({given} among them) come from soxspipe itself: install soxspipe in its own "
                f"environment and run them there.\n{usage.rstrip()}")
    return f"The command line matches none of these forms (soxspipe --help explains each):\n{usage.rstrip()}"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``soxspipe`` command; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        arguments = docopt(__doc__, argv=argv, version=f"soxs_mflat {__version__}")
    except DocoptExit as error:
        print(unmatched_command_line(argv, error.usage), file=sys.stderr)
        return EXIT_USER_ERROR
    verbose = bool(arguments["--verbose"])
    install_handlers()
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(levelname)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    try:
        if arguments["mflat"]:
            return _run_mflat(arguments, verbose=verbose)
        return _run_simulate(arguments)
    except UserInputError as error:
        if verbose:
            traceback.print_exc()
        print(f"ERROR: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Interrupted as stop:
        print(f"Stopped by {stop}: no product was changed or half-written and no temporary file was left; rerun the "
              "same command to start again.", file=sys.stderr)
        return stop.exit_status
