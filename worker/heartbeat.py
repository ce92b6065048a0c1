"""The worker's heartbeat on the jobs it holds, so a dead worker's jobs go to another worker in seconds.

Kombu's Redis transport keeps each delivered, unacknowledged job in a hash, indexed by the time it was
delivered; any consuming worker puts back on the queue the jobs delivered longer than the visibility
timeout ago. Every few seconds this thread sets that time to now for each job this process holds
(running, waiting for a thread, or waiting for its retry), so the jobs of a live worker never come
back however long they take, and the visibility timeout can be short: the jobs of a worker that was
killed, or lost its machine, are handed out again once it has been silent that long.
"""

from __future__ import annotations

import logging
import threading
import time

from celery.worker import state

from core import protocol

log = logging.getLogger(__name__)

RETRY_SECONDS = 0.5  # between tries while Redis does not answer


def held_delivery_tags() -> list[str]:
    """Delivery tags of every job this worker process holds (Celery's own record of its requests)."""
    tags = []
    for request in list(state.requests.values()):
        tag = getattr(getattr(request, "message", None), "delivery_tag", None)
        if tag:
            tags.append(tag)
    return tags


def refresh(client, tags: list[str], *, now: float | None = None) -> None:
    """Mark these deliveries as seen alive now, in one command. XX: only entries that still exist are
    touched, so a job acknowledged meanwhile does not reappear in the index."""
    if tags:
        stamp = time.time() if now is None else now
        client.zadd(protocol.UNACKED_INDEX_KEY, dict.fromkeys(tags, stamp), xx=True)


class Heartbeat:
    """A daemon thread that refreshes the held jobs every `interval` seconds; Redis trouble is logged once."""

    def __init__(self, client, *, interval: float):
        self.client = client
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="digits-heartbeat", daemon=True)
        self._failing = False

    def start(self) -> "Heartbeat":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        delay = self.interval
        while not self._stop.wait(delay):
            try:
                refresh(self.client, held_delivery_tags())
            except Exception as error:  # Redis away: the jobs stay held; say so once, not every beat
                if not self._failing:
                    log.warning("heartbeat on held jobs failed (%s); retrying until it works", error)
                self._failing = True
                # Tried again at once, not a beat later: when Redis comes back after an outage the held
                # jobs have not been refreshed for that long, and another worker's sweep must not find
                # them stale before this beat does.
                delay = min(self.interval, RETRY_SECONDS)
            else:
                if self._failing:
                    log.info("heartbeat on held jobs works again")
                self._failing = False
                delay = self.interval
