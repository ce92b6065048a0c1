"""Which inbox names the watcher skips, and why: hidden, temporary and system files, wrong extensions."""

from __future__ import annotations

import logging
from typing import NamedTuple

TEMPORARY_SUFFIXES = (".part", ".partial", ".tmp", ".crdownload", "~")
SYSTEM_FILES = {"thumbs.db", "desktop.ini"}
SYSTEM_FOLDERS = {"@eadir"}  # Synology thumbnails; hidden folders (.stfolder, .Trash-1000) are skipped too


class Skip(NamedTuple):
    """Why a path is not queued, and the level at which that is worth logging."""

    reason: str
    level: int


SYMLINK = Skip("symbolic link (never followed)", logging.WARNING)
NOT_REGULAR = Skip("not a regular file", logging.WARNING)


def folder_skip(name: str) -> Skip | None:
    """A folder whose whole subtree is ignored, or None."""
    if name.startswith("."):
        return Skip("hidden folder", logging.DEBUG)
    if name.lower() in SYSTEM_FOLDERS:
        return Skip("system folder", logging.DEBUG)
    return None


def name_skip(relative: str, extensions: tuple[str, ...]) -> Skip | None:
    """Why the file at this inbox-relative POSIX path is skipped by name alone, or None to consider it."""
    *folders, name = relative.split("/")
    for folder in folders:
        skipped = folder_skip(folder)
        if skipped:
            return Skip(f"inside a {skipped.reason} ({folder})", skipped.level)
    try:
        relative.encode("utf-8")
    except UnicodeEncodeError:
        return Skip("name is not valid UTF-8", logging.WARNING)
    lowered = name.lower()
    if name.startswith("._"):
        return Skip("macOS metadata file", logging.DEBUG)
    if name.startswith("."):
        return Skip("hidden file", logging.DEBUG)
    if lowered.endswith(TEMPORARY_SUFFIXES):
        return Skip("temporary file", logging.DEBUG)
    if lowered in SYSTEM_FILES:
        return Skip("system file", logging.DEBUG)
    extension = lowered.rpartition(".")[2] if "." in lowered else ""
    if extension not in extensions:
        shown = f".{extension}" if extension else "no extension"
        return Skip(f"unsupported extension ({shown}; accepted: {', '.join(extensions)})", logging.INFO)
    return None


class SkipLog:
    """Logs each skipped path once per reason, so events and rescans do not repeat it."""

    def __init__(self, logger: logging.Logger):
        self._logger = logger
        self._logged: dict[str, str] = {}

    def report(self, relative: str, skip: Skip) -> None:
        if self._logged.get(relative) != skip.reason:
            self._logged[relative] = skip.reason
            self._logger.log(skip.level, "skipped %s: %s", relative, skip.reason)

    def forget(self, relative: str) -> None:
        self._logged.pop(relative, None)

    def retain(self, present: set[str]) -> None:
        """Drop paths no longer in the inbox, so memory follows the inbox, not its history."""
        for relative in [path for path in self._logged if path not in present]:
            del self._logged[relative]
