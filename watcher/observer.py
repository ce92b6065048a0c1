"""Filesystem events from watchdog (inotify, or polling for network shares) turned into notices."""

from __future__ import annotations

import logging
import os
import queue
from enum import Enum
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

log = logging.getLogger(__name__)

# Opened and closed-without-writing events are left out: hashing a file would trigger them.
WATCHED_EVENTS = [FileCreatedEvent, FileModifiedEvent, FileClosedEvent, FileAttribEvent, FileMovedEvent,
                  FileDeletedEvent, DirCreatedEvent, DirMovedEvent, DirDeletedEvent]



class Notice(Enum):
    """What the main loop is told about a path."""

    CHANGED = "changed"          # created, written, closed after writing, attributes changed
    ARRIVED = "arrived"          # renamed or moved into place: complete as it appears
    GONE = "gone"                # deleted or moved away
    FOLDER = "folder"            # a folder appeared (created or moved in): walk it
    FOLDER_GONE = "folder gone"  # a folder disappeared: forget what was under it


class EventForwarder(FileSystemEventHandler):
    """Puts (notice, absolute path) on a queue; the main loop does all the work in one thread."""

    def __init__(self, notices: queue.SimpleQueue):
        self.notices = notices

    def on_any_event(self, event: FileSystemEvent) -> None:
        source = os.fsdecode(event.src_path)
        if isinstance(event, (FileCreatedEvent, FileModifiedEvent, FileClosedEvent, FileAttribEvent)):
            self.notices.put((Notice.CHANGED, source))
        elif isinstance(event, FileMovedEvent):
            # With full events an end outside the watched tree is empty: moved in from, or out to, elsewhere.
            if source:
                self.notices.put((Notice.GONE, source))
            if event.dest_path:
                self.notices.put((Notice.ARRIVED, os.fsdecode(event.dest_path)))
        elif isinstance(event, FileDeletedEvent):
            self.notices.put((Notice.GONE, source))
        elif isinstance(event, DirCreatedEvent):
            self.notices.put((Notice.FOLDER, source))
        elif isinstance(event, DirMovedEvent):
            if source:
                self.notices.put((Notice.FOLDER_GONE, source))
            if event.dest_path:
                self.notices.put((Notice.FOLDER, os.fsdecode(event.dest_path)))
        elif isinstance(event, DirDeletedEvent):
            self.notices.put((Notice.FOLDER_GONE, source))


def start_observer(inbox: Path, notices: queue.SimpleQueue, *, polling: bool,
                   poll_interval: float) -> tuple[BaseObserver, str]:
    """A started observer of the whole inbox tree and a description of how it watches."""
    if not polling:
        try:
            return _start(_native_observer(), inbox, notices), "native filesystem events"
        except OSError as error:  # inotify watch or instance limits reached
            log.warning("native filesystem events unavailable (%s); polling every %ss instead", error,
                        poll_interval)
    return _start(PollingObserver(timeout=poll_interval), inbox, notices), f"polling every {poll_interval}s"


def _native_observer() -> BaseObserver:
    """inotify with full move events (a file moved in from outside the inbox is a move, not a creation)."""
    try:
        from watcher.quick_moves import QuickMoveObserver
    except ImportError:  # not Linux
        return Observer()
    return QuickMoveObserver()


def _start(observer: BaseObserver, inbox: Path, notices: queue.SimpleQueue) -> BaseObserver:
    observer.schedule(EventForwarder(notices), str(inbox), recursive=True, event_filter=WATCHED_EVENTS)
    observer.start()
    return observer
