"""Readiness: a file is ready once quiet (no write event, same size and mtime) for ready_delay seconds, or moved in."""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass
from typing import Callable

from watcher.content import Fingerprint


@dataclass
class _Pending:
    fingerprint: Fingerprint
    changed_at: float


class ReadinessTracker:
    """Files seen but not yet ready, with one deadline each in a heap (cheap with thousands pending)."""

    def __init__(self, ready_delay: float):
        self.ready_delay = ready_delay
        self._pending: dict[str, _Pending] = {}
        self._deadlines: list[tuple[float, int, str, _Pending]] = []
        self._order = itertools.count()

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, relative: str) -> bool:
        return relative in self._pending

    def note(self, relative: str, fingerprint: Fingerprint, *, now: float, event: bool) -> None:
        """A file was seen; a write event, or a changed size or mtime, restarts its quiet period."""
        pending = self._pending.get(relative)
        if pending is None:
            pending = self._pending[relative] = _Pending(fingerprint, now)
            self._schedule(relative, pending)
        elif event or fingerprint != pending.fingerprint:
            pending.fingerprint = fingerprint
            pending.changed_at = now  # its heap entry is moved when it comes due

    def arrived(self, relative: str, fingerprint: Fingerprint, *, now: float) -> None:
        """A file renamed or moved into place is complete as it appears: due at once, if still unchanged then."""
        pending = self._pending[relative] = _Pending(fingerprint, now - self.ready_delay)
        self._schedule(relative, pending)

    def forget(self, relative: str) -> None:
        self._pending.pop(relative, None)

    def forget_folder(self, prefix: str) -> None:
        for relative in [path for path in self._pending if path.startswith(prefix)]:
            del self._pending[relative]

    def next_deadline(self) -> float | None:
        return self._deadlines[0][0] if self._deadlines else None

    def due(self, now: float, current: Callable[[str], Fingerprint | None], *,
            limit: int | None = None) -> list[tuple[str, Fingerprint]]:
        """Files quiet for ready_delay whose fingerprint, looked up again now, is still the same (at most limit)."""
        ready = []
        while self._deadlines and self._deadlines[0][0] <= now and (limit is None or len(ready) < limit):
            _, _, relative, pending = heapq.heappop(self._deadlines)
            if self._pending.get(relative) is not pending:
                continue  # forgotten (or forgotten and seen again: that one has its own entry)
            if pending.changed_at + self.ready_delay > now:
                self._schedule(relative, pending)
                continue
            fingerprint = current(relative)
            if fingerprint is None:
                del self._pending[relative]
            elif fingerprint != pending.fingerprint:
                pending.fingerprint, pending.changed_at = fingerprint, now
                self._schedule(relative, pending)
            else:
                del self._pending[relative]
                ready.append((relative, fingerprint))
        return ready

    def _schedule(self, relative: str, pending: _Pending) -> None:
        heapq.heappush(self._deadlines, (pending.changed_at + self.ready_delay, next(self._order), relative, pending))
