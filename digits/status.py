"""`digits status`: queue depth, workers online, done/failed counts and throughput; exits 9 when no worker answers."""

from __future__ import annotations

import argparse
import json
from typing import Any

from core.errors import NoWorkerError
from core.settings import Settings, add_flags
from core.status import collect
from digits.local.embedded_redis import running_url


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object (for scripts)")
    parser.add_argument("--timeout", type=float, default=1.0, help="seconds to wait for workers to answer (default 1)")
    add_flags(parser, "broker_url", "state", "log_level")


def broker_url(settings: Settings) -> str:
    """The configured broker; else the one a `digits up` running from here recorded; else local Redis."""
    return settings.broker_url or running_url(settings.state) or settings.effective_broker_url


def format_report(report: dict[str, Any]) -> str:
    counted = report["counts"]
    lines = [
        f"broker       {report['broker']}",
        f"queue        {report['queue_depth']} jobs waiting in '{report['queue']}', {report['in_flight']} in flight",
        f"files        {report['files_waiting']} inbox files queued and not yet done",
        f"done         {report['done']} ({counted['ok']} recognised, {counted['no_digit']} with no digit)",
        f"failed       {report['failed']}",
        f"review       {report['flagged']} files flagged for review, {report['review_pending']} waiting in the review queue",
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
