"""Detached server processes, their identity, ports and health checks (Linux: reads /proc).

A server runs in a session of its own (its workers with it), detached from the terminal, with its
output in a log file. It is recorded by pid, start time (clock ticks since boot) and boot id:
`down` signals a session only while all three still match, so a pid the kernel has handed to
another process since is never signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from flows.servers.errors import ServersError

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def boot_id() -> str:
    """This boot's id: start times in clock ticks only compare within one boot."""
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return ""


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first), or None when there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


@dataclass(frozen=True)
class Proc:
    """A process as started: pid, start time in clock ticks since boot, boot id."""

    pid: int
    start_ticks: int
    boot_id: str

    @classmethod
    def of(cls, pid: int) -> Proc | None:
        """The process running as `pid` now (a zombie counts as gone), or None."""
        fields = _stat(pid)
        if fields is None or fields[0] == "Z":
            return None
        return cls(pid, int(fields[19]), boot_id())

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Proc | None:
        """The Proc recorded in servers.json (None for a server that is not running)."""
        if not data or data.get("pid") is None:
            return None
        return cls(int(data["pid"]), int(data["start_ticks"]), str(data["boot_id"]))

    def to_json(self) -> dict[str, Any]:
        """pid, start_ticks and boot_id, for servers.json."""
        return asdict(self)

    def running(self) -> bool:
        """Whether this very process still runs (not merely some process with its pid)."""
        return Proc.of(self.pid) == self


def session_members(leader: Proc) -> list[int]:
    """Live processes of the session `leader` started (itself and its workers), none started before it.

    Empty when the leader's pid now belongs to another process: that session is someone else's.
    While any process of a session lives the kernel does not hand its id out again, so processes
    left in it after the leader died are still ours.
    """
    if leader.boot_id != boot_id():
        return []
    now = Proc.of(leader.pid)
    if now is not None and now != leader:
        return []
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        fields = _stat(int(stat.parent.name))
        if fields and fields[0] != "Z" and int(fields[3]) == leader.pid and int(fields[19]) >= leader.start_ticks:
            members.append(int(stat.parent.name))
    return sorted(members)


def _signal(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def stop_session(leader: Proc, timeout: float = 30) -> list[int]:
    """SIGTERM every process of `leader`'s session, SIGKILL whatever is left after `timeout` s.

    Returns the pids it signalled (empty when the session is gone or is not ours).
    """
    members = session_members(leader)
    identities = [p for p in (Proc.of(pid) for pid in members) if p is not None]
    _signal([p.pid for p in identities], signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(p.running() for p in identities) and time.monotonic() < deadline:
        time.sleep(0.2)
    _signal([p.pid for p in identities if p.running()], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(p.running() for p in identities) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [p.pid for p in identities]


def spawn(argv: list[str], env: dict[str, str], log: Path, cwd: Path) -> tuple[subprocess.Popen[bytes], Proc]:
    """Start `argv` in a new session, detached from the terminal, stdout and stderr appended to `log` (0600)."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        popen = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as e:
        raise ServersError(f"cannot start {argv[0]}: {e.strerror or e}") from None
    finally:
        os.close(fd)
    ident = Proc.of(popen.pid)
    if ident is None:  # exited at once
        popen.wait()
        raise ServersError(f"{argv[0]} exited at once; {log_hint(log)}")
    return popen, ident


def log_hint(log: Path) -> str:
    """`last log line: ...; see LOG`, for one-line errors about a server that did not come up."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        lines = []
    last = f"last log line: {lines[-1][:300]}; " if lines else ""
    return f"{last}see {log}"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on at `host` now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def check_port(host: str, port: int, option: str) -> None:
    """ServersError naming `option` when `port` cannot be bound at `host` (in use, or privileged)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is no conflict
        try:
            s.bind((host, port))
        except OSError as e:
            raise ServersError(
                f"port {port} on {host} ({option}) cannot be used: {e.strerror or e}; pick another, or 0 for a free one"
            ) from None


def listening(port: int) -> list[str]:
    """Addresses (hex, as /proc/net/tcp* writes them) with a socket in LISTEN state on `port`."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            address, _, hex_port = fields[1].rpartition(":")
            if fields[3] == "0A" and int(hex_port, 16) == port:
                found.append(address)
    return found


def http_ok(url: str) -> bool:
    """Whether GET `url` answers 200 (the servers' health endpoints)."""
    import httpx

    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False
