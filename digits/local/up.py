"""`digits up`: the whole pipeline on one machine (embedded Redis unless a broker is set, a worker, a watcher)."""

from __future__ import annotations

import argparse
import collections
import dataclasses
import fcntl
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from core.errors import ConfigError, DigitsError, WeightsError
from core.settings import Settings, add_flags, env_name, redact_url
from digits.local.children import Child
from digits.local.embedded_redis import LOCK_FILE, EmbeddedRedis

log = logging.getLogger(__name__)

FOLDERS = ("inbox", "results", "processed", "failed", "state")
WATCHER_STOP_SECONDS = 20.0
WORKER_STOP_SECONDS = 120.0  # a warm shutdown lets the jobs in flight finish
WORKERS_ASKED_EVERY = 5.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--progress-interval", type=float, default=1.0,
                        help="seconds between progress updates (default 1)")
    add_flags(parser, *(spec.name for spec in dataclasses.fields(Settings)))


def child_environment(settings: Settings, base: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment plus every setting as its DIGITS_* variable, for the services."""
    environment = dict(os.environ if base is None else base)
    for spec in dataclasses.fields(Settings):
        value = getattr(settings, spec.name)
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, tuple):
            text = ",".join(value)
        else:
            text = str(value)
        environment[env_name(spec.name)] = text
    return environment


def absolute_folders(settings: Settings) -> Settings:
    """Folders resolved against the current directory, so the services agree on them whatever their cwd."""
    return settings.replace(**{name: getattr(settings, name).expanduser().resolve() for name in FOLDERS})


class StopRequest:
    """Set by the first SIGINT/SIGTERM; a second one asks the service being stopped to hurry."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signals = 0
        self.stopping: Child | None = None

    def install(self) -> None:
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signal_number: int, frame: Any) -> None:
        self.signals += 1
        self.event.set()
        if self.signals > 1 and self.stopping is not None and self.stopping.running():
            # For the worker, Celery's cold shutdown: it stops now and its unfinished jobs are
            # delivered again (acks_late); anything else is simply killed.
            hurry = signal.SIGQUIT if self.stopping.name.startswith("worker") else signal.SIGKILL
            log.warning("second stop signal: stopping the %s at once", self.stopping.name)
            try:
                os.kill(self.stopping.pid, hurry)
            except ProcessLookupError:
                pass


class Progress:
    """The live line: files waiting, done, failed, images per second, model version."""

    def __init__(self, url: str, *, stream: TextIO):
        self.url = url
        self.stream = stream
        self.interactive = stream.isatty()
        self.baseline: dict[str, int] | None = None
        self.history: collections.deque[tuple[float, int]] = collections.deque(maxlen=10)
        self.model = "starting"
        self.workers_asked = 0.0
        self.last_line = ""
        self.last_printed = 0.0

    def update(self) -> None:
        from core import status

        try:
            report = self._numbers(status)
        except DigitsError as error:
            line = f"waiting for Redis ({error})"
        else:
            line = self._format(report)
        self._show(line)

    def _numbers(self, status) -> dict[str, Any]:
        import redis

        client = status.redis_client(self.url)
        try:
            from core import ledger

            counted = status.counts(client)
            waiting = ledger.count_queued(client)
        except redis.exceptions.RedisError as error:
            raise DigitsError(str(error)) from None
        finally:
            client.close()
        if self.baseline is None:
            self.baseline = counted
        now = time.monotonic()
        if self.model == "starting" or now - self.workers_asked >= WORKERS_ASKED_EVERY:
            self.workers_asked = now
            self._ask_workers(status)
        done = counted["ok"] + counted["no_digit"] - self.baseline["ok"] - self.baseline["no_digit"]
        failed = counted["error"] - self.baseline["error"]
        self.history.append((now, done + failed))
        return {"waiting": waiting, "done": done, "failed": failed, "rate": self._rate()}

    def _ask_workers(self, status) -> None:
        try:
            answers = [entry for entry in status.workers(self.url, timeout=0.5) if "error" not in entry]
        except Exception as error:  # the progress line must never stop the service; say why instead
            log.debug("asking workers failed: %s", error)
            return
        if answers:
            self.model = ", ".join(sorted({str(entry.get("model")) for entry in answers}))
            if len(answers) > 1:
                self.model += f" ({len(answers)} workers)"

    def _rate(self) -> float:
        if len(self.history) < 2:
            return 0.0
        (first_time, first_total), (last_time, last_total) = self.history[0], self.history[-1]
        return (last_total - first_total) / (last_time - first_time) if last_time > first_time else 0.0

    def _format(self, numbers: dict[str, Any]) -> str:
        model = "worker starting (loading the model)" if self.model == "starting" else f"model {self.model}"
        return (f"waiting {numbers['waiting']} | done {numbers['done']} | failed {numbers['failed']} | "
                f"{numbers['rate']:.1f} images/s | {model}")

    def _show(self, line: str) -> None:
        if self.interactive:
            self.stream.write("\r" + line + "\x1b[K")
            self.stream.flush()
            self.last_line = line
        elif line != self.last_line and time.monotonic() - self.last_printed >= 1.0:
            # Not a terminal (a log file, say): a new line only when something changed, at most once a second.
            self.stream.write(line + "\n")
            self.stream.flush()
            self.last_printed = time.monotonic()
            self.last_line = line

    def finish(self) -> None:
        if self.interactive and self.last_line:
            self.stream.write("\n")
            self.stream.flush()


def _lock_state(state: Path):
    """One `digits up` per state folder: two would share one embedded Redis's data files."""
    handle = open(state / LOCK_FILE, "a")  # not "w": that would empty the running one's pid first
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise ConfigError(f"another `digits up` is already running with state folder {state}") from None
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def _files_in(folder: Path) -> int:
    return sum(len(names) for _, _, names in os.walk(folder))


def check_weights(settings: Settings) -> None:
    """Fail at once, before anything starts, rather than when the worker cannot load a model."""
    from core.weights import current_version

    if current_version(settings.weights) is None:
        raise WeightsError(f"no weights published in {settings.weights}: train some with `digits train`, "
                           "or point DIGITS_WEIGHTS (--weights) at a weights folder")


def run(args: argparse.Namespace, settings: Settings) -> int:
    settings = absolute_folders(settings)
    check_weights(settings)
    for name in FOLDERS:
        getattr(settings, name).mkdir(parents=True, exist_ok=True)
    os.chmod(settings.state, 0o700)  # holds the embedded Redis password and data
    lock = _lock_state(settings.state)
    stop = StopRequest()
    stop.install()
    redis_server = web = None
    services: list[Child] = []
    try:
        if settings.broker_url:
            log.info("using the Redis at %s (no embedded server)", redact_url(settings.broker_url))
        else:
            redis_server = EmbeddedRedis(settings.state)
            settings = settings.replace(broker_url=redis_server.start())
        settings.log_once("up")
        environment = child_environment(settings)
        for name, arguments in service_commands(settings.worker_processes):
            if stop.event.is_set():
                break
            services.append(Child(name, [sys.executable, "-m", "digits", *arguments],
                                  log_path=settings.state / f"{name}.log", environment=environment).start())
        web = _web_page(settings)
        _announce(settings, web)
        status = _supervise(services, stop=stop, url=settings.broker_url, interval=args.progress_interval,
                            redis_child=redis_server.child if redis_server else None)
    finally:
        if web is not None:
            web.stop()
        _shut_down(services, redis_server, stop=stop)
        lock.close()
    left = _files_in(settings.inbox)
    print(f"digits up: stopped. {left} file(s) left in {settings.inbox}"
          + ("; `digits up` again picks them up." if left else "."), flush=True)
    return status


def service_commands(workers: int) -> list[tuple[str, list[str]]]:
    """(name, `digits` arguments) of each service: the workers (worker, worker2, ...), then the watcher."""
    if workers == 1:
        commands = [("worker", ["worker"])]
    else:  # distinct Celery node names, or their control replies (digits status) would collide
        commands = [("worker" if number == 1 else f"worker{number}", ["worker", "-n", f"worker{number}@%h"])
                    for number in range(1, workers + 1)]
    return commands + [("watcher", ["watch"])]


def _web_page(settings: Settings):
    """The status page, served from this process; the pipeline runs without it when it cannot listen."""
    from web.main import WebServer

    try:
        return WebServer(settings, settings.broker_url).start()
    except ConfigError as error:
        print(f"digits up: no status page: {error} (set DIGITS_WEB_PORT)", flush=True)
        return None


def _announce(settings: Settings, web) -> None:
    print(f"digits up: drop scans into   {settings.inbox}\n"
          f"           results appear in {settings.results}  (originals move to {settings.processed}"
          f" or {settings.failed})\n"
          + (f"           status page at   {web.link}\n" if web is not None else "")
          + f"           logs in {settings.state}; Ctrl-C stops everything cleanly.", flush=True)


RESTART_DELAYS = (1.0, 2.0, 4.0, 8.0, 16.0)  # seconds before each restart of a service that exited
CRASH_LOOP = (5, 120.0)  # this many exits within this many seconds: a crash loop, and digits up gives up


class Restarts:
    """When a service that exited may start again (backoff), and when its exits are a crash loop."""

    def __init__(self) -> None:
        self.exits: dict[str, list[float]] = collections.defaultdict(list)

    def record(self, name: str, now: float) -> float | None:
        """Seconds to wait before restarting `name`, or None for a crash loop."""
        recent = [stamp for stamp in self.exits[name] if stamp > now - CRASH_LOOP[1]] + [now]
        self.exits[name] = recent
        if len(recent) >= CRASH_LOOP[0]:
            return None
        return RESTART_DELAYS[min(len(recent), len(RESTART_DELAYS)) - 1]


def _supervise(services: list[Child], *, stop: StopRequest, url: str, interval: float,
               redis_child: Child | None = None) -> int:
    """Show progress until a stop signal (returns 0). A service that exits is started again after a
    backoff, as systemd or Compose would; a crash loop, or the embedded Redis dying, stops everything (1)."""
    progress = Progress(url, stream=sys.stdout)
    restarts = Restarts()
    due: dict[str, float] = {}  # service name -> when to start it again
    try:
        while not stop.event.is_set():
            now = time.monotonic()
            if redis_child is not None and not redis_child.running():
                progress.finish()
                print(f"digits up: the embedded Redis exited with status {redis_child.exit_code()}; stopping. "
                      f"Last lines of {redis_child.log_path}:\n{redis_child.log_tail()}", file=sys.stderr, flush=True)
                return 1
            for child in services:
                if child.running() or child.name in due:
                    continue
                delay = restarts.record(child.name, now)
                if delay is None:
                    progress.finish()
                    print(f"digits up: the {child.name} keeps exiting ({CRASH_LOOP[0]} times within "
                          f"{CRASH_LOOP[1]:.0f} s, last status {child.exit_code()}); stopping. Last lines of "
                          f"{child.log_path}:\n{child.log_tail()}", file=sys.stderr, flush=True)
                    return 1
                log.warning("the %s exited with status %s; starting it again in %.0f s (see %s)", child.name,
                            child.exit_code(), delay, child.log_path)
                due[child.name] = now + delay
            for child in services:
                if child.name in due and due[child.name] <= now and not stop.event.is_set():
                    del due[child.name]
                    child.start()
                    log.warning("restarted the %s (pid %d)", child.name, child.pid)
            progress.update()
            stop.event.wait(interval)
        return 0
    finally:
        progress.finish()


def _shut_down(services: list[Child], redis_server: EmbeddedRedis | None, *, stop: StopRequest) -> None:
    """Watcher first (no new jobs), then the worker (warm: jobs in flight finish or go back), then Redis."""
    watchers = [child for child in services if child.name == "watcher"]
    workers = [child for child in services if child.name != "watcher"]
    for child, timeout in [(child, WATCHER_STOP_SECONDS) for child in watchers] + [
            (child, WORKER_STOP_SECONDS) for child in workers]:
        stop.stopping = child
        child.stop(signal_number=signal.SIGTERM, timeout=timeout)
    stop.stopping = None
    if redis_server is not None:
        redis_server.stop()
