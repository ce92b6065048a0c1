"""The dynamic batcher: close requests share one model call, within batch size and wait, on one version."""

import threading

import numpy as np
import pytest

from worker.batching import Batcher
from worker.holder import Predictor

pytestmark = pytest.mark.fast


class CountingModel:
    """A fake predictor that records the size of every model call; probabilities encode the image value."""

    def __init__(self, version="v1"):
        self.calls: list[int] = []
        self.version = version

    def predictor(self):
        def predict(images):
            self.calls.append(len(images))
            out = np.zeros((len(images), 10), dtype=np.float32)
            out[np.arange(len(images)), images[:, 0, 0].astype(int) % 10] = 1.0
            return out

        return Predictor(version=self.version, predict=predict)


def test_requests_arriving_together_share_one_call_and_get_their_own_rows():
    model = CountingModel()
    batcher = Batcher(model.predictor, batch_size=64, batch_wait_ms=1500)  # wide: a loaded machine is slow
    batcher.start()
    try:
        futures = [batcher.submit(np.full((count, 28, 28), value, dtype=np.float32))
                   for value, count in ((1, 2), (2, 3), (3, 1))]
        answers = [future.result(timeout=10) for future in futures]
    finally:
        batcher.stop()
    assert model.calls == [6]
    assert [list(np.argmax(probabilities, axis=1)) for probabilities, _ in answers] == [[1, 1], [2, 2, 2], [3]]
    assert all(version == "v1" for _, version in answers)
    assert batcher.stats.snapshot()["average_batch_size"] == 6


def test_batches_never_exceed_batch_size_and_large_requests_stay_whole():
    model = CountingModel()
    batcher = Batcher(model.predictor, batch_size=4, batch_wait_ms=100)
    batcher.start()
    try:
        futures = [batcher.submit(np.zeros((3, 28, 28), dtype=np.float32)) for _ in range(3)]
        big = batcher.submit(np.zeros((9, 28, 28), dtype=np.float32))
        for future in futures + [big]:
            future.result(timeout=10)
    finally:
        batcher.stop()
    assert max(model.calls) <= 4 and sum(model.calls) == 18
    assert len(big.result()[0]) == 9


def test_concurrent_submitters_from_threads_are_batched():
    model = CountingModel()
    batcher = Batcher(model.predictor, batch_size=64, batch_wait_ms=50)
    batcher.start()
    start = threading.Barrier(16)
    answers = []

    def client():
        start.wait()
        answers.append(batcher.submit(np.zeros((1, 28, 28), dtype=np.float32)).result(timeout=10))

    threads = [threading.Thread(target=client) for _ in range(16)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=20)
    finally:
        batcher.stop()
    assert len(answers) == 16 and len(model.calls) < 16


def test_a_failing_model_call_fails_its_requests_and_the_batcher_keeps_serving():
    broken = {"on": True}

    def predictor():
        def predict(images):
            if broken["on"]:
                raise RuntimeError("boom")
            return np.zeros((len(images), 10), dtype=np.float32)

        return Predictor(version="v1", predict=predict)

    batcher = Batcher(predictor, batch_size=8, batch_wait_ms=1)
    batcher.start()
    try:
        failed = batcher.submit(np.zeros((1, 28, 28), dtype=np.float32))
        assert isinstance(failed.exception(timeout=10), RuntimeError)
        broken["on"] = False
        assert batcher.submit(np.zeros((2, 28, 28), dtype=np.float32)).result(timeout=10)[0].shape == (2, 10)
    finally:
        batcher.stop()

