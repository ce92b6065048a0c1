"""An inotify observer that pairs the two halves of a rename within 50 ms instead of watchdog's 0.5 s (Linux only)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from watchdog.observers.inotify import (
    InotifyFullEmitter,
    InotifyObserver,
    InotifyWatchGroup,
)
from watchdog.observers.inotify_move_event_grouper import InotifyMoveEventGrouper, PathedInotifyEvent

# The kernel reports both halves of a rename together; watchdog holds every moved-away event this
# long to pair it, and holds every later event behind it (0.5 s by default: a file dropped just
# after the worker moved one out would wait for it). Only this watcher's observers use the shorter delay.
MOVE_PAIRING_SECONDS = 0.05


class _QuickMoveGrouper(InotifyMoveEventGrouper):
    """Pairs moves within MOVE_PAIRING_SECONDS, and looks for a moved-away half only when one may be queued.

    watchdog looks for the other half of every moved-in event by walking its whole queue, twice; in a
    burst that queue holds thousands of events, held up behind the delayed halves of the files the
    workers move out. A file renamed in from outside the inbox, the common case, has no half to find:
    the cookies of the moved-away events that may still be queued say so at once.
    """

    delay = MOVE_PAIRING_SECONDS

    def __init__(self) -> None:
        super().__init__()
        self._moved_away: set[int] = set()  # cookies of moved-away events that may still wait in the queue

    def put_event(self, event: PathedInotifyEvent) -> None:
        if event.ev.is_moved_from:
            self._moved_away.add(event.ev.cookie)
        super().put_event(event)

    def _group_moved_to_event(self, to_event: PathedInotifyEvent):
        if to_event.ev.cookie not in self._moved_away:
            return to_event
        self._moved_away.discard(to_event.ev.cookie)
        return super()._group_moved_to_event(to_event)

    def get_queued_moved_from_event(self, cookie: int) -> PathedInotifyEvent | None:
        return super().get_queued_moved_from_event(cookie) if cookie in self._moved_away else None

    def read_event(self):
        event = super().read_event()
        if isinstance(event, PathedInotifyEvent) and event.ev.is_moved_from:
            self._moved_away.discard(event.ev.cookie)  # left the queue unpaired: moved out of the inbox
        return event

    def discard_pending_events(self) -> None:
        super().discard_pending_events()
        self._moved_away.clear()


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
