"""Helpers for the `digits up`, submit and status tests: scan images, the shipped weights, hermetic environments."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from conftest import PROJECT_ROOT
from worker_harness import mnist_test, paint_scan

DIGITS = str(Path(sys.executable).parent / "digits")  # the installed command, as the README runs it


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
