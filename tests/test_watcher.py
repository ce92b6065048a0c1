"""The real watcher process against real filesystem events and a real Redis: every file once, when complete."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT, RedisServer, free_port, wait_until

from core import ledger, protocol

QUEUE = protocol.QUEUE


def queued_jobs(client) -> list[dict]:
    """Celery messages waiting in the `digits` list, oldest first: {"task", "files"} read straight from Redis."""
    jobs = []
    for raw in reversed(client.lrange(QUEUE, 0, -1)):  # kombu LPUSHes, workers BRPOP
        envelope = json.loads(raw)
        assert envelope["content-type"] == "application/json"
        args, kwargs, _ = json.loads(base64.b64decode(envelope["body"]))
        assert args == []
        jobs.append({"task": envelope["headers"]["task"], "files": kwargs["files"]})
    return jobs


def queued_files(client) -> list[dict]:
    return [entry for job in queued_jobs(client) for entry in job["files"]]


def queued_paths(client) -> list[str]:
    return sorted(entry["path"] for entry in queued_files(client))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class WatcherProcess:
    """`python -m digits watch` as a child process, its log in a file (a pipe could fill up and block it)."""

    def __init__(self, tmp_path: Path, *, inbox: Path, broker_url: str, extra: list[str] = (), name="watcher"):
        self.log_path = tmp_path / f"{name}.log"
        self.command = [sys.executable, "-m", "digits", "watch", "--inbox", str(inbox),
                        "--results", str(tmp_path / "results"), "--processed", str(tmp_path / "processed"),
                        "--failed", str(tmp_path / "failed"), "--broker-url", broker_url,
                        "--ready-delay", "0.5", "--log-level", "DEBUG", *extra]
        self.process: subprocess.Popen | None = None
        self.started_at = 0.0

    def start(self) -> "WatcherProcess":
        environment = {name: value for name, value in os.environ.items() if not name.startswith("DIGITS_")}
        with open(self.log_path, "ab") as log_file:
            self.started_at = time.monotonic()
            self.process = subprocess.Popen(self.command, cwd=PROJECT_ROOT, env=environment, stdout=log_file,
                                            stderr=subprocess.STDOUT)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, *, count: int = 1, timeout: float = 30) -> None:
        def seen():
            assert self.process.poll() is None, f"watcher exited with {self.process.returncode}:\n{self.log()}"
            return self.log().count(text) >= count

        wait_until(seen, timeout=timeout, message=f"{text!r} in the watcher log")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=15)
        return self.process.returncode


@pytest.fixture
def inbox(tmp_path) -> Path:
    folder = tmp_path / "inbox"
    folder.mkdir()
    return folder


@pytest.fixture
def start_watcher(tmp_path, inbox, redis_server, redis_client):
    started: list[WatcherProcess] = []

    def start(*extra: str, broker_url: str | None = None) -> WatcherProcess:
        watcher = WatcherProcess(tmp_path, inbox=inbox, broker_url=broker_url or redis_server.url, extra=list(extra),
                                 name=f"watcher-{len(started)}").start()
        started.append(watcher)
        watcher.wait_for_log("watching ")
        return watcher

    yield start
    for watcher in started:
        assert watcher.stop() == 0, watcher.log()
        assert "Traceback" not in watcher.log()


def wait_for_paths(client, expected: list[str], *, timeout: float = 30) -> None:
    wait_until(lambda: queued_paths(client) == sorted(expected), timeout=timeout,
               message=f"exactly {len(expected)} queued file(s); last seen {queued_paths(client)[:20]}")


def test_files_present_at_start_are_queued_with_relative_paths_and_content_hashes(inbox, start_watcher,
                                                                                   redis_client):
    contents = {"one.png": b"first", "2026/scan 7.png": b"second", "a/b/c/Ünï.JPG": b"third"}
    for relative, data in contents.items():
        (inbox / relative).parent.mkdir(parents=True, exist_ok=True)
        (inbox / relative).write_bytes(data)

    start_watcher()

    wait_for_paths(redis_client, list(contents))
    jobs = queued_jobs(redis_client)
    assert {job["task"] for job in jobs} == {protocol.TASK_PROCESS_FILES}
    assert len(jobs) == 1  # ready together, so sent together
    assert {entry["path"]: entry["sha256"] for entry in queued_files(redis_client)} == {
        relative: sha256(data) for relative, data in contents.items()}
    assert {path: entry.state for path, entry in ledger.entries(redis_client).items()} == {
        relative: "queued" for relative in contents}


def test_a_file_written_in_pieces_over_two_seconds_is_queued_once_after_its_last_byte(inbox, start_watcher,
                                                                                       redis_client):
    start_watcher("--ready-delay", "3.0")
    reopened, held_open = inbox / "reopened.png", inbox / "held open.png"
    pieces = [bytes([index]) * 1000 for index in range(6)]
    with open(held_open, "wb") as held:
        for piece in pieces:
            # One writer reopens the file for each piece (close-after-write fires every time), the other
            # keeps it open; neither may be queued before its last byte.
            with open(reopened, "ab") as handle:
                handle.write(piece)
            held.write(piece)
            held.flush()
            assert queued_files(redis_client) == []
            time.sleep(0.2)  # the pieces arrive well within the 3 s quiet period of each other
    final = sha256(b"".join(pieces))

    wait_for_paths(redis_client, ["held open.png", "reopened.png"])
    assert {entry["sha256"] for entry in queued_files(redis_client)} == {final}
    # A file dropped after them is queued after any late event about them was handled: they stay queued once.
    (inbox / "later.png").write_bytes(b"dropped after the others")
    wait_for_paths(redis_client, ["held open.png", "later.png", "reopened.png"])
    assert len(queued_files(redis_client)) == 3


def test_a_file_moved_into_the_inbox_is_queued_at_once_and_one_copied_in_after_the_quiet_period(
        tmp_path, inbox, start_watcher, redis_client):
    (inbox / "sub").mkdir()
    start_watcher("--ready-delay", "5.0")
    outside = tmp_path / "elsewhere.png"
    outside.write_bytes(b"complete before it appears")
    (inbox / "written.png").write_bytes(b"written in place")  # closed after writing: waits for the quiet period
    os.rename(outside, inbox / "sub" / "moved in.png")  # an upload under a temporary name, then renamed
    (inbox / "renamed.png.part").write_bytes(b"renamed inside the inbox")
    os.rename(inbox / "renamed.png.part", inbox / "renamed.png")
    wait_for_paths(redis_client, ["renamed.png", "sub/moved in.png", "written.png"], timeout=30)
    jobs = [sorted(entry["path"] for entry in job["files"]) for job in queued_jobs(redis_client)]
    # Written first, yet queued in a later job: the moved files did not wait for the quiet period.
    assert jobs[-1] == ["written.png"] and sorted(sum(jobs[:-1], [])) == ["renamed.png", "sub/moved in.png"], jobs


def test_a_thousand_files_dropped_at_once_are_each_queued_exactly_once_in_few_jobs(tmp_path, inbox, start_watcher,
                                                                                    redis_client):
    watcher = start_watcher("--rescan-interval", "1")
    staging = tmp_path / "staging"
    staging.mkdir()
    expected = []
    for index in range(1000):
        name = f"drop/{index:04d}.png" if index % 2 else f"{index:04d}.png"
        expected.append(name)
        if index % 2:
            (staging / f"{index:04d}.png").write_bytes(b"scan %d" % index)
        else:
            (inbox / name).write_bytes(b"scan %d" % index)  # written in place
    os.rename(staging, inbox / "drop")  # a whole folder moved in at once

    wait_for_paths(redis_client, expected, timeout=60)
    watcher.wait_for_log("rescan:", count=watcher.log().count("rescan:") + 2)  # rescans queue nothing again
    files = queued_files(redis_client)
    assert len(files) == 1000
    # Files written one after another become ready one after another: each job takes what is ready within
    # queue_wait_ms (20), up to queue_batch (32), so how many jobs the files written in place make depends
    # on how fast this machine writes them; the folder moved in at once goes out in full jobs.
    jobs = queued_jobs(redis_client)
    assert len(jobs) < 500 + 500 // 32
    assert sum(1 for job in jobs if len(job["files"]) == 32) >= 500 // 32
    assert {entry["path"]: entry["sha256"] for entry in files}["drop/0001.png"] == sha256(b"scan 1")


def test_hidden_temporary_system_unsupported_and_special_files_are_skipped(tmp_path, inbox, start_watcher,
                                                                           redis_client):
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"not in the inbox")
    skipped = [".hidden.png", "scan.png.part", "scan.tmp", "scan.png~", ".DS_Store", "._scan.png", "Thumbs.db",
               "desktop.ini", "@eaDir/scan.png", ".stfolder/scan.png", "sub/.cache/scan.png", "notes.docx",
               "README"]
    for relative in skipped:
        (inbox / relative).parent.mkdir(parents=True, exist_ok=True)
        (inbox / relative).write_bytes(b"skip me")
    (inbox / "link.png").symlink_to(outside)
    os.mkfifo(inbox / "pipe.png")
    (inbox / os.fsdecode(b"bad name \xff.png")).write_bytes(b"undecodable")
    (inbox / "folder.png").mkdir()

    watcher = start_watcher("--rescan-interval", "0.5")
    (inbox / "late.png.part").write_bytes(b"being downloaded")
    (inbox / "GOOD.PNG").write_bytes(b"good")
    os.rename(inbox / "late.png.part", inbox / "late.png")  # renamed once complete: now it counts

    wait_for_paths(redis_client, ["GOOD.PNG", "late.png"])
    watcher.wait_for_log("rescan:", count=watcher.log().count("rescan:") + 2)
    assert queued_paths(redis_client) == ["GOOD.PNG", "late.png"]
    log = watcher.log()
    assert "skipped link.png: symbolic link" in log
    assert "skipped pipe.png: not a regular file" in log
    assert "skipped notes.docx: unsupported extension" in log
    assert "name is not valid UTF-8" in log
    assert log.count("skipped notes.docx") == 1  # once, not at every rescan


def test_restarting_the_watcher_queues_nothing_twice_but_new_content_again(inbox, start_watcher, redis_client):
    for index in range(5):
        (inbox / f"{index}.png").write_bytes(b"scan %d" % index)
    first = start_watcher()
    wait_for_paths(redis_client, [f"{index}.png" for index in range(5)])
    assert first.stop() == 0

    second = start_watcher("--rescan-interval", "0.5")
    (inbox / "3.png").write_bytes(b"new content at the same path")
    (inbox / "new.png").write_bytes(b"new file")

    wait_for_paths(redis_client, sorted([f"{index}.png" for index in range(5)] + ["3.png", "new.png"]))
    second.wait_for_log("rescan:", count=second.log().count("rescan:") + 2)
    hashes = [entry["sha256"] for entry in queued_files(redis_client) if entry["path"] == "3.png"]
    assert hashes == [sha256(b"scan 3"), sha256(b"new content at the same path")]
    assert len(queued_files(redis_client)) == 7


def test_a_queued_file_deleted_before_processing_is_queued_again_when_dropped_again(inbox, start_watcher,
                                                                                   redis_client):
    start_watcher()
    (inbox / "again.png").write_bytes(b"same content twice")
    wait_for_paths(redis_client, ["again.png"])
    (inbox / "again.png").unlink()  # gone before any worker took it: its job is stale
    wait_until(lambda: "again.png" not in ledger.entries(redis_client), message="the claim released")
    (inbox / "again.png").write_bytes(b"same content twice")

    wait_for_paths(redis_client, ["again.png", "again.png"])


def test_a_claim_whose_job_never_went_out_is_sent_again(inbox, start_watcher, redis_client):
    """A watcher killed between claim and send leaves a claim naming a job that never reached the queue:
    the next watcher sends the file again. A fresh claim of someone else's is left alone meanwhile."""
    orphan, recent = b"claimed, then the watcher died", b"claimed a moment ago"
    (inbox / "orphan.png").write_bytes(orphan)
    (inbox / "recent.png").write_bytes(recent)
    redis_client.hset(protocol.LEDGER_KEY, "orphan.png", f"queued:{sha256(orphan)}:{time.time() - 120:.6f}:lost-job")
    ledger.claim(redis_client, [("recent.png", sha256(recent), "a-job-on-its-way")])

    watcher = start_watcher()

    wait_for_paths(redis_client, ["orphan.png"], timeout=30)
    assert "queueing orphan.png again: its job lost-job is neither waiting nor held" in watcher.log()
    assert queued_paths(redis_client) == ["orphan.png"]


def test_files_dropped_while_redis_is_down_are_queued_once_it_is_back(tmp_path, inbox, start_watcher):
    server = RedisServer(tmp_path / "own-redis", port=free_port()).start()
    try:
        watcher = start_watcher("--rescan-interval", "30", broker_url=server.url)
        (inbox / "before.png").write_bytes(b"queued before the outage")
        wait_until(lambda: queued_paths(server.client()) == ["before.png"], message="before.png queued")

        server.stop()
        during = [f"during/{index}.png" for index in range(20)]
        (inbox / "during").mkdir()
        for relative in during:
            (inbox / relative).write_bytes(relative.encode())
        watcher.wait_for_log("broker unreachable")
        watcher.wait_for_log("broker still unreachable", count=2)  # several retries while Redis stays down
        assert watcher.process.poll() is None

        server.start()  # same port, and empty: the queue and the ledger were lost with it
        client = server.client()
        wait_until(lambda: queued_paths(client) == sorted(during + ["before.png"]), timeout=30,
                   message="everything queued after the outage")
        log = watcher.log()
        assert log.count("broker unreachable") == 1  # once per outage, not per file or per retry
        assert log.count("broker reachable again") == 1
        assert "queueing before.png again: the ledger has no record of it" in log
        assert len(queued_files(client)) == 21
        assert watcher.stop() == 0
    finally:
        server.stop()


def test_polling_mode_queues_new_files_without_native_events(inbox, start_watcher, redis_client):
    watcher = start_watcher("--polling", "--poll-interval", "0.2", "--rescan-interval", "0")
    assert "polling every 0.2s, full rescan off" in watcher.log()
    (inbox / "sub").mkdir()
    (inbox / "sub" / "polled.png").write_bytes(b"seen by polling")
    (inbox / "polled.png").write_bytes(b"seen by polling too")

    wait_for_paths(redis_client, ["polled.png", "sub/polled.png"])


@pytest.mark.parametrize("problem, expected_code, expected_message", [
    ("missing inbox", 6, "does not exist"),
    ("inbox is a file", 6, "is not a folder"),
    ("results inside the inbox", 7, "the results folder"),
    ("processed inside the inbox", 7, "the processed folder"),
    ("failed is the inbox", 7, "the failed folder"),
    ("negative ready delay", 3, "ready_delay must not be negative"),
])
def test_bad_configurations_exit_with_their_own_code_and_a_one_line_message(tmp_path, problem, expected_code,
                                                                            expected_message):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    flags = {"--inbox": inbox, "--results": tmp_path / "results", "--processed": tmp_path / "processed",
             "--failed": tmp_path / "failed", "--broker-url": "redis://127.0.0.1:1/0"}
    if problem == "missing inbox":
        flags["--inbox"] = tmp_path / "nowhere"
    elif problem == "inbox is a file":
        flags["--inbox"] = tmp_path / "file.png"
        flags["--inbox"].write_bytes(b"")
    elif problem == "results inside the inbox":
        flags["--results"] = inbox / "results"
    elif problem == "processed inside the inbox":
        flags["--processed"] = inbox / "done" / "processed"
    elif problem == "failed is the inbox":
        flags["--failed"] = inbox
    elif problem == "negative ready delay":
        flags["--ready-delay"] = "-1"
    command = [sys.executable, "-m", "digits", "watch", *[str(part) for item in flags.items() for part in item]]
    environment = {name: value for name, value in os.environ.items() if not name.startswith("DIGITS_")}
    finished = subprocess.run(command, cwd=PROJECT_ROOT, env=environment, capture_output=True, text=True,
                              timeout=60)
    assert finished.returncode == expected_code, finished.stderr
    errors = [line for line in finished.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and expected_message in errors[0], finished.stderr
    assert "Traceback" not in finished.stderr


def test_ten_thousand_files_start_up_time_and_peak_memory(inbox, redis_server, redis_client, capsys):
    for index in range(10_000):
        (inbox / f"{index // 1000}" / f"{index:05d}.png").parent.mkdir(exist_ok=True)
        (inbox / f"{index // 1000}" / f"{index:05d}.png").write_bytes(b"scan %05d" % index)

    watcher = WatcherProcess(inbox.parent, inbox=inbox, broker_url=redis_server.url, extra=["--log-level", "INFO"],
                             name="watcher-10k").start()
    try:
        watcher.wait_for_log("watching ", timeout=60)
        watching = time.monotonic() - watcher.started_at
        wait_until(lambda: redis_client.llen(QUEUE) > 0, timeout=60, message="the first job")
        first = time.monotonic() - watcher.started_at
        wait_until(lambda: ledger.count_queued(redis_client) == 10_000, timeout=90, interval=0.5,
                   message="10,000 files queued")
        everything = time.monotonic() - watcher.started_at
        status = Path(f"/proc/{watcher.process.pid}/status").read_text()
        peak_kib = int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1])
    finally:
        assert watcher.stop() == 0
    assert len(queued_files(redis_client)) == 10_000
    with capsys.disabled():
        print(f"\nwatcher with 10,000 files (ready_delay 0.5s): 'watching' after {watching:.2f}s, first job after "
              f"{first:.2f}s, all queued after {everything:.2f}s, peak RSS {peak_kib / 1024:.1f} MiB")
    assert peak_kib < 200 * 1024
