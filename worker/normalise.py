"""Turn any scan (bytes or a path) into MNIST-style 28x28 glyphs, grouped into numbers in reading order.

Ruled lines, underlines and the boxes of forms are found and taken out first; the marks left are grouped
into text lines (top to bottom) and numbers (left to right, split at wide gaps); marks as wide as two
digits are split where their ink is thinnest. Whether a glyph is a handwritten digit at all is the
model's call (its "not a digit" class), so printed labels reach it as glyphs and come back rejected.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import io
import itertools
import math
import os
import statistics
import threading
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
from worker import form_box

# Formats scanners and phones produce; anything else Pillow happens to read is refused (EPS, for one,
# would run Ghostscript). MPO is how Pillow names many phone JPEGs; only its first picture is the photo.
FORMATS = {"PNG", "JPEG", "MPO", "TIFF", "BMP", "GIF", "WEBP"}
MULTI_PAGE_FORMATS = {"TIFF", "GIF", "WEBP"}
MAX_PAGES = 100
MAX_MARKS = 300  # more separate marks than this on one page is a page of text or a pattern: refused
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
BACKGROUND_CELLS = 24  # paper is estimated on a grid this many cells along the long side
PAPER_REACH = 3  # ... as the palest cell within this many cells, then the darkest of those within as many
MIN_CONTRAST = 24.0  # grey levels of 255: less than this between ink and paper is a blank page
NOISE_SIGMAS = 6.0  # ink must stand out of the paper noise by this many standard deviations
SPECK_AREA = 0.04  # components with less ink than this share of the largest are dust
SPECK_SIZE = 0.25  # ... and so are those smaller in both directions than this share of the tallest
MIN_GLYPH = 0.05  # a digit is at least this share of the page's short side tall (and at least MIN_SIDE px)
BORDER_FILL = 0.6  # an edge row or column mostly ink is a scanner border, not a digit
BORDER_DEPTH = 0.15  # borders are looked for this far in from each edge
EDGE_BAND = 3  # ink lying wholly within this many pixels of an edge (at analysis size) is the paper's edge
FRAGMENT = 0.7  # a piece less tall than this share of the typical digit is part of a neighbour
JOIN_GAP = 0.4  # ... when it lies within this share of the typical digit height of it
OVERLAP = 0.3  # components overlapping horizontally by this share of the narrower are one digit
TYPICAL_RANK = 0.75  # the typical digit height is the height at this rank among the marks (0: the lowest)
LINE_RUN = 2.5  # ink running straight for this many typical digit heights is a ruled line or a box side
SIDE_RUN = 0.9  # ... and so is a vertical run this long that joins a line at both of its ends
MIN_FILL = 0.08  # a character's ink fills at least this share of its box (a frame's far less)
BARE_END = 2  # a line goes on at least this many pixels (at analysis size) past the writing at one end
DASHED = 0.7  # a faint margin inks this share of the page's height at least (in dashes) ...
DASHED_BESIDE = 4  # ... with at most 1 - DASHED of it inked this many pixels to either side
REMNANT = 3  # a sliver of a taken-out line is at most this many pixels thick (at analysis size)
FAINT = 0.75  # lines are looked for in ink above this share of the ink threshold (thin lines reduce faint)
FRAME_BAND = 2  # a box's side, at analysis size, lies within this many pixels of the box's edge
FRAME_INKED = 0.85  # ... and inks this share of it, on all four sides
FRAME_TALL = 1.2  # ... and is this many times as tall as the handwriting at least (a 0 is no box)
STACKED = 0.25  # marks overlapping horizontally this close vertically (share of the taller) are one glyph
SAME_LINE = 0.5  # marks overlapping vertically by this share of the shorter are on one text line
NUMBER_GAP = 1.5  # a gap wider than this share of the line's digit height ends a number
WIDE = 1.0  # a glyph at least as wide as tall may hold touching digits: it also comes cut, for the model to judge
APART_HEIGHT = 0.6  # ... and one whose ink paper divides at full size into parts this share of its height
SLIVER = 0.06  # ... a part narrower than this share of its height is what is left of a line, not a digit
OTHER_CUTS = 3  # in a form's field, a wide mark also comes cut into 2 .. this many digits
FEW_MARKS = 12  # up to this many marks on a page, their areas are counted box by box
_EIGHT_NEIGHBOURS = np.ones((3, 3), bool)  # diagonal steps join a stroke, as a pen draws them


@dataclass(frozen=True)
class Glyph:
    """One mark: float32 (28, 28) in 0..1, white on black, and its box in the page's pixels. A mark wide enough
    to hold touching digits also comes cut where its ink is thinnest (`pieces`): the model's answers on the
    whole and on the pieces decide which reading stands; `last_resort` pieces stand only for a mark the
    model rejects whole. In a form's field, a wide mark also comes cut into other numbers of digits
    (`cuts`), for the field's length to choose from."""

    image: np.ndarray
    box: tuple[int, int, int, int]
    pieces: tuple["Glyph", ...] = ()
    last_resort: bool = False
    cuts: tuple[tuple["Glyph", ...], ...] = ()

    @property
    def model_inputs(self) -> tuple["Glyph", ...]:
        """What the model reads of this mark, in the order its answers come back: the whole, its pieces, then
        the pieces of each other cut."""
        return (self, *self.pieces, *(piece for cut in self.cuts for piece in cut))


@dataclass(frozen=True)
class Number:
    """Glyphs written together, left to right, their box in the page's pixels, and the text line they are on
    (numbers of one page with the same `line` were written on one line)."""

    glyphs: tuple[Glyph, ...]
    box: tuple[int, int, int, int]
    line: int = 0


@dataclass(frozen=True)
class Page:
    """One page of a file and the numbers on it in reading order (empty: no mark on this page)."""

    index: int
    numbers: tuple[Number, ...]
    size: tuple[int, int] = (0, 0)  # width and height in the page's pixels, the units of the boxes

    @property
    def glyphs(self) -> tuple[Glyph, ...]:
        return tuple(glyph for number in self.numbers for glyph in number.glyphs)


def normalise(source: bytes | str | os.PathLike, *, max_pixels: int = 40_000_000,
              max_bytes: int = 20_000_000, pdf_dpi: int = 150,
              regions: list[tuple[int, tuple[float, float, float, float], tuple[float, float, float, float] | None]]
              | None = None) -> list[Page]:
    """Every page of an image file or PDF as numbers of MNIST-style glyphs; with `regions` ((page, region,
    printed box), each (left, top, right, bottom) as fractions of that page; the box where a form's field
    has one drawn, or None), each region of its page on its own instead, as one Page per region in their
    order (index: the region's), boxes still in the page's pixels.

    Raises a core.errors.BadInput subclass (EmptyFile, NotAnImage, UnsupportedImage, ImageTooLarge,
    ImageTooSmall) for bad input; never anything else for any bytes.
    """
    data = _read(source, max_bytes=max_bytes)
    if PDF_MAGIC in data[:1024]:
        rendered = _pdf_pages(data, dpi=pdf_dpi, max_pixels=max_pixels)
        count = len(rendered)

        def decode(index: int) -> tuple[Image.Image, float]:
            return rendered[index], 1.0
    else:
        image = _open(data)
        count = _page_count(image)

        def decode(index: int) -> tuple[Image.Image, float]:
            return _decode_page(image, index, max_pixels=max_pixels)
    if regions is not None:  # only the pages that hold a region are decoded
        kept = {page: decode(page) for page in sorted({page for page, _, _ in regions}) if page < count}
        return [_region(kept.get(page), number, box, printed) for number, (page, box, printed) in enumerate(regions)]
    pages = []
    for index in range(count):
        page_image, scale = decode(index)
        pages.append(Page(index, _find_numbers(page_image, scale), _size(page_image, scale)))
    return pages


def page_images(data: bytes, *, pdf_dpi: int, max_pixels: int, pages: set[int] | None = None
                ) -> dict[int, Image.Image]:
    """The pages of a file (those in `pages`, or all) as upright RGB images in the pixels its result's boxes
    are given in: for pictures and drawings beside what was read (the check picture, review crops)."""
    if PDF_MAGIC in data[:1024]:
        rendered = _pdf_pages(data, dpi=pdf_dpi, max_pixels=max_pixels)
        return {index: page.convert("RGB") for index, page in enumerate(rendered) if pages is None or index in pages}
    image = _open(data)
    found = {}
    for index in range(_page_count(image)):
        if pages is None or index in pages:
            image.seek(index)
            found[index] = ImageOps.exif_transpose(image.convert("RGB"))
    return found


def _size(page_image: Image.Image, scale: float) -> tuple[int, int]:
    return round(page_image.size[0] * scale), round(page_image.size[1] * scale)


def _region(decoded: tuple[Image.Image, float] | None, number: int, box: tuple[float, float, float, float],
            printed: tuple[float, float, float, float] | None = None) -> Page:
    """One region of a decoded page read on its own (a form's field), its boxes moved back into the page's
    pixels; no numbers where the file has no such page or the region holds too few pixels. Where the
    `printed` box is found in the region, only its inside is read."""
    if decoded is None:
        return Page(number, (), (0, 0))
    page_image, scale = decoded
    width, height = page_image.size
    left, top = max(0, math.floor(box[0] * width)), max(0, math.floor(box[1] * height))
    right, bottom = min(width, math.ceil(box[2] * width)), min(height, math.ceil(box[3] * height))
    if right - left < MIN_SIDE or bottom - top < MIN_SIDE:
        return Page(number, (), _size(page_image, scale))
    region = page_image.crop((left, top, right, bottom))
    # Set on a wider sheet of its own paper: a box filling most of the region is then found as a box (in
    # the bare region its sides made much of the paper estimate), as on a whole page.
    pad = max(region.size) // 4
    pixels = np.asarray(region)
    paper = np.median(np.concatenate([pixels[0], pixels[-1]]), axis=0).astype(int)  # its top and bottom rows
    paper = int(paper) if paper.ndim == 0 else tuple(paper.tolist())
    if printed is not None:
        region = form_box.inside(region, (printed[0] * width - left, printed[1] * height - top,
                                          printed[2] * width - left, printed[3] * height - top), paper)
    sheet = Image.new(region.mode, (region.width + 2 * pad, region.height + 2 * pad), paper)
    sheet.paste(region, (pad, pad))
    found = _find_numbers(sheet, scale, other_cuts=True)
    dx, dy = round((left - pad) * scale), round((top - pad) * scale)
    return Page(number, tuple(_moved(found_number, dx, dy) for found_number in found), _size(page_image, scale))


def _moved(item, dx: int, dy: int):
    """A Number or Glyph (and its glyphs or pieces) with its boxes moved by (dx, dy)."""
    left, top, right, bottom = item.box
    moved = {"box": (left + dx, top + dy, right + dx, bottom + dy)}
    if isinstance(item, Number):
        moved["glyphs"] = tuple(_moved(glyph, dx, dy) for glyph in item.glyphs)
    else:
        moved["pieces"] = tuple(_moved(piece, dx, dy) for piece in item.pieces)
        moved["cuts"] = tuple(tuple(_moved(piece, dx, dy) for piece in cut) for cut in item.cuts)
    return dataclasses.replace(item, **moved)


# --- reading and decoding ----------------------------------------------------------------------

PDF_MAGIC = b"%PDF-"
_PDFIUM = threading.Lock()  # PDFium is not thread-safe, and the worker normalises in several threads


def _pdf_pages(data: bytes, *, dpi: int, max_pixels: int) -> list[Image.Image]:
    """Every page of a PDF rendered in grey at `dpi`; page count and size are checked before rendering."""
    import pypdfium2

    with _PDFIUM:
        try:
            document = pypdfium2.PdfDocument(data)
        except pypdfium2.PdfiumError as error:
            if "password" in str(error).lower():
                raise UnsupportedImage("the PDF is encrypted (password protected); send it unprotected") from None
            raise NotAnImage(f"corrupt PDF: {error}") from None
        try:
            count = len(document)
            if count == 0:
                raise NotAnImage("the PDF has no pages")
            if count > MAX_PAGES:
                raise ImageTooLarge(f"{count} pages is more than the limit of {MAX_PAGES}")
            rendered = []
            for index in range(count):
                page = document[index]
                width, height = (math.ceil(side * dpi / 72) for side in page.get_size())
                if width * height > max_pixels:
                    raise ImageTooLarge(f"page {index} would be {width}x{height} pixels at {dpi} dpi, more than the "
                                        f"limit of {max_pixels}")
                if width < MIN_SIDE or height < MIN_SIDE:
                    raise ImageTooSmall(f"page {index} is {width}x{height} pixels at {dpi} dpi")
                try:
                    rendered.append(page.render(scale=dpi / 72, grayscale=True).to_pil().convert("L"))
                except pypdfium2.PdfiumError as error:
                    raise NotAnImage(f"page {index} of the PDF cannot be rendered: {error}") from None
            return rendered
        finally:
            document.close()



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
    boxes: list[tuple[int, int, int, int]]  # per group, analysis pixels, in reading order
    numbers: list[tuple[int, list[int]]]  # (text line, group numbers from 1) of each number, in reading order
    pieces: dict[int, list[tuple[int, int, int, int]]]  # group -> boxes of its pieces, when it may hold several
    lines: np.ndarray  # bool at analysis size: ruled lines and box sides taken out
    sigma: float


def _find_numbers(page_image: Image.Image, scale: float, *, other_cuts: bool = False) -> tuple[Number, ...]:
    analysis = _analyse(page_image)
    if analysis is None:
        return ()
    if len(analysis.boxes) > MAX_MARKS:
        raise UnsupportedImage(f"{len(analysis.boxes)} separate marks on one page: more than the {MAX_MARKS} "
                               "a page of handwritten numbers may have")
    numbers = []
    for line, members in analysis.numbers:
        glyphs = []
        for group in members:
            glyph = _glyph(page_image, analysis, group, analysis.boxes[group - 1], scale)
            if glyph is None:
                continue
            if not glyph.pieces:  # parts apart at full size stand for its cut pieces
                boxes = analysis.pieces.get(group)
                wide = [] if boxes else _wide_cuts(analysis, group, glyph.box)
                pieces = [_glyph(page_image, analysis, group, box, scale, piece=True) for box in boxes or wide]
                if pieces and all(piece is not None for piece in pieces):
                    glyph = Glyph(glyph.image, glyph.box, tuple(pieces), last_resort=bool(wide))
            if other_cuts:
                glyph = dataclasses.replace(glyph, cuts=_other_cuts(page_image, analysis, group, glyph, scale))
            glyphs.append(glyph)
        if glyphs:
            box = (min(g.box[0] for g in glyphs), min(g.box[1] for g in glyphs),
                   max(g.box[2] for g in glyphs), max(g.box[3] for g in glyphs))
            numbers.append(Number(tuple(glyphs), box, line))
    return tuple(numbers)


def _wide_cuts(analysis: _Analysis, group: int, page_box: tuple[int, int, int, int]) -> list[tuple[int, int, int, int]]:
    """Cut pieces (analysis boxes) of a glyph wide at full size, tight on its ink, that the reduced page
    showed no wider than tall (a ruled line's remains under it, or a stroke's soft edge, made it taller):
    a last resort, for touching digits the model rejects whole (a wide 8 or 0 is one digit)."""
    left, _, right, _ = box = analysis.boxes[group - 1]
    cuts = _cut_columns(left, right - left, page_box[2] - page_box[0], page_box[3] - page_box[1])
    return (_pieces(analysis.groups, group, cuts, box) or []) if cuts else []


def _other_cuts(page_image: Image.Image, analysis: _Analysis, group: int, glyph: Glyph, scale: float
                ) -> tuple[tuple[Glyph, ...], ...]:
    """A mark at least WIDE times as wide as tall cut into 2 .. OTHER_CUTS digits, each count its pieces do
    not already give: a form's field of known length picks the count that gives it its digits."""
    wide, tall = glyph.box[2] - glyph.box[0], glyph.box[3] - glyph.box[1]
    if wide < WIDE * tall:
        return ()
    left, _, right, _ = box = analysis.boxes[group - 1]
    found = []
    for parts in range(2, OTHER_CUTS + 1):
        if parts == len(glyph.pieces):
            continue
        boxes = _pieces(analysis.groups, group, [left + (right - left) * k // parts for k in range(1, parts)], box)
        pieces = [_glyph(page_image, analysis, group, piece, scale, piece=True) for piece in boxes or []]
        if pieces and all(piece is not None for piece in pieces):
            found.append(tuple(pieces))
    return tuple(found)


def _cut_columns(left: int, span: int, wide: int, tall: int) -> list[int]:
    """Columns that cut a mark spanning `span` columns from `left`, measured `wide` by `tall`, evenly into
    the digits it may hold (handwritten digits are about 0.8 as wide as they are tall); none for a mark
    no wider than WIDE times its height."""
    if wide <= WIDE * tall:
        return []
    parts = max(2, round(wide / (0.8 * tall)))
    return [left + span * k // parts for k in range(1, parts)]


@dataclass(frozen=True)
class _Marks:
    """The connected components of an ink mask (8-neighbours): labels from 1, the box and area of each."""

    labels: np.ndarray
    slices: list[tuple[slice, slice]]
    areas: np.ndarray

    @classmethod
    def of(cls, mask: np.ndarray) -> _Marks:
        labels, _ = ndimage.label(mask, structure=_EIGHT_NEIGHBOURS)
        return cls.labelled(labels, ndimage.find_objects(labels))

    @classmethod
    def labelled(cls, labels: np.ndarray, slices: list[tuple[slice, slice]]) -> _Marks:
        """The marks of a labelling and its boxes (ndimage.find_objects)."""
        count = len(slices)
        if count <= FEW_MARKS:  # counted within each box: a few small boxes cost less than the whole page
            areas = np.array([np.count_nonzero(labels[box] == index) for index, box in enumerate(slices, start=1)],
                             dtype=np.intp)
        else:
            areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
        return cls(labels, slices, areas)

    @property
    def count(self) -> int:
        return len(self.slices)


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
    marks = _clear_borders(mask) or _Marks.of(mask)
    min_height = max(MIN_SIDE, MIN_GLYPH * min(width, height)) / factor
    lines = _take_out_lines(mask, marks, min_height=min_height, signal=signal, low=low)
    if lines.any():  # the mask lost its lines: its components changed
        marks = _Marks.of(mask)
        remnants = _line_remnants(marks, lines)
        if remnants.any():
            mask &= ~remnants
            marks = _Marks.of(mask)
    groups, boxes, numbers, pieces = _group(marks, signal > high, min_height=min_height)
    if not boxes:
        return None
    return _Analysis(factor, dark_ink, paper, signal, groups, boxes, numbers, pieces, lines, sigma)


def _dark_ink(small: Image.Image) -> bool:
    """Paper covers most of a page, so the median is paper and ink lies on the far side of it. When the
    page's histogram leaves that in doubt (a shadow across a photo spreads the paper's levels), the tail
    of the page's difference from its local median level decides."""
    cumulative = list(itertools.accumulate(small.histogram()))  # 256 levels: plain Python beats numpy here
    low, median, high = (bisect.bisect_left(cumulative, cumulative[-1] * share) for share in (0.01, 0.5, 0.99))
    darker, lighter = median - low, high - median
    if darker >= 4 * lighter or lighter >= 4 * darker:
        return darker >= lighter
    width, height = small.size
    cell = max(1, math.ceil(max(height, width) / BACKGROUND_CELLS))
    cells = small.reduce(cell) if cell > 1 else small
    level = cells.filter(ImageFilter.MedianFilter(5)).resize((width, height), Image.Resampling.BILINEAR,
                                                             box=(0, 0, width / cell, height / cell))
    residual = np.asarray(small, np.float32) - np.asarray(level, np.float32)
    low_residual, high_residual = _quantiles(residual.ravel(), (0.005, 0.995))
    return -low_residual >= high_residual


def _paper(page: Image.Image, *, dark_ink: bool) -> np.ndarray:
    """The paper's level, following uneven lighting: cell means, the palest nearby, smoothed."""
    width, height = page.size
    cell = max(1, math.ceil(max(height, width) / BACKGROUND_CELLS))
    cells = page.reduce(cell) if cell > 1 else page
    # A cell crossed by a stroke reads darker (lighter, for light ink) than paper; the palest cell
    # within three cells is paper. That overstates the paper where the light falls off (at a shadow's
    # edge, by three cells' worth of the slope), so the darkest of those within three cells is taken
    # back: a closing, which follows a gradient and fills what is narrower than seven cells (a thick
    # digit's strokes and loops on a small page too, whose darkness would otherwise spread around it).
    # The edge cells are repeated beyond the page's edge once, before both steps, so the closing follows
    # the light up to the edge: a photo's shadow darkening towards its edge is paper, not ink joined to the
    # digits written beside it (each step repeating its own edge would keep the paper three cells paler).
    palest, darkest = (np.maximum, np.minimum) if dark_ink else (np.minimum, np.maximum)
    padded = _edge_padded(np.asarray(cells), 2 * PAPER_REACH)
    paper = Image.fromarray(_spread(_spread(padded, palest), darkest)).filter(ImageFilter.BoxBlur(1))
    # Steps of a cell are a level or two at most after the blur, so each cell's level is repeated
    # over its pixels (nearest neighbour: a tenth of the cost of a smooth resize).
    paper = paper.resize((width, height), Image.Resampling.NEAREST, box=(0, 0, width / cell, height / cell))
    return np.asarray(paper, dtype=np.float32)


def _edge_padded(cells: np.ndarray, width: int) -> np.ndarray:
    """np.pad(cells, width, mode="edge") for a small 2-D array, at a third of its cost."""
    height, wide = cells.shape
    rows = np.clip(np.arange(-width, height + width), 0, height - 1)
    columns = np.clip(np.arange(-width, wide + width), 0, wide - 1)
    return cells.take(rows, axis=0).take(columns, axis=1)


def _spread(cells: np.ndarray, pick) -> np.ndarray:
    """`pick` (np.maximum or np.minimum) over the cells within PAPER_REACH of each cell (a square), where the
    square lies wholly inside (the result is smaller by PAPER_REACH on each side). Along each axis the
    window doubles (1, 2, 4, then the rest): three passes where one per cell in reach would take six."""
    window = 2 * PAPER_REACH + 1
    for axis in (1, 0):
        covered = 1  # each value is the pick over this many neighbouring cells along the axis
        while covered < window:
            step = min(covered, window - covered)
            kept = cells.shape[axis] - step
            if axis == 1:
                cells = pick(cells[:, :kept], cells[:, step:])
            else:
                cells = pick(cells[:kept], cells[step:])
            covered += step
    return cells


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


def _clear_borders(mask: np.ndarray) -> _Marks | None:
    """Scanner borders are lines along an edge that are mostly ink; a digit's stroke never starts there.
    Returns the marks of the mask where it was labelled for this and left as it was, else None."""
    height, width = mask.shape
    if not (mask[:2].any() or mask[-2:].any() or mask[:, :2].any() or mask[:, -2:].any()):
        return None  # no ink within a line of any edge, so no border (the usual page)
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
    # What lies flat against an edge, or in a corner, is the edge of the paper (the background of a
    # photo, the wedge of a tilted scan), however short: a digit is not drawn flat against an edge.
    labels, _ = ndimage.label(mask, structure=_EIGHT_NEIGHBOURS)
    slices = ndimage.find_objects(labels)
    cleared = False
    for index, (rows, columns) in enumerate(slices, start=1):
        if rows.start and columns.start and rows.stop < height and columns.stop < width:
            continue  # touches no edge
        member = labels[rows, columns] == index
        sides = (  # (touches this edge, the member's line along it, its depth from it, the page's depth)
            (rows.start == 0, member[0], rows.stop - rows.start, height),
            (rows.stop == height, member[-1], rows.stop - rows.start, height),
            (columns.start == 0, member[:, 0], columns.stop - columns.start, width),
            (columns.stop == width, member[:, -1], columns.stop - columns.start, width),
        )
        flat = any(touches and (depth <= EDGE_BAND or (depth <= BORDER_DEPTH * page and 2 * depth <= edge.size
                                                       and 2 * np.count_nonzero(edge) >= edge.size))
                   for touches, edge, depth, page in sides)
        cornered = sum(touches and depth <= BORDER_DEPTH * page for touches, _, depth, page in sides) >= 2
        if flat or cornered:
            mask[rows, columns] &= ~member
            cleared = True
    return None if cleared else _Marks.labelled(labels, slices)


def _group(marks: _Marks, strong: np.ndarray, *, min_height: float
           ) -> tuple[np.ndarray, list[tuple[int, int, int, int]], list[tuple[int, list[int]]], dict]:
    """Connected ink (8-neighbours), less dust and faint marks, in text lines, merged where it overlaps
    horizontally: the group number (from 1) of each pixel, 0 for paper, each group's box, and the text line
    and groups of each number, all in reading order."""
    labels, count, area = marks.labels, marks.count, marks.areas
    height, width = labels.shape
    if count == 0:
        return labels, [], [], {}
    flat = labels.ravel()
    has_strong = np.bincount(flat[strong.ravel()], minlength=count + 1)[1:] > 0
    spans = np.array([(rows.start, rows.stop, cols.start, cols.stop) for rows, cols in marks.slices])
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
    number_of = np.zeros(count + 1, np.int32)  # by label; label 0 is paper
    boxes: list[tuple[int, int, int, int]] = []
    numbers: list[tuple[int, list[int]]] = []
    splits: list[tuple[int, list[int]]] = []  # (group, cut columns) of glyphs that may hold touching digits
    # Pieces of one glyph (a 5's flag, a broken stroke) overlap horizontally and nearly touch vertically;
    # digits of two text lines overlap horizontally too, but a line's gap lies between them.
    pieces: list[list[int]] = []  # each: [left, top, right, bottom, component indexes...]
    for index in sorted(kept, key=lambda index: left[index]):
        for piece in reversed(pieces):
            overlap = min(piece[2], right[index]) - max(piece[0], left[index]) + 1
            narrower = min(piece[2] - piece[0] + 1, wide[index])
            gap = max(piece[1], top[index]) - min(piece[3], bottom[index])
            if overlap >= OVERLAP * narrower and gap <= STACKED * max(piece[3] - piece[1], bottom[index] - top[index]):
                piece[0], piece[1] = min(piece[0], left[index]), min(piece[1], top[index])
                piece[2], piece[3] = max(piece[2], right[index]), max(piece[3], bottom[index])
                piece.append(index)
                break
        else:
            pieces.append([left[index], top[index], right[index], bottom[index], index])
    for line, merged in enumerate(_text_lines(pieces)):
        merged.sort(key=lambda piece: piece[0])
        merged = [group for group in _join_fragments(merged) if group[3] - group[1] + 1 >= min_height]
        if not merged:
            continue
        typical = statistics.median(group[3] - group[1] + 1 for group in merged)
        previous_right = None
        for group in merged:
            if previous_right is None or group[0] - previous_right > NUMBER_GAP * typical:
                numbers.append((line, []))
            previous_right = group[2]
            number_of[[index + 1 for index in group[4:]]] = len(boxes) + 1
            boxes.append((int(group[0]), int(group[1]), int(group[2]) + 1, int(group[3]) + 1))
            numbers[-1][1].append(len(boxes))
            mark_wide, mark_tall = group[2] - group[0] + 1, group[3] - group[1] + 1
            cuts = _cut_columns(group[0], mark_wide, mark_wide, mark_tall)
            if cuts:
                splits.append((len(boxes), cuts))
    grouped = np.take(number_of, labels)  # a lookup: twice as fast as number_of[labels]
    pieces = {}
    for group, cuts in splits:
        found = _pieces(grouped, group, cuts, boxes[group - 1])
        if found:
            pieces[group] = found
    return grouped, boxes, numbers, pieces


def _text_lines(pieces: list[list[int]]) -> list[list[list[int]]]:
    """Pieces grouped into text lines by vertical overlap, top to bottom."""
    lines: list[list] = []  # each: [top, bottom, [pieces]]
    for piece in sorted(pieces, key=lambda piece: (piece[1] + piece[3]) / 2):
        best, best_share = None, SAME_LINE
        for line in lines:
            overlap = min(line[1], piece[3]) - max(line[0], piece[1]) + 1
            shorter = min(line[1] - line[0] + 1, piece[3] - piece[1] + 1)
            if overlap / shorter >= best_share:
                best, best_share = line, overlap / shorter
        if best is None:
            lines.append([piece[1], piece[3], [piece]])
        else:
            best[0], best[1] = min(best[0], piece[1]), max(best[1], piece[3])
            best[2].append(piece)
    lines.sort(key=lambda line: line[0])
    return [line[2] for line in lines]


def _pieces(grouped: np.ndarray, group: int, cuts: list[int], box: tuple[int, int, int, int]
            ) -> list[tuple[int, int, int, int]] | None:
    """Boxes of a glyph cut near `cuts` at the columns where its ink is thinnest (None if a piece is empty)."""
    left, top, right, bottom = box
    member = grouped[top:bottom, left:right] == group
    ink = member.sum(axis=0)
    width = right - left
    window = max(1, width // (3 * (len(cuts) + 1)))
    columns = []
    for cut in cuts:
        low, high = max(1, cut - left - window), min(width - 1, cut - left + window + 1)
        if low >= high:
            return None
        columns.append(low + int(np.argmin(ink[low:high])))
    edges = [0, *columns, width]
    found = []
    for start, stop in zip(edges[:-1], edges[1:]):
        rows = np.flatnonzero(member[:, start:stop].any(axis=1))
        if rows.size == 0 or stop <= start:
            return None
        found.append((left + start, top + int(rows[0]), left + stop, top + int(rows[-1]) + 1))
    return found


def _take_out_lines(mask: np.ndarray, marks: _Marks, *, min_height: float, signal: np.ndarray,
                    low: float) -> np.ndarray:
    """Remove ruled lines, underlines and box sides from the ink mask (in place), keeping the pixels where a
    stroke crosses them; returns what was taken out. `marks` are the mask's components, `signal` the ink
    level it was cut from at `low`."""
    nothing = np.zeros_like(mask)
    typical = _typical_height(marks, min_height=min_height, fallback=mask.shape[0] / 4)
    run = max(6, math.ceil(LINE_RUN * typical))
    # A thin line comes through the reduction faint, and the ink mask holds it only as dashes: lines are
    # looked for in the faint mask (FAINT of the ink threshold, next to ink: a thin line's dashes joined,
    # not a shadow's edge across the page), and what is taken out is their ink.
    # A line tilted by a degree or two steps between rows: it runs straight in a band of three rows (or
    # columns), and a run of `run` pixels needs that many pixels of the band inked. Most plain scans have no
    # such band, and skip the search (and the faint mask).
    fainter = signal > FAINT * low
    row_cover = np.count_nonzero(_band(fainter, axis=0), axis=1)
    column_cover = np.count_nonzero(_band(fainter, axis=1), axis=0)
    height, tallest = mask.shape[0], column_cover.max(initial=0)
    rows, columns, dashed = row_cover.max(initial=0) >= run, tallest >= run, tallest >= DASHED * height
    frame_side = max(4, math.ceil(FRAME_TALL * typical))
    boxed = any(min(down.stop - down.start, over.stop - over.start) >= frame_side for down, over in marks.slices)
    if not (rows or columns or dashed or boxed):
        return nothing  # nothing long enough for a line, tall enough for a margin or big enough for a box
    # Next to ink: within one pixel of it, across or along.
    faint = mask | (fainter & (_band(mask, axis=0) | _band(mask, axis=1))) if rows or columns else mask
    horizontal = vertical = nothing
    across = along = nothing  # straight runs of faint ink: lines, and what may pass for them
    if rows:
        thick = _band(faint, axis=0)
        if np.count_nonzero(thick, axis=1).max(initial=0) >= run:
            across = _long_runs(thick, axis=1, length=run) & faint
    if columns:
        thick = _band(faint, axis=1)
        if np.count_nonzero(thick, axis=0).max(initial=0) >= run:
            along = _long_runs(thick, axis=0, length=run) & faint
    # A faint margin may come through only as dashes: it is found by how much of the page's height it inks.
    margin = _dashed_margin(fainter, column_cover / height) if dashed else nothing
    # A line's end may meet another (a box's corner, the page's edge): only other ink covers it.
    reach = math.ceil(typical)
    if across.any():
        horizontal = _thin(across, axis=0, run=run, ink=mask & ~along & ~margin, reach=reach) & mask
    if along.any():
        vertical = _thin(along, axis=1, run=run, ink=mask & ~across, reach=reach) & mask
    side = max(4, math.ceil(SIDE_RUN * typical))
    frame_rows, frame_columns = _frames(mask, marks, min_side=frame_side)
    horizontal, vertical = horizontal | frame_rows, vertical | frame_columns | (margin & mask)
    if not horizontal.any() and not vertical.any():
        return nothing
    sides = _box_sides(mask & ~horizontal, horizontal, length=side)
    lines = horizontal | vertical | sides
    rest = mask & ~lines
    # A digit's stroke crossing a line continues on both sides of it: those line pixels stay.
    crossing = lines & _near(rest, axis=0, sign=1) & _near(rest, axis=0, sign=-1) & ~vertical
    crossing |= (vertical | sides) & _near(rest, axis=1, sign=1) & _near(rest, axis=1, sign=-1) & ~horizontal
    taken = lines & ~crossing
    mask &= ~taken
    return taken


def _dashed_margin(fainter: np.ndarray, cover: np.ndarray) -> np.ndarray:
    """Faint straight lines from the top of the page to its bottom (a margin) that the reduction left as
    dashes: a column whose band of three columns inks at least DASHED of the page's height (`cover`, per
    column), with nearly bare paper DASHED_BESIDE columns away on both sides, filled from its first ink to
    its last. Digits stacked in a column neither reach that far nor leave paper beside them. Rows need no
    such search: what is left of a ruled line is flat, and dropped as such, where a margin's dashes look
    like 1s."""
    found = np.zeros_like(fainter)
    for column in np.flatnonzero(cover >= DASHED).tolist():
        if cover[column] < cover[max(0, column - 1):column + 2].max():
            continue  # one column for each line: where it inks the most
        beside = [cover[other] for other in (column - DASHED_BESIDE, column + DASHED_BESIDE) if 0 <= other < cover.size]
        if max(beside, default=0.0) > 1.0 - DASHED:
            continue
        rows = np.flatnonzero(fainter[:, column])
        if rows.size:
            found[rows[0]:rows[-1] + 1, column] = True
    return found


def _band(mask: np.ndarray, *, axis: int) -> np.ndarray:
    """Pixels inked or next to ink across `axis`: each row (0) or column (1) joined to its two neighbours."""
    band = mask.copy()
    if axis == 0:
        band[1:] |= mask[:-1]
        band[:-1] |= mask[1:]
    else:
        band[:, 1:] |= mask[:, :-1]
        band[:, :-1] |= mask[:, 1:]
    return band


def _long_runs(mask: np.ndarray, *, axis: int, length: int) -> np.ndarray:
    """Pixels in straight runs of ink at least `length` long along an axis (1: rows, 0: columns)."""
    lines = mask if axis == 1 else mask.T
    edges = np.diff(np.pad(lines, ((0, 0), (1, 1))).astype(np.int8), axis=1)
    starts, ends = np.nonzero(edges == 1), np.nonzero(edges == -1)[1]
    long = np.flatnonzero(ends - starts[1] >= length)
    found = np.zeros_like(lines)
    for index in long.tolist():
        found[starts[0][index], starts[1][index]:ends[index]] = True
    return found if axis == 1 else found.T


def _typical_height(marks: _Marks, *, min_height: float, fallback: float) -> float:
    """The height of the marks shaped like characters (not lines, not frames, not dots) at TYPICAL_RANK
    among them: the handwriting's, not the smaller print of a form's title and labels around it, nor a
    shadow's edge of a photo (a digit's long stroke is no line)."""
    shaped = []  # (height, area); a frame or a margin joined to a ruled line fills little of its box
    for (rows, cols), area in zip(marks.slices, marks.areas.tolist()):
        tall, wide = rows.stop - rows.start, cols.stop - cols.start
        if tall >= min_height and wide <= 2 * tall and tall <= 8 * wide and area >= MIN_FILL * tall * wide:
            shaped.append((tall, area))
    largest = max((area for _, area in shaped), default=0)
    heights = sorted(tall for tall, area in shaped if area >= 0.1 * largest)
    return float(heights[int(TYPICAL_RANK * (len(heights) - 1))]) if heights else max(min_height, fallback)


def _thin(found: np.ndarray, *, axis: int, run: int, ink: np.ndarray, reach: int) -> np.ndarray:
    """Of what a long opening kept, only thin strokes: a line is far longer than it is thick (a thick
    stroke of a digit, or a blob, is not), and goes on bare at one end at least, beyond the `ink` within
    `reach` of it: a ruled line, an underline or a margin reaches past the writing on it, where a long
    stroke of a digit ends in its other strokes, and the faint edges of digits written close together,
    joined along their feet, end under the first and the last of them. `axis` 0: horizontal runs."""
    if not found.any():
        return found
    labels, count = ndimage.label(found, structure=_EIGHT_NEIGHBOURS)
    keep = np.zeros(count + 1, bool)
    for number, (rows, cols) in enumerate(ndimage.find_objects(labels) or [], start=1):
        length = (cols.stop - cols.start) if axis == 0 else (rows.stop - rows.start)
        pixels = np.count_nonzero(labels[rows, cols] == number)
        if length < run or pixels / length > max(3.0, 0.12 * run):  # mean thickness
            continue
        if axis == 0:
            band = slice(max(0, rows.start - reach), rows.stop + reach)
            covered = (ink[band, cols] & ~found[band, cols]).any(axis=0)
        else:
            band = slice(max(0, cols.start - reach), cols.stop + reach)
            covered = (ink[rows, band] & ~found[rows, band]).any(axis=1)
        keep[number] = not (covered[:BARE_END].all() and covered[-BARE_END:].all())
    return np.take(keep, labels)


def _line_remnants(marks: _Marks, lines: np.ndarray) -> np.ndarray:
    """Slivers of a line that was taken out (where it crossed another line, or was drawn heavier): a mark
    thinner than REMNANT pixels, several times longer than thick, with the taken-out line going on from
    both of its ends. A digit on a line is thicker than the line, so it stays."""
    found = np.zeros_like(lines)
    for number, (rows, cols) in enumerate(marks.slices, start=1):
        tall, wide = rows.stop - rows.start, cols.stop - cols.start
        if wide <= REMNANT and tall >= 3 * wide:  # along a vertical line
            ends = (lines[max(0, rows.start - 2):rows.start, cols], lines[rows.stop:rows.stop + 2, cols])
        elif tall <= REMNANT and wide >= 3 * tall:  # along a horizontal one
            ends = (lines[rows, max(0, cols.start - 2):cols.start], lines[rows, cols.stop:cols.stop + 2])
        else:
            continue
        if ends[0].any() and ends[1].any():
            found[rows, cols] |= marks.labels[rows, cols] == number
    return found


def _frames(mask: np.ndarray, marks: _Marks, *, min_side: int) -> tuple[np.ndarray, np.ndarray]:
    """The four sides of boxes drawn around a field, however short (a box for two digits is shorter than
    any ruled line): marks whose bounding box is inked along nearly all of each of its four edges. Returns
    (top and bottom sides, left and right sides); what is written inside, even touching them, stays."""
    rows_found, columns_found = np.zeros_like(mask), np.zeros_like(mask)
    for number, (rows, cols) in enumerate(marks.slices, start=1):
        tall, wide = rows.stop - rows.start, cols.stop - cols.start
        if tall < min_side or wide < min_side:
            continue
        part = marks.labels[rows, cols] == number
        edges = (part[:FRAME_BAND].any(axis=0), part[-FRAME_BAND:].any(axis=0),
                 part[:, :FRAME_BAND].any(axis=1), part[:, -FRAME_BAND:].any(axis=1))
        if min(edge.mean() for edge in edges) < FRAME_INKED:
            continue
        band = np.zeros_like(part)
        band[:FRAME_BAND] = band[-FRAME_BAND:] = True
        rows_found[rows, cols] |= part & band
        band[:] = False
        band[:, :FRAME_BAND] = band[:, -FRAME_BAND:] = True
        columns_found[rows, cols] |= part & band
    return rows_found, columns_found


def _box_sides(mask: np.ndarray, horizontal: np.ndarray, *, length: int) -> np.ndarray:
    """Vertical strokes at least `length` long that meet a horizontal line at both ends: the sides of a box."""
    vertical = _long_runs(mask, axis=0, length=length)
    labels, count = ndimage.label(vertical)
    sides = np.zeros_like(mask)
    near_line = ndimage.binary_dilation(horizontal, iterations=2)
    for number, (rows, cols) in enumerate(ndimage.find_objects(labels) or [], start=1):
        if cols.stop - cols.start > max(3, (rows.stop - rows.start) // 3):
            continue  # not a thin vertical stroke
        if near_line[rows.start, cols].any() and near_line[rows.stop - 1, cols].any():
            sides[rows, cols] |= labels[rows, cols] == number
    return sides


def _near(ink: np.ndarray, *, axis: int, sign: int, reach: int = 3) -> np.ndarray:
    """Pixels with ink within `reach` pixels in one direction along an axis."""
    found = np.zeros_like(ink)
    for step in range(1, reach + 1):
        shifted = np.roll(ink, sign * step, axis=axis)
        if sign > 0:
            index = [slice(None)] * 2
            index[axis] = slice(0, step)
            shifted[tuple(index)] = False
        else:
            index = [slice(None)] * 2
            index[axis] = slice(-step, None)
            shifted[tuple(index)] = False
        found |= shifted
    return found


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
           scale: float, *, piece: bool = False) -> Glyph | None:
    factor = analysis.factor
    height_a, width_a = analysis.groups.shape
    # One analysis pixel of margin catches the anti-aliased edge the threshold left out (not across a cut).
    across = 0 if piece else 1
    left_a, top_a = max(0, box[0] - across), max(0, box[1] - 1)
    right_a, bottom_a = min(width_a, box[2] + across), min(height_a, box[3] + 1)
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

    def glyph(top: int, bottom: int, left: int, right: int, pieces: tuple[Glyph, ...] = ()) -> Glyph:
        width, height = page_image.size
        page_box = (round((origin[0] + left * step) * scale), round((origin[1] + top * step) * scale),
                    round(min(width, origin[0] + right * step) * scale),
                    round(min(height, origin[1] + bottom * step) * scale))
        return Glyph(fit(values[top:bottom, left:right]), page_box, pieces)

    apart = [] if piece else _apart(values[top:bottom, left:right])
    pieces = tuple(glyph(top + upper, top + lower, left + start, left + stop) for start, stop, upper, lower in apart)
    return glyph(top, bottom, left, right, pieces)


def _apart(values: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Column spans of a mark's ink that paper separates at full size, when each is as tall as a digit of
    the mark (a 1 written close beside a 4 merges with it on the reduced page), with the rows each inks:
    (start, stop, top, bottom); else none."""
    inked = values.any(axis=0)
    if inked.all():
        return []  # ink in every column: one part
    edges = np.flatnonzero(np.diff(np.concatenate(([0], inked.astype(np.int8), [0]))))
    if edges.size < 4:
        return []
    spans = []
    for start, stop in zip(edges[::2].tolist(), edges[1::2].tolist()):
        rows = np.flatnonzero(values[:, start:stop].any(axis=1))
        tall = rows[-1] - rows[0] + 1
        if tall < APART_HEIGHT * values.shape[0]:
            return []  # a 5's flag, a dot, a broken stroke: parts of one digit
        if stop - start >= SLIVER * tall:
            spans.append((start, stop, int(rows[0]), int(rows[-1]) + 1))
    return spans if len(spans) > 1 else []


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
    member = _grid_max(member) & ~analysis.lines[top_a:bottom_a, left_a:right_a]
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
