"""Content-addressed stage directories: key, status, atomic commit, manifest, verification.

A stage (one node of the plan: its definition, typed section and upstream stages) writes into
`<artifacts>/<kind>/<key>.partial/` (a fixed name, so an interrupted training stage finds its
checkpoints again) and is renamed to `<artifacts>/<kind>/<key>/` with a `manifest.json` once
complete. Its key hashes its kind, code version, hashed section and the *output digests* of its
upstream stages (see tasks/definition.py), so it is known once those are done. A directory counts as
done only when its manifest is there and every file it lists is present with its recorded size;
`verify(deep=True)` also re-hashes them (sha256), which `gptflow stages --verify` does and a
computing stage does for its inputs. Sizes are checked always because a stat is free; hashing a
multi-GB checkpoint on every cached rerun is not.

A finished directory is replaced only at commit, by a complete new one (a forced rebuild), and only
once no run reading it holds its `readers` lock. After each commit `<kind>/latest-<name>.json`
records the key and inputs of the last completed run of that stage name, so `gptflow stages` can say
*why* a stage is stale.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import threading
import time
import zipfile
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpt.config.experiment import flatten, hash_json
from gpt.config.fields import ConfigError
from gpt.config.secrets import redact_data, redact_text
from gpt.data.shards import ShardError
from gpt.data.sources import SourceError
from tasks.content import ContentError
from tasks.definition import STOP_FILE, StageDef, key_view
from tasks.errors import KeyPending, StageError
from tasks.locks import file_lock
from tasks.server_errors import unreachable_server

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    from tasks.variants import Variant

MANIFEST = "manifest.json"
PARTIAL_RECORD = ".gptflow-partial.json"  # what a partial directory is for (kind, key, version); gc reads it


# Output digests of finished directories, by (manifest path, its stat): a key is asked for often.
_output_digests: dict[tuple[str, int, int, int], str] = {}


@dataclass(eq=False)
class Stage:
    """One node of the pipeline plan: its definition, its section, the stages it reads, where it lives."""

    name: str  # e.g. "pretrain", "finetune[sst2]"
    definition: StageDef[Any]  # its compute takes `section`
    section: DataclassInstance  # the typed section: all its compute reads (see tasks/definition.py)
    upstream_stages: list[Stage]
    artifacts_root: Path
    variant: Variant | None = None  # the task variant, for per-task stages
    pinned: dict[str, str] | None = None  # upstream output digests this run computes from (see `pin`)

    @property
    def kind(self) -> str:
        return self.definition.kind

    @property
    def version(self) -> str:
        return self.definition.version

    @property
    def upstream(self) -> list[str]:
        """Names of the stages it reads."""
        return [u.name for u in self.upstream_stages]

    def section_record(self) -> Any:
        """The hashed part of the section, as JSON-able data."""
        return key_view(self.section)

    def section_digest(self) -> str:
        """Hash of what this stage itself contributes to its key: kind, code version, hashed section."""
        return hash_json({"kind": self.kind, "version": self.version, "section": self.section_record()})

    def pin(self) -> str:
        """Fix the key for this run from the upstream outputs on disk now, and return it.

        A stage's directory, lock, manifest and MLflow tag must all name one key, even if another
        run rebuilds an upstream stage meanwhile; the compute checks (under the inputs' reader locks)
        that the inputs are still the pinned ones (`inputs_changed`).
        """
        self.pinned = None
        self.pinned = self.upstream_outputs()
        return self.key

    def inputs_changed(self) -> list[str]:
        """Upstream stages whose outputs on disk are no longer the ones this stage's key was pinned to."""
        if self.pinned is None:
            return []
        now = {u.name: u.output_digest() for u in self.upstream_stages if u.name in self.pinned}
        return [name for name, digest in self.pinned.items() if now.get(name) != digest]

    def upstream_outputs(self) -> dict[str, str]:
        """Each upstream stage's output digest (the pinned ones once pinned); raises KeyPending when one is not done."""
        if self.pinned is not None:
            return dict(self.pinned)
        if not self.definition.keyed_on_inputs:
            return {}
        out = {}
        for up in self.upstream_stages:
            digest = up.output_digest()
            if digest is None:
                raise KeyPending(f"stage '{self.name}' waits for '{up.name}' (its key hashes that stage's outputs)")
            out[up.name] = digest
        return out

    @property
    def key(self) -> str:
        """The content key: hash of kind, version, hashed section and the upstream stages' output digests."""
        return hash_json({"section": self.section_digest(), "upstream": self.upstream_outputs()})

    def key_or_none(self) -> str | None:
        """The key, or None while an upstream stage is not done."""
        try:
            return self.key
        except KeyPending:
            return None

    def output_digest(self) -> str | None:
        """Digest of the files downstream stages read (from the manifest), or None when not done."""
        key = self.key_or_none()
        if key is None:
            return None
        path = self.dir / MANIFEST
        try:  # the manifest records the digest; a file damaged since is caught before a stage reads it
            st = path.stat()
            memo = (str(path), st.st_mtime_ns, st.st_size, st.st_ino)
            if memo not in _output_digests:
                manifest = json.loads(path.read_text())
                _output_digests[memo] = manifest.get("outputs") or outputs_digest(manifest["files"], ("**",))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):  # missing or unreadable: not done
            return None
        return _output_digests[memo]

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
    def readers_path(self) -> Path:
        """The flock file runs reading this stage hold shared, so a rebuild never swaps it under them."""
        return self.artifacts_root / self.kind / f"{self.key}.readers"

    @property
    def latest_path(self) -> Path:
        """Record of the last completed run of this stage name (any key)."""
        return self.artifacts_root / self.kind / f"latest-{self.name}.json"

    def inputs_record(self) -> dict[str, Any]:
        """What the key is made of, in a form that can be compared field by field."""
        return {
            "key": self.key,
            "version": self.version,
            "section": self.section_record(),
            "upstream": {u.name: u.key for u in self.upstream_stages},
            "upstream_outputs": self.upstream_outputs(),
        }

    def verify(self, deep: bool = False) -> list[str]:
        """Problems with the completed directory (see `verify_dir`)."""
        return verify_dir(self.dir, deep)

    def is_done(self) -> bool:
        """Whether a complete, intact (by size) output for this key exists."""
        if self.key_or_none() is None:
            return False
        return (self.dir / MANIFEST).is_file() and not self.verify()

    def status(self) -> str:
        """done | corrupt | partial | to run | waiting (an upstream stage is not done) — cheap (stats only)."""
        if self.key_or_none() is None:
            return "waiting"
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

    def prepare_partial(self, fresh: bool = False) -> Path:
        """The partial directory, emptied unless it holds a training stage's checkpoints to resume from.

        Only called with the stage's lock held, so a partial directory found here was left by a
        killed run: stale for a data stage (rebuilt from scratch), resumable for a training stage
        unless `fresh` (a forced recompute starts over). A finished directory is never touched here.
        """
        if self.partial_dir.exists() and (fresh or not self.definition.resumable):
            shutil.rmtree(self.partial_dir)
        self.partial_dir.mkdir(parents=True, exist_ok=True)
        (self.partial_dir / STOP_FILE).unlink(missing_ok=True)  # a stop asked of an earlier attempt
        write_json_atomic(
            self.partial_dir / PARTIAL_RECORD, {"stage": self.name, "kind": self.kind, **self.inputs_record()}
        )
        return self.partial_dir

    def recover_replaced(self) -> bool:
        """Put back a finished copy set aside by a rebuild that died between its two renames (lock held)."""
        if self.dir.exists():
            return False
        aside = sorted(self.dir.parent.glob(f"{self.key}.replaced-*"))
        if not aside or not (aside[-1] / MANIFEST).is_file():
            return False
        os.rename(aside[-1], self.dir)
        fsync_dir(self.dir.parent)
        return True

    def set_aside_broken_checkpoints(self) -> list[Path]:
        """Move checkpoints of the partial directory that are not intact zip archives to `<key>.<name>.corrupt`.

        torch checkpoints are zip files and Lightning does not write them by rename, so a run
        killed mid-save can leave a truncated `last.ckpt`; training then resumes from the newest
        intact checkpoint (or step 0) instead of failing on unpickling. Returns the renamed files.
        """
        broken = []
        for ckpt in sorted(self.partial_dir.rglob("*.ckpt")):
            if not intact_checkpoint(ckpt):
                aside = self.partial_dir.parent / f"{self.key}.{ckpt.name}.corrupt"  # kept, out of the manifest
                os.replace(ckpt, aside)
                broken.append(aside)
        return broken


def intact_checkpoint(path: Path) -> bool:
    """Whether a torch checkpoint is a complete zip archive (every member's CRC checks): one a killed
    save or a save still in progress leaves is not."""
    try:
        with zipfile.ZipFile(path) as z:
            return z.testzip() is None
    except (zipfile.BadZipFile, OSError, EOFError):
        return False


def outputs_digest(files: dict[str, dict[str, Any]], patterns: tuple[str, ...]) -> str:
    """Digest of the manifest entries matching `patterns`: what downstream keys hash (early cutoff)."""
    chosen = {rel: rec["sha256"] for rel, rec in files.items() if any(fnmatch(rel, p) for p in patterns)}
    return hash_json(chosen)


def verify_dir(path: Path, deep: bool = False, patterns: tuple[str, ...] = ("**",)) -> list[str]:
    """Problems with a completed stage directory: missing or foreign manifest, missing files, wrong sizes,
    and with `deep` wrong sha256s (of the files matching `patterns`). The directory's name is its key, so
    a directory copied in from another config (another key) is caught too."""
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
        elif deep and any(fnmatch(rel, p) for p in patterns) and _sha256(path / rel) != rec["sha256"]:
            problems.append(f"{rel} does not match its sha256 in {MANIFEST}")
    return problems


def why_stale(stage: Stage) -> str:
    """One phrase saying what changed since the last completed run of this stage name."""
    last = stage.last_completed()
    if last is None:
        return "never completed"
    key = stage.key_or_none()
    if key is None:
        return "waits for an upstream stage"
    if last.get("key") == key:
        return "its directory was removed"
    changes = [
        f"upstream {name} changed (outputs {old[:8]} -> {digest[:8]})"
        for name, digest in stage.upstream_outputs().items()
        if (old := last.get("upstream_outputs", {}).get(name, "?")) != digest
    ]
    old_section, section = flatten(last.get("section", {})), flatten(stage.section_record())
    changed = sorted(k for k in set(old_section) | set(section) if old_section.get(k) != section.get(k))
    files = {k: m.group(2) for k in changed if (m := _FILES_FIELD.match(k))}  # key -> the file's path
    for k, path in files.items():
        what = "is new" if k not in old_section else "is gone" if k not in section else "changed"
        changes.append(f"{path} {what} since the last run")
    fields = [k for k in changed if k not in files]
    if fields:
        diffs = (f"{k}: {old_section.get(k)!r} -> {section.get(k)!r}" for k in fields)
        changes.append("config " + ", ".join(diffs))
    if last.get("version") != stage.version:
        changes.append(f"code version {last.get('version')} -> {stage.version}")
    return "; ".join(changes) or "inputs changed"


# A flattened section key of a content-digest field: `files.<path>`, `task_files.<path>`, `init_files.<name>`.
_FILES_FIELD = re.compile(r"^((?:[a-z_]+\.)*[a-z_]*files)\.(.+)$")


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
    """Write JSON so that readers see the old file or the whole new one, never part of it.

    The temporary file's name is the writer's own: two runs recording the same file at once (the
    `latest-report.json` of concurrent runs) must not rename each other's temporary away.
    """
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(redact_data(obj), indent=2, default=str))  # no credential lands in a stage dir
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def commit(
    stage: Stage, summary: dict[str, float], info: dict[str, Any], run_id: str | None, started_at: float | None = None
) -> dict[str, Any]:
    """Hash and fsync every file, write the manifest, rename the partial directory into place atomically.

    A directory already there for the key (a forced rebuild, or a corrupt copy) is replaced only
    now, after the new one is complete, and only once no run is reading it (`readers_path`).
    `started_at` (epoch seconds) is when the compute began, so the manifest holds the compute's span.
    """
    partial = stage.partial_dir
    files = {}
    for p in sorted(partial.rglob("*")):
        if p.is_file() and p.name not in (MANIFEST, PARTIAL_RECORD):  # the record goes only once it is in place
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
        "outputs": outputs_digest(files, stage.definition.outputs),
        "produced_by_run": run_id,
        "started_at": started_at,
        "completed_at": time.time(),
    }
    write_json_atomic(partial / MANIFEST, manifest)
    replaced = None
    if stage.dir.exists():
        with file_lock(stage.readers_path):  # waits for runs reading the old copy; new readers wait for the swap
            replaced = stage.dir.with_name(f"{stage.key}.replaced-{time.time_ns()}")
            os.rename(stage.dir, replaced)
            os.rename(partial, stage.dir)
    else:
        os.rename(partial, stage.dir)
    fsync_dir(stage.dir.parent)
    (stage.dir / PARTIAL_RECORD).unlink(missing_ok=True)
    if replaced is not None:
        shutil.rmtree(replaced, ignore_errors=True)  # what is left of it, `gptflow gc` lists
    write_json_atomic(stage.latest_path, stage.inputs_record())
    return manifest


# errno values that mean "the user's disk or permissions", not a bug in gptflow.
_USER_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def user_error(e: BaseException) -> str | None:
    """The one-line message for an error the user can fix (bad config or data, full or read-only disk), else None.

    Anything else is a bug and keeps its traceback.
    """
    if isinstance(e, ConfigError | SourceError | StageError | ShardError | ContentError):
        return redact_text(str(e))  # the line goes to the terminal, MLflow and Prefect: no credentials
    if isinstance(e, OSError) and e.errno in _USER_ERRNOS:
        where = f": {e.filename}" if e.filename else ""
        return redact_text(f"{e.strerror or e}{where}")
    return unreachable_server(e)
