"""`digits up` as the README runs it: embedded Redis, worker and watcher; Ctrl-C stops all, nothing lost or left."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from conftest import RedisServer, csv_rows, wait_until
from service_harness import (
    DIGITS,
    STARTUP_SECONDS,
    STOP_SECONDS,
    Up,
    alive,
    clean_environment,
    command_line,
    descendants,
    drop,
    result_of,
    scan_png,
    shipped_weights_folder,
)

from core import protocol
from core.errors import ConfigError, WeightsError
from core.settings import Settings
from digits.local import children, up
from digits.local.embedded_redis import EmbeddedRedis, recorded_url, running_url


@pytest.fixture(scope="module")
def weights() -> Path:
    return shipped_weights_folder()


@pytest.fixture(autouse=True)
def stop_leftovers():
    """A failing test must not leave a `digits up` (and its services) running."""
    yield
    for run in Up.launched:
        if run.process.poll() is None:
            run.process.send_signal(signal.SIGINT)
            try:
                run.process.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                run.process.kill()
    Up.launched.clear()


def test_digits_up_recognises_dropped_scans_stops_cleanly_on_ctrl_c_and_resumes(tmp_path, weights):
    site = tmp_path / "site"
    site.mkdir()
    # One file per job, so a burst is many jobs and Ctrl-C finds most of them still on the queue.
    environment = clean_environment(DIGITS_WEIGHTS=str(weights), DIGITS_DEVICE="cpu", DIGITS_CONCURRENCY="4",
                                    DIGITS_READY_DELAY="0.3", DIGITS_QUEUE_BATCH="1")
    scans = {f"scan-{index}.png": scan_png(index) for index in range(3)}
    scans["nested/scan-3.png"] = scan_png(3)
    broken = {"broken.png": b"not an image at all"}

    first = Up(site, environment)
    first.wait_for("drop scans into", timeout=60)
    inbox = site / "inbox"
    assert inbox.is_dir() and (site / "results").is_dir() and (site / ".digits").is_dir()
    (inbox / "nested").mkdir()
    for name, data in {**{name: data for name, (data, _) in scans.items()}, **broken}.items():
        drop(inbox, name, data)
    wait_until(lambda: all(result_of(site, name) for name in [*scans, *broken]), timeout=STARTUP_SECONDS,
               interval=0.2, message="results files of every dropped scan")
    for name, (_, label) in scans.items():
        assert (result_of(site, name)["status"], result_of(site, name)["digits"]) == ("ok", str(label))
        wait_until(lambda: (site / "processed" / name).is_file(), timeout=30, message=f"{name} in processed/")
    assert result_of(site, "broken.png")["status"] == "error"
    wait_until(lambda: (site / "failed" / "broken.png").is_file(), timeout=30, message="broken.png in failed/")
    first.wait_for("done 4 | failed 1", timeout=30)  # the live progress line counted them...
    first.wait_for(f"model {(weights / 'CURRENT').read_text().strip()}", timeout=30)  # ...and names the model

    family = descendants(first.process.pid)
    commands = [command_line(pid) for pid in family]
    assert any("redis-server" in command for command in commands), commands  # the embedded Redis
    assert any(" worker" in command for command in commands) and any(" watch" in command for command in commands)
    assert running_url(site / ".digits")  # `digits status` from this folder finds the running Redis

    # Ctrl-C in the middle of a burst: whatever is not finished must stay in the inbox or on the queue.
    burst = {f"burst/{index:02d}.png": scan_png(10 + index % 20)[0] for index in range(60)}
    (inbox / "burst").mkdir()
    for name, data in burst.items():
        drop(inbox, name, data)
    wait_until(lambda: any(result_of(site, name) for name in burst), timeout=60, interval=0.05,
               message="the first result of the burst")
    assert first.interrupt() == 0, first.text()
    assert not [pid for pid in family if alive(pid)], "processes left behind after Ctrl-C"
    assert recorded_url(site / ".digits") is None
    assert "stopped" in first.text()
    assert list((site / ".digits" / "redis").rglob("*.aof*")), "append-only data kept for the next run"
    for name in [*scans, *broken]:  # moved out of the inbox, each with its result
        assert result_of(site, name) is not None and not (inbox / name).exists()
    for name in burst:  # every file accounted for: either done (result, moved) or still in the inbox
        done = result_of(site, name) is not None and (site / "processed" / name).is_file()
        assert done != (inbox / name).is_file(), name
    left = sum((inbox / name).is_file() for name in burst)
    print(f"{left} of {len(burst)} burst files were not done when digits up stopped")

    # While it is down another scan arrives; the next `digits up` finishes everything, on the same Redis data.
    drop(inbox, "late.png", scan_png(4)[0])
    second = Up(site, environment)
    for name in [*burst, "late.png"]:
        wait_until(lambda: (site / "processed" / name).is_file() and result_of(site, name), interval=0.2,
                   timeout=STARTUP_SECONDS, message=f"{name} done after digits up was started again")
    assert not any(path.is_file() for path in inbox.rglob("*"))
    rows = (site / "results" / "results.csv").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 1 + len(scans) + len(broken) + len(burst) + 1  # header, then one row per file
    family = descendants(second.process.pid)
    assert second.interrupt() == 0, second.text()
    assert not [pid for pid in family if alive(pid)]


def test_digits_up_with_a_broker_url_starts_no_redis_and_stops_on_sigterm(tmp_path, weights):
    server = RedisServer(tmp_path / "redis").start()
    try:
        site = tmp_path / "site"
        site.mkdir()
        run = Up(site, clean_environment(DIGITS_BROKER_URL=server.url, DIGITS_DEVICE="cpu",
                                         DIGITS_WEIGHTS=str(weights)))
        run.wait_for("drop scans into", timeout=60)
        family = descendants(run.process.pid)
        commands = [command_line(pid) for pid in family]
        assert not any("redis-server" in command for command in commands), commands
        assert len(family) >= 2 and not (site / ".digits" / "redis").exists()
        assert run.interrupt(signal.SIGTERM) == 0, run.text()
        assert not [pid for pid in family if alive(pid)]
        assert server.ping()  # someone else's Redis is left running
    finally:
        server.stop()


def test_digits_up_without_weights_says_so_and_starts_nothing(tmp_path):
    done = subprocess.run([DIGITS, "up"], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env=clean_environment(DIGITS_WEIGHTS=str(tmp_path / "no-weights")))
    assert done.returncode == WeightsError.exit_code
    assert "no weights published" in done.stderr and "digits train" in done.stderr
    assert not (tmp_path / "inbox").exists()


def test_services_stop_by_themselves_when_digits_up_is_killed(tmp_path, weights):
    site = tmp_path / "site"
    site.mkdir()
    run = Up(site, clean_environment(DIGITS_DEVICE="cpu", DIGITS_WEIGHTS=str(weights)))
    run.wait_for("drop scans into", timeout=60)
    family = descendants(run.process.pid)
    assert len(family) >= 3  # redis-server, worker, watcher
    run.process.kill()
    run.process.wait()
    deadline = time.monotonic() + children.ORPHAN_GRACE_SECONDS + 30
    while (left := [pid for pid in family if alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    logs = "\n".join(f"--- {log.name}:\n{log.read_text(errors='replace')[-3000:]}"
                     for log in sorted((site / ".digits").glob("*.log")))
    assert not left, f"still running: {[command_line(pid) for pid in left]}\n{logs}"
    assert running_url(site / ".digits") is None  # its recorded URL is known to be stale


def test_a_service_whose_digits_up_died_exits_even_when_its_own_shutdown_hangs(tmp_path):
    # A stand-in for `digits up` starts a service that ignores SIGTERM (a shutdown stuck on a Redis that
    # died too), then dies by SIGKILL: the service must still go, within the grace the guard allows.
    service = ("import signal, time, sys; sys.path.insert(0, %r); signal.signal(signal.SIGTERM, signal.SIG_IGN); "
               "from digits.local.children import guard_against_orphaning; "
               "print('guarded' if guard_against_orphaning(grace=2, every=0.1) else 'unguarded', flush=True); "
               "time.sleep(300)") % str(Path(__file__).resolve().parents[1])
    supervisor = ("import subprocess, sys, time; from digits.local.children import Child; from pathlib import Path; "
                  "child = Child('service', [sys.executable, '-c', sys.argv[1]], log_path=Path(sys.argv[2]), "
                  "environment={}).start(); print(child.pid, flush=True); time.sleep(300)")
    log_path = tmp_path / "service.log"
    parent = subprocess.Popen([sys.executable, "-c", supervisor, service, str(log_path)],
                              stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
    pid = 0
    try:
        pid = int(parent.stdout.readline())
        wait_until(lambda: "guarded" in log_path.read_text(), timeout=30, message="the service to start")
        assert log_path.read_text().split() == ["guarded"]
        parent.kill()
        parent.wait()
        time.sleep(1)
        assert alive(pid), "it ignores SIGTERM, so only the guard can stop it"
        wait_until(lambda: not alive(pid), timeout=15, message="the orphaned service to exit")
    finally:
        parent.kill()
        if pid and alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_the_cli_modules_import_neither_tensorflow_nor_celery():
    code = ("import sys, digits.local.up, digits.status, digits.submit, digits.versions, digits.use, "
            "digits.local.embedded_redis; "
            "print(sorted({name.split('.')[0] for name in sys.modules} & {'tensorflow', 'keras', 'celery'}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


def test_embedded_redis_keeps_queued_jobs_across_a_restart(tmp_path):
    state = tmp_path / "state"
    first = EmbeddedRedis(state)
    client = redis.Redis.from_url(first.start())
    client.lpush(protocol.QUEUE, "job-1", "job-2")
    first.stop()
    assert recorded_url(state) is None and not first.child.running()
    second = EmbeddedRedis(state)
    try:
        client = redis.Redis.from_url(second.start())
        assert client.lrange(protocol.QUEUE, 0, -1) == [b"job-2", b"job-1"]
        assert recorded_url(state) == second.url and second.password != first.password
        assert (state / "redis" / "redis.conf").stat().st_mode & 0o077 == 0  # the password file is private
    finally:
        second.stop()


def test_a_second_digits_up_on_the_same_state_folder_is_refused(tmp_path):
    holder = up._lock_state(tmp_path)
    try:
        with pytest.raises(ConfigError, match="already running"):
            up._lock_state(tmp_path)
    finally:
        holder.close()
    up._lock_state(tmp_path).close()  # free again once the first one ends


def test_services_get_every_setting_through_the_environment(tmp_path):
    settings = up.absolute_folders(Settings.load({"inbox": "in box", "polling": True, "batch_size": "7",
                                                   "extensions": "png,tif", "broker_url": "redis://x:1/0"},
                                                  environ={}))
    environment = up.child_environment(settings, base={"PATH": "/bin"})
    assert environment["PATH"] == "/bin"
    assert Settings.load(environ=environment) == settings
    assert Path(environment["DIGITS_INBOX"]).is_absolute()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_line_counts_this_run_and_prints_each_change(tmp_path, monkeypatch):
    server = RedisServer(tmp_path / "redis").start()
    try:
        client = server.client()
        client.mset({protocol.counter_key("ok"): 100, protocol.counter_key("no_digit"): 5, protocol.counter_key("error"): 2})
        client.hset(protocol.LEDGER_KEY, mapping={"a.png": "queued:ab:1", "b.png": "done:cd:1"})
        stream = io.StringIO()
        progress = up.Progress(server.url, stream=stream)
        monkeypatch.setattr(progress, "_ask_workers", lambda status: None)  # no worker here
        progress.update()  # the counters before this run are the baseline
        client.incrby(protocol.counter_key("ok"), 3)
        client.incr(protocol.counter_key("error"))
        progress.last_printed = time.monotonic()
        progress.update()  # within a second of the last line: held back...
        assert stream.getvalue().splitlines() == [
            "waiting 1 | done 0 | failed 0 | 0.0 images/s | worker starting (loading the model)"]
        monkeypatch.setattr(progress, "last_printed", 0.0)  # ...until a second has passed
        progress.update()
        assert stream.getvalue().splitlines()[-1].startswith("waiting 1 | done 3 | failed 1 | ")

        terminal = _Terminal()
        live = up.Progress(server.url, stream=terminal)
        monkeypatch.setattr(live, "_ask_workers", lambda status: None)
        live.update()
        live.finish()
        assert terminal.getvalue().startswith("\rwaiting 1 | done 0 | failed 0") and terminal.getvalue().endswith("\n")
    finally:
        server.stop()


def test_several_workers_get_their_own_names_and_logs_and_the_watcher_starts_last():
    from digits.local.up import service_commands

    assert service_commands(1) == [("worker", ["worker"]), ("watcher", ["watch"])]  # celery@host, worker.log
    assert service_commands(3) == [("worker", ["worker", "-n", "worker1@%h"]), ("worker2", ["worker", "-n", "worker2@%h"]),
                                   ("worker3", ["worker", "-n", "worker3@%h"]), ("watcher", ["watch"])]


def test_a_service_that_dies_is_started_again_and_nothing_dropped_meanwhile_is_lost(tmp_path, weights):
    site = tmp_path / "site"
    site.mkdir()
    environment = clean_environment(DIGITS_WEIGHTS=str(weights), DIGITS_DEVICE="cpu", DIGITS_READY_DELAY="0.3",
                                    DIGITS_WORKERS="1")
    up = Up(site, environment)
    up.wait_for("drop scans into", timeout=60)
    inbox = site / "inbox"
    drop(inbox, "before.png", scan_png(1)[0])
    wait_until(lambda: result_of(site, "before.png"), timeout=STARTUP_SECONDS, interval=0.2, message="before.png")

    family = descendants(up.process.pid)
    (worker,) = [pid for pid in family if " worker" in command_line(pid)]
    os.kill(worker, signal.SIGKILL)
    # Dropped in the instant the worker dies: its job may be popped for the dead connection and lost in
    # Kombu's Redis transport; the watcher then sends the file again (docs/exactly-once.md).
    drop(inbox, "during.png", scan_png(2)[0])
    up.wait_for("restarted the worker", timeout=60)
    drop(inbox, "after.png", scan_png(3)[0])
    for name in ("during.png", "after.png"):
        wait_until(lambda: result_of(site, name), timeout=STARTUP_SECONDS, interval=0.2, message=name)
        assert result_of(site, name)["digits"] == str(scan_png(2 if name == "during.png" else 3)[1])
    assert up.process.poll() is None  # digits up itself kept running
    rows = [row["source"] for row in csv_rows(site / "results" / "results.csv")]
    assert sorted(rows) == ["after.png", "before.png", "during.png"]  # one row each, none twice
    assert up.interrupt() == 0
