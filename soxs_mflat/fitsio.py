"""Plain FITS files read and written without astropy (FITS Standard 4.0).

``astropy.io.fits`` takes ~0.3 s to import (it brings ``astropy.units`` along), a fifth of a whole
SOXS VIS reduction, while the recipe needs little of it: headers, 2-D images, binary tables of
numbers, and checksums on what it writes. Uncompressed files are read and written here; compressed
inputs (gzip, ``.Z``, tile-compressed) are handed to astropy, imported only then. The tests check
headers, data, tables and checksums against astropy.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

BLOCK = 2880
CARD = 80
COMMENTARY = frozenset({"COMMENT", "HISTORY", ""})
STRUCTURAL = re.compile(
    r"^(SIMPLE|XTENSION|BITPIX|NAXIS\d*|EXTEND|PCOUNT|GCOUNT|GROUPS|THEAP|TFIELDS|BSCALE|BZERO|BLANK|CHECKSUM|DATASUM"
    r"|T(TYPE|FORM|UNIT|SCAL|ZERO|NULL|DISP|DIM|BCOL)\d+)$"
)
"""Keywords that describe how the data are stored: made by the writer, never copied from another header."""
IMAGE_TYPES = {8: "u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}
TABLE_TYPES = {"L": "S1", "B": "u1", "I": ">i2", "J": ">i4", "K": ">i8", "E": ">f4", "D": ">f8", "A": "S"}
COMPRESSED_MAGIC = (b"\x1f\x8b", b"\x1f\x9d", b"BZh", b"PK\x03\x04", b"\xfd7zXZ\x00")
INTEGER = re.compile(r"[+-]?\d+")
WRITE_BLOCK_BYTES = 1 << 20
"""Images are converted to FITS order and written this much at a time."""
CHECKSUM_EXCLUDED = frozenset([*range(0x3A, 0x41), *range(0x5B, 0x61)])


class FitsFormatError(ValueError):
    """The bytes are not the FITS this module reads."""


def normalise(keyword: str) -> str:
    """A keyword as headers index it: upper case, without the ``HIERARCH`` prefix, single-spaced."""
    words = keyword.upper().split()
    return " ".join(words[1:] if words[:1] == ["HIERARCH"] and len(words) > 1 else words)


@dataclass
class Card:
    """One keyword record: its value (text for commentary cards) and comment.

    ``image`` holds the 80-character card(s) as read, written back unchanged while the card is.
    """

    keyword: str
    value: Any
    comment: str = ""
    image: str | None = None

    @property
    def is_commentary(self) -> bool:
        return self.keyword in COMMENTARY

    def text(self) -> str:
        """The card as written: its original image, or the value formatted (a multiple of 80 characters)."""
        return self.image if self.image is not None else format_card(self.keyword, self.value, self.comment)


class Header:
    """An ordered FITS header. Keywords are looked up as astropy does: case-insensitively, with or
    without ``HIERARCH``; the first card of a keyword is the one read and updated."""

    def __init__(self, cards: Iterable[Card | tuple] | dict[str, Any] = ()) -> None:
        """From cards, ``(keyword, value[, comment])`` tuples, or a dict of values or ``(value, comment)``."""
        self._cards: list[Card] = []
        self._first: dict[str, Card] = {}
        if isinstance(cards, dict):
            for keyword, value in cards.items():
                self[keyword] = value
            return
        for item in cards:
            self.append(item if isinstance(item, Card) else Card(normalise(item[0]), *item[1:]))

    @classmethod
    def from_text(cls, text: str) -> Header:
        """Parse header records up to ``END`` (or the end of ``text``)."""
        header = cls()
        for start in range(0, len(text) - CARD + 1, CARD):
            image = text[start : start + CARD]
            name = image[:8].rstrip().upper()
            if name == "END" and not image[8:].strip():
                break
            last = header._cards[-1] if header._cards else None
            if (name == "CONTINUE" and last is not None and isinstance(last.value, str) and not last.is_commentary
                    and last.value.endswith("&") and image[8:].lstrip().startswith("'")):
                more, comment = _parse_value(image[8:])
                last.value = last.value[:-1] + str(more)
                last.comment = " ".join(filter(None, (last.comment, comment)))
                last.image = (last.image or "") + image
                continue
            if name == "HIERARCH" and "=" in image[8:]:
                equals = image.index("=", 8)
                keyword, rest = normalise(image[8:equals]), image[equals + 1 :]
            elif image[8:10] == "= " and name not in COMMENTARY:
                keyword, rest = name, image[10:]
            else:
                header.append(Card(name, image[8:].rstrip(), "", image))
                continue
            value, comment = _parse_value(rest)
            header.append(Card(keyword, value, comment, image))
        return header

    def append(self, card: Card) -> None:
        """Add ``card`` at the end (a later card of the same keyword is kept but not looked up)."""
        self._cards.append(card)
        if not card.is_commentary:
            self._first.setdefault(card.keyword, card)

    def __getitem__(self, keyword: str) -> Any:
        card = self._first.get(normalise(keyword))
        if card is None:
            raise KeyError(f"Keyword {keyword!r} not found.")
        return card.value

    def get(self, keyword: str, default: Any = None) -> Any:
        card = self._first.get(normalise(keyword))
        return default if card is None else card.value

    def __contains__(self, keyword: object) -> bool:
        return isinstance(keyword, str) and normalise(keyword) in self._first

    def __setitem__(self, keyword: str, value: Any) -> None:
        """Set a value, or ``(value, comment)``; a new keyword is appended."""
        value, comment = value if isinstance(value, tuple) else (value, None)
        key = normalise(keyword)
        card = self._first.get(key)
        if card is None:
            self.append(Card(key, value, comment or ""))
        else:
            card.value, card.image = value, None
            if comment is not None:
                card.comment = comment

    def remove(self, keyword: str) -> None:
        """Remove every card of ``keyword``, if any."""
        key = normalise(keyword)
        if key in self._first:
            self._cards = [card for card in self._cards if card.keyword != key]
            del self._first[key]

    def copy(self, *, strip: bool = False) -> Header:
        """An independent copy; without the storage cards (:data:`STRUCTURAL`) if ``strip``."""
        return Header(replace(card) for card in self._cards if not (strip and STRUCTURAL.match(card.keyword)))

    @property
    def cards(self) -> tuple[Card, ...]:
        return tuple(self._cards)

    def tostring(self) -> str:
        """The records, ``END`` and the blank padding to whole 2880-byte blocks."""
        text = "".join(card.text() for card in self._cards) + "END".ljust(CARD)
        return text.ljust(-(-len(text) // BLOCK) * BLOCK)


def _parse_value(field_text: str) -> tuple[Any, str]:
    """Value and comment of a card's value field: string, logical, integer, float, complex or
    undefined (None); anything else is kept as its text, as a lenient reader does."""
    text = field_text.lstrip()
    if text.startswith("'"):
        pieces, start = [], 1
        while True:
            end = text.find("'", start)
            if end < 0:
                raise FitsFormatError(f"unterminated string in header card value {field_text.strip()!r}")
            if text[end + 1 : end + 2] == "'":
                pieces.append(text[start : end + 1])
                start = end + 2
                continue
            pieces.append(text[start:end])
            break
        _, _, comment = text[end + 1 :].partition("/")
        return "".join(pieces).rstrip(), comment.strip()
    value_text, _, comment = text.partition("/")
    value_text, comment = value_text.strip(), comment.strip()
    if not value_text:
        return None, comment
    if value_text in ("T", "F"):
        return value_text == "T", comment
    if INTEGER.fullmatch(value_text):
        return int(value_text), comment
    try:
        return float(value_text.replace("D", "E")), comment
    except ValueError:
        pass
    parts = value_text.strip("()").split(",")
    if value_text.startswith("(") and value_text.endswith(")") and len(parts) == 2:
        try:
            return complex(float(parts[0].replace("D", "E")), float(parts[1].replace("D", "E"))), comment
        except ValueError:
            pass
    return value_text, comment


def format_value(value: Any) -> str:
    """A value as FITS writes it (strings quoted and padded to 8 characters, floats in full precision)."""
    if isinstance(value, bool | np.bool_):
        return "T" if value else "F"
    if isinstance(value, str):
        if not value.isascii() or not value.isprintable():
            raise ValueError(f"header value {value!r} has characters a FITS header cannot hold")
        return "'" + value.replace("'", "''").ljust(8) + "'"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        return _format_float(float(value))
    if isinstance(value, complex | np.complexfloating):
        return f"({_format_float(value.real)}, {_format_float(value.imag)})"
    if value is None:
        return ""
    raise ValueError(f"header value {value!r} of type {type(value).__name__} cannot be written to FITS")


def _format_float(value: float) -> str:
    """Shortest round-trip text, upper-case exponent of at least two digits, at most 20 characters."""
    if not math.isfinite(value):
        raise ValueError(f"{value} cannot be written to a FITS header")
    text = repr(value).upper()
    if len(text) > 20:
        text = f"{value:.16G}"
    if "E" in text:
        mantissa, exponent = text.split("E")
        text = f"{mantissa}E{exponent[0] if exponent[0] in '+-' else ''}{int(exponent.lstrip('+-')):02d}"
    elif "." not in text:
        text += ".0"
    return text


def format_card(keyword: str, value: Any, comment: str = "") -> str:
    """The card(s) of ``keyword``: fixed format for standard keywords, ``HIERARCH`` for long ones,
    ``CONTINUE`` cards for strings too long for one; a comment that does not fit is truncated."""
    keyword = normalise(keyword)
    if keyword in COMMENTARY:
        text = str(value)
        return "".join(f"{keyword:8}{text[i : i + 72]:72}" for i in range(0, max(len(text), 1), 72))
    hierarch = len(keyword) > 8 or " " in keyword
    prefix = f"HIERARCH {keyword} = " if hierarch else f"{keyword:8}= "
    formatted = format_value(value)
    if isinstance(value, str) and len(prefix) + len(formatted) > CARD:
        return _long_string(prefix, value, comment)
    if not hierarch:
        formatted = f"{formatted:20}" if isinstance(value, str) else f"{formatted:>20}"
    card = prefix + formatted
    if len(card) > CARD:
        raise ValueError(f"header card {card!r} is longer than {CARD} characters")
    if comment:
        card += " / " + comment
    return f"{card[:CARD]:{CARD}}"


def _long_string(prefix: str, value: str, comment: str) -> str:
    """A string continued over ``CONTINUE`` cards (each piece but the last ends with ``&``)."""
    cards, rest, lead = [], value, prefix
    while True:
        room = CARD - len(lead) - 3
        piece = rest[:room]
        while len(piece.replace("'", "''")) > room:
            piece = piece[:-1]
        rest = rest[len(piece) :]
        quoted = "'" + piece.replace("'", "''") + ("&'" if rest else "'")
        card = lead + quoted
        if not rest and comment:
            card += " / " + comment
        cards.append(f"{card[:CARD]:{CARD}}")
        if not rest:
            return "".join(cards)
        lead = "CONTINUE  "


@dataclass
class HDU:
    """One header-data unit to write: an image (any 2-D/N-D numeric array), a binary table (a
    1-D structured array of numbers), or a header alone (``data`` None)."""

    header: Header = field(default_factory=Header)
    data: np.ndarray | None = None


@dataclass(frozen=True)
class _Unit:
    """Where one HDU of a file lies: its header, and its data's offset and unpadded size in bytes."""

    header: Header
    data_offset: int
    data_size: int


class FitsFile:
    """The HDUs of one FITS file, read lazily: headers when opened, data when asked for.

    Images are memory-mapped, so reading one costs only the conversion the caller makes.
    """

    def __init__(self, path: Path, units: list[_Unit], arrays: list[Any] | None = None) -> None:
        self.path = Path(path)
        self._units = units
        self._arrays = arrays

    @classmethod
    def open(cls, path: Path | str) -> FitsFile:
        """Read the headers of every HDU; raise :class:`FitsFormatError` (or ``OSError``) if the
        file is not FITS or is cut short."""
        path = Path(path)
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if handle.read(6).startswith(COMPRESSED_MAGIC):
                return cls._with_astropy(path)
            handle.seek(0)
            units: list[_Unit] = []
            offset = 0
            while offset < size:
                text = _read_header_text(handle, first=not units)
                if text is None:
                    break
                header = Header.from_text(text)
                if header.get("ZIMAGE") is True:
                    return cls._with_astropy(path)
                data_offset = offset + len(text)
                data_size = _data_size(header)
                if data_offset + data_size > size:
                    raise FitsFormatError(
                        f"HDU {len(units)} needs {data_size} data bytes after its header but the file ends "
                        f"{data_offset + data_size - size} bytes short"
                    )
                units.append(_Unit(header, data_offset, data_size))
                offset = data_offset + -(-data_size // BLOCK) * BLOCK
                handle.seek(offset)
        if not units:
            raise FitsFormatError("the file is empty")
        return cls(path, units)

    @classmethod
    def _with_astropy(cls, path: Path) -> FitsFile:
        """A compressed file, decompressed by astropy into memory."""
        from astropy.io import fits

        with fits.open(path, memmap=False) as hdulist:
            hdulist.verify("silentfix")
            units, arrays = [], []
            for hdu in hdulist:
                units.append(_Unit(Header.from_text(hdu.header.tostring()), 0, 0))
                data = hdu.data
                if isinstance(hdu, fits.BinTableHDU):
                    data = {name: np.asarray(data[name]) for name in data.columns.names}
                arrays.append(None if data is None else data if isinstance(data, dict) else np.array(data))
        return cls(path, units, arrays)

    def __len__(self) -> int:
        return len(self._units)

    def header(self, index: int = 0) -> Header:
        return self._units[index].header

    def index(self, extname: str) -> int | None:
        """Position of the first HDU named ``extname`` (``EXTNAME``, case-insensitive), if any."""
        for i, unit in enumerate(self._units):
            if str(unit.header.get("EXTNAME", "")).strip().upper() == extname.upper():
                return i
        return None

    def is_table(self, index: int) -> bool:
        return index > 0 and str(self._units[index].header.get("XTENSION", "")).strip() == "BINTABLE"

    def stored_image(self, index: int = 0) -> np.ndarray | None:
        """The image of HDU ``index`` as stored (FITS byte order, BZERO/BSCALE not applied),
        memory-mapped; None if it has none. Decompressed images come already scaled."""
        if self._arrays is not None:
            return self._arrays[index]
        unit = self._units[index]
        header = unit.header
        naxis = int(header.get("NAXIS", 0))
        if naxis == 0 or unit.data_size == 0:
            return None
        bitpix = header.get("BITPIX")
        if bitpix not in IMAGE_TYPES or self.is_table(index):
            raise FitsFormatError(f"HDU {index} is not an image (BITPIX {bitpix!r}, XTENSION {header.get('XTENSION')!r})")
        shape = tuple(int(header[f"NAXIS{axis}"]) for axis in range(naxis, 0, -1))
        return np.memmap(self.path, dtype=IMAGE_TYPES[bitpix], mode="r", offset=unit.data_offset, shape=shape).view(np.ndarray)

    def image(self, index: int = 0) -> np.ndarray | None:
        """The image of HDU ``index`` with BZERO/BSCALE applied as astropy applies them: integers
        offset by 2**(bits−1) become unsigned, other scalings float32 (8/16 bits) or float64 with
        BLANK pixels NaN; unscaled images are returned as stored (memory-mapped, FITS byte order)."""
        stored = self.stored_image(index)
        if stored is None or self._arrays is not None:
            return stored
        header = self._units[index].header
        bscale, bzero = header.get("BSCALE", 1), header.get("BZERO", 0)
        if bscale == 1 and bzero == 0:
            return stored
        if stored.dtype.kind == "i" and bscale == 1 and bzero == 1 << (8 * stored.dtype.itemsize - 1):
            return pseudo_unsigned(stored)
        kind, size = stored.dtype.kind, stored.dtype.itemsize
        small = (kind in "iu" and size <= 2) or (kind == "f" and size == 4)
        scaled = stored.astype(np.float32 if small else np.float64)
        if stored.dtype.kind in "iu" and isinstance(header.get("BLANK"), int):
            blank = stored == header["BLANK"]
        else:
            blank = None
        scaled *= bscale
        scaled += bzero
        if blank is not None:
            scaled[blank] = np.nan
        return scaled

    def table(self, index: int) -> dict[str, np.ndarray]:
        """The columns of the binary table in HDU ``index``, native byte order (``L`` columns as bool,
        ``A`` columns as str without trailing blanks, ``TSCAL``/``TZERO`` applied)."""
        if self._arrays is not None:
            return self._arrays[index]
        if not self.is_table(index):
            raise FitsFormatError(f"HDU {index} is not a binary table")
        unit = self._units[index]
        header = unit.header
        names, formats = [], []
        for column in range(1, int(header["TFIELDS"]) + 1):
            match = re.fullmatch(r"\s*(\d*)([A-Z])\s*", str(header[f"TFORM{column}"]))
            if match is None or match.group(2) not in TABLE_TYPES:
                raise FitsFormatError(f"unsupported column format TFORM{column} = {header[f'TFORM{column}']!r}")
            repeat = int(match.group(1) or 1)
            code = TABLE_TYPES[match.group(2)]
            names.append(str(header.get(f"TTYPE{column}", f"col{column}")))
            formats.append(f"S{repeat}" if code == "S" else (code if repeat == 1 else f"({repeat},){code}"))
        dtype = np.dtype({"names": names, "formats": formats})
        n_rows, row_size = int(header["NAXIS2"]), int(header["NAXIS1"])
        if dtype.itemsize != row_size:
            raise FitsFormatError(f"table rows of {row_size} bytes do not match their columns ({dtype.itemsize} bytes)")
        rows = np.fromfile(self.path, dtype=dtype, count=n_rows, offset=unit.data_offset)
        columns = {}
        for column, name in enumerate(names, start=1):
            values = rows[name]
            if header[f"TFORM{column}"].strip().endswith("L"):
                values = values == b"T"
            elif values.dtype.kind == "S":
                values = np.char.rstrip(np.char.decode(values, "latin-1"))
            else:
                values = values.astype(values.dtype.newbyteorder("="))
            scale, zero = header.get(f"TSCAL{column}", 1), header.get(f"TZERO{column}", 0)
            if (scale, zero) != (1, 0):
                values = values * scale + zero
            columns[name] = values
        return columns


def _read_header_text(handle: Any, *, first: bool) -> str | None:
    """Blocks from the handle's position up to the one holding ``END``; None at trailing non-FITS bytes."""
    blocks = []
    while True:
        block = handle.read(BLOCK)
        if not blocks:
            expected = b"SIMPLE  =" if first else b"XTENSION="
            if not block.startswith(expected):
                if first:
                    raise FitsFormatError("it does not start with a SIMPLE card")
                return None
        if len(block) < BLOCK:
            raise FitsFormatError("the header ends without an END card")
        text = block.decode("latin-1")
        blocks.append(text)
        if any(text[i : i + 8] == "END     " for i in range(0, BLOCK, CARD)):
            return "".join(blocks)


def _data_size(header: Header) -> int:
    """Bytes of data following ``header`` (without padding)."""
    naxis = int(header.get("NAXIS", 0))
    if naxis == 0:
        return 0
    elements = math.prod(int(header[f"NAXIS{axis}"]) for axis in range(1, naxis + 1))
    return abs(int(header["BITPIX"])) // 8 * int(header.get("GCOUNT", 1)) * (int(header.get("PCOUNT", 0)) + elements)


def pseudo_unsigned(stored: np.ndarray) -> np.ndarray:
    """The native unsigned image of signed big-endian ``stored`` pixels plus 2**(bits−1).

    Adding 2**(bits−1) modulo 2**bits is flipping the sign bit: the same values as astropy's
    scaling, made in one pass while converting to native byte order.
    """
    unsigned = np.dtype(f"uint{8 * stored.dtype.itemsize}")
    sign_bit = unsigned.type(1 << (8 * stored.dtype.itemsize - 1))
    return np.bitwise_xor(stored.view(unsigned.newbyteorder(">")), sign_bit, dtype=unsigned)


def write_fits(path: Path, hdus: Sequence[HDU], *, checksum: bool = True) -> None:
    """Write ``hdus`` to ``path`` (first one primary), with CHECKSUM/DATASUM cards if ``checksum``.

    The storage cards (SIMPLE/XTENSION, BITPIX, NAXISn, table columns …) are made from the data;
    such cards in the given headers are dropped. Images may be any view (transposed, native byte
    order, bool): they are converted to FITS order block by block while written and summed, so no
    full-size copy is made; the header, written first with placeholder checksums, is then rewritten.
    """
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    with open(path, "wb") as handle:
        for position, hdu in enumerate(hdus):
            dtype = None if hdu.data is None else fits_dtype(hdu.data.dtype)
            shape = () if hdu.data is None else hdu.data.shape
            header = _storage_header(hdu, dtype, shape, primary=position == 0, extend=len(hdus) > 1)
            if checksum:
                header["CHECKSUM"] = ("0" * 16, f"HDU checksum updated {stamp}")
                header["DATASUM"] = ("0", f"data unit checksum updated {stamp}")
            header_offset = handle.tell()
            handle.write(_header_bytes(header))
            data_sum = n_bytes = 0
            for block in _fits_blocks(hdu.data, dtype):
                raw = _as_bytes(block)
                handle.write(raw)
                data_sum = _add32(data_sum, _checksum32(raw)) if checksum else 0
                n_bytes += raw.size
            handle.write(b"\0" * (-n_bytes % BLOCK))
            if checksum:
                header["DATASUM"] = str(data_sum)
                total = _add32(_checksum32(np.frombuffer(_header_bytes(header), np.uint8)), data_sum)
                header["CHECKSUM"] = encode_checksum(total)
                end = handle.tell()
                handle.seek(header_offset)
                handle.write(_header_bytes(header))  # the same length: only the two values changed
                handle.seek(end)


def _header_bytes(header: Header) -> bytes:
    """The header's blocks; characters FITS headers cannot hold (read from non-standard files) become '?'."""
    return header.tostring().encode("ascii", errors="replace")


def _as_bytes(data: np.ndarray) -> np.ndarray:
    """A flat byte view of contiguous ``data`` (no copy)."""
    return np.ascontiguousarray(data).reshape(-1).view(np.uint8)


def fits_dtype(dtype: np.dtype) -> np.dtype:
    """The type ``dtype`` is stored as: big-endian, bool as uint8, table fields big-endian."""
    if dtype.names is not None:
        return np.dtype({"names": dtype.names, "formats": [dtype[name].newbyteorder(">") for name in dtype.names]})
    if dtype.kind == "b":
        return np.dtype(np.uint8)
    if (dtype.kind == "u" and dtype.itemsize > 1) or (dtype.kind == "i" and dtype.itemsize == 1):
        raise ValueError(f"{dtype} images need BZERO scaling, which this writer does not do")
    return dtype.newbyteorder(">")


def _fits_blocks(data: np.ndarray | None, dtype: np.dtype | None) -> Iterator[np.ndarray]:
    """``data`` converted to ``dtype`` in C order, ~``WRITE_BLOCK_BYTES`` of rows at a time; every block
    but the last a multiple of 4 bytes, so that the blocks' checksums add up to the whole one's."""
    if data is None:
        return
    if data.ndim != 2 or data.dtype.names is not None:
        yield np.ascontiguousarray(data.astype(dtype, copy=False))
        return
    row_bytes = max(data.shape[1] * dtype.itemsize, 1)
    rows = max(4, WRITE_BLOCK_BYTES // row_bytes // 4 * 4)
    for start in range(0, data.shape[0], rows):
        yield np.ascontiguousarray(data[start : start + rows], dtype=dtype)


def _storage_header(hdu: HDU, dtype: np.dtype | None, shape: tuple[int, ...], *, primary: bool, extend: bool) -> Header:
    """``hdu``'s header behind the storage cards its data (stored as ``dtype``) needs (``EXTEND`` if
    extensions follow)."""
    cards: list[tuple] = [("SIMPLE", True, "conforms to FITS standard")] if primary else []
    if dtype is not None and dtype.names is not None:
        if primary:
            raise ValueError("a binary table cannot be the primary HDU")
        cards += [("XTENSION", "BINTABLE", "binary table extension"), ("BITPIX", 8, "array data type"),
                  ("NAXIS", 2, "number of array dimensions"), ("NAXIS1", dtype.itemsize, "length of dimension 1"),
                  ("NAXIS2", shape[0], "length of dimension 2"), ("PCOUNT", 0, "number of group parameters"),
                  ("GCOUNT", 1, "number of groups"), ("TFIELDS", len(dtype.names), "number of table fields")]
        for column, name in enumerate(dtype.names, start=1):
            cards += [(f"TTYPE{column}", name), (f"TFORM{column}", _table_format(dtype[name]))]
    else:
        if not primary:
            cards.append(("XTENSION", "IMAGE", "Image extension"))
        bitpix = 8 if dtype is None else {v: k for k, v in IMAGE_TYPES.items()}.get(dtype.str.lstrip("|"))
        if bitpix is None:
            raise ValueError(f"{dtype} cannot be written as a FITS image")
        cards += [("BITPIX", bitpix, "array data type"), ("NAXIS", len(shape), "number of array dimensions")]
        cards += [(f"NAXIS{axis}", length) for axis, length in enumerate(reversed(shape), start=1)]
        if primary:
            cards += [("EXTEND", True)] if extend else []
        else:
            cards += [("PCOUNT", 0, "number of parameters"), ("GCOUNT", 1, "number of groups")]
    header = Header(cards)
    for card in hdu.header.cards:
        if not STRUCTURAL.match(card.keyword):
            header.append(replace(card))
    return header


def _table_format(dtype: np.dtype) -> str:
    """TFORM code of one numeric table column."""
    codes = {("i", 2): "I", ("i", 4): "J", ("i", 8): "K", ("f", 4): "E", ("f", 8): "D", ("u", 1): "B"}
    code = codes.get((dtype.kind, dtype.itemsize))
    if code is None:
        raise ValueError(f"{dtype} table columns are not supported")
    return code


def _checksum32(raw: np.ndarray) -> int:
    """The 32-bit ones'-complement sum of the bytes ``raw`` as big-endian words (zero padding implied)."""
    whole = raw.size - raw.size % 4
    total = int(raw[:whole].view(">u4").sum(dtype=np.uint64))
    if whole < raw.size:
        tail = np.zeros(4, np.uint8)
        tail[: raw.size - whole] = raw[whole:]
        total += int(tail.view(">u4")[0])
    return _add32(total, 0)


def _add32(a: int, b: int) -> int:
    """Ones'-complement addition of 32-bit sums (carries folded back in)."""
    total = a + b
    while total >> 32:
        total = (total & 0xFFFFFFFF) + (total >> 32)
    return total


def encode_checksum(total: int) -> str:
    """The 16-character CHECKSUM value for an HDU whose sum with a zero CHECKSUM is ``total``.

    The complement of the sum is spread over 16 printable characters avoiding punctuation (FITS
    checksum convention) and rotated by one, as the value starts one byte before a word boundary.
    """
    value = ~total & 0xFFFFFFFF
    chars = [0] * 16
    for position in range(4):
        byte = (value >> (24 - 8 * position)) & 0xFF
        quotient, remainder = divmod(byte, 4)
        group = [quotient + 0x30] * 4
        group[0] += remainder
        changed = True
        while changed:
            changed = False
            for pair in (0, 2):
                if group[pair] in CHECKSUM_EXCLUDED or group[pair + 1] in CHECKSUM_EXCLUDED:
                    group[pair] += 1
                    group[pair + 1] -= 1
                    changed = True
        for j in range(4):
            chars[4 * j + position] = group[j]
    return bytes(chars[-1:] + chars[:-1]).decode("ascii")
