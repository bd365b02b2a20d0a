"""One lock per source, held across threads and worker processes (``flock`` on a file).

Every open of the lock file is its own open file description, so two
threads of one process exclude each other exactly as two processes do.
The lock is not re-entrant: code that already holds it must not take it
again.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from ..errors import Unavailable, disk_error


def lock_path(data_dir: Path, name: str) -> Path:
    return data_dir / "sources" / ".locks" / f"{name}.lock"


@contextlib.contextmanager
def source_lock(data_dir: Path, name: str, timeout: float = 600.0) -> Iterator[None]:
    """Hold the source's lock; a caller waiting longer than ``timeout`` gets a 503.

    A data dir that cannot be written (read-only, full) is a 503 too: every change to a
    source takes this lock first, so nothing about the source has changed yet.
    """
    path = lock_path(data_dir, name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise disk_error(f"source {name!r}: could not open its lock file", path, exc) from None
    try:
        deadline = time.monotonic() + timeout
        delay = 0.005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise Unavailable(
                        f"source {name!r} is busy (another sync holds it); retry later", retry_after=10
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
