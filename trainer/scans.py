"""Realistic scans made from MNIST test digits: ink on paper at scanner resolution, in every format and mode."""

from __future__ import annotations

import functools
import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

# (name, format, mode, save options); each scan takes the next one, so a set of a few dozen holds all.
VARIANTS = (
    ("png-l", "PNG", "L", {}),
    ("jpeg-rgb", "JPEG", "RGB", {}),
    ("png-rgb", "PNG", "RGB", {}),
    ("jpeg-l", "JPEG", "L", {}),
    ("png-rgba", "PNG", "RGBA", {}),
    ("tiff-lzw-rgb", "TIFF", "RGB", {"compression": "tiff_lzw"}),
    ("jpeg-exif", "JPEG", "RGB", {}),
    ("png-p", "PNG", "P", {}),
    ("tiff-deflate-l", "TIFF", "L", {"compression": "tiff_adobe_deflate"}),
    ("webp-rgb", "WEBP", "RGB", {}),
    ("png-i16", "PNG", "I;16", {}),
    ("jpeg-cmyk", "JPEG", "CMYK", {}),
    ("bmp-rgb", "BMP", "RGB", {}),
    ("png-la", "PNG", "LA", {}),
    ("tiff-g4-1", "TIFF", "1", {"compression": "group4"}),
    ("gif-p", "GIF", "P", {}),
    ("tiff-lzw-i16", "TIFF", "I;16", {"compression": "tiff_lzw"}),
    ("bmp-1", "BMP", "1", {}),
    ("tiff-lzw-cmyk", "TIFF", "CMYK", {"compression": "tiff_lzw"}),
    ("webp-rgba", "WEBP", "RGBA", {"lossless": True}),
    ("tiff-multipage", "TIFF", "L", {"compression": "tiff_lzw"}),
    ("png-1", "PNG", "1", {}),
    ("jpeg-rgb-low", "JPEG", "RGB", {}),
    ("bmp-p", "BMP", "P", {}),
)
TRANSPARENT = {"RGBA", "LA"}
EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "TIFF": "tif", "BMP": "bmp", "GIF": "gif", "WEBP": "webp"}


@dataclass(frozen=True)
class Scan:
    """One generated file: its bytes and the digit string expected on each of its pages."""

    name: str
    data: bytes
    labels: tuple[str, ...]
    variant: str
    sources: tuple[tuple[int, ...], ...]  # the MNIST test indexes drawn on each page


@functools.lru_cache(maxsize=1)
def test_digits() -> tuple[np.ndarray, np.ndarray]:
    """MNIST's test digits (never trained on) as float32 (10000, 28, 28) in 0..1, and their labels."""
    from trainer.data import load

    mnist = load()
    return mnist.test_x[..., 0], mnist.test_y


def scans(count: int, *, seed: int = 0, digits: tuple[int, int] = (1, 1)) -> list[Scan]:
    """`count` scans holding between digits[0] and digits[1] digits each; the same seed gives the same bytes."""
    images, labels = test_digits()
    order = np.random.default_rng(seed).permutation(len(images))
    cursor = 0
    result = []
    for index in range(count):
        random = np.random.default_rng([seed, index, digits[0], digits[1]])
        name, image_format, mode, options = VARIANTS[(index + seed) % len(VARIANTS)]
        page_count = int(random.integers(2, 4)) if name == "tiff-multipage" else 1
        pages, page_labels, sources = [], [], []
        for _ in range(page_count):
            length = int(random.integers(digits[0], digits[1] + 1))
            chosen = order[(cursor + np.arange(length)) % len(order)]
            cursor += length
            pages.append(render_page([images[i] for i in chosen], random, transparent=mode in TRANSPARENT))
            page_labels.append("".join(str(int(labels[i])) for i in chosen))
            sources.append(tuple(int(i) for i in chosen))
        data = encode(pages, random, name=name, image_format=image_format, mode=mode, options=options)
        result.append(Scan(f"{index:05d}-{name}.{EXTENSIONS[image_format]}", data, tuple(page_labels), name,
                           tuple(sources)))
    return result


def single_digits(count: int, *, seed: int = 0) -> list[Scan]:
    return scans(count, seed=seed, digits=(1, 1))


def numbers(count: int, *, seed: int = 0) -> list[Scan]:
    """Written numbers of 2 to 5 digits side by side."""
    return scans(count, seed=seed, digits=(2, 5))


# --- drawing ---------------------------------------------------------------------------------


def ink_of(digit: np.ndarray, height: int, random: np.random.Generator) -> np.ndarray:
    """An MNIST digit as pen ink `height` pixels tall: smoothly enlarged, edges firmed, a little rotated."""
    rows, cols = np.flatnonzero(digit.max(axis=1) > 0.1), np.flatnonzero(digit.max(axis=0) > 0.1)
    top, bottom = max(0, rows[0] - 1), min(28, rows[-1] + 2)
    left, right = max(0, cols[0] - 1), min(28, cols[-1] + 2)
    crop = digit[top:bottom, left:right].astype(np.float32)
    scale = height / max(1, bottom - top)
    size = (max(2, round((right - left) * scale)), max(2, round((bottom - top) * scale)))
    large = np.asarray(Image.fromarray(crop).resize(size, Image.Resampling.BICUBIC))
    # Ink as dense as MNIST's strokes, a little firmer; faint strokes stay faint rather than vanish.
    firm = np.clip(large * 1.25, 0.0, 1.0)
    angle = float(random.uniform(-6, 6))
    rotated = Image.fromarray(firm).rotate(angle, Image.Resampling.BICUBIC, expand=True)
    ink = np.clip(np.asarray(rotated), 0.0, 1.0)
    rows, cols = np.flatnonzero(ink.max(axis=1) > 0.05), np.flatnonzero(ink.max(axis=0) > 0.05)
    return ink[rows[0]: rows[-1] + 1, cols[0]: cols[-1] + 1]


def render_page(digits: list[np.ndarray], random: np.random.Generator, *, transparent: bool = False) -> Image.Image:
    """Digits written left to right on a sheet of paper, as an RGBA image (alpha only when transparent)."""
    height = int(random.integers(80, 251))
    inks = [ink_of(digit, int(height * random.uniform(0.9, 1.1)), random) for digit in digits]
    gaps = [int(height * random.uniform(0.1, 0.35)) for _ in inks[1:]]
    content_width = sum(ink.shape[1] for ink in inks) + sum(gaps)
    content_height = max(ink.shape[0] for ink in inks) + int(height * 0.1)
    # Pages of ~130,000 pixels, bigger when the content needs it; the writing sits anywhere on them.
    area = random.uniform(80_000, 200_000)
    aspect = random.uniform(0.7, 1.5)
    page_height = int(max(content_height * random.uniform(1.2, 1.6), math.sqrt(area / aspect)))
    page_width = int(max(content_width * random.uniform(1.15, 1.5), area / page_height))
    layer = np.zeros((page_height, page_width), np.float32)
    x = int(random.integers(0, page_width - content_width + 1))
    y0 = int(random.integers(0, page_height - content_height + 1))
    for index, ink in enumerate(inks):
        y = y0 + int(random.integers(0, content_height - ink.shape[0] + 1))
        target = layer[y: y + ink.shape[0], x: x + ink.shape[1]]
        np.maximum(target, ink, out=target)
        x += ink.shape[1] + (gaps[index] if index < len(gaps) else 0)
    _add_dust(layer, random)
    if not transparent and random.random() < 0.15:
        _add_border(layer, random)

    paper = _paper((page_height, page_width), random)
    ink_colour = np.array(random.uniform(10, 70, 3) if random.random() < 0.7 else (25, 35, random.uniform(90, 150)),
                          np.float32)
    coverage = layer[..., None]
    rgb = paper * (1 - coverage) + ink_colour * coverage
    rgb += random.normal(0, random.uniform(1, 6), rgb.shape[:2])[..., None]
    image = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    image = image.filter(ImageFilter.GaussianBlur(random.uniform(0.3, 1.5)))
    if transparent:
        alpha = Image.fromarray((np.clip(layer * 1.2, 0, 1) * 255).astype(np.uint8))
        image.putalpha(alpha.filter(ImageFilter.GaussianBlur(0.7)))
    elif random.random() < 0.08:
        image = Image.eval(image, lambda value: 255 - value)  # a negative: light strokes on dark
    return image


def _paper(shape: tuple[int, int], random: np.random.Generator) -> np.ndarray:
    """Tinted paper, lit unevenly, with a grain of low-frequency texture."""
    height, width = shape
    level = random.uniform(190, 250)
    tint = level * (1 - random.uniform(0, 0.08, 3))
    angle = random.uniform(0, 2 * math.pi)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = (cols * math.cos(angle) + rows * math.sin(angle))
    ramp = (ramp - ramp.min()) / max(1.0, float(ramp.max() - ramp.min()))
    light = 1 - random.uniform(0, 0.25) * ramp
    grain = random.normal(0, 1, (max(2, height // 24), max(2, width // 24))).astype(np.float32)
    texture = np.asarray(Image.fromarray(grain).resize((width, height), Image.Resampling.BICUBIC))
    texture = texture * random.uniform(0, 6)
    return (tint[None, None, :] * light[..., None] + texture[..., None]).astype(np.float32)


def _add_dust(layer: np.ndarray, random: np.random.Generator) -> None:
    height, width = layer.shape
    for _ in range(int(random.integers(0, 6))):
        radius = random.uniform(0.8, 3.0)
        cy, cx = random.uniform(0, height), random.uniform(0, width)
        top, left = int(max(0, cy - 4)), int(max(0, cx - 4))
        rows, cols = np.mgrid[top: min(height, int(cy) + 5), left: min(width, int(cx) + 5)]
        speck = np.clip(radius - np.hypot(rows - cy, cols - cx) + 0.5, 0, 1) * random.uniform(0.5, 1.0)
        target = layer[top: top + speck.shape[0], left: left + speck.shape[1]]
        np.maximum(target, speck, out=target)


def _add_border(layer: np.ndarray, random: np.random.Generator) -> None:
    """The dark line a scanner lid leaves along one or two edges."""
    for edge in random.choice(4, size=int(random.integers(1, 3)), replace=False):
        thickness = int(random.integers(1, 5))
        if edge == 0:
            layer[:thickness, :] = 1
        elif edge == 1:
            layer[-thickness:, :] = 1
        elif edge == 2:
            layer[:, :thickness] = 1
        else:
            layer[:, -thickness:] = 1


# --- encoding --------------------------------------------------------------------------------


def encode(pages: list[Image.Image], random: np.random.Generator, *, name: str, image_format: str, mode: str,
           options: dict) -> bytes:
    """Pages as one file in a format and mode, the way scanners and phones write them."""
    converted = [_to_mode(page, mode) for page in pages]
    options = dict(options)
    if image_format == "JPEG":
        options["quality"] = int(random.integers(35, 60) if name == "jpeg-rgb-low" else random.integers(60, 96))
    if image_format == "WEBP" and not options.get("lossless"):
        options["quality"] = int(random.integers(60, 95))
    if name == "jpeg-exif":
        converted, options["exif"] = _rotated_for_exif(converted[0], random)
    buffer = io.BytesIO()
    first, rest = converted[0], converted[1:]
    if rest:
        options.update(save_all=True, append_images=rest)
    first.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def _to_mode(page: Image.Image, mode: str) -> Image.Image:
    if mode in TRANSPARENT:
        return page.convert(mode)
    rgb = page.convert("RGB")
    if mode == "I;16":
        grey = np.asarray(rgb.convert("L"), np.uint16) * 257
        return Image.fromarray(grey.astype(np.uint16))
    if mode == "1":
        # A scanner's black-and-white mode: a fixed threshold halfway between paper and ink.
        grey = rgb.convert("L")
        low, high = np.percentile(np.asarray(grey), (0.5, 99.5))  # ink and paper, either polarity
        middle = (low + high) / 2 if high - low > 30 else 128
        return grey.point(lambda value: 255 if value > middle else 0).convert("1", dither=Image.Dither.NONE)
    if mode == "P":
        return rgb.quantize(64)
    return rgb.convert(mode)


def _rotated_for_exif(page: Image.Image, random: np.random.Generator) -> tuple[list[Image.Image], bytes]:
    """A phone photo: pixels stored turned, with the EXIF orientation that turns them upright again."""
    orientation = int(random.choice([3, 6, 8]))
    # exif_transpose undoes 3 with ROTATE_180, 6 with ROTATE_270 and 8 with ROTATE_90.
    stored = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}
    exif = Image.Exif()
    exif[0x0112] = orientation
    return [page.transpose(stored[orientation])], exif.tobytes()
