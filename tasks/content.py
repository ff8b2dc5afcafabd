"""sha256 digests of local input files, with a remembered-digest cache.

Stage cache keys hash local inputs by content, not by path, so an edited corpus file makes a new key.
A cached rerun must not re-read a multi-GB unchanged corpus, so digests are remembered in a JSON file
by (absolute path, size, mtime_ns, inode), and a file whose mtime is within 2 s of hashing is not
remembered (it could change again within the same timestamp tick, as with git's "racy clean" index).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import stat
import tempfile
import threading
import time
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # bytes read per call
RACY_NS = 2_000_000_000  # a file modified this close to the time it is hashed is not remembered
FORMAT = 2  # version of the JSON memory file (2: entries hold ctime_ns)
DIGESTS_FILE = "digests.json"  # the memory file, in the workspace root


class ContentError(ValueError):
    """A local input that cannot be hashed (unreadable, vanished, changed while being hashed).

    The message names the file or folder.
    """


@dataclass
class HashStats:
    """What a DigestCache did: files digested, of them read or remembered, bytes read and seconds spent."""

    files: int = 0  # files digested (hashed or remembered)
    hashed_files: int = 0  # files actually read
    hashed_bytes: int = 0
    remembered_files: int = 0
    seconds: float = 0.0  # time spent in digest calls


def _hash_open_file(f: io.BufferedIOBase) -> tuple[str, int]:
    """Hex sha256 of an open binary file read to its end in 1 MiB chunks, and the number of bytes read."""
    h = sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    total = 0
    while n := f.readinto(buf):
        h.update(view[:n])
        total += n
    return h.hexdigest(), total


def _valid_entry(entry: Any) -> bool:
    return (
        isinstance(entry, dict)
        and all(type(entry.get(k)) is int for k in ("size", "mtime_ns", "ino", "ctime_ns"))
        and isinstance(entry.get("sha256"), str)
        and len(entry["sha256"]) == 64
    )


def _read_memory(path: Path) -> dict[str, dict[str, Any]]:
    """The valid entries of a memory file; empty if it is missing, unreadable or corrupt."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        log.warning("ignoring the digest memory %s: %s", path, e)
        return {}
    files = data.get("files") if isinstance(data, dict) and data.get("format") == FORMAT else None
    if not isinstance(files, dict):
        log.warning("ignoring the digest memory %s: not a format-%d digest file", path, FORMAT)
        return {}
    return {k: v for k, v in files.items() if isinstance(k, str) and _valid_entry(v)}


class DigestCache:
    """sha256 of local files, remembered in a JSON file by (path, size, mtime_ns, inode).

    `path` is the JSON memory file (e.g. `<workspace>/digests.json`), read lazily once; with None
    nothing is remembered on disk, but digests are still memoized in this process. Safe to share
    between threads.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = Path(path) if path is not None else None
        self.stats = HashStats()
        self._memory: dict[str, dict[str, Any]] | None = None
        self._updated: dict[str, dict[str, Any]] = {}  # entries this process added or replaced
        self._lock = threading.Lock()

    def _entries(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            if self._memory is None:
                self._memory = _read_memory(self.path) if self.path is not None else {}
            return self._memory

    def file(self, path: Path) -> str:
        """Hex sha256 of one file's bytes: remembered if its size, mtime_ns and inode are unchanged, else read.

        Raises ContentError if the file is missing, unreadable, not a regular file, or changes while read.
        """
        t0 = time.perf_counter()
        try:
            return self._digest(Path(path))
        finally:
            with self._lock:
                self.stats.files += 1
                self.stats.seconds += time.perf_counter() - t0

    def _digest(self, path: Path) -> str:
        before = _stat(path)
        if not stat.S_ISREG(before.st_mode):
            raise ContentError(f"{path}: not a regular file")
        key = str(path.resolve())
        memory = self._entries()
        entry = memory.get(key)
        signature = (entry["size"], entry["mtime_ns"], entry["ino"], entry["ctime_ns"]) if entry else None
        if entry and signature == _signature(before):
            with self._lock:
                self.stats.remembered_files += 1
            return entry["sha256"]
        try:
            with open(path, "rb") as f:
                opened = os.fstat(f.fileno())
                digest, nbytes = _hash_open_file(f)
        except FileNotFoundError:
            raise ContentError(f"{path}: not found") from None
        except OSError as e:
            raise ContentError(f"{path}: cannot read it ({e.strerror or e})") from e
        try:
            after = os.stat(path)
        except OSError:  # vanished or replaced by something unreadable after it was read
            after = None
        now_ns = time.time_ns()
        if (
            after is None
            or _signature(after) != _signature(before)
            or _signature(opened) != _signature(before)
            or nbytes != before.st_size
        ):
            raise ContentError(f"{path}: changed while it was being hashed; run again when it is stable")
        with self._lock:
            self.stats.hashed_files += 1
            self.stats.hashed_bytes += nbytes
            if before.st_mtime_ns <= now_ns - RACY_NS:  # else racy: hash it again next time
                size, mtime_ns, ino, ctime_ns = _signature(before)
                new = {"size": size, "mtime_ns": mtime_ns, "ino": ino, "ctime_ns": ctime_ns, "sha256": digest}
                memory[key] = new
                self._updated[key] = new
        return digest

    def files(self, paths: list[Path], label: str) -> dict[str, str]:
        """sha256 per file, keyed by `str(path)` as given; `label` names the folder, glob or source in errors."""
        out: dict[str, str] = {}
        for p in paths:
            try:
                out[str(p)] = self.file(p)
            except ContentError as e:
                raise ContentError(f"{label}: {e}") from e
        return out

    def save(self) -> None:
        """Write the memory file atomically (tmp file, fsync, os.replace), keeping every entry already in it.

        A no-op if nothing was added or `path` is None; if the file cannot be written (read-only folder,
        full disk) it is skipped silently, since hashing must never fail because the memory can't be saved.
        """
        if self.path is None:
            return
        with self._lock:
            if not self._updated:
                return
            updated = dict(self._updated)
        # Re-read so entries another process saved since our read survive; ours win for the files we hashed.
        merged = _read_memory(self.path)
        merged.update(updated)
        body = json.dumps({"format": FORMAT, "files": merged}, sort_keys=True, separators=(",", ":"))
        tmp = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            tmp = None
        except OSError as e:
            log.info("digest memory %s not saved: %s", self.path, e)
            return
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        with self._lock:
            for k, v in updated.items():
                if self._updated.get(k) is v:  # not replaced by another thread meanwhile
                    del self._updated[k]


def _stat(path: Path) -> os.stat_result:
    try:
        return os.stat(path)
    except FileNotFoundError:
        raise ContentError(f"{path}: not found") from None
    except OSError as e:
        raise ContentError(f"{path}: cannot read it ({e.strerror or e})") from e


def _signature(st: os.stat_result) -> tuple[int, int, int, int]:
    """What must be unchanged to trust a remembered digest; ctime catches a rewrite that restored the mtime."""
    return st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns


def check_listing_unchanged(before: list[Path], after: list[Path], label: str) -> None:
    """Raise ContentError if a folder's listing after hashing differs from the one before (files added or removed)."""
    old, new = {str(p) for p in before}, {str(p) for p in after}
    if old == new:
        return
    changes = [f"added {p}" for p in sorted(new - old)] + [f"removed {p}" for p in sorted(old - new)]
    example = changes[0] + (f" and {len(changes) - 1} more" if len(changes) > 1 else "")
    raise ContentError(f"{label}: files were added or removed while it was being hashed ({example})")


def check_unchanged(planned: dict[str, str], now: dict[str, str], what: str) -> None:
    """Raise ContentError when the files a stage reads are not those its key hashed when the run was planned.

    Hours can pass between planning and a fine-tune's start: a file edited meanwhile must not be
    computed under the key of its old content.
    """
    changed = sorted(k for k in set(planned) | set(now) if planned.get(k) != now.get(k))
    if changed:
        raise ContentError(f"{what}: {changed[0]} changed since this run was planned; run again")


def model_dir_digests(model_dir: Path, digests: DigestCache, key: str) -> dict[str, str]:
    """sha256 of each file of a model directory a stage starts from, by relative path (its content, not where it
    is); ContentError naming config key `key` when it is not a model directory."""
    from gpt.model.config import read_model_config

    try:
        read_model_config(model_dir)  # a model directory, not any folder: its config.json is a model's
    except ValueError as e:
        raise ContentError(f"config key '{key}': {e}") from None
    files = sorted(p for p in model_dir.rglob("*") if p.is_file())
    return {
        str(p.relative_to(model_dir)): d
        for p, d in zip(files, digests.files(files, str(model_dir)).values(), strict=True)
    }
