"""The worker served by JAX (KERAS_BACKEND=jax) beside the same worker on TensorFlow: real Celery workers on
real Redis servers, the same inbox files, the same results files (digits, boxes, flags, confidences)."""

from __future__ import annotations

import base64

import pytest
from conftest import RedisServer, csv_rows, run_digits
from worker_harness import WorkerProcess, blank_scan, celery_client, load_result, put, scan_of, serving_weights

from bench import documents
from core import ledger, protocol
from trainer import scans

BACKENDS = ("tensorflow", "jax")
UNCOMPARED = {"processed_at", "worker", "job"}  # when and where, not what was read
CONFIDENCE_PLACES = 4


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return serving_weights(tmp_path_factory.mktemp("weights"))[0]


@pytest.fixture(scope="module")
def workers(tmp_path_factory, weights):
    """One worker per backend, each with its own Redis, so each takes only the jobs sent to it."""
    started = {}
    try:
        for backend in BACKENDS:
            redis = RedisServer(tmp_path_factory.mktemp(f"redis-{backend}")).start()
            process = WorkerProcess(tmp_path_factory.mktemp(backend), broker_url=redis.url, weights=weights,
                                    name=backend, extra={"KERAS_BACKEND": backend, "DIGITS_BATCH_WAIT_MS": "20"},
                                    use_cli=True)
            started[backend] = (redis, process.start())
        for _, process in started.values():
            process.wait_ready(timeout=180)
        yield {backend: (redis, process, celery_client(redis.url)) for backend, (redis, process) in started.items()}
    finally:
        for redis, process in started.values():
            process.stop()
            redis.stop()


def _files() -> dict[str, bytes]:
    """Scans in every format and mode, pages of each document kind (a PDF among them), a blank page, a
    file that is no image."""
    files = {f"scans/{scan.name}": scan.data for scan in scans.numbers(24, seed=3)}
    for kind in documents.KINDS + documents.WITHOUT_DIGITS:
        for page in documents.pages(kind, 2, seed=11):
            files[f"documents/{page.name}"] = page.data
    files["blank.png"] = blank_scan()
    files["not an image.png"] = b"this is not an image"
    return files


def _comparable(value):
    """A result without when and where it was made, confidences rounded."""
    if isinstance(value, dict):
        return {key: _comparable(item) for key, item in value.items() if key not in UNCOMPARED}
    if isinstance(value, list):
        return [_comparable(item) for item in value]
    if isinstance(value, float):
        return round(value, CONFIDENCE_PLACES)
    return value


def test_a_jax_worker_writes_the_same_results_as_a_tensorflow_worker(workers):
    files = _files()
    results = {}
    for backend, (redis, process, client) in workers.items():
        jobs = [put(process.folder, relative, data) for relative, data in files.items()]
        assert all(ledger.claim(redis.client(), [(job["path"], job["sha256"]) for job in jobs]))
        summaries = client.send_task(protocol.TASK_PROCESS_FILES, kwargs={"files": jobs},
                                     queue=protocol.QUEUE).get(timeout=300)
        assert [summary["source"] for summary in summaries] == list(files)
        results[backend] = {relative: load_result(process.folder, relative) for relative in files}
        rows = csv_rows(process.folder / "results" / "results.csv")
        assert sorted(row["source"] for row in rows) == sorted(files)

    tensorflow, jax = results["tensorflow"], results["jax"]
    assert {result["status"] for result in jax.values()} == {"ok", "no_digit", "error"}
    assert sum(result["status"] == "ok" for result in jax.values()) >= len(files) - 6
    for relative in files:
        assert jax[relative]["worker"].startswith("jax@")
        assert _comparable(jax[relative]) == _comparable(tensorflow[relative]), relative


def test_a_jax_worker_answers_recognize_and_reports_its_backend(workers):
    _, _, client = workers["jax"]
    result = client.send_task(protocol.TASK_RECOGNIZE, args=[base64.b64encode(scan_of("2026")).decode()],
                              kwargs={"name": "sent.png"}, queue=protocol.QUEUE).get(timeout=120)
    assert result["status"] == "ok" and result["digits"] == "2026" and result["source"] == "sent.png"
    replies = client.control.inspect(timeout=10, limit=1)._request(protocol.INFO_COMMAND)
    (info,) = replies.values()
    assert info["backend"] == "jax" and info["device"] == "CPU" and info["images"] >= 4
    redis, process, _ = workers["jax"]
    assert "worker ready on CPU (Keras backend jax)" in process.log_text()
    status = run_digits("status", "--broker-url", redis.url, "--timeout", "5", timeout=60)
    assert status.returncode == 0 and ": CPU (jax), model " in status.stdout, status.stdout + status.stderr
