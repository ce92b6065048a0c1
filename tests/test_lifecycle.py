"""A worse model never goes live by itself: the promotion gate, `digits versions`, `digits use`, pruning."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import threading

import pytest
from celery import Celery
from conftest import PROJECT_ROOT, RedisServer, run_digits, wait_until
from worker_harness import WorkerProcess, scan_of, serving_weights

from core import protocol
from core import weights as weights_store
from core.errors import WeightsError


def fake_version(weights, name: str, *, created: str, card: bool = True, model: bool = True) -> None:
    """A version folder as the trainer leaves one (the model file's content does not matter here)."""
    folder = weights / name
    folder.mkdir(parents=True)
    if model:
        (folder / weights_store.MODEL_FILE).write_bytes(b"model bytes")
    if card:
        (folder / weights_store.CARD_FILE).write_text(json.dumps({
            "version": name, "architecture": "strided-bn", "created": created, "test_accuracy": 0.99,
            "evaluation": {"mnist_test": 0.99, "scans": 0.98, "scan_pages": 264}}))


@pytest.mark.fast
def test_use_switches_current_and_previous_goes_back_one_step(tmp_path):
    weights = tmp_path / "weights"
    for number in (1, 2, 3):
        fake_version(weights, f"v{number}", created=f"2026-11-0{number}T00:00:00+00:00")
    for version in ("v1", "v2", "v3"):
        done = run_digits("use", version, "--weights", str(weights))
        assert done.returncode == 0 and f"{version} is now current" in done.stdout, done.stderr
    assert weights_store.current_version(weights) == "v3"
    assert run_digits("use", "--previous", "--weights", str(weights)).returncode == 0
    assert weights_store.current_version(weights) == "v2"
    assert [version for _, version in weights_store.history(weights)] == ["v1", "v2", "v3", "v2"]
    # One more step back goes to v3 (what was current before v2), as a shell's `cd -` would.
    assert run_digits("use", "--previous", "--weights", str(weights)).returncode == 0
    assert weights_store.current_version(weights) == "v3"


@pytest.mark.fast
@pytest.mark.parametrize("missing", ["model", "card"])
def test_an_incomplete_version_is_refused_and_current_stays(tmp_path, missing):
    weights = tmp_path / "weights"
    fake_version(weights, "good", created="2026-11-01T00:00:00+00:00")
    weights_store.point_to(weights, "good")
    fake_version(weights, "half", created="2026-11-02T00:00:00+00:00", **{missing: False})
    done = run_digits("use", "half", "--weights", str(weights))
    assert done.returncode == WeightsError.exit_code
    assert done.stderr.splitlines() == [done.stderr.strip()] and "digits use: error: version half has no" in done.stderr
    assert weights_store.current_version(weights) == "good"
    listed = json.loads(run_digits("versions", "--json", "--weights", str(weights)).stdout)
    assert {entry["version"]: entry["complete"] for entry in listed["versions"]} == {"good": True, "half": False}


@pytest.mark.fast
def test_versions_lists_figures_and_prune_keeps_current_and_previous(tmp_path):
    weights = tmp_path / "weights"
    for number in range(1, 7):
        fake_version(weights, f"v{number}", created=f"2026-11-0{number}T00:00:00+00:00")
    weights_store.point_to(weights, "v2")
    weights_store.point_to(weights, "v1")  # a roll back: v1 current, v2 the one before it
    table = run_digits("versions", "--weights", str(weights))
    assert table.returncode == 0 and "*  v1" in table.stdout and "98.00%" in table.stdout
    done = run_digits("versions", "--json", "--prune", "2", "--weights", str(weights))
    report = json.loads(done.stdout)
    assert report["current"] == "v1" and report["previous"] == "v2"
    assert sorted(report["removed"]) == ["v3", "v4"]
    assert [entry["version"] for entry in report["versions"]] == ["v1", "v2", "v5", "v6"]
    entry = report["versions"][0]
    assert entry["current"] and entry["mnist_test"] == 0.99 and entry["scans"] == 0.98 and entry["size_bytes"] > 0
    assert sorted(path.name for path in weights.iterdir() if path.is_dir()) == ["v1", "v2", "v5", "v6"]


def test_a_worse_training_run_publishes_but_does_not_go_live_and_use_rolls_back_without_failing_a_job(
        tmp_path, small_npz):
    weights, shipped = serving_weights(tmp_path / "weights")
    server = RedisServer(tmp_path / "redis").start()
    worker = WorkerProcess(tmp_path / "worker", broker_url=server.url, weights=weights, name="lifecycle",
                           extra={"DIGITS_RELOAD_INTERVAL": "0.2"})
    app = Celery("test-client", broker=server.url, backend=server.url)
    app.conf.update(protocol.json_only())
    payload = base64.b64encode(scan_of("7")).decode()
    answers, stop = [], threading.Event()

    def served() -> str:
        return app.send_task(protocol.TASK_RECOGNIZE, kwargs={"image": payload}, queue=protocol.QUEUE).get(
            timeout=120)["model"]

    def keep_sending() -> None:
        while not stop.is_set():
            answers.append(app.send_task(protocol.TASK_RECOGNIZE, kwargs={"image": payload},
                                         queue=protocol.QUEUE).get(timeout=120))

    try:
        worker.start().wait_ready()
        sender = threading.Thread(target=keep_sending, daemon=True)
        sender.start()

        # One epoch on 600 images: far worse than the shipped model, so it is published, not made current.
        worse = run_digits("train", "--data", str(small_npz), "--epochs", "1", "--version", "worse",
                           "--weights", str(weights), "--device", "cpu")
        assert worse.returncode == 0, worse.stderr
        assert worse.stdout.strip() == "worse"
        notice = [line for line in worse.stderr.splitlines() if line.startswith("digits train:")]
        assert len(notice) == 1 and "published but not made current: worse than the current version" in notice[0]
        assert "digits use worse" in notice[0]
        assert weights_store.current_version(weights) == shipped and (weights / "worse" / "model.keras").is_file()
        assert served() == shipped

        forced = run_digits("train", "--data", str(small_npz), "--epochs", "1", "--version", "forced", "--promote",
                            "--weights", str(weights), "--device", "cpu")
        assert forced.returncode == 0 and "not made current" not in forced.stderr, forced.stderr
        assert weights_store.current_version(weights) == "forced"
        wait_until(lambda: served() == "forced", timeout=60, interval=0.2, message="the workers on 'forced'")

        back = run_digits("use", "--previous", "--weights", str(weights))
        assert back.returncode == 0 and f"{shipped} is now current" in back.stdout, back.stderr
        wait_until(lambda: served() == shipped, timeout=60, interval=0.2, message="the workers back on the shipped")
        stop.set()
        sender.join(timeout=120)

        # No job failed while versions switched (the one-epoch model may read no digit: that is no failure).
        assert answers and all(answer["status"] != "error" for answer in answers), answers
        assert {answer["model"] for answer in answers} <= {shipped, "forced"}
        listed = json.loads(run_digits("versions", "--json", "--weights", str(weights)).stdout)
        figures = {entry["version"]: entry for entry in listed["versions"]}
        assert set(figures) == {shipped, "worse", "forced"} and listed["current"] == shipped
        assert figures["worse"]["mnist_test"] < figures[shipped]["mnist_test"]
        assert 0 <= figures["worse"]["scans"] < figures[shipped]["scans"]
    finally:
        stop.set()
        worker.stop()
        server.stop()


@pytest.mark.fast
def test_the_compose_trainer_runs_the_gated_train_command():
    import yaml

    compose = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())
    command = compose["services"]["trainer"]["command"]
    assert command[0] == "train" and "--promote" not in command


@pytest.mark.fast
def test_the_shipped_card_holds_the_gate_figures():
    version = weights_store.current_version(PROJECT_ROOT / "weights")
    card = weights_store.check_complete(PROJECT_ROOT / "weights" / version, version)
    assert card["evaluation"]["mnist_test"] >= 0.995 and card["evaluation"]["scans"] >= 0.99


def test_the_loaded_model_is_kept_from_the_garbage_collector_also_after_a_new_version(tmp_path):
    # In a process of its own: TensorFlow loads there, as in a worker.
    weights = tmp_path / "weights"
    shutil.copytree(PROJECT_ROOT / "weights", weights)
    code = f"""
import gc
from pathlib import Path
from core import weights as store
from core.device import configure
from worker.holder import ModelHolder
configure("cpu", threads=1)
weights = Path({str(weights)!r})
versions = sorted(path.name for path in weights.iterdir() if (path / "model.keras").exists())
holder = ModelHolder(weights, reload_interval=3600)
holder.load_initial()
print("frozen", gc.get_freeze_count())
store.point_to(weights, next(version for version in versions if version != holder.current.version))
print("switched", holder.check_once())
print("frozen again", gc.get_freeze_count())
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=PROJECT_ROOT,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""})
    lines = dict(line.rsplit(" ", 1) for line in done.stdout.splitlines()
                 if line.startswith(("frozen ", "switched ", "frozen again ")))
    assert int(lines.get("frozen", "0")) > 100_000, done.stdout + done.stderr  # TensorFlow's objects, not walked again
    assert lines.get("switched") == "True", done.stdout + done.stderr
    assert int(lines.get("frozen again", "0")) > 100_000, done.stdout + done.stderr
