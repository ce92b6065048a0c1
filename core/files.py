"""Reading a file by its descriptor: what the watcher hashes and the worker reads, without a file object."""

from __future__ import annotations

import os
from typing import Iterator

CHUNK_BYTES = 1 << 20


def read_chunks(descriptor: int, size: int) -> Iterator[bytes]:
    """The bytes of an open regular file of `size` bytes (its fstat), in chunks of at most CHUNK_BYTES,
    read to its end: a file that small in one read (asked one byte more, all of it and less than asked
    is its end), a bigger or growing one, or a short read, until a read returns nothing. Plain reads: a
    buffered file object costs system calls of its own per file."""
    wanted, total = min(size + 1, CHUNK_BYTES), 0
    while chunk := os.read(descriptor, wanted):
        yield chunk
        total += len(chunk)
        if total == size and len(chunk) < wanted:
            return
        wanted = CHUNK_BYTES
