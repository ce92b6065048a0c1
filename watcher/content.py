"""A file's identity: a cheap fingerprint from its metadata and the sha256 of its content."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import NamedTuple

from core.files import read_chunks


class Fingerprint(NamedTuple):
    """Metadata that changes whenever the content (or the file behind the name) may have changed."""

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int


class FileChanged(Exception):
    """The file changed while it was being hashed."""


class NotRegular(Exception):
    """The path is a symbolic link or not a regular file."""


def fingerprint_of(status: os.stat_result) -> Fingerprint:
    return Fingerprint(status.st_size, status.st_mtime_ns, status.st_ctime_ns, status.st_ino)


def regular_fingerprint(path: Path) -> Fingerprint:
    """Fingerprint of a regular file; NotRegular for symlinks, folders, FIFOs; OSError when it is gone."""
    status = os.lstat(path)
    if not stat.S_ISREG(status.st_mode):
        raise NotRegular(path)
    return fingerprint_of(status)


def sha256_of(path: Path) -> tuple[str, Fingerprint]:
    """Hash a regular file in chunks; FileChanged when it changed meanwhile, NotRegular for anything else."""
    # O_NOFOLLOW and O_NONBLOCK: a symlink or FIFO swapped in after the check neither escapes nor blocks us.
    descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        before = os.fstat(descriptor)
        if not stat.S_ISREG(before.st_mode):
            raise NotRegular(path)
        digest = hashlib.sha256()
        for chunk in read_chunks(descriptor, before.st_size):
            digest.update(chunk)
        after = fingerprint_of(os.fstat(descriptor))
    finally:
        os.close(descriptor)
    if after != fingerprint_of(before):
        raise FileChanged(path)
    return digest.hexdigest(), after
