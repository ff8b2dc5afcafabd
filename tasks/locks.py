"""A per-stage-key lock shared by every process on the machine: `fcntl.flock` on `<kind>/<key>.lock`.

flock locks belong to the open file and vanish when the holder dies (SIGKILL included), so a
killed run never leaves a lock that blocks the next one; the lock file itself may stay and is
harmless. (flock is advisory and local: a workspace on NFS needs a lease service instead.)
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def file_lock(path: Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an exclusive flock on `path`; if another process holds it, call `on_wait` once and block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {time.time():.0f}\n".encode())  # for humans: who holds it
        yield
    finally:
        os.close(fd)  # releases the lock


@contextmanager
def shared_locks(paths: list[Path]) -> Iterator[None]:
    """Hold a shared flock on each of `paths` (runs reading a stage); a writer's exclusive lock waits for them."""
    fds = []
    try:
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            fds.append(fd)
            fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        for fd in fds:
            os.close(fd)
