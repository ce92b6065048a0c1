"""Start-up checks: the inbox exists and is readable, and no output folder lies inside it."""

from __future__ import annotations

import os
from pathlib import Path

from core.errors import FolderLoopError, InboxError
from core.settings import Settings


def check_inbox(inbox: Path) -> Path:
    """The inbox as an absolute path; InboxError (exit 6) when it is missing, not a folder or unreadable."""
    if not inbox.exists():
        raise InboxError(f"inbox {inbox} does not exist")
    if not inbox.is_dir():
        raise InboxError(f"inbox {inbox} is not a folder")
    try:
        with os.scandir(inbox) as entries:
            next(entries, None)
    except OSError as error:
        raise InboxError(f"inbox {inbox} is not readable: {error.strerror}") from None
    if not os.access(inbox, os.R_OK | os.X_OK):
        raise InboxError(f"inbox {inbox} is not readable")
    return inbox.resolve()


def check_no_loops(settings: Settings, inbox: Path) -> None:
    """FolderLoopError (exit 7) when results, or a folder originals move to, is the inbox or inside it."""
    folders = [("results", settings.results)]
    if settings.on_success == "move":
        folders.append(("processed", settings.processed))
    if settings.on_error == "move":
        folders.append(("failed", settings.failed))
    for name, folder in folders:
        resolved = folder.resolve()
        if resolved == inbox or inbox in resolved.parents:
            raise FolderLoopError(f"the {name} folder {folder} lies inside the inbox {inbox}, so its files "
                                  f"would be fed back in; put it outside the inbox")
