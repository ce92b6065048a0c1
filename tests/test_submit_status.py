"""`digits submit` (JSON lines with --wait, progress bar) and `digits status` (--json, exit 9 without workers)."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import RedisServer, free_port, wait_until
from service_harness import DIGITS, clean_environment, scan_png, shipped_weights_folder

from core import protocol
from core.errors import BadInput, BrokerUnavailable, NoWorkerError
from digits.local import up
from digits.local.embedded_redis import running_url


def digits(*arguments: str, environment: dict[str, str], timeout: float = 120, cwd: Path | None = None):
    return subprocess.run([DIGITS, *arguments], capture_output=True, text=True, env=environment, timeout=timeout,
                          cwd=cwd)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    """A Redis of this module's own: other modules flush the shared one, which would unbind the queue."""
    server = RedisServer(tmp_path_factory.mktemp("redis-submit")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def worker(redis_server, tmp_path_factory):
    """A real `digits worker` on the CPU with a small model; yields the environment that reaches it."""
    folder = tmp_path_factory.mktemp("worker")
    weights = shipped_weights_folder()
    environment = clean_environment(DIGITS_BROKER_URL=redis_server.url, DIGITS_WEIGHTS=str(weights),
                                    DIGITS_DEVICE="cpu", DIGITS_CONCURRENCY="4",
                                    DIGITS_INBOX=str(folder / "inbox"), DIGITS_RESULTS=str(folder / "results"))
    log_path = folder / "worker.log"
    with open(log_path, "wb") as sink:
        process = subprocess.Popen([DIGITS, "worker"], env=environment, stdout=sink, stderr=subprocess.STDOUT)

    def answers() -> bool:
        if process.poll() is not None:
            pytest.fail(f"the worker exited with {process.returncode}:\n{log_path.read_text()}")
        return digits("status", "--json", environment=environment).returncode == 0

    try:
        wait_until(answers, timeout=180, interval=1.0, message="a worker answering digits status")
        yield environment
    finally:
        process.send_signal(signal.SIGTERM)  # warm shutdown
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> dict[str, int]:
    """Five scan files -> their labels."""
    folder = tmp_path_factory.mktemp("scans")
    labels = {}
    for index in range(5):
        data, label = scan_png(index)
        (folder / f"scan {index}.png").write_bytes(data)
        labels[str(folder / f"scan {index}.png")] = label
    return labels


def test_submit_wait_prints_one_json_result_per_file_in_order(worker, scans):
    done = digits("submit", "--wait", "--progress", *scans, environment=worker)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["source"] for line in lines] == list(scans)
    for line in lines:
        assert line["status"] == "ok" and line["model"] and 0 <= line["confidence"] <= 1, line
    assert [line["digits"] for line in lines] == [str(label) for label in scans.values()]  # the shipped model reads them
    assert "5/5" in done.stderr and "[" + "#" * 30 + "]" in done.stderr  # the progress bar reached the end


def test_submit_reports_bad_and_missing_files_as_errors_and_exits_10(worker, scans, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"no image here")
    good = next(iter(scans))
    done = digits("submit", "--wait", good, str(bad), str(tmp_path / "missing.png"), environment=worker)
    assert done.returncode == BadInput.exit_code
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["status"] for line in lines] == ["ok", "error", "error"]
    assert lines[0]["digits"] == str(scans[good])
    assert lines[2]["source"].endswith("missing.png") and lines[2]["error"]


def test_submit_without_wait_prints_task_ids(worker, scans):
    done = digits("submit", *list(scans)[:2], environment=worker)
    assert done.returncode == 0, done.stderr
    ids = [line.split("\t") for line in done.stdout.splitlines()]
    assert [name for _, name in ids] == list(scans)[:2] and all(len(task) == 36 for task, _ in ids)


def test_status_json_shows_the_worker_its_model_and_the_counts(worker, scans):
    digits("submit", "--wait", *scans, environment=worker)
    done = digits("status", "--json", environment=worker)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["workers_online"] == 1
    (entry,) = report["workers"]
    assert entry["device"] == "CPU" and entry["model"]
    assert report["done"] + report["failed"] >= len(scans)
    assert report["queue_depth"] == 0 and report["files_waiting"] == 0
    assert report["average_batch_size"] >= 1 and report["images_per_second"] > 0  # all within the last minute

    text = digits("status", environment=worker)
    assert text.returncode == 0 and "1 online" in text.stdout and entry["model"] in text.stdout


def test_status_exits_9_when_no_worker_answers(tmp_path):
    server = RedisServer(tmp_path / "redis", password="s3cret-password").start()
    try:
        server.client().lpush(protocol.QUEUE, "a-waiting-job")
        done = digits("status", "--json", "--timeout", "0.5",
                      environment=clean_environment(DIGITS_BROKER_URL=server.url))
        assert done.returncode == NoWorkerError.exit_code
        report = json.loads(done.stdout)
        assert report["workers_online"] == 0 and report["queue_depth"] == 1
        assert "no worker answered" in done.stderr
    finally:
        server.stop()


def test_status_and_submit_find_the_redis_of_a_digits_up_in_this_folder(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    try:
        state = tmp_path / ".digits"
        state.mkdir()
        (state / "broker.url").write_text(server.url + "\n")
        lock = up._lock_state(state)  # as a running `digits up` holds it
        try:
            done = digits("status", "--json", "--timeout", "0.3", environment=clean_environment(), cwd=tmp_path)
            assert json.loads(done.stdout)["broker"].endswith(f":{server.port}/0")
            assert running_url(state) == server.url
        finally:
            lock.close()
        assert running_url(state) is None  # left behind by a `digits up` that was killed: ignored
    finally:
        server.stop()


def test_status_exits_8_when_redis_cannot_be_reached():
    done = digits("status", environment=clean_environment(DIGITS_BROKER_URL=f"redis://127.0.0.1:{free_port()}/0"))
    assert done.returncode == BrokerUnavailable.exit_code and "cannot reach Redis" in done.stderr


def test_submit_wait_gives_up_with_exit_9_when_no_worker_runs(tmp_path, scans):
    server = RedisServer(tmp_path / "redis").start()
    try:
        done = digits("submit", "--wait", "--timeout", "2", next(iter(scans)),
                      environment=clean_environment(DIGITS_BROKER_URL=server.url))
        assert done.returncode == NoWorkerError.exit_code and "no result" in done.stderr
    finally:
        server.stop()


def test_submit_exits_8_with_one_line_when_redis_is_down(tmp_path, scans):
    dead = f"redis://127.0.0.1:{free_port()}/0"
    done = digits("submit", *list(scans)[:1], environment=clean_environment(DIGITS_BROKER_URL=dead))
    assert done.returncode == BrokerUnavailable.exit_code
    assert done.stderr.splitlines() == [done.stderr.strip()] and "digits submit: error: cannot reach Redis" in done.stderr
