"""Single-digit and number accuracy on realistic scans: the MNIST procedure against a plain resize, same model."""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from core.errors import BadInput
from trainer.scans import Scan, numbers, single_digits
from worker.normalise import normalise

PREDICT_BATCH = 512


@dataclass(frozen=True)
class Score:
    """Pages read right, out of pages, by each way of turning a scan into 28x28."""

    pages: int
    normalised: int
    plain: int

    @property
    def normalised_share(self) -> float:
        return self.normalised / max(1, self.pages)

    @property
    def plain_share(self) -> float:
        return self.plain / max(1, self.pages)


def plain_resize(data: bytes) -> list[np.ndarray]:
    """The original predict script, page by page: whole image to L, 28x28, inverted, /255."""
    image = Image.open(io.BytesIO(data))
    pages = []
    for index in range(getattr(image, "n_frames", 1)):
        image.seek(index)
        grey = image.convert("L").resize((28, 28))
        pages.append((255 - np.asarray(grey, dtype=np.float32)) / 255.0)
    return pages


def predict(model, images: list[np.ndarray]) -> np.ndarray:
    """Digits the model reads from (28, 28) images in 0..1, in batches."""
    if not images:
        return np.zeros(0, np.int64)
    batch = np.stack(images).astype(np.float32)[..., None]
    answers = [np.asarray(model(batch[start: start + PREDICT_BATCH], training=False)).argmax(axis=1)
               for start in range(0, len(batch), PREDICT_BATCH)]
    return np.concatenate(answers)


def score(model, scans: list[Scan]) -> Score:
    """Whole page strings compared exactly: a missed, extra or wrong digit makes the page wrong."""
    expected, read_counts, glyph_images = [], [], []
    plain_images = []
    for scan in scans:
        try:
            pages = normalise(scan.data)
        except BadInput:
            pages = []
        plain_images.extend(plain_resize(scan.data))
        for index, label in enumerate(scan.labels):
            expected.append(label)
            glyphs = pages[index].glyphs if index < len(pages) else ()
            read_counts.append(len(glyphs))
            glyph_images.extend(glyph.image for glyph in glyphs)
    read = predict(model, glyph_images)
    plain = predict(model, plain_images)
    normalised_right = plain_right = 0
    start = 0
    for label, count, plain_digit in zip(expected, read_counts, plain):
        text = "".join(str(int(digit)) for digit in read[start: start + count])
        start += count
        normalised_right += text == label
        plain_right += str(int(plain_digit)) == label
    return Score(len(expected), normalised_right, plain_right)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--singles", type=int, default=2000, help="single-digit scans")
    parser.add_argument("--numbers", type=int, default=500, help="scans of numbers of 2 to 5 digits")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--weights", type=Path, default=Path("weights"))
    parser.add_argument("--version", default=None, help="weights version (default: CURRENT)")
    options = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from core.weights import load

    model, version = load(options.weights, options.version)
    started = time.perf_counter()
    singles = score(model, single_digits(options.singles, seed=options.seed))
    written = score(model, numbers(options.numbers, seed=options.seed + 1))
    print(f"weights {version}; seed {options.seed}; {time.perf_counter() - started:.0f}s")
    print(f"{'scan set':<28}{'pages':>7}{'MNIST procedure':>18}{'plain resize':>15}")
    for title, result in (("single digits", singles), ("numbers of 2-5 digits", written)):
        print(f"{title:<28}{result.pages:>7}{result.normalised_share:>17.2%} {result.plain_share:>14.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
