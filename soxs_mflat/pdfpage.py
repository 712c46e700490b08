"""A one-page vector PDF writer for the QC figures: axes, ticks, text, markers, lines, fills, images.

The QC pages need a handful of plot elements, which PDF draws natively; writing them directly
takes a few tens of milliseconds and no memory to speak of, where importing and running a general
plotting library took ~1 s and ~100 MB per run (see docs/comparison.md). Text uses the standard
Helvetica fonts, which every PDF viewer carries, so nothing is embedded. Coordinates are PDF points
(1/72 in) from the lower left corner of the page.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

Colour = tuple[float, float, float]

TAB10: tuple[str, ...] = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                          "#bcbd22", "#17becf")
"""The ten qualitative colours used for series and orders."""
_COLORMAP_ANCHORS: dict[str, tuple[str, ...]] = {
    "gray": ("#000000", "#ffffff"),
    "viridis": ("#440154", "#482878", "#3e4989", "#31688e", "#26828e", "#1f9e89", "#35b779", "#6ece58", "#b5de2b",
                "#fde725"),
    "RdBu_r": ("#053061", "#2166ac", "#4393c3", "#92c5de", "#d1e5f0", "#f7f7f7", "#fddbc7", "#f4a582", "#d6604d",
               "#b2182b", "#67001f"),
}
# Advance widths (1/1000 em) of Helvetica for the printable ASCII characters, from the font's metrics.
_ASCII_WIDTHS = (
    278, 278, 355, 556, 556, 889, 667, 191, 333, 333, 389, 584, 278, 333, 278, 278, 556, 556, 556, 556, 556, 556, 556,
    556, 556, 556, 278, 278, 584, 584, 584, 556, 1015, 667, 667, 722, 722, 667, 611, 778, 722, 278, 500, 667, 556, 833,
    722, 778, 667, 778, 722, 667, 611, 722, 667, 944, 667, 667, 611, 278, 278, 278, 469, 556, 333, 556, 556, 500, 556,
    556, 278, 556, 556, 222, 222, 500, 222, 833, 556, 556, 556, 556, 333, 500, 278, 556, 500, 722, 500, 500, 500, 334,
    260, 334, 584,
)
_WIDTHS = {chr(32 + i): w for i, w in enumerate(_ASCII_WIDTHS)} | {"—": 1000, "…": 1000, "×": 584, "±": 584}
_SUBSTITUTES = str.maketrans({"−": "-", "σ": "sigma ", "≤": "<=", "≥": ">=", "→": "->"})


def hex_colour(code: str) -> Colour:
    """``#rrggbb`` as an RGB triple in 0..1."""
    return tuple(int(code[i : i + 2], 16) / 255.0 for i in (1, 3, 5))


def colormap(name: str) -> np.ndarray:
    """A 256-step colour table (256 × 3, uint8) of ``gray``, ``viridis`` or ``RdBu_r``, interpolated
    linearly between the map's anchor colours."""
    anchors = np.array([hex_colour(code) for code in _COLORMAP_ANCHORS[name]])
    where = np.linspace(0.0, 1.0, anchors.shape[0])
    steps = np.linspace(0.0, 1.0, 256)
    table = np.column_stack([np.interp(steps, where, anchors[:, k]) for k in range(3)])
    return np.round(table * 255.0).astype(np.uint8)


def colour_image(pixels: np.ndarray, *, vmin: float, vmax: float, cmap: str, gamma: float = 1.0,
                 missing: Colour = (0.85, 0.85, 0.85)) -> np.ndarray:
    """``pixels`` scaled to [vmin, vmax] (then raised to ``gamma``) and coloured by ``cmap``: rows × columns × 3
    uint8; non-finite pixels get the ``missing`` colour."""
    span = vmax - vmin if vmax > vmin else 1.0
    values = np.asarray(pixels, dtype=np.float32)
    finite = np.isfinite(values)
    scaled = np.clip((np.where(finite, values, np.float32(vmin)) - np.float32(vmin)) / np.float32(span), 0.0, 1.0)
    if gamma != 1.0:
        scaled **= np.float32(gamma)
    rgb = colormap(cmap)[np.rint(scaled * 255.0).astype(np.uint8)]
    rgb[~finite] = np.round(np.array(missing) * 255.0).astype(np.uint8)
    return rgb


def text_width(text: str, size: float) -> float:
    """Width (pt) of ``text`` set in Helvetica at ``size`` pt."""
    return size * sum(_WIDTHS.get(c, 556) for c in _clean(text)) / 1000.0


def nice_ticks(low: float, high: float, *, target: int = 6) -> np.ndarray:
    """Round tick positions (1, 2, 2.5 or 5 × 10^k apart) covering [low, high], about ``target`` of them."""
    if not (np.isfinite(low) and np.isfinite(high)) or high <= low:
        return np.array([low]) if np.isfinite(low) else np.array([])
    raw = (high - low) / max(target - 1, 1)
    power = 10.0 ** np.floor(np.log10(raw))
    step = next(m * power for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * power >= raw * 0.999)
    first = np.ceil(low / step - 1e-9) * step
    ticks = np.arange(first, high + step * 1e-9, step)
    return np.where(np.abs(ticks) < step * 1e-9, 0.0, ticks)


def tick_label(value: float, step: float) -> str:
    """A tick value with as many decimals as its spacing ``step`` needs."""
    decimals = 0 if step >= 1 and float(step).is_integer() else max(0, int(-np.floor(np.log10(step) + 1e-9)) + 1)
    if step < 1 and (round(step * 10**decimals) % 10 == 0):
        decimals -= 1
    text = f"{value:.{max(decimals, 0)}f}"
    return "-" + text[1:] if text.startswith("-") else text


def _clean(text: str) -> str:
    return text.translate(_SUBSTITUTES)


def _pdf_string(text: str) -> str:
    raw = _clean(text).encode("cp1252", errors="replace")
    out = []
    for byte in raw:
        char = chr(byte)
        if char in "\\()":
            out.append("\\" + char)
        elif 32 <= byte < 127:
            out.append(char)
        else:
            out.append(f"\\{byte:03o}")
    return "(" + "".join(out) + ")"


@dataclass
class Page:
    """One PDF page being drawn; :meth:`save` writes it."""

    width: float
    height: float
    _ops: list[str] = field(default_factory=list)
    _images: list[tuple[np.ndarray, str]] = field(default_factory=list)
    _alphas: dict[float, str] = field(default_factory=dict)

    @classmethod
    def inches(cls, width: float, height: float) -> Page:
        """A page ``width`` × ``height`` inches."""
        return cls(72.0 * width, 72.0 * height)

    def emit(self, *operators: str) -> None:
        """Append raw content-stream operators."""
        self._ops.extend(operators)

    def alpha(self, value: float) -> str:
        """Operator setting the fill opacity to ``value``."""
        name = self._alphas.setdefault(round(value, 3), f"/A{len(self._alphas)}")
        return f"{name} gs"

    def text(self, x: float, y: float, text: str, *, size: float = 10.0, anchor: str = "left", valign: str = "baseline",
             rotate: bool = False, bold: bool = False, colour: Colour = (0.0, 0.0, 0.0)) -> None:
        """Text at (x, y) pt; ``anchor`` left/center/right along the text, ``valign`` baseline/center/top/bottom;
        ``rotate`` turns it 90° counter-clockwise. Lines split at newlines go downwards."""
        lines = text.split("\n")
        for k, line in enumerate(lines):
            width = text_width(line, size) * (1.05 if bold else 1.0)
            shift_along = {"left": 0.0, "center": -0.5 * width, "right": -width}[anchor]
            offset = {"baseline": 0.0, "center": -0.35 * size, "top": -0.75 * size, "bottom": 0.22 * size}[valign]
            # the block of lines is aligned as a whole: "bottom" lifts it so its last line sits on the point
            lift = {"center": 0.6, "bottom": 1.2}.get(valign, 0.0) * size * (len(lines) - 1)
            offset += lift - 1.2 * size * k
            matrix = (f"0 1 -1 0 {x - offset:.2f} {y + shift_along:.2f}" if rotate
                      else f"1 0 0 1 {x + shift_along:.2f} {y + offset:.2f}")
            font = "/F2" if bold else "/F1"
            self._ops.append(f"BT {colour[0]:.3f} {colour[1]:.3f} {colour[2]:.3f} rg {font} {size:.1f} Tf {matrix} Tm "
                             f"{_pdf_string(line)} Tj ET")

    def image(self, rgb: np.ndarray, x0: float, y0: float, x1: float, y1: float) -> None:
        """An RGB image (rows × columns × 3 uint8, first row at the bottom) stretched over the box."""
        name = f"/Im{len(self._images)}"
        self._images.append((np.ascontiguousarray(rgb[::-1]), name))
        self._ops.append(f"q {x1 - x0:.3f} 0 0 {y1 - y0:.3f} {x0:.3f} {y0:.3f} cm {name} Do Q")

    def save(self, path: Path | str) -> None:
        """Write the page as a PDF file at ``path``."""
        objects: list[bytes] = []

        def add(body: bytes) -> int:
            objects.append(body)
            return len(objects)

        def stream(data: bytes, extra: str = "") -> bytes:
            packed = zlib.compress(data, 1)
            return (f"<< {extra} /Filter /FlateDecode /Length {len(packed)} >>\nstream\n".encode("ascii") + packed
                    + b"\nendstream")

        catalog, pages = add(b""), add(b"")
        fonts = [add(f"<< /Type /Font /Subtype /Type1 /BaseFont /{name} /Encoding /WinAnsiEncoding >>".encode("ascii"))
                 for name in ("Helvetica", "Helvetica-Bold")]
        images = []
        for rgb, name in self._images:
            rows, cols = rgb.shape[:2]
            images.append((name, add(stream(rgb.tobytes(), f"/Type /XObject /Subtype /Image /Width {cols} /Height {rows} "
                                                           "/ColorSpace /DeviceRGB /BitsPerComponent 8"))))
        states = " ".join(f"{name} << /ca {value} /CA {value} >>" for value, name in self._alphas.items())
        content = add(stream("\n".join(self._ops).encode("latin-1")))
        xobjects = " ".join(f"{name} {number} 0 R" for name, number in images)
        page = add((f"<< /Type /Page /Parent {pages} 0 R /MediaBox [0 0 {self.width:.2f} {self.height:.2f}] "
                    f"/Contents {content} 0 R /Resources << /Font << /F1 {fonts[0]} 0 R /F2 {fonts[1]} 0 R >> "
                    f"/XObject << {xobjects} >> /ExtGState << {states} >> >> >>").encode("ascii"))
        objects[catalog - 1] = f"<< /Type /Catalog /Pages {pages} 0 R >>".encode("ascii")
        objects[pages - 1] = f"<< /Type /Pages /Kids [{page} 0 R] /Count 1 >>".encode("ascii")
        out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
        offsets = []
        for number, body in enumerate(objects, start=1):
            offsets.append(len(out))
            out += f"{number} 0 obj\n".encode("ascii") + body + b"\nendobj\n"
        xref = len(out)
        out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode("ascii")
        out += "".join(f"{offset:010d} 00000 n \n" for offset in offsets).encode("ascii")
        out += f"trailer\n<< /Size {len(objects) + 1} /Root {catalog} 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode("ascii")
        Path(path).write_bytes(bytes(out))


@dataclass
class Axes:
    """A plot box on a :class:`Page` (``box`` = x0, y0, x1, y1 in pt) showing ``xlim`` × ``ylim``."""

    page: Page
    box: tuple[float, float, float, float]
    xlim: tuple[float, float]
    ylim: tuple[float, float]

    @classmethod
    def on(cls, page: Page, fractions: tuple[float, float, float, float], xlim: tuple[float, float],
           ylim: tuple[float, float]) -> Axes:
        """Axes over the page fractions (left, bottom, right, top)."""
        left, bottom, right, top = fractions
        return cls(page, (left * page.width, bottom * page.height, right * page.width, top * page.height),
                   (float(xlim[0]), float(xlim[1])), (float(ylim[0]), float(ylim[1])))

    def to_page(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Data coordinates to page points."""
        x0, y0, x1, y1 = self.box
        (a, b), (c, d) = self.xlim, self.ylim
        px = x0 + (np.asarray(x, dtype=np.float64) - a) * ((x1 - x0) / ((b - a) or 1.0))
        py = y0 + (np.asarray(y, dtype=np.float64) - c) * ((y1 - y0) / ((d - c) or 1.0))
        return px, py

    def _clipped(self, operators: list[str]) -> None:
        """Emit ``operators`` clipped to the box, in units of 0.01 pt (as :func:`_path` writes coordinates)."""
        x0, y0, x1, y1 = self.box
        self.page.emit(f"q {x0:.2f} {y0:.2f} {x1 - x0:.2f} {y1 - y0:.2f} re W n 0.01 0 0 0.01 0 0 cm", *operators, "Q")

    def fill(self, colour: Colour) -> None:
        """Paint the background of the box."""
        x0, y0, x1, y1 = self.box
        self.page.emit(f"{_rgb(colour)} rg {x0:.2f} {y0:.2f} {x1 - x0:.2f} {y1 - y0:.2f} re f")

    def image(self, rgb: np.ndarray, extent: tuple[float, float, float, float]) -> None:
        """An RGB image covering ``extent`` (x0, x1, y0, y1 in data units), first row at y0."""
        (px0, px1), (py0, py1) = (self.to_page(np.array(extent[:2]), np.array(extent[2:])))
        self.page.emit(f"q {self.box[0]:.2f} {self.box[1]:.2f} {self.box[2] - self.box[0]:.2f} "
                       f"{self.box[3] - self.box[1]:.2f} re W n")
        self.page.image(rgb, px0, py0, px1, py1)
        self.page.emit("Q")

    def markers(self, x: np.ndarray, y: np.ndarray, colour: Colour, *, size: float = 2.0, cross: bool = False) -> None:
        """A marker of ``size`` pt at every finite point: filled squares, or crosses."""
        px, py = self.to_page(x, y)
        keep = np.isfinite(px) & np.isfinite(py)
        px, py = px[keep], py[keep]
        if px.size == 0:
            return
        half = 0.5 * size
        if cross:
            corners = np.column_stack([px - half, py - half, px + half, py + half, px - half, py + half, px + half,
                                       py - half])
            path = _path("{} {} m {} {} l {} {} m {} {} l", corners)
            self._clipped([f"{_rgb(colour)} RG 120 w {path} S"])
        else:
            boxes = np.column_stack([px - half, py - half, np.full(px.size, size), np.full(px.size, size)])
            path = _path("{} {} {} {} re", boxes)
            self._clipped([f"{_rgb(colour)} rg {path} f"])

    def line(self, x: np.ndarray, y: np.ndarray, colour: Colour, *, width: float = 1.0, dash: str = "") -> None:
        """A polyline through the finite points (broken at non-finite ones)."""
        px, py = self.to_page(x, y)
        finite = np.concatenate([[False], np.isfinite(px) & np.isfinite(py), [False]])
        edges = np.flatnonzero(np.diff(finite.astype(np.int8)))
        pieces = []
        for start, stop in zip(edges[::2], edges[1::2], strict=True):
            if stop - start > 1:
                points = np.column_stack([px[start:stop], py[start:stop]])
                pieces.append(_path("{} {} m", points[:1]) + " " + _path("{} {} l", points[1:]))
        if pieces:
            pattern = f"[{' '.join(str(100 * float(v)) for v in dash.split())}] 0 d " if dash else ""
            self._clipped([f"{_rgb(colour)} RG {100 * width:.0f} w {pattern}" + " ".join(pieces) + " S"])

    def band(self, along: np.ndarray, low: np.ndarray, high: np.ndarray, colour: Colour, *, alpha: float = 1.0,
             vertical: bool = False) -> None:
        """The area between ``low`` and ``high`` over ``along`` (along y if ``vertical``), filled."""
        if vertical:
            px, py = self.to_page(np.concatenate([low, high[::-1]]), np.concatenate([along, along[::-1]]))
        else:
            px, py = self.to_page(np.concatenate([along, along[::-1]]), np.concatenate([low, high[::-1]]))
        points = np.column_stack([px, py])
        path = _path("{} {} m", points[:1]) + " " + _path("{} {} l", points[1:]) + " h f"
        self._clipped([f"{self.page.alpha(alpha)} {_rgb(colour)} rg {path}"])

    def hline(self, y: float, colour: Colour = (0.0, 0.0, 0.0), *, width: float = 0.8, dash: str = "") -> None:
        """A horizontal line across the box at ``y``."""
        self.line(np.array(self.xlim), np.array([y, y]), colour, width=width, dash=dash)

    def vline(self, x: float, colour: Colour = (0.0, 0.0, 0.0), *, width: float = 0.8, dash: str = "") -> None:
        """A vertical line across the box at ``x``."""
        self.line(np.array([x, x]), np.array(self.ylim), colour, width=width, dash=dash)

    def text(self, x: float, y: float, text: str, **options: object) -> None:
        """Text at data coordinates (see :meth:`Page.text`)."""
        px, py = self.to_page(np.array([x]), np.array([y]))
        if self.box[0] <= px[0] <= self.box[2] and self.box[1] <= py[0] <= self.box[3]:
            self.page.text(float(px[0]), float(py[0]), text, **options)

    def frame(self, *, title: str = "", xlabel: str = "", ylabel: str = "", grid: bool = False,
              xticks: np.ndarray | None = None, xticklabels: bool = True, yticklabels: bool = True,
              size: float = 8.0) -> None:
        """Box outline, ticks and their labels, axis labels, optional grid and title."""
        x0, y0, x1, y1 = self.box
        x_ticks = nice_ticks(*self.xlim) if xticks is None else np.asarray(xticks, dtype=np.float64)
        y_ticks = nice_ticks(*self.ylim)
        x_ticks = x_ticks[(x_ticks >= min(self.xlim)) & (x_ticks <= max(self.xlim))]
        y_ticks = y_ticks[(y_ticks >= min(self.ylim)) & (y_ticks <= max(self.ylim))]
        px, _ = self.to_page(x_ticks, np.zeros_like(x_ticks))
        _, py = self.to_page(np.zeros_like(y_ticks), y_ticks)
        ops = []
        if grid:
            ops.append("0.85 0.85 0.85 RG 0.5 w " + " ".join(f"{p:.2f} {y0:.2f} m {p:.2f} {y1:.2f} l" for p in px)
                       + " " + " ".join(f"{x0:.2f} {p:.2f} m {x1:.2f} {p:.2f} l" for p in py) + " S")
        ticks = [f"{p:.2f} {y0:.2f} m {p:.2f} {y0 - 3.5:.2f} l" for p in px]
        ticks += [f"{x0:.2f} {p:.2f} m {x0 - 3.5:.2f} {p:.2f} l" for p in py]
        ops.append("0 0 0 RG 0.8 w [] 0 d " + " ".join(ticks) + f" S {x0:.2f} {y0:.2f} {x1 - x0:.2f} {y1 - y0:.2f} re S")
        self.page.emit(*ops)
        x_step = float(np.min(np.diff(x_ticks))) if x_ticks.size > 1 else 1.0
        y_step = float(np.min(np.diff(y_ticks))) if y_ticks.size > 1 else 1.0
        if xticklabels:
            for p, value in zip(px, x_ticks, strict=True):
                self.page.text(float(p), y0 - 5.0, tick_label(value, x_step), size=size, anchor="center", valign="top")
        label_width = 0.0
        if yticklabels:
            labels = [tick_label(value, y_step) for value in y_ticks]
            label_width = max((text_width(t, size) for t in labels), default=0.0)
            for p, label in zip(py, labels, strict=True):
                self.page.text(x0 - 5.0, float(p), label, size=size, anchor="right", valign="center")
        if xlabel:
            self.page.text(0.5 * (x0 + x1), y0 - 8.0 - 1.9 * size, xlabel, size=size + 1, anchor="center", valign="top")
        if ylabel:
            self.page.text(x0 - 9.0 - label_width, 0.5 * (y0 + y1), ylabel, size=size + 1, anchor="center",
                           valign="bottom", rotate=True)
        if title:
            self.page.text(0.5 * (x0 + x1), y1 + 5.0, title, size=size + 2, anchor="center", valign="bottom")

    def legend(self, entries: list[tuple[str, Colour, str]], *, size: float = 7.5) -> None:
        """A key in the upper right corner: (marker ``dot``/``cross``/``line``, colour, label) per entry."""
        if not entries:
            return
        width = max(text_width(label, size) for _, _, label in entries) + 24.0
        height = 1.4 * size * len(entries) + 6.0
        x1, y1 = self.box[2] - 4.0, self.box[3] - 4.0
        x0 = x1 - width
        self.page.emit(f"q {self.page.alpha(0.85)} 1 1 1 rg {x0:.2f} {y1 - height:.2f} {width:.2f} {height:.2f} re f Q",
                       f"0.7 0.7 0.7 RG 0.5 w [] 0 d {x0:.2f} {y1 - height:.2f} {width:.2f} {height:.2f} re S")
        for k, (kind, colour, label) in enumerate(entries):
            y = y1 - 3.0 - 1.4 * size * (k + 0.5)
            x = x0 + 9.0
            if kind == "line":
                self.page.emit(f"{_rgb(colour)} RG 1.4 w {x - 6:.2f} {y:.2f} m {x + 6:.2f} {y:.2f} l S")
            elif kind == "cross":
                self.page.emit(f"{_rgb(colour)} RG 1.2 w {x - 3:.2f} {y - 3:.2f} m {x + 3:.2f} {y + 3:.2f} l "
                               f"{x - 3:.2f} {y + 3:.2f} m {x + 3:.2f} {y - 3:.2f} l S")
            else:
                self.page.emit(f"{_rgb(colour)} rg {x - 2.5:.2f} {y - 2.5:.2f} 5 5 re f")
            self.page.text(x + 9.0, y, label, size=size, valign="center")

    def colorbar(self, cmap: str, vmin: float, vmax: float, *, label: str = "", size: float = 8.0) -> None:
        """A colour scale for ``cmap`` from ``vmin`` to ``vmax`` just right of the box."""
        _, y0, x1, y1 = self.box
        bar = Axes(self.page, (x1 + 8.0, y0, x1 + 18.0, y1), (0.0, 1.0), (vmin, vmax))
        ramp = colormap(cmap)[:, None, :]
        self.page.image(ramp, bar.box[0], bar.box[1], bar.box[2], bar.box[3])
        ticks = nice_ticks(vmin, vmax)
        ticks = ticks[(ticks >= min(vmin, vmax)) & (ticks <= max(vmin, vmax))]
        _, py = bar.to_page(np.zeros_like(ticks), ticks)
        bx0, by0, bx1, by1 = bar.box
        self.page.emit("0 0 0 RG 0.6 w [] 0 d " + " ".join(f"{bx1:.2f} {p:.2f} m {bx1 + 3:.2f} {p:.2f} l" for p in py)
                       + f" S {bx0:.2f} {by0:.2f} {bx1 - bx0:.2f} {by1 - by0:.2f} re S")
        step = float(np.min(np.diff(ticks))) if ticks.size > 1 else 1.0
        labels = [tick_label(value, step) for value in ticks]
        for p, text in zip(py, labels, strict=True):
            self.page.text(bx1 + 5.0, float(p), text, size=size, valign="center")
        if label:
            widest = max((text_width(t, size) for t in labels), default=0.0)
            self.page.text(bx1 + 9.0 + widest, 0.5 * (by0 + by1), label, size=size + 1, anchor="center", valign="top",
                           rotate=True)


def _rgb(colour: Colour) -> str:
    return f"{colour[0]:.3f} {colour[1]:.3f} {colour[2]:.3f}"


def _path(template: str, values: np.ndarray) -> str:
    """``template`` (one ``{}`` per column) filled with each row of ``values`` (pt) as whole 0.01 pt, rows
    joined: integers are written several times faster than decimals (see :meth:`Axes._clipped`)."""
    centi = np.round(np.asarray(values, dtype=np.float64).ravel() * 100.0).astype(np.int64).tolist()
    return " ".join([template] * values.shape[0]).format(*centi)
