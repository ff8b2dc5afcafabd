"""`mlflow server` for the team stack: PostgreSQL backend store, artifacts proxied by the server.

Clients get `mlflow-artifacts:/` URIs and upload and download through the server, so they need
no access to the artifact destination themselves (a local folder by default, or any URL MLflow's
artifact repositories take, e.g. s3://bucket/prefix). One uvicorn worker; MLflow's job runner
(GenAI jobs, seven huey consumers) is off unless MLFLOW_SERVER_ENABLE_JOB_EXECUTION is set:
gptflow uses none of it, and it costs gigabytes of memory.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path


def executable(name: str) -> str:
    """`name`'s console script beside this interpreter (the venv's), else on PATH."""
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else shutil.which(name) or name


def argv(host: str, port: int, artifacts_destination: str) -> list[str]:
    """The `mlflow server` command line (no secrets: the backend store URI goes in the environment)."""
    return [
        executable("mlflow"),
        "server",
        "--serve-artifacts",
        "--artifacts-destination",
        artifacts_destination,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]


def env(backend_store_uri: str) -> dict[str, str]:
    """The server's environment: the store URI with its password (only the owner can read /proc/PID/environ)."""
    out = {**os.environ, "MLFLOW_BACKEND_STORE_URI": backend_store_uri}
    out.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    out.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    out.setdefault("DO_NOT_TRACK", "true")
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):  # a client setting, not the server's
        out.pop(key, None)
    return out


def health_url(base: str) -> str:
    return f"{base}/health"
