"""Leases in the shared store: of the machines sharing a `--store`, one computes each stage.

Local flocks (tasks/locks.py) serialise the processes of one machine; machines sharing a store see
only the store. Before computing a stage the store lacks, a machine writes a lease,
`<store>/leases/<kind>/<key>.json` (an owner token, host, pid and a heartbeat counter), and keeps
it alive from a thread while it computes. Another machine that finds a live lease waits, and
downloads the stage once its manifest is in the store. While a training stage computes, a second
thread uploads its intact checkpoints to `<store>/partial/<kind>/<key>/`, so a machine taking
over a dead holder's lease resumes where the holder stopped instead of at step 0.

fsspec offers no atomic create-if-absent across object stores, so a lease is taken by writing the
record, waiting a moment and reading it back (as marin's executor does with its status files): of
several writers, the one whose record is read back holds it. A race that slips through is caught
by the heartbeat, which re-reads the record before every beat: a holder that finds another owner
has lost the lease; it stops its training at the next step (`STOP_FILE` in its partial directory),
never commits, and waits for the new holder's result like any other machine.

Liveness is judged by the waiting machine's own clock, never by comparing two machines' clocks: a
lease whose record has not changed for its `ttl_s` seconds of the waiter's monotonic time is
expired; one held by a process on the same host that no longer exists is expired at once.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from gpt.config.fields import ConfigError
from tasks.definition import STOP_FILE
from tasks.locks import pid_alive
from tasks.stage import intact_checkpoint

if TYPE_CHECKING:
    from tasks.remote_store import RemoteStore
    from tasks.stage import Stage

LEASE_TTL_ENV = "GPTFLOW_LEASE_TTL"
DEFAULT_TTL = 60.0  # seconds a lease lives without a heartbeat; it beats every ttl/4

Log = Callable[[str], None]


class LeaseLost(Exception):
    """Another machine took over the lease of the stage this machine was computing."""


def lease_ttl() -> float:
    """Seconds a lease survives without a heartbeat: GPTFLOW_LEASE_TTL, else 60."""
    raw = os.environ.get(LEASE_TTL_ENV, "").strip()
    if not raw:
        return DEFAULT_TTL
    try:
        ttl = float(raw)
    except ValueError:
        ttl = 0.0
    if not ttl > 0:
        raise ConfigError(f"{LEASE_TTL_ENV}={raw!r}: expected a number of seconds above 0")
    return ttl


def holder_label(record: dict[str, Any]) -> str:
    """Who holds a lease, for messages: `host pid N`."""
    return f"{record.get('host', '?')} pid {record.get('pid', '?')}"


class StoreLease:
    """This machine's lease on one stage in the store (taken with `acquire`, kept alive with `kept`)."""

    def __init__(self, store: RemoteStore, stage: Stage, ttl: float | None = None):
        self.store, self.stage = store, stage
        self.fs = store.fs
        self.ttl = ttl if ttl is not None else lease_ttl()
        self.path = f"{store.root}/leases/{stage.kind}/{stage.key}.json"
        self.checkpoints_root = f"{store.root}/partial/{stage.kind}/{stage.key}"
        self.owner = uuid.uuid4().hex
        self.host = socket.gethostname()
        self.beats = 0
        self.lost = threading.Event()
        self._done = threading.Event()
        self._uploaded: dict[str, tuple[int, int]] = {}  # checkpoint rel path -> (size, mtime) uploaded

    @property
    def url(self) -> str:
        """The lease record's URL, for messages."""
        return f"{self.store.url}/leases/{self.stage.kind}/{self.stage.key}.json"

    def read(self) -> dict[str, Any] | None:
        """The lease record in the store; None when there is none, {} while it is unreadable (being written)."""
        try:
            raw = self.fs.cat_file(self.path)
        except FileNotFoundError:
            return None
        try:
            record = json.loads(raw)
        except ValueError:
            return {}
        return record if isinstance(record, dict) else {}

    def _write(self) -> None:
        record = {
            "owner": self.owner,
            "host": self.host,
            "pid": os.getpid(),
            "stage": self.stage.name,
            "beats": self.beats,
            "ttl_s": self.ttl,
            "written_at": time.time(),  # for humans; liveness never compares clocks
        }
        if self.store.has_dirs:
            self.fs.makedirs(str(PurePosixPath(self.path).parent), exist_ok=True)
        tmp = f"{self.path}.{self.owner}.tmp"
        self.fs.pipe_file(tmp, json.dumps(record).encode())
        self.fs.mv(tmp, self.path)  # readers see the old record or the new one

    def holds(self) -> bool:
        """Whether the record in the store is this lease's."""
        record = self.read()
        return bool(record) and record.get("owner") == self.owner  # type: ignore[union-attr]

    def try_take(self) -> bool:
        """Write this machine's record, let concurrent writers land, and read back whether it stayed."""
        self._write()
        time.sleep(min(1.0, self.ttl / 10))
        return self.holds()

    def release(self) -> None:
        """Remove the record if it is still this lease's (another holder's is left alone)."""
        self._done.set()
        try:
            if self.holds():
                self.fs.rm_file(self.path)
        except OSError:
            pass  # it expires by itself

    def clear_checkpoints(self) -> None:
        """Delete the uploaded checkpoints: the finished stage is in the store, nothing resumes from them."""
        try:
            if self.fs.exists(self.checkpoints_root):
                self.fs.rm(self.checkpoints_root, recursive=True)
        except OSError:
            pass

    def check(self) -> None:
        """Raise LeaseLost when the heartbeat found another owner, or the record is not this lease's now."""
        if self.lost.is_set() or not self.holds():
            self.lost.set()
            raise LeaseLost(f"stage '{self.stage.name}': another machine took over its lease ({self.url})")

    @contextmanager
    def kept(self, partial: Path, log: Log, warn: Log) -> Iterator[None]:
        """Beat while the block runs (and, for a training stage, upload its checkpoints from `partial`);
        on losing the lease, ask the training in `partial` to stop."""
        threads = [threading.Thread(target=self._beat, args=(partial, warn), daemon=True, name="gptflow-lease")]
        if self.stage.definition.resumable:
            upload = threading.Thread(target=self._upload, args=(partial, warn), daemon=True, name="gptflow-ckpt")
            threads.append(upload)
        for thread in threads:
            thread.start()
        try:
            yield
        finally:
            self._done.set()
            for thread in threads:
                thread.join()
            self._done.clear()

    def _beat(self, partial: Path, warn: Log) -> None:
        while not self._done.wait(self.ttl / 4):
            try:
                record = self.read()
                if not record or record.get("owner") != self.owner:
                    self.lost.set()
                    (partial / STOP_FILE).touch()
                    who = holder_label(record) if record else "nobody (the record is gone)"
                    warn(f"{self.stage.name}: lost its lease to {who}; stopping, and waiting for that machine's result")
                    return
                self.beats += 1
                self._write()
            except OSError as e:  # the store is unreachable: keep trying; others may take over meanwhile
                warn(f"{self.stage.name}: cannot renew its lease {self.url}: {e}")

    def _upload(self, partial: Path, warn: Log) -> None:
        while not self._done.wait(self.ttl / 4):
            try:
                self.upload_checkpoints(partial)
            except OSError as e:
                warn(f"{self.stage.name}: cannot upload its checkpoints to {self.checkpoints_root}: {e}")

    def upload_checkpoints(self, partial: Path) -> list[str]:
        """Upload the intact checkpoints of `partial` that changed since the last upload; returns their paths."""
        sent = []
        for path in sorted(partial.rglob("*.ckpt")):
            try:
                st = path.stat()
            except FileNotFoundError:  # rotated away meanwhile
                continue
            rel, signature = path.relative_to(partial).as_posix(), (st.st_size, st.st_mtime_ns)
            if self._uploaded.get(rel) == signature or not intact_checkpoint(path):
                continue  # unchanged, or being written
            target = f"{self.checkpoints_root}/{rel}"
            if self.store.has_dirs:
                self.fs.makedirs(str(PurePosixPath(target).parent), exist_ok=True)
            tmp = f"{target}.{self.owner}.tmp"
            self.fs.put_file(str(path), tmp)
            after = path.stat()
            if (after.st_size, after.st_mtime_ns) != signature:  # rewritten during the upload
                self.fs.rm_file(tmp)
                continue
            self.fs.mv(tmp, target)
            self._uploaded[rel] = signature
            sent.append(rel)
        return sent

    def restore_checkpoints(self, partial: Path) -> list[str]:
        """Download the checkpoints an earlier holder uploaded, when `partial` has none of its own.

        They are ordinary checkpoints, loaded with `weights_only=True` like local ones; a torn one is
        set aside by the caller (`Stage.set_aside_broken_checkpoints`).
        """
        if any(partial.rglob("*.ckpt")):
            return []
        try:
            remote = [p for p in self.fs.find(self.checkpoints_root) if not p.endswith(".tmp")]
        except FileNotFoundError:
            return []
        root = self.fs._strip_protocol(self.checkpoints_root).rstrip("/")
        got = []
        for path in remote:
            rel = path[len(root) + 1 :] if path.startswith(root + "/") else ""
            parts = PurePosixPath(rel).parts
            if not rel or ".." in parts or PurePosixPath(rel).is_absolute():
                continue  # not ours to write
            target = partial.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(path, str(target))
            got.append(rel)
        return got


def acquire(store: RemoteStore, stage: Stage, pull: bool, log: Log, poll: float | None = None) -> StoreLease | None:
    """This machine's lease on `stage`, taken once no live lease of another machine is in the way;
    None when, with `pull`, the stage turned up in the store meanwhile and was downloaded.

    Call with the stage's local lock held. Waiting is logged once, with the holder's name.
    """
    lease = StoreLease(store, stage)
    poll = poll if poll is not None else min(5.0, lease.ttl / 4)
    seen: tuple[dict[str, Any], float] | None = None  # the holder's record, and since when it is unchanged
    announced = False
    started = time.monotonic()

    def waited() -> None:
        if announced:
            log(f"{stage.name}: waited {time.monotonic() - started:.1f} s for another machine's lease")

    while True:
        if pull and store.pull(stage):
            waited()
            return None
        record = lease.read()
        now = time.monotonic()
        if record is not None and (seen is None or seen[0] != record):
            seen = (record, now)
        expired = record is not None and _expired(record, now - seen[1] if seen else 0.0, lease)
        if record is None or expired:
            if expired and record:
                log(f"{stage.name}: the lease of {holder_label(record)} expired; taking over")
            if lease.try_take():
                waited()
                if pull and store.pull(stage):  # finished just before we took it
                    lease.release()
                    return None
                return lease
            seen = None
            continue
        if not announced:
            log(f"{stage.name}: {holder_label(record)} is computing it (lease {lease.url}); waiting for its result")
            announced = True
        time.sleep(poll)


def _expired(record: dict[str, Any], unchanged_for: float, lease: StoreLease) -> bool:
    """Whether a lease record is dead: unchanged for its holder's ttl, or its holder's process is gone."""
    if record.get("host") == lease.host and isinstance(record.get("pid"), int) and not pid_alive(record["pid"]):
        return True
    try:
        ttl = float(record.get("ttl_s", lease.ttl))
    except (TypeError, ValueError):
        ttl = lease.ttl
    return unchanged_for >= ttl
