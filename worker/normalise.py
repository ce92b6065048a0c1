"""Turn any scan (bytes or a path) into MNIST-style 28x28 digits, one Page per page, digits left to right."""

from __future__ import annotations

import bisect
import functools
import io
import itertools
import math
import os
import statistics
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError
from scipy import ndimage

from core.errors import (
    EmptyFile,
    ImageTooLarge,
    ImageTooSmall,
    NotAnImage,
    UnsupportedImage,
)

# Formats scanners and phones produce; anything else Pillow happens to read is refused (EPS, for one,
# would run Ghostscript). MPO is how Pillow names many phone JPEGs; only its first picture is the photo.
FORMATS = {"PNG", "JPEG", "MPO", "TIFF", "BMP", "GIF", "WEBP"}
MULTI_PAGE_FORMATS = {"TIFF", "GIF", "WEBP"}
MAX_PAGES = 100
MAX_DIGITS = 64  # more separate marks than this on one page is text or a pattern, not a written number
ORIENTATION = 0x0112  # the EXIF tag
# Pages in these modes stay as they are until reduced: Image.reduce takes them, and turning them grey
# commutes with it. (It takes RGBA and LA too, but premultiplying alpha costs more than compositing.)
REDUCIBLE = {"L", "RGB", "CMYK"}
MIN_SIDE = 8  # fewer pixels than this cannot hold a recognisable digit

FIELD = 28  # MNIST's image side
BOX = 20  # MNIST fitted each digit's bounding box into 20x20 keeping its aspect ratio
ANALYSIS_PIXELS = 12_000  # pages are searched for ink at about this size: cheap and still fine enough
FINE_PIXELS = 1_500_000  # 16-bit pages larger than this are reduced before float work
# JPEGs are decoded scaled by 1/2, 1/4 or 1/8 (draft) to no fewer pixels than this: pages are searched
# at ANALYSIS_PIXELS anyway, and a digit 80 px tall on a typical 150,000-pixel page keeps 40 px.
JPEG_PIXELS = 40_000
ANALYSIS_GLYPH = 20  # digits at least this tall on the reduced page are fitted from it
GLYPH_SIDE = 80  # a glyph crop is reduced to at most this before float work
BACKGROUND_CELLS = 16  # paper is estimated on a grid this many cells along the long side
MIN_CONTRAST = 24.0  # grey levels of 255: less than this between ink and paper is a blank page
NOISE_SIGMAS = 6.0  # ink must stand out of the paper noise by this many standard deviations
SPECK_AREA = 0.04  # components with less ink than this share of the largest are dust
SPECK_SIZE = 0.25  # ... and so are those smaller in both directions than this share of the tallest
MIN_GLYPH = 0.05  # a digit is at least this share of the page's short side tall (and at least MIN_SIDE px)
BORDER_FILL = 0.6  # an edge row or column mostly ink is a scanner border, not a digit
BORDER_DEPTH = 0.15  # borders are looked for this far in from each edge
FRAGMENT = 0.7  # a piece less tall than this share of the typical digit is part of a neighbour
JOIN_GAP = 0.4  # ... when it lies within this share of the typical digit height of it
OVERLAP = 0.3  # components overlapping horizontally by this share of the narrower are one digit
_EIGHT_NEIGHBOURS = np.ones((3, 3), bool)  # diagonal steps join a stroke, as a pen draws them


@dataclass(frozen=True)
class Glyph:
    """One digit: float32 (28, 28) in 0..1, white on black, and its box in the page's pixels."""

    image: np.ndarray
    box: tuple[int, int, int, int]


@dataclass(frozen=True)
class Page:
    """One page of a file and its digits left to right (empty: no digit on this page)."""

    index: int
    glyphs: tuple[Glyph, ...]


def normalise(source: bytes | str | os.PathLike, *, max_pixels: int = 40_000_000,
              max_bytes: int = 20_000_000) -> list[Page]:
    """Every page of an image file as MNIST digits.

    Raises a digits.errors.BadInput subclass (EmptyFile, NotAnImage, UnsupportedImage, ImageTooLarge,
    ImageTooSmall) for bad input; never anything else for any bytes.
    """
    data = _read(source, max_bytes=max_bytes)
    image = _open(data)
    pages = []
    for index in range(_page_count(image)):
        page_image, scale = _decode_page(image, index, max_pixels=max_pixels)
        pages.append(Page(index, _find_glyphs(page_image, scale)))
    return pages


# --- reading and decoding ----------------------------------------------------------------------


def _read(source: bytes | str | os.PathLike, *, max_bytes: int) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        try:
            size = os.stat(source).st_size
            if size > max_bytes:
                raise ImageTooLarge(f"{size} bytes is more than the limit of {max_bytes}")
            with open(source, "rb") as handle:
                data = handle.read(max_bytes + 1)
        except OSError as error:
            raise NotAnImage(f"cannot read {os.fspath(source)!r}: {error.strerror or error}") from None
    if not data:
        raise EmptyFile("the file is empty (0 bytes)")
    if len(data) > max_bytes:
        raise ImageTooLarge(f"{len(data)} bytes is more than the limit of {max_bytes}")
    return data


def _open(data: bytes) -> Image.Image:
    """Read the header only: format, size and mode are known here, no pixel is decoded yet."""
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as error:
        raise ImageTooLarge(f"refused before decoding: {error}") from None
    except UnidentifiedImageError:
        raise NotAnImage("not an image (no format recognised the bytes)") from None
    except Exception as error:  # Pillow's header parsers raise many kinds for corrupt files
        raise NotAnImage(f"corrupt image header: {type(error).__name__}: {error}") from None
    if image.format not in FORMATS:
        raise UnsupportedImage(f"{image.format} images are not supported; send PNG, JPEG, TIFF, BMP, GIF or WebP")
    return image


def _page_count(image: Image.Image) -> int:
    if image.format not in MULTI_PAGE_FORMATS:
        return 1
    try:
        count = int(getattr(image, "n_frames", 1))
    except Exception as error:  # counting frames walks the file, which may be cut short
        raise NotAnImage(f"corrupt or truncated image: {type(error).__name__}: {error}") from None
    if count > MAX_PAGES:
        raise ImageTooLarge(f"{count} pages is more than the limit of {MAX_PAGES}")
    return max(count, 1)


def _decode_page(image: Image.Image, index: int, *, max_pixels: int) -> tuple[Image.Image, float]:
    """The page, upright (EXIF), as 8-bit grey or RGB (greyed later), and page pixels per pixel of it."""
    try:
        if index:
            image.seek(index)
        width, height = image.size
        if width * height > max_pixels:
            raise ImageTooLarge(f"page {index} has {width}x{height} pixels, more than the limit of {max_pixels}")
        if width < MIN_SIDE or height < MIN_SIDE:
            raise ImageTooSmall(f"page {index} is {width}x{height} pixels; a digit needs at least "
                                f"{MIN_SIDE}x{MIN_SIDE}")
        if image.format in ("JPEG", "MPO"):
            # The JPEG decoder gives grey without colour conversion, and scales by 1/2, 1/4 or 1/8
            # almost for free; pages come out no smaller than JPEG_PIXELS.
            factor = max(1.0, math.sqrt(width * height / JPEG_PIXELS))
            image.draft("L", (math.ceil(width / factor), math.ceil(height / factor)))
        image.load()  # decode here, where a corrupt file is caught, not lazily later
        scale = width / image.size[0]
        # exif_transpose copies the whole image even when there is nothing to turn.
        upright = ImageOps.exif_transpose(image) if image.getexif().get(ORIENTATION, 1) != 1 else image
        # Pages in a mode Pillow reduces turn grey after reduction (see _grey): converting all of a
        # page costs as much as searching it. Every other mode turns grey here.
        page_image = upright if upright.mode in REDUCIBLE else _grey(upright)
    except (ImageTooLarge, ImageTooSmall, UnsupportedImage):
        raise
    except Image.DecompressionBombError as error:
        raise ImageTooLarge(f"refused before decoding: {error}") from None
    except MemoryError:
        raise ImageTooLarge(f"page {index} needs more memory than this process has") from None
    except Exception as error:  # Pillow's decoders raise many kinds for truncated or corrupt data
        raise NotAnImage(f"corrupt or truncated image: {type(error).__name__}: {error}") from None
    return page_image, scale


def _grey(image: Image.Image) -> Image.Image:
    """8-bit grey with transparency composited onto white paper."""
    mode = image.mode
    if mode == "L":
        return image
    if mode in ("1", "RGB", "CMYK", "YCbCr", "RGBX"):
        return image.convert("L")
    if mode == "P":
        if "transparency" in image.info:
            return _on_white(image.convert("RGBA"))
        return image.convert("L")
    if mode in ("LA", "RGBA"):
        return _on_white(image)
    if mode in ("La", "PA", "RGBa"):
        return _on_white(image.convert("RGBA"))
    if mode.startswith("I") or mode == "F":
        if mode != "F":
            image = image.convert("I")
        width, height = image.size
        if width * height > FINE_PIXELS:  # 16-bit scans are reduced before any float work, like JPEGs
            image = image.reduce(math.ceil(math.sqrt(width * height / FINE_PIXELS)))
        return _stretch(np.asarray(image))
    raise UnsupportedImage(f"images of mode {mode} are not supported")


def _on_white(image: Image.Image) -> Image.Image:
    """An LA or RGBA image over white paper, as 8-bit grey."""
    paper = Image.new("L", image.size, 255)
    paper.paste(image.convert("L"), mask=image.getchannel("A"))
    return paper


def _stretch(pixels: np.ndarray) -> Image.Image:
    """16- and 32-bit grey stretched onto 0..255 by its own range (12-bit scanners fill only part of 16)."""
    low, high = float(pixels.min()), float(pixels.max())
    if high <= low:
        return Image.new("L", (pixels.shape[1], pixels.shape[0]), 255)
    scaled = (pixels.astype(np.float32) - low) * (255.0 / (high - low))
    return Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8))


# --- finding the digits ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Analysis:
    """What the reduced page tells: ink polarity, the paper level, ink groups and their boxes."""

    factor: int  # fine pixels per analysis pixel
    dark_ink: bool
    paper: np.ndarray  # the paper's grey level at analysis size
    signal: np.ndarray  # ink above paper at analysis size
    groups: np.ndarray  # int32 at analysis size: the group number (from 1) of each pixel, 0 for paper
    boxes: list[tuple[int, int, int, int]]  # per group, analysis pixels, left to right
    sigma: float


def _find_glyphs(page_image: Image.Image, scale: float) -> tuple[Glyph, ...]:
    analysis = _analyse(page_image)
    if analysis is None:
        return ()
    if len(analysis.boxes) > MAX_DIGITS:
        raise UnsupportedImage(f"{len(analysis.boxes)} separate marks on one page: more than the "
                               f"{MAX_DIGITS} digits a written number may have")
    glyphs = []
    for number, box in enumerate(analysis.boxes, start=1):
        glyph = _glyph(page_image, analysis, number, box, scale)
        if glyph is not None:
            glyphs.append(glyph)
    return tuple(glyphs)


def _analyse(page_image: Image.Image) -> _Analysis | None:
    width, height = page_image.size
    factor = max(1, math.ceil(math.sqrt(width * height / ANALYSIS_PIXELS)))
    small = _grey(page_image.reduce(factor) if factor > 1 else page_image)
    dark_ink = _dark_ink(small)
    paper = _paper(small, dark_ink=dark_ink)
    # Signal is ink above paper, whatever the polarity: bright strokes on black, as in MNIST.
    signal = paper - np.asarray(small, dtype=np.float32) if dark_ink else np.asarray(small, dtype=np.float32) - paper
    sigma = _noise(signal)
    contrast = _contrast(signal)
    if contrast < max(MIN_CONTRAST, NOISE_SIGMAS * sigma):
        return None
    # Hysteresis: faint stroke edges belong to a digit only when joined to clearly dark ink.
    low = max(4.0 * sigma, 0.2 * contrast)
    high = max(NOISE_SIGMAS * sigma, 0.5 * contrast)
    mask = signal > low
    _clear_borders(mask)
    groups, boxes = _group(mask, signal > high, min_height=max(MIN_SIDE, MIN_GLYPH * min(width, height)) / factor)
    if not boxes:
        return None
    return _Analysis(factor, dark_ink, paper, signal, groups, boxes, sigma)


def _dark_ink(small: Image.Image) -> bool:
    """Paper covers most of a page, so the median is paper; ink lies on the far side of it."""
    cumulative = list(itertools.accumulate(small.histogram()))  # 256 levels: plain Python beats numpy here
    low, median, high = (bisect.bisect_left(cumulative, cumulative[-1] * share) for share in (0.01, 0.5, 0.99))
    return median - low >= high - median


def _paper(page: Image.Image, *, dark_ink: bool) -> np.ndarray:
    """The paper's level, following uneven lighting: cell means, the palest nearby, smoothed."""
    width, height = page.size
    cell = max(1, math.ceil(max(height, width) / BACKGROUND_CELLS))
    cells = page.reduce(cell) if cell > 1 else page
    # A cell crossed by a stroke reads darker (lighter, for light ink) than paper; the palest cell
    # around it is paper.
    palest = ImageFilter.MaxFilter(5) if dark_ink else ImageFilter.MinFilter(5)
    paper = cells.filter(palest).filter(ImageFilter.BoxBlur(1))
    # Steps of a cell are a level or two at most after the blur, so each cell's level is repeated
    # over its pixels (nearest neighbour: a tenth of the cost of a smooth resize).
    paper = paper.resize((width, height), Image.Resampling.NEAREST, box=(0, 0, width / cell, height / cell))
    return np.asarray(paper, dtype=np.float32)


def _quantiles(values: np.ndarray, shares: tuple[float, ...]) -> list[float]:
    """Order statistics by one partial sort (np.percentile costs several times more on small arrays)."""
    last = values.size - 1
    positions = [min(last, int(round(share * last))) for share in shares]
    ordered = np.partition(values, positions)
    return [float(ordered[position]) for position in positions]


def _noise(signal: np.ndarray) -> float:
    """Standard deviation of the paper from the median absolute deviation (ink does not move it)."""
    sample = signal[:: max(1, signal.shape[0] // 32), :: max(1, signal.shape[1] // 32)].ravel()
    (median,) = _quantiles(sample, (0.5,))
    (deviation,) = _quantiles(np.abs(sample - median), (0.5,))
    return 1.4826 * deviation + 0.5


def _contrast(signal: np.ndarray) -> float:
    """The ink level: the brightest 3x3 average, so one noisy pixel cannot pose as ink."""
    if min(signal.shape) < 3:
        return float(signal.max())
    rows = signal[:-2] + signal[1:-1] + signal[2:]
    boxed = rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]
    return float(boxed.max() / 9.0)


def _clear_borders(mask: np.ndarray) -> None:
    """Scanner borders are lines along an edge that are mostly ink; a digit's stroke never starts there."""
    height, width = mask.shape
    if not (mask[:2].any() or mask[-2:].any() or mask[:, :2].any() or mask[:, -2:].any()):
        return  # no ink within a line of any edge, so no border (the usual page)
    for axis, size in ((0, height), (1, width)):
        heavy = np.count_nonzero(mask, axis=1 - axis) > BORDER_FILL * mask.shape[1 - axis]  # per row or column
        depth = max(2, int(size * BORDER_DEPTH))
        for from_start in (True, False):
            lines = heavy[:depth] if from_start else heavy[::-1][:depth]
            if not lines[:2].any():
                continue
            # The border runs from the edge (or one line in) to the first line that is not heavy;
            # one line more takes its soft edge.
            start = 0 if lines[0] else 1
            light = np.flatnonzero(~lines[start:])
            end = start + (int(light[0]) if light.size else lines.size - start) + 1
            span = slice(0, end) if from_start else slice(max(0, size - end), size)
            mask[(span, slice(None)) if axis == 0 else (slice(None), span)] = False


def _group(mask: np.ndarray, strong: np.ndarray, *, min_height: float
           ) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """Connected ink (8-neighbours), less dust and faint marks, merged where it overlaps horizontally,
    left to right: the group number (from 1) of each pixel, 0 for paper, and each group's box."""
    height, width = mask.shape
    labels, count = ndimage.label(mask, structure=_EIGHT_NEIGHBOURS)
    if count == 0:
        return labels, []
    slices = ndimage.find_objects(labels)
    flat = labels.ravel()
    area = np.bincount(flat, minlength=count + 1)[1:]
    has_strong = np.bincount(flat[strong.ravel()], minlength=count + 1)[1:] > 0
    spans = np.array([(rows.start, rows.stop, cols.start, cols.stop) for rows, cols in slices])
    top, bottom, left, right = spans[:, 0], spans[:, 1] - 1, spans[:, 2], spans[:, 3] - 1
    tall, wide = bottom - top + 1, right - left + 1
    keep = has_strong
    if keep.any():
        largest_area, tallest = area[keep].max(), tall[keep].max()
        keep &= area >= SPECK_AREA * largest_area
        keep &= np.maximum(tall, wide) >= SPECK_SIZE * tallest
        touches_edge = (top == 0) | (left == 0) | (bottom == height - 1) | (right == width - 1)
        keep &= ~(touches_edge & (np.maximum(tall, wide) > 6 * np.minimum(tall, wide)))
    # Plain lists from here: the loops below touch a handful of components, and numpy scalars are slow.
    left, top, right, bottom, wide = left.tolist(), top.tolist(), right.tolist(), bottom.tolist(), wide.tolist()
    kept = np.flatnonzero(keep).tolist()
    kept.sort(key=lambda index: left[index])
    merged: list[list[int]] = []  # each: [left, top, right, bottom, component indexes...]
    for index in kept:
        if merged:
            last = merged[-1]
            overlap = min(last[2], right[index]) - max(last[0], left[index]) + 1
            narrower = min(last[2] - last[0] + 1, wide[index])
            if overlap >= OVERLAP * narrower:
                last[0], last[1] = min(last[0], left[index]), min(last[1], top[index])
                last[2], last[3] = max(last[2], right[index]), max(last[3], bottom[index])
                last.append(index)
                continue
        merged.append([left[index], top[index], right[index], bottom[index], index])
    merged = [group for group in _join_fragments(merged) if group[3] - group[1] + 1 >= min_height]
    number_of = np.zeros(count + 1, np.int32)  # by label; label 0 is paper
    boxes = []
    for number, group in enumerate(merged, start=1):
        number_of[[index + 1 for index in group[4:]]] = number
        boxes.append((int(group[0]), int(group[1]), int(group[2]) + 1, int(group[3]) + 1))
    return number_of[labels], boxes


def _join_fragments(merged: list[list[int]]) -> list[list[int]]:
    """A piece much shorter than the digits beside it is a broken stroke: it joins its nearest neighbour."""
    if len(merged) < 2:
        return merged
    typical = statistics.median(group[3] - group[1] + 1 for group in merged)
    while len(merged) > 1:
        heights = [group[3] - group[1] + 1 for group in merged]
        shortest = heights.index(min(heights))
        if heights[shortest] >= FRAGMENT * typical:
            break
        piece = merged.pop(shortest)
        gaps = []
        for neighbour in (shortest - 1, shortest):  # indexes after the pop: left, then right
            if 0 <= neighbour < len(merged):
                other = merged[neighbour]
                gaps.append((max(other[0], piece[0]) - min(other[2], piece[2]), neighbour))
        gap, nearest = min(gaps)
        if gap > JOIN_GAP * typical:
            continue  # an isolated mark far from any digit: not part of the number
        other = merged[nearest]
        other[0], other[1] = min(other[0], piece[0]), min(other[1], piece[1])
        other[2], other[3] = max(other[2], piece[2]), max(other[3], piece[3])
        other.extend(piece[4:])
    return merged


# --- one digit, the MNIST way ------------------------------------------------------------------


def _glyph(page_image: Image.Image, analysis: _Analysis, number: int, box: tuple[int, int, int, int],
           scale: float) -> Glyph | None:
    factor = analysis.factor
    height_a, width_a = analysis.groups.shape
    # One analysis pixel of margin catches the anti-aliased edge the threshold left out.
    left_a, top_a = max(0, box[0] - 1), max(0, box[1] - 1)
    right_a, bottom_a = min(width_a, box[2] + 1), min(height_a, box[3] + 1)
    member = analysis.groups[top_a:bottom_a, left_a:right_a] == number
    if factor == 1 or box[3] - box[1] >= ANALYSIS_GLYPH:
        # Tall enough on the reduced page already: its signal fits into 20x20 as well as the original would.
        signal = np.where(member, analysis.signal[top_a:bottom_a, left_a:right_a], 0.0)
        origin, step = (left_a * factor, top_a * factor), factor
    else:
        signal, origin, step = _fine_signal(page_image, analysis, member, (left_a, top_a, right_a, bottom_a))
    strong = signal[signal > 0]
    if strong.size == 0:
        return None
    (level,) = _quantiles(strong, (0.95,))
    floor = max(4.0 * analysis.sigma, 0.2 * level)
    if level <= floor:
        return None
    values = np.clip((signal - floor) / (level - floor), 0.0, 1.0)
    used_rows, used_cols = np.flatnonzero(values.any(axis=1)), np.flatnonzero(values.any(axis=0))
    if used_rows.size == 0:
        return None
    top, bottom = int(used_rows[0]), int(used_rows[-1]) + 1
    left, right = int(used_cols[0]), int(used_cols[-1]) + 1
    width, height = page_image.size
    page_box = (round((origin[0] + left * step) * scale), round((origin[1] + top * step) * scale),
                round(min(width, origin[0] + right * step) * scale),
                round(min(height, origin[1] + bottom * step) * scale))
    return Glyph(fit(values[top:bottom, left:right]), page_box)


def _fine_signal(page_image: Image.Image, analysis: _Analysis, member: np.ndarray,
                 box: tuple[int, int, int, int]) -> tuple[np.ndarray, tuple[int, int], int]:
    """A digit small on a large page, from the full-resolution page: (signal, its origin, pixels per value)."""
    factor = analysis.factor
    left_a, top_a, right_a, bottom_a = box
    fine_box = (left_a * factor, top_a * factor, min(page_image.size[0], right_a * factor),
                min(page_image.size[1], bottom_a * factor))
    crop = page_image.crop(fine_box)
    shrink = max(1, math.ceil(max(crop.size) / GLYPH_SIDE))
    if shrink > 1:
        crop = crop.reduce(shrink)
    crop = _grey(crop)
    size = crop.size
    pixels = np.asarray(crop, dtype=np.float32)
    paper = _bilinear(analysis.paper[top_a:bottom_a, left_a:right_a], size)
    ink = paper - pixels if analysis.dark_ink else pixels - paper
    # Membership keeps other digits and dust out; grown by one analysis pixel for the stroke's soft edge.
    member = _grid_max(member)
    rows = (np.arange(size[1]) * member.shape[0]) // size[1]
    columns = (np.arange(size[0]) * member.shape[1]) // size[0]
    member = member[rows][:, columns]  # nearest analysis pixel for every crop pixel
    return np.where(member, ink, 0.0), fine_box[:2], shrink


def _bilinear(grid: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The paper under a glyph from the four corners of its analysis cells (paper varies slowly)."""
    width, height = size
    down = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    across = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    top = grid[0, 0] + (grid[0, -1] - grid[0, 0]) * across
    bottom = grid[-1, 0] + (grid[-1, -1] - grid[-1, 0]) * across
    return top + (bottom - top) * down


def _grid_max(mask: np.ndarray) -> np.ndarray:
    padded = np.pad(mask, 1)
    result = mask.copy()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            result |= padded[1 + dy: 1 + dy + mask.shape[0], 1 + dx: 1 + dx + mask.shape[1]]
    return result


@functools.lru_cache(maxsize=4096)
def _resampling(size_in: int, size_out: int) -> np.ndarray:
    """Weights that resize one axis with a triangle filter widened by the reduction, as Pillow's BILINEAR does:
    shrinking averages every source pixel (anti-aliasing); weights are positive, so 0..1 stays 0..1."""
    scale = size_in / size_out
    support = max(scale, 1.0)
    centres = (np.arange(size_out) + 0.5) * scale
    distance = np.abs((np.arange(size_in) + 0.5)[None, :] - centres[:, None]) / support
    weights = np.maximum(0.0, 1.0 - distance).astype(np.float32)
    weights /= weights.sum(axis=1, keepdims=True)
    weights.flags.writeable = False
    return weights


@functools.lru_cache(maxsize=64)
def _positions(size: int) -> np.ndarray:
    positions = np.arange(size, dtype=np.float32)
    positions.flags.writeable = False
    return positions


def fit(ink: np.ndarray) -> np.ndarray:
    """MNIST's own steps: fit into 20x20 keeping the aspect ratio, anti-aliased; centre of mass at the centre."""
    height, width = ink.shape
    ratio = BOX / max(height, width)
    size = (max(1, round(width * ratio)), max(1, round(height * ratio)))
    fitted = _resampling(height, size[1]) @ ink.astype(np.float32, copy=False) @ _resampling(width, size[0]).T
    np.minimum(fitted, 1.0, out=fitted)  # rounding may leave 1.0000002
    total = float(fitted.sum())
    rows, cols = fitted.shape
    if total > 0:
        centre_row = float(fitted.sum(axis=1) @ _positions(rows)) / total
        centre_col = float(fitted.sum(axis=0) @ _positions(cols)) / total
    else:
        centre_row, centre_col = (rows - 1) / 2, (cols - 1) / 2
    middle = FIELD / 2  # MNIST's digits have their centre of mass at pixel (14, 14), measured
    top = min(max(int(round(middle - centre_row)), 0), FIELD - rows)
    left = min(max(int(round(middle - centre_col)), 0), FIELD - cols)
    field = np.zeros((FIELD, FIELD), np.float32)
    field[top: top + rows, left: left + cols] = fitted
    return field
