"""How good a model is: MNIST test accuracy per class (`digits eval`), and the figures the promotion gate compares."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from core import calibration
from core import weights as weights_store
from core.calibration import NOT_A_DIGIT
from core.device import configure
from core.errors import BadInput
from core.protocol import DIGIT_CLASSES
from trainer import data as mnist_data

log = logging.getLogger(__name__)

# The realistic scan set of the gate: generated pages of MNIST test digits (never trained on), read the
# way the worker reads them. Fixed seed and size, so every model is judged on the same pages.
SCAN_SET_SEED = 2026
SCAN_SET_SINGLE_DIGITS = 200
SCAN_SET_NUMBERS = 50
PREDICT_BATCH = 512


def accuracy_report(labels: np.ndarray, predicted: np.ndarray) -> dict:
    """Accuracy, per digit, and the confusion matrix: a row per true digit, a column per answer (the
    eleventh column counts digits answered "not a digit")."""
    confusion = np.zeros((DIGIT_CLASSES, DIGIT_CLASSES + 1), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    per_class = confusion.diagonal() / np.maximum(confusion.sum(axis=1), 1)
    return {
        "accuracy": float((labels == predicted).mean()),
        "per_class_accuracy": [round(float(value), 6) for value in per_class],
        "confusion_matrix": confusion.tolist(),
    }


def evaluate(*, weights: Path, version: str | None, data: Path | None, device: str) -> dict:
    configure(device)
    net, version = weights_store.load(weights, version)
    test_x, test_y, source = mnist_data.load_test(data)
    probabilities = net.predict(test_x, batch_size=512, verbose=0)
    report = accuracy_report(test_y, probabilities.argmax(axis=1))
    report.update(version=version, source=source, images=int(len(test_y)))
    return report


def format_report(report: dict) -> str:
    lines = [f"weights version {report['version']}: {100 * report['accuracy']:.2f}% "
             f"on {report['images']} MNIST test images ({report['source']})", "", "digit  images  accuracy"]
    confusion = np.array(report["confusion_matrix"])
    for digit, accuracy in enumerate(report["per_class_accuracy"]):
        lines.append(f"{digit:>5}  {confusion[digit].sum():>6}  {100 * accuracy:>7.2f}%")
    return "\n".join(lines)


def gate_figures(model, test_x: np.ndarray, test_y: np.ndarray, *, temperature: float = 1.0) -> dict[str, float]:
    """What the promotion gate compares: MNIST test accuracy and the share of scan-set pages read exactly right
    (a glyph the model calls "not a digit" is left out of its page, as the worker leaves it out)."""
    predicted = model.predict(test_x, batch_size=PREDICT_BATCH, verbose=0).argmax(axis=1)
    glyphs, counts, labels = scan_set()
    read = (model.predict(glyphs[..., None], batch_size=PREDICT_BATCH, verbose=0).argmax(axis=1)
            if len(glyphs) else np.zeros(0, np.int64))
    right, start = 0, 0
    for count, label in zip(counts, labels):
        right += "".join(str(int(digit)) for digit in read[start:start + count] if digit < NOT_A_DIGIT) == label
        start += count
    return {"mnist_test": round(float((predicted == test_y).mean()), 6), "scans": round(right / len(labels), 6),
            "scan_pages": len(labels)}


def scan_set(cache: Path | None = None) -> tuple[np.ndarray, list[int], list[str]]:
    """The scan set's glyph images (n, 28, 28), glyphs found per page and each page's digits.

    Generating and normalising the pages takes seconds, so the result is cached, keyed by the code that
    makes it: a change to the scan painter or to the normalisation makes a new set.
    """
    from trainer import scans
    from worker import normalise

    key = hashlib.sha256(b"%d %d %d" % (SCAN_SET_SEED, SCAN_SET_SINGLE_DIGITS, SCAN_SET_NUMBERS))
    for module in (scans, normalise):
        key.update(Path(module.__file__).read_bytes())
    path = (cache or mnist_data.default_cache()) / f"scan-set-{key.hexdigest()[:16]}.npz"
    try:
        with np.load(path, allow_pickle=False) as stored:
            return stored["glyphs"], stored["counts"].tolist(), [str(label) for label in stored["labels"]]
    except (OSError, ValueError, KeyError):
        pass
    glyphs, counts, labels = [], [], []
    pages = (scans.single_digits(SCAN_SET_SINGLE_DIGITS, seed=SCAN_SET_SEED)
             + scans.numbers(SCAN_SET_NUMBERS, seed=SCAN_SET_SEED))
    for scan in pages:
        try:
            read = normalise.normalise(scan.data)
        except BadInput:
            read = []
        for index, label in enumerate(scan.labels):
            found = [glyph.image for glyph in read[index].glyphs] if index < len(read) else []
            glyphs.extend(found)
            counts.append(len(found))
            labels.append(label)
    images = np.stack(glyphs).astype(np.float32) if glyphs else np.zeros((0, *weights_store.GLYPH_SHAPE), np.float32)
    _save_atomically(path, glyphs=images, counts=np.array(counts), labels=np.array(labels))
    return images, counts, labels


def _save_atomically(path: Path, **arrays: np.ndarray) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=".scan-set-", suffix=".npz", dir=path.parent)
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **arrays)
        os.replace(temporary, path)
    except OSError as error:  # a read-only cache only costs the next run the same seconds again
        log.warning("could not cache the scan set in %s: %s", path.parent, error)


def calibrate(model, val_x: np.ndarray, val_y: np.ndarray) -> dict:
    """Temperature scaling on the validation split (digits and not-a-digit examples), the calibration error
    before and after, and the operating points of the calibrated confidence on the validation digits."""
    raw = model.predict(val_x, batch_size=PREDICT_BATCH, verbose=0)
    temperature = calibration.fit_temperature(raw, val_y)
    scaled = calibration.scale(raw, temperature)
    digits = val_y < NOT_A_DIGIT
    predicted = scaled[digits].argmax(axis=1)
    # A digit answered "not a digit" is flagged, never accepted: its confidence counts as 0.
    confidence = np.where(predicted < NOT_A_DIGIT, scaled[digits].max(axis=1), 0.0)
    return {"temperature": temperature,
            "expected_calibration_error": calibration.expected_calibration_error(scaled, val_y),
            "expected_calibration_error_uncalibrated": calibration.expected_calibration_error(raw, val_y),
            "validation_images": int(len(val_y)),
            "operating_points": calibration.operating_points(confidence, predicted == val_y[digits])}


def rejection_report(model, test_x: np.ndarray, *, seed: int, count: int = 3000) -> dict:
    """How often not-a-digit examples in typefaces never trained on are rejected, and real digits wrongly are."""
    from trainer.negatives import negatives

    unseen = negatives(count, seed=seed + 2, held_out_fonts=True)[..., None]
    if model.output_shape[-1] <= NOT_A_DIGIT:
        return {"not_a_digit_rejected": 0.0, "digits_rejected": 0.0, "examples": count}
    rejected = model.predict(unseen, batch_size=PREDICT_BATCH, verbose=0).argmax(axis=1) == NOT_A_DIGIT
    wrongly = model.predict(test_x, batch_size=PREDICT_BATCH, verbose=0).argmax(axis=1) == NOT_A_DIGIT
    return {"not_a_digit_rejected": round(float(rejected.mean()), 6),
            "digits_rejected": round(float(wrongly.mean()), 6), "examples": count}
