"""One line, naming the server, for a tracking or orchestration server that stopped answering.

A team runs against an MLflow server and a Prefect server; when one goes away mid-run, the error
surfaces deep inside MLflow's REST client (an MlflowException wrapping urllib3's retries) or
Prefect's httpx client. Neither is a bug of gptflow, and the fix is the user's (bring the server
back, rerun: finished stages are kept), so it gets one line instead of a traceback.
"""

from __future__ import annotations

import os

from gpt.config.secrets import redact_text

# Fragments of the messages requests/urllib3/httpx give when nothing answers at the address.
_UNREACHABLE = (
    "Max retries exceeded",
    "Connection refused",
    "Failed to establish a new connection",
    "All connection attempts failed",
)


def _chain(e: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while e is not None and e not in seen:
        seen.append(e)
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    return seen


def unreachable_server(e: BaseException) -> str | None:
    """The one-line message when `e` (or an error it was raised from) says MLflow's or Prefect's server
    does not answer; None for anything else."""
    import httpx

    for err in _chain(e):
        text = str(err)
        if isinstance(err, httpx.TransportError) or (
            type(err).__name__ in ("MlflowException", "ConnectionError") and any(f in text for f in _UNREACHABLE)
        ):
            return redact_text(_which(text, err) + "; rerun once it is back: finished stages are kept")
    return None


def _which(text: str, err: BaseException) -> str:
    """Name the server from the environment, matching the address in the message when both are set."""
    tracking, prefect = os.environ.get("MLFLOW_TRACKING_URI", ""), os.environ.get("PREFECT_API_URL", "")
    request = getattr(err, "request", None)
    address = str(request.url) if request is not None and hasattr(request, "url") else text
    if prefect and _host(prefect) in address:
        return f"the Prefect server {prefect} (PREFECT_API_URL) stopped answering"
    if tracking and _host(tracking) in address:
        return f"the MLflow tracking server {tracking} (MLFLOW_TRACKING_URI) stopped answering"
    return f"a server stopped answering: {text.splitlines()[0][:200]}"


def _host(url: str) -> str:
    """`host:port` of a URL (what error messages quote)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)
