"""The temporary Prefect API for one `gptflow` process, tied to that process's life.

Prefect starts the same server (uvicorn over `prefect.server.api.server:create_app`, SQLite in
PREFECT_HOME) by itself when PREFECT_API_URL is unset, but as a plain child process: when the
CLI is SIGKILLed the server lives on as an orphan (and several of them slowed later runs). Here it
is started with PR_SET_PDEATHSIG on Linux, so the kernel stops it when its parent dies, however it
dies; elsewhere it is stopped at exit only.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from tasks.child_process import die_with_parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(timeout: float) -> tuple[subprocess.Popen, str]:
    """Start the API server on a free 127.0.0.1 port and wait until /health answers; returns (process, api url)."""
    import httpx

    env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
    deadline = time.monotonic() + timeout
    while True:
        port = _free_port()
        argv = [sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app"]
        argv += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "error", "--lifespan", "on"]
        proc = subprocess.Popen(argv, env=env, preexec_fn=die_with_parent(os.getpid()))
        url = f"http://127.0.0.1:{port}/api"
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    return proc, url
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        if proc.poll() is None or time.monotonic() >= deadline:
            stop_server(proc)
            raise RuntimeError(f"the Prefect API server did not start within {timeout:.0f} s")
        # it exited early (port taken between choosing and binding): try another port


def stop_server(proc: subprocess.Popen) -> None:
    """Terminate the server, killing it if it does not stop within 5 s."""
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def prefect_api() -> Iterator[None]:
    """Point Prefect at a temporary API server owned by this process, unless PREFECT_API_URL is set."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    if PREFECT_API_URL.value():
        yield
        return

    from tasks.locks import file_lock

    timeout = float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120"))
    with file_lock(PREFECT_HOME.value() / "server-start.lock"):  # one database migration at a time
        proc, url = start_server(timeout)
    try:
        with temporary_settings({PREFECT_API_URL: url}):
            try:
                yield
            finally:
                drain_clients()
    finally:
        stop_server(proc)


def drain_clients() -> None:
    """Send the logs and events Prefect still holds while the server is up (else: errors at exit)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        worker.drain_all(timeout=5)
