"""An inotify observer that pairs the two halves of a rename within 50 ms instead of watchdog's 0.5 s (Linux only)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from watchdog.observers.inotify import (
    InotifyFullEmitter,
    InotifyObserver,
    InotifyWatchGroup,
)
from watchdog.observers.inotify_move_event_grouper import InotifyMoveEventGrouper

# The kernel reports both halves of a rename together; watchdog holds every moved-away event this
# long to pair it, and holds every later event behind it (0.5 s by default: a file dropped just
# after the worker moved one out would wait for it). Only this watcher's observers use the shorter delay.
MOVE_PAIRING_SECONDS = 0.05


class _QuickMoveGrouper(InotifyMoveEventGrouper):
    delay = MOVE_PAIRING_SECONDS


@dataclass
class _QuickWatchGroup(InotifyWatchGroup):
    _move_event_grouper: InotifyMoveEventGrouper = field(default_factory=_QuickMoveGrouper, init=False)


class _QuickEmitter(InotifyFullEmitter):
    def on_thread_start(self) -> None:
        self._inotify = _QuickWatchGroup(self._inotify_fd, os.fsencode(self.watch.path),
                                         is_recursive=self.watch.is_recursive,
                                         event_mask=self.get_event_mask_from_filter(),
                                         follow_symlink=self.watch.follow_symlink)


class QuickMoveObserver(InotifyObserver):
    """InotifyObserver(generate_full_events=True) whose emitters pair moves within MOVE_PAIRING_SECONDS."""

    def __init__(self) -> None:
        super().__init__(generate_full_events=True)
        self._emitter_class = _QuickEmitter
