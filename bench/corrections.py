"""Does the review teach the next model? Numbers flagged for review on generated pages of every kind, decided
as a person would (each digit labelled with what was written), split by page: half become samples for
`digits train --extra`, half are held back. The current model and the next one, fine-tuned from it with
those samples, are scored on the held-back digits (the flagged digits of pages neither has seen).

    python -m bench.corrections                 # 800 pages per kind, two epochs of fine-tuning on 20,000 images
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench import documents
from bench.accuracy import predictor
from core.errors import BadInput
from core.settings import SHIPPED_WEIGHTS

KINDS = ("form", "ruled", "photo", "tally")


def flagged_digits(predict, *, count: int, seed: int, review_below: float) -> list[tuple[str, np.ndarray, str]]:
    """(page name, the 28x28 images of a flagged number's digits, what was written) for every number flagged
    for review that was read with as many digits as were written (a person's correction then labels each)."""
    from worker.normalise import normalise
    from worker.recognition import Pending, glyph_images, images_of, read

    found = []
    for kind in KINDS:
        for scan in documents.pages(kind, count, seed=seed):
            try:
                pages = normalise(scan.data)
            except BadInput:
                continue
            images = images_of(pages)
            result = read(pages, predict(images), source=scan.name, model=None, sha256=None, worker=None, job=None,
                          review_below=review_below)
            by_box = glyph_images(Pending(pages=pages, images=np.asarray(images)))
            for page, label in zip(result["pages"], scan.labels):
                written = [number for number in label.split(" ") if number]
                for number, truth in zip(page["numbers"], written):
                    if number["review"] and len(number["digits"]) == len(truth):
                        glyphs = [by_box.get(tuple(detail["box"])) for detail in number["details"]]
                        if all(glyph is not None for glyph in glyphs):
                            found.append((f"{kind}/{scan.name}", np.stack(glyphs), truth))
    return found


def scores(predict, held: list[tuple[str, np.ndarray, str]], *, only: set[tuple[int, int]] | None = None
           ) -> tuple[float, int]:
    """(share of the held-back digits read right, how many were scored); `only`: (number, position) of the
    digits to score."""
    right = total = 0
    for number, (_, images, truth) in enumerate(held):
        read = "".join(str(int(row[:10].argmax())) for row in predict(list(images)))
        for position, (got, wanted) in enumerate(zip(read, truth)):
            if only is None or (number, position) in only:
                right += got == wanted
                total += 1
    return right / max(1, total), total


def misread(predict, held: list[tuple[str, np.ndarray, str]]) -> set[tuple[int, int]]:
    """The held-back digits a person corrects: those the model read as another digit."""
    found = set()
    for number, (_, images, truth) in enumerate(held):
        read = "".join(str(int(row[:10].argmax())) for row in predict(list(images)))
        found |= {(number, position) for position, (got, wanted) in enumerate(zip(read, truth)) if got != wanted}
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.corrections", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=800, help="pages per kind (default 800)")
    parser.add_argument("--seed", type=int, default=31)
    parser.add_argument("--review-below", type=float, default=0.95,
                        help="flag below this confidence (default 0.95: a reviewer who looks at more)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--limit", type=int, default=20_000, help="MNIST training images for the fine-tuning")
    parser.add_argument("--weights", type=Path, default=SHIPPED_WEIGHTS)
    options = parser.parse_args(argv)

    predict, current = predictor(options.weights, None)
    found = flagged_digits(predict, count=options.pages, seed=options.seed, review_below=options.review_below)
    pages = sorted({name for name, _, _ in found})
    taught = set(pages[::2])  # half the pages' numbers are reviewed before the next model trains...
    extra = [entry for entry in found if entry[0] in taught]
    held = [entry for entry in found if entry[0] not in taught]  # ...the other half after it
    print(f"{len(found)} flagged numbers read with the right count on {len(pages)} pages "
          f"({options.pages} per kind of {', '.join(KINDS)}, seed {options.seed}); "
          f"{sum(len(t) for _, _, t in extra)} digits taught, {sum(len(t) for _, _, t in held)} held back", flush=True)

    from PIL import Image

    with tempfile.TemporaryDirectory(prefix="digits-corrections-") as scratch:
        samples, weights = Path(scratch) / "samples", Path(scratch) / "weights"
        for number, (_, images, truth) in enumerate(extra):
            for position, (image, digit) in enumerate(zip(images, truth)):
                (samples / digit).mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.round(255 * image).astype(np.uint8)).save(samples / digit / f"{number}-{position}.png")
        weights.mkdir()
        shutil.copytree(options.weights / current, weights / current)
        (weights / "CURRENT").write_text(current + "\n")
        command = [sys.executable, "-m", "digits", "train", "--init", current, "--extra", str(samples),
                   "--epochs", str(options.epochs), "--limit", str(options.limit), "--weights", str(weights),
                   "--version", "next", "--promote", "--device", "cpu"]
        print("training: " + " ".join(command[2:]), flush=True)
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        next_predict, _ = predictor(weights, "next")
        corrected = misread(predict, held)
        flagged_before, flagged_after = scores(predict, held), scores(next_predict, held)
        corrected_before, corrected_after = (scores(model, held, only=corrected) for model in (predict, next_predict))
        card = (weights / "next" / "model.json").read_text()
    import json

    data = json.loads(card)["data"]
    print(f"held-back corrections (flagged digits the current model misread, {corrected_before[1]}) read right: "
          f"current {100 * corrected_before[0]:.1f} %  ->  next {100 * corrected_after[0]:.1f} %")
    print(f"all held-back flagged digits ({flagged_before[1]}) read right: current {100 * flagged_before[0]:.1f} %  "
          f"->  next {100 * flagged_after[0]:.1f} %")
    print(f"next model: {data['extra_images']} extra samples in {data['train_images']} training images, "
          f"MNIST test {100 * json.loads(card)['test_accuracy']:.2f} % (its extra digits come from the MNIST test "
          "split, which the bench pages are drawn from: the next model here is an experiment, never published)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
