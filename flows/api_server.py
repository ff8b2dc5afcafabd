"""The temporary Prefect API for one `gptflow` process, tied to that process's life.

Prefect starts the same server (uvicorn over `prefect.server.api.server:create_app`, SQLite in
PREFECT_HOME) by itself when PREFECT_API_URL is unset, but as a plain child process: when the
CLI is SIGKILLed the server lives on as an orphan (and several of them slowed later runs). Here it
is started with PR_SET_PDEATHSIG on Linux, so the kernel stops it when its parent dies, however it
dies; elsewhere it is stopped at exit only.

Starting it is most of a short run's time (seconds on 2 cores), so: `gptflow run` launches the server
first and checks and plans the run while it boots (`launched_api`, then `prefect_api(server)` waits
for it); a database already at Prefect's newest migration is not migrated again
(flows/prefect_app.py); and at the end the server is sent SIGTERM without this process waiting for
its shutdown (it has received everything by then: `drain_clients` runs first).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from tasks.child_process import die_with_parent

STARTUP_TIMEOUT = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def startup_timeout() -> float:
    """Seconds to wait for the server to answer: PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, else 120."""
    return float(os.environ.get(STARTUP_TIMEOUT, "120"))


class ApiServer:
    """A Prefect API server process on a free 127.0.0.1 port: launched at construction, waited for later.

    Until it answers it holds `<home>/server-start.lock` (when `home` is given), so two servers of one
    Prefect home never migrate its database at once. Launch it from the thread that outlives it (the
    main thread): PR_SET_PDEATHSIG fires when the launching thread ends.
    """

    def __init__(self, timeout: float, home: Path | None = None):
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self._lock = ExitStack()
        if home is not None:
            from tasks.locks import file_lock

            self._lock.enter_context(file_lock(home / "server-start.lock"))  # one database migration at a time
        self.url = ""
        self.stopped = False
        self.proc = self._spawn()

    def _spawn(self) -> subprocess.Popen:
        env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
        port = _free_port()
        argv = [sys.executable, "-m", "uvicorn", "--factory", "flows.prefect_app:create_app"]
        argv += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "error", "--lifespan", "on"]
        self.url = f"http://127.0.0.1:{port}/api"
        return subprocess.Popen(argv, env=env, preexec_fn=die_with_parent(os.getpid()))

    def wait_ready(self) -> str:
        """Block until /health answers and return the API URL; RuntimeError (server stopped) after the timeout."""
        import httpx

        try:
            while True:
                while time.monotonic() < self.deadline and self.proc.poll() is None:
                    try:
                        if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                            return self.url
                    except httpx.HTTPError:
                        pass
                    time.sleep(0.1)
                if self.proc.poll() is None or time.monotonic() >= self.deadline:
                    self.stop()
                    raise RuntimeError(f"the Prefect API server did not start within {self.timeout:.0f} s")
                # it exited early (port taken between choosing and binding): try another port
                self.proc = self._spawn()
        finally:
            self._lock.close()

    def stop(self, wait: bool = True) -> None:
        """SIGTERM the server once; with `wait`, also wait for it (SIGKILL after 5 s).

        Without `wait` it shuts down on its own: a second SIGTERM (PDEATHSIG when this process ends) would
        cut its graceful shutdown short, so it is sent only one here."""
        self._lock.close()
        if self.stopped:
            return
        self.stopped = True
        if wait:
            stop_server(self.proc)
        elif self.proc.poll() is None:
            self.proc.terminate()


def start_server(timeout: float) -> tuple[subprocess.Popen, str]:
    """Start the API server on a free 127.0.0.1 port and wait until /health answers; returns (process, api url)."""
    server = ApiServer(timeout)
    return server.proc, server.wait_ready()


def stop_server(proc: subprocess.Popen) -> None:
    """Terminate the server, killing it if it does not stop within 5 s."""
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def launched_api() -> Iterator[ApiServer | None]:
    """Launch the temporary API server now, so it boots while the caller checks and plans; hand it to
    `prefect_api`. None when PREFECT_API_URL is in the environment (or the Prefect home cannot be written:
    the caller's own checks say so in one line). A server nobody used is stopped at the end.

    PREFECT_HOME comes from the environment (Workspace.configure_environment sets it): importing
    Prefect to read its settings would cost the second this saves.
    """
    if os.environ.get("PREFECT_API_URL"):
        yield None
        return
    try:
        server = ApiServer(startup_timeout(), Path(os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser())
    except OSError:
        yield None
        return
    try:
        yield server
    finally:
        server.stop(wait=False)


@contextmanager
def prefect_api(server: ApiServer | None = None) -> Iterator[None]:
    """Point Prefect at a temporary API server owned by this process, unless PREFECT_API_URL is set.

    `server`: one `launched_api` started earlier; without it one is started here. The server is sent
    SIGTERM at the end, once Prefect's clients have sent it everything; nobody waits for its shutdown.
    """
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, PREFECT_HOME, temporary_settings

    if PREFECT_API_URL.value():
        if server is not None:  # a Prefect profile or settings file names an API after all
            server.stop(wait=False)
        yield
        return
    if server is None:
        server = ApiServer(startup_timeout(), PREFECT_HOME.value())
    url = server.wait_ready()
    # No flow-run heartbeats on an API that ends with this process: nothing could ever act on a missing one,
    # and the flow's end waits up to a second for the heartbeat thread's sleep.
    try:
        with temporary_settings({PREFECT_API_URL: url, PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            try:
                yield
            finally:
                drain_clients()
    finally:
        server.stop(wait=False)


def drain_clients() -> None:
    """Send the logs and events Prefect still holds while the server is up (else: errors at exit)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        worker.drain_all(timeout=5)
