"""Redis connections, made in one place: connect and read timeouts and health checks for every client."""

from __future__ import annotations

from typing import Any

CONNECT_TIMEOUT = 3.0  # seconds to open a connection: a Redis that is down is noticed at once
READ_TIMEOUT = 10.0  # seconds to wait for an answer: a frozen Redis must not hang a thread for ever
HEALTH_CHECK = 15  # seconds a pooled connection may sit idle before it is checked with a PING


def redis_client(url: str, *, read_timeout: float = READ_TIMEOUT):
    """A redis-py client with the project's timeouts; it reconnects by itself after Redis comes back."""
    import redis

    return redis.Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=read_timeout,
                                health_check_interval=HEALTH_CHECK, retry_on_timeout=False)


def transport_options(**extra: Any) -> dict[str, Any]:
    """Kombu's Redis transport (Celery's broker and result backend) with the same timeouts."""
    return {"socket_connect_timeout": CONNECT_TIMEOUT, "socket_timeout": READ_TIMEOUT,
            "health_check_interval": HEALTH_CHECK, **extra}
