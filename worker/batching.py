"""The dynamic batcher: one thread owns the model and runs requests that arrive close together as one call."""

from __future__ import annotations

import bisect
import collections
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

import numpy as np

from core import protocol
from core.protocol import DIGIT_CLASSES
from core.weights import GLYPH_SHAPE

log = logging.getLogger(__name__)

RATE_WINDOW_SECONDS = 60.0


@dataclass
class Request:
    """Images from one file or one payload; they always run together, on one weights version."""

    images: np.ndarray
    future: Future = field(default_factory=Future)
    enqueued_at: float = field(default_factory=time.monotonic)

    @property
    def count(self) -> int:
        return len(self.images)


class Stats:
    """Batches, images, average batch size and recent throughput, as `digits status` shows them."""

    def __init__(self):
        self.started_at = datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
        self._started = time.monotonic()
        self._lock = threading.Lock()
        self.batches = 0
        self.images = 0
        self.queue_seconds = 0.0
        self.compute_seconds = 0.0
        self._recent: collections.deque[tuple[float, int]] = collections.deque()
        # Histograms (counts per bucket, the last beyond the largest bound): images per model call, and
        # seconds from an inbox file's drop to its result.
        self.batch_sizes = [0] * (len(protocol.BATCH_SIZE_BUCKETS) + 1)
        self.latencies = [0] * (len(protocol.LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0

    def record(self, *, images: int, queue_seconds: float, compute_seconds: float) -> None:
        now = time.monotonic()
        with self._lock:
            self.batches += 1
            self.images += images
            self.queue_seconds += queue_seconds
            self.compute_seconds += compute_seconds
            self._recent.append((now, images))
            self.batch_sizes[bisect.bisect_left(protocol.BATCH_SIZE_BUCKETS, images)] += 1
            while self._recent and self._recent[0][0] < now - RATE_WINDOW_SECONDS:
                self._recent.popleft()

    def observe_latencies(self, seconds: list[float]) -> None:
        """Seconds from inbox files' drops to their results."""
        with self._lock:
            for value in seconds:
                self.latencies[bisect.bisect_left(protocol.LATENCY_BUCKETS, value)] += 1
                self.latency_sum += value

    def snapshot(self) -> dict[str, float | int | str | list]:
        now = time.monotonic()
        with self._lock:
            recent = sum(count for stamp, count in self._recent if stamp >= now - RATE_WINDOW_SECONDS)
            window = max(1e-9, min(RATE_WINDOW_SECONDS, now - self._started))
            return {
                "batches": self.batches,
                "images": self.images,
                "average_batch_size": round(self.images / self.batches, 3) if self.batches else 0.0,
                "images_per_second": round(recent / window, 3),
                "average_queue_ms": round(1000 * self.queue_seconds / self.batches, 3) if self.batches else 0.0,
                "average_compute_ms": round(1000 * self.compute_seconds / self.batches, 3) if self.batches else 0.0,
                "started_at": self.started_at,
                "batch_size_buckets": list(self.batch_sizes),
                "latency_buckets": list(self.latencies),
                "latency_seconds_sum": round(self.latency_sum, 6),
            }


class Batcher:
    """Collects requests until batch_size images or batch_wait after the oldest one, then runs one model call.

    predictor() returns the serving holder.Predictor; it is read once per batch, so every request in a
    batch (and every image of a request) is recognised by the same weights version.
    """

    def __init__(self, predictor: Callable, *, batch_size: int, batch_wait_ms: float, stats: Stats | None = None):
        self.predictor = predictor
        self.batch_size = batch_size
        self.batch_wait = batch_wait_ms / 1000.0
        self.stats = stats or Stats()
        self._pending: collections.deque[Request] = collections.deque()
        self._condition = threading.Condition()
        self._running = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with self._condition:
            if self._running:
                return
            self._running = True
        self._thread = threading.Thread(target=self._loop, name="digits-batcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._condition:
            self._running = False
            self._condition.notify_all()
        if self._thread:
            self._thread.join(timeout=10)

    def submit(self, images: np.ndarray) -> Future:
        """Queue images (n, 28, 28); the future gives (probabilities (n, 10), weights version)."""
        return self.submit_many([images])[0]

    def submit_many(self, image_sets: list[np.ndarray]) -> list[Future]:
        """Queue several requests at once, so the batcher sees them together; one future per request."""
        requests = [Request(np.asarray(images, dtype=np.float32).reshape(-1, *GLYPH_SHAPE)) for images in image_sets]
        for request in requests:
            if request.count == 0:
                request.future.set_result((np.zeros((0, DIGIT_CLASSES), dtype=np.float32), self.predictor().version))
        with self._condition:
            if not self._running:
                raise RuntimeError("the batcher is not running")
            self._pending.extend(request for request in requests if request.count)
            self._condition.notify()
        return [request.future for request in requests]

    def _take_batch(self) -> list[Request]:
        """Wait for the first request, then until the batch is full or its oldest request waited long enough."""
        with self._condition:
            while self._running and not self._pending:
                self._condition.wait()
            if not self._running:
                return []
            deadline = self._pending[0].enqueued_at + self.batch_wait
            while self._running and sum(r.count for r in self._pending) < self.batch_size:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._condition.wait(left)
            batch = [self._pending.popleft()]
            total = batch[0].count
            while self._pending and total + self._pending[0].count <= self.batch_size:
                request = self._pending.popleft()
                batch.append(request)
                total += request.count
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take_batch()
            if not batch:
                return
            try:
                self._run(batch)
            except Exception as error:  # outermost loop of the batcher thread: fail these requests, keep serving
                log.exception("inference failed for a batch of %d requests", len(batch))
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(error)

    def _run(self, batch: list[Request]) -> None:
        started = time.monotonic()
        predictor = self.predictor()
        images = np.concatenate([request.images for request in batch])
        # A single request larger than batch_size still runs on one version, in batch_size chunks.
        probabilities = np.concatenate([predictor.predict(images[start:start + self.batch_size])
                                        for start in range(0, len(images), self.batch_size)])
        finished = time.monotonic()
        queue_seconds = sum(started - request.enqueued_at for request in batch) / len(batch)
        for start in range(0, len(images), self.batch_size):
            chunk = min(self.batch_size, len(images) - start)
            self.stats.record(images=chunk, queue_seconds=queue_seconds,
                              compute_seconds=(finished - started) * chunk / len(images))
        offset = 0
        for request in batch:
            request.future.set_result((probabilities[offset:offset + request.count], predictor.version))
            offset += request.count
