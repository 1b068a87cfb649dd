"""The labelled grid of an X/Y/Z plot, drawn with PIL.

X values run along the top, Y values down the left side, and each Z value is a sub-grid of its own,
side by side with its title above. Cells may differ in size (a Size axis): each column is as wide as
its widest cell and each row as tall as its tallest, and a cell sits in the middle of its place.
A cell that was not made (the plot was stopped) stays blank.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

log = logging.getLogger(__name__)

BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)
FONT_FILES = (
    "DejaVuSans.ttf",  # found by FreeType in the system's font folders on most Linux machines
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/Library/Fonts/Arial.ttf",
    "C:/Windows/Fonts/arial.ttf",
)
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont
Box = tuple[int, int, int, int]


@dataclass
class Grid:
    image: Image.Image
    boxes: list[Box | None]  # by cell index: where its picture went (left, top, right, bottom); None if blank


@functools.lru_cache(maxsize=8)
def font(size: int) -> Font:
    """DejaVu Sans (or the system's sans) at ``size`` pixels; PIL's own font when none is installed."""
    for candidate in FONT_FILES:
        if candidate.startswith("/") and not Path(candidate).exists():
            continue
        try:
            return ImageFont.truetype(candidate, size)
        except OSError:
            continue
    log.info("no TrueType font found: the X/Y/Z legend uses PIL's built-in font")
    return ImageFont.load_default(size)


def text_width(text: str, face: Font) -> int:
    left, _, right, _ = face.getbbox(text)
    return int(right - left)


def wrap(text: str, face: Font, width: int) -> list[str]:
    """``text`` in lines no wider than ``width`` pixels: words kept whole unless one alone is wider."""
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if text_width(candidate, face) <= width or not line:
                line = candidate
            else:
                lines.append(line)
                line = word
            while text_width(line, face) > width and len(line) > 1:  # a word wider than the column: cut it
                cut = len(line) - 1
                while cut > 1 and text_width(line[:cut], face) > width:
                    cut -= 1
                lines.append(line[:cut])
                line = line[cut:]
        lines.append(line)
    return lines


def draw_grid(
    cells: Sequence[Image.Image | None],
    x_labels: Sequence[str],
    y_labels: Sequence[str],
    z_labels: Sequence[str],
    draw_legend: bool = True,
) -> Grid:
    """The grid of ``cells`` (index ``ix + iy * len(x_labels) + iz * len(x_labels) * len(y_labels)``)."""
    nx, ny, nz = len(x_labels), len(y_labels), len(z_labels)
    if len(cells) != nx * ny * nz or not cells:
        raise ValueError(f"{len(cells)} cells do not fill a {nx}x{ny}x{nz} grid")
    made = [cell for cell in cells if cell is not None]
    fallback = (max(c.width for c in made), max(c.height for c in made)) if made else (64, 64)

    def at(ix: int, iy: int, iz: int) -> Image.Image | None:
        return cells[ix + iy * nx + iz * nx * ny]

    columns = [max((c.width for iy in range(ny) for iz in range(nz) if (c := at(ix, iy, iz))), default=fallback[0])
               for ix in range(nx)]  # fmt: skip
    rows = [max((c.height for ix in range(nx) for iz in range(nz) if (c := at(ix, iy, iz))), default=fallback[1])
            for iy in range(ny)]  # fmt: skip
    face = font(max(12, min(48, (fallback[0] + fallback[1]) // 25)))
    size = int(face.size) if isinstance(face, ImageFont.FreeTypeFont) else 12
    pad, line_height = max(4, size // 3), int(size * 1.25)
    legend = _Legend(face, pad, line_height)
    x_lines = [wrap(label, face, width - 2 * pad) for label, width in zip(x_labels, columns, strict=True)]
    top = legend.band(x_lines, draw_legend)
    left_width = max(2 * max(columns), 8 * size)
    y_lines = [wrap(label, face, left_width - 2 * pad) for label in y_labels]
    left = legend.side(y_lines, draw_legend)
    sub_width, sub_height = left + sum(columns), top + sum(rows)
    z_lines = [wrap(label, face, sub_width - 2 * pad) for label in z_labels]
    title = legend.band(z_lines, draw_legend)
    gap = 2 * size if nz > 1 else 0
    image = Image.new("RGB", (nz * sub_width + (nz - 1) * gap, title + sub_height), BACKGROUND)
    pen = ImageDraw.Draw(image)
    boxes: list[Box | None] = [None] * len(cells)
    for iz in range(nz):
        origin_x, origin_y = iz * (sub_width + gap), title
        if title:
            legend.write(pen, z_lines[iz], (origin_x, 0, origin_x + sub_width, title))
        x = origin_x + left
        for ix, width in enumerate(columns):
            if top:
                legend.write(pen, x_lines[ix], (x, origin_y, x + width, origin_y + top))
            y = origin_y + top
            for iy, height in enumerate(rows):
                if left and ix == 0:
                    legend.write(pen, y_lines[iy], (origin_x, y, origin_x + left, y + height))
                cell = at(ix, iy, iz)
                if cell is not None:
                    corner = (x + (width - cell.width) // 2, y + (height - cell.height) // 2)
                    image.paste(cell.convert("RGB"), corner)
                    boxes[ix + iy * nx + iz * nx * ny] = (*corner, corner[0] + cell.width, corner[1] + cell.height)
                y += height
            x += width
    return Grid(image, boxes)


@dataclass
class _Legend:
    face: Font
    pad: int
    line_height: int

    def band(self, labels: list[list[str]], shown: bool) -> int:
        """Height of a band of labels above the cells (0 when it is not drawn or has no text)."""
        if not shown or not any("".join(lines) for lines in labels):
            return 0
        return max(len(lines) for lines in labels) * self.line_height + 2 * self.pad

    def side(self, labels: list[list[str]], shown: bool) -> int:
        """Width of the band of labels left of the cells."""
        if not shown or not any("".join(lines) for lines in labels):
            return 0
        return max(text_width(line, self.face) for lines in labels for line in lines) + 2 * self.pad

    def write(self, pen: ImageDraw.ImageDraw, lines: list[str], box: Box) -> None:
        """``lines`` centred in ``box``."""
        left, top, right, bottom = box
        y = top + (bottom - top - len(lines) * self.line_height) // 2
        for line in lines:
            x = left + (right - left - text_width(line, self.face)) // 2
            pen.text((x, y), line, fill=INK, font=self.face)
            y += self.line_height
