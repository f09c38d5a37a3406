"""Inter-process locks for the memory stores: fcntl.flock, held for the span of one read or write.

flock belongs to an open file description, so two stores in one process (or two threads) that each open
the lock file exclude each other just as two processes do; the lock goes with the descriptor when a
holder dies, so a killed writer never leaves the store locked.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from memory.errors import MemoryStoreError


@contextmanager
def file_lock(path: Path, shared: bool = False) -> Iterator[None]:
    """Hold an exclusive (or shared) lock on `path`, creating the file and its folders if missing."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as err:
        raise MemoryStoreError(f"{path}: cannot open the lock file: {err.strerror or err}") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)  # closing drops the lock


@contextmanager
def locked_handle(handle: int, shared: bool = False) -> Iterator[int]:
    """Lock an already open file on its own descriptor (the JSON-lines logs lock themselves)."""
    fcntl.flock(handle, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
    try:
        yield handle
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
