"""How the model's answers on a page's glyphs become its numbers (worker.recognition.read): printed figures
among printed words are left out, handwriting beside a printed label stays, and a number that loses a mark
from between its digits is flagged for review rather than dropped or trusted."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import printed_by

from core.weights import GLYPH_SHAPE
from worker.normalise import Glyph, Number, Page
from worker.recognition import read

pytestmark = pytest.mark.fast

BLANK = np.zeros(GLYPH_SHAPE, np.float32)


def page_of(*numbers_on_lines: tuple[int, list[tuple[str, tuple[int, int, int, int]]]]
            ) -> tuple[list[Page], np.ndarray]:
    """A page of numbers, each (its text line, its glyphs), whose glyphs the model reads as given: a digit
    ("7"), or "x" for not a digit."""
    numbers, rows = [], []
    for line, glyphs in numbers_on_lines:
        boxes = [box for _, box in glyphs]
        numbers.append(Number(tuple(Glyph(BLANK, box) for box in boxes),
                              (min(b[0] for b in boxes), min(b[1] for b in boxes),
                               max(b[2] for b in boxes), max(b[3] for b in boxes)), line))
        for answer, _ in glyphs:
            row = np.full(11, 0.001, np.float32)
            row[10 if answer == "x" else int(answer)] = 0.99
            rows.append(row)
    return [Page(0, tuple(numbers))], np.stack(rows)


def numbers_read(pages, probabilities) -> list[tuple[str, bool]]:
    result = read(pages, probabilities, source="p.png", model=None, sha256=None, worker=None, job=None,
                  review_below=0.8)
    return [(number["digits"], number["review"]) for number in result["pages"][0]["numbers"]]


def letters(left: int, top: int, count: int, *, height: int = 30, width: int = 20) -> list:
    return [("x", (left + i * (width + 4), top, left + i * (width + 4) + width, top + height)) for i in range(count)]


def test_printed_figures_among_printed_words_are_not_handwriting():
    # "Invoice form No. 558": words, then figures as tall as the words' capitals, in a number of their own.
    title = letters(10, 10, 12, height=22) + letters(320, 10, 2, height=30)
    figures = [(digit, (400 + i * 24, 10, 420 + i * 24, 40)) for i, digit in enumerate("558")]
    assert numbers_read(*page_of((0, title), (0, figures))) == []


def test_handwriting_beside_a_printed_label_is_read():
    # "Amount:" in print 30 px tall, and a handwritten 12 three times that height on the same line.
    label = letters(10, 130, 7, height=30)
    written = [("1", (230, 100, 280, 190)), ("2", (300, 100, 370, 190))]
    assert numbers_read(*page_of((0, label), (0, written))) == [("12", False)]


def test_a_mark_lost_from_between_digits_flags_the_number_and_keeps_it():
    # A handwritten 5 8 ? 0 whose third mark (a 1 joined to a ruled line) the model rejects.
    digits = [(answer, (i * 60, 100, i * 60 + 50, 170)) for i, answer in enumerate("58x0")]
    assert numbers_read(*page_of((0, digits))) == [("580", True)]


def test_a_rejected_mark_at_a_numbers_end_leaves_it_unflagged():
    digits = [(answer, (i * 60, 100, i * 60 + 50, 170)) for i, answer in enumerate("47")]
    stray = [("x", (200, 160, 215, 168))]  # a speck after the number
    assert numbers_read(*page_of((0, digits + stray))) == [("47", False)]


def test_a_mark_as_tall_as_the_digits_left_out_at_the_end_flags_the_number():
    # 5 then three touching digits the model could neither read whole nor take apart.
    digits = [("5", (0, 100, 50, 170)), ("x", (60, 95, 220, 170))]
    assert numbers_read(*page_of((0, digits))) == [("5", True)]


def test_a_line_of_printed_figures_alone_is_judged_by_the_pages_printed_text():
    # A printed heading, then "12345" printed at the same size on a line of its own, then handwriting.
    heading = letters(10, 10, 10, height=30)
    figures = [(digit, (10 + i * 24, 80, 30 + i * 24, 110)) for i, digit in enumerate("12345")]
    written = [("4", (40, 200, 110, 290)), ("2", (130, 200, 200, 290))]
    assert numbers_read(*page_of((0, heading), (1, figures), (2, written))) == [("42", False)]


def test_a_short_printed_label_is_enough_to_tell_its_printed_figures():
    # A form's "No 7": two printed letters and a printed figure as tall, beside a large handwritten 45.
    label = letters(10, 130, 2, height=30)
    printed = [("7", (70, 130, 90, 160))]
    written = [("4", (230, 100, 290, 190)), ("5", (300, 100, 360, 190))]
    assert numbers_read(*page_of((0, label + printed), (0, written))) == [("45", False)]


def test_touching_handwritten_digits_the_model_rejects_whole_are_not_printed_words():
    # A handwritten 086 whose 8 and 6 touch: rejected whole, read as an 8 and a 6 once cut. With one
    # printed letter on the line, the whole must not count as a printed word as tall as the handwriting.
    label = letters(10, 130, 1, height=36)
    pages, probabilities = page_of((0, label + [("0", (200, 100, 260, 180))]))
    touching = Glyph(BLANK, (270, 100, 390, 180), pieces=(Glyph(BLANK, (270, 100, 330, 180)),
                                                          Glyph(BLANK, (330, 100, 390, 180))))
    number = pages[0].numbers[0]
    pages = [Page(0, (Number(number.glyphs + (touching,), (10, 100, 390, 180), 0),))]
    rows = [np.full(11, 0.001, np.float32) for _ in range(3)]
    rows[0][10], rows[1][8], rows[2][6] = 0.99, 0.99, 0.99
    assert numbers_read(pages, np.concatenate([probabilities, np.stack(rows)])) == [("086", False)]


def test_marks_that_merged_only_on_the_reduced_page_stand_as_their_digits():
    # A 1 and a 4 written close: one mark on the reduced page, read whole as a sure 4, but its pieces have
    # paper between them at full size and are each a sure digit.
    def merged(gap: int) -> tuple[list[Page], np.ndarray]:
        whole = Glyph(BLANK, (100, 100, 190, 180), pieces=(Glyph(BLANK, (100, 100, 120, 180)),
                                                           Glyph(BLANK, (120 + gap, 100, 190, 180))))
        rows = [np.full(11, 0.001, np.float32) for _ in range(3)]
        rows[0][4], rows[1][1], rows[2][4] = 0.99, 0.99, 0.99
        return [Page(0, (Number((whole,), whole.box, 0),))], np.stack(rows)

    assert numbers_read(*merged(gap=6)) == [("14", False)]
    assert numbers_read(*merged(gap=0)) == [("4", False)]  # cut through ink: the whole, read surely, stands


def test_handwriting_not_much_taller_than_a_large_label_is_read_when_it_leaves_the_labels_rows():
    # "Account No." printed 48 px tall, and a handwritten 7346 only 1.4 times that, written in a box
    # beside it from a third of the label's height above it: not the label's printed figures.
    label = letters(10, 120, 4, height=48, width=30)
    written = [(digit, (300 + i * 60, 100, 350 + i * 60, 168)) for i, digit in enumerate("7346")]
    assert numbers_read(*page_of((0, label), (0, written))) == [("7346", False)]
    in_rows = [(digit, (300 + i * 40, 120, 330 + i * 40, 168)) for i, digit in enumerate("7346")]
    assert numbers_read(*page_of((0, label), (0, in_rows))) == []  # figures within the label's rows: printed


def test_a_much_smaller_or_taller_mark_at_a_numbers_end_is_not_one_of_its_digits():
    # The "e" of a label ("Balance:"), its other letters too small to be looked at, read as an 8 next to
    # a handwritten 104 in a box; and a full stop after it. A digit half the height of its neighbours
    # is not handwriting.
    marks = [("8", (255, 285, 274, 315)), ("1", (366, 244, 406, 318)), ("0", (420, 246, 504, 324)),
             ("4", (512, 254, 564, 324)), ("1", (575, 310, 585, 322))]
    assert numbers_read(*page_of((0, marks))) == [("104", False)]
    mixed = [("1", (0, 100, 20, 170)), ("7", (30, 100, 80, 170)), ("0", (90, 125, 130, 170))]
    assert numbers_read(*page_of((0, mixed))) == [("170", False)]  # a short 0, still two thirds as tall
    side = [("5", (0, 100, 50, 190)), ("1", (60, 105, 80, 187)), ("7", (100, 40, 112, 201))]
    assert numbers_read(*page_of((0, side))) == [("51", False)]  # a box's side, twice their height


def test_a_number_in_small_print_beside_handwriting_is_left_out():
    # A form's printed "No. 6945", 25 px tall, its label too small to be looked at, above a handwritten 6606.
    printed = [(digit, (400 + i * 20, 10, 416 + i * 20, 35)) for i, digit in enumerate("6945")]
    written = [(digit, (100 + i * 70, 200, 160 + i * 70, 290)) for i, digit in enumerate("6606")]
    assert numbers_read(*page_of((0, printed), (1, written))) == [("6606", False)]
    # Two handwritten numbers, one two thirds as tall as the other: both stay.
    smaller = [(digit, (100 + i * 50, 400, 140 + i * 50, 460)) for i, digit in enumerate("27")]
    assert numbers_read(*page_of((1, written), (2, smaller))) == [("6606", False), ("27", False)]
    # Small figures on the handwriting's own line (cents written small) stay, flagged.
    cents = [(digit, (420 + i * 20, 200, 436 + i * 20, 235)) for i, digit in enumerate("50")]
    assert numbers_read(*page_of((1, written), (1, cents))) == [("6606", False), ("50", True)]
    # A lone tall bar read as a 1 (a margin, a box's side) is no measure for the handwriting beside it.
    bar = [("1", (600, 0, 610, 380))]
    assert numbers_read(*page_of((1, written), (1, bar))) == [("6606", False), ("1", False)]


def test_handwriting_on_a_line_without_words_is_kept_whole_when_some_digits_are_small():
    # A form's title and a label below the box ("Formy: ____") in print 45 px tall, alone on their lines;
    # the handwritten 0149 in the box has a 0 and a 1 no taller than that print would allow for figures,
    # beside a 4 and a 9 that are taller: all four are handwriting.
    title = letters(10, 10, 8, height=45)
    label = letters(10, 600, 5, height=45)
    written = [("0", (300, 400, 370, 464)), ("1", (388, 388, 402, 454)), ("4", (421, 384, 489, 462)),
               ("9", (503, 398, 549, 468))]
    assert numbers_read(*page_of((0, title), (1, written), (2, label))) == [("0149", False)]


@pytest.mark.parametrize("whole, expected", [(10, "31"), (8, "8")], ids=["rejected whole", "read whole"])
def test_last_resort_pieces_stand_only_for_a_mark_rejected_whole(whole, expected):
    # A mark wider than tall only at full size (a 3 and a 1 touching on a ruled line, or a broad 8), cut
    # as a last resort: its pieces, each a sure digit, stand only when the model rejects it whole.
    mark = Glyph(BLANK, (100, 100, 180, 166), pieces=(Glyph(BLANK, (100, 100, 140, 166)),
                                                      Glyph(BLANK, (146, 100, 180, 166))), last_resort=True)
    rows = [np.full(11, 0.001, np.float32) for _ in range(3)]
    rows[0][whole], rows[1][3], rows[2][1] = 0.95, 0.99, 0.99
    assert numbers_read([Page(0, (Number((mark,), mark.box, 0),))], np.stack(rows)) == [(expected, False)]


def test_a_form_fields_length_picks_how_a_wide_mark_is_cut():
    # A field of 3 digits written 1, then 0 and 5 touching: the wide mark is rejected whole, and its usual
    # cut gives three pieces (a 6 the model doubts, a 2, a 5). Without a length it is left out; with the
    # field's length 3 its cut into two (0 and 5) stands, and with [1, 4] nothing changes.
    def sure(digit: int, confidence: float = 0.99) -> np.ndarray:
        row = np.full(11, 0.001, np.float32)
        row[digit] = confidence
        return row

    wide = Glyph(BLANK, (200, 100, 380, 160),
                 pieces=tuple(Glyph(BLANK, (200 + 60 * i, 100, 260 + 60 * i, 160)) for i in range(3)),
                 cuts=((Glyph(BLANK, (200, 100, 290, 160)), Glyph(BLANK, (290, 100, 380, 160))),))
    one = Glyph(BLANK, (140, 100, 170, 160))
    pages = [Page(0, (Number((one, wide), (140, 100, 380, 160), 0),))]
    rows = np.stack([sure(1), sure(10, 0.9), sure(6, 0.5), sure(2, 0.93), sure(5), sure(0, 0.97), sure(5, 0.98)])

    def field(lengths):
        result = read(pages, rows, source="f.png", model=None, sha256=None, worker=None, job=None, review_below=0.8,
                      lengths=lengths)
        return result["pages"][0]["digits"]

    assert field(None) == "1"
    assert field([(3, 3)]) == "105"
    assert field([(4, 4)]) == "1625"  # four digits: the usual cut
    assert field([(1, 4)]) == "1"  # the count read already fits


def test_the_worker_warm_up_loads_the_reader_whatever_the_limits():
    assert printed_by("import sys\n"
                      "from core.settings import Settings\n"
                      "from worker import recognition\n"
                      "recognition.warm_up(Settings().replace(max_pixels=100))\n"  # limits below its page
                      "print('worker.normalise' in sys.modules, 'scipy.ndimage' in sys.modules)\n") == ["True", "True"]
