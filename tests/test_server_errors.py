"""A tracking or Prefect server that stops answering gives one line naming it (tasks/server_errors.py),
from the real clients' own errors against a port where nothing listens."""

from __future__ import annotations

import socket

import pytest

from tasks.stage import user_error


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: nothing listens there


def test_mlflow_server_gone_is_one_line_naming_it(monkeypatch):
    from mlflow.tracking import MlflowClient

    uri = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(Exception) as caught:
        MlflowClient(uri).search_experiments()
    assert user_error(caught.value) == (
        f"the MLflow tracking server {uri} (MLFLOW_TRACKING_URI) stopped answering; "
        "rerun once it is back: finished stages are kept"
    )


def test_prefect_server_gone_is_one_line_naming_it(monkeypatch):
    import httpx

    api = f"http://user:s3cret@127.0.0.1:{_closed_port()}/api"
    monkeypatch.setenv("PREFECT_API_URL", api)
    with pytest.raises(httpx.TransportError) as caught:
        httpx.get(api.replace("user:s3cret@", "") + "/health")
    line = user_error(RuntimeError("the flow crashed")) or ""
    assert line == ""  # anything else stays a bug with its traceback
    line = user_error(caught.value) or ""
    assert line.startswith("the Prefect server http://user:") and "(PREFECT_API_URL) stopped answering" in line
    assert "s3cret" not in line  # credentials never reach the terminal
