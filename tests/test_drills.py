"""Fault drills on a real deployment: Redis with its append-only file, two `digits worker` processes and a
`digits watch`, each started again when it exits (as a restart policy would). 300 files flow through
each drill while the fault strikes; every file must end with exactly one results file, exactly one
results.csv row and no copy left in the inbox, within 60 s of the fault's end (bench/drills.py)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from bench import drills

FILES = 300


@pytest.fixture(scope="module")
def site():
    # Not under pytest's tmp_path: the services run without root's power to override file modes, and
    # pytest's folder is private to its owner.
    root = Path(tempfile.mkdtemp(prefix="digits-drills-"))
    deployment = drills.Site(root, workers=2).start()
    yield deployment
    deployment.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def pool():
    return drills.scans()


def run(site, pool, name: str) -> drills.Outcome:
    outcome = drills.run(site, name, files=FILES, pool=pool)
    logs = {service: site.log(service)[-3000:] for service in site.services}
    assert not outcome.lost, f"{len(outcome.lost)} file(s) lost, e.g. {outcome.lost[:3]}; logs: {logs}"
    assert outcome.duplicated == 0
    assert outcome.recovery_seconds <= drills.BOUND, outcome
    return outcome


def statuses(outcome: drills.Outcome, prefix: str) -> dict[str, str]:
    return {name: result["status"] + ": " + (result.get("error") or "") for name, result in outcome.results.items()
            if name.split("/")[-1].startswith(prefix)}


def test_redis_restarted_mid_stream(site, pool):
    outcome = run(site, pool, "redis-restart")
    assert not any(outcome.restarts.values()), outcome.restarts  # the workers reconnected by themselves


def test_redis_frozen_for_20_seconds(site, pool):
    outcome = run(site, pool, "redis-freeze")
    assert not any(outcome.restarts.values()), outcome.restarts  # nothing died: they waited


def test_a_worker_killed_mid_job_then_the_watcher_killed(site, pool):
    outcome = run(site, pool, "worker-watcher-kill")
    assert outcome.restarts["worker1"] == 1 and outcome.restarts["watcher"] == 1


def test_a_job_whose_retries_run_out_gives_error_results_in_failed(site, pool):
    outcome = run(site, pool, "retries-run-out")
    planted = statuses(outcome, "retry-")
    assert planted and all(status.startswith("error: JobFailed: still failing after 4 retries")
                           for status in planted.values()), planted
    for name in planted:
        assert (site.folders["failed"] / name).is_file()


def test_an_unexpected_exception_fails_its_file_or_job_and_nothing_else(site, pool):
    outcome = run(site, pool, "unexpected-error")
    poison, crash = statuses(outcome, "poison-"), statuses(outcome, "crash-")
    assert poison and all(status.startswith("error: InternalError: RuntimeError: planted")
                          for status in poison.values()), poison
    assert crash and all(status.startswith("error: JobFailed: RuntimeError: planted") for status in crash.values())
    errors = [name for name, result in outcome.results.items() if result["status"] == "error"]
    # The poison file fails alone; a crashing job takes its own files (at most a job's worth) with it.
    assert len(errors) <= len(poison) + len(crash) * site_queue_batch()


def test_results_folder_read_only_for_10_seconds(site, pool):
    outcome = run(site, pool, "results-read-only")
    assert not [name for name, result in outcome.results.items() if result["status"] == "error"]


def test_files_unreadable_for_10_seconds_wait_and_are_read_once_readable(site, pool):
    outcome = run(site, pool, "unreadable-file")
    planted = statuses(outcome, "unreadable-")
    assert planted and all(status.startswith("ok") for status in planted.values()), planted


def site_queue_batch() -> int:
    from core.settings import Settings

    return Settings().queue_batch
