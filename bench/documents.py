"""Pages like those offices scan, with known labels: forms, ruled paper, phone photos, tally sheets, PDFs,
and pages with no handwriting at all (printed text, lines). Handwriting comes from the MNIST test split only.

Beside trainer/scans.py (one row of digits on plain paper), which it reuses for ink and paper.
"""

from __future__ import annotations

import io
import math
import string

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from trainer.negatives import font_files
from trainer.scans import Scan, _paper, ink_of, test_digits

KINDS = ("form", "ruled", "photo", "tally", "pdf")
WITHOUT_DIGITS = ("printed", "lines")
WORDS = ("Amount", "Total", "Invoice", "Account", "Date", "Name", "Reference", "Customer", "Quantity", "Signature",
         "Branch", "Form", "Office", "Received", "Number", "Code", "Paid", "Balance", "Order", "Item")


def pages(kind: str, count: int, *, seed: int = 0) -> list[Scan]:
    """`count` pages of one kind; the same seed gives the same pages (the same bytes, but for the time a
    PDF embeds). Labels: the handwritten numbers in reading order joined by one space ("" for the kinds
    without handwriting)."""
    images, labels = test_digits()
    order = np.random.default_rng([seed, KINDS.index(kind) if kind in KINDS else 9]).permutation(len(images))
    cursor = 0

    def digits(length: int) -> np.ndarray:
        nonlocal cursor
        cursor += length
        return order[(cursor - length + np.arange(length)) % len(order)]

    return [_page(kind, index, seed, digits, images, labels) for index in range(count)]


def page(kind: str, index: int, *, seed: int, sources: tuple[tuple[int, ...], ...]) -> Scan:
    """Page `index` of pages(kind, ..., seed=seed) alone, made from the MNIST test digits it holds (its
    Scan.sources, per number): the same page, without drawing the pages before it."""
    remaining = [digit for number in sources for digit in number]

    def digits(length: int) -> list[int]:
        if len(remaining) < length:
            raise ValueError(f"{kind} page {index} writes more digits than the sources hold")
        chosen = remaining[:length]
        del remaining[:length]
        return chosen

    made = _page(kind, index, seed, digits, *test_digits())
    if remaining:
        raise ValueError(f"{kind} page {index} writes fewer digits than the sources hold")
    return made


def _page(kind: str, index: int, seed: int, digits, images: np.ndarray, labels: np.ndarray) -> Scan:
    """One page, drawn with its own random generator; `digits(length)` gives the indices of the MNIST test
    digits (`images`, `labels`) for each number it writes."""
    random = np.random.default_rng([seed, index, sum(map(ord, kind))])

    def number(length_range=(2, 5)) -> tuple[list[np.ndarray], str, tuple[int, ...]]:
        chosen = digits(int(random.integers(length_range[0], length_range[1] + 1)))
        return [images[i] for i in chosen], "".join(str(int(labels[i])) for i in chosen), tuple(map(int, chosen))

    drawn, label, sources = DRAW[kind](random, number)
    data = _encode(drawn, kind, random)
    return Scan(f"{index:05d}-{kind}.{'pdf' if kind == 'pdf' else 'jpg' if kind == 'photo' else 'png'}",
                data, (label,), kind, sources)


# --- the kinds ---------------------------------------------------------------------------------


def _form(random, number):
    """A printed title, a printed label ("Amount:") and a box drawn around the handwritten number."""
    font = _font(random)
    digits, label, sources = number()
    ink, digit_height = _handwriting(digits, random, height=int(random.integers(70, 110)))
    label_size = int(digit_height * random.uniform(0.4, 0.6))
    words = f"{_word(random)}:"
    label_width = int(ImageFont.truetype(str(font), label_size).getlength(words))
    gap, margin = int(random.integers(20, 50)), int(digit_height * random.uniform(0.2, 0.4))
    slack = int(random.integers(0, 120))
    # The page is wide enough for its label and box: the whole number is on it.
    needed = int((label_width + gap + ink.shape[1] + 2 * margin + slack + 60) / 0.92)
    width, height = max(needed, int(random.integers(700, 1000))), int(random.integers(500, 750))
    canvas = _Canvas(width, height, random)
    canvas.text(f"{_word(random)} {_word(random).lower()} form No. {int(random.integers(1, 999))}",
                (int(width * 0.08), int(height * 0.08)), int(random.integers(26, 40)), font)
    top = int(height * random.uniform(0.35, 0.55))
    canvas.text(words, (int(width * 0.08), top + digit_height // 3), label_size, font)
    box_left = int(width * 0.08) + label_width + gap
    box = (box_left, top - margin, box_left + ink.shape[1] + 2 * margin + slack, top + ink.shape[0] + margin)
    canvas.rectangle(box, width=int(random.integers(2, 4)))
    canvas.write(ink, (box[0] + margin + int(random.integers(0, 30)), top))
    if random.random() < 0.5:
        canvas.text(f"{_word(random)}: ________", (int(width * 0.08), int(height * 0.85)), label_size, font)
    return canvas.image(), label, (sources,)


def _ruled(random, number):
    """Blue ruled lines, a red margin, the number written on a line (its strokes touch and cross it)."""
    width, height = int(random.integers(700, 1000)), int(random.integers(600, 900))
    canvas = _Canvas(width, height, random)
    spacing = int(random.integers(70, 100))
    digits, label, sources = number()
    ink, _ = _handwriting(digits, random, height=int(spacing * random.uniform(0.8, 1.1)))
    line = int(random.integers(2, height // spacing - 1))
    baseline = line * spacing + int(random.integers(spacing // 4, spacing // 2))
    for y in range(spacing // 2, height, spacing):
        canvas.line([(0, y + (y * 0)), (width, y + int(random.integers(-2, 3)))], colour=(70, 110, 200), width=2)
    margin = int(width * random.uniform(0.1, 0.15))
    canvas.line([(margin, 0), (margin, height)], colour=(210, 60, 60), width=2)
    ink = _within(ink, width - margin - 50)
    left = margin + int(random.integers(30, max(31, width - margin - ink.shape[1] - 20)))
    # The line nearest below the writing is what it sits on: the ink reaches a few pixels past it.
    below = next(y for y in range(spacing // 2, height + spacing, spacing) if y >= baseline)
    canvas.write(ink, (left, below - ink.shape[0] + int(random.integers(0, 8))))
    return canvas.image(), label, (sources,)


def _plain(random, number, *, widths: tuple[int, int], heights: tuple[int, int], digits_tall: tuple[int, int]):
    """Paper with one handwritten number anywhere on it: (canvas, label, sources)."""
    width, height = int(random.integers(*widths)), int(random.integers(*heights))
    canvas = _Canvas(width, height, random)
    digits, label, sources = number()
    ink, _ = _handwriting(digits, random, height=int(random.integers(*digits_tall)))
    ink = _within(ink, width - 40)
    canvas.write(ink, (int(random.integers(20, max(21, width - ink.shape[1] - 20))),
                       int(random.integers(20, max(21, height - ink.shape[0] - 20)))))
    return canvas, label, sources


def _photo(random, number):
    """A phone photo of a number on paper: a shadow across the page, a slight blur, a small tilt, JPEG."""
    canvas, label, sources = _plain(random, number, widths=(800, 1200), heights=(600, 900), digits_tall=(80, 140))
    image = np.asarray(canvas.image(), np.float32)
    height, width = image.shape[:2]
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = random.uniform(0, 2 * math.pi)
    ramp = cols * math.cos(angle) + rows * math.sin(angle)
    ramp = (ramp - ramp.min()) / max(1.0, float(ramp.max() - ramp.min()))
    edge = random.uniform(0.3, 0.7)
    shadow = 1 - random.uniform(0.3, 0.55) / (1 + np.exp(-(ramp - edge) * 12))  # a soft-edged shadow
    vignette = 1 - 0.25 * (((rows / height - 0.5) ** 2 + (cols / width - 0.5) ** 2) * 2)
    image *= (shadow * vignette)[..., None]
    picture = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    picture = picture.rotate(float(random.uniform(-2, 2)), Image.Resampling.BICUBIC, fillcolor=(60, 60, 60))
    return picture.filter(ImageFilter.GaussianBlur(float(random.uniform(0.8, 1.8)))), label, (sources,)


def _tally(random, number):
    """Two or three numbers, each on its own line, at different places across the page."""
    width, height = int(random.integers(700, 1000)), int(random.integers(700, 1000))
    canvas = _Canvas(width, height, random)
    count = int(random.integers(2, 4))
    row_height = height // (count + 1)
    written, all_sources = [], []
    for row in range(count):
        digits, label, sources = number()
        ink, _ = _handwriting(digits, random, height=int(row_height * random.uniform(0.35, 0.55)))
        ink = _within(ink, width - 40)
        top = int(row_height * (row + 0.6) + random.integers(-10, 10))
        canvas.write(ink, (int(random.integers(20, max(21, width - ink.shape[1] - 20))), top))
        written.append(label)
        all_sources.append(sources)
    return canvas.image(), " ".join(written), tuple(all_sources)


def _pdf(random, number):
    """A plain number page as a scanner's PDF makes it."""
    canvas, label, sources = _plain(random, number, widths=(600, 900), heights=(450, 700), digits_tall=(70, 130))
    return canvas.image(), label, (sources,)


def _printed(random, number):
    """A page of printed text only: words, printed numbers, punctuation."""
    width, height = int(random.integers(700, 1000)), int(random.integers(500, 800))
    canvas = _Canvas(width, height, random)
    font = _font(random)
    y = int(height * 0.08)
    while y < height * 0.85:
        size = int(random.integers(22, 48))
        words = [_word(random) if random.random() < 0.7 else str(int(random.integers(1, 99999)))
                 for _ in range(int(random.integers(1, 4)))]
        canvas.text(" ".join(words) + random.choice([":", ".", "", " No.", " $"]), (int(width * 0.08), y), size, font)
        y += int(size * random.uniform(1.8, 3.0))
    return canvas.image(), "", ()


def _lines(random, number):
    """Ruled paper, a margin, underlines and an empty box: no writing at all."""
    width, height = int(random.integers(700, 1000)), int(random.integers(600, 900))
    canvas = _Canvas(width, height, random)
    spacing = int(random.integers(50, 100))
    for y in range(spacing // 2, height, spacing):
        canvas.line([(0, y), (width, y + int(random.integers(-2, 3)))], colour=(70, 110, 200), width=2)
    canvas.line([(int(width * 0.12), 0), (int(width * 0.12), height)], colour=(210, 60, 60), width=2)
    if random.random() < 0.5:
        left, top = int(width * random.uniform(0.3, 0.5)), int(height * random.uniform(0.2, 0.6))
        canvas.rectangle((left, top, left + int(random.integers(150, 350)), top + int(random.integers(60, 120))),
                         width=int(random.integers(2, 4)))
    return canvas.image(), "", ()


DRAW = {"form": _form, "ruled": _ruled, "photo": _photo, "tally": _tally, "pdf": _pdf, "printed": _printed,
        "lines": _lines}


# --- drawing -----------------------------------------------------------------------------------


class _Canvas:
    """Paper with layers of ink of different colours, composited in order."""

    def __init__(self, width: int, height: int, random: np.random.Generator):
        self.random = random
        self.rgb = _paper((height, width), random)

    def _ink(self, coverage: np.ndarray, colour) -> None:
        coverage = coverage[..., None]
        self.rgb = self.rgb * (1 - coverage) + np.asarray(colour, np.float32) * coverage

    def _layer(self) -> tuple[Image.Image, ImageDraw.ImageDraw]:
        layer = Image.new("L", (self.rgb.shape[1], self.rgb.shape[0]), 0)
        return layer, ImageDraw.Draw(layer)

    def text(self, text: str, position: tuple[int, int], size: int, font) -> None:
        layer, draw = self._layer()
        face = ImageFont.truetype(str(font), size)
        draw.text(position, text, fill=255, font=face)
        self._ink(np.asarray(layer.filter(ImageFilter.GaussianBlur(0.6)), np.float32) / 255, (25, 25, 30))

    def line(self, points, *, colour, width: int) -> None:
        layer, draw = self._layer()
        draw.line(points, fill=255, width=width)
        self._ink(np.asarray(layer.filter(ImageFilter.GaussianBlur(0.5)), np.float32) / 255 * 0.8, colour)

    def rectangle(self, box, *, width: int) -> None:
        layer, draw = self._layer()
        draw.rectangle(box, outline=255, width=width)
        self._ink(np.asarray(layer.filter(ImageFilter.GaussianBlur(0.5)), np.float32) / 255, (30, 30, 35))

    def write(self, ink: np.ndarray, position: tuple[int, int]) -> None:
        height, width = self.rgb.shape[:2]
        left, top = max(0, position[0]), max(0, position[1])
        piece = ink[: height - top, : width - left]
        coverage = np.zeros((height, width), np.float32)
        coverage[top: top + piece.shape[0], left: left + piece.shape[1]] = piece
        colour = self.random.uniform(10, 60, 3) if self.random.random() < 0.7 else (25, 35, 140)
        self._ink(coverage, colour)

    def image(self) -> Image.Image:
        noisy = self.rgb + self.random.normal(0, self.random.uniform(1, 4), self.rgb.shape[:2])[..., None]
        return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def _within(ink: np.ndarray, width: int) -> np.ndarray:
    """Ink scaled down, keeping its aspect ratio, to at most `width` pixels wide: a number is written
    smaller where the page is narrow, so every digit its label holds is on the page."""
    if ink.shape[1] <= width:
        return ink
    size = (width, max(1, round(ink.shape[0] * width / ink.shape[1])))
    return np.asarray(Image.fromarray(ink.astype(np.float32)).resize(size, Image.Resampling.BILINEAR))


def _handwriting(digits: list[np.ndarray], random, *, height: int) -> tuple[np.ndarray, int]:
    """Digits written side by side as one ink layer; cramped: neighbours may touch."""
    inks = [ink_of(digit, int(height * random.uniform(0.9, 1.1)), random) for digit in digits]
    gaps = [int(height * random.uniform(0.05, 0.3)) for _ in inks[1:]]
    total = sum(ink.shape[1] for ink in inks) + sum(gaps)
    tallest = max(ink.shape[0] for ink in inks)
    layer = np.zeros((tallest + height // 10, total), np.float32)
    x = 0
    for index, ink in enumerate(inks):
        y = int(random.integers(0, layer.shape[0] - ink.shape[0] + 1))
        target = layer[y: y + ink.shape[0], x: x + ink.shape[1]]
        np.maximum(target, ink, out=target)
        x += ink.shape[1] + (gaps[index] if index < len(gaps) else 0)
    return layer, height


def _font(random):
    fonts = font_files() + font_files(held_out=True)
    return fonts[int(random.integers(len(fonts)))]


def _word(random) -> str:
    word = WORDS[int(random.integers(len(WORDS)))]
    return word if random.random() < 0.8 else word.upper() if random.random() < 0.5 else word + string.ascii_lowercase[
        int(random.integers(26))]


def _encode(page: Image.Image, kind: str, random) -> bytes:
    buffer = io.BytesIO()
    if kind == "photo":
        page.save(buffer, format="JPEG", quality=int(random.integers(65, 90)))
    elif kind == "pdf":
        page.convert("RGB").save(buffer, format="PDF", resolution=150.0)
    else:
        page.save(buffer, format="PNG", compress_level=1)  # fast to write; the pixels are what matter
    return buffer.getvalue()
