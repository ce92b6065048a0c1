"""Helpers for the worker tests: scan-like test images, a weights folder, a real `celery worker` subprocess."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import PROJECT_ROOT, mnist_data, wait_until
from PIL import Image


def mnist_test() -> tuple[np.ndarray, np.ndarray]:
    """MNIST test images (N, 28, 28) float 0..1 and labels."""
    data = mnist_data()
    return data.test_x.reshape(-1, 28, 28), data.test_y


def digit_samples(label: int, count: int = 1) -> list[np.ndarray]:
    images, labels = mnist_test()
    return list(images[np.flatnonzero(labels == label)[:count]])


def scan_of(digits: str, *, scale: int = 4, sample: int = 0, fmt: str = "PNG") -> bytes:
    """A scan-like image of handwritten MNIST digits: dark ink on white paper, upscaled, with margins."""
    return paint_scan([digit_samples(int(character), sample + 1)[sample] for character in digits],
                      scale=scale, fmt=fmt)


def paint_scan(strips: list[np.ndarray], *, scale: int = 4, margin: int = 24, fmt: str = "PNG") -> bytes:
    """MNIST digits side by side, inverted to dark ink on white paper with margins, then upscaled."""
    gap = np.zeros((28, 10), dtype=np.float32)
    row = np.concatenate([part for strip in strips for part in (strip, gap)][:-1], axis=1)
    page = np.pad(row, margin)
    ink = (255 - np.clip(page * 255, 0, 255)).astype(np.uint8)
    picture = Image.fromarray(ink, "L").resize((ink.shape[1] * scale, ink.shape[0] * scale), Image.BILINEAR)
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt)
    return buffer.getvalue()


def put(folder: Path, relative: str, data: bytes) -> dict[str, str]:
    """Write a file into folder/inbox; the process_files entry {path, sha256} naming it."""
    path = folder / "inbox" / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"path": relative, "sha256": hashlib.sha256(data).hexdigest()}


def load_result(folder: Path, relative: str) -> dict:
    """The results file a worker wrote in folder/results for an inbox file."""
    return json.loads((folder / "results" / (relative + ".json")).read_text(encoding="utf-8"))


def celery_client(url: str, name: str = "test-client"):
    """A Celery app that sends JSON tasks to the workers on this Redis and reads their results."""
    from celery import Celery

    app = Celery(name, broker=url, backend=url)
    app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"])
    return app


def blank_scan() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (200, 120), 250).save(buffer, format="PNG")
    return buffer.getvalue()


def multipage_tiff(pages: list[str]) -> bytes:
    pictures = [Image.open(io.BytesIO(scan_of(page))) for page in pages]
    buffer = io.BytesIO()
    pictures[0].save(buffer, format="TIFF", save_all=True, append_images=pictures[1:])
    return buffer.getvalue()


def publish_copy(weights: Path, source_version: str, new_version: str) -> None:
    """Publish an existing version under a new name (a 'new' model for the reload tests)."""
    from core import weights as model

    model.publish(weights, new_version, lambda staging: shutil.copytree(weights / source_version, staging,
                                                                         dirs_exist_ok=True))


def publish_broken(weights: Path, version: str) -> None:
    """A version whose model file is garbage, and point CURRENT at it."""
    from core import weights as model

    def write(staging: Path) -> None:
        (staging / model.MODEL_FILE).write_bytes(b"this is not a keras file")
        (staging / model.CARD_FILE).write_text('{"architecture": "broken on purpose"}')

    model.publish(weights, version, write)


def serving_weights(folder: Path) -> tuple[Path, str]:
    """A private weights folder holding a copy of the shipped current version. Returns (folder, version)."""
    from core import weights as model

    shipped = PROJECT_ROOT / "weights"
    version = model.current_version(shipped)
    assert version, f"no weights published in {shipped}"
    publish_copy_from(shipped, version, folder)
    return folder, version


def publish_copy_from(source: Path, version: str, weights: Path) -> None:
    from core import weights as model

    model.publish(weights, version, lambda staging: shutil.copytree(source / version, staging, dirs_exist_ok=True))


class WorkerProcess:
    """A real `python -m celery -A worker worker` subprocess configured by DIGITS_* variables."""

    def __init__(self, folder: Path, *, broker_url: str, weights: Path, name: str, extra: dict | None = None,
                 pool: str = "threads", use_cli: bool = False):
        self.folder = folder
        self.name = name
        self.log_path = folder / f"{name}.log"
        self.environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1",
                                DIGITS_BROKER_URL=broker_url, DIGITS_WEIGHTS=str(weights),
                                DIGITS_INBOX=str(folder / "inbox"), DIGITS_RESULTS=str(folder / "results"),
                                DIGITS_PROCESSED=str(folder / "processed"), DIGITS_FAILED=str(folder / "failed"),
                                DIGITS_DEVICE="cpu", DIGITS_RELOAD_INTERVAL="0.5", DIGITS_LOG_LEVEL="INFO")
        self.environment.update(extra or {})
        self.pool = pool
        self.use_cli = use_cli
        self.process: subprocess.Popen | None = None

    def start(self) -> "WorkerProcess":
        for sub in ("inbox", "results", "processed", "failed"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        if self.use_cli:
            command = [sys.executable, "-m", "digits", "worker", "--pool", self.pool, "--hostname", f"{self.name}@%h"]
        else:
            command = [sys.executable, "-m", "celery", "-A", "worker", "worker", "--pool", self.pool,
                       "--hostname", f"{self.name}@%h", "--loglevel", "INFO", "--without-gossip",
                       "--without-mingle"]
        self.process = subprocess.Popen(["nice", "-n", "5", *command], cwd=PROJECT_ROOT, env=self.environment,
                                        stdout=self._log, stderr=subprocess.STDOUT)
        return self

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 120.0) -> None:
        def ready():
            assert self.process.poll() is None, f"worker exited early:\n{self.log_text()[-3000:]}"
            return " ready." in self.log_text()

        wait_until(ready, timeout=timeout, interval=0.2, message=f"worker {self.name} ready")

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        if getattr(self, "_log", None):
            self._log.close()
