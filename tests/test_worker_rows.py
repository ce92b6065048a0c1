"""One results.csv row per (job, file) whatever moment a worker died at, checked step by step (no TensorFlow)."""

from types import SimpleNamespace

import pytest
from conftest import csv_rows

from core import ledger, protocol
from core.settings import Settings
from worker import process_files
from worker import results_files as results

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
