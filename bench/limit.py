"""What one process can do without the queue (the in-process limit), and the original one-predict-per-image approach."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from bench.accuracy import plain_resize
from core.errors import BadInput
from core.settings import Settings
from worker import recognition
from worker.batching import Batcher


def in_process_rate(datas: list[bytes], *, predictor, settings: Settings) -> tuple[float, int]:
    """Images/s and images for decode + normalise + batched model calls, threaded exactly like one worker.

    The worker's shape without Celery, Redis or files: `concurrency` threads each take jobs of
    `queue_batch` files, normalise them and hand them to one batcher thread in groups of about a
    batch (as worker.process_files does); the batcher runs batch_size / batch_wait_ms model calls.
    """
    batcher = Batcher(lambda: predictor, batch_size=settings.batch_size, batch_wait_ms=settings.batch_wait_ms)
    batcher.start()
    jobs = [datas[start:start + settings.queue_batch] for start in range(0, len(datas), settings.queue_batch)]

    def run_job(job: list[bytes]) -> int:
        prepared, feeder = [], recognition.Feeder(batcher, batch_size=settings.batch_size)
        for data in job:
            try:
                pending = recognition.prepare(data, settings)
            except BadInput:
                continue
            prepared.append(pending)
            feeder.add(pending)
        feeder.flush()
        for pending in prepared:
            pending.future.result()
        return sum(len(pending.pages) for pending in prepared)

    try:
        started = time.perf_counter()
        with ThreadPoolExecutor(settings.concurrency) as pool:
            images = sum(pool.map(run_job, jobs))
        elapsed = time.perf_counter() - started
    finally:
        batcher.stop()
    return images / elapsed, images


def original_rate(datas: list[bytes], *, model) -> tuple[float, int]:
    """Images/s of the original approach: the whole page resized to 28x28, one model.predict per image."""
    images = 0
    started = time.perf_counter()
    for data in datas:
        for page in plain_resize(data):
            model.predict(page[None, :, :, None].astype(np.float32), verbose=0)
            images += 1
    return images / (time.perf_counter() - started), images
