"""`gptflow gc`: list (default) or remove (`--yes`) what nothing needs under the workspace's artifacts.

The library is tasks/gc.py; this is its command line. MLflow is imported inside the command, so
building the parser stays cheap.
"""

from __future__ import annotations

import argparse

from flows.workspace import Workspace


def _at_least_one(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value!r}")
    return n


def add_gc_parser(sub: argparse._SubParsersAction) -> None:
    """Add the `gc` subcommand (--workspace, --keep-runs N, --yes) to the CLI's subparsers."""
    gc = sub.add_parser(
        "gc",
        help="list (or remove with --yes) stage directories nothing needs any more, and killed runs' leftovers",
        description="Keeps the stages of each experiment's last N pipeline runs, of registered models and of "
        "running runs, with everything they were built from; lists the rest and the space it takes.",
    )
    gc.add_argument("--workspace", help="workspace directory (default: $GPTFLOW_HOME or ./workspace)")
    gc.add_argument(
        "--keep-runs",
        type=_at_least_one,
        default=5,
        metavar="N",
        help="keep the stages of the last N pipeline runs of each experiment (default: 5)",
    )
    gc.add_argument("--yes", action="store_true", help="remove the listed entries (default: only list them)")


def _plural(n: int) -> str:
    return f"{n} entry" if n == 1 else f"{n} entries"


def cmd_gc(args: argparse.Namespace, ws: Workspace) -> int:
    """Print a table of garbage (kind, entry, size, reason) and what it frees; with --yes remove it."""
    from gpt.config.fields import ConfigError
    from tasks.gc import Garbage, GcError, find_garbage, human_bytes, remove_garbage, tracking_client

    try:
        ws.check_tracking()  # a tracking server that does not answer: refuse at once (MLflow retries for minutes)
    except ConfigError as e:
        raise GcError(f"{e}; gc removes nothing while it cannot tell what is in use") from None
    items = find_garbage(ws.artifacts, tracking_client(ws.tracking_uri), args.keep_runs)
    total = sum(g.bytes for g in items)
    if items:
        sizes = [human_bytes(g.bytes) for g in items]
        wk = max(4, *(len(g.kind) for g in items))
        we = max(5, *(len(g.what) for g in items))
        wz = max(4, *(len(s) for s in sizes))
        print(f"{'kind':<{wk}}  {'entry':<{we}}  {'size':>{wz}}  reason")
        for g, size in zip(items, sizes, strict=True):
            print(f"{g.kind:<{wk}}  {g.what:<{we}}  {size:>{wz}}  {g.reason}")
    if not args.yes:
        hint = " (run with --yes to remove)" if items else ""
        print(f"gc: {_plural(len(items))}, {human_bytes(total)} would be freed{hint}")
        return 0

    def skipped(g: Garbage, why: str) -> None:
        print(f"gc: kept {g.path}: {why}")

    removed, freed = remove_garbage(items, on_skip=skipped)
    print(f"gc: removed {_plural(removed)}, freed {human_bytes(freed)}")
    return 0
