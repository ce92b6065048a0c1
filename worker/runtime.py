"""What one worker process keeps for its lifetime: settings, device, model holder, batcher, Redis client."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Any

from core.settings import Settings
from worker import recognition
from worker.batching import Batcher, Stats
from worker.fields import TemplateShelf
from worker.holder import ModelHolder

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    backend: str  # the Keras backend serving: tensorflow, jax or torch
    device: str
    holder: ModelHolder
    batcher: Batcher
    redis: Any
    templates: Any = None  # worker.fields.TemplateShelf: the form templates, read again when they change
    heartbeat: Any = None  # worker.heartbeat.Heartbeat, started by the Celery worker once the model is loaded

    def info(self) -> dict[str, Any]:
        """What the digits_info inspect command answers."""
        return {"backend": self.backend, "device": self.device, "model": self.holder.current.version,
                **self.batcher.stats.snapshot()}


_runtime: Runtime | None = None
_settings: Settings | None = None
_lock = threading.Lock()


def set_settings(settings: Settings) -> None:
    """Settings for this process (the `digits worker` flags); otherwise they come from DIGITS_* variables."""
    global _settings
    _settings = settings


def settings() -> Settings:
    global _settings
    if _settings is None:
        _settings = Settings.load()
    return _settings


def start() -> Runtime:
    """Configure the device, load and warm the model, start the batcher and the reload poller (once)."""
    global _runtime
    with _lock:
        if _runtime is not None:
            return _runtime
        from core.brokers import redis_client
        from core.device import backend, configure

        current = settings()
        if current.umask:
            os.umask(int(current.umask, 8))  # results files and moved originals follow it
        device = configure(current.device, threads=current.model_threads)
        recognition.warm_up(current)  # before the model, whose loading freezes what is loaded by then for the gc
        holder = ModelHolder(current.weights, reload_interval=current.reload_interval)
        predictor = holder.load_initial()
        batcher = Batcher(lambda: holder.current, batch_size=current.batch_size,
                          batch_wait_ms=current.batch_wait_ms, stats=Stats())
        batcher.start()
        holder.start_polling()
        client = redis_client(current.effective_broker_url)
        shelf = TemplateShelf(current.template_folder)
        shelf.check_all()
        _runtime = Runtime(settings=current, backend=backend(), device=device, holder=holder, batcher=batcher,
                           redis=client, templates=shelf)
        log.info("worker ready on %s (Keras backend %s) with weights version %s from %s (batch_size %d, "
                 "batch_wait_ms %s, %d thread(s) per model call, %d job thread(s))", device, _runtime.backend,
                 predictor.version, current.weights, current.batch_size, current.batch_wait_ms, current.model_threads,
                 current.concurrency)
        return _runtime


def get() -> Runtime:
    """The running runtime, started on first use when no worker_init signal started it."""
    return _runtime or start()


def running() -> Runtime | None:
    return _runtime


def stop() -> None:
    global _runtime
    with _lock:
        if _runtime is not None:
            if _runtime.heartbeat is not None:
                _runtime.heartbeat.stop()
            _runtime.holder.stop()
            _runtime.batcher.stop()
            _runtime = None
