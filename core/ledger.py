"""The exactly-once ledger in Redis: which inbox files (by path and content) are queued or done.

One hash, field = path relative to the inbox, value = "<state>:<sha256 of the content>:<unix time>[:<job id>]",
the time in microseconds: with the path and the content it names one drop of a file (its results.csv row).
A claim names the job it is sent in (the id is chosen before the claim), so anyone can tell a claim
whose job is lost (neither waiting in the queue nor held by a worker) from one whose job is coming.
The watcher claims a file before queueing it, so a rescan, a duplicate event or a restart never
queues it twice; the worker finishes it once the original has left the inbox (or marks it done
when originals are kept), so the same name dropped again later is processed again.
"""

from __future__ import annotations

import time
from typing import Iterable, NamedTuple

from core.protocol import LEDGER_KEY as KEY

QUEUED = "queued"
DONE = "done"

# Claim unless the same content is already queued or done; returns 1 when claimed.
_CLAIM = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current then
  local state, sha = string.match(current, '^(%a+):(%x+):')
  if sha == ARGV[2] then return 0 end
end
local value = 'queued:' .. ARGV[2] .. ':' .. ARGV[3]
if ARGV[4] ~= '' then value = value .. ':' .. ARGV[4] end
redis.call('HSET', KEYS[1], ARGV[1], value)
return 1
"""

# Forget or mark done only an entry for the same content (a newer file may have replaced it).
_FINISH = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if not current then return 0 end
local state, sha = string.match(current, '^(%a+):(%x+):')
if sha ~= ARGV[2] then return 0 end
if ARGV[3] == '' then redis.call('HDEL', KEYS[1], ARGV[1])
else redis.call('HSET', KEYS[1], ARGV[1], ARGV[3] .. ':' .. ARGV[2] .. ':' .. ARGV[4]) end
return 1
"""


class Entry(NamedTuple):
    state: str  # QUEUED or DONE
    sha256: str
    stamp: float  # unix time of the claim (or of the change to done)
    job: str | None  # the job a queued file is sent in; None for claims that do not say


def claim(client, files: Iterable[tuple[str, ...]]) -> list[bool]:
    """Claim (path, sha256, job id) triples, or (path, sha256) pairs for a claim naming no job, in one round
    trip; True for each that was not already queued or done."""
    script = client.register_script(_CLAIM)
    now = f"{time.time():.6f}"
    pipe = client.pipeline(transaction=False)
    for path, sha256, *job in files:
        script(keys=[KEY], args=[path, sha256, now, job[0] if job else ""], client=pipe)
    return [bool(result) for result in pipe.execute()]


def release(client, files: Iterable[tuple[str, str]]) -> None:
    """Undo claims whose job could not be sent, or of files that left the inbox, so they can be queued again.

    Most files that left the inbox were moved out by a worker that has already forgotten them: one
    HMGET finds the few claims still there, and only those go through the compare-and-delete script.
    """
    files = list(files)
    if not files:
        return
    current = lookup(client, [path for path, _ in files])
    _finish(client, [(path, sha256) for (path, sha256), entry in zip(files, current)
                     if entry is not None and entry[1] == sha256], state="")


def finish_many(client, files: Iterable[tuple[str, str, bool]]) -> None:
    """The worker is done with files (path, sha256, kept): forget those that left the inbox, mark kept ones done."""
    _run_finish(client, [(path, sha256, DONE if kept else "") for path, sha256, kept in files])


def _finish(client, files: Iterable[tuple[str, str]], *, state: str) -> None:
    _run_finish(client, [(path, sha256, state) for path, sha256 in files])


def _run_finish(client, files: list[tuple[str, str, str]]) -> None:
    if not files:
        return
    script = client.register_script(_FINISH)
    now = f"{time.time():.6f}"
    pipe = client.pipeline(transaction=False)
    for path, sha256, state in files:
        script(keys=[KEY], args=[path, sha256, state, now], client=pipe)
    pipe.execute()


def _parse(value: bytes) -> Entry:
    state, sha256, stamp, *job = value.decode().split(":", 3)
    return Entry(state, sha256, float(stamp), job[0] if job else None)


def entries(client) -> dict[str, Entry]:
    """path -> its entry."""
    return {path.decode(): _parse(value) for path, value in client.hgetall(KEY).items()}


def count_queued(client) -> int:
    return sum(1 for entry in entries(client).values() if entry.state == QUEUED)


def lookup(client, paths: list[str]) -> list[Entry | None]:
    """The entry, or None, for each path, in one round trip."""
    if not paths:
        return []
    return [None if value is None else _parse(value) for value in client.hmget(KEY, paths)]
