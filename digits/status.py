"""`digits status`: queue depth, workers online, done/failed counts and throughput; exits 9 when no worker answers."""

from __future__ import annotations

import argparse
import json
from typing import Any

from core import brokers, ledger, protocol
from core.errors import BrokerUnavailable, NoWorkerError
from core.protocol import QUEUE
from core.settings import Settings, add_flags, redact_url
from digits.local.embedded_redis import running_url


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object (for scripts)")
    parser.add_argument("--timeout", type=float, default=1.0, help="seconds to wait for workers to answer (default 1)")
    add_flags(parser, "broker_url", "state", "log_level")


def broker_url(settings: Settings) -> str:
    """The configured broker; else the one a `digits up` running from here recorded; else local Redis."""
    return settings.broker_url or running_url(settings.state) or settings.effective_broker_url


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
        "counts": done,
        "workers_online": len(answering),
        "workers": online,
        "images_per_second": round(sum(float(entry.get("images_per_second") or 0) for entry in answering), 1),
        "average_batch_size": round(images / batches, 2) if batches else 0.0,
    }


def format_report(report: dict[str, Any]) -> str:
    counted = report["counts"]
    lines = [
        f"broker       {report['broker']}",
        f"queue        {report['queue_depth']} jobs waiting in '{report['queue']}', {report['in_flight']} in flight",
        f"files        {report['files_waiting']} inbox files queued and not yet done",
        f"done         {report['done']} ({counted['ok']} recognised, {counted['no_digit']} with no digit)",
        f"failed       {report['failed']}",
        f"throughput   {report['images_per_second']:.1f} images/s, average batch size {report['average_batch_size']}",
        f"workers      {report['workers_online']} online",
    ]
    for entry in report["workers"]:
        if "error" in entry:
            lines.append(f"  {entry['node']}: no digits_info ({entry['error']})")
            continue
        lines.append(f"  {entry['node']}: {entry.get('device', '?')} ({entry.get('backend') or 'tensorflow'}), "
                     f"model {entry.get('model', '?')}, "
                     f"{entry.get('images', 0)} images in {entry.get('batches', 0)} batches, "
                     f"{float(entry.get('images_per_second') or 0):.1f} images/s, since {entry.get('started_at', '?')}")
    return "\n".join(lines)


def run(args: argparse.Namespace, settings: Settings) -> int:
    report = collect(broker_url(settings), timeout=args.timeout)
    print(json.dumps(report) if args.json else format_report(report), flush=True)
    if not report["workers_online"]:
        raise NoWorkerError("no worker answered (start one with `digits worker` or `digits up`)")
    return 0
