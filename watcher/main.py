"""`digits watch`: flags, start-up checks, signal handling, then the watcher's main loop."""

from __future__ import annotations

import argparse
import logging
import signal
import threading

from core.settings import Settings, add_flags

FLAGS = ("broker_url", "inbox", "results", "processed", "failed", "on_success", "on_error", "ready_delay",
         "polling", "poll_interval", "rescan_interval", "extensions", "queue_batch",
         "queue_wait_ms", "log_level")

def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, *FLAGS)

def run(args: argparse.Namespace, settings: Settings) -> int:
    """Exit 6 for a missing or unreadable inbox, 7 for an output folder inside it; 0 after SIGTERM/SIGINT."""
    from watcher.checks import check_inbox, check_no_loops

    inbox = check_inbox(settings.inbox)
    check_no_loops(settings, inbox)
    from watcher.enqueue import (  # Celery only once the checks passed
        JobSender,
        connect_redis,
    )
    from watcher.service import Watcher

    settings.log_once("watcher")
    for library in ("watchdog", "redis", "kombu", "celery"):
        # Their debug output (every inotify event, every connection) would drown the watcher's own decisions.
        logging.getLogger(library).setLevel(max(logging.INFO, logging.getLogger().getEffectiveLevel()))
    stop = threading.Event()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signal_number, lambda *_: stop.set())
    watcher = Watcher(settings, inbox=inbox, client=connect_redis(settings.effective_broker_url),
                      sender=JobSender(settings.effective_broker_url))
    watcher.run(stop)
    return 0
