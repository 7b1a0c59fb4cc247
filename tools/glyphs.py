"""A second data set of labelled images, from material the machine has: glyphs of its fonts.

`siamese glyphs OUT` renders characters of a few scripts with the TrueType fonts installed
under /usr/share/fonts (fonts-dejavu-core, fonts-dejavu-extra and fonts-liberation, which
.ci/run installs): each script and case a group, each character a class, each font a "drawer",
laid out OUT/GROUP/CHARACTER/FONT.png as `dataset.source` reads it (README, "Your own
classes"). A group takes `fonts` of the font files that have every one of its characters,
evenly spread in path order, so every class has one image per font. Black on white,
105x105, the glyph centred; the same fonts give the same bytes.
"""

import io
import unicodedata
from pathlib import Path

from fontTools.ttLib import TTFont
from PIL import Image, ImageDraw, ImageFont

from siamese.atomic import atomic_path
from siamese.errors import PipelineError

FONT_FOLDER = Path("/usr/share/fonts")
SIZE = 105
POINTS = 72
# group -> its characters (first and last code point); each a script and case
SCRIPTS = {
    "Latin_capital": (0x41, 0x5A),
    "Latin_small": (0x61, 0x7A),
    "Greek_capital": (0x391, 0x3A9),
    "Greek_small": (0x3B1, 0x3C9),
    "Cyrillic_capital": (0x410, 0x42F),
    "Cyrillic_small": (0x430, 0x44F),
}


def characters(first: int, last: int, count: int) -> list[str]:
    """The first `count` assigned characters from first to last (Greek has a gap at U+03A2)."""
    found = [chr(c) for c in range(first, last + 1) if unicodedata.category(chr(c)) != "Cn"]
    return found[:count]


def font_files(folder: Path) -> dict[Path, set[int]]:
    """Each TrueType font under `folder` -> the code points it has glyphs for."""
    fonts = {}
    for path in sorted(folder.rglob("*.ttf")):
        with TTFont(path, lazy=True) as font:
            fonts[path] = set(font.getBestCmap() or {})
    return fonts


def glyph_png(font: ImageFont.FreeTypeFont, char: str) -> bytes:
    """One character in black on white, SIZE x SIZE, its ink box centred."""
    image = Image.new("L", (SIZE, SIZE), 255)
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = draw.textbbox((0, 0), char, font=font)
    draw.text(((SIZE - (right - left)) / 2 - left, (SIZE - (bottom - top)) / 2 - top), char,
              font=font, fill=0)
    out = io.BytesIO()
    image.convert("1").save(out, format="PNG")
    return out.getvalue()


def render(out: Path, fonts: int, classes: int, folder: Path = FONT_FOLDER) -> int:
    """OUT/GROUP/CHARACTER/FONT.png for every group of SCRIPTS, the folder written whole or
    not at all; returns the images written."""
    available = font_files(folder)
    with atomic_path(out, is_dir=True) as tmp:
        return sum(render_group(tmp, group, characters(first, last, classes), available, fonts,
                                folder) for group, (first, last) in SCRIPTS.items())


def render_group(out: Path, group: str, chars: list[str], available: dict[Path, set[int]],
                 fonts: int, folder: Path) -> int:
    """out/group/CHARACTER/FONT.png with `fonts` of the fonts that have every character."""
    covering = [p for p, points in available.items() if {ord(c) for c in chars} <= points]
    if len(covering) < fonts:
        raise PipelineError(f"{folder}: {len(covering)} fonts have every character of {group}, "
                            f"{fonts} wanted (install fonts-dejavu-core, fonts-dejavu-extra and "
                            "fonts-liberation)")
    for path in covering[::len(covering) // fonts][:fonts]:  # spread over the families
        font = ImageFont.truetype(str(path), POINTS)
        for char in chars:
            folder_of_class = out / group / unicodedata.name(char).replace(" ", "_")
            folder_of_class.mkdir(parents=True, exist_ok=True)
            (folder_of_class / f"{path.stem}.png").write_bytes(glyph_png(font, char))
    return fonts * len(chars)
