"""The two pictures of a model card: training curves and the confusion matrix."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_curves(history: dict[str, list[float]], path: Path, *, title: str) -> None:
    plt = _pyplot()
    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = np.arange(1, len(history.get("loss", [])) + 1)
    for key, axes in (("loss", loss_axes), ("accuracy", accuracy_axes)):
        for prefix, label in (("", "training"), ("val_", "validation")):
            if prefix + key in history:
                axes.plot(epochs, history[prefix + key], marker="o", label=label)
        axes.set_xlabel("epoch")
        axes.set_ylabel(key)
        axes.grid(alpha=0.3)
        axes.legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def save_confusion_matrix(confusion: np.ndarray, path: Path, *, title: str) -> None:
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6, 5.5))
    axes.imshow(np.log1p(confusion), cmap="Blues")
    for (row, column), count in np.ndenumerate(confusion):
        if count:
            axes.text(column, row, str(count), ha="center", va="center", fontsize=7,
                      color="white" if row == column else "black")
    columns = confusion.shape[1]  # an eleventh column: digits answered "not a digit"
    axes.set_xticks(range(columns), [str(digit) for digit in range(10)] + ["not"] * (columns - 10))
    axes.set_yticks(range(10))
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
