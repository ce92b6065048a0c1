"""`digits worker`: start a Celery worker for queue `digits` with the model loaded in this process."""

from __future__ import annotations

import argparse
import logging

from core.settings import Settings, add_flags

log = logging.getLogger(__name__)

SETTINGS_FLAGS = ("broker_url", "inbox", "results", "processed", "failed", "on_success", "on_error", "weights",
                  "templates", "device", "max_image_bytes", "max_pixels", "batch_size", "batch_wait_ms",
                  "reload_interval", "concurrency", "tf_threads", "visibility_timeout", "job_retries", "review_below",
                  "pdf_dpi", "umask", "log_level")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pool", choices=("threads", "solo"), default="threads",
                        help="Celery pool: threads (default; jobs in flight share one model and its batches) or solo")
    parser.add_argument("--hostname", "-n", default=None,
                        help="Celery node name, e.g. gpu0@%%h (default celery@<host>); one worker per GPU needs "
                             "distinct names")
    add_flags(parser, *SETTINGS_FLAGS)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Configure the Celery app from settings and run the worker until it is stopped; returns its exit status."""
    from core.protocol import QUEUE
    from worker.celery_app import use_settings

    app = use_settings(settings)
    argv = ["worker", "--pool", args.pool, "--concurrency", str(settings.concurrency if args.pool == "threads" else 1),
            "--queues", QUEUE, "--loglevel", settings.log_level.upper(), "--without-gossip", "--without-mingle"]
    if args.hostname:
        argv += ["--hostname", args.hostname]
    status = app.start(argv=argv)
    return int(status or 0)
