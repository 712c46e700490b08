"""soxs_mflat command line: a drop-in for ``soxspipe mflat``, plus the simulator.

Usage:
    soxspipe [-Vx] mflat <inputFrames> [-o <outputDirectory> -s <pathToSettingsFile>]
    soxspipe simulate score <productsDirectory> <truthDirectory>
    soxspipe simulate preview <fitsFile> <pngFile>
    soxspipe simulate <outputDirectory> [--instrument=<inst>] [--arm=<arm>] [--binning=<XxY>] [--nflats=<n>] [--seed=<n>]
                            [--vary] [--variation=<file>]
    soxspipe --version
    soxspipe -h | --help

Commands:
    mflat       Build the master flat and order-location table from lamp flats.
                <inputFrames> is a SOF file, a directory of FITS files, or a
                comma-separated list of FITS files.
    simulate    Write a simulated raw flat set with ground truth (for demos and tests);
                `simulate score` scores products against that truth; `simulate preview`
                draws a FITS image as a PNG.

Options:
    -h --help                  Show this help.
    --version                  Show the version.
    -V --verbose               Show more detail, and a traceback on errors.
    -x --overwrite             Overwrite existing products of the same name.
    -o <outputDirectory>       Workspace root for products/ and qc/ (default: the settings'
                               workspace-root-dir, else the current directory).
    -s <pathToSettingsFile>    Settings YAML merged over the instrument defaults.
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

EXIT_USER_ERROR = 2


def _absolute(path: str) -> str:
    return str(Path(path).expanduser().resolve())


def rerun_command(arguments: dict, output_root: Path, *, verbose: bool) -> str:
    """The exact command, with absolute paths and ``-x``, that reruns this reduction."""
    frames = arguments["<inputFrames>"]
    frames = ",".join(_absolute(p) for p in frames.split(",")) if "," in frames else _absolute(frames)
    parts = ["soxspipe", "-Vx" if verbose else "-x", "mflat", frames, "-o", str(output_root)]
    if arguments["-s"]:
        parts += ["-s", _absolute(arguments["-s"])]
    return shlex.join(parts)


def _run_mflat(arguments: dict, *, verbose: bool) -> int:
    from soxs_mflat.recipe import MasterFlatRecipe
    from soxs_mflat.report import format_report
    from soxs_mflat.sof import parse_input_frames

    cwd = Path.cwd()
    input_set = parse_input_frames(arguments["<inputFrames>"], cwd=cwd)
    settings_file = Path(arguments["-s"]).expanduser().resolve() if arguments["-s"] else None
    output = Path(arguments["-o"]).expanduser().resolve() if arguments["-o"] else None
    recipe = MasterFlatRecipe(input_set, settings_file=settings_file, output_dir=output,
                              overwrite=arguments["--overwrite"], command="")
    recipe.command = rerun_command(arguments, output or cwd, verbose=verbose)
    result = recipe.run()
    print(format_report(result, verbose=verbose))
    print(f"Recipe Run Time: {result.run_seconds:.1f}s")
    print(f"Recipe Command: {recipe.command}")
    return 0


def _run_simulate(arguments: dict) -> int:
    from soxs_mflat import simulate

    if arguments["score"]:
        result = simulate.score(Path(arguments["<productsDirectory>"]), Path(arguments["<truthDirectory>"]))
        print(simulate.format_score(result))
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``soxspipe`` command; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        arguments = docopt(__doc__, argv=argv, version=f"soxs_mflat {__version__}")
    except DocoptExit as error:
        print(str(error), file=sys.stderr)
        return EXIT_USER_ERROR
    verbose = bool(arguments["--verbose"])
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(message)s",
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
    except KeyboardInterrupt:
        print("Interrupted: no product was half-written; rerun the same command to start again.", file=sys.stderr)
        return 130
