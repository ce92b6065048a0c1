"""Child processes of `digits up`: each in its own session, dying with their parent, stopped in order."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Mapping, Sequence

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
SUPERVISOR_VARIABLE = "DIGITS_SUPERVISOR_PID"  # set for each service: the pid of the `digits up` that runs it
ORPHAN_GRACE_SECONDS = 30.0  # a service whose `digits up` died has this long to stop by itself


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it when `digits up` itself dies (even by SIGKILL)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: the parent's own shutdown still stops it


def guard_against_orphaning(environment: Mapping[str, str] = os.environ, *,
                            grace: float = ORPHAN_GRACE_SECONDS, every: float = 1.0) -> threading.Thread | None:
    """In a service started by `digits up`: exit, at the latest `grace` seconds after `digits up` died.

    Its death already sends this process SIGTERM (PR_SET_PDEATHSIG), and the service then shuts down
    as usual; but a shutdown that waits on something that died with `digits up` (its embedded Redis)
    must not leave the service running, holding a model and a state folder, with nobody to stop it.
    Jobs it held come back from Redis by the visibility timeout, as for any killed worker.
    """
    supervisor = environment.get(SUPERVISOR_VARIABLE)
    if not supervisor or not supervisor.isdigit() or int(supervisor) != os.getppid():
        return None

    def watch() -> None:
        while os.getppid() == int(supervisor):
            time.sleep(every)
        time.sleep(grace)
        log.error("`digits up` (pid %s) is gone and this service did not stop within %.0f s; exiting",
                  supervisor, grace)
        logging.shutdown()
        os._exit(1)

    thread = threading.Thread(target=watch, name="digits-orphan-guard", daemon=True)
    thread.start()
    return thread


class Child:
    """One service process, in a session (and so a process group) of its own.

    Its own process group means the terminal's Ctrl-C reaches only `digits up`, which then
    stops the services in the right order instead of all at once.
    """

    def __init__(self, name: str, command: Sequence[str], *, log_path: Path, environment: Mapping[str, str]):
        self.name = name
        self.command = list(command)
        self.log_path = log_path
        self.environment = dict(environment)
        self.process: subprocess.Popen | None = None

    def start(self) -> "Child":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                self.command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                env={**self.environment, SUPERVISOR_VARIABLE: str(os.getpid())}, start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        log.info("started %s (pid %d), log in %s", self.name, self.process.pid, self.log_path)
        return self

    @property
    def pid(self) -> int:
        return self.process.pid if self.process else 0

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def exit_code(self) -> int | None:
        return self.process.poll() if self.process else None

    def stop(self, *, signal_number: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        """Signal the process, wait for it, then kill whatever is left of its process group."""
        if self.process is None:
            return None
        if self.running():
            log.info("stopping %s (pid %d)", self.name, self.pid)
            self._signal_leader(signal_number)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0f s; killing it", self.name, timeout)
                _signal_group(self.pid, signal.SIGKILL)
        self.process.wait()
        kill_group(self.pid)  # whatever it left behind (pool children, say)
        return self.process.returncode

    def _signal_leader(self, signal_number: int) -> None:
        try:
            os.kill(self.pid, signal_number)
        except ProcessLookupError:
            pass

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def kill_group(process_group: int, *, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL, every process still in a group (pool children left behind, say)."""
    for signal_number in (signal.SIGTERM, signal.SIGKILL):
        if not _signal_group(process_group, signal_number):
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not group_alive(process_group):
                return
            time.sleep(0.05)


def _signal_group(process_group: int, signal_number: int) -> bool:
    try:
        os.killpg(process_group, signal_number)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def group_alive(process_group: int) -> bool:
    try:
        os.killpg(process_group, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True
