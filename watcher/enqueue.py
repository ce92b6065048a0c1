"""Ready files out as digits.process_files jobs: claimed in the ledger first, sent in batches, held in outages."""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from typing import Callable

import redis

from core import brokers, ledger, protocol
from watcher.content import Fingerprint
from watcher.outage import TRANSIENT_ERRORS, BrokerHealth

log = logging.getLogger(__name__)

CLAIM_CHUNK = 1000  # files claimed per ledger round trip


@dataclass(frozen=True)
class ReadyFile:
    """A completely written inbox file and the content it had when hashed."""

    relative: str
    sha256: str
    fingerprint: Fingerprint
    ready_at: float


def connect_redis(url: str) -> redis.Redis:
    """A ledger client that fails fast, so an outage is noticed at once instead of blocking the loop."""
    return brokers.redis_client(url, read_timeout=5)


class JobSender:
    """Publishes jobs by task name on the `digits` queue, JSON only, without importing the worker."""

    def __init__(self, broker_url: str):
        self.app = protocol.client_app(
            "digits-watcher", broker_url,
            task_publish_retry=False,  # our own loop retries, with backoff
            broker_connection_retry_on_startup=False,
            broker_transport_options=brokers.transport_options())

    def send(self, files: list[ReadyFile], job_id: str) -> None:
        payload = [{"path": ready.relative, "sha256": ready.sha256} for ready in files]
        with self.app.producer_or_acquire() as producer:
            self.app.send_task(protocol.TASK_PROCESS_FILES, kwargs={"files": payload}, task_id=job_id,
                               queue=protocol.QUEUE, producer=producer)


class Outbox:
    """Ready files waiting to be sent: up to queue_batch per job, or what is there after queue_wait seconds."""

    def __init__(self, *, client: redis.Redis, sender: JobSender, health: BrokerHealth, queue_batch: int,
                 queue_wait: float, on_settled: Callable[[ReadyFile, str | None], None]):
        self.client = client
        self.sender = sender
        self.health = health
        self.queue_batch = queue_batch
        self.queue_wait = queue_wait
        self.on_settled = on_settled  # (file, id of the job we sent it in, or None: found queued or done already)
        self._waiting: dict[str, ReadyFile] = {}
        self._claimed_unsent: dict[str, str] = {}  # claims whose job may not have gone out: released on retry

    def __len__(self) -> int:
        return len(self._waiting)

    def __contains__(self, relative: str) -> bool:
        return relative in self._waiting

    def add(self, ready: ReadyFile) -> None:
        self._waiting.pop(ready.relative, None)
        self._waiting[ready.relative] = ready

    def get(self, relative: str) -> ReadyFile | None:
        return self._waiting.get(relative)

    def discard(self, relative: str) -> None:
        self._waiting.pop(relative, None)

    def discard_folder(self, prefix: str) -> None:
        for relative in [path for path in self._waiting if path.startswith(prefix)]:
            del self._waiting[relative]

    def next_deadline(self) -> float | None:
        if not self._waiting and not self._claimed_unsent:
            return None
        if self.health.down:
            return self.health.retry_at
        if not self._waiting:
            return 0.0  # only claims to release
        oldest = next(iter(self._waiting.values()))
        return oldest.ready_at if len(self._waiting) >= self.queue_batch else oldest.ready_at + self.queue_wait

    def flush(self, now: float, *, force: bool = False) -> None:
        """Send what is due; in an outage, keep everything and retry when the backoff allows."""
        deadline = self.next_deadline()
        if deadline is None or not self.health.may_try(now) or (not force and now < deadline):
            return
        try:
            self._send_waiting(now, force=force)
        except TRANSIENT_ERRORS as error:
            self.health.failed(error, now=now, waiting=len(self._waiting))
        else:
            self.health.succeeded(now=now)

    def _due_now(self, now: float, *, force: bool) -> list[ReadyFile]:
        """Full jobs' worth of the oldest files, plus the rest once the oldest of it waited queue_wait."""
        waiting = list(self._waiting.values())
        full = len(waiting) - len(waiting) % self.queue_batch
        rest = waiting[full:]
        if rest and (force or rest[0].ready_at + self.queue_wait <= now):
            return waiting
        return waiting[:full]

    def _send_waiting(self, now: float, *, force: bool) -> None:
        if self._claimed_unsent:
            # Claimed before an outage and maybe never sent: release, then claim afresh below (Redis may
            # also have come back empty, in which case the release finds nothing and the claim succeeds).
            ledger.release(self.client, list(self._claimed_unsent.items()))
            self._claimed_unsent.clear()
        due = self._due_now(now, force=force)
        for start in range(0, len(due), CLAIM_CHUNK):
            chunk = due[start:start + CLAIM_CHUNK]
            # Each claim names its job, so a job lost on the way is told from one still coming.
            jobs = {str(uuid.uuid4()): chunk[first:first + self.queue_batch]
                    for first in range(0, len(chunk), self.queue_batch)}
            self._claimed_unsent.update((ready.relative, ready.sha256) for ready in chunk)
            claimed = iter(ledger.claim(self.client, [(ready.relative, ready.sha256, job_id)
                                                      for job_id, files in jobs.items() for ready in files]))
            for job_id, files in jobs.items():
                job = []
                for ready in files:
                    if next(claimed):
                        job.append(ready)
                        continue
                    del self._claimed_unsent[ready.relative]
                    del self._waiting[ready.relative]
                    log.debug("%s is already queued or done with this content; not queued again", ready.relative)
                    self.on_settled(ready, None)
                if not job:
                    continue
                self.sender.send(job, job_id)
                for ready in job:
                    del self._claimed_unsent[ready.relative]
                    self._waiting.pop(ready.relative, None)
                    self.on_settled(ready, job_id)
                # One line per job rather than per file: a burst of 10,000 files would log 10,000 records.
                log.info("queued job %s with %d file(s): %s", job_id, len(job),
                         ", ".join(ready.relative for ready in job))


def live_jobs(client: redis.Redis) -> set[str]:
    """Ids of the jobs still waiting in the queue or held by a worker (delivered, not yet acknowledged)."""
    found = {_job_id(raw) for raw in client.lrange(protocol.QUEUE, 0, -1)}
    # Kombu keeps each unacknowledged delivery as [message, exchange, routing key].
    found |= {_job_id(raw, unacked=True) for raw in client.hvals(protocol.UNACKED_KEY)}
    return found - {None}


def _job_id(raw: bytes, *, unacked: bool = False) -> str | None:
    """The task id in a Kombu message's headers, or None for anything else."""
    try:
        message = json.loads(raw)
        return (message[0] if unacked else message).get("headers", {}).get("id")
    except (ValueError, IndexError, KeyError, TypeError, AttributeError):
        return None
