"""A worker killed with SIGKILL in the middle of a batch: another worker redoes its jobs, nothing is lost
and nothing is duplicated (one results file, one csv row, one moved original per file)."""

from __future__ import annotations

import collections
import hashlib

import pytest
from celery import Celery
from conftest import RedisServer, csv_rows, wait_until
from worker_harness import WorkerProcess, scan_of, serving_weights

from core import ledger, protocol
from worker import results_files as results

JOBS, FILES_PER_JOB = 6, 20


@pytest.fixture(scope="module")
def redis(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis-kill")).start()
    yield server
    server.stop()


def rows_of(folder) -> list[dict[str, str]]:
    return csv_rows(folder / "results" / results.CSV_NAME)


def test_a_worker_killed_mid_batch_loses_and_duplicates_nothing(tmp_path, redis):
    weights, _ = serving_weights(tmp_path / "weights")
    client = redis.client()
    app = Celery("test-client", broker=redis.url, backend=redis.url)
    first = WorkerProcess(tmp_path, broker_url=redis.url, weights=weights, name="first",
                          extra={"DIGITS_CONCURRENCY": "4"}).start()
    second = WorkerProcess(tmp_path, broker_url=redis.url, weights=weights, name="second", use_cli=True,
                           extra={"DIGITS_VISIBILITY_TIMEOUT": "3"})
    try:
        first.wait_ready()
        jobs = []
        for job in range(JOBS):
            files = []
            for index in range(FILES_PER_JOB):
                relative = f"job{job}/file{index}.png"
                data = scan_of(str((job + index) % 10), sample=index % 4)
                (tmp_path / "inbox" / relative).parent.mkdir(parents=True, exist_ok=True)
                (tmp_path / "inbox" / relative).write_bytes(data)
                files.append({"path": relative, "sha256": hashlib.sha256(data).hexdigest()})
            assert all(ledger.claim(client, [(f["path"], f["sha256"]) for f in files]))
            jobs.append(files)
        sent = [app.send_task(protocol.TASK_PROCESS_FILES, args=[files], queue=protocol.QUEUE) for files in jobs]
        total = JOBS * FILES_PER_JOB

        wait_until(lambda: len(rows_of(tmp_path)) >= 1, timeout=120, interval=0.005,
                   message="the first worker to finish its first file")
        first.kill()
        done_at_kill = len(rows_of(tmp_path))
        assert done_at_kill < total, "the worker finished everything before it was killed"
        assert client.hlen("unacked") > 0  # jobs it held stay unacknowledged in Redis

        second.start()
        second.wait_ready()

        def all_done():
            return (all(result.ready() for result in sent) and client.llen(protocol.QUEUE) == 0
                    and client.hlen("unacked") == 0)

        wait_until(all_done, timeout=180, interval=0.2, message="the second worker to redo the jobs")
    finally:
        first.kill()
        second.stop()

    expected = sorted(f["path"] for files in jobs for f in files)
    rows = rows_of(tmp_path)
    counts = collections.Counter(row["source"] for row in rows)
    assert sorted(counts) == expected and set(counts.values()) == {1}, counts.most_common(3)
    written = sorted(str(path.relative_to(tmp_path / "results"))[:-5]
                     for path in (tmp_path / "results").rglob("*.json") if not path.name.startswith("."))
    assert written == expected
    moved = sorted(str(path.relative_to(tmp_path / "processed")) for path in (tmp_path / "processed").rglob("*.png"))
    assert moved == expected  # each original moved once: no "-1" copies
    assert not list((tmp_path / "inbox").rglob("*.png"))
    assert ledger.count_queued(client) == 0
    assert sum(int(client.get(protocol.counter_key(status)) or 0) for status in ("ok", "no_digit", "error")) == total
    assert {row["worker"].split("@")[0] for row in rows} == {"first", "second"}
