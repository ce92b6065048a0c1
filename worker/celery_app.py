"""The Celery app (`celery -A worker worker` finds it): configured from settings when first used, never at import."""

from __future__ import annotations

import logging

from celery import Celery, concurrency, signals
from celery.worker.control import inspect_command

from core import brokers, protocol
from core.errors import ConfigError, DigitsError
from core.settings import Settings
from worker import runtime
from worker.heartbeat import Heartbeat

SAFE_POOLS = ("threads", "solo")

log = logging.getLogger(__name__)

app = Celery("digits", include=["worker.tasks"])


def celery_config(settings: Settings) -> dict:
    """The worker's Celery configuration: JSON only, late acks, threads sharing one model, queue `digits`."""
    url = settings.effective_broker_url
    visibility = settings.visibility_timeout
    sweep = restore_sweep_seconds(settings)
    transport = brokers.transport_options(
        # Live workers refresh the jobs they hold (worker.heartbeat); a job whose worker fell silent is
        # handed out again once it was not refreshed for this long, found by a sweep every few seconds.
        visibility_timeout=visibility,
        unacked_restore_interval=sweep,
        unacked_restore_throttle=1,
        # The sweep runs under a lock in Redis. A worker killed, or cut off from Redis, while it holds the
        # lock leaves it behind until it expires, and Kombu's default expiry is 5 minutes: no dead
        # worker's job would come back for that long. The lock only keeps two sweeps from overlapping,
        # and two overlapping sweeps are harmless (each job is put back in one Redis transaction), so a
        # stale lock now costs one sweep.
        unacked_mutex_expire=sweep,
    )
    return protocol.json_only(
        broker_url=url,
        result_backend=url,
        broker_transport_options=transport,
        result_backend_transport_options=brokers.transport_options(retry_policy={"timeout": 5.0}),
        broker_connection_retry_on_startup=True,
        task_default_queue=protocol.QUEUE,
        task_routes={name: {"queue": protocol.QUEUE} for name in protocol.TASK_NAMES},
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_track_started=False,
        result_expires=24 * 3600,
        # Threads share one loaded model; several jobs in flight are what gives the batcher batches.
        worker_pool="threads",
        worker_concurrency=settings.concurrency,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=True,
        worker_send_task_events=False,  # Flower turns them on when it starts (enable_events): see docs/web.md
    )


# Read when the app's configuration is first needed, not at import: by then `digits worker` has given
# its settings, and `celery -A worker worker` falls back to the DIGITS_* variables.
app.add_defaults(lambda: celery_config(runtime.settings()))


def restore_sweep_seconds(settings: Settings) -> int:
    """Seconds between the sweeps that hand out again the jobs of silent workers (and the sweep lock's life)."""
    return max(1, min(10, int(settings.visibility_timeout // 6)))


def heartbeat_interval(settings: Settings) -> float:
    """Several beats per visibility timeout, so a frozen Redis or a slow beat does not hand out a live job."""
    return max(0.5, min(10.0, settings.visibility_timeout / 6))


def use_settings(settings: Settings) -> Celery:
    """Run this process's worker with these settings (before the app's configuration is first read)."""
    runtime.set_settings(settings)
    if app.configured:
        app.conf.update(celery_config(settings))
    return app


def survive_a_dropped_broker_connection() -> None:
    """Kombu's Redis channel, closed after Redis went away, reaches for the released connection's address
    to put back its jobs and raises AttributeError, which kills the worker (celery#10205). Raise what it
    means instead, a connection error, which Celery's reconnect logic ignores while it reconnects. The
    jobs stay unacknowledged in Redis and come back by the visibility timeout, as for any lost connection."""
    import redis
    from kombu.transport import redis as transport

    if getattr(transport.Channel._connparams, "digits_guarded", False):
        return
    original = transport.Channel._connparams

    def _connparams(self, asynchronous=False):
        if self.connection.client is None:
            raise redis.exceptions.ConnectionError("the broker connection was closed")
        return original(self, asynchronous=asynchronous)

    _connparams.digits_guarded = True
    transport.Channel._connparams = _connparams


@signals.worker_init.connect
def load_model_before_taking_jobs(sender=None, **kwargs) -> None:
    """Load and warm the model in the process that runs inference, before the consumer starts."""
    try:
        pool = concurrency.get_implementation(sender.pool_cls)
        if pool not in [concurrency.get_implementation(name) for name in SAFE_POOLS]:
            # prefork would load TensorFlow in the parent and fork it, which TensorFlow does not survive.
            raise ConfigError(f"the digits worker needs --pool threads or solo, not {pool.__module__}")
        survive_a_dropped_broker_connection()
        settings = runtime.settings()
        settings.log_once("worker")
        if settings.log_level.upper() != "DEBUG":
            # Celery logs every task's return value at INFO: whole result objects, many per second.
            logging.getLogger("celery.app.trace").setLevel(logging.WARNING)
        from worker import tasks  # it imports this module for `app`

        current = runtime.start()
        tasks.process_files.max_retries = tasks.recognize.max_retries = settings.job_retries
        current.heartbeat = Heartbeat(current.redis, interval=heartbeat_interval(settings)).start()
    except DigitsError as error:
        # Celery logs and swallows exceptions from signal handlers; a worker without a model must not run.
        log.critical("worker cannot start: %s", error)
        raise SystemExit(error.exit_code) from None


@signals.worker_shutdown.connect
def stop_runtime(**kwargs) -> None:
    runtime.stop()


@inspect_command(name=protocol.INFO_COMMAND)
def digits_info(state) -> dict:
    """Keras backend, device, weights version, batches, images, average batch size, images/s over the last minute."""
    current = runtime.running()
    if current is None:
        return {"backend": None, "device": None, "model": None, "batches": 0, "images": 0, "average_batch_size": 0.0,
                "images_per_second": 0.0, "started_at": None}
    return current.info()
