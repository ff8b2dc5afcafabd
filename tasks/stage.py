"""Content-addressed stage directories: key, atomic commit, manifest.

A stage writes into `<artifacts>/<kind>/<key>.partial/` (a fixed name, so an interrupted training
stage finds its checkpoints again) and is renamed to `<artifacts>/<kind>/<key>/` with a
`manifest.json` once complete. A directory with a manifest means done; reruns skip it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpt.config import hash_json
from gpt.sources import sha256_file

MANIFEST = "manifest.json"


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

    def is_done(self) -> bool:
        """Whether a complete output for this key exists."""
        return (self.dir / MANIFEST).is_file()

    def manifest(self) -> dict[str, Any]:
        """The manifest of the completed directory."""
        return json.loads((self.dir / MANIFEST).read_text())

    def clear(self) -> None:
        """Delete outputs for this key (for --force), including an interrupted partial directory."""
        for d in (self.dir, self.partial_dir):
            if d.exists():
                shutil.rmtree(d)


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


def _fsync_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())


def commit(stage: Stage, summary: dict[str, float], info: dict[str, Any], run_id: str | None) -> dict[str, Any]:
    """Write the manifest into the partial directory, fsync it, and rename it into place atomically."""
    partial = stage.partial_dir
    files = {
        str(p.relative_to(partial)): sha256_file(p)
        for p in sorted(partial.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    manifest = {
        "stage": stage.name,
        "kind": stage.kind,
        "key": stage.key,
        "version": stage.version,
        "section": stage.section,
        "upstream": dict(zip(stage.upstream, stage.upstream_keys, strict=True)),
        "summary": summary,
        "info": info,
        "files": files,
        "produced_by_run": run_id,
        "completed_at": time.time(),
    }
    tmp = partial / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, default=str))
    os.replace(tmp, partial / MANIFEST)
    _fsync_tree(partial)
    if stage.dir.exists():  # a stale copy without a manifest
        shutil.rmtree(stage.dir)
    os.rename(partial, stage.dir)
    return manifest
