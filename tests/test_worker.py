"""A real `celery worker` with real TensorFlow on a private, password-protected Redis: results files,
bad input, the public recognize task from a celery-only program, status info and hot reload."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import RedisServer, csv_rows, wait_until
from worker_harness import (
    WorkerProcess,
    blank_scan,
    celery_client,
    load_result,
    multipage_tiff,
    publish_broken,
    publish_copy,
    put,
    scan_of,
    serving_weights,
)

from core import ledger, protocol
from core import weights as weights_store

PASSWORD = "digits-test-password"
MAX_IMAGE_BYTES = 300_000
NUMBERS = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "2026", "315"]


@pytest.fixture(scope="module")
def redis_with_password(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis-pw"), password=PASSWORD).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return serving_weights(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="module")
def worker(tmp_path_factory, redis_with_password, weights):
    folder = tmp_path_factory.mktemp("worker")
    process = WorkerProcess(folder, broker_url=redis_with_password.url, weights=weights[0], name="main",
                            extra={"DIGITS_MAX_IMAGE_BYTES": str(MAX_IMAGE_BYTES), "DIGITS_BATCH_WAIT_MS": "20"})
    process.start()
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def client(redis_with_password):
    return celery_client(redis_with_password.url)


def test_a_batch_of_files_yields_the_right_results_files(worker, client, redis_with_password, weights):
    _, version = weights
    redis = redis_with_password.client()
    jobs = [put(worker.folder, f"batch/scan {index} of {number}.png", scan_of(number, sample=index % 3))
            for index, number in enumerate(NUMBERS)]
    jobs.append(put(worker.folder, "batch/pages.tif", multipage_tiff(["12", "5"])))
    assert ledger.claim(redis, [(job["path"], job["sha256"]) for job in jobs]) == [True] * len(jobs)
    summaries = client.send_task(protocol.TASK_PROCESS_FILES, kwargs={"files": jobs}, queue=protocol.QUEUE).get(timeout=120)

    assert [summary["source"] for summary in summaries] == [job["path"] for job in jobs]
    for number, job in zip(NUMBERS + ["12 5"], jobs):
        result = load_result(worker.folder, job["path"])
        assert result["source"] == job["path"] and result["status"] == "ok" and result["model"] == version
        assert result["sha256"] == job["sha256"] and result["error"] is None and result["worker"].startswith("main@")
        assert len(result["details"]) == len(number.replace(" ", ""))
        assert all(len(detail["top"]) == 3 and len(detail["box"]) == 4 for detail in result["details"])
        assert 0 < result["confidence"] <= 1
        assert result["digits"] == number, job["path"]
        assert (worker.folder / "processed" / job["path"]).is_file()
        assert not (worker.folder / "inbox" / job["path"]).exists()
    pages = load_result(worker.folder, "batch/pages.tif")["pages"]
    assert [page["page"] for page in pages] == [0, 1] and len(pages[0]["details"]) == 2
    rows = [row for row in csv_rows(worker.folder / "results" / "results.csv")
            if row["source"].startswith("batch/")]
    assert sorted(row["source"] for row in rows) == sorted(job["path"] for job in jobs)
    assert ledger.count_queued(redis) == 0
    assert int(redis.get(protocol.counter_key("ok"))) >= len(jobs)


def test_each_bad_input_gives_an_error_result_while_good_files_around_it_succeed(worker, client, tmp_path):
    folder = worker.folder
    outside = tmp_path / "outside.png"
    outside.write_bytes(scan_of("4"))
    png = scan_of("7")
    (folder / "inbox" / "bad").mkdir(parents=True, exist_ok=True)
    os.symlink(outside, folder / "inbox" / "bad" / "leak.png")
    jobs = [
        put(folder, "bad/good 1.png", scan_of("3")),
        put(folder, "bad/empty.png", b""),
        put(folder, "bad/text.png", b"this is not an image at all\n" * 10),
        put(folder, "bad/truncated.png", png[: len(png) // 2]),
        put(folder, "bad/huge.png", b"\x89PNG" + bytes(MAX_IMAGE_BYTES)),
        put(folder, "bad/blank.png", blank_scan()),
        {"path": "bad/leak.png", "sha256": hashlib.sha256(outside.read_bytes()).hexdigest()},
        {"path": "/etc/passwd", "sha256": "0" * 64},
        {"path": "bad/../../etc/passwd", "sha256": "0" * 64},
        put(folder, "bad/good 2.png", scan_of("8")),
        {"path": "bad/gone.png", "sha256": "1" * 64},
        {"path": "bad/changed.png", "sha256": "2" * 64},
        {"nonsense": True},
    ]
    put(folder, "bad/changed.png", b"new content, its own job will come")
    summaries = client.send_task(protocol.TASK_PROCESS_FILES, args=[jobs], queue=protocol.QUEUE).get(timeout=120)
    by_source = {summary["source"]: summary for summary in summaries}
    assert len(summaries) == len(jobs)

    for good in ("bad/good 1.png", "bad/good 2.png"):
        assert load_result(folder, good)["status"] == "ok" and (folder / "processed" / good).is_file()
    assert load_result(folder, "bad/blank.png")["status"] == "no_digit"
    for bad, kind in (("bad/empty.png", "EmptyFile"), ("bad/text.png", "NotAnImage"),
                      ("bad/truncated.png", "NotAnImage"), ("bad/huge.png", "ImageTooLarge")):
        result = load_result(folder, bad)
        assert result["status"] == "error" and result["error"].startswith(kind), (bad, result["error"])
        assert (folder / "failed" / bad).is_file() and not (folder / "inbox" / bad).exists()
    leak = load_result(folder, "bad/leak.png")
    assert leak["status"] == "error" and "UnsafePath" in leak["error"]
    assert (folder / "inbox" / "bad" / "leak.png").is_symlink() and outside.is_file()  # left alone, not read
    for unsafe in ("/etc/passwd", "bad/../../etc/passwd"):
        assert by_source[unsafe]["status"] == "error"
    assert not (folder / "results" / "etc").exists() and not (folder.parent / "etc").exists()
    assert by_source["bad/gone.png"]["status"] == "stale" and by_source["bad/changed.png"]["status"] == "stale"
    assert (folder / "inbox" / "bad" / "changed.png").is_file()
    assert by_source["None"]["status"] == "error"


CLIENT_PROGRAM = textwrap.dedent("""
    import base64, json, sys
    from celery import Celery

    broker, image_path = sys.argv[1], sys.argv[2]
    app = Celery(broker=broker, backend=broker)
    app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"])
    with open(image_path, "rb") as handle:
        image = base64.b64encode(handle.read()).decode("ascii")
    # Another team's program knows the public names, not this code: spelled out here on purpose.
    result = app.send_task("digits.recognize", kwargs={"image": image, "name": "from-elsewhere.png"},
                           queue="digits").get(timeout=120)
    leaked = sorted(name for name in sys.modules if name.split(".")[0] in ("core", "digits", "worker", "tensorflow"))
    print(json.dumps({"result": result, "leaked": leaked}))
""")


def test_a_separate_program_with_only_celery_gets_a_result_from_recognize(worker, redis_with_password, tmp_path,
                                                                            weights):
    program, image = tmp_path / "client.py", tmp_path / "seven.png"
    program.write_text(CLIENT_PROGRAM)
    image.write_bytes(scan_of("72"))
    # -I: isolated mode, no PYTHONPATH and no current folder; cwd outside the repository.
    completed = subprocess.run([sys.executable, "-I", str(program), redis_with_password.url, str(image)],
                               cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert completed.returncode == 0, completed.stderr
    answer = json.loads(completed.stdout)
    assert answer["leaked"] == []
    result = answer["result"]
    assert result["source"] == "from-elsewhere.png" and result["status"] == "ok" and result["model"] == weights[1]
    assert result["sha256"] == hashlib.sha256(image.read_bytes()).hexdigest()
    assert result["digits"] == "72"
    assert not any((worker.folder / "results").glob("from-elsewhere*"))


def test_recognize_refuses_bad_payloads_with_error_results(worker, client):
    oversized = base64.b64encode(bytes(MAX_IMAGE_BYTES + 10)).decode()
    cases = {"not base64 !!": "NotAnImage", oversized: "ImageTooLarge",
             base64.b64encode(b"GIF89a broken").decode(): "NotAnImage"}
    for payload, kind in cases.items():
        result = client.send_task(protocol.TASK_RECOGNIZE, kwargs={"image": payload}, queue=protocol.QUEUE).get(timeout=60)
        assert result["status"] == "error" and result["error"].startswith(kind)


def test_pickle_messages_are_refused(worker, client):
    pickled = client.send_task(protocol.TASK_RECOGNIZE, kwargs={"image": "x"}, queue=protocol.QUEUE,
                               serializer="pickle")
    # A JSON job sent after it is answered (the worker stays up), and the pickled one never runs.
    after = client.send_task(protocol.TASK_RECOGNIZE, kwargs={"image": "x"}, queue=protocol.QUEUE)
    assert after.get(timeout=60)["status"] == "error"
    time.sleep(1.0)
    assert not pickled.ready() and pickled.state == "PENDING"


def test_digits_info_reports_device_model_and_batches(worker, client, weights):
    # Its own job of several files, recognised in one model call, whatever ran before.
    jobs = [put(worker.folder, f"info/{index}.png", scan_of(str(index))) for index in range(5)]
    client.send_task(protocol.TASK_PROCESS_FILES, args=[jobs], queue=protocol.QUEUE).get(timeout=120)
    replies = client.control.inspect(timeout=10, limit=1)._request(protocol.INFO_COMMAND)
    (info,) = replies.values()
    assert info["device"] == "CPU" and info["model"] == weights[1]
    assert info["images"] > 0 and info["batches"] > 0 and info["average_batch_size"] > 1
    assert set(info) >= {"images_per_second", "started_at"}


def test_a_new_version_is_picked_up_and_a_broken_one_refused_without_restart(worker, client, weights):
    folder, version = weights
    payload = base64.b64encode(scan_of("5")).decode()

    def served_model():
        return client.send_task(protocol.TASK_RECOGNIZE, kwargs={"image": payload}, queue=protocol.QUEUE).get(timeout=60)["model"]

    publish_copy(folder, version, "next-2")
    wait_until(lambda: served_model() == "next-2", timeout=60, interval=0.2, message="version next-2 served")
    publish_broken(folder, "broken-3")
    wait_until(lambda: "refused weights version broken-3" in worker.log_text(), timeout=60,
               message="broken-3 refused")
    assert served_model() == "next-2"
    assert worker.process.poll() is None
    weights_store.point_to(folder, version)  # back to the module's version, for the tests after this one
    wait_until(lambda: served_model() == version, timeout=60, interval=0.2, message=f"version {version} served")


def test_a_worker_without_loadable_weights_exits_instead_of_taking_jobs(tmp_path, redis_with_password):
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", DIGITS_DEVICE="cpu")
    completed = subprocess.run([sys.executable, "-m", "digits", "worker", "--weights", str(tmp_path),
                                "--broker-url", redis_with_password.url], cwd=tmp_path, env=environment,
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 5, completed.stderr[-2000:]
    assert "no weights published" in completed.stderr


def test_workers_send_task_events_once_flower_turns_them_on(worker, client, tmp_path):
    import threading

    received, ready = [], threading.Event()
    app = client
    app.control.enable_events()  # what Flower does when it starts (and every few seconds after)

    def listen():
        with app.connection() as connection:
            receiver = app.events.Receiver(connection, handlers={
                "task-succeeded": received.append, "worker-heartbeat": lambda event: ready.set()})
            try:
                receiver.capture(limit=None, timeout=30, wakeup=True)
            except Exception:  # the capture's timeout ends it
                pass

    threading.Thread(target=listen, daemon=True).start()
    assert ready.wait(20), "no worker heartbeat event within 20 s"
    job = put(worker.folder, "events/one.png", scan_of("7", sample=0))
    client.send_task(protocol.TASK_PROCESS_FILES, kwargs={"files": [job]}, queue=protocol.QUEUE).get(timeout=60)
    wait_until(lambda: received, timeout=15, message="a task-succeeded event")
    assert received[0]["hostname"].startswith("main@")
    app.control.disable_events()  # off again: they cost the drop-to-result latency (docs/web.md)
