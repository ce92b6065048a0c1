"""Inbox files: confined reads, stale-job checks, results file, one csv row per drop, then the original moves."""

from __future__ import annotations

import collections
import hashlib
import logging
import os
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core import ledger, protocol
from core.errors import BadInput, ImageTooLarge, NotAnImage, UnsafePath
from core.files import read_chunks
from core.settings import Settings
from core.templates import Template, TemplateError
from worker import crops, recognition
from worker import results_files as results
from worker.runtime import Runtime

log = logging.getLogger(__name__)

SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
DONE = b"done"


@dataclass
class InboxFile:
    """One file of a process_files job and what became of it so far."""

    relative: str
    sha256: str
    path: Path | None = None
    identity: tuple[int, int, int] | None = None  # inode, size, mtime when read: detects a replaced file
    missing: bool = False
    pending: recognition.Pending | None = None
    template: Template | None = None  # the form template the file's inbox folder names
    result: dict[str, Any] | None = None
    summary: dict[str, Any] | None = None


def process(files: Any, *, runtime: Runtime, job: str, worker: str) -> list[dict[str, Any]]:
    """Recognise a batch of inbox files: all are normalised and queued first, so they share model calls."""
    settings = runtime.settings
    if not isinstance(files, list):
        files = []
        log.error("job %s: files must be a list of {path, sha256}", job)
    drops = _drops(runtime, files)
    entries, feeder = [], recognition.Feeder(runtime.batcher, batch_size=settings.batch_size)
    for raw in files:
        entries.append(_read(raw, settings=settings, runtime=runtime, job=job, worker=worker, drops=drops))
        if entries[-1].pending is not None:
            feeder.add(entries[-1].pending)
    feeder.flush()
    open_entries = [entry for entry in entries if entry.summary is None]
    for entry in open_entries:
        if entry.pending is not None:
            entry.result = recognition.finish(entry.pending, source=entry.relative, sha256=entry.sha256,
                                              worker=worker, job=job, review_below=settings.review_below,
                                              template=entry.template)
    _conclude(open_entries, settings=settings, runtime=runtime, job=job, drops=drops)
    return [entry.summary for entry in entries]


def _drops(runtime: Runtime, files: Any) -> dict[tuple[str, str], str]:
    """(path, sha256) -> the drop it belongs to: the ledger claim's time. A file re-sent by anyone while it
    waits in the inbox is the same drop, and gets one results.csv row, whatever job carries it."""
    paths = [raw["path"] for raw in files if isinstance(raw, dict) and isinstance(raw.get("path"), str)]
    found = ledger.lookup(runtime.redis, paths) if paths else []
    return {(path, entry[1]): f"{entry[2]:.6f}" for path, entry in zip(paths, found) if entry is not None}


def _entry(raw: Any) -> InboxFile | None:
    """The job's entry {path, sha256} as an InboxFile; None when it is malformed."""
    relative = raw.get("path") if isinstance(raw, dict) else None
    sha256 = raw.get("sha256") if isinstance(raw, dict) else None
    if not isinstance(relative, str) or not isinstance(sha256, str) or not SHA256_PATTERN.match(sha256.lower()):
        return None
    return InboxFile(relative=relative, sha256=sha256.lower())


def _read(raw: Any, *, settings: Settings, runtime: Runtime, job: str, worker: str,
          drops: dict[tuple[str, str], str]) -> InboxFile:
    """Check one entry, read and hash the file and normalise it; bad input becomes an error result."""
    entry = _entry(raw)
    if entry is None:
        log.error("job %s: malformed entry %r (needs path and a sha256 hex digest)", job, raw)
        source = str(raw.get("path")) if isinstance(raw, dict) else "None"
        return InboxFile(relative=source, sha256="", summary=protocol.summary(
            source, protocol.ERROR, error="malformed entry: needs path and sha256"))
    relative = entry.relative
    model = runtime.holder.current.version
    try:
        results.check_relative(relative)
    except UnsafePath as error:
        # No results file either: a name that leaves the inbox would leave the results folder too.
        log.warning("job %s: refused %r: %s", job, relative, error)
        entry.result = protocol.result(relative, error=str(error), model=model, sha256=entry.sha256,
                                       worker=worker, job=job)
        record_row(runtime, entry.result, job=job, sha256=entry.sha256, drops=drops)
        entry.summary = protocol.summary_of(entry.result)
        return entry
    try:
        entry.path = results.confined(settings.inbox, relative)
        try:
            data = _read_if_current(entry, max_bytes=settings.max_image_bytes)
        except OSError as error:
            # Unreadable for now (permissions, a share gone away): it waits in the inbox, its claim released,
            # and the watcher's next rescan sends it again; the files beside it go on.
            log.warning("job %s: cannot read %s (%s); it waits in the inbox and is sent again",
                        job, relative, error.strerror or error)
            ledger.release(runtime.redis, [(relative, entry.sha256)])
            entry.summary = protocol.summary(relative, protocol.WAITING, error=str(error.strerror or error))
            return entry
        if data is None:
            if entry.missing:
                # Done by an earlier delivery that died before forgetting it; forget it now, so the
                # same content dropped again later is queued again. A newer content's entry is untouched.
                ledger.finish_many(runtime.redis, [(relative, entry.sha256, False)])
            entry.summary = protocol.summary(relative, protocol.STALE)
            return entry
        entry.template = _template(runtime, relative)
        entry.pending = recognition.prepare(data, settings, entry.template)
    except TemplateError as error:
        log.warning("job %s: %s cannot be read as a form: %s", job, relative, error)
        entry.result = protocol.result(relative, error=f"TemplateError: {error}", model=model, sha256=entry.sha256,
                                       worker=worker, job=job)
    except BadInput as error:
        log.info("job %s: %s is bad input: %s", job, relative, error)
        entry.result = protocol.result(relative, error=f"{type(error).__name__}: {error}", model=model,
                                       sha256=entry.sha256, worker=worker, job=job)
    except Exception as error:  # a file that breaks the reader must not hold back the files beside it
        log.exception("job %s: reading %s failed unexpectedly", job, relative)
        entry.result = protocol.result(relative, error=f"InternalError: {type(error).__name__}: {error}",
                                       model=model, sha256=entry.sha256, worker=worker, job=job)
    return entry


def dead_letter(files: Any, *, runtime: Runtime, job: str, worker: str, cause: str) -> list[dict[str, Any]]:
    """A job that cannot be done (its retries ran out, or it failed unexpectedly): each of its files still in
    the inbox gets an error result naming the cause and goes to failed/, instead of waiting for ever."""
    settings = runtime.settings
    drops = _drops(runtime, files)
    entries = []
    for raw in files if isinstance(files, list) else []:
        entry = _entry(raw)
        if entry is None:
            continue
        try:
            entry.path = results.confined(settings.inbox, entry.relative)
            if _read_if_current(entry, max_bytes=settings.max_image_bytes) is None:
                continue
        except (BadInput, OSError):
            pass  # an unreadable file fails all the same: the job cannot read it
        try:  # a form's failure has its row in the form's sheet too
            entry.template = _template(runtime, entry.relative)
        except TemplateError:
            pass
        entry.result = protocol.result(entry.relative, error=f"JobFailed: {cause}", model=None, sha256=entry.sha256,
                                       worker=worker, job=job)
        entries.append(entry)
    log.error("job %s failed for good (%s): %d file(s) moved to %s with an error result", job, cause, len(entries),
              settings.failed)
    _conclude(entries, settings=settings, runtime=runtime, job=job, drops=drops)
    return [entry.summary for entry in entries]


def _template(runtime: Runtime, relative: str) -> Template | None:
    """The form template an inbox file is read with (its top folder's), if any; TemplateError when refused."""
    return runtime.templates.for_path(relative) if runtime.templates is not None else None


def _read_if_current(entry: InboxFile, *, max_bytes: int) -> bytes | None:
    """The file's bytes when it still holds the content the job names; None when the job is stale."""
    try:
        # O_NONBLOCK: opening a FIFO dropped into the inbox must not hang the worker.
        descriptor = os.open(entry.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            info = os.fstat(descriptor)
            if not stat.S_ISREG(info.st_mode):
                raise NotAnImage("not a regular file")
            digest, chunks, size = hashlib.sha256(), [], 0
            for chunk in read_chunks(descriptor, info.st_size):
                digest.update(chunk)
                size += len(chunk)
                if size <= max_bytes:
                    chunks.append(chunk)
        finally:
            os.close(descriptor)
    except (FileNotFoundError, NotADirectoryError):
        entry.missing = True
        return None
    except IsADirectoryError:
        raise NotAnImage("a folder, not a file") from None
    if digest.hexdigest() != entry.sha256:
        return None
    entry.identity = (info.st_ino, info.st_size, info.st_mtime_ns)
    if size > max_bytes:
        raise ImageTooLarge(f"{size} bytes is more than the limit of {max_bytes}")
    return b"".join(chunks)


def _conclude(entries: list[InboxFile], *, settings: Settings, runtime: Runtime, job: str,
              drops: dict[tuple[str, str], str]) -> None:
    """Results files, csv rows (once per drop of each file), the originals out of the inbox, then the ledger
    entries.

    Each step is done for the whole job before the next, so each file still has its results file and
    its row before its original moves, and the Redis work is a few round trips per job, not per file.
    """
    if not entries:
        return
    for entry in entries:  # before the results file that flags them: its crops are there when it is
        if entry.result.get("review") and entry.path is not None:
            try:
                data = _read_if_current(entry, max_bytes=settings.max_image_bytes)
            except (OSError, BadInput):
                data = None
            if data:
                glyphs = recognition.glyph_images(entry.pending) if entry.pending is not None else {}
                crops.write(settings.results, entry.relative, data, entry.result, glyphs, pdf_dpi=settings.pdf_dpi,
                            max_pixels=settings.max_pixels)
    results.write_json_files([(results.result_path(settings.results, entry.relative), entry.result)
                             for entry in entries])
    record_rows(runtime, [(entry.result, entry.sha256) for entry in entries], job=job, drops=drops)
    for template in {entry.template.name: entry.template for entry in entries if entry.template}.values():
        record_rows(runtime, [(entry.result, entry.sha256) for entry in entries if entry.template is template],
                    job=job, drops=drops, sheet=results.form_sheet(settings.results, template))
    finished = []
    for entry in entries:
        disposition = settings.on_error if entry.result["status"] == protocol.ERROR else settings.on_success
        kept = _dispose(entry, disposition=disposition, settings=settings, job=job)
        finished.append((entry.relative, entry.sha256, kept))
        entry.summary = protocol.summary_of(entry.result)
    ledger.finish_many(runtime.redis, finished)
    now = time.time()
    runtime.batcher.stats.observe_latencies([now - float(drops[(entry.relative, entry.sha256)]) for entry in entries
                                             if (entry.relative, entry.sha256) in drops])


def _dispose(entry: InboxFile, *, disposition: str, settings: Settings, job: str) -> bool:
    """Move, keep or delete the original; True when it stays in the inbox."""
    if disposition == "keep" or entry.path is None or entry.identity is None:
        return True
    try:
        info = os.lstat(entry.path)
    except FileNotFoundError:
        return False  # an earlier delivery of this job moved it already
    if (info.st_ino, info.st_size, info.st_mtime_ns) != entry.identity:
        log.info("job %s: %s was replaced while being recognised; the new file gets its own job", job,
                 entry.relative)
        return True
    if disposition == "delete":
        entry.path.unlink(missing_ok=True)
        return False
    destination = settings.processed if entry.result["status"] != protocol.ERROR else settings.failed
    moved = results.move_aside(entry.path, destination, entry.relative)
    log.debug("job %s: moved %s to %s", job, entry.relative, moved)
    return False


def record_row(runtime: Runtime, result: dict[str, Any], *, job: str, sha256: str,
               drops: dict[tuple[str, str], str] | None = None) -> None:
    """Append the csv row and count the status exactly once per drop of the file, even across redeliveries."""
    record_rows(runtime, [(result, sha256)], job=job, drops=drops)


def record_rows(runtime: Runtime, rows: list[tuple[dict[str, Any], str]], *, job: str,
                drops: dict[tuple[str, str], str] | None = None, sheet: results.Sheet | None = None) -> None:
    """Append the csv rows of (result, sha256) pairs to results.csv and count them (or to a form template's
    sheet, not counted), exactly once per drop of each file (per job and file for files no ledger claim
    knows).

    A Redis mark per file first records the csv size and the job ("at:<offset>:<job>"), then the rows are
    appended in one write, then the marks become "done" together with the counters. A delivery after a
    crash, or another job carrying the same drop, finds "at:" and looks for that job's row after that
    offset, so a crash at any point leaves one row per file, never none and never two. Three round trips
    for the whole job.
    """
    client = runtime.redis
    sheet = sheet or results.results_sheet(runtime.settings.results)
    ttl = int(2 * runtime.settings.visibility_timeout + 3600)
    drops = drops or {}
    keyed = {_row_mark(result["source"], sha256, drop=drops.get((result["source"], sha256)), job=job,
                       sheet=sheet.key): result for result, sha256 in rows}
    marks = client.mget(list(keyed)) if keyed else []
    appended, found = {}, {}
    for (key, result), mark in zip(keyed.items(), marks):
        if mark == DONE:
            continue
        if mark and mark.startswith(b"at:") and _row_after_mark(sheet, mark, job=job, source=result["source"]):
            found[key] = result
        else:
            appended[key] = result
    if appended:
        offset = results.csv_size(sheet)
        pipe = client.pipeline(transaction=False)
        for key in appended:
            pipe.set(key, f"at:{offset}:{job}", ex=ttl)
        pipe.execute()
        results.append_rows(sheet, list(appended.values()))
    if appended or found:
        _mark_done(client, {**found, **appended}, ttl=ttl, count=not sheet.key)


def _row_after_mark(sheet: results.Sheet, mark: bytes, *, job: str, source: str) -> bool:
    """Whether the row a mark "at:<offset>[:<job>]" announced is in the sheet: written after that offset by
    the job that set the mark (another job carrying the same drop, or an earlier delivery of this one)."""
    offset, _, marking_job = mark[3:].decode().partition(":")
    return results.has_row(sheet, offset=int(offset), job=marking_job or job, source=source)


def _mark_done(client, keyed: dict[str, dict[str, Any]], *, ttl: int, count: bool = True) -> None:
    pipe = client.pipeline(transaction=True)
    for key in keyed:
        pipe.set(key, DONE, ex=ttl)
    if count:
        for status, number in collections.Counter(result["status"] for result in keyed.values()).items():
            pipe.incrby(protocol.counter_key(status), number)
        flagged = [result for result in keyed.values() if result.get("review")]
        if flagged:
            pipe.incrby(protocol.REVIEW_COUNTER_KEY, len(flagged))
            queued = {item: score for result in flagged for item, score in crops.review_items(result).items()}
            if queued:
                pipe.zadd(protocol.REVIEW_QUEUE_KEY, queued)
    pipe.execute()


def _row_mark(source: str, sha256: str, *, drop: str | None, job: str, sheet: str = "") -> str:
    """The Redis key that says this row is written: per drop of the file when the ledger knows the drop
    (inbox files), else per job (digits.process_files sent by another program for unclaimed files); a form
    template's sheet has marks of its own."""
    prefix = f"{protocol.ROW_MARK_PREFIX}{sheet + ':' if sheet else ''}"
    if drop is not None:
        return f"{prefix}drop:{sha256}:{drop}:{source}"
    return f"{prefix}{job}:{sha256}:{source}"
