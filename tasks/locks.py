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


def _locked(path: Path, mode: int, on_wait: Callable[[], None] | None = None) -> int:
    """An open descriptor of `path` holding flock `mode`, on the file that is at `path` now.

    `gptflow gc` may delete a stale lock file: a process that opened it just before then would
    hold a lock on a file nobody else can see, so the lock is retaken until it is on the current one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                if on_wait is not None:
                    on_wait()
                fcntl.flock(fd, mode)
            try:
                current = os.stat(path).st_ino
            except FileNotFoundError:
                current = None
        except BaseException:
            os.close(fd)
            raise
        if current == os.fstat(fd).st_ino:
            return fd
        os.close(fd)


@contextmanager
def file_lock(path: Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an exclusive flock on `path`; if another process holds it, call `on_wait` once and block."""
    waited = False

    def wait() -> None:
        nonlocal waited
        if on_wait is not None and not waited:
            on_wait()
        waited = True

    fd = _locked(path, fcntl.LOCK_EX, wait)
    try:
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
            fds.append(_locked(path, fcntl.LOCK_SH))
        yield
    finally:
        for fd in fds:
            os.close(fd)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine (one owned by another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
