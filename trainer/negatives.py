"""Not-a-digit examples: printed characters, lines, box pieces and blobs, made 28x28 the MNIST way.

The model learns an eleventh class from these, so a form's printed label, a ruled line or a stamp is
not reported as a handwritten digit. Printed digits are negatives too: only handwriting is read.
"""

from __future__ import annotations

import functools
import string
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from core.weights import GLYPH_SHAPE
from worker.normalise import fit

PRINTED = string.ascii_letters + string.digits + "$%&#@+=:;()[]*?€£§"
# A single bar is how many people write a 1: printed characters that are nothing but a bar are left out alone.
BARS = set("1lIij|!/-.,")
SINGLE = "".join(character for character in PRINTED if character not in BARS)
# Held out of training, so the measured rejection of printed text is that of an unseen typeface.
HELD_OUT_FONTS = ("STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf")
KINDS = ("printed", "printed", "printed", "printed", "pair", "pair", "line", "corner", "blob")
# Pieces of boxes, comb fields and grids. Not a corner opening left and down: that is a handwritten 7,
# nor a vertical bar with one arm to a side, which is how many write a 4.
ARMS = {"right": (1, 0), "down": (0, 1), "left": (-1, 0), "up": (0, -1)}
CORNERS = (("up", "right"), ("up", "left"), ("right", "down"), ("left", "right", "down"), ("left", "right", "up"),
           ("left", "right", "up", "down"))


@functools.lru_cache(maxsize=1)
def font_files(*, held_out: bool = False) -> tuple[Path, ...]:
    """The TrueType fonts that ship with matplotlib (DejaVu, Computer Modern, STIX), so nothing is downloaded."""
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    # Left out: symbol fonts, and the Display faces, which hold a few glyphs and draw nothing for letters.
    fonts = sorted(path for path in folder.glob("*.ttf")
                   if not path.name.startswith(("cmex", "cmsy", "STIXSiz", "STIXNonUni", "LastResort"))
                   and "Display" not in path.name)
    return tuple(path for path in fonts if (path.name in HELD_OUT_FONTS) == held_out)


def negatives(count: int, *, seed: int, held_out_fonts: bool = False) -> np.ndarray:
    """`count` not-a-digit images, float32 (count, 28, 28) in 0..1, white on black like MNIST."""
    random = np.random.default_rng(seed)
    fonts = font_files(held_out=held_out_fonts)
    images = np.zeros((count, *GLYPH_SHAPE), np.float32)
    for index in range(count):
        kind = KINDS[int(random.integers(len(KINDS)))]
        ink = _draw(kind, random, fonts)
        rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
        if rows.size:
            images[index] = fit(ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1])
    return images


@functools.lru_cache(maxsize=512)
def _face(font: Path, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(font), size)


def printed_glyph(text: str, font: Path, size: int, random: np.random.Generator) -> np.ndarray:
    """Text drawn in a font, white on black, as float 0..1 (slightly rotated and blurred, like a scan)."""
    face = _face(font, size)
    canvas = Image.new("L", (size * (len(text) + 2), size * 3), 0)
    ImageDraw.Draw(canvas).text((size, size), text, fill=255, font=face)
    canvas = canvas.rotate(float(random.uniform(-4, 4)), resample=Image.Resampling.BILINEAR)
    if random.random() < 0.5:
        canvas = canvas.filter(ImageFilter.GaussianBlur(float(random.uniform(0.3, 1.2))))
    return np.asarray(canvas, np.float32) / 255.0


def _draw(kind: str, random: np.random.Generator, fonts: tuple[Path, ...]) -> np.ndarray:
    size = int(random.integers(24, 72))
    if kind in ("printed", "pair"):
        if kind == "printed":
            text = SINGLE[int(random.integers(len(SINGLE)))]
        else:
            text = "".join(PRINTED[int(random.integers(len(PRINTED)))] for _ in range(2))
        return printed_glyph(text, fonts[int(random.integers(len(fonts)))], size, random)
    canvas = Image.new("L", (size * 3, size * 3), 0)
    draw = ImageDraw.Draw(canvas)
    width = int(random.integers(1, max(2, size // 8)))
    centre = np.array([size * 1.5, size * 1.5])
    if kind == "line":  # a piece of a ruled line or an underline: long and flat, at most slightly tilted
        length = size * random.uniform(1.5, 2.8)
        tilt = random.uniform(-0.08, 0.08)
        start, end = centre - [length / 2, tilt * length / 2], centre + [length / 2, tilt * length / 2]
        draw.line([tuple(start), tuple(end)], fill=255, width=width)
    elif kind == "corner":  # the corner, tee or cross of a box, a comb field or a table grid
        for arm in CORNERS[int(random.integers(len(CORNERS)))]:
            reach = size * random.uniform(0.6, 1.3)
            draw.line([tuple(centre), tuple(centre + np.array(ARMS[arm]) * reach)], fill=255, width=width)
    else:  # a blob: a filled stain, a stamp's solid part, a punched hole
        radii = size * random.uniform(0.2, 0.6, size=2)
        draw.ellipse([tuple(centre - radii), tuple(centre + radii)], fill=255)
    picture = canvas.filter(ImageFilter.GaussianBlur(float(random.uniform(0.3, 1.0))))
    return np.asarray(picture, np.float32) / 255.0
