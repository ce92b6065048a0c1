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
    batcher = Batcher(model.predictor, batch_size=64, batch_wait_ms=200)
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


def test_the_loaded_model_is_kept_from_the_garbage_collector_also_after_a_new_version(tmp_path):
    # In a process of its own: TensorFlow loads there, as in a worker.
    import os
    import shutil
    import subprocess
    import sys

    from conftest import PROJECT_ROOT

    weights = tmp_path / "weights"
    shutil.copytree(PROJECT_ROOT / "weights", weights)
    code = f"""
import gc
from pathlib import Path
from core import weights as store
from core.device import configure
from worker.holder import ModelHolder
configure("cpu", threads=1)
weights = Path({str(weights)!r})
versions = sorted(path.name for path in weights.iterdir() if (path / "model.keras").exists())
holder = ModelHolder(weights, reload_interval=3600)
holder.load_initial()
print("frozen", gc.get_freeze_count())
store.point_to(weights, next(version for version in versions if version != holder.current.version))
print("switched", holder.check_once())
print("frozen again", gc.get_freeze_count())
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=PROJECT_ROOT,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""})
    lines = dict(line.rsplit(" ", 1) for line in done.stdout.splitlines()
                 if line.startswith(("frozen ", "switched ", "frozen again ")))
    assert int(lines.get("frozen", "0")) > 100_000, done.stdout + done.stderr  # TensorFlow's objects, not walked again
    assert lines.get("switched") == "True", done.stdout + done.stderr
    assert int(lines.get("frozen again", "0")) > 100_000, done.stdout + done.stderr
