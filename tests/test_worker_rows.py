"""One results.csv row per (job, file) whatever moment a worker died at, checked step by step (no TensorFlow)."""

import hashlib
import json
import os
from types import SimpleNamespace

import pytest
from conftest import csv_rows

from core import ledger, protocol
from core.settings import Settings
from worker import process_files
from worker import results_files as results
from worker.batching import Stats

pytestmark = pytest.mark.fast

SHA = "a" * 64


def runtime_for(tmp_path, redis_client):
    return SimpleNamespace(settings=Settings(results=tmp_path / "results"), redis=redis_client)


def rows(tmp_path):
    return csv_rows(tmp_path / "results" / results.CSV_NAME)


def result_for(source="scan.png"):
    return protocol.result(source, error="x", model="v1", sha256=SHA, worker="w", job="job-1")


def mark(redis_client, source="scan.png"):
    return f"{protocol.ROW_MARK_PREFIX}job-1:{SHA}:{source}"


def test_a_second_delivery_adds_no_row(tmp_path, redis_client):
    runtime = runtime_for(tmp_path, redis_client)
    process_files.record_row(runtime, result_for(), job="job-1", sha256=SHA)
    process_files.record_row(runtime, result_for(), job="job-1", sha256=SHA)
    assert len(rows(tmp_path)) == 1 and int(redis_client.get(protocol.counter_key("error"))) == 1


def test_death_after_the_mark_but_before_the_row_still_gives_one_row(tmp_path, redis_client):
    runtime = runtime_for(tmp_path, redis_client)
    redis_client.set(mark(redis_client), f"at:{results.csv_size(tmp_path / 'results' / results.CSV_NAME)}")
    process_files.record_row(runtime, result_for(), job="job-1", sha256=SHA)
    assert len(rows(tmp_path)) == 1 and int(redis_client.get(protocol.counter_key("error"))) == 1


def test_death_after_the_row_but_before_done_gives_no_second_row(tmp_path, redis_client):
    runtime = runtime_for(tmp_path, redis_client)
    csv_path = tmp_path / "results" / results.CSV_NAME
    redis_client.set(mark(redis_client), f"at:{results.csv_size(csv_path)}")
    results.append_rows(csv_path, [result_for("other.png") | {"job": "job-0"}])  # another worker's row in between
    results.append_rows(csv_path, [result_for()])
    process_files.record_row(runtime, result_for(), job="job-1", sha256=SHA)
    assert [row["source"] for row in rows(tmp_path)] == ["other.png", "scan.png"]
    assert int(redis_client.get(protocol.counter_key("error"))) == 1


def test_a_new_job_for_the_same_file_gets_its_own_row(tmp_path, redis_client):
    runtime = runtime_for(tmp_path, redis_client)
    process_files.record_row(runtime, result_for(), job="job-1", sha256=SHA)
    process_files.record_row(runtime, result_for() | {"job": "job-2"}, job="job-2", sha256=SHA)
    assert len(rows(tmp_path)) == 2


def test_a_file_resent_by_another_job_while_it_waits_gets_one_row_and_a_new_drop_another(tmp_path, redis_client):
    runtime = runtime_for(tmp_path, redis_client)
    ledger.claim(redis_client, [("scan.png", SHA)])
    drops = process_files._drops(runtime, [{"path": "scan.png", "sha256": SHA}])
    process_files.record_row(runtime, result_for(), job="job-1", sha256=SHA, drops=drops)
    # A restarted watcher sends the same waiting file again: another job, the same drop.
    process_files.record_row(runtime, result_for() | {"job": "job-2"}, job="job-2", sha256=SHA, drops=drops)
    assert len(rows(tmp_path)) == 1
    ledger.finish_many(redis_client, [("scan.png", SHA, False)])  # it left the inbox; later it is dropped again
    ledger.claim(redis_client, [("scan.png", SHA)])
    again = process_files._drops(runtime, [{"path": "scan.png", "sha256": SHA}])
    assert again != drops
    process_files.record_row(runtime, result_for() | {"job": "job-3"}, job="job-3", sha256=SHA, drops=again)
    assert len(rows(tmp_path)) == 2


def test_another_job_finding_the_row_of_a_job_that_died_before_done_adds_none(tmp_path, redis_client):
    """Job 1 appended the drop's row and died before marking it done; the watcher sent the file again in
    job 2. The mark names job 1, so job 2 finds that row and writes none."""
    runtime = runtime_for(tmp_path, redis_client)
    ledger.claim(redis_client, [("scan.png", SHA)])
    drops = process_files._drops(runtime, [{"path": "scan.png", "sha256": SHA}])
    key = process_files._row_mark("scan.png", SHA, drop=drops[("scan.png", SHA)], job="job-1")
    csv_path = tmp_path / "results" / results.CSV_NAME
    redis_client.set(key, f"at:{results.csv_size(csv_path)}:job-1")
    results.append_rows(csv_path, [result_for()])  # job 1's row; then job 1 died
    process_files.record_row(runtime, result_for() | {"job": "job-2"}, job="job-2", sha256=SHA, drops=drops)
    assert [row["job"] for row in rows(tmp_path)] == ["job-1"]
    assert redis_client.get(key) == b"done" and int(redis_client.get(protocol.counter_key("error"))) == 1


def test_a_job_that_fails_for_good_gives_its_files_error_results_and_moves_them_to_failed(tmp_path, redis_client):
    settings = Settings(inbox=tmp_path / "inbox", results=tmp_path / "results", failed=tmp_path / "failed")
    runtime = SimpleNamespace(settings=settings, redis=redis_client, templates=None,
                              batcher=SimpleNamespace(stats=Stats()))
    settings.inbox.mkdir()
    (settings.inbox / "stuck.png").write_bytes(b"waited through ten retries")
    sha = hashlib.sha256(b"waited through ten retries").hexdigest()
    ledger.claim(redis_client, [("stuck.png", sha)])
    summaries = process_files.dead_letter([{"path": "stuck.png", "sha256": sha}, {"path": "gone.png", "sha256": SHA}],
                                          runtime=runtime, job="job-9", worker="w", cause="Redis down for an hour")
    assert [summary["source"] for summary in summaries] == ["stuck.png"]  # gone.png left the inbox already
    result = json.loads((settings.results / "stuck.png.json").read_text())
    assert result["status"] == "error" and result["error"] == "JobFailed: Redis down for an hour"
    assert (settings.failed / "stuck.png").is_file() and not (settings.inbox / "stuck.png").exists()
    assert [row["source"] for row in rows(tmp_path)] == ["stuck.png"]
    assert ledger.lookup(redis_client, ["stuck.png"]) == [None]  # forgotten: the same file dropped again is new
    assert sum(runtime.batcher.stats.snapshot()["latency_buckets"]) == 1  # its drop-to-result time is measured


def test_results_files_follow_the_umask(tmp_path):
    previous = os.umask(0o002)  # a results folder shared by a group
    try:
        results.write_json_files([(tmp_path / "a.png.json", {"source": "a.png"})])
        results.append_rows(tmp_path / "results.csv", [result_for()])
    finally:
        os.umask(previous)
    assert (tmp_path / "a.png.json").stat().st_mode & 0o777 == 0o664
    assert (tmp_path / "results.csv").stat().st_mode & 0o777 == 0o664


def test_a_file_that_breaks_the_reader_fails_alone_and_an_unreadable_one_waits(tmp_path, redis_client, monkeypatch):
    from worker import recognition

    settings = Settings(inbox=tmp_path / "inbox", results=tmp_path / "results")
    settings.inbox.mkdir()
    runtime = SimpleNamespace(settings=settings, redis=redis_client, templates=None,
                              holder=SimpleNamespace(current=SimpleNamespace(version="v1")),
                              batcher=SimpleNamespace(stats=Stats()))

    def broken_reader(data, settings, template=None):
        raise ValueError("a bug this file triggers")

    monkeypatch.setattr(recognition, "prepare", broken_reader)
    (settings.inbox / "poison.png").write_bytes(b"poison")
    poison = {"path": "poison.png", "sha256": hashlib.sha256(b"poison").hexdigest()}
    entry = process_files._read(poison, settings=settings, runtime=runtime, job="j", worker="w", drops={})
    assert entry.result["status"] == "error" and entry.result["error"].startswith("InternalError: ValueError")

    (settings.inbox / "locked.png").write_bytes(b"locked")
    locked = {"path": "locked.png", "sha256": hashlib.sha256(b"locked").hexdigest()}
    ledger.claim(redis_client, [(locked["path"], locked["sha256"])])

    def unreadable(entry, *, max_bytes):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(process_files, "_read_if_current", unreadable)
    entry = process_files._read(locked, settings=settings, runtime=runtime, job="j", worker="w", drops={})
    assert entry.summary["status"] == protocol.WAITING and entry.result is None
    assert ledger.lookup(redis_client, ["locked.png"]) == [None]  # claim released: the next rescan sends it again
