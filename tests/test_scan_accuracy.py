"""Realistic scans with the shipped model: at least 99.0% of single digits and 95% of whole numbers read right."""

from __future__ import annotations

import pytest

from bench.accuracy import score
from trainer.scans import numbers, single_digits

SINGLES = 300
NUMBERS = 100
SEED = 31  # not bench.accuracy's default, so the test and the figures in docs/ are separate samples


@pytest.fixture(scope="module")
def shipped_model(shipped_weights):
    from core.weights import current_version, load

    assert current_version(shipped_weights), f"no weights published in {shipped_weights} (weights/CURRENT)"
    model, _ = load(shipped_weights)
    return model


def test_single_digits_are_read_right(shipped_model):
    result = score(shipped_model, single_digits(SINGLES, seed=SEED))
    assert result.pages >= SINGLES  # multi-page TIFFs add pages
    assert result.normalised_share >= 0.99, result
    # What the MNIST procedure replaces: the whole page resized to 28x28 is mostly wrong.
    assert result.plain_share < 0.5, result


def test_whole_numbers_are_read_right(shipped_model):
    result = score(shipped_model, numbers(NUMBERS, seed=SEED + 1))
    assert result.pages >= NUMBERS  # multi-page TIFFs add pages
    assert result.normalised_share >= 0.95, result
