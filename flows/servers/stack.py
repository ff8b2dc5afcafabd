"""`up`, `down` and `status` of the team stack in DIR, recorded in DIR/servers.json.

servers.json holds, per server, the process `up` started (pid, start time, boot id), its port, URL,
log and measured start time, and the environment clients export. It holds no password (that is in
DIR/postgres.password, mode 0600). It is rewritten as each server starts, so a `down` after an
interrupted `up` still finds what was started; `down` keeps it, without pids, so the next `up`
serves on the same ports when they are free (clients keep their exported URLs).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flows.servers import mlflow_server, prefect_server
from flows.servers.errors import ServersError
from flows.servers.postgres import Postgres, find_binaries, read_or_create_password, run_as_user, url
from flows.servers.procs import Proc, check_port, free_port, http_ok, log_hint, spawn, stop_session

STATE_FILE = "servers.json"
PASSWORD_FILE = "postgres.password"
APPS = ("mlflow", "prefect")
NAMES = ("postgres", *APPS)
Entry = dict[str, Any]


@dataclass
class Options:
    """What `up` was asked for: bind address, artifact destination, ports (0: free, or the previous one)."""

    host: str | None = None  # None: the previous one, else 127.0.0.1
    artifacts_destination: str | None = None
    ports: dict[str, int] = field(default_factory=dict)
    timeout: float = 300


@dataclass
class Outcome:
    """What `up` did: `started`, `already running` or `restarted` (some servers), and the state now."""

    what: str
    state: dict[str, Any]
    started: list[str]


def check_dir(directory: Path) -> Path:
    """DIR, absolute and created; one-line ServersError when it cannot be (a file in the way, read-only, ...)."""
    d = directory.expanduser().resolve()
    try:
        d.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=d):
            pass
    except OSError as e:
        raise ServersError(f"--dir {d} is not a writable directory ({e.strerror or e}); choose another") from None
    return d


def load_state(d: Path) -> dict[str, Any] | None:
    """DIR/servers.json, or None when there is none."""
    path = d / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ServersError(f"{path} is unreadable ({e}); move it aside (stop the servers it names by hand)") from None
    if not isinstance(state, dict) or not isinstance(state.get("servers"), dict):
        raise ServersError(f"{path} was not written by gptflow servers; move it aside")
    return state


def save_state(d: Path, state: dict[str, Any]) -> None:
    """Write servers.json atomically (a reader never sees half a file)."""
    state["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    tmp = d / f".{STATE_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(tmp, d / STATE_FILE)


def is_running(entry: Entry | None) -> bool:
    """Whether the process recorded in `entry` is still the one that was started."""
    proc = Proc.from_json(entry)
    return proc is not None and proc.running()


def client_host(host: str) -> str:
    """The address clients on this machine use: 127.0.0.1 for a wildcard bind, [v6] literals bracketed."""
    if host in ("", "0.0.0.0", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def export_lines(state: dict[str, Any]) -> list[str]:
    """`export NAME=VALUE` for each variable clients set to use this stack."""
    return [f"export {k}={v}" for k, v in state.get("env", {}).items()]


def _choose_port(name: str, host: str, wanted: int, previous: int | None) -> int:
    """An explicit port (checked: one line when taken), else the previous one when free, else a free one."""
    option = f"--{name}-port"
    if wanted:
        check_port(host, wanted, option)
        return wanted
    if previous:
        with contextlib.suppress(ServersError):
            check_port(host, previous, option)
            return previous
    return free_port(host)


def _postgres(d: Path, state: dict[str, Any]) -> Postgres:
    return Postgres(Path(state["bin_dir"]), d / "postgres", state.get("run_as"))


def _stop_apps(state: dict[str, Any], names: tuple[str, ...] = APPS) -> dict[str, list[int]]:
    stopped: dict[str, list[int]] = {}
    for name in names:
        entry = state["servers"].get(name) or {}
        proc = Proc.from_json(entry)
        stopped[name] = stop_session(proc) if proc is not None else []
        entry["pid"] = None
    return stopped


def _stop_postgres(d: Path, state: dict[str, Any], started_now: bool = False) -> list[int]:
    """pg_ctl stop when the recorded postmaster still runs (or this call started it: it may not be recorded yet);
    its session is signalled if that did not end it."""
    entry = state["servers"].get("postgres") or {}
    proc = Proc.from_json(entry)
    entry["pid"] = None
    if started_now:
        _postgres(d, state).stop()
    if proc is None or not proc.running():
        return []
    _postgres(d, state).stop()
    rest = stop_session(proc) if proc.running() else []
    return [proc.pid, *rest]


def down(directory: Path) -> dict[str, list[int]] | None:
    """Stop exactly what `up` started in DIR (apps first, PostgreSQL with pg_ctl last); None when nothing is recorded.

    Returns, per server, the pids signalled (empty: it was not running, or its pid now belongs to another process).
    """
    from tasks.locks import file_lock

    d = directory.expanduser().resolve()
    if load_state(d) is None:
        return None
    with file_lock(d / "servers.lock"):
        state = load_state(d)
        if state is None:
            return None
        stopped = _stop_apps(state)
        stopped["postgres"] = _stop_postgres(d, state)
        state["stopped"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        save_state(d, state)
    return stopped


def up(directory: Path, opts: Options, say: Callable[[str], None] = print) -> Outcome:
    """Start PostgreSQL, the MLflow server and the Prefect server for DIR, or report them already running.

    A stack whose servers died is restarted: only the dead servers while PostgreSQL runs, else all of them.
    Everything checkable is checked before anything starts; a server that does not come up stops
    what this call started and raises ServersError with its log's last line.
    """
    from tasks.locks import file_lock

    d = check_dir(directory)
    with file_lock(d / "servers.lock"):
        state = load_state(d) or {"servers": {}}
        servers: dict[str, Entry] = state["servers"]
        if all(is_running(servers.get(n)) for n in NAMES):
            return Outcome("already running", state, [])
        stale = any(Proc.from_json(servers.get(n)) for n in NAMES)
        if not is_running(servers.get("postgres")):  # the others lost their database: start all afresh
            _stop_apps(state)
        todo = [n for n in NAMES if not is_running(servers.get(n))]
        host = opts.host or state.get("host") or "127.0.0.1"
        ports = {n: _choose_port(n, "127.0.0.1" if n == "postgres" else host, opts.ports.get(n, 0),
                                 (servers.get(n) or {}).get("port")) for n in todo}  # fmt: skip
        bin_dir = find_binaries() if "postgres" in todo else Path(state["bin_dir"])
        run_as = run_as_user() if "postgres" in todo else state.get("run_as")
        state.update(dir=str(d), host=host, bin_dir=str(bin_dir), run_as=run_as)
        started: list[str] = []
        try:
            _start(d, state, todo, ports, opts, say, started)
        except BaseException:
            _stop_apps(state, tuple(n for n in started if n in APPS))
            if "postgres" in started:
                _stop_postgres(d, state, started_now=True)
            save_state(d, state)
            raise
        return Outcome("restarted" if stale else "started", state, started)


Pending = dict[str, tuple["subprocess.Popen[bytes]", str, Path, float]]  # name: (process, health URL, log, start)


def _start(
    d: Path,
    state: dict[str, Any],
    todo: list[str],
    ports: dict[str, int],
    opts: Options,
    say: Callable[[str], None],
    started: list[str],
) -> None:
    """Start the servers in `todo` (PostgreSQL first, then MLflow and Prefect at once), each recorded in
    servers.json as soon as it runs and appended to `started`; returns when all answer."""
    (d / "logs").mkdir(exist_ok=True)
    password = read_or_create_password(d / PASSWORD_FILE)
    if "postgres" in todo:
        _start_postgres(d, state, ports["postgres"], opts.timeout, password, say, started)
    pg_port = int(state["servers"]["postgres"]["port"])
    _postgres(d, state).create_databases(pg_port, password)
    pending: Pending = {}
    for name in (n for n in APPS if n in todo):
        pending[name] = _spawn_app(d, state, name, ports[name], url_args=(pg_port, password), opts=opts)
        started.append(name)
        save_state(d, state)
    _wait_healthy(state["servers"], pending, opts.timeout, say)
    servers = state["servers"]
    state["env"] = {"MLFLOW_TRACKING_URI": servers["mlflow"]["url"], "PREFECT_API_URL": servers["prefect"]["url"]}
    state.pop("stopped", None)
    save_state(d, state)


def _start_postgres(
    d: Path,
    state: dict[str, Any],
    port: int,
    timeout: float,
    password: str,
    say: Callable[[str], None],
    started: list[str],
) -> None:
    """initdb (the first time), then pg_ctl start on 127.0.0.1:`port`."""
    pg = _postgres(d, state)
    log = d / "logs" / "postgres.log"
    pg.prepare(log)
    if not pg.initialized():
        t0 = time.monotonic()
        pg.init(password)
        say(f"postgres  initdb {pg.data} in {time.monotonic() - t0:.1f} s (once)")
    state["servers"]["postgres"] = {"port": port, "url": f"postgresql://127.0.0.1:{port}", "log": str(log)}
    started.append("postgres")
    proc, seconds = pg.start(port, log, timeout)
    state["servers"]["postgres"].update(proc.to_json(), data=str(pg.data), start_seconds=round(seconds, 1))
    save_state(d, state)
    say(f"postgres  127.0.0.1:{port}  ready in {seconds:.1f} s  (data {pg.data}, runs as {pg.run_as or 'you'})")


def _spawn_app(
    d: Path, state: dict[str, Any], name: str, port: int, url_args: tuple[int, str], opts: Options
) -> tuple[subprocess.Popen[bytes], str, Path, float]:
    """Start the MLflow or Prefect server detached and record it; returns what waiting for it needs."""
    pg_port, password = url_args
    servers: dict[str, Entry] = state["servers"]
    log = d / "logs" / f"{name}.log"
    base = f"http://{client_host(state['host'])}:{port}"
    if name == "mlflow":
        destination = opts.artifacts_destination or (servers.get("mlflow") or {}).get("artifacts_destination")
        destination = destination or str(d / "mlartifacts")
        argv = mlflow_server.argv(state["host"], port, destination)
        env = mlflow_server.env(url("psycopg2", pg_port, "mlflow", password))
        entry = {"url": base, "health": mlflow_server.health_url(base), "artifacts_destination": destination}
    else:
        home = d / "prefect"
        home.mkdir(exist_ok=True)
        argv = prefect_server.argv(state["host"], port)
        env = prefect_server.env(url("asyncpg", pg_port, "prefect", password), home, f"{base}/api")
        entry = {"url": f"{base}/api", "ui": base, "health": prefect_server.health_url(f"{base}/api")}
    popen, proc = spawn(argv, env, log, d)
    servers[name] = {**proc.to_json(), "port": port, "log": str(log), **entry}
    return popen, entry["health"], log, time.monotonic()


def _wait_healthy(servers: dict[str, Entry], pending: Pending, timeout: float, say: Callable[[str], None]) -> None:
    """Poll each pending server's health URL; record and print each one's own start time as it answers."""
    while pending:
        for name, (popen, health, log, t0) in list(pending.items()):
            if http_ok(health):
                seconds = time.monotonic() - t0
                servers[name]["start_seconds"] = round(seconds, 1)
                say(f"{name:<8}  {servers[name]['url']}  ready in {seconds:.1f} s")
                del pending[name]
            elif popen.poll() is not None:
                raise ServersError(f"the {name} server exited before it answered {health}; {log_hint(log)}")
            elif time.monotonic() - t0 > timeout:
                raise ServersError(f"the {name} server did not answer {health} within {timeout:.0f} s; {log_hint(log)}")
        time.sleep(0.25)


def status(directory: Path) -> tuple[list[str], bool]:
    """One line per server (running and answering, not answering, or not running) and whether all are healthy."""
    d = directory.expanduser().resolve()
    state = load_state(d)
    if state is None:
        return [f"no stack recorded in {d} (gptflow servers up --dir {d})"], False
    lines, healthy = [], True
    for name in NAMES:
        entry = state["servers"].get(name) or {}
        if not is_running(entry):
            lines.append(f"{name:<8}  not running")
            healthy = False
            continue
        ok = _postgres(d, state).ready(int(entry["port"])) if name == "postgres" else http_ok(entry["health"])
        healthy &= ok
        answer = "answering" if ok else "NOT answering"
        lines.append(f"{name:<8}  pid {entry['pid']}  {entry.get('url', '')}  {answer}")
    return lines, healthy
