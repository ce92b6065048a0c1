"""The Celery app: Redis broker and backend from settings, JSON only, late acks, threads pool, queue `digits`."""

from __future__ import annotations

import logging

from celery import Celery, concurrency, signals
from celery.worker.control import inspect_command

from digits.errors import ConfigError, DigitsError
from digits.settings import Settings
from worker import runtime

QUEUE = "digits"
TASK_NAMES = ("digits.recognize", "digits.process_files")
SAFE_POOLS = ("threads", "solo")

log = logging.getLogger(__name__)

app = Celery("digits", include=["worker.tasks"])


def configure(settings: Settings) -> Celery:
    """Apply settings to the app; called at import with DIGITS_* variables and again by `digits worker`."""
    runtime.set_settings(settings)
    url = settings.effective_broker_url
    visibility = settings.visibility_timeout
    transport = {
        # A job whose worker died is handed out again once it was unacknowledged this long.
        "visibility_timeout": visibility,
        "unacked_restore_interval": max(1, min(60, int(visibility // 4))),
        "unacked_restore_throttle": 1,
    }
    app.conf.update(
        broker_url=url,
        result_backend=url,
        broker_transport_options=transport,
        result_backend_transport_options={"retry_policy": {"timeout": 5.0}},
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_default_queue=QUEUE,
        task_routes={name: {"queue": QUEUE} for name in TASK_NAMES},
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_track_started=False,
        result_expires=24 * 3600,
        # Threads share one loaded model; several jobs in flight are what gives the batcher batches.
        worker_pool="threads",
        worker_concurrency=settings.concurrency,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=True,
        worker_send_task_events=False,
        timezone="UTC",
    )
    return app


configure(Settings.load())


@signals.worker_init.connect
def load_model_before_taking_jobs(sender=None, **kwargs) -> None:
    """Load and warm the model in the process that runs inference, before the consumer starts."""
    try:
        pool = concurrency.get_implementation(sender.pool_cls)
        if pool not in [concurrency.get_implementation(name) for name in SAFE_POOLS]:
            # prefork would load TensorFlow in the parent and fork it, which TensorFlow does not survive.
            raise ConfigError(f"the digits worker needs --pool threads or solo, not {pool.__module__}")
        settings = runtime.settings()
        settings.log_once("worker")
        if settings.log_level.upper() != "DEBUG":
            # Celery logs every task's return value at INFO: whole result objects, many per second.
            logging.getLogger("celery.app.trace").setLevel(logging.WARNING)
        runtime.start()
    except DigitsError as error:
        # Celery logs and swallows exceptions from signal handlers; a worker without a model must not run.
        log.critical("worker cannot start: %s", error)
        raise SystemExit(error.exit_code) from None


@signals.worker_shutdown.connect
def stop_runtime(**kwargs) -> None:
    runtime.stop()


@inspect_command(name="digits_info")
def digits_info(state) -> dict:
    """Device, weights version, batches, images, average batch size, images/s over the last minute."""
    current = runtime.running()
    if current is None:
        return {"device": None, "model": None, "batches": 0, "images": 0, "average_batch_size": 0.0,
                "images_per_second": 0.0, "started_at": None}
    return current.info()
