"""The public tasks: digits.recognize (base64 image in, result out) and digits.process_files (inbox batches)."""

from __future__ import annotations

import base64
import binascii
import errno
import logging
import socket
import uuid
from typing import Any

import redis

from core import protocol
from core.errors import BadInput, ImageTooLarge, NotAnImage, Transient
from core.templates import Template, TemplateError
from worker import process_files as inbox_files
from worker import recognition, runtime
from worker.celery_app import app

log = logging.getLogger(__name__)

TRANSIENT = (Transient, OSError, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
# The results (or processed/failed) folder cannot take writes: full, read-only, permissions. Its files are
# fine, so they must not become dead letters: the job waits, retried every half minute at most, for as
# long as the folder stays unavailable.
STORAGE_ERRNOS = {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT}
STORAGE_RETRY_MAX = 30
RETRY = {"autoretry_for": TRANSIENT, "retry_backoff": 1, "retry_backoff_max": 60, "retry_jitter": True,
         "max_retries": 10}


def _worker_name(task) -> str:
    return task.request.hostname or socket.gethostname()


@app.task(name=protocol.TASK_RECOGNIZE, bind=True, **RETRY)
def recognize(self, image: str, name: str | None = None, template: str | None = None) -> dict[str, Any]:
    """Recognise one image sent as base64 of its file bytes, as a form of the named template when one is
    given; returns the result object (never retried for bad input)."""
    current = runtime.get()
    settings = current.settings
    source = name if isinstance(name, str) else ""
    job = self.request.id or str(uuid.uuid4())
    worker = _worker_name(self)
    sha256 = None
    try:
        form = _template(current, template)
        data = _decode(image, max_bytes=settings.max_image_bytes)
        sha256 = recognition.sha256_of(data)
        pending = recognition.start(data, current.batcher, settings, form)
        result = recognition.finish(pending, source=source, sha256=sha256, worker=worker, job=job,
                                    review_below=settings.review_below, template=form)
    except (BadInput, TemplateError) as error:
        result = protocol.result(source, error=f"{type(error).__name__}: {error}",
                                 model=current.holder.current.version, sha256=sha256, worker=worker, job=job)
    _count(current, result["status"])
    return result


def _template(current: runtime.Runtime, name: Any) -> Template | None:
    """The form template a recognize call names (None for none); TemplateError when it names none there is."""
    if name is None:
        return None
    found = current.templates.get(name) if isinstance(name, str) else None
    if found is None:
        raise TemplateError(f"no template {name!r} in {current.settings.template_folder}")
    return found


def _decode(image: Any, *, max_bytes: int) -> bytes:
    """base64 text to bytes, refusing payloads over the limit before decoding them."""
    if not isinstance(image, str):
        raise NotAnImage("image must be the file's bytes as a base64 string")
    if len(image) > 4 * (max_bytes // 3 + 1) + 4:
        raise ImageTooLarge(f"payload of {len(image)} base64 characters is more than the limit of {max_bytes} bytes")
    try:
        data = base64.b64decode(image, validate=True)
    except (binascii.Error, ValueError):
        raise NotAnImage("image is not valid base64") from None
    if len(data) > max_bytes:
        raise ImageTooLarge(f"{len(data)} bytes is more than the limit of {max_bytes}")
    return data


def _count(current: runtime.Runtime, status: str) -> None:
    try:
        current.redis.incr(protocol.counter_key(status))
    except redis.exceptions.RedisError as error:
        log.warning("could not count a %s result: %s", status, error)


@app.task(name=protocol.TASK_PROCESS_FILES, bind=True, **RETRY)
def process_files(self, files: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Recognise inbox files [{path relative to the inbox, sha256}]; returns one summary per file.

    Transient trouble is retried with backoff; when the retries run out, or on an unexpected error, the
    job's files get error results and go to failed/ (dead letters) rather than wait in the inbox for ever.
    A folder that cannot take writes (full, read-only) is not the files' fault: the job waits for it.
    """
    job = self.request.id or str(uuid.uuid4())
    current = runtime.get()
    try:
        return inbox_files.process(files, runtime=current, job=job, worker=_worker_name(self))
    except TRANSIENT as error:
        if isinstance(error, OSError) and error.errno in STORAGE_ERRNOS:
            delay = min(STORAGE_RETRY_MAX, 2 ** min(self.request.retries, 5))
            log.warning("job %s waits: cannot write %s (%s); its file(s) stay in the inbox, tried again in %d s",
                        job, error.filename or "the results", error.strerror, delay)
            raise self.retry(exc=error, countdown=delay, max_retries=None) from None
        if self.request.retries < self.max_retries:
            raise  # retried with backoff (autoretry_for)
        cause = f"still failing after {self.max_retries} retries: {type(error).__name__}: {error}"
    except Exception as error:  # the job's outermost frame: whatever broke, its files must not be stranded
        log.exception("job %s failed unexpectedly", job)
        cause = f"{type(error).__name__}: {error}"
    return inbox_files.dead_letter(files, runtime=current, job=job, worker=_worker_name(self), cause=cause)
