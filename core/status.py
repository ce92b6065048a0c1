"""What the service is doing, read from Redis and the workers' answers: queue depth, files waiting, counts,
workers online with their device and weights version. `digits status`, `digits up` and the web page show it."""

from __future__ import annotations

from typing import Any

from core import brokers, ledger, protocol
from core.errors import BrokerUnavailable
from core.protocol import QUEUE
from core.settings import redact_url


def redis_client(url: str):
    return brokers.redis_client(url)


def celery_client(url: str, *, results: bool = False):
    """A bare Celery app speaking JSON only, like the workers, that gives up quickly when Redis is down."""
    return protocol.client_app("digits-client", url, results=results, broker_connection_retry_on_startup=False,
                               broker_connection_max_retries=1)


def queue_depth(client) -> int:
    """Messages waiting in the `digits` queue (no priorities are used, so Kombu keeps them in one list)."""
    return int(client.llen(QUEUE))


def counts(client) -> dict[str, int]:
    values = client.mget(list(protocol.COUNTER_KEYS.values()))
    return {name: int(value or 0) for name, value in zip(protocol.COUNTER_KEYS, values)}


def workers(url: str, *, timeout: float = 1.0, limit: int | None = None) -> list[dict[str, Any]]:
    """Every worker's answer to the `digits_info` inspect command, with its node name."""
    app = celery_client(url)
    try:
        with app.connection_for_write() as connection:
            replies = app.control.broadcast(protocol.INFO_COMMAND, reply=True, timeout=timeout, limit=limit,
                                            connection=connection)
    finally:
        app.close()
    found = []
    for reply in replies or []:
        for node, info in reply.items():
            entry = {"node": node}
            entry.update(info if isinstance(info, dict) else {"error": str(info)})
            found.append(entry)
    return sorted(found, key=lambda entry: entry["node"])


def collect(url: str, *, timeout: float = 1.0, worker_limit: int | None = None) -> dict[str, Any]:
    """Everything `digits status` shows, as one JSON-ready dict."""
    import redis

    client = redis_client(url)
    try:
        client.ping()
        depth = queue_depth(client)
        in_flight = client.hlen(protocol.UNACKED_KEY)
        done = counts(client)
        flagged = int(client.get(protocol.REVIEW_COUNTER_KEY) or 0)
        reviewed = int(client.get(protocol.REVIEWED_COUNTER_KEY) or 0)
        review_pending = client.zcard(protocol.REVIEW_QUEUE_KEY)
        files_waiting = ledger.count_queued(client)
    except redis.exceptions.RedisError as error:
        raise BrokerUnavailable(f"cannot reach Redis at {redact_url(url)}: {error}") from None
    finally:
        client.close()
    online = workers(url, timeout=timeout, limit=worker_limit)
    answering = [entry for entry in online if "error" not in entry]
    images = sum(int(entry.get("images") or 0) for entry in answering)
    batches = sum(int(entry.get("batches") or 0) for entry in answering)
    return {
        "broker": redact_url(url),
        "queue": QUEUE,
        "queue_depth": depth,
        "in_flight": in_flight,
        "files_waiting": files_waiting,
        "done": done["ok"] + done["no_digit"],
        "failed": done["error"],
        "flagged": flagged,
        "review_pending": review_pending,
        "reviewed": reviewed,
        "counts": done,
        "workers_online": len(answering),
        "workers": online,
        "images_per_second": round(sum(float(entry.get("images_per_second") or 0) for entry in answering), 1),
        "average_batch_size": round(images / batches, 2) if batches else 0.0,
    }
