"""The watcher's parts on their own: name filters, readiness, start-up checks, the ledger lookup, no TensorFlow."""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT

from core import ledger
from core.errors import FolderLoopError, InboxError
from core.settings import DEFAULT_EXTENSIONS, Settings
from watcher.checks import check_inbox, check_no_loops
from watcher.content import Fingerprint, sha256_of
from watcher.filters import name_skip
from watcher.readiness import ReadinessTracker

pytestmark = pytest.mark.fast


@pytest.mark.parametrize("relative", [
    ".hidden.png", ".DS_Store", "._scan.png", "scan.png.part", "scan.tmp", "scan.png~", "Thumbs.db",
    "desktop.ini", "@eaDir/scan.png", "sub/@EADIR/scan.png", ".stfolder/scan.png", "a/.git/scan.png",
    "notes.docx", "README", "bad \udcff.png",
])
def test_skipped_names(relative):
    assert name_skip(relative, DEFAULT_EXTENSIONS) is not None


@pytest.mark.parametrize("relative", ["scan.png", "SCAN.PNG", "2026/scan 7.jpeg", "a.b/c.tiff", "Ünï.webp"])
def test_accepted_names(relative):
    assert name_skip(relative, DEFAULT_EXTENSIONS) is None


def test_unsupported_extensions_are_logged_at_info_and_temporary_files_at_debug():
    assert name_skip("x.docx", DEFAULT_EXTENSIONS).level == logging.INFO
    assert name_skip("x.png.part", DEFAULT_EXTENSIONS).level == logging.DEBUG
    assert name_skip("x.pdf", DEFAULT_EXTENSIONS) is None  # scanners' PDFs are read, every page


def test_a_file_is_ready_only_after_ready_delay_without_events_or_changes():
    tracker = ReadinessTracker(ready_delay=1.0)
    first = Fingerprint(10, 1, 1, 7)
    grown = Fingerprint(20, 2, 2, 7)
    current = {"a.png": first}
    tracker.note("a.png", first, now=0.0, event=True)
    assert tracker.due(0.9, current.get) == []
    tracker.note("a.png", first, now=0.8, event=True)  # closed after another write: quiet period restarts
    assert tracker.due(1.5, current.get) == []
    current["a.png"] = grown  # changed without an event reaching us (polling, lost event)
    assert tracker.due(1.8, current.get) == []
    assert tracker.due(2.7, current.get) == []
    assert tracker.due(2.8, current.get) == [("a.png", grown)]
    assert len(tracker) == 0


def test_a_file_moved_in_is_ready_at_once_unless_written_to_afterwards():
    tracker = ReadinessTracker(ready_delay=1.0)
    fingerprint, grown = Fingerprint(10, 1, 1, 7), Fingerprint(20, 2, 2, 7)
    tracker.arrived("moved.png", fingerprint, now=5.0)
    assert tracker.next_deadline() <= 5.0
    assert tracker.due(5.0, {"moved.png": fingerprint}.get) == [("moved.png", fingerprint)]
    tracker.arrived("again.png", fingerprint, now=5.0)
    tracker.note("again.png", grown, now=5.0, event=True)  # a writer kept it open and wrote on: wait as usual
    assert tracker.due(5.5, {"again.png": grown}.get) == []
    assert tracker.due(6.0, {"again.png": grown}.get) == [("again.png", grown)]


def test_a_rescan_does_not_restart_the_quiet_period_and_a_vanished_file_is_dropped():
    tracker = ReadinessTracker(ready_delay=1.0)
    fingerprint = Fingerprint(1, 1, 1, 1)
    tracker.note("a.png", fingerprint, now=0.0, event=False)
    tracker.note("a.png", fingerprint, now=0.5, event=False)
    tracker.note("gone.png", fingerprint, now=0.0, event=False)
    assert tracker.due(1.0, {"a.png": fingerprint}.get) == [("a.png", fingerprint)]
    assert len(tracker) == 0


def test_due_files_beyond_the_limit_wait_for_the_next_step():
    tracker = ReadinessTracker(ready_delay=0.0)
    fingerprint = Fingerprint(1, 1, 1, 1)
    for index in range(5):
        tracker.note(f"{index}.png", fingerprint, now=0.0, event=False)
    assert len(tracker.due(1.0, lambda relative: fingerprint, limit=3)) == 3
    assert len(tracker.due(1.0, lambda relative: fingerprint, limit=3)) == 2


def test_forgetting_and_seeing_again_gives_one_ready_file():
    tracker = ReadinessTracker(ready_delay=1.0)
    fingerprint = Fingerprint(1, 1, 1, 1)
    tracker.note("a.png", fingerprint, now=0.0, event=True)
    tracker.forget("a.png")
    tracker.note("a.png", fingerprint, now=0.2, event=True)
    assert tracker.due(5.0, {"a.png": fingerprint}.get) == [("a.png", fingerprint)]


def test_hashing_is_chunked_content_identity(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(b"x" * (3 * (1 << 20) + 5))
    digest, fingerprint = sha256_of(path)
    import hashlib

    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert fingerprint.size == 3 * (1 << 20) + 5


def test_start_up_checks(tmp_path):
    inbox = tmp_path / "inbox"
    with pytest.raises(InboxError):
        check_inbox(inbox)
    inbox.mkdir()
    resolved = check_inbox(inbox)
    outside = Settings(inbox=inbox, results=tmp_path / "results", processed=tmp_path / "p", failed=tmp_path / "f")
    check_no_loops(outside, resolved)
    with pytest.raises(FolderLoopError):
        check_no_loops(outside.replace(results=inbox / "results"), resolved)
    # Originals that are kept never move, so their folder inside the inbox loops nothing.
    check_no_loops(outside.replace(processed=inbox / "processed", on_success="keep"), resolved)
    with pytest.raises(FolderLoopError):
        check_no_loops(outside.replace(processed=inbox / "processed"), resolved)


def test_ledger_lookup_reads_several_paths_in_one_round_trip(redis_client):
    ledger.claim(redis_client, [("a.png", "aa")])
    ledger.finish_many(redis_client, [("a.png", "aa", True)])
    ledger.claim(redis_client, [("b.png", "bb")])
    found = ledger.lookup(redis_client, ["a.png", "b.png", "c.png"])
    assert [entry and entry[:2] for entry in found] == [("done", "aa"), ("queued", "bb"), None]
    assert ledger.lookup(redis_client, []) == []


def test_the_watcher_never_imports_tensorflow(tmp_path):
    """`digits watch` end to end as far as the checks, then every watcher module: no TensorFlow or Keras."""
    script = (
        "import sys\n"
        "from digits.cli import main\n"
        f"code = main(['watch', '--inbox', {str(tmp_path / 'missing')!r}])\n"
        "import watcher, watcher.main, watcher.service, watcher.observer, watcher.enqueue, watcher.walk, watcher.quick_moves\n"
        "heavy = sorted(name for name in sys.modules if name.split('.')[0] in ('tensorflow', 'keras'))\n"
        "print(code, heavy)\n"
    )
    finished = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True,
                              timeout=120)
    assert finished.stdout.strip() == "6 []", finished.stderr


def test_a_stopped_observer_is_replaced_and_what_arrived_meanwhile_is_found(tmp_path, redis_server):
    import queue as queues

    from watcher.enqueue import JobSender, connect_redis
    from watcher.observer import start_observer
    from watcher.service import Watcher

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    settings = Settings(inbox=inbox, results=tmp_path / "results", broker_url=redis_server.url)
    watcher = Watcher(settings, inbox=inbox, client=connect_redis(redis_server.url),
                      sender=JobSender(redis_server.url))
    dead, _ = start_observer(inbox, queues.SimpleQueue(), polling=True, poll_interval=0.1)
    dead.stop()  # as when a network share goes away under a polling observer
    dead.join(timeout=5)
    (inbox / "arrived meanwhile.png").write_bytes(b"nobody watched")
    replacement = watcher._restart_observer(dead)
    try:
        assert replacement.is_alive() and not dead.is_alive()
        assert "arrived meanwhile.png" in watcher.tracker  # the rescan found it: it starts its quiet period
    finally:
        replacement.stop()
        replacement.join(timeout=5)


def test_a_lost_job_is_sent_again_and_a_waiting_one_is_not(tmp_path, redis_server, redis_client):
    from core import protocol
    from watcher import service
    from watcher.enqueue import JobSender, connect_redis
    from watcher.service import Watcher

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    settings = Settings(inbox=inbox, results=tmp_path / "results", broker_url=redis_server.url, queue_wait_ms=0)
    watcher = Watcher(settings, inbox=inbox, client=connect_redis(redis_server.url),
                      sender=JobSender(redis_server.url))
    (inbox / "lost.png").write_bytes(b"its job vanished")
    watcher.rescan(0.0)
    wait = settings.ready_delay + 0.1
    for relative, fingerprint in watcher.tracker.due(wait, watcher._current_fingerprint):
        watcher._hash(relative, fingerprint, now=wait)
    watcher.outbox.flush(wait, force=True)
    assert redis_client.llen(protocol.QUEUE) == 1 and ledger.lookup(redis_client, ["lost.png"])[0].job
    later = watcher.known["lost.png"].claimed_at + service.ORPHAN_AFTER + 1
    watcher.resend_lost(later)
    assert "lost.png" not in watcher.outbox  # its job waits in the queue: nothing to do

    redis_client.delete(protocol.QUEUE)  # popped by a worker that died before recording it
    watcher.resend_lost(later)
    assert "lost.png" in watcher.outbox  # sent again
    watcher.outbox.flush(later + 1, force=True)
    assert redis_client.llen(protocol.QUEUE) == 1


def test_claims_left_by_a_killed_watcher_are_sent_again_only_when_their_job_is_lost(tmp_path, redis_server,
                                                                                  redis_client):
    """A restarted watcher finds files claimed by its predecessor: the one whose job never went out is sent
    again once its claim is old; one whose job waits in the queue, and a fresh claim, are left alone."""
    from core import protocol
    from watcher import service
    from watcher.enqueue import JobSender, ReadyFile, connect_redis
    from watcher.service import Watcher

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    settings = Settings(inbox=inbox, results=tmp_path / "results", broker_url=redis_server.url, queue_wait_ms=0)
    old = time.time() - 2 * service.ORPHAN_AFTER
    for name, job in (("never sent.png", "job-that-never-went-out"), ("waiting.png", "job-in-the-queue"),
                      ("fresh.png", "job-being-sent")):
        (inbox / name).write_bytes(name.encode())
        sha = hashlib.sha256(name.encode()).hexdigest()
        stamp = time.time() if name == "fresh.png" else old
        redis_client.hset(protocol.LEDGER_KEY, name, f"queued:{sha}:{stamp:.6f}:{job}")
    JobSender(redis_server.url).send([ReadyFile("waiting.png", "", None, 0.0)], "job-in-the-queue")
    watcher = Watcher(settings, inbox=inbox, client=connect_redis(redis_server.url),
                      sender=JobSender(redis_server.url))
    watcher.rescan(0.0)
    now = settings.ready_delay + 0.1
    for relative, fingerprint in watcher.tracker.due(now, watcher._current_fingerprint):
        watcher._hash(relative, fingerprint, now=now)
    watcher.outbox.flush(now, force=True)  # all three are claimed already: nothing is sent
    assert redis_client.llen(protocol.QUEUE) == 1 and sorted(watcher.known) == ["fresh.png", "never sent.png",
                                                                                 "waiting.png"]
    later = time.monotonic()
    watcher.resend_lost(later)
    assert [relative for relative in ("never sent.png", "waiting.png", "fresh.png") if relative in watcher.outbox] \
        == ["never sent.png"]
    watcher.resend_lost(later + service.ORPHAN_AFTER + 1)
    assert "fresh.png" in watcher.outbox  # its job never came either, so it goes out once its claim is old


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify")
def test_moves_in_out_and_within_the_inbox_come_as_arrivals_departures_and_pairs(tmp_path):
    import queue as queues

    from watchdog.events import FileMovedEvent, FileSystemEventHandler

    from watcher.observer import WATCHED_EVENTS, _native_observer

    class Recorder(FileSystemEventHandler):
        def __init__(self):
            self.events = queues.SimpleQueue()

        def on_any_event(self, event):
            self.events.put(event)

    inbox, outside = tmp_path / "inbox", tmp_path / "outside"
    inbox.mkdir()
    outside.mkdir()
    for number in range(200):  # many moves at once: a long queue, and each move still paired or not rightly
        (outside / f"in-{number}.png").write_bytes(b"x")
    (inbox / "out.png").write_bytes(b"x")
    (inbox / "before.png").write_bytes(b"x")
    recorder, observer = Recorder(), _native_observer()
    observer.schedule(recorder, str(inbox), recursive=True, event_filter=WATCHED_EVENTS)
    observer.start()
    try:
        (inbox / "out.png").rename(outside / "out.png")
        for number in range(200):
            (outside / f"in-{number}.png").rename(inbox / f"in-{number}.png")
        (inbox / "before.png").rename(inbox / "after.png")
        moves, deadline = [], time.monotonic() + 10
        while len(moves) < 202 and time.monotonic() < deadline:
            try:
                event = recorder.events.get(timeout=0.5)
            except queues.Empty:
                continue
            if isinstance(event, FileMovedEvent):
                moves.append((Path(event.src_path).name if event.src_path else "",
                               Path(event.dest_path).name if event.dest_path else ""))
    finally:
        observer.stop()
        observer.join(timeout=5)
    assert ("out.png", "") in moves  # moved out: a departure
    assert sorted(moves).count(("", "in-0.png")) == 1 and sum(source == "" for source, _ in moves) == 200
    assert ("before.png", "after.png") in moves  # renamed within: one move, both halves paired


def test_a_claim_is_released_a_while_after_its_file_left_or_at_once_when_the_file_is_back(tmp_path, redis_server,
                                                                                          redis_client):
    """A file a worker moved out is forgotten by that worker a moment later: the watcher releases what is
    left of its claim only after RELEASE_AFTER. The same content dropped again at once is queued again."""
    from core import protocol
    from watcher import service
    from watcher.enqueue import JobSender, connect_redis
    from watcher.observer import Notice
    from watcher.service import Watcher

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    settings = Settings(inbox=inbox, results=tmp_path / "results", broker_url=redis_server.url, queue_wait_ms=0)
    watcher = Watcher(settings, inbox=inbox, client=connect_redis(redis_server.url),
                      sender=JobSender(redis_server.url))

    def queue_what_is_due(now: float) -> None:
        for relative, fingerprint in watcher.tracker.due(now, watcher._current_fingerprint):
            watcher._hash(relative, fingerprint, now=now)
        watcher.outbox.flush(now, force=True)

    for name in ("moved.png", "again.png"):
        (inbox / name).write_bytes(b"content of " + name.encode())
    watcher.rescan(0.0)
    queue_what_is_due(settings.ready_delay + 0.1)
    assert redis_client.llen(protocol.QUEUE) == 1 and all(ledger.lookup(redis_client, ["moved.png", "again.png"]))

    now = 10.0
    for name in ("moved.png", "again.png"):
        (inbox / name).unlink()  # deleted before any worker took them: their job is stale
        watcher.handle(Notice.GONE, str(inbox / name), now=now)
    watcher._release_left(now + service.RELEASE_AFTER / 2)
    assert all(ledger.lookup(redis_client, ["moved.png", "again.png"]))  # not yet

    (inbox / "again.png").write_bytes(b"content of again.png")  # the same content, back at once
    watcher.handle(Notice.ARRIVED, str(inbox / "again.png"), now=now + 1)
    client, watcher.client = watcher.client, connect_redis("redis://127.0.0.1:1/0")  # Redis unreachable
    watcher._release_left(now + 1)
    assert watcher.release_now == {"again.png"}  # kept for when Redis is back
    watcher.client = client
    watcher.health.succeeded(now=now + 1)
    watcher._release_left(now + 1)
    assert ledger.lookup(redis_client, ["moved.png", "again.png"])[1] is None  # released at once
    queue_what_is_due(now + 1)
    assert redis_client.llen(protocol.QUEUE) == 2 and ledger.lookup(redis_client, ["again.png"])[0] is not None

    watcher._release_left(now + service.RELEASE_AFTER)
    assert ledger.lookup(redis_client, ["moved.png"])[0] is None  # released once its wait was over
    assert ledger.lookup(redis_client, ["again.png"])[0] is not None  # the new drop keeps its claim
