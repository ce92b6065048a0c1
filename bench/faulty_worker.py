"""`digits worker` with faults planted for the drills (bench/drills.py), by file name; other files go as usual.

- a file named `poison-*` breaks the reader with an unexpected exception (it alone must fail);
- a job holding a file named `crash-*` raises an unexpected exception (its files are dead letters);
- a job holding a file named `retry-*` meets transient trouble on every try (its retries run out).

Nothing else differs from `digits worker`: same command line, settings, Celery app and model.
"""

from __future__ import annotations

import sys

from core.errors import Transient


def plant() -> None:
    from worker import process_files, recognition

    real_prepare, real_process = recognition.prepare, process_files.process

    def prepare(data, settings, template=None):
        if b"poison" in data[-64:]:
            raise RuntimeError("planted: this file breaks the reader")
        return real_prepare(data, settings, template)

    def process(files, **options):
        names = [entry.get("path", "").rsplit("/", 1)[-1] for entry in files if isinstance(entry, dict)]
        if any(name.startswith("crash-") for name in names):
            raise RuntimeError("planted: this job breaks the worker")
        if any(name.startswith("retry-") for name in names):
            raise Transient("planted: the job meets transient trouble on every try")
        return real_process(files, **options)

    recognition.prepare = prepare
    process_files.process = process


def main() -> int:
    from digits.cli import main as digits

    plant()
    return digits(["worker", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
