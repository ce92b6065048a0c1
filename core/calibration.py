"""Confidences that mean what they say: temperature scaling of softmax outputs, and how well they match."""

from __future__ import annotations

import numpy as np

from core.protocol import DIGIT_CLASSES

NOT_A_DIGIT = DIGIT_CLASSES  # the eleventh output, when a model has one: "not a handwritten digit"


def scale(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """Softmax outputs re-tempered: softmax(log p / T). T > 1 softens over-confident answers."""
    if temperature == 1.0:
        return probabilities
    logits = np.log(np.clip(probabilities, 1e-12, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    exponentials = np.exp(logits)
    return (exponentials / exponentials.sum(axis=1, keepdims=True)).astype(np.float32)


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The temperature that minimises the negative log-likelihood of the labels (a fine grid search)."""
    best, best_loss = 1.0, np.inf
    for temperature in np.exp(np.linspace(np.log(0.3), np.log(5.0), 200)):
        scaled = scale(probabilities, float(temperature))
        loss = -np.mean(np.log(np.clip(scaled[np.arange(len(labels)), labels], 1e-12, 1.0)))
        if loss < best_loss:
            best, best_loss = float(temperature), loss
    return round(best, 4)


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, *, bins: int = 15) -> float:
    """|confidence - accuracy| averaged over confidence bins, weighted by their share of answers."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    error = 0.0
    for low, high in zip(edges[:-1], edges[1:]):
        chosen = (confidence > low) & (confidence <= high)
        if chosen.any():
            error += chosen.mean() * abs(confidence[chosen].mean() - correct[chosen].mean())
    return round(float(error), 6)


def operating_points(confidence: np.ndarray, correct: np.ndarray,
                     thresholds=(0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999)) -> list[dict]:
    """For each review threshold: the share of answers flagged (below it) and the error among the rest."""
    points = []
    for threshold in thresholds:
        accepted = confidence >= threshold
        points.append({"review_below": threshold, "flagged": round(float(1 - accepted.mean()), 6),
                       "error_among_accepted": round(float((~correct[accepted]).mean()) if accepted.any() else 0.0,
                                                     6)})
    return points
