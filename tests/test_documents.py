"""Pages people actually scan: PDFs (and the bad ones), forms, ruled paper, photos, several numbers, and pages
with no handwriting at all, read with the shipped weights exactly as a worker reads them."""

from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import PROJECT_ROOT
from PIL import Image

from core.errors import ImageTooLarge, NotAnImage, UnsupportedImage
from worker.normalise import normalise

PAGES = 100  # per kind here; `python -m bench.accuracy` measures 500 (docs/scans.md)


def minimal_pdf(*, media_box: str = "0 0 200 200", pages: int = 1, encrypt: bool = False) -> bytes:
    """A hand-written PDF: `pages` blank pages of one size, optionally behind the standard security handler
    (with a user password nobody knows)."""
    objects = ["<< /Type /Catalog /Pages 2 0 R >>",
               "<< /Type /Pages /Kids [" + " ".join(f"{3 + index} 0 R" for index in range(pages)) +
               f"] /Count {pages} >>"]
    objects += [f"<< /Type /Page /Parent 2 0 R /MediaBox [{media_box}] >>" for _ in range(pages)]
    trailer_extra = ""
    if encrypt:
        objects.append("<< /Filter /Standard /V 1 /R 2 /O <" + "11" * 32 + "> /U <" + "22" * 32 + "> /P -44 >>")
        trailer_extra = f" /Encrypt {len(objects)} 0 R /ID [<{'33' * 16}> <{'33' * 16}>]"
    body, offsets = b"%PDF-1.4\n", []
    for number, text in enumerate(objects, start=1):
        offsets.append(len(body))
        body += f"{number} 0 obj\n{text}\nendobj\n".encode()
    xref = len(body)
    body += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    body += "".join(f"{offset:010d} 00000 n \n" for offset in offsets).encode()
    body += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R{trailer_extra} >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return body


@pytest.mark.fast
@pytest.mark.parametrize("data, error, message", [
    (minimal_pdf(encrypt=True), UnsupportedImage, "encrypted"),
    (b"%PDF-1.7\n this is not really a PDF", NotAnImage, "corrupt PDF"),
    (minimal_pdf(pages=0), NotAnImage, "corrupt PDF|no pages"),
    (minimal_pdf(media_box="0 0 14400 14400"), ImageTooLarge, "30000x30000 pixels at 150 dpi"),
    (minimal_pdf(pages=1000), ImageTooLarge, "1000 pages is more than the limit"),
], ids=["encrypted", "corrupt", "empty", "page bomb", "thousand pages"])
def test_bad_pdfs_give_a_typed_error_before_anything_is_rendered(data, error, message):
    with pytest.raises(error, match=message):
        normalise(data)


@pytest.mark.fast
def test_every_pdf_page_is_a_page_and_reads_like_the_same_page_as_png():
    from bench.documents import pages as document_pages

    scans = document_pages("pdf", 3, seed=5)
    pictures = []
    for scan in scans:
        import pypdfium2

        document = pypdfium2.PdfDocument(scan.data)
        pictures.append(document[0].render(scale=150 / 72, grayscale=True).to_pil())
        document.close()
    buffer = io.BytesIO()
    pictures[0].convert("RGB").save(buffer, format="PDF", resolution=150.0, save_all=True,
                                    append_images=[picture.convert("RGB") for picture in pictures[1:]])
    from_pdf = normalise(buffer.getvalue())
    assert [page.index for page in from_pdf] == [0, 1, 2]
    for picture, page in zip(pictures, from_pdf):
        png = io.BytesIO()
        picture.save(png, format="PNG")
        (as_png,) = normalise(png.getvalue())
        assert [len(number.glyphs) for number in page.numbers] == [len(number.glyphs) for number in as_png.numbers]
        for glyph, same in zip(page.glyphs, as_png.glyphs):  # Pillow's PDF holds the page as a JPEG
            assert np.corrcoef(glyph.image.ravel(), same.image.ravel())[0, 1] > 0.95


@pytest.mark.fast
def test_two_rows_of_digits_are_two_numbers_in_reading_order():
    from trainer.scans import ink_of, test_digits

    images, labels = test_digits()
    random = np.random.default_rng(3)
    page = np.zeros((600, 700), np.float32)
    for row, indexes in enumerate([(0, 1, 2), (3, 4)]):
        x = 100 + 120 * row
        for index in indexes:
            ink = ink_of(images[index], 90, random)
            target = page[80 + 250 * row: 80 + 250 * row + ink.shape[0], x: x + ink.shape[1]]
            np.maximum(target, ink, out=target)
            x += ink.shape[1] + 25
    picture = Image.fromarray(((1 - page) * 235).astype(np.uint8))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    (read,) = normalise(buffer.getvalue())
    assert [len(number.glyphs) for number in read.numbers] == [3, 2]
    assert read.numbers[0].box[3] < read.numbers[1].box[1]  # the first number lies above the second


@pytest.fixture(scope="module")
def reader(shipped_weights):
    from bench.accuracy import predictor

    predict, _ = predictor(shipped_weights, None)
    return predict


# Pages with every number read exactly right, as measured today minus a margin for the sample: a guard
# against regressions. The documents issue aims at 97 % for each; docs/performance.md has the figures.
FLOORS = {"form": 0.93, "ruled": 0.91, "photo": 0.92, "tally": 0.93, "pdf": 0.93}


@pytest.mark.parametrize("kind", sorted(FLOORS))
def test_documents_are_read_right(reader, kind):
    from bench.accuracy import scans_of, score
    from core.settings import Settings

    result = score(reader, kind, scans_of(kind, PAGES, seed=31), review_below=Settings().review_below)
    assert result.share >= FLOORS[kind], result


@pytest.mark.parametrize("kind, floor", [("printed", 0.96), ("lines", 0.94)])
def test_printed_text_and_lines_alone_rarely_come_out_as_digits(reader, kind, floor):
    from bench.accuracy import scans_of, score
    from core.settings import Settings

    result = score(reader, kind, scans_of(kind, PAGES, seed=31), review_below=Settings().review_below)
    assert result.share >= floor, result


def test_the_shipped_card_records_calibration_and_its_operating_points():
    import json

    version = (PROJECT_ROOT / "weights" / "CURRENT").read_text().strip()
    card = json.loads((PROJECT_ROOT / "weights" / version / "model.json").read_text())
    assert card["test_accuracy"] >= 0.996
    assert card["calibration"]["expected_calibration_error"] < 0.02
    assert card["calibration"]["operating_points"] and card["rejection"]["not_a_digit_rejected"] >= 0.9


def _generated_page(reader, kind: str, index: int, sources: tuple[tuple[int, ...], ...] = ()):
    """How page `index` of bench.documents (seed 2026), holding the MNIST test digits `sources`, is read,
    scored as bench.accuracy scores it."""
    from bench.accuracy import score
    from bench.documents import page

    return score(reader, kind, [page(kind, index, seed=2026, sources=sources)], review_below=0.8)


def test_touching_digits_on_a_ruled_line_come_apart(reader):
    # A generated ruled page whose 3 and 1 touch, standing on a line: the reduced page shows the pair no
    # wider than tall (the line's remains under it), at full size it is wider, and is offered cut.
    result = _generated_page(reader, "ruled", 13, ((6324, 8410, 1837, 1139, 7446),))
    assert result.right == 1, result


def test_digits_beside_a_photo_s_shadowed_edge_are_read(reader):
    # A generated phone photo whose number is written close to the top edge, where the shadow darkens:
    # the paper is followed up to the edge, so the shadow does not join the digits into one dark mark.
    result = _generated_page(reader, "photo", 40, ((3079, 901, 558, 7292, 9277),))
    assert result.right == 1, result


def test_a_faint_margin_left_as_dashes_gives_no_digit(reader):
    # A generated page of ruled lines whose faint red margin the reduced page shows only as dashes, one of
    # which was read as a 1: the margin is found by how much of the page's height it inks.
    result = _generated_page(reader, "lines", 44)
    assert result.right == 1, result


def test_a_round_0_is_no_box(reader):
    # A generated ruled page whose last digit, a round thin 0, is on the reduced page a small mark inked
    # along all four sides of its box: a box drawn around handwriting is taller than the handwriting.
    result = _generated_page(reader, "ruled", 419, ((5713, 8647, 9568, 2531),))
    assert result.right == 1, result


def test_what_is_left_of_a_box_s_side_beside_a_digit_is_no_1(reader):
    # A generated form whose last digit nearly touches its box: the sliver of the box's side left beside
    # the 4 after the box is taken out, apart from it at full size, was read as a 1 ("4541" for "454").
    result = _generated_page(reader, "form", 291, ((6780, 2180, 4483),))
    assert result.right == 1 and result.accepted_wrong == 0, result


def test_a_tally_sheet_number_wider_than_the_page_is_written_smaller_and_read(reader):
    # bench.documents wrote a five-digit number wider than its narrow page past the right edge, so its
    # label held a 3 the page showed only in part: the number is now written smaller, wholly on the page.
    result = _generated_page(reader, "tally", 256, ((9608, 3352, 8929, 3592), (3495, 3578, 1141, 7729, 4836)))
    assert result.right == 1, result
