"""A durable, shared copy of the workspace's stage directories in any fsspec store.

The local workspace stays the working copy (training reads local files and memory-maps token
shards); the store (`gptflow run --store URL` or `GPTFLOW_STORE`: `file:///shared/dir`,
`s3://bucket/prefix`, any URL fsspec knows) is where finished stages are shared between machines.
A committed stage `<artifacts>/<kind>/<key>/` is uploaded to `<store>/artifacts/<kind>/<key>/`,
its `manifest.json` last (written under a temporary name and moved into place), so a reader that
sees the manifest sees a complete stage. A stage missing locally but present in the store is
downloaded next to its final place, every file is checked against the manifest's sha256, and it
is renamed into place only then: nothing unverified ever looks done.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path, PurePosixPath
from typing import Any

from tasks.stage import MANIFEST, Stage, StageError, fsync_dir, verify_dir, write_json_atomic

STORE_ENV = "GPTFLOW_STORE"
PROBE = ".gptflow-store-probe"
# Object stores have no directories, and their `makedirs` creates a missing bucket: a typo in the
# bucket name must fail, not make a new bucket. Every other filesystem gets its directories made.
OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oci", "oss"})


class StoreError(StageError):
    """The store cannot be used or holds a bad copy of a stage; the message names the URL and the fix."""


def normalize_url(url: str) -> str:
    """A store URL without a trailing slash; a plain local path becomes an absolute `file://` URL
    (the form MLflow accepts as an artifact location too)."""
    url = url.strip()
    if "://" not in url:
        try:
            return Path(url).expanduser().resolve().as_uri()
        except RuntimeError as e:  # `~user/...` for an unknown user, or no home directory
            raise StoreError(
                f"--store / {STORE_ENV}: cannot resolve {url!r} ({e}); give an absolute path or a URL "
                f"such as file:///shared/dir"
            ) from None
    return url.rstrip("/")


def store_url_from_env() -> str | None:
    """The store URL that `--store` or GPTFLOW_STORE set for this process, normalized; None when unset."""
    url = os.environ.get(STORE_ENV, "").strip()
    return normalize_url(url) if url else None


def _safe_relpath(rel: str) -> bool:
    """Whether a manifest entry stays inside its stage directory (a manifest from a store is input)."""
    p = PurePosixPath(rel)
    return bool(rel) and not p.is_absolute() and ".." not in p.parts


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


class RemoteStore:
    """One fsspec store holding stage directories under `<url>/artifacts/<kind>/<key>/`."""

    def __init__(self, url: str):
        import fsspec

        self.url = normalize_url(url)
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.url)
        except (ValueError, ImportError) as e:  # unknown protocol; a known one whose package is missing
            raise StoreError(f"cannot open store {self.url}: {e}") from None
        self.root = self.root.rstrip("/")
        protocols = {self.fs.protocol} if isinstance(self.fs.protocol, str) else set(self.fs.protocol)
        self.has_dirs = not protocols & OBJECT_STORES

    @classmethod
    def from_env(cls) -> RemoteStore | None:
        """The store of this process (`--store` / GPTFLOW_STORE), or None when none is set."""
        url = store_url_from_env()
        return cls(url) if url else None

    def stage_url(self, stage: Stage) -> str:
        """Where a stage directory lives in the store, as a URL for messages."""
        return f"{self.url}/artifacts/{stage.kind}/{stage.key}"

    def _path(self, stage: Stage, rel: str = "") -> str:
        base = f"{self.root}/artifacts/{stage.kind}/{stage.key}"
        return f"{base}/{rel}" if rel else base

    def check(self) -> None:
        """Fail fast when the store cannot be written (unreachable, no such bucket, no permission):
        write and delete a probe file under the store's root."""
        probe = f"{self.root}/{PROBE}"
        try:
            if self.has_dirs:
                self.fs.makedirs(self.root, exist_ok=True)
            self.fs.pipe_file(probe, b"gptflow")
            self.fs.rm_file(probe)
        except Exception as e:  # fsspec backends raise their own types (OSError, botocore, aiohttp, ...)
            raise StoreError(f"store {self.url} is not writable: {type(e).__name__}: {e}") from None

    def has(self, stage: Stage) -> bool:
        """Whether the store holds a complete copy of the stage (its manifest is there)."""
        path = self._path(stage, MANIFEST)
        self.fs.invalidate_cache(self._path(stage))  # another machine may have uploaded it meanwhile
        return self.fs.exists(path)

    def push(self, stage: Stage, overwrite: bool = False) -> bool:
        """Upload a committed stage directory, its manifest last; False when the store already had it.

        `overwrite` (a forced recompute) replaces the store's copy: its manifest is deleted first,
        so no reader pairs the old manifest with new files.
        """
        exists = self.has(stage)
        if exists and not overwrite:
            return False
        rels = sorted(stage.manifest()["files"])
        try:
            if exists:
                self.fs.rm_file(self._path(stage, MANIFEST))
            if self.has_dirs:
                for parent in sorted({str(PurePosixPath(self._path(stage, rel)).parent) for rel in rels}):
                    self.fs.makedirs(parent, exist_ok=True)
                self.fs.makedirs(self._path(stage), exist_ok=True)
            if rels:
                self.fs.put([str(stage.dir / rel) for rel in rels], [self._path(stage, rel) for rel in rels])
            tmp = self._path(stage, MANIFEST + ".tmp")
            self.fs.put_file(str(stage.dir / MANIFEST), tmp)
            self.fs.mv(tmp, self._path(stage, MANIFEST))
        except Exception as e:
            raise StoreError(
                f"stage '{stage.name}' is done locally but could not be uploaded to {self.stage_url(stage)}: "
                f"{type(e).__name__}: {e}; rerun to upload it"
            ) from None
        return True

    def pull(self, stage: Stage) -> bool:
        """Download the stage from the store and commit it locally if the store has it; False when not.

        Files are fetched into `<kind>/<key>.pull/<key>/` (a fresh staging directory, so a training
        stage's partial checkpoints stay untouched until the pull has succeeded), verified against
        the manifest (key, sizes, sha256), fsynced, and renamed to the stage directory. Must be
        called with the stage's lock held and the stage not done locally.
        """
        try:
            raw = self.fs.cat_file(self._path(stage, MANIFEST))
        except FileNotFoundError:
            return False
        except Exception as e:
            raise StoreError(f"cannot read {self.stage_url(stage)}/{MANIFEST}: {type(e).__name__}: {e}") from None
        staging = stage.artifacts_root / stage.kind / f"{stage.key}.pull"
        shutil.rmtree(staging, ignore_errors=True)
        target = staging / stage.key
        try:
            problems = self._download(stage, raw, target)
        except StoreError:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if problems:
            shutil.rmtree(staging, ignore_errors=True)
            raise StoreError(
                f"stage '{stage.name}' in the store {self.stage_url(stage)} is corrupt: {problems[0]}; "
                f"recompute it and replace the store's copy with --rebuild {stage.name}"
            )
        os.rename(target, stage.dir)
        staging.rmdir()
        fsync_dir(stage.dir.parent)
        if stage.partial_dir.exists():  # a killed local run's checkpoints: superseded by the finished stage
            shutil.rmtree(stage.partial_dir)
        write_json_atomic(stage.latest_path, stage.inputs_record())
        return True

    def _download(self, stage: Stage, raw: bytes, target: Path) -> list[str]:
        """Fetch the manifest's files into `target`; returns `verify_dir`'s problems (empty: intact)."""
        try:
            manifest: dict[str, Any] = json.loads(raw)
            rels = list(manifest.get("files", {}))
        except (ValueError, AttributeError) as e:
            raise StoreError(f"{self.stage_url(stage)}/{MANIFEST} is unreadable: {e}") from None
        bad = [rel for rel in rels if not _safe_relpath(rel)]
        if bad:
            raise StoreError(f"{self.stage_url(stage)}/{MANIFEST} lists a path outside the stage: {bad[0]!r}")
        target.mkdir(parents=True)
        for parent in {(target / rel).parent for rel in rels}:
            parent.mkdir(parents=True, exist_ok=True)
        try:
            if rels:
                self.fs.get([self._path(stage, rel) for rel in rels], [str(target / rel) for rel in rels])
        except Exception as e:
            raise StoreError(
                f"cannot download stage '{stage.name}' from {self.stage_url(stage)}: {type(e).__name__}: {e}"
            ) from None
        (target / MANIFEST).write_bytes(raw)
        problems = verify_dir(target, deep=True)
        if not problems:
            for path in [target / MANIFEST, *(target / rel for rel in rels)]:
                _fsync_file(path)
            for d in sorted({p.parent for p in target.rglob("*")} | {target}):
                fsync_dir(d)
        return problems
