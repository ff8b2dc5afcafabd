"""Content-addressed stage directories: key, status, atomic commit, manifest, verification.

A stage writes into `<artifacts>/<kind>/<key>.partial/` (a fixed name, so an interrupted training
stage finds its checkpoints again) and is renamed to `<artifacts>/<kind>/<key>/` with a
`manifest.json` once complete. A directory counts as done only when its manifest is there and
every file it lists is present with its recorded size; `verify(deep=True)` also re-hashes them
(sha256), which `gptflow stages --verify` does and a computing stage does for its inputs.
Sizes are checked always because a stat is free; hashing a multi-GB checkpoint on every cached
rerun is not, and a content change that keeps the size can only come from outside gptflow.

After each commit `<kind>/latest-<name>.json` records the key and inputs of the last completed
run of that stage name, so `gptflow stages` can say *why* a stage is stale.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpt.config import ConfigError, flatten, hash_json
from gpt.shards import ShardError
from gpt.sources import SourceError

MANIFEST = "manifest.json"
# Stages whose partial directory holds checkpoints worth keeping across a killed run.
RESUMABLE = frozenset({"pretrain", "finetune"})


class StageError(RuntimeError):
    """A stage directory is unusable (corrupt, foreign, unwritable); the message names it and the fix."""


@dataclass
class Stage:
    """One node of the pipeline plan: what it hashes, what it needs, where it lives."""

    name: str  # e.g. "pretrain", "finetune[sst2]"
    kind: str  # e.g. "pretrain", "finetune"
    section: dict[str, Any]  # the config content this stage depends on
    upstream: list[str]  # names of the stages it reads
    upstream_keys: list[str]
    version: str  # bump to invalidate when a stage's code changes its output
    artifacts_root: Path
    task: str | None = None  # the benchmark, for per-task stages
    key: str = field(init=False)

    def __post_init__(self) -> None:
        self.key = hash_json(
            {"kind": self.kind, "section": self.section, "upstream": self.upstream_keys, "version": self.version}
        )

    @property
    def dir(self) -> Path:
        """The completed artifact directory."""
        return self.artifacts_root / self.kind / self.key

    @property
    def partial_dir(self) -> Path:
        """Where the stage writes until it is complete."""
        return self.artifacts_root / self.kind / f"{self.key}.partial"

    @property
    def lock_path(self) -> Path:
        """The flock file serialising processes that compute this key."""
        return self.artifacts_root / self.kind / f"{self.key}.lock"

    @property
    def latest_path(self) -> Path:
        """Record of the last completed run of this stage name (any key)."""
        return self.artifacts_root / self.kind / f"latest-{self.name}.json"

    def inputs_record(self) -> dict[str, Any]:
        """What the key is made of, in a form that can be compared field by field."""
        return {
            "key": self.key,
            "version": self.version,
            "section": self.section,
            "upstream": dict(zip(self.upstream, self.upstream_keys, strict=True)),
        }

    def verify(self, deep: bool = False) -> list[str]:
        """Problems with the completed directory (see `verify_dir`)."""
        return verify_dir(self.dir, deep)

    def is_done(self) -> bool:
        """Whether a complete, intact (by size) output for this key exists."""
        return (self.dir / MANIFEST).is_file() and not self.verify()

    def status(self) -> str:
        """done | corrupt | partial | to run — cheap (stats only)."""
        if self.dir.exists():
            return "done" if not self.verify() else "corrupt"
        return "partial" if self.partial_dir.exists() else "to run"

    def manifest(self) -> dict[str, Any]:
        """The manifest of the completed directory."""
        return json.loads((self.dir / MANIFEST).read_text())

    def last_completed(self) -> dict[str, Any] | None:
        """The inputs record of the last completed run of this stage name, if any."""
        try:
            return json.loads(self.latest_path.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def clear(self) -> None:
        """Delete outputs for this key (for --force), including an interrupted partial directory."""
        for d in (self.dir, self.partial_dir):
            if d.exists():
                shutil.rmtree(d)

    def prepare_partial(self) -> Path:
        """The partial directory, emptied unless it holds a training stage's checkpoints to resume from.

        Only called with the stage's lock held, so a partial directory found here was left by a
        killed run: stale for a data stage (rebuilt from scratch), resumable for a training stage.
        """
        if self.partial_dir.exists() and self.kind not in RESUMABLE:
            shutil.rmtree(self.partial_dir)
        self.partial_dir.mkdir(parents=True, exist_ok=True)
        return self.partial_dir

    def set_aside_broken_checkpoints(self) -> list[Path]:
        """Move checkpoints of the partial directory that are not intact zip archives to `<key>.<name>.corrupt`.

        torch checkpoints are zip files and Lightning does not write them by rename, so a run
        killed mid-save can leave a truncated `last.ckpt`; training then restarts from step 0
        instead of failing on unpickling. Returns the renamed files (the caller warns).
        """
        broken = []
        for ckpt in sorted(self.partial_dir.rglob("*.ckpt")):
            try:
                with zipfile.ZipFile(ckpt) as z:
                    intact = z.testzip() is None
            except (zipfile.BadZipFile, OSError, EOFError):
                intact = False
            if not intact:
                aside = self.partial_dir.parent / f"{self.key}.{ckpt.name}.corrupt"  # kept, out of the manifest
                os.replace(ckpt, aside)
                broken.append(aside)
        return broken


def verify_dir(path: Path, deep: bool = False) -> list[str]:
    """Problems with a completed stage directory: missing or foreign manifest, missing files, wrong sizes,
    and with `deep` wrong sha256s. The directory's name is its key, so a directory copied in from
    another config (another key) is caught too."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        return [f"no {MANIFEST}"]
    except (OSError, ValueError) as e:
        return [f"unreadable {MANIFEST}: {e}"]
    if manifest.get("key") != path.name:
        return [f"{MANIFEST} belongs to key {manifest.get('key')!r}, not {path.name} (copied from another config?)"]
    problems = []
    for rel, rec in manifest.get("files", {}).items():
        try:
            size = (path / rel).stat().st_size
        except FileNotFoundError:
            problems.append(f"{rel} is missing")
            continue
        if size != rec["bytes"]:
            problems.append(f"{rel} has {size} bytes, {MANIFEST} says {rec['bytes']}")
        elif deep and _sha256(path / rel) != rec["sha256"]:
            problems.append(f"{rel} does not match its sha256 in {MANIFEST}")
    return problems


def why_stale(stage: Stage) -> str:
    """One phrase saying what changed since the last completed run of this stage name."""
    last = stage.last_completed()
    if last is None:
        return "never completed"
    if last.get("key") == stage.key:
        return "its directory was removed"
    changes = [
        f"upstream {name} changed ({old} -> {stage_key})"
        for name, stage_key in zip(stage.upstream, stage.upstream_keys, strict=True)
        if (old := last.get("upstream", {}).get(name)) != stage_key
    ]
    old_section, section = flatten(last.get("section", {})), flatten(stage.section)
    changed_fields = sorted(k for k in set(old_section) | set(section) if old_section.get(k) != section.get(k))
    if changed_fields:
        diffs = (f"{k}: {old_section.get(k)!r} -> {section.get(k)!r}" for k in changed_fields)
        changes.append("config " + ", ".join(diffs))
    if last.get("version") != stage.version:
        changes.append(f"code version {last.get('version')} -> {stage.version}")
    return "; ".join(changes) or "inputs changed"


@dataclass
class StageContext:
    """What a stage's compute function gets: its stage, the config, upstream dirs and tracking ids."""

    stage: Stage
    cfg: Any  # ExperimentConfig
    inputs: dict[str, Path]  # upstream stage name -> completed directory
    out: Path  # the partial directory to write into
    run_id: str | None  # the stage's MLflow child run
    tracking_uri: str | None
    cache_dir: Path  # downloads shared by all stages of the workspace


@dataclass
class StageOutput:
    """What a compute function returns: summary metrics, free-form info, and files to log to MLflow."""

    summary: dict[str, float]
    info: dict[str, Any] = field(default_factory=dict)
    artifacts: list[str] = field(default_factory=list)  # paths relative to the stage dir


def _sha256(path: Path, sync: bool = False) -> str:
    """Hex sha256 of a file; with `sync`, fsync it through the same descriptor (one open per file)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
        if sync:
            os.fsync(f.fileno())
    return h.hexdigest()


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON so that readers see the old file or the whole new one, never part of it."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(obj, indent=2, default=str))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def commit(
    stage: Stage, summary: dict[str, float], info: dict[str, Any], run_id: str | None, started_at: float | None = None
) -> dict[str, Any]:
    """Hash and fsync every file, write the manifest, rename the partial directory into place atomically.

    `started_at` (epoch seconds) is when the compute began, so the manifest holds the compute's span.
    """
    partial = stage.partial_dir
    files = {}
    for p in sorted(partial.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            files[str(p.relative_to(partial))] = {"sha256": _sha256(p, sync=True), "bytes": p.stat().st_size}
    for d in sorted({p.parent for p in partial.rglob("*")} | {partial}):
        fsync_dir(d)
    manifest = {
        "stage": stage.name,
        "kind": stage.kind,
        **stage.inputs_record(),
        "summary": summary,
        "info": info,
        "files": files,
        "produced_by_run": run_id,
        "started_at": started_at,
        "completed_at": time.time(),
    }
    write_json_atomic(partial / MANIFEST, manifest)
    if stage.dir.exists():  # an unusable copy (no manifest, or corrupt and forced)
        shutil.rmtree(stage.dir)
    os.rename(partial, stage.dir)
    fsync_dir(stage.dir.parent)
    write_json_atomic(stage.latest_path, stage.inputs_record())
    return manifest


# errno values that mean "the user's disk or permissions", not a bug in gptflow.
_USER_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def user_error(e: BaseException) -> str | None:
    """The one-line message for an error the user can fix (bad config or data, full or read-only disk), else None.

    Anything else is a bug and keeps its traceback.
    """
    if isinstance(e, ConfigError | SourceError | StageError | ShardError):
        return str(e)
    if isinstance(e, OSError) and e.errno in _USER_ERRNOS:
        where = f": {e.filename}" if e.filename else ""
        return f"{e.strerror or e}{where}"
    return None
