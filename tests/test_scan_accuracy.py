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


def test_the_benchmark_says_why_each_wrong_number_is_wrong(reader):
    import numpy as np

    from trainer.scans import test_digits

    scans = scans_of("numbers", 40, seed=SEED)

    def threes(images):  # every glyph read as a sure 3: each number not made of 3s is wrong
        answers = np.zeros((len(images), 11), np.float32)
        answers[:, 3] = 1.0
        return answers

    _, labels = test_digits()
    for hard, cause in ((np.ones(len(labels), bool), "hard digit"),
                        (np.zeros(len(labels), bool), "digit as the page gave it")):
        result = score(threes, "numbers", scans, review_below=0.8, hard=hard)
        causes = +result.causes  # the counts above zero
        assert result.right == 0 and result.accepted_wrong == result.numbers >= 40, result  # sure: none flagged
        assert sum(causes.values()) == result.numbers, causes
        # Most numbers are cut into as many digits as were written; the rest lost or gained one.
        assert causes[cause, "accepted"] >= result.numbers - 5, causes
        assert set(causes) <= {(cause, "accepted"), ("digit lost or added", "accepted")}, causes

    def nothing(images):  # every glyph "not a digit": every number is lost
        answers = np.zeros((len(images), 11), np.float32)
        answers[:, 10] = 1.0
        return answers

    result = score(nothing, "numbers", scans, review_below=0.8, hard=hard)
    assert +result.causes == {("number lost or added", "lost"): result.numbers}, result
    assert score(reader, "numbers", scans[:10], review_below=0.8).causes is None
