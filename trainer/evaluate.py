"""`digits eval`: accuracy of a weights version on the 10,000 MNIST test images, overall and per class."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core import weights as weights_store
from core.device import configure
from trainer import data as mnist_data


def accuracy_report(labels: np.ndarray, predicted: np.ndarray) -> dict:
    confusion = np.zeros((10, 10), dtype=np.int64)
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
