"""From image bytes to a result object: normalise (in the caller's thread), then recognise in the batcher."""

from __future__ import annotations

import hashlib
import io
import math
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

import numpy as np

from core import protocol
from core.errors import BadInput, Transient
from core.weights import GLYPH_SHAPE
from worker.batching import Batcher

INFERENCE_TIMEOUT_SECONDS = 300.0


@dataclass
class Pending:
    """A normalised file: its pages, its glyph images, and once queued the future of their probabilities."""

    pages: list  # list[worker.normalise.Page]
    images: np.ndarray
    future: Future | None = None


def prepare(data: bytes, settings, template=None) -> Pending:
    """Normalise a scan (in the caller's thread, beside inference) within the settings' limits, a form's
    fields each from its own region when a template (core.templates.Template) reads it; raises BadInput
    subclasses."""
    from worker.fields import regions
    from worker.normalise import normalise

    pages = normalise(data, max_pixels=settings.max_pixels, max_bytes=settings.max_image_bytes,
                      pdf_dpi=settings.pdf_dpi, regions=None if template is None else regions(template))
    glyphs = images_of(pages)
    images = np.stack(glyphs).astype(np.float32) if glyphs else np.zeros((0, *GLYPH_SHAPE), dtype=np.float32)
    return Pending(pages=list(pages), images=images)


def warm_up(settings) -> None:
    """Read one small generated page, so that loading the reader (scipy.ndimage, Pillow's formats) and its
    first calls happen before the worker takes jobs, not in its first job."""
    from PIL import Image, ImageDraw

    Image.init()
    page = Image.new("L", (120, 80), 255)
    ImageDraw.Draw(page).line([(60, 15), (60, 65)], fill=0, width=6)
    buffer = io.BytesIO()
    page.save(buffer, "PNG")
    try:
        prepare(buffer.getvalue(), settings)
    except BadInput:  # limits set below even this page: the reader is loaded all the same
        pass


def submit(batcher: Batcher, pending: list[Pending]) -> None:
    """Queue files together, each as one request (all its glyphs on one weights version)."""
    for item, future in zip(pending, batcher.submit_many([item.images for item in pending])):
        item.future = future


class Feeder:
    """Hands normalised files to the batcher in groups of about a batch: big batches, while later files
    still decode during the inference of earlier ones."""

    def __init__(self, batcher: Batcher, *, batch_size: int):
        self.batcher = batcher
        self.batch_size = batch_size
        self.unsent: list[Pending] = []
        self.images = 0

    def add(self, pending: Pending) -> None:
        self.unsent.append(pending)
        self.images += len(pending.images)
        if self.images >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        submit(self.batcher, self.unsent)
        self.unsent, self.images = [], 0


def start(data: bytes, batcher: Batcher, settings, template=None) -> Pending:
    """Normalise a scan and queue its glyphs."""
    pending = prepare(data, settings, template)
    submit(batcher, [pending])
    return pending


def finish(pending: Pending, *, source: str, sha256: str, worker: str, job: str | None,
           review_below: float, template=None) -> dict[str, Any]:
    """Wait for the probabilities and build the result object (with the form's fields when a template
    (core.templates.Template) reads it)."""
    try:
        probabilities, version = pending.future.result(timeout=INFERENCE_TIMEOUT_SECONDS)
    except FutureTimeout:
        raise Transient(f"inference did not answer within {INFERENCE_TIMEOUT_SECONDS:.0f}s") from None
    result = read(pending.pages, probabilities, source=source, model=version, sha256=sha256, worker=worker,
                  job=job, review_below=review_below,
                  lengths=None if template is None else [field.length for field in template.fields])
    if template is not None:
        from worker.fields import apply

        result = apply(template, result)
    return result


TEXT_MARKS = 2  # printed characters the model rejects on a text line (or a page): it holds printed words
TEXT_HEIGHT = 1.5  # digits no taller than this times the median printed mark beside them are printed figures
SMALL = protocol.SMALL_DIGIT  # a mark at a number's end under this share of the height of its digits is not one
TALL = 1.6  # ... nor one over this many times their height (a box's side, a margin)
BAND_SLACK = 0.35  # ... when they keep within the rows of those marks, give or take this share of their height
PRIOR_SPAN = 0.2  # marks this much wider than tall (and more) are as likely two digits as one
CUT_SURE = 0.8  # a rejected mark stands as its pieces only when each is a digit this likely
FLAT = 0.3  # a piece no taller than this share of its mark (and twice as long as high) is flat


def read(pages: list, probabilities: np.ndarray, *, source: str, model: str | None, sha256: str | None,
         worker: str | None, job: str | None, review_below: float,
         lengths: list[tuple[int, int]] | None = None) -> dict[str, Any]:
    """The result object from normalised pages and the (calibrated) probabilities of their glyphs, in order:
    each mark read whole or cut (_reading); printed figures left out by the size of the printed words around
    them; glyphs the model calls "not a digit" leave their number, and protocol.number_result says when a
    number is flagged for review. For a form, `lengths` gives each page's (each field's) fewest and most
    digits, which pick among the ways its marks can be cut (_to_length), and each digit's details keep every
    digit's probability in memory (protocol.CHOICES) for the form's checks."""
    results, offset = [], 0
    for position, page in enumerate(pages):
        found = []  # per number: its text line, its glyphs read whole, and per glyph what stands and the options
        for number in page.numbers:
            wholes, readings = [], []
            for glyph in number.glyphs:
                boxes = [read.box for read in glyph.model_inputs]
                read_as = protocol.digit_details(probabilities[offset:offset + len(boxes)], boxes, page=page.index,
                                                 choices=lengths is not None)
                offset += len(boxes)
                options, start = [read_as[:1]], 1
                for cut in (glyph.pieces, *glyph.cuts):
                    options.append(read_as[start:start + len(cut)])
                    start += len(cut)
                reading = _reading(read_as[0], options[1], last_resort=glyph.last_resort)
                # A mark that stands as the digits it was cut into is handwriting, whatever it was whole.
                cut = reading[0] is not read_as[0]
                wholes.append((read_as[0], 0 if cut else _printed_marks(read_as[0], options[1])))
                readings.append((reading, [option for option in options if option]))
            found.append((number.line, wholes, readings))
        if lengths is not None:
            _to_length([readings for _, _, readings in found], lengths[position])
        numbers, lines = [], []
        # Printed words are judged whole (a word cut into pieces can look like weak digits), by text line,
        # and where a line holds no words, by the printed text of the whole page.
        page_text = _printed_text([whole for _, wholes, _ in found for whole in wholes], band=False)
        for line, _, readings in found:
            on_line = [whole for other, wholes, _ in found if other == line for whole in wholes]
            text = _printed_text(on_line, band=True) or page_text
            details = [detail for reading, _ in readings for detail in reading]
            number = protocol.number_result(_without_stray_ends(_without_printed(details, text)),
                                            review_below=review_below)
            if number is not None:
                numbers.append(number)
                lines.append(line)
        if lengths is None:  # a form field's region holds its own handwriting, not the page's print
            numbers = _without_print_sized(numbers, lines)
        results.append(protocol.page_result(page.index, numbers))
    return protocol.result(source, pages=results, model=model, sha256=sha256, worker=worker, job=job)


SWITCH = 0.1  # what reading a mark otherwise than _reading chose costs, besides the sureness it loses


def _to_length(numbers: list[list[tuple[list, list]]], length: tuple[int, int]) -> None:
    """A form field's readings (per number, per mark: (what stands, the ways it can be read: whole, cut into
    its pieces or otherwise)), changed in place where the field holds too few or too many digits for its
    template's length: the fewest and surest changes that give it a count within the length; none when no
    way does."""
    marks = [mark for readings in numbers for mark in readings]
    low, high = length
    if low <= sum(_digits(reading) for reading, _ in marks) <= high:
        return
    best: dict[int, tuple[float, list]] = {0: (0.0, [])}  # digits so far -> (cost, the reading of each mark)
    for reading, options in marks:
        step: dict[int, tuple[float, list]] = {}
        for option in options:
            same = [id(detail) for detail in option] == [id(detail) for detail in reading]
            cost = 0.0 if same else SWITCH + max(0.0, _sureness(reading) - _sureness(option))
            for count, (so_far, chosen) in best.items():
                total = count + _digits(option)
                if total <= high and (total not in step or so_far + cost < step[total][0]):
                    step[total] = (so_far + cost, chosen + [reading if same else option])
        best = step
    fitting = [best[count] for count in range(low, high + 1) if count in best]
    if not fitting:
        return
    chosen = iter(min(fitting, key=lambda entry: entry[0])[1])
    for readings in numbers:
        readings[:] = [(next(chosen), options) for _, options in readings]


def _digits(reading: list[dict[str, Any]]) -> int:
    return sum(not _rejected(detail) for detail in reading)


def _sureness(reading: list[dict[str, Any]]) -> float:
    """How sure the model is of a reading: the mean log confidence of its digits (of "not a digit" when it
    holds none)."""
    kept = [detail["confidence"] for detail in reading if not _rejected(detail)]
    if not kept:
        return math.log(max(reading[0]["not_a_digit"], 1e-6))
    return float(np.mean(np.log(np.maximum(kept, 1e-6))))


def _rejected(detail: dict[str, Any]) -> bool:
    return detail["confidence"] < detail["not_a_digit"]


def _height(detail: dict[str, Any]) -> int:
    return detail["box"][3] - detail["box"][1]


def _flat(piece: dict[str, Any], whole: dict[str, Any]) -> bool:
    """A piece of a mark that is what is left of a ruled line under it: low and long."""
    width = piece["box"][2] - piece["box"][0]
    return _height(piece) <= FLAT * _height(whole) and width >= 2 * _height(piece)


def _printed_marks(whole: dict[str, Any], pieces: list[dict[str, Any]]) -> int:
    """How many printed characters a mark the model rejects may hold: one, or when it comes cut (letters run
    together) its rejected pieces that are not flat (a ruled line's remains under handwriting are flat)."""
    if not _rejected(whole):
        return 0
    return max(1, sum(_rejected(piece) and not _flat(piece, whole) for piece in pieces))


def _printed_text(line: list[tuple[dict[str, Any], int]], *, band: bool) -> tuple[float, float, float] | None:
    """Where the figures of printed text on this line would be (None when it holds no printed words): no
    taller than TEXT_HEIGHT times the marks the model rejects there, read whole, when they hold a word's
    worth of characters; and with `band`, within the rows those words take (a little more), as print
    keeps to its line. (height, top, bottom)."""
    words = [whole for whole, characters in line if characters]
    if sum(characters for _, characters in line) < TEXT_MARKS:
        return None
    height = float(np.median([_height(whole) for whole in words]))
    if not band:
        return TEXT_HEIGHT * height, -np.inf, np.inf
    slack = BAND_SLACK * height
    return (TEXT_HEIGHT * height, min(whole["box"][1] for whole in words) - slack,
            max(whole["box"][3] for whole in words) + slack)


def _without_printed(details: list[dict[str, Any]], text: tuple[float, float, float] | None) -> list[dict[str, Any]]:
    """Leave out the figures of printed text (a form's "No. 600", a date in a letterhead): digits no taller
    than the printed words on their line, and within their rows, make them. Handwriting beside a printed
    label is larger than the label's print, and reaches above or below it. On a line without words (judged
    by the page's printed text), a number whose tallest digit passes for handwriting is handwriting whole:
    handwritten digits differ in height, printed figures do not. A lone rejected mark inside handwriting (a
    stroke joined to a line) leaves its number alone, flagged for review (protocol.number_result)."""
    if text is None:
        return details
    height, top, bottom = text
    if top == -np.inf and any(not _rejected(detail) and _height(detail) > height for detail in details):
        return details  # no words on its line: a number is print or handwriting whole, and print is even
    return [detail for detail in details if _rejected(detail) or _height(detail) > height
            or detail["box"][1] < top or detail["box"][3] > bottom]


def _without_stray_ends(details: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Leave out marks at either end of a number under SMALL or over TALL times the height of its digits:
    the last letter of a printed label, a full stop, a speck, a box's side; a handwritten digit is not
    that much smaller or taller than the digits beside it."""
    digits = [detail for detail in details if not _rejected(detail)]
    if len(digits) < 3:
        return details
    median = float(np.median([_height(detail) for detail in digits]))

    def odd(detail: dict[str, Any]) -> bool:
        return _rejected(detail) or not SMALL * median <= _height(detail) <= TALL * median

    start, stop = 0, len(details)
    while start < stop and odd(details[start]):
        start += 1
    while stop > start and odd(details[stop - 1]):
        stop -= 1
    # Rejected marks outside stay: they leave the number in protocol.number_result, which flags it when due.
    return [detail for index, detail in enumerate(details) if start <= index < stop or _rejected(detail)]


def _without_print_sized(numbers: list[dict[str, Any]], lines: list[int]) -> list[dict[str, Any]]:
    """Numbers under SMALL times as tall as the page's tallest handwritten number (by the median height of
    their digits; one of two digits or more, not flagged, so that a lone bar or a box's side is never the
    measure) are small print: on a text line of their own (a form's "No. 6945") they are left out; on that
    number's line (what is left of a label, or cents written small) they stay, flagged for review."""
    measures = [index for index, number in enumerate(numbers) if len(number["details"]) >= 2 and not number["review"]]
    if len(numbers) < 2 or not measures:
        return numbers
    heights = [float(np.median([_height(detail) for detail in number["details"]])) for number in numbers]
    tallest = max(measures, key=lambda index: heights[index])
    kept = []
    for number, height, line in zip(numbers, heights, lines):
        if height < SMALL * heights[tallest]:
            if line != lines[tallest]:
                continue
            number["review"] = True
        kept.append(number)
    return kept


def glyph_images(pending: Pending) -> dict[tuple[int, ...], np.ndarray]:
    """A file's glyph images by their box (whole marks, their pieces and other cuts), to find again the image
    of each digit a result reports by its box."""
    boxes = [read.box for page in pending.pages for glyph in page.glyphs for read in glyph.model_inputs]
    return {tuple(int(value) for value in box): image for box, image in zip(boxes, pending.images)}


def images_of(pages: list) -> list[np.ndarray]:
    """The images the model reads for normalised pages, in the order read() expects (Glyph.model_inputs)."""
    return [read.image for page in pages for glyph in page.glyphs for read in glyph.model_inputs]


def _reading(whole: dict[str, Any], pieces: list[dict[str, Any]], *, last_resort: bool = False
             ) -> list[dict[str, Any]]:
    """A mark read whole, or as its pieces (touching digits) when the model is surer of every piece than of
    the whole, by a margin that shrinks as the mark gets wider and is gone once it is 1.2 times as wide as
    tall: marks about as wide as tall are mostly one digit (a 0, a broad 2). `last_resort` pieces (a mark
    only wide at full size) stand only for a mark the model rejects whole."""
    if not pieces:
        return [whole]

    def sureness(detail: dict[str, Any]) -> float:
        return 0.0 if _rejected(detail) else detail["confidence"]

    left, top, right, bottom = whole["box"]
    aspect = (right - left) / max(1, bottom - top)
    prior = min(1.0, max(0.1, (aspect - 1.0) / PRIOR_SPAN))
    # A flat piece the model rejects is what is left of a ruled line the writing sat on: it does not count
    # against the digits beside it (it leaves the number later, as any rejected mark does).
    counted = [piece for piece in pieces if not (_rejected(piece) and _flat(piece, whole))]
    if not counted:
        return [whole]
    # A mark the model rejects is taken apart only into digits it is sure of.
    sure = min(piece["confidence"] for piece in counted) >= CUT_SURE
    if last_resort:
        return pieces if _rejected(whole) and sure else [whole]
    if _rejected(whole) and not sure:
        return [whole]
    if _apart(pieces) and min(map(sureness, pieces)) >= CUT_SURE:
        return pieces  # paper between them at full size: marks that merged only on the reduced page
    return pieces if prior * min(map(sureness, counted)) > sureness(whole) else [whole]


def _apart(pieces: list[dict[str, Any]]) -> bool:
    """Whether paper separates each piece from the next: their boxes, tight on their ink at full size, leave
    a column free between them."""
    return all(left["box"][2] < right["box"][0] for left, right in zip(pieces, pieces[1:]))


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
