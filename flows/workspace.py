"""The workspace: one directory holding the MLflow store, Prefect's home and all stage artifacts."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path


def private_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/gptflow` (or ~/.cache/gptflow), readable and writable by this user only."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gptflow"
    with contextlib.suppress(OSError):
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        root.chmod(0o700)
    return root


def origin(given: str | None) -> str:
    """Where the workspace path came from, for messages: `--workspace`, GPTFLOW_HOME or the default."""
    if given:
        return "--workspace"
    return "GPTFLOW_HOME" if os.environ.get("GPTFLOW_HOME") else "the default, ./workspace"


def check_sqlite(path: Path) -> None:
    """ConfigError naming `path` when it exists but is not a SQLite database (opened read-only: never created)."""
    import sqlite3

    from gpt.config.fields import ConfigError

    if not path.exists():
        return  # MLflow creates it
    try:
        with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=30)) as db:
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as e:
        if "locked" in str(e):  # busy, not broken: MLflow waits for it too
            return
        raise ConfigError(
            f"MLflow store {path} is not a usable SQLite database ({e}); move it aside to start a new one, "
            "or restore it from a backup"
        ) from None


@dataclass(frozen=True)
class Workspace:
    """Paths and tracking URIs of a workspace; real servers win when their env vars are set."""

    root: Path

    @classmethod
    def resolve(cls, path: str | None) -> Workspace:
        """`--workspace`, else `GPTFLOW_HOME`, else `./workspace`."""
        from tasks.errors import StageError

        chosen = path or os.environ.get("GPTFLOW_HOME") or "workspace"
        try:
            return cls(Path(chosen).expanduser().resolve())
        except RuntimeError as e:  # `~user/...` for an unknown user, or no home directory
            raise StageError(f"workspace {chosen!r} ({origin(path)}) cannot be resolved: {e}") from None

    def check_directory(self, given: str | None) -> None:
        """One line, for every command, when the workspace (or a folder above it) is a file: before any
        command reads it, so none fails deep inside MLflow or the planner. `given` is `--workspace`."""
        from tasks.errors import StageError

        for p in (self.root, *self.root.parents):
            if p.exists():
                if not p.is_dir():
                    where = "" if p == self.root else f": {p} is a file"
                    raise StageError(
                        f"workspace {self.root} ({origin(given)}) is not a directory{where}; "
                        "pass --workspace DIR or set GPTFLOW_HOME to a directory"
                    )
                return

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def digests(self) -> Path:
        """Remembered sha256 of local input files (by path, size, mtime, inode), so unchanged ones are not re-read."""
        from tasks.content import DIGESTS_FILE

        return self.root / DIGESTS_FILE

    @property
    def downloads(self) -> Path:
        return self.root / "downloads"

    @property
    def tracking_uri(self) -> str:
        return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{self.root / 'mlflow.db'}"

    @property
    def store(self) -> str | None:
        """The shared store URL (`--store`, else GPTFLOW_STORE), normalized; None when unset.

        Not part of the experiment config: where stages are kept must not change their keys.
        """
        from tasks.remote_store import store_url_from_env

        return store_url_from_env()

    @property
    def artifact_location(self) -> str | None:
        """Artifact root for new experiments: `<store>/mlartifacts` with a store, else the workspace's
        `mlartifacts/`; a remote tracking server decides its own. A store URL carrying credentials is not
        used: MLflow keeps an experiment's artifact root in its database, in the clear."""
        from gpt.config.secrets import has_credentials

        if os.environ.get("MLFLOW_TRACKING_URI"):
            return None
        store = self.store
        return f"{store}/mlartifacts" if store and not has_credentials(store) else (self.root / "mlartifacts").as_uri()

    def check_writable(self) -> None:
        """One line instead of a traceback deep inside a stage when the workspace cannot be written."""
        import tempfile

        from tasks.stage import StageError

        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.root):
                pass
        except OSError as e:
            raise StageError(
                f"workspace {self.root} is not writable ({e.strerror}); pass --workspace DIR or set GPTFLOW_HOME"
            ) from None

    def check_tracking(self) -> None:
        """Fail fast, with one line, when MLFLOW_TRACKING_URI names a server that does not answer,
        or the workspace's `mlflow.db` is not a SQLite database (MLflow would fail with a traceback).

        MLflow's own client would retry for minutes before giving up.
        """
        uri = self.tracking_uri
        if uri.startswith("sqlite:///"):
            check_sqlite(Path(uri.removeprefix("sqlite:///")))
            return
        if not uri.startswith(("http://", "https://")):
            return
        import httpx

        from gpt.config.fields import ConfigError

        try:
            httpx.get(uri.rstrip("/") + "/health", timeout=5).raise_for_status()
        except httpx.HTTPError as e:
            raise ConfigError(f"MLflow tracking server {uri} (MLFLOW_TRACKING_URI) is unreachable: {e}") from None

    def check_store(self) -> None:
        """Fail fast, with one line naming --store/GPTFLOW_STORE, when the store is unusable: unknown
        protocol, missing fsspec backend (e.g. s3fs), unreachable or not writable; and when MLflow
        cannot use `<store>/mlartifacts` as its artifact store."""
        url = self.store
        if url is None:
            return
        from gpt.config.fields import ConfigError
        from tasks.remote_store import RemoteStore, StoreError

        try:
            RemoteStore(url).check()
        except StoreError as e:
            raise ConfigError(f"--store / GPTFLOW_STORE: {e}") from None
        location = self.artifact_location
        if location is None:
            return
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        try:
            get_artifact_repository(location).list_artifacts()
        except Exception as e:  # each artifact repository raises its own types (MlflowException, botocore, ...)
            raise ConfigError(
                f"--store / GPTFLOW_STORE: MLflow cannot use {location} as its artifact store: {type(e).__name__}: {e}"
            ) from None

    def configure_environment(self) -> None:
        """Keep Prefect, MLflow and torch state inside the workspace, quiet and offline-friendly.

        Must run before Prefect is imported. Values already set by the user are kept.
        """
        with contextlib.suppress(OSError):  # read-only is fine for reading commands; `run` checks it
            self.root.mkdir(parents=True, exist_ok=True)
        defaults = {
            "PREFECT_HOME": str(self.root / "prefect"),
            "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(self.root / "prefect" / "results"),
            # Results are cloudpickle records: gptflow's cache is the stage manifest, so none is written or read.
            "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "false",
            # The embedded API server takes ~27 s to start on 2 cores; the default limit is 20 s.
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "true",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            # Inductor's compile cache is read back with pickle: it lives in a private per-user folder,
            # never in the workspace, which a team may share (anyone who can write it could run code).
            "TORCHINDUCTOR_CACHE_DIR": str(private_cache_dir() / "torchinductor"),
        }
        from gpt.config.secrets import has_credentials

        if has_credentials(os.environ.get("MLFLOW_TRACKING_URI", "")):  # MLflow prints run URLs with them
            defaults["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
        for key, value in defaults.items():
            os.environ.setdefault(key, value)
