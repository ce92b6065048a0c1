"""Helpers for the `digits up`, submit and status tests: scan images, the shipped weights, hermetic environments."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT, wait_until
from worker_harness import mnist_test, paint_scan

DIGITS = str(Path(sys.executable).parent / "digits")  # the installed command, as the README runs it
STARTUP_SECONDS = 180  # TensorFlow start-up on a busy 2-core machine
STOP_SECONDS = 150


def scan_png(index: int) -> tuple[bytes, int]:
    """(PNG bytes, label): MNIST test image `index`, scaled up and inverted to dark ink on white paper."""
    images, labels = mnist_test()
    return paint_scan([images[index]], margin=16), int(labels[index])


def shipped_weights_folder() -> Path:
    """The shipped weights, which every service test serves."""
    shipped = PROJECT_ROOT / "weights"
    assert (shipped / "CURRENT").is_file(), f"no weights published in {shipped}"
    return shipped


def clean_environment(**settings: str) -> dict[str, str]:
    """This environment without any DIGITS_* variable (so no broker leaks in), plus the given ones."""
    environment = {name: value for name, value in os.environ.items() if not name.startswith("DIGITS_")}
    environment.update({"TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "", **settings})
    return environment


def descendants(pid: int) -> set[int]:
    """Every live process below pid, by walking /proc's parent links."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    """True for a running process; a zombie (exited, not yet reaped) counts as gone."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class Up:
    """`digits up` running in a folder, its output in files (a pipe could fill up and block it)."""

    launched: list["Up"] = []

    def __init__(self, site: Path, environment: dict[str, str], *arguments: str):
        Up.launched.append(self)
        self.site = site
        self.output = site.parent / f"{site.name}-up-{time.monotonic_ns()}.out"
        with open(self.output, "wb") as sink:
            self.process = subprocess.Popen([DIGITS, "up", *arguments], cwd=site, env=environment,
                                            stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def wait_for(self, needle: str, timeout: float) -> None:
        def seen() -> bool:
            if self.process.poll() is not None:
                pytest.fail(f"digits up exited with {self.process.returncode}:\n{self.text()}")
            return needle in self.text()

        wait_until(seen, timeout=timeout, interval=0.2, message=f"{needle!r} in the output of digits up")

    def interrupt(self, signal_number: int = signal.SIGINT) -> int:
        self.process.send_signal(signal_number)
        try:
            return self.process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            pytest.fail(f"digits up did not stop within {STOP_SECONDS}s:\n{self.text()}")


def drop(inbox: Path, name: str, data: bytes) -> None:
    """Write next to the inbox and rename in, the way a careful scanner delivers a file."""
    staging = inbox.parent / f".{name.replace('/', '_')}.partial"
    staging.write_bytes(data)
    staging.rename(inbox / name)


def result_of(site: Path, name: str) -> dict | None:
    path = site / "results" / f"{name}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
