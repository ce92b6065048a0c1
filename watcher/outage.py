"""Broker health: one warning per outage, retries with capped exponential backoff and jitter."""

from __future__ import annotations

import logging
import random

import kombu.exceptions
import redis.exceptions

log = logging.getLogger(__name__)

# Trouble that passes when Redis is back; anything else is a bug and reaches the outermost loop.
TRANSIENT_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                    kombu.exceptions.OperationalError, OSError)

FIRST_RETRY_SECONDS = 0.5
LONGEST_RETRY_SECONDS = 15.0


class BrokerHealth:
    """Whether Redis is reachable, when to try again, and logging that happens once per outage."""

    def __init__(self) -> None:
        self.down_since: float | None = None
        self.retry_at = 0.0
        self._failures = 0

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def may_try(self, now: float) -> bool:
        return self.down_since is None or now >= self.retry_at

    def failed(self, error: Exception, *, now: float, waiting: int) -> None:
        if self.down_since is None:
            self.down_since = now
            log.warning("broker unreachable (%s); %d file(s) wait in the inbox, retrying with backoff until it "
                        "is back", error, waiting)
        else:
            log.debug("broker still unreachable: %s", error)
        delay = min(LONGEST_RETRY_SECONDS, FIRST_RETRY_SECONDS * 2 ** self._failures)
        self._failures += 1
        self.retry_at = now + delay * random.uniform(0.8, 1.2)

    def succeeded(self, *, now: float) -> bool:
        """Record a success; True when it ends an outage."""
        if self.down_since is None:
            return False
        log.warning("broker reachable again after %.1fs; queueing what waited", now - self.down_since)
        self.down_since, self._failures, self.retry_at = None, 0, 0.0
        return True
