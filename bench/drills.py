"""Fault drills: scans flow through a real Redis, two real workers and a real watcher while a fault strikes.

    python -m bench.drills [--drills redis-restart,worker-watcher-kill] [--files 300] [--workers 2]

For each drill, 300 scans are dropped into the inbox over five seconds and the fault strikes during the
flow. Every service that exits is started again a second later, as Compose's `restart: unless-stopped`
or systemd's `Restart=always` would. The drill then waits for every file's result and prints the seconds
from the end of the fault to the last result, the files lost (no results file, no row, or still in the
inbox), the rows duplicated, and the restarts. When this runs as root, the services run without root's
power to override file modes (setpriv drops CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH and CAP_FOWNER), so a
read-only folder or an unreadable file stops them as it would stop a service user in production. tests/test_drills.py runs the same
drills and asserts on the figures.

Redis runs with its append-only file (fsync every second), as in the Compose file and `digits up`.
The workers are `bench.faulty_worker`: `digits worker` with faults planted on files named poison-*,
crash-* and retry-* (used only by the drills of those faults).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from core import brokers, protocol

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BOUND = 60.0  # seconds from the end of a fault by which every file must have its result
FLOW_SECONDS = 5.0  # the files of a drill are dropped over this long
FAULT_AT = 1.5  # seconds into the flow when the fault strikes
RESTART_DELAY = 1.0  # seconds before an exited service is started again
MODE_OVERRIDES = "-dac_override,-dac_read_search,-fowner"  # capabilities that let root ignore file modes
SETTINGS = {"DIGITS_JOB_RETRIES": "4", "DIGITS_DEVICE": "cpu", "DIGITS_LOG_LEVEL": "INFO",
            "DIGITS_RESCAN_INTERVAL": "60"}


@dataclass
class Service:
    """One process of the deployment, started again by the supervisor whenever it exits."""

    name: str
    command: list[str]
    log: Path
    process: subprocess.Popen | None = None
    restarts: int = 0
    exited_at: float | None = None


@dataclass
class Outcome:
    drill: str
    files: int
    recovery_seconds: float  # from the end of the fault to the last result
    lost: list[str]
    duplicated: int
    restarts: dict[str, int]
    results: dict[str, dict] = field(repr=False, default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.lost and not self.duplicated and self.recovery_seconds <= BOUND


class Site:
    """A deployment on folders under one root: Redis (append-only), workers and a watcher, supervised."""

    def __init__(self, root: Path, *, workers: int = 2):
        self.root = root
        self.folders = {name: root / name for name in ("inbox", "results", "processed", "failed", "home")}
        self.staging = root / "staging"
        self.redis_folder = root / "redis"
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.workers = workers
        self.services: dict[str, Service] = {}
        self.redis: subprocess.Popen | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._supervisor = threading.Thread(target=self._supervise, name="supervisor", daemon=True)

    # -- start and stop ------------------------------------------------------------------------------
    def start(self) -> "Site":
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        for folder in [*self.folders.values(), self.staging, self.redis_folder]:
            folder.mkdir(parents=True, exist_ok=True)
        self.start_redis()
        environment = self._environment()
        python = [*self._as_service_user(), sys.executable]
        for index in range(1, self.workers + 1):
            name = f"worker{index}"
            self.services[name] = Service(name, [*python, "-m", "bench.faulty_worker", "--hostname",
                                                 f"{name}@%h"], self.root / f"{name}.log")
        self.services["watcher"] = Service("watcher", [*python, "-m", "digits", "watch"], self.root / "watcher.log")
        self._environment_of = environment
        for name, service in self.services.items():
            if name != "watcher":
                self._launch(service)
        _wait(lambda: all(" ready." in self.log(name) for name in self.services if name != "watcher"), 180,
              "workers ready")
        self._launch(self.services["watcher"])
        _wait(lambda: "watching" in self.log("watcher"), 60, "watcher watching")
        self._supervisor.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            for service in self.services.values():
                if service.process and service.process.poll() is None:
                    service.process.terminate()
            for service in self.services.values():
                if service.process:
                    try:
                        service.process.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        service.process.kill()
        self.stop_redis()

    def start_redis(self) -> None:
        command = [_redis_server(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(self.redis_folder)]
        self.redis = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait(self.redis_answers, 20, "redis-server")

    def stop_redis(self) -> None:
        if self.redis and self.redis.poll() is None:
            self.redis.send_signal(signal.SIGCONT)
            self.redis.terminate()
            self.redis.wait(timeout=20)

    def redis_answers(self) -> bool:
        try:
            return bool(brokers.redis_client(self.url, read_timeout=1).ping())
        except Exception:
            return False

    def _environment(self) -> dict[str, str]:
        environment = {name: value for name, value in os.environ.items() if not name.startswith("DIGITS_")}
        environment.update(SETTINGS, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1",
                           HOME=str(self.folders["home"]), DIGITS_BROKER_URL=self.url,
                           DIGITS_WEIGHTS=str(PROJECT_ROOT / "weights"),
                           **{f"DIGITS_{name.upper()}": str(folder) for name, folder in self.folders.items()
                              if name != "home"})
        return environment

    @staticmethod
    def _as_service_user() -> list[str]:
        return ["setpriv", f"--bounding-set={MODE_OVERRIDES}"] if os.geteuid() == 0 else []

    def _launch(self, service: Service) -> None:
        with open(service.log, "ab") as log:
            service.process = subprocess.Popen(service.command, cwd=PROJECT_ROOT, env=self._environment_of,
                                               stdout=log, stderr=subprocess.STDOUT)
        service.exited_at = None

    def _supervise(self) -> None:
        """Start again, after RESTART_DELAY, every service that exited (as a restart policy would)."""
        while not self._stop.wait(0.1):
            with self._lock:
                if self._stop.is_set():
                    return
                for service in self.services.values():
                    if service.process.poll() is None:
                        continue
                    now = time.monotonic()
                    if service.exited_at is None:
                        service.exited_at = now
                    elif now - service.exited_at >= RESTART_DELAY:
                        service.restarts += 1
                        self._launch(service)

    def log(self, name: str) -> str:
        try:
            return self.services[name].log.read_text(errors="replace")
        except OSError:
            return ""

    def kill(self, name: str) -> None:
        """SIGKILL a service; the supervisor starts it again."""
        with self._lock:
            service = self.services[name]
            service.process.kill()
            service.process.wait()

    def restarts(self) -> dict[str, int]:
        return {name: service.restarts for name, service in self.services.items()}

    # -- files ---------------------------------------------------------------------------------------
    def drop(self, relative: str, data: bytes, *, mode: int = 0o644) -> None:
        """Write beside the inbox, then rename in: the file arrives complete, as a scanner's upload would."""
        staged = self.staging / relative.replace("/", "__")
        staged.write_bytes(data)
        os.chmod(staged, mode)
        target = self.folders["inbox"] / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staged, target)

    def result_of(self, relative: str) -> dict | None:
        try:
            return json.loads((self.folders["results"] / f"{relative}.json").read_text())
        except (OSError, ValueError):
            return None

    def rows(self) -> collections.Counter:
        try:
            with open(self.folders["results"] / "results.csv", newline="", encoding="utf-8") as handle:
                return collections.Counter(row["source"] for row in csv.DictReader(handle))
        except OSError:
            return collections.Counter()

    def finished(self, names: list[str]) -> bool:
        results, rows = self.folders["results"], self.rows()
        return all((results / f"{name}.json").exists() and rows[name] and
                   not (self.folders["inbox"] / name).exists() for name in names)


# -- the drills --------------------------------------------------------------------------------------

def _redis_restart(site: Site, names: list[str]) -> float:
    site.stop_redis()
    time.sleep(3.0)
    site.start_redis()
    return time.time()


def _redis_freeze(site: Site, names: list[str]) -> float:
    site.redis.send_signal(signal.SIGSTOP)
    time.sleep(20.0)
    site.redis.send_signal(signal.SIGCONT)
    return time.time()


def _worker_then_watcher_kill(site: Site, names: list[str]) -> float:
    client = brokers.redis_client(site.url)
    _wait(lambda: client.hlen(protocol.UNACKED_KEY) > 0, 30, "a worker holding a job")
    site.kill("worker1")  # mid-job: it holds at least one
    _leave_sweep_lock(site, client)
    time.sleep(2.0)
    site.kill("watcher")
    _wait(lambda: site.services["watcher"].process.poll() is None and site.services["watcher"].exited_at is None,
          30, "the watcher started again")
    return time.time()


def _leave_sweep_lock(site: Site, client) -> None:
    """The worst instant for the kill: inside the sweep that hands out silent workers' jobs again, whose
    lock in Redis the dead worker then leaves behind until it expires (as a worker cut off from Redis
    while it holds the lock also does). Planted with the expiry the workers give the lock."""
    from core.settings import Settings
    from worker.celery_app import celery_config

    settings = Settings.load(environ=site._environment_of)
    expire = celery_config(settings)["broker_transport_options"]["unacked_mutex_expire"]
    client.set(protocol.UNACKED_MUTEX_KEY, "left by worker1", ex=expire)


def _nothing(site: Site, names: list[str]) -> float:
    return time.time()  # the fault is in the files (planted); it ends with the last drop


def _results_read_only(site: Site, names: list[str]) -> float:
    results = site.folders["results"]
    modes = {}
    for path in [results, *results.rglob("*")]:
        with contextlib.suppress(FileNotFoundError):  # a worker's temporary file renamed meanwhile
            modes[path] = path.stat().st_mode & 0o777
            os.chmod(path, modes[path] & 0o555)
    time.sleep(10.0)
    for path, mode in modes.items():
        with contextlib.suppress(FileNotFoundError):
            os.chmod(path, mode)
    return time.time()


def _unreadable_files(site: Site, names: list[str]) -> float:
    time.sleep(10.0)  # the unreadable ones were dropped mode 000
    for name in names:
        path = site.folders["inbox"] / name
        if "unreadable-" in name and path.exists():
            os.chmod(path, 0o644)
    return time.time()


@dataclass(frozen=True)
class Drill:
    fault: Callable[[Site, list[str]], float]  # strikes, waits for its end, returns that moment (unix time)
    special: str = ""  # names of planted files, one in every 50


DRILLS = {
    "redis-restart": Drill(_redis_restart),
    "redis-freeze": Drill(_redis_freeze),
    "worker-watcher-kill": Drill(_worker_then_watcher_kill),
    "retries-run-out": Drill(_nothing, special="retry-"),
    "unexpected-error": Drill(_nothing, special="poison-,crash-"),
    "results-read-only": Drill(_results_read_only),
    "unreadable-file": Drill(_unreadable_files, special="unreadable-"),
}


def run(site: Site, name: str, *, files: int = 300, pool: list[tuple[str, bytes, int]] | None = None) -> Outcome:
    """Drop `files` scans under inbox/<name>/ over FLOW_SECONDS, strike the fault during the flow, and wait
    (up to twice BOUND after the fault ends) for every result."""
    drill = DRILLS[name]
    pool = pool or scans()
    specials = [prefix for prefix in drill.special.split(",") if prefix]
    planted = {index: specials[(index // 50) % len(specials)] for index in range(25, files, 50)} if specials else {}
    names = [f"{name}/{planted.get(index, '')}{index:04d}-{pool[index % len(pool)][0]}" for index in range(files)]
    before = site.restarts()

    def flow() -> None:
        start = time.monotonic()
        for index, relative in enumerate(names):
            data = pool[index % len(pool)][1]
            if planted.get(index) == "poison-":
                data += b"poison"
            site.drop(relative, data, mode=0o000 if planted.get(index) == "unreadable-" else 0o644)
            time.sleep(max(0.0, start + FLOW_SECONDS * (index + 1) / files - time.monotonic()))

    dropping = threading.Thread(target=flow, name="flow")
    dropping.start()
    time.sleep(FAULT_AT)
    fault_end = drill.fault(site, names)
    dropping.join()
    if drill.fault is _nothing:
        fault_end = time.time()  # a fault planted in the files ends with the last drop
    deadline = time.monotonic() + 2 * BOUND + max(0.0, fault_end - time.time())
    while time.monotonic() < deadline and not site.finished(names):
        time.sleep(0.2)
    time.sleep(1.0)  # a duplicate would come right after
    results = {relative: site.result_of(relative) for relative in names}
    written = [(site.folders["results"] / f"{relative}.json").stat().st_mtime for relative in names
               if results[relative] is not None]
    rows = site.rows()
    lost = [relative for relative in names if results[relative] is None or not rows[relative]
            or (site.folders["inbox"] / relative).exists()]
    moved = sum(1 for folder in ("processed", "failed") for path in (site.folders[folder] / name).rglob("*")
                if path.is_file())
    duplicated = sum(max(0, rows[relative] - 1) for relative in names) + max(0, moved - len(names))
    last = max(written, default=fault_end)
    after = site.restarts()
    return Outcome(name, files, round(max(0.0, last - fault_end), 1), lost, duplicated,
                   {service: after[service] - before.get(service, 0) for service in after}, results)


def scans(count: int = 60) -> list[tuple[str, bytes, int]]:
    from bench.end_to_end import scan_pool

    return scan_pool(count, seed=7)


def _redis_server() -> str:
    from digits.local.embedded_redis import redis_server_binary

    return redis_server_binary()


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--drills", default=",".join(DRILLS), help="comma-separated, from: " + ", ".join(DRILLS))
    parser.add_argument("--files", type=int, default=300)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the folders and logs (printed at the end)")
    options = parser.parse_args(argv)
    chosen = [name.strip() for name in options.drills.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(DRILLS))
    if unknown:
        parser.error(f"unknown drill(s): {', '.join(unknown)}")
    pool = scans()
    root = Path(tempfile.mkdtemp(prefix="digits-drills-"))
    site = Site(root, workers=options.workers)
    print(f"{options.workers} workers and a watcher on {root}; {options.files} files per drill, "
          f"dropped over {FLOW_SECONDS:.0f} s; bound {BOUND:.0f} s", flush=True)
    print(f"| drill | files | seconds from the end of the fault to the last result | lost | duplicated | restarts |")
    print("|---|---|---|---|---|---|", flush=True)
    failed = 0
    try:
        site.start()
        for name in chosen:
            outcome = run(site, name, files=options.files, pool=pool)
            restarts = ", ".join(f"{service} {count}" for service, count in outcome.restarts.items() if count)
            print(f"| {name} | {outcome.files} | {outcome.recovery_seconds:.1f} | {len(outcome.lost)} | "
                  f"{outcome.duplicated} | {restarts or 'none'} |", flush=True)
            failed += not outcome.passed
    finally:
        site.stop()
        if options.keep:
            print(f"folders and logs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
