"""Accuracy on realistic pages, read exactly as the worker reads them: plain scans (single digits, numbers),
documents (forms, ruled paper, phone photos, tally sheets, PDFs) and pages with no handwriting at all.

    python -m bench.accuracy                     # 500 pages per kind, the current weights
    python -m bench.accuracy --pages 100 --kinds form,ruled

Per kind: pages with every number exactly right; numbers flagged for review; errors among the numbers not
flagged; for the pages without handwriting, pages that came out with no digit. The plain-resize column
is the original approach (whole page to 28x28) on the plain scans, for comparison.

    python -m bench.accuracy --causes            # also why each wrong number is wrong

--causes sorts the numbers read wrong: a digit the model also misreads in its original MNIST form (a
hard digit), a digit it reads right in MNIST form but not as the page gave it (fitting, a 1-bit scan,
blur, a neighbour's stroke), a digit lost or added by the page's segmentation, or a whole number lost
or added (printed text or a line read as a number); each as accepted, flagged or lost.
"""

from __future__ import annotations

import argparse
import collections
import io
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from core.errors import BadInput
from core.protocol import DIGIT_CLASSES
from trainer.scans import Scan, numbers, single_digits, test_digits

PREDICT_BATCH = 512
PLAIN = ("single", "numbers")
CAUSES = ("hard digit", "digit as the page gave it", "digit lost or added", "number lost or added")
CAUSE_HOW = ("accepted", "flagged", "lost")


@dataclass(frozen=True)
class Score:
    """What came back for one kind of page."""

    kind: str
    pages: int
    right: int  # pages whose numbers were all read exactly (for pages without handwriting: no digit at all)
    numbers: int
    flagged: int
    accepted_wrong: int  # numbers not flagged for review and read wrong
    plain: int = 0  # pages the plain resize read right (plain scans only)
    causes: collections.Counter | None = None  # (cause, "accepted", "flagged" or "lost") per number read wrong

    @property
    def share(self) -> float:
        return self.right / max(1, self.pages)

    @property
    def flagged_share(self) -> float:
        return self.flagged / max(1, self.numbers)

    @property
    def accepted_error(self) -> float:
        return self.accepted_wrong / max(1, self.numbers - self.flagged)


def scans_of(kind: str, count: int, *, seed: int) -> list[Scan]:
    from bench import documents

    if kind == "single":
        return single_digits(count, seed=seed)
    if kind == "numbers":
        return numbers(count, seed=seed + 1)
    return documents.pages(kind, count, seed=seed)


def score(predict, kind: str, scans: list[Scan], *, review_below: float, hard: np.ndarray | None = None) -> Score:
    """Every scan read with worker.normalise and worker.recognition.read, as a worker would. `hard`: per MNIST
    test digit, whether the model misreads it in its original form; given, each wrong number's cause is
    counted (Score.causes)."""
    from worker.normalise import normalise
    from worker.recognition import images_of, read

    right = total_numbers = flagged = accepted_wrong = plain_right = 0
    causes = collections.Counter() if hard is not None else None
    for scan in scans:
        try:
            pages = normalise(scan.data)
        except BadInput:
            pages = []
        probabilities = predict(images_of(pages))
        result = read(pages, probabilities, source=scan.name, model=None, sha256=None, worker=None, job=None,
                      review_below=review_below)
        if kind in PLAIN:
            expected_pages = [[label] for label in scan.labels]
        else:
            expected_pages = [[number for number in label.split(" ") if number] for label in scan.labels]
        read_pages = [[number["digits"] for number in page["numbers"]] for page in result["pages"]]
        read_pages += [[]] * (len(expected_pages) - len(read_pages))
        right += read_pages[:len(expected_pages)] == expected_pages
        expected = [number for page in expected_pages for number in page]
        sources = [number for number in scan.sources if number]  # MNIST test indexes, number by number
        for page_index, page in enumerate(result["pages"]):
            wanted = expected_pages[page_index] if page_index < len(expected_pages) else []
            before = sum(len(numbers) for numbers in expected_pages[:page_index])
            for position, number in enumerate(page["numbers"]):
                total_numbers += 1
                wrong = position >= len(wanted) or number["digits"] != wanted[position]
                if number["review"]:
                    flagged += 1
                elif wrong:
                    accepted_wrong += 1
                if wrong and causes is not None:
                    cause = "number lost or added" if position >= len(wanted) else "digit lost or added"
                    if position < len(wanted) and len(number["digits"]) == len(wanted[position]):
                        misread = [hard[index] for index, got, want in
                                   zip(sources[before + position], number["digits"], wanted[position]) if got != want]
                        cause = "hard digit" if all(misread) else "digit as the page gave it"
                    causes[cause, "flagged" if number["review"] else "accepted"] += 1
        if causes is not None:
            causes["number lost or added", "lost"] += sum(max(0, len(wanted) - len(got))
                                                          for wanted, got in zip(expected_pages, read_pages))
        total_numbers += max(0, len(expected) - sum(len(page["numbers"]) for page in result["pages"]))
        if kind in PLAIN:
            guesses = predict(plain_resize(scan.data))
            plain_right += sum(str(int(row[:DIGIT_CLASSES].argmax())) == label for row, label in zip(guesses, scan.labels))
    return Score(kind, len(scans), right, total_numbers, flagged, accepted_wrong, plain_right, causes)


def causes_line(causes: collections.Counter) -> str:
    """'hard digit 3 accepted, 1 flagged; ...' for the causes counted above zero."""
    parts = []
    for cause in CAUSES:
        counts = [f"{causes[cause, how]} {how}" for how in CAUSE_HOW if causes[cause, how] > 0]
        if counts:
            parts.append(f"{cause} {', '.join(counts)}")
    return "; ".join(parts)


def plain_resize(data: bytes) -> list[np.ndarray]:
    """The original predict script, page by page: whole image to L, 28x28, inverted, /255."""
    image = Image.open(io.BytesIO(data))
    pages = []
    for index in range(getattr(image, "n_frames", 1)):
        image.seek(index)
        grey = image.convert("L").resize((28, 28))
        pages.append((255 - np.asarray(grey, dtype=np.float32)) / 255.0)
    return pages


def predictor(weights: Path, version: str | None):
    """(predict(images) -> calibrated probabilities, version), as the worker's model holder makes it."""
    from core.device import configure
    from worker.holder import load_predictor

    configure("cpu")
    loaded = load_predictor(weights, version)

    def predict(images: list[np.ndarray]) -> np.ndarray:
        if not images:
            return np.zeros((0, DIGIT_CLASSES + 1), np.float32)
        batch = np.stack(images).astype(np.float32)
        return np.concatenate([loaded.predict(batch[start:start + PREDICT_BATCH])
                               for start in range(0, len(batch), PREDICT_BATCH)])

    return predict, loaded.version


def main(argv: list[str] | None = None) -> int:
    from bench import documents

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=500, help="pages per kind (default 500)")
    parser.add_argument("--kinds", default=",".join(PLAIN + documents.KINDS + documents.WITHOUT_DIGITS),
                        help="comma-separated kinds (default: all)")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--weights", type=Path, default=Path("weights"))
    parser.add_argument("--version", default=None, help="weights version (default: CURRENT)")
    parser.add_argument("--review-below", type=float, default=None, help="default: the service's setting")
    parser.add_argument("--causes", action="store_true", help="also count why each wrong number is wrong")
    options = parser.parse_args(argv)
    from core.settings import Settings

    review_below = options.review_below if options.review_below is not None else Settings.load().review_below
    predict, version = predictor(options.weights, options.version)
    print(f"weights {version}; seed {options.seed}; {options.pages} pages per kind; review below {review_below}")
    hard = None
    if options.causes:
        images, labels = test_digits()
        hard = predict(list(images[..., None]))[:, :DIGIT_CLASSES].argmax(axis=1) != labels
        print(f"the model misreads {hard.sum()} of the {len(labels)} MNIST test digits in their original form")
    print(f"{'kind':<10}{'pages':>6}{'all right':>11}{'flagged':>9}{'error among accepted':>22}{'plain resize':>14}")
    for kind in options.kinds.split(","):
        started = time.perf_counter()
        result = score(predict, kind, scans_of(kind, options.pages, seed=options.seed), review_below=review_below,
                       hard=hard)
        plain = f"{result.plain / max(1, result.pages):>13.2%}" if kind in PLAIN else f"{'':>13}"
        print(f"{kind:<10}{result.pages:>6}{result.share:>10.2%} {result.flagged_share:>8.2%} "
              f"{result.accepted_error:>21.2%} {plain}   ({time.perf_counter() - started:.0f} s)", flush=True)
        if result.causes is not None and +result.causes:
            print(" " * 10 + "wrong: " + causes_line(+result.causes), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
