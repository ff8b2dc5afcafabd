"""`gptflow servers up|down|status --dir DIR`: the command line of the team stack (flows/servers/stack.py).

Needs no workspace. `up` prints what it started to stderr and the `export` lines to stdout, so
`eval "$(gptflow servers up --dir DIR)"` points this shell at the stack.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _port(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = -1
    if not 0 <= n <= 65535:
        raise argparse.ArgumentTypeError(f"expected a TCP port 0-65535 (0: a free one), got {value!r}")
    return n


def add_servers_parser(sub: argparse._SubParsersAction) -> None:
    """Add the `servers` subcommand (up, down, status; --dir and, for up, bind address, artifacts, ports)."""
    servers = sub.add_parser(
        "servers",
        help="PostgreSQL + MLflow server + Prefect server on this machine (up, down, status)",
        description="The team stack on one machine, all bound to 127.0.0.1 by default. `up` prints the "
        'variables that point gptflow at it: eval "$(gptflow servers up --dir DIR)".',
    )
    actions = servers.add_subparsers(dest="action", required=True)
    up = actions.add_parser("up", help="start the stack in DIR (or say it is running and print its env again)")
    down = actions.add_parser("down", help="stop exactly the servers `up` started in DIR")
    status = actions.add_parser("status", help="each server: running and answering or not")
    for sp in (up, down, status):
        sp.add_argument("--dir", required=True, type=Path, help="the stack's folder: database, logs, servers.json")
    up.add_argument("--host", help="address MLflow and Prefect bind (default 127.0.0.1; PostgreSQL stays on it)")
    up.add_argument(
        "--artifacts-destination",
        metavar="URL",
        help="where the MLflow server keeps artifacts it proxies (default DIR/mlartifacts; e.g. s3://bucket/prefix)",
    )
    for name in ("postgres", "mlflow", "prefect"):
        up.add_argument(f"--{name}-port", type=_port, default=0, metavar="PORT", help="default: a free port")
    up.add_argument("--timeout", type=float, default=300, help="seconds to wait for each server (default 300)")


def cmd_servers(args: argparse.Namespace) -> int:
    """Run `servers up|down|status`; bad input (port in use, DIR not writable, no PostgreSQL) is one line, exit 2."""
    from flows.servers.errors import ServersError

    try:
        if args.action == "up":
            return _up(args)
        if args.action == "down":
            return _down(args)
        return _status(args)
    except ServersError as e:
        print(f"gptflow: error: {e}", file=sys.stderr)
        return 2


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _up(args: argparse.Namespace) -> int:
    from flows.servers.stack import Options, export_lines, up

    ports = {"postgres": args.postgres_port, "mlflow": args.mlflow_port, "prefect": args.prefect_port}
    opts = Options(host=args.host, artifacts_destination=args.artifacts_destination, ports=ports, timeout=args.timeout)
    outcome = up(args.dir, opts, say=_say)
    d = outcome.state["dir"]
    if outcome.what == "already running":
        asked = args.host or args.artifacts_destination or any(ports.values())
        note = " (the options given are ignored: `gptflow servers down` first to change them)" if asked else ""
        _say(f"the stack in {d} is already running{note}:")
        for name, entry in outcome.state["servers"].items():
            _say(f"{name:<8}  pid {entry['pid']}  {entry.get('url', '')}")
    else:
        again = f" ({', '.join(outcome.started)})" if outcome.what == "restarted" else ""
        _say(f"{outcome.what}{again}; state in {d}/servers.json, logs in {d}/logs/")
        _say(f"stop with: gptflow servers down --dir {d}")
    print("\n".join(export_lines(outcome.state)), flush=True)
    return 0


def _down(args: argparse.Namespace) -> int:
    from flows.servers.stack import down

    stopped = down(args.dir)
    if stopped is None:
        _say(f"nothing to stop: no servers.json in {args.dir.expanduser().resolve()}")
        return 0
    for name, pids in stopped.items():
        _say(f"{name:<8}  " + (f"stopped (pids {', '.join(map(str, pids))})" if pids else "was not running"))
    return 0


def _status(args: argparse.Namespace) -> int:
    from flows.servers.stack import export_lines, load_state, status

    lines, healthy = status(args.dir)
    for line in lines:
        print(line)
    state = load_state(args.dir.expanduser().resolve())
    if healthy and state:
        print("\n".join(export_lines(state)))
    return 0 if healthy else 1
