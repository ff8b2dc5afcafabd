"""The team stack (`gptflow servers up`) for tests that run against real servers; conftest.py imports the fixture.

`team_servers` is module-scoped: a module gets its own PostgreSQL, MLflow server and Prefect
server, started as a user would (a `gptflow servers up` subprocess, so the servers are nobody's
children here) and stopped with `gptflow servers down` at teardown, which fails if any process
`up` recorded is still running.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import ROOT, gptflow


def servers_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`gptflow servers ARGS` in a subprocess; output captured as text."""
    return gptflow("servers", *args, timeout=timeout)


@dataclass
class TeamStack:
    """A running stack: its folder, `up`'s output and the variables that point clients at it."""

    dir: Path
    up: subprocess.CompletedProcess
    env: dict[str, str]

    def state(self) -> dict[str, Any]:
        """servers.json as it is now."""
        return json.loads((self.dir / "servers.json").read_text())

    def gptflow(self, *args: str, cwd: Path = ROOT, timeout: float = 900) -> subprocess.CompletedProcess:
        """`gptflow ARGS` in a subprocess pointed at the stack (MLFLOW_TRACKING_URI, PREFECT_API_URL)."""
        return gptflow(*args, cwd=cwd, timeout=timeout, env=self.env)


def recorded(state: dict[str, Any]) -> list[tuple[int, int]]:
    """(pid, start ticks) of every server process servers.json records."""
    return [(e["pid"], e["start_ticks"]) for e in state["servers"].values() if e.get("pid") is not None]


@pytest.fixture(scope="module")
def team_servers() -> Iterator[TeamStack]:
    """`gptflow servers up --dir D` for the module, `down` after it.

    D is made with mkdtemp under /tmp, not with tmp_path: pytest's base folder is mode 0700, and
    run as root the stack's PostgreSQL runs as the `postgres` user, who must pass through D's parents.
    """
    from flows.servers.procs import Proc

    d = Path(tempfile.mkdtemp(prefix="gptflow-servers-"))
    up = servers_cli("up", "--dir", str(d))
    try:
        assert up.returncode == 0, up.stderr
        env = dict(line.removeprefix("export ").split("=", 1) for line in up.stdout.splitlines())
        yield TeamStack(d, up, env)
    finally:
        state = json.loads((d / "servers.json").read_text()) if (d / "servers.json").exists() else {"servers": {}}
        down = servers_cli("down", "--dir", str(d))
        boot = Proc.of(os.getpid())
        left = [pid for pid, ticks in recorded(state) if boot and Proc(pid, ticks, boot.boot_id).running()]
        if not left and down.returncode == 0:
            shutil.rmtree(d, ignore_errors=True)
        assert down.returncode == 0 and not left, f"{down.stderr}; still running: {left} (stack in {d})"
