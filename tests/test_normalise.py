"""worker.normalise: every format and mode, the MNIST procedure, numbers, blank pages and every kind of bad input."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from conftest import PROJECT_ROOT
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from core.errors import (
    BadInput,
    EmptyFile,
    ImageTooLarge,
    ImageTooSmall,
    NotAnImage,
    UnsupportedImage,
)
from trainer import scans as scan_set
from worker.normalise import Glyph, Page, normalise

pytestmark = pytest.mark.fast


def encoded(image: Image.Image, image_format: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def paper(width: int = 300, height: int = 200, level: int = 235) -> Image.Image:
    return Image.new("L", (width, height), level)


def draw_seven(page: Image.Image, left: int, top: int, height: int = 100, ink: int = 30) -> tuple[int, int, int, int]:
    """A thick '7' (bar and diagonal) whose ink box is returned."""
    draw = ImageDraw.Draw(page)
    width = int(height * 0.6)
    stroke = max(3, height // 8)
    draw.line([(left, top + stroke // 2), (left + width, top + stroke // 2)], fill=ink, width=stroke)
    draw.line([(left + width, top + stroke // 2), (left + width // 3, top + height)], fill=ink, width=stroke)
    return left, top, left + width, top + height


def only_glyphs(pages: list[Page]) -> tuple[Glyph, ...]:
    assert len(pages) == 1 and pages[0].index == 0
    return pages[0].glyphs


# --- formats and modes -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def variant_scans():
    """One single-digit scan per format/mode variant of the generator."""
    return scan_set.single_digits(len(scan_set.VARIANTS), seed=5)


def test_every_format_and_mode_gives_one_mnist_glyph_per_page(variant_scans):
    seen = set()
    for scan in variant_scans:
        with Image.open(io.BytesIO(scan.data)) as opened:
            seen.add((opened.format, opened.mode))
            size = opened.size
        pages = normalise(scan.data)
        assert [page.index for page in pages] == list(range(len(scan.labels))), scan.name
        for page in pages:
            assert len(page.glyphs) == 1, scan.name
            glyph = page.glyphs[0]
            assert glyph.image.shape == (28, 28) and glyph.image.dtype == np.float32
            assert 0.0 <= glyph.image.min() and glyph.image.max() <= 1.0 and glyph.image.max() > 0.9
            left, top, right, bottom = glyph.box
            assert 0 <= left < right <= max(size) and 0 <= top < bottom <= max(size), scan.name
    formats = {image_format for image_format, _ in seen}
    modes = {mode for _, mode in seen}
    assert formats >= {"PNG", "JPEG", "TIFF", "BMP", "GIF", "WEBP"}
    assert modes >= {"1", "L", "LA", "P", "RGB", "RGBA", "CMYK"} and modes & {"I;16", "I;16B", "I;16L", "I"}


def test_path_str_and_bytes_give_the_same_result(tmp_path, variant_scans):
    scan = variant_scans[0]
    path = tmp_path / scan.name
    path.write_bytes(scan.data)
    from_bytes, from_path, from_str = normalise(scan.data), normalise(path), normalise(str(path))
    assert from_bytes[0].glyphs[0].box == from_path[0].glyphs[0].box == from_str[0].glyphs[0].box
    np.testing.assert_array_equal(from_bytes[0].glyphs[0].image, from_path[0].glyphs[0].image)


def test_multi_page_tiff_gives_one_page_each():
    pages = [paper(), paper(), paper()]
    draw_seven(pages[0], 40, 40)
    draw_seven(pages[2], 60, 50)
    draw_seven(pages[2], 180, 50)
    data = encoded(pages[0], "TIFF", compression="tiff_lzw", save_all=True, append_images=pages[1:])
    result = normalise(data)
    assert [page.index for page in result] == [0, 1, 2]
    assert [len(page.glyphs) for page in result] == [1, 0, 2]


def test_exif_orientation_is_applied_and_boxes_are_upright():
    upright = paper(400, 250)
    expected = draw_seven(upright, 250, 60)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned; exif_transpose turns it back with ROTATE_270
    data = encoded(upright.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=90, exif=exif.tobytes())
    (glyph,) = only_glyphs(normalise(data))
    assert all(abs(found - wanted) <= 8 for found, wanted in zip(glyph.box, expected)), (glyph.box, expected)
    plain = encoded(upright, "PNG")
    assert np.abs(glyph.image - only_glyphs(normalise(plain))[0].image).mean() < 0.05


def test_transparency_is_composited_onto_white():
    strokes = Image.new("LA", (200, 200), (0, 0))
    draw_seven(strokes, 50, 40, ink=(0, 255))  # black and opaque
    ImageDraw.Draw(strokes).rectangle((0, 0, 10, 10), fill=(0, 0))  # a black but transparent corner
    (glyph,) = only_glyphs(normalise(encoded(strokes.convert("RGBA"))))
    assert glyph.box[0] >= 45 and glyph.box[1] >= 35
    palette = Image.new("P", (200, 200), 0)
    palette.putpalette([0, 0, 0, 0, 0, 0])  # index 0 transparent (black underneath), index 1 black ink
    draw_seven(palette, 50, 40, ink=1)
    assert len(only_glyphs(normalise(encoded(palette, "GIF", transparency=0)))) == 1


def test_either_polarity_gives_the_same_digit():
    page = paper()
    draw_seven(page, 100, 50)
    dark_on_light = only_glyphs(normalise(encoded(page)))[0]
    light_on_dark = only_glyphs(normalise(encoded(Image.eval(page, lambda value: 255 - value))))[0]
    assert np.abs(dark_on_light.image - light_on_dark.image).mean() < 0.02


# --- the MNIST procedure --------------------------------------------------------------------------


def test_glyph_is_fitted_into_20x20_and_centred_by_mass():
    page = paper(500, 400)
    draw_seven(page, 300, 200, height=150)
    (glyph,) = only_glyphs(normalise(encoded(page)))
    rows, cols = np.flatnonzero(glyph.image.any(axis=1)), np.flatnonzero(glyph.image.any(axis=0))
    assert max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1) in (20, 21)
    total = glyph.image.sum()
    centre_row = (glyph.image.sum(axis=1) * np.arange(28)).sum() / total
    centre_col = (glyph.image.sum(axis=0) * np.arange(28)).sum() / total
    assert abs(centre_row - 14.0) <= 0.6 and abs(centre_col - 14.0) <= 0.6  # where MNIST's centres lie
    assert glyph.image[0].max() == 0 and glyph.image[:, 0].max() == 0  # MNIST's black frame


def test_an_mnist_digit_itself_comes_back_almost_unchanged():
    images, _ = scan_set.test_digits()
    for digit in images[:20]:
        data = encoded(Image.fromarray((digit * 255).astype(np.uint8)))
        (glyph,) = only_glyphs(normalise(data))
        correlation = np.corrcoef(glyph.image.ravel(), digit.ravel())[0, 1]
        assert correlation > 0.85


def test_uneven_lighting_and_paper_texture_are_not_ink():
    height, width = 300, 400
    light = np.linspace(140, 250, width, dtype=np.float32)[None, :].repeat(height, axis=0)
    grain = np.random.default_rng(1).normal(0, 6, (height, width))
    page = Image.fromarray(np.clip(light + grain, 0, 255).astype(np.uint8))
    expected = draw_seven(page, 160, 90, ink=20)
    (glyph,) = only_glyphs(normalise(encoded(page)))
    assert all(abs(found - wanted) <= 8 for found, wanted in zip(glyph.box, expected)), glyph.box


@pytest.mark.parametrize("left", [200, 330])  # in the light beside the shadow's edge, in the shadow beside it
def test_a_shadow_with_a_sharp_edge_beside_the_digit_is_not_ink(left):
    # A phone photo: half the page in shadow, the shadow's edge a few cells wide, the digit near it. The
    # paper estimate must follow the edge, or the edge reads as ink joined to the digit.
    height, width = 300, 480
    columns = np.arange(width, dtype=np.float32)
    shade = 1 - 0.55 / (1 + np.exp(-(columns - 260) / 12))
    page = Image.fromarray(np.clip(np.full((height, width), 225.0) * shade[None, :], 0, 255).astype(np.uint8))
    expected = draw_seven(page, left, 100, ink=40)
    (glyph,) = only_glyphs(normalise(encoded(page, "JPEG", quality=85)))
    assert all(abs(found - wanted) <= 8 for found, wanted in zip(glyph.box, expected)), glyph.box


def test_the_background_at_a_photos_edges_and_corners_is_not_a_digit():
    # A photo of a sheet taken slightly askew: dark wedges of the desk along one side and in a corner.
    page = paper(480, 360)
    expected = draw_seven(page, 200, 120)
    draw = ImageDraw.Draw(page)
    draw.polygon([(0, 0), (14, 0), (0, 150)], fill=60)  # along the left edge, thinning downwards
    draw.polygon([(480, 0), (420, 0), (480, 40)], fill=60)  # the top right corner
    draw.polygon([(0, 360), (200, 360), (0, 354)], fill=60)  # a sliver along the bottom
    (glyph,) = only_glyphs(normalise(encoded(page)))
    assert all(abs(found - wanted) <= 8 for found, wanted in zip(glyph.box, expected)), glyph.box


def test_specks_dust_and_scanner_borders_are_not_part_of_the_digit():
    page = paper(400, 300)
    expected = draw_seven(page, 150, 90)
    draw = ImageDraw.Draw(page)
    draw.rectangle((0, 0, 399, 2), fill=10)  # the lid's shadow along the top edge
    draw.rectangle((397, 0, 399, 299), fill=10)  # and the right edge
    for x, y in ((60, 50), (320, 250), (170, 40), (240, 260), (30, 200)):
        draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=20)
    (glyph,) = only_glyphs(normalise(encoded(page)))
    assert all(abs(found - wanted) <= 6 for found, wanted in zip(glyph.box, expected)), glyph.box


# --- numbers and no digit -------------------------------------------------------------------------


def test_a_number_is_split_into_its_digits_left_to_right():
    page = paper(700, 220)
    lefts = [60, 200, 340, 480]
    for left in lefts:
        draw_seven(page, left, 50)
    glyphs = only_glyphs(normalise(encoded(page, "JPEG", quality=80)))
    assert [abs(glyph.box[0] - left) <= 6 for glyph, left in zip(glyphs, lefts)] == [True] * 4
    assert len(glyphs) == 4


def test_a_small_box_around_two_digits_is_taken_out_and_they_stay():
    # A box barely wider than the two digits it holds: shorter than any ruled line, and one digit touches it.
    page = paper(900, 600)
    draw = ImageDraw.Draw(page)
    draw.rectangle((300, 200, 470, 340), outline=20, width=3)
    boxes = [draw_seven(page, 302, 220, height=100), draw_seven(page, 390, 220, height=100)]
    glyphs = only_glyphs(normalise(encoded(page)))
    assert len(glyphs) == 2
    for glyph, (left, top, right, bottom) in zip(glyphs, boxes):
        # The box's side takes the few pixels of the stroke that lie on it, no more.
        assert abs(glyph.box[0] - left) <= 16 and abs(glyph.box[2] - right) <= 8 and abs(glyph.box[3] - bottom) <= 8


def test_faint_ruled_lines_and_a_margin_joined_to_them_are_not_digits():
    # Thin light-blue lines and a red margin on a large page: after reduction they are broken into dashes;
    # small digits written on the page must not make the margin and the lines one big mark.
    page = Image.new("RGB", (1000, 800), (236, 236, 228))
    draw = ImageDraw.Draw(page)
    for y in range(40, 800, 80):
        draw.line([(0, y), (1000, y)], fill=(150, 170, 225), width=2)
    draw.line([(110, 0), (110, 800)], fill=(225, 140, 140), width=2)
    grey = page.convert("L")
    boxes = [draw_seven(grey, 400, 255, height=62), draw_seven(grey, 460, 255, height=62)]
    glyphs = only_glyphs(normalise(encoded(grey.convert("RGB"))))
    assert [abs(glyph.box[0] - box[0]) <= 8 for glyph, box in zip(glyphs, boxes)] == [True, True]
    assert len(glyphs) == 2
    empty = only_glyphs(normalise(encoded(page)))
    assert empty == ()


def test_generated_numbers_give_as_many_glyphs_as_digits():
    for scan in scan_set.numbers(12, seed=8):
        pages = normalise(scan.data)
        assert [len(page.glyphs) for page in pages] == [len(label) for label in scan.labels], scan.name
        for page in pages:
            lefts = [glyph.box[0] for glyph in page.glyphs]
            assert lefts == sorted(lefts)


def test_digits_merged_only_on_the_reduced_page_come_with_their_parts():
    # A 1 written 6 px from a 7 on a large page: one mark once the page is reduced for the search, two
    # marks with paper between them at full size, handed to the model as pieces too.
    page = paper(1400, 1000)
    seven = draw_seven(page, 700, 400, height=120)
    ImageDraw.Draw(page).line([(seven[0] - 14, 400), (seven[0] - 14, 520)], fill=30, width=12)
    glyphs = only_glyphs(normalise(encoded(page)))
    merged = [glyph for glyph in glyphs if glyph.box[0] < seven[0] - 14 < glyph.box[2]]
    assert len(merged) == 1 and len(merged[0].pieces) == 2, [(g.box, [p.box for p in g.pieces]) for g in glyphs]
    one, seven_piece = merged[0].pieces
    assert one.box[2] < seven_piece.box[0] and abs(seven_piece.box[2] - seven[2]) <= 10


def test_broken_strokes_of_one_digit_stay_one_digit():
    page = paper(400, 260)
    draw = ImageDraw.Draw(page)
    # A '5' written in three strokes: the flag, the short stem, the belly, with small gaps between.
    draw.line([(150, 50), (230, 50)], fill=20, width=12)
    draw.line([(150, 62), (150, 110)], fill=20, width=12)
    draw.arc((140, 100, 250, 210), start=-100, end=140, fill=20, width=12)
    assert len(only_glyphs(normalise(encoded(page)))) == 1


@pytest.mark.parametrize("mode", ["L", "RGB", "1"])
def test_a_blank_page_has_no_digit(mode):
    assert only_glyphs(normalise(encoded(paper().convert(mode)))) == ()


def test_noise_and_dust_alone_are_no_digit():
    grain = np.random.default_rng(2).normal(225, 8, (300, 400))
    page = Image.fromarray(np.clip(grain, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(page)
    for x, y in ((60, 50), (320, 250), (170, 140), (240, 60)):
        draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=30)
    assert only_glyphs(normalise(encoded(page, "JPEG", quality=70))) == ()


def test_a_large_scan_is_reduced_early_and_boxes_stay_in_page_pixels():
    page = paper(5000, 4000)
    expected = draw_seven(page, 3000, 1500, height=600)
    pages = normalise(encoded(page, "JPEG", quality=85))
    (glyph,) = only_glyphs(pages)
    assert all(abs(found - wanted) <= 40 for found, wanted in zip(glyph.box, expected)), glyph.box


# --- bad input ----------------------------------------------------------------------------------------


def test_zero_bytes_and_an_empty_file_are_empty(tmp_path):
    with pytest.raises(EmptyFile):
        normalise(b"")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(EmptyFile):
        normalise(tmp_path / "empty.png")


@pytest.mark.parametrize("image_format", ["PNG", "JPEG", "TIFF", "GIF", "BMP", "WEBP"])
def test_truncated_files_are_not_images(image_format):
    page = paper(300, 200)
    draw_seven(page, 100, 50)
    data = encoded(page.convert("RGB"), image_format)
    with pytest.raises(NotAnImage):
        normalise(data[: len(data) // 2])


@pytest.mark.parametrize("data", [b"hello, this is text\n" * 20, bytes(range(256)) * 4, b"%PDF-1.7\n" + b"0" * 100])
def test_bytes_that_are_no_image_whatever_the_extension(tmp_path, data):
    path = tmp_path / "scan.png"
    path.write_bytes(data)
    with pytest.raises(NotAnImage):
        normalise(path)


@pytest.mark.parametrize("image_format", ["PPM", "ICO", "TGA", "PCX"])
def test_formats_outside_the_scanner_set_are_unsupported(image_format):
    with pytest.raises(UnsupportedImage):
        normalise(encoded(paper(64, 64).convert("RGB"), image_format))


def test_an_unsupported_mode_is_refused():
    with pytest.raises(UnsupportedImage):
        normalise(encoded(Image.new("LAB", (64, 64)), "TIFF"))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims a size and then stops: decoding it would fail, so refusing it proves no decode."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + header
    data = b"IDAT" + zlib.compress(b"\0" * 64)
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(header)) + chunk + struct.pack(">I", zlib.crc32(chunk))
            + struct.pack(">I", len(data) - 4) + data + struct.pack(">I", zlib.crc32(data)))


def test_too_many_pixels_are_refused_before_decoding():
    with pytest.raises(ImageTooLarge):
        normalise(png_header_only(10_000, 10_000), max_pixels=40_000_000)
    with pytest.raises(ImageTooLarge):  # beyond Pillow's own bomb limit, whatever max_pixels says
        normalise(png_header_only(50_000, 50_000), max_pixels=10**10)
    page = encoded(paper(300, 200))
    with pytest.raises(ImageTooLarge):
        normalise(page, max_pixels=50_000)
    with pytest.raises(ImageTooLarge):
        normalise(page, max_bytes=len(page) - 1)


def test_too_large_a_file_is_refused_before_reading(tmp_path):
    path = tmp_path / "huge.png"
    path.write_bytes(encoded(paper(300, 200)))
    with pytest.raises(ImageTooLarge):
        normalise(path, max_bytes=100)


@pytest.mark.parametrize("size", [(1, 1), (5, 300)])
def test_tiny_images_are_too_small(size):
    with pytest.raises(ImageTooSmall):
        normalise(encoded(Image.new("L", size, 255)))


def test_a_missing_path_is_bad_input(tmp_path):
    with pytest.raises(NotAnImage):
        normalise(tmp_path / "gone.png")


def test_mangled_bytes_only_ever_raise_bad_input(variant_scans):
    """Regression net: cut and flipped bytes of every format give pages or BadInput, never anything else."""
    random = np.random.default_rng(3)
    for scan in variant_scans:
        for _ in range(6):
            data = bytearray(scan.data)
            if random.random() < 0.5:
                data = data[: int(random.integers(1, len(data)))]
            for position in random.integers(0, len(data), size=int(random.integers(1, 12))):
                data[position] = int(random.integers(0, 256))
            try:
                pages = normalise(bytes(data))
            except BadInput:
                continue
            for page in pages:  # what comes back is well-formed: 28x28 float32 glyphs in 0..1 inside the page
                for glyph in page.glyphs:
                    assert glyph.image.shape == (28, 28) and glyph.image.dtype == np.float32
                    assert 0.0 <= glyph.image.min() and glyph.image.max() <= 1.0
                    left, top, right, bottom = glyph.box
                    assert 0 <= left < right <= page.size[0] and 0 <= top < bottom <= page.size[1], (glyph.box, page.size)


@pytest.mark.parametrize("size", [(8, 8), (9, 9), (8, 5000), (5000, 8), (30000, 8), (12, 12)])
@pytest.mark.parametrize("kind", ["blank", "noise", "bars", "speckle"])
def test_odd_shapes_and_contents_never_crash(size, kind):
    random = np.random.default_rng(4)
    width, height = size
    pixels = np.full((height, width), 230, np.uint8)
    if kind == "noise":
        pixels = random.integers(0, 256, (height, width)).astype(np.uint8)
    elif kind == "bars":
        pixels[:, ::7] = 10
    elif kind == "speckle":
        pixels = (random.random((height, width)) > 0.5).astype(np.uint8) * 255
    try:
        pages = normalise(encoded(Image.fromarray(pixels)))
    except UnsupportedImage as error:
        assert "separate marks" in str(error)  # hundreds of bars are not a number
        return
    for page in pages:
        assert all(glyph.image.shape == (28, 28) for glyph in page.glyphs)


def test_a_page_of_hundreds_of_marks_is_refused_not_read_as_a_number():
    pixels = np.full((1000, 1000), 230, np.uint8)
    for top in range(20, 960, 80):  # 12 rows of 33 bars: more marks than any page of numbers holds
        for left in range(10, 990, 30):
            pixels[top:top + 60, left:left + 12] = 10
    with pytest.raises(UnsupportedImage, match="separate marks on one page"):
        normalise(encoded(Image.fromarray(pixels)))


def test_normalise_needs_no_tensorflow():
    code = "import sys, worker.normalise; sys.exit('tensorflow' in sys.modules or 'keras' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT).returncode == 0


def test_long_strokes_of_digits_on_a_form_with_small_print_are_not_lines():
    # A form whose title and labels are printed small, letter by letter: they outnumber the handwritten
    # digits, but the 1s' stems and the digits' feet side by side are not ruled lines or box sides.
    from trainer.negatives import font_files

    page = paper(850, 520, level=225)
    draw = ImageDraw.Draw(page)
    font = ImageFont.truetype(str(font_files()[0]), 36)
    for top, text in ((30, "RECEIVED balance form No. 986"), (280, "Office:"), (450, "Amount:")):
        for index, character in enumerate(text):
            draw.text((40 + index * 26, top), character, fill=30, font=font)
    draw.rectangle((270, 220, 800, 390), outline=30, width=3)
    boxes = []
    for left in (320, 400, 480, 560):  # 7 1 7 1, their feet on one row
        if left in (400, 560):
            draw.line([(left + 20, 250), (left + 20, 340)], fill=20, width=11)
            boxes.append((left + 14, 250, left + 26, 340))
        else:
            boxes.append(draw_seven(page, left, 250, height=90, ink=20))
    scan = encoded(page.filter(ImageFilter.GaussianBlur(1.5)), "JPEG", quality=85)
    glyphs = [glyph for number in normalise(scan)[0].numbers for glyph in number.glyphs
              if glyph.box[1] > 200 and glyph.box[0] > 290]
    assert len(glyphs) == 4
    for glyph, (_, top, _, bottom) in zip(glyphs, boxes):
        assert abs(glyph.box[1] - top) <= 8 and abs(glyph.box[3] - bottom) <= 8, (glyph.box, top, bottom)
