"""The exception tree: bad input (permanent, never retried) versus transient trouble (retried)."""

from __future__ import annotations


class DigitsError(Exception):
    """Base of every error this project raises on purpose; exit_code is the process status for it."""

    exit_code = 1


class ConfigError(DigitsError):
    """A setting or flag is invalid."""

    exit_code = 3


class DataError(DigitsError):
    """Training or evaluation data is missing, truncated or has the wrong hash."""

    exit_code = 4


class WeightsError(DigitsError):
    """Weights cannot be published or loaded."""

    exit_code = 5


class InboxError(DigitsError):
    """The watcher's inbox is missing or unreadable."""

    exit_code = 6


class FolderLoopError(DigitsError):
    """An output folder lies inside the inbox, so results would be fed back in."""

    exit_code = 7


class BrokerUnavailable(DigitsError):
    """Redis cannot be reached (transient: retried with backoff)."""

    exit_code = 8


class NoWorkerError(DigitsError):
    """No worker answered (digits status as a health check)."""

    exit_code = 9


class BadInput(DigitsError):
    """An input image can never be recognised; permanent, never retried."""

    exit_code = 10


class EmptyFile(BadInput):
    """The file has zero bytes."""


class NotAnImage(BadInput):
    """The bytes are not an image format Pillow can read, or the file is truncated."""


class UnsupportedImage(BadInput):
    """An image whose format or mode this service does not handle."""


class ImageTooLarge(BadInput):
    """More bytes or pixels than the configured limits (a decompression bomb, say)."""


class ImageTooSmall(BadInput):
    """Too few pixels to hold a digit."""


class UnsafePath(BadInput):
    """A path that leaves its folder (absolute, '..', or a symlink pointing out)."""


class Transient(DigitsError):
    """Trouble that may pass (Redis, filesystem); the job is retried with backoff."""
