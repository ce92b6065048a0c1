"""Plain scans with the shipped model, read as a worker reads them: single digits and whole numbers."""

from __future__ import annotations

import pytest

from bench.accuracy import predictor, scans_of, score
from core.settings import Settings

PAGES = 500
SEED = 31  # not bench.accuracy's default, so the test and the figures in docs/ are separate samples


@pytest.fixture(scope="module")
def reader(shipped_weights):
    predict, _ = predictor(shipped_weights, None)
    return predict


def test_single_digits_are_read_right_and_few_are_flagged(reader):
    result = score(reader, "single", scans_of("single", PAGES, seed=SEED), review_below=Settings().review_below)
    assert result.pages == PAGES
    assert result.share >= 0.995, result
    assert result.flagged_share <= 0.05 and result.accepted_error <= 0.003, result
    # What the MNIST procedure replaces: the whole page resized to 28x28 is mostly wrong.
    assert result.plain / result.pages < 0.5, result


def test_whole_numbers_are_read_right_and_few_are_flagged(reader):
    result = score(reader, "numbers", scans_of("numbers", PAGES, seed=SEED), review_below=Settings().review_below)
    assert result.share >= 0.97, result
    assert result.flagged_share <= 0.05, result  # at the default DIGITS_REVIEW_BELOW
