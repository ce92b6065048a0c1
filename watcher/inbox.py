"""Walking the inbox: every candidate file with its fingerprint, skipped names reported on the way."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import Callable, Iterator

from watcher.content import Fingerprint, fingerprint_of
from watcher.filters import NOT_REGULAR, SYMLINK, Skip, folder_skip, name_skip

ReportSkip = Callable[[str, Skip], None]


def walk(folder: Path, extensions: tuple[str, ...], *, prefix: str = "",
         on_skip: ReportSkip | None = None) -> Iterator[tuple[str, Fingerprint]]:
    """(inbox-relative POSIX path, fingerprint) of each regular file under folder that passes the filters."""
    report = on_skip or (lambda relative, skip: None)
    stack = [(folder, prefix)]
    while stack:
        current, current_prefix = stack.pop()
        try:
            entries = os.scandir(current)
        except OSError as error:
            report(current_prefix.rstrip("/") or ".", Skip(f"cannot list folder: {error.strerror}", logging.WARNING))
            continue
        with entries:
            for entry in entries:
                relative = current_prefix + entry.name
                try:
                    if entry.is_symlink():
                        report(relative, SYMLINK)
                    elif entry.is_dir(follow_symlinks=False):
                        skipped = folder_skip(entry.name)
                        if skipped:
                            report(relative, skipped)
                        else:
                            stack.append((Path(entry.path), relative + "/"))
                    elif skipped := name_skip(relative, extensions):
                        report(relative, skipped)
                    else:
                        status = entry.stat(follow_symlinks=False)
                        if stat.S_ISREG(status.st_mode):
                            yield relative, fingerprint_of(status)
                        else:
                            report(relative, NOT_REGULAR)
                except FileNotFoundError:
                    continue  # gone between listing and looking


def count_waiting(settings, *, client=None) -> int:
    """Candidate files in the inbox minus those the ledger marks done (originals kept after processing)."""
    from digits import ledger

    paths = [relative for relative, _ in walk(settings.inbox, settings.extensions)]
    if client is None:
        import redis

        client = redis.Redis.from_url(settings.effective_broker_url, socket_connect_timeout=2, socket_timeout=5)
    done = 0
    for start in range(0, len(paths), 1000):
        states = ledger.lookup(client, paths[start:start + 1000])
        done += sum(1 for state in states if state is not None and state[0] == ledger.DONE)
    return len(paths) - done
