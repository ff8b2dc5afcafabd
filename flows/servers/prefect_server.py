"""`prefect server start` for the team stack: its API database in PostgreSQL (asyncpg), its home in DIR/prefect.

Prefect migrates the database itself at start. Telemetry is off (the server would otherwise post
a heartbeat to the internet; STACK-NOTES).
"""

from __future__ import annotations

import os
from pathlib import Path

from flows.servers.mlflow_server import executable


def argv(host: str, port: int) -> list[str]:
    """The `prefect server start` command line, in the foreground (the stack detaches it)."""
    return [executable("prefect"), "server", "start", "--host", host, "--port", str(port), "--analytics-off"]


def env(database_url: str, home: Path, api_url: str) -> dict[str, str]:
    """The server's environment: the database URL with its password, PREFECT_HOME, no telemetry, and
    the API URL its UI calls (`api_url`).

    Without PREFECT_SERVER_UI_API_URL the UI calls http://127.0.0.1:4200/api whatever `--port` says,
    and every page of it fails with "Can't connect to Server API".
    """
    out = {**os.environ, "PREFECT_API_DATABASE_CONNECTION_URL": database_url, "PREFECT_HOME": str(home)}
    out["PREFECT_SERVER_UI_API_URL"] = api_url
    out["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    out.setdefault("DO_NOT_TRACK", "true")
    for key in ("PREFECT_API_URL", "PREFECT_PROFILE"):  # client settings: the server must not talk to another API
        out.pop(key, None)
    return out


def health_url(api: str) -> str:
    return f"{api}/health"
