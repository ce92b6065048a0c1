"""The watcher's main loop: events and rescans in, ready files hashed, jobs out, all in one thread."""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from core import ledger
from core.settings import Settings
from watcher.content import (
    FileChanged,
    Fingerprint,
    NotRegular,
    regular_fingerprint,
    sha256_of,
)
from watcher.enqueue import JobSender, Outbox, ReadyFile, live_jobs
from watcher.filters import NOT_REGULAR, SYMLINK, Skip, SkipLog, folder_skip, name_skip
from watcher.observer import Notice, start_observer
from watcher.outage import TRANSIENT_ERRORS, BrokerHealth
from watcher.readiness import ReadinessTracker
from watcher.walk import walk

log = logging.getLogger("watcher")

LONGEST_WAIT_SECONDS = 0.25  # how long the loop sleeps at most, so a stop request is seen quickly
NOTICES_PER_STEP = 10_000
HASHES_PER_STEP = 256  # then send and look at events again: a burst neither delays the first job nor stalls events
LOOKUP_CHUNK = 1000


# A file a worker moved out of the inbox is forgotten by that worker a moment later: the watcher waits this
# long before it releases the claim itself, so that it mostly finds nothing left to release (one lookup for
# many files instead of a compare-and-delete each). Deleted or moved away by anyone else, a file's claim is
# released after the same wait, or at once when a file appears at its path again.
RELEASE_AFTER = 2.0
ORPHAN_AFTER = 15.0  # seconds after its claim before a job that is neither waiting nor held counts as lost
ORPHAN_CHECK = 5.0  # seconds between looks for lost jobs


@dataclass(slots=True)
class KnownFile:
    """A file whose content was claimed in the ledger (by this process or earlier), as it was then."""

    fingerprint: Fingerprint
    sha256: str
    claimed_at: float = 0.0  # monotonic; 0: claimed by someone else, when is to be looked up


class Watcher:
    """Turns events and rescans of one inbox into jobs, each file once, only when complete."""

    def __init__(self, settings: Settings, *, inbox: Path, client, sender: JobSender):
        self.settings = settings
        self.inbox = inbox
        self.client = client
        self.notices: queue.SimpleQueue = queue.SimpleQueue()
        self.tracker = ReadinessTracker(settings.ready_delay)
        self.health = BrokerHealth()
        self.outbox = Outbox(client=client, sender=sender, health=self.health, queue_batch=settings.queue_batch,
                             queue_wait=settings.queue_wait_ms / 1000, on_settled=self._settled)
        self.known: dict[str, KnownFile] = {}
        self.next_orphan_check = 0.0
        self.unreadable: dict[str, Fingerprint] = {}
        self.skips = SkipLog(log)
        self.next_rescan = float("inf")
        self.rescan_requested = False
        # Claimed files that left the inbox, oldest first: path -> (sha256, when); their claims are released.
        self.left_inbox: dict[str, tuple[str, float]] = {}
        self.release_now: set[str] = set()  # paths of left_inbox where a file appeared again
        self._inbox_prefix = os.path.join(str(inbox), "")

    def run(self, stop: threading.Event) -> None:
        """Watch until stop is set; the observer starts before the first scan so no file slips between."""
        observer, how = start_observer(self.inbox, self.notices, polling=self.settings.polling,
                                       poll_interval=self.settings.poll_interval)
        try:
            present = self.rescan(time.monotonic())
            log.info("watching %s (%s, full rescan %s): %d file(s) present; files are queued after %ss quiet",
                     self.inbox, how, f"every {self.settings.rescan_interval}s" if self.settings.rescan_interval
                     else "off", present, self.settings.ready_delay)
            while not stop.is_set():
                try:
                    self.step()
                    if not observer.is_alive():
                        observer = self._restart_observer(observer)
                except Exception:  # the outermost loop: one bad file or surprise never stops the watcher
                    log.exception("unexpected error in the watcher loop; carrying on")
                    stop.wait(1.0)
        finally:
            observer.stop()
            observer.join(timeout=5)
            try:
                if self.left_inbox and self.health.may_try(time.monotonic()):
                    self._release_left(time.monotonic(), force=True)
            except Exception:  # stopping anyway: the next start's rescan and orphan checks find what is left
                log.exception("could not release the claims of files that left the inbox")
            self.outbox.flush(time.monotonic(), force=True)
            log.info("watcher stopped: %d file(s) not yet ready, %d ready but not sent (they stay in the inbox "
                     "and are queued at the next start)", len(self.tracker), len(self.outbox))

    def _restart_observer(self, dead):
        """watchdog's observer thread can stop by itself (a network share that went away, for one): start a
        new one, and rescan at once for whatever arrived while nothing watched."""
        log.warning("the filesystem observer stopped; starting it again and rescanning the inbox")
        dead.join(timeout=1)
        observer, _ = start_observer(self.inbox, self.notices, polling=self.settings.polling,
                                     poll_interval=self.settings.poll_interval)
        self.rescan(time.monotonic())
        return observer

    def step(self) -> None:
        """Handle the notices that arrived, hash what became ready, rescan when due, send what is due."""
        try:
            kind, path = self.notices.get(timeout=self._wait_seconds(time.monotonic()))
            self.handle(kind, path, now=time.monotonic())
            for _ in range(NOTICES_PER_STEP):
                kind, path = self.notices.get_nowait()
                self.handle(kind, path, now=time.monotonic())
        except queue.Empty:
            pass
        now = time.monotonic()
        if self.left_inbox and self.health.may_try(now):
            self._release_left(now)
        for relative, fingerprint in self.tracker.due(now, self._current_fingerprint, limit=HASHES_PER_STEP):
            self._hash(relative, fingerprint, now=now)
        if self.rescan_requested or now >= self.next_rescan:
            self.rescan(now)
        if now >= self.next_orphan_check:
            self.next_orphan_check = now + ORPHAN_CHECK
            self.resend_lost(now)
        was_down = self.health.down
        self.outbox.flush(now)
        if self.health.down and self.health.may_try(now) and not len(self.outbox):
            self._probe(now)
        if was_down and not self.health.down:
            self.rescan_requested = True  # Redis may have come back empty: check the ledger at once

    def handle(self, kind: Notice, absolute: str, *, now: float) -> None:
        relative = self._relative(absolute)
        if relative is None:
            return
        if kind is Notice.CHANGED:
            self._changed(relative, now=now)
        elif kind is Notice.ARRIVED:
            self._changed(relative, now=now, arrived=True)
        elif kind is Notice.GONE:
            self._forget(relative, now=now)
        elif kind is Notice.FOLDER:
            skipped = next(filter(None, map(folder_skip, relative.split("/"))), None)
            if skipped:
                self.skips.report(relative, skipped)
                return
            for found, fingerprint in walk(self.inbox / relative, self.settings.extensions, prefix=relative + "/",
                                           on_skip=self.skips.report):
                self._seen(found, fingerprint, now=now)
        elif kind is Notice.FOLDER_GONE:
            self._forget_folder(relative + "/", now=now)

    def rescan(self, now: float) -> int:
        """Walk the whole inbox: new or changed files start their quiet period, claimed ones are checked."""
        self.rescan_requested = False
        interval = self.settings.rescan_interval
        self.next_rescan = now + interval if interval else float("inf")
        present: set[str] = set()
        skipped: set[str] = set()
        claimed: list[str] = []

        def report(relative: str, skip: Skip) -> None:
            skipped.add(relative)
            self.skips.report(relative, skip)

        for relative, fingerprint in walk(self.inbox, self.settings.extensions, on_skip=report):
            present.add(relative)
            if self._seen(relative, fingerprint, now=now):
                claimed.append(relative)
        for table in (self.known, self.unreadable):
            for relative in [path for path in table if path not in present]:
                del table[relative]
        self.skips.retain(present | skipped)
        self._reconcile(claimed, now=now)
        log.debug("rescan: %d file(s) present, %d not yet ready, %d waiting to be sent", len(present),
                  len(self.tracker), len(self.outbox))
        return len(present)

    def _seen(self, relative: str, fingerprint: Fingerprint, *, now: float) -> bool:
        """A file found by a walk; True when it is unchanged since it was claimed (for _reconcile)."""
        known = self.known.get(relative)
        if known is not None and known.fingerprint == fingerprint:
            return True
        waiting = self.outbox.get(relative)
        if (waiting is not None and waiting.fingerprint == fingerprint) or self.unreadable.get(relative) == fingerprint:
            return False
        if relative in self.left_inbox:
            self.release_now.add(relative)
        self.tracker.note(relative, fingerprint, now=now, event=False)
        return False

    def _changed(self, relative: str, *, now: float, arrived: bool = False) -> None:
        """A write, close or attribute event (quiet period starts again), or a file moved in (ready at once)."""
        skipped = name_skip(relative, self.settings.extensions)
        if skipped:
            self.skips.report(relative, skipped)
            return
        fingerprint = self._current_fingerprint(relative)
        if fingerprint is None:
            return
        if relative in self.left_inbox:  # its old claim goes before the new file can be claimed
            self.release_now.add(relative)
        known = self.known.get(relative)
        waiting = self.outbox.get(relative)
        if known is not None and known.fingerprint == fingerprint:
            return
        if waiting is not None:
            if waiting.fingerprint == fingerprint:
                return
            self.outbox.discard(relative)  # written to again: not ready any more
        if arrived:
            self.tracker.arrived(relative, fingerprint, now=now)
        else:
            self.tracker.note(relative, fingerprint, now=now, event=True)

    def _forget(self, relative: str, *, now: float) -> None:
        self.tracker.forget(relative)
        self.outbox.discard(relative)
        known = self.known.pop(relative, None)
        if known is not None:
            self._left(relative, known.sha256, now=now)
        self.unreadable.pop(relative, None)
        self.skips.forget(relative)

    def _forget_folder(self, prefix: str, *, now: float) -> None:
        self.tracker.forget_folder(prefix)
        self.outbox.discard_folder(prefix)
        for relative in [path for path in self.known if path.startswith(prefix)]:
            self._left(relative, self.known.pop(relative).sha256, now=now)
        for relative in [path for path in self.unreadable if path.startswith(prefix)]:
            del self.unreadable[relative]

    def _left(self, relative: str, sha256: str, *, now: float) -> None:
        """A claimed file left the inbox: its claim is released by _release_left (oldest departures first)."""
        self.left_inbox.pop(relative, None)
        self.left_inbox[relative] = (sha256, now)

    def _release_left(self, now: float, *, force: bool = False) -> None:
        """Forget claims of files deleted or moved away before a worker finished them (the worker skips
        their jobs as stale), so the same content dropped at the same path later is queued again. The
        ledger only forgets an entry for the same content, so a newer file at that path keeps its claim.
        Released RELEASE_AFTER seconds after they left (a worker that moved one out forgets it itself
        meanwhile), at once where a file appeared at the path again, and all of them with `force` (when
        the watcher stops)."""
        self.release_now.intersection_update(self.left_inbox)
        due = dict.fromkeys(self.release_now)
        for relative, (_, left) in self.left_inbox.items():
            if now - left < RELEASE_AFTER and not force:
                break
            due[relative] = None
        if not due:
            return
        try:
            ledger.release(self.client, [(relative, self.left_inbox[relative][0]) for relative in due])
        except TRANSIENT_ERRORS as error:  # kept, marks and all, for when Redis is back
            self.health.failed(error, now=now, waiting=len(self.outbox))
            return
        for relative in due:
            self.left_inbox.pop(relative, None)
        self.release_now.difference_update(due)

    def _current_fingerprint(self, relative: str) -> Fingerprint | None:
        """The fingerprint of a regular file, or None (gone; or a symlink or special file, logged once)."""
        path = self.inbox / relative
        try:
            return regular_fingerprint(path)
        except NotRegular:
            self.skips.report(relative, SYMLINK if path.is_symlink() else NOT_REGULAR)
        except FileNotFoundError:
            pass
        except OSError as error:
            self.skips.report(relative, Skip(f"cannot look at it: {error.strerror}", logging.WARNING))
        return None

    def _hash(self, relative: str, fingerprint: Fingerprint, *, now: float) -> None:
        """Hash a file found quiet; it goes to the outbox, or back to waiting when it changed meanwhile."""
        try:
            sha256, after = sha256_of(self.inbox / relative)
        except FileChanged:
            after = self._current_fingerprint(relative)
            if after is not None:
                self.tracker.note(relative, after, now=now, event=True)
            return
        except NotRegular:
            self.skips.report(relative, NOT_REGULAR)
            return
        except FileNotFoundError:
            return
        except OSError as error:
            if self.unreadable.get(relative) != fingerprint:
                log.warning("cannot read %s (%s); it is tried again once it changes", relative, error.strerror)
            self.unreadable[relative] = fingerprint
            return
        if after != fingerprint:
            self.tracker.note(relative, after, now=now, event=True)
            return
        self.unreadable.pop(relative, None)
        log.debug("ready: %s (sha256 %s)", relative, sha256)
        self.outbox.add(ReadyFile(relative, sha256, after, now))

    def _settled(self, ready: ReadyFile, job: str | None) -> None:
        """A file claimed and sent in `job` now, or found claimed already (job None: its claim is looked up)."""
        previous = self.known.get(ready.relative)
        if job is None and previous is not None and previous.sha256 == ready.sha256:
            self.known[ready.relative] = KnownFile(ready.fingerprint, ready.sha256, previous.claimed_at)
            return
        self.known[ready.relative] = KnownFile(ready.fingerprint, ready.sha256, time.monotonic() if job else 0.0)

    def resend_lost(self, now: float) -> None:
        """Send again files whose job is lost: claimed over ORPHAN_AFTER ago, still claimed and in the inbox,
        yet the job their claim names is neither waiting in the queue nor held by a worker (a watcher
        killed between claim and send, a worker killed in the instant it popped the job, a retry that
        could not be published). A live worker's heartbeat keeps its jobs held, and a dead one's go back to
        the queue after the visibility timeout, so neither is sent twice. A duplicate would be harmless;
        a lost job would strand its files."""
        candidates = [(relative, known) for relative, known in self.known.items()
                      if now - known.claimed_at > ORPHAN_AFTER]
        if not candidates or not self.health.may_try(now):
            return
        wall = time.time()
        try:
            waiting = []
            for (relative, known), entry in zip(candidates, self._claims([r for r, _ in candidates])):
                if entry is None or entry.sha256 != known.sha256 or entry.state != ledger.QUEUED:
                    known.claimed_at = float("inf")  # done and kept, or the rescan's business: not a job
                elif not known.claimed_at and wall - entry.stamp <= ORPHAN_AFTER:
                    known.claimed_at = now - (wall - entry.stamp)  # claimed by someone else lately
                else:
                    waiting.append((relative, known, entry.job or ""))
            if not waiting:
                return
            live = live_jobs(self.client)
            lost = [(relative, known, job) for relative, known, job in waiting if job not in live
                    and self._current_fingerprint(relative) == known.fingerprint]
            if lost:
                ledger.release(self.client, [(relative, known.sha256) for relative, known, _ in lost])
        except TRANSIENT_ERRORS as error:
            self.health.failed(error, now=now, waiting=len(self.outbox))
            return
        for relative, known, job in lost:
            log.warning("queueing %s again: its job %s is neither waiting nor held by a worker (lost)", relative,
                        job or "(unnamed)")
            del self.known[relative]
            self.outbox.add(ReadyFile(relative, known.sha256, known.fingerprint, now))

    def _reconcile(self, relatives: list[str], *, now: float) -> None:
        """Send again claimed files still in the inbox whose ledger entry was lost (Redis came back without
        its data, and the queue went with it). Claims whose job was lost are resend_lost's business. A file
        sent twice is harmless (the worker skips a job whose file is gone or changed); a file never sent
        would wait forever."""
        if not relatives:
            return
        if not self.health.may_try(now):
            return  # the rescan that follows the outage's end does it
        try:
            lost: list[tuple[KnownFile, str]] = []
            for relative, entry in zip(relatives, self._claims(relatives)):
                known = self.known[relative]
                if entry is None or entry.sha256 != known.sha256:
                    lost.append((known, relative))
            if lost:
                ledger.release(self.client, [(relative, known.sha256) for known, relative in lost])
        except TRANSIENT_ERRORS as error:
            self.health.failed(error, now=now, waiting=len(self.outbox))
            return
        self.health.succeeded(now=now)
        for known, relative in lost:
            # Looked at after the ledger: a worker moves a file out before it forgets it, so a file that a
            # worker has just finished is seen gone here rather than queued again.
            if self._current_fingerprint(relative) != known.fingerprint:
                continue
            log.warning("queueing %s again: the ledger has no record of it (Redis lost its data?)", relative)
            del self.known[relative]
            self.outbox.add(ReadyFile(relative, known.sha256, known.fingerprint, now))

    def _claims(self, relatives: list[str]) -> list[ledger.Entry | None]:
        """The ledger entries of these paths, one HMGET per LOOKUP_CHUNK of them."""
        return [entry for start in range(0, len(relatives), LOOKUP_CHUNK)
                for entry in ledger.lookup(self.client, relatives[start:start + LOOKUP_CHUNK])]

    def _probe(self, now: float) -> None:
        try:
            self.client.ping()
        except TRANSIENT_ERRORS as error:
            self.health.failed(error, now=now, waiting=len(self.outbox))
        else:
            self.health.succeeded(now=now)

    def _wait_seconds(self, now: float) -> float:
        deadlines = [self.next_rescan, now + LONGEST_WAIT_SECONDS]
        for deadline in (self.tracker.next_deadline(), self.outbox.next_deadline()):
            if deadline is not None:
                deadlines.append(deadline)
        if self.health.down:
            deadlines.append(self.health.retry_at)
        return max(0.0, min(deadlines) - now)

    def _relative(self, absolute: str) -> str | None:
        if absolute.startswith(self._inbox_prefix) and "/." not in absolute and os.sep == "/":
            return absolute[len(self._inbox_prefix):] or None  # the common case, without relpath's system calls
        relative = os.path.relpath(absolute, self.inbox)
        if relative == "." or relative.startswith(".." + os.sep) or relative == "..":
            return None
        return Path(relative).as_posix()
