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
