"""The local pipeline for benchmarks, started the way `digits up` starts it: embedded Redis, workers, a watcher."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

from core import brokers, protocol
from core.settings import Settings
from digits.local import up
from digits.local.children import Child
from digits.local.embedded_redis import EmbeddedRedis

COUNTERS = tuple(protocol.COUNTER_KEYS.values())


def resident_kib(pid: int, field: str = "VmRSS") -> int:
    """A process's resident memory (VmRSS) or its peak (VmHWM), in KiB; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, all cores, from /proc/stat (kernel threads
    such as the journal's included): the share of the cores kept busy over an interval is their ratio."""
    with open("/proc/stat", encoding="ascii") as handle:
        fields = [int(value) for value in handle.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal
    tick = os.sysconf("SC_CLK_TCK")
    return (total - idle) / tick, total / tick


class MemorySampler:
    """Samples the resident memory of some processes every interval seconds, in a thread; keeps every sample."""

    def __init__(self, pids: dict[str, int], *, interval: float = 0.25):
        self.pids = pids
        self.interval = interval
        self.samples: dict[str, list[tuple[float, int]]] = {name: [] for name in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)

    def __enter__(self) -> "MemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            now = time.monotonic()
            for name, pid in self.pids.items():
                self.samples[name].append((now, resident_kib(pid)))
            if self._stop.wait(self.interval):
                return

    def peak_mib(self, name: str) -> float:
        return max((value for _, value in self.samples[name]), default=0) / 1024


class Pipeline:
    """Embedded Redis, `workers` worker processes and one watcher on folders under root; stopped in order."""

    def __init__(self, root: Path, *, workers: int = 1, **overrides):
        self.root = root
        folders = {name: root / name for name in up.FOLDERS}
        self.settings = up.absolute_folders(Settings.load().replace(**folders, **overrides))
        for name in up.FOLDERS:
            getattr(self.settings, name).mkdir(parents=True, exist_ok=True)
        self.staging = root / "staging"  # same filesystem as the inbox: files are renamed in, complete
        self.staging.mkdir(exist_ok=True)
        self.worker_count = workers
        self.redis_server: EmbeddedRedis | None = None
        self.workers: list[Child] = []
        self.watcher: Child | None = None
        self.client = None
        self.environment: dict[str, str] = {}

    def start_redis(self) -> None:

        self.redis_server = EmbeddedRedis(self.settings.state)
        self.settings = self.settings.replace(broker_url=self.redis_server.start())
        self.environment = up.child_environment(self.settings)
        self.client = brokers.redis_client(self.settings.broker_url)

    def start_watcher(self) -> None:
        self.watcher = Child("watcher", [sys.executable, "-m", "digits", "watch"],
                             log_path=self.settings.state / "watcher.log", environment=self.environment).start()
        wait_for(lambda: "watching " in self.watcher.log_tail(50), timeout=60, what="the watcher to start")

    def start_worker(self) -> Child:
        number = len(self.workers) + 1
        child = Child(f"worker{number}", [sys.executable, "-m", "digits", "worker", "-n", f"bench{number}@%h"],
                      log_path=self.settings.state / f"worker{number}.log", environment=self.environment).start()
        self.workers.append(child)
        return child

    def wait_workers_ready(self) -> None:
        for child in self.workers:
            wait_for(lambda: "ready." in child.log_tail(200) or not child.running(), timeout=180,
                     what=f"{child.name} to be ready")
            if not child.running():
                raise RuntimeError(f"{child.name} exited:\n{child.log_tail()}")

    def start(self) -> "Pipeline":
        self.start_redis()
        for _ in range(self.worker_count):
            self.start_worker()
        self.start_watcher()
        self.wait_workers_ready()
        return self

    def stop(self) -> None:
        for child in [self.watcher, *self.workers]:
            if child is not None:
                child.stop(timeout=60)
        if self.redis_server is not None:
            self.redis_server.stop()

    def pids(self, *, redis: bool = False) -> dict[str, int]:
        found = {child.name: child.pid for child in self.workers}
        if self.watcher is not None:
            found["watcher"] = self.watcher.pid
        if redis and self.redis_server is not None and self.redis_server.child is not None:
            found["redis"] = self.redis_server.child.pid
        return found

    def done(self) -> int:
        """Files finished so far (every status), from the workers' Redis counters."""
        return sum(int(value or 0) for value in self.client.mget(COUNTERS))

    def stage(self, files: list[tuple[str, bytes]]) -> list[str]:
        """Write files into the staging folder (not timed); returns their names."""
        for name, data in files:
            (self.staging / name).write_bytes(data)
        # On disk before they are dropped: writing back the benchmark's own files (160 MB per 2,000) is not
        # the service's work, yet the workers' syncfs would do it during the burst. Files dropped the
        # instant they are written (the kernel writes back after up to 30 s) do cost a worker that.
        os.sync()
        return [name for name, _ in files]

    def drop(self, names: list[str]) -> None:
        """Move staged files into the inbox: each appears there complete, as a scanner's upload does."""
        for name in names:
            os.rename(self.staging / name, self.settings.inbox / name)

    def wait_done(self, target: int, *, timeout: float, interval: float = 0.02) -> float:
        """Wait until the counters reach target; returns the monotonic time it was seen."""
        wait_for(lambda: self.done() >= target, timeout=timeout, interval=interval, what=f"{target} results")
        return time.monotonic()


def wait_for(condition, *, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
