"""From image bytes to a result object: normalise (in the caller's thread), then recognise in the batcher."""

from __future__ import annotations

import hashlib
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

import numpy as np

from core import protocol
from core.errors import Transient
from worker.batching import Batcher

INFERENCE_TIMEOUT_SECONDS = 300.0


@dataclass
class Pending:
    """A normalised file: its pages, its glyph images, and once queued the future of their probabilities."""

    pages: list  # list[worker.normalise.Page]
    images: np.ndarray
    future: Future | None = None


def prepare(data: bytes, *, max_pixels: int, max_bytes: int) -> Pending:
    """Normalise a scan (in the caller's thread, beside inference); raises BadInput subclasses."""
    from worker.normalise import normalise

    pages = normalise(data, max_pixels=max_pixels, max_bytes=max_bytes)
    glyphs = [glyph.image for page in pages for glyph in page.glyphs]
    images = np.stack(glyphs).astype(np.float32) if glyphs else np.zeros((0, 28, 28), dtype=np.float32)
    return Pending(pages=list(pages), images=images)


def submit(batcher: Batcher, pending: list[Pending]) -> None:
    """Queue files together, each as one request (all its glyphs on one weights version)."""
    for item, future in zip(pending, batcher.submit_many([item.images for item in pending])):
        item.future = future


def start(data: bytes, batcher: Batcher, *, max_pixels: int, max_bytes: int) -> Pending:
    """Normalise a scan and queue its glyphs."""
    pending = prepare(data, max_pixels=max_pixels, max_bytes=max_bytes)
    submit(batcher, [pending])
    return pending


def finish(pending: Pending, *, source: str, sha256: str, worker: str, job: str | None) -> dict[str, Any]:
    """Wait for the probabilities and build the result object."""
    try:
        probabilities, version = pending.future.result(timeout=INFERENCE_TIMEOUT_SECONDS)
    except FutureTimeout:
        raise Transient(f"inference did not answer within {INFERENCE_TIMEOUT_SECONDS:.0f}s") from None
    pages, offset = [], 0
    for page in pending.pages:
        count = len(page.glyphs)
        details = protocol.digit_details(probabilities[offset:offset + count],
                                        [glyph.box for glyph in page.glyphs], page=page.index)
        pages.append(protocol.page_result(page.index, details))
        offset += count
    return protocol.result(source, pages=pages, model=version, sha256=sha256, worker=worker, job=job)


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
