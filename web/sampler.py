"""What the page shows, gathered every few seconds in one thread (one broadcast to the workers however many
people look): the status of `digits status`, throughput over the last minutes, and the latest results."""

from __future__ import annotations

import collections
import csv
import logging
import threading
import time
from pathlib import Path
from typing import Any

from core.errors import BrokerUnavailable
from core.status import collect
from web.thumbnails import numbers_of

log = logging.getLogger(__name__)

SAMPLE_SECONDS = 2.0
HISTORY_SECONDS = 600.0  # the throughput chart's span
RECENT_RESULTS = 12
TAIL_BYTES = 64_000  # the latest results are read from this much of the end of results.csv


class Sampler:
    def __init__(self, url: str, results: Path, *, interval: float = SAMPLE_SECONDS):
        self.url = url
        self.results = results
        self.interval = interval
        self._lock = threading.Lock()
        self._report: dict[str, Any] = {"error": "not sampled yet"}
        self._history: collections.deque[tuple[float, int]] = collections.deque()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="digits-web-sampler", daemon=True)

    def start(self) -> None:
        self.sample()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        try:
            report = collect(self.url, timeout=min(1.0, self.interval / 2))
            report["error"] = None
        except BrokerUnavailable as error:
            report = {"error": str(error)}
        except Exception as error:  # a worker's odd answer must not stop the page
            log.exception("status sample failed")
            report = {"error": f"{type(error).__name__}: {error}"}
        now = time.time()
        with self._lock:
            if report["error"] is None:
                self._history.append((now, report["done"] + report["failed"]))
                while self._history and self._history[0][0] < now - HISTORY_SECONDS:
                    self._history.popleft()
            self._report = report

    def status(self) -> dict[str, Any]:
        """The latest status as sampled (what /metrics needs: no file is read)."""
        with self._lock:
            return dict(self._report)

    def report(self) -> dict[str, Any]:
        """The latest status, files per second over each sample of the last minutes, and the latest results."""
        with self._lock:
            report, history = dict(self._report), list(self._history)
        report["throughput"] = [
            {"at": round(later[0], 3), "files_per_second": round((later[1] - earlier[1]) / (later[0] - earlier[0]), 2)}
            for earlier, later in zip(history, history[1:]) if later[0] > earlier[0]]
        report["recent"] = recent_results(self.results / "results.csv")
        for row in report["recent"]:
            row["numbers"] = numbers_of(self.results, row["source"]) if row["status"] == "ok" else []
        return report


def recent_results(path: Path, count: int = RECENT_RESULTS) -> list[dict[str, str]]:
    """The last rows of results.csv, newest first (read from its end, however long it has grown)."""
    try:
        with path.open("rb") as file:
            header = file.readline().decode("utf-8", "replace")
            size = file.seek(0, 2)
            file.seek(max(len(header), size - TAIL_BYTES))
            tail = file.read().decode("utf-8", "replace")
    except OSError:
        return []
    lines = tail.splitlines()
    if size - TAIL_BYTES > len(header):
        lines = lines[1:]  # the first line read may be the end of a longer one
    rows = list(csv.DictReader([header, *lines[-count:]]))
    return [{key: row.get(key) or "" for key in ("processed_at", "source", "status", "digits", "confidence", "review",
                                                  "error")} for row in reversed(rows)]
