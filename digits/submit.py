"""`digits submit FILE...`: send image files to the public `digits.recognize` task, optionally waiting for results."""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from core import protocol
from core.errors import BadInput, BrokerUnavailable, NoWorkerError
from core.settings import Settings, add_flags, redact_url
from core.status import celery_client
from digits.status import broker_url


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="image files to recognise")
    parser.add_argument("--wait", action="store_true",
                        help="wait and print one JSON result per line, in the order of the files")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="with --wait: seconds to wait for all results (default 300)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bar on stderr (default: when stderr is a terminal and there are several files)")
    add_flags(parser, "broker_url", "state", "max_image_bytes", "log_level")


class ProgressBar:
    """A one-line bar on stderr: [#####.....] 50/100 files."""

    def __init__(self, total: int, *, stream: TextIO, enabled: bool, width: int = 30):
        self.total = total
        self.stream = stream
        self.enabled = enabled
        self.width = width

    def show(self, done: int, label: str) -> None:
        if not self.enabled:
            return
        filled = int(self.width * done / self.total) if self.total else self.width
        self.stream.write(f"\r[{'#' * filled}{'.' * (self.width - filled)}] {done}/{self.total} {label}")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def read_image(path: Path, *, max_bytes: int) -> str:
    """The file's bytes as base64, refusing what the worker would refuse anyway."""
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise BadInput(f"{path}: {size} bytes is more than the limit of {max_bytes}")
        return base64.b64encode(path.read_bytes()).decode("ascii")
    except OSError as error:
        raise BadInput(f"{path}: {error.strerror or error}") from None


def run(args: argparse.Namespace, settings: Settings) -> int:
    import kombu.exceptions

    try:
        return _submit(args, settings)
    except kombu.exceptions.OperationalError as error:
        raise BrokerUnavailable(f"cannot reach Redis at {redact_url(broker_url(settings))}: {error}") from None


def _submit(args: argparse.Namespace, settings: Settings) -> int:
    url = broker_url(settings)
    app = celery_client(url, results=args.wait)
    names = list(args.files)
    show_progress = args.progress if args.progress is not None else (len(names) > 1 and sys.stderr.isatty())
    bar = ProgressBar(len(names), stream=sys.stderr, enabled=show_progress)
    pending: list[tuple[str, Any]] = []  # (name, AsyncResult or a refusal dict)
    failures = 0
    try:
        for index, name in enumerate(names, 1):
            try:
                image = read_image(Path(name), max_bytes=settings.max_image_bytes)
            except BadInput as error:
                failures += 1
                pending.append((name, protocol.result(name, error=str(error))))
                if not args.wait:
                    print(f"digits submit: {error}", file=sys.stderr)
                continue
            result = app.send_task(protocol.TASK_RECOGNIZE, kwargs={"image": image, "name": name},
                                   queue=protocol.QUEUE)
            pending.append((name, result))
            if not args.wait:
                print(f"{result.id}\t{name}", flush=True)
            bar.show(index, "sent")
        if args.wait:
            failures = _print_results(pending, bar=bar, timeout=args.timeout)
    finally:
        bar.close()
        app.close()
    return BadInput.exit_code if failures else 0


def _print_results(pending: list[tuple[str, Any]], *, bar: ProgressBar, timeout: float) -> int:
    """One JSON line per file in the order given; returns how many ended in an error."""
    from celery.exceptions import TimeoutError as ResultTimeout

    deadline = time.monotonic() + timeout
    failures = 0
    for index, (name, outcome) in enumerate(pending, 1):
        if isinstance(outcome, dict):
            result = outcome
        else:
            remaining = deadline - time.monotonic()
            try:
                result = outcome.get(timeout=max(remaining, 0.1), propagate=False)
            except ResultTimeout:
                raise NoWorkerError(f"no result for {name} within {timeout:.0f} s "
                                    "(is a worker running? try `digits status`)") from None
            if not isinstance(result, dict):  # the task raised: Celery hands back the exception
                result = protocol.result(name, error=f"{type(result).__name__}: {result}")
        if result.get("status") == "error":
            failures += 1
        print(json.dumps(result, ensure_ascii=False), flush=True)
        bar.show(index, "done")
    return failures
