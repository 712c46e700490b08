"""Turn ``<inputFrames>`` into a list of files: a SOF file, a directory, or a comma-separated list.

SOF syntax (spec §6.2): one ``<path> <TAG>`` per line; blank lines and lines starting with ``#``
are skipped. Relative paths are resolved against the SOF's own folder first, then the current
directory. Tags are kept for reporting only: frames are classified by their headers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from soxs_mflat.errors import UserInputError

FITS_NAME = r"\.(?:fits|fit|fts)(?:\.(?:Z|gz|fz))?"
"""FITS file names, plain or compressed (gzip, Unix compress, fpack)."""
FITS_PATTERN = re.compile(rf"^(?P<path>\S.*?{FITS_NAME})(?:\s+(?P<tag>\S+))?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class InputFile:
    """One input file and the tag it was given in the SOF (None outside a SOF)."""

    path: Path
    tag: str | None = None


@dataclass(frozen=True)
class InputSet:
    """The files of a run and where they came from."""

    files: tuple[InputFile, ...]
    sof: Path | None
    source: str


def _resolve(raw: str, sof_dir: Path, cwd: Path) -> Path | None:
    """The existing file ``raw`` names (absolute, or relative to the SOF's folder, then ``cwd``), or None."""
    try:
        path = Path(raw).expanduser()
        if path.is_absolute():
            return path if path.is_file() else None
        for base in (sof_dir, cwd):
            candidate = (base / path).resolve()
            if candidate.is_file():
                return candidate
    except (OSError, ValueError, RuntimeError):  # a NUL byte, a name too long, an unknown ~user, a link loop
        return None
    return None


def _is_supplementary(line: str, sof_dir: Path, cwd: Path) -> bool:
    """A non-FITS line that names an existing file (soxspipe's "supplementary" files; mflat uses none)."""
    first = line.split()[0]
    return len(first) > 3 and _resolve(first, sof_dir, cwd) is not None


def parse_sof(sof: Path, *, cwd: Path) -> InputSet:
    """Read a SOF file; every listed FITS file must exist."""
    try:
        lines = sof.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise UserInputError(
            f"The SOF file {sof} cannot be read ({error}). Check the path and that it is a text file."
        ) from None
    files: list[InputFile] = []
    damaged = [
        number for number, line in enumerate(lines, start=1)
        if line.strip() and not line.strip().startswith("#") and FITS_PATTERN.match(line.strip()) is None
        and not _is_supplementary(line, sof.parent.resolve(), cwd)
    ]
    if damaged:
        shown = ", ".join(str(n) for n in damaged[:10]) + (" ..." if len(damaged) > 10 else "")
        raise UserInputError(
            f"The SOF file {sof} is damaged: line(s) {shown} are neither '<path>.fits <TAG>' entries, existing "
            "supplementary files, comments (#) nor blank. A SOF is written by a program (soxspipe's data "
            "organiser); regenerate it, or correct or comment out those lines."
        )
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        match = FITS_PATTERN.match(text)
        if match is None:  # a supplementary file
            continue
        path = _resolve(match.group("path"), sof.parent.resolve(), cwd)
        if path is None:
            raise UserInputError(
                f"Line {number} of the SOF file {sof} names {match.group('path')}, which does not exist (looked in "
                f"{sof.parent.resolve()} and {cwd}). Correct the path in the SOF or restore the file."
            )
        files.append(InputFile(path, match.group("tag")))
    if not files:
        raise UserInputError(f"The SOF file {sof} lists no FITS files. Add one '<path> <TAG>' line per input frame.")
    return InputSet(tuple(files), sof.resolve(), str(sof))


def parse_input_frames(argument: str, *, cwd: Path) -> InputSet:
    """Resolve the command line's ``<inputFrames>`` into files."""
    candidate = Path(argument).expanduser()
    if not candidate.is_absolute():
        candidate = cwd / candidate
    if candidate.suffix.lower() == ".sof":
        if not candidate.is_file():
            raise UserInputError(f"The SOF file {candidate} does not exist. Check the path of <inputFrames>.")
        return parse_sof(candidate, cwd=cwd)
    if candidate.is_dir():
        found = sorted(
            p for p in candidate.iterdir() if p.is_file() and re.search(rf"{FITS_NAME}$", p.name, re.IGNORECASE)
        )
        if not found:
            raise UserInputError(f"The directory {candidate} holds no FITS files. Point to the folder with the flats.")
        return InputSet(tuple(InputFile(p.resolve()) for p in found), None, str(candidate))
    if "," in argument or re.search(rf"{FITS_NAME}$", argument, re.IGNORECASE):
        files = []
        for item in (part.strip() for part in argument.split(",")):
            if not item:
                continue
            path = _resolve(item, cwd, cwd)
            if path is None:
                raise UserInputError(
                    f"The input file {item} does not exist. Correct the comma-separated list of FITS files."
                )
            files.append(InputFile(path))
        return InputSet(tuple(files), None, argument)
    raise UserInputError(
        f"The input {argument} is neither a SOF file (*.sof), a directory of FITS files nor a comma-separated list of "
        "FITS files. Give one of those."
    )
