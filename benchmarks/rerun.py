"""Where the time of a fully cached `gptflow run` (and of `gptflow stages`) goes, phase by phase.

Three cases, each run `--rounds` times after one discarded warm-up round, medians printed:

- `embedded`: `gptflow run` with PREFECT_API_URL unset (the CLI starts and stops its own Prefect API);
- `server`: the same against an already running Prefect server (started here with
  flows.api_server.start_server, PREFECT_HOME in a temporary directory; PREFECT_API_URL set);
- `stages`: `gptflow stages`.

Each round runs the CLI in a fresh interpreter (this file with `--child`) that patches a few functions
to time them and charges every moment of the main thread to exactly one phase, innermost wins:
interpreter (process start to our first line), imports (top-level imports not yet loaded), config +
plan (loading the config, planning, `check_run`'s checks), api start (starting, or waiting for, the
embedded API), flow run (the Prefect flow, less what is charged elsewhere), mlflow (MlflowClient calls
and model registration), api stop (draining Prefect's clients, stopping the server), other (argument
parsing, printing), exit (main's return to the process's end). After each `run` round it checks what
must still hold: every stage but the report has a child run tagged cached=true under a new parent
run, and Prefect recorded `Cached` task runs for the new flow run. One extra round per case runs with
`python -X importtime`; its self times are summed per top-level package.

The workspace must hold a finished run of the config (`gptflow run --config ... --workspace DIR` once):

    python benchmarks/rerun.py [--config configs/demo.yaml] [--workspace /tmp/rerun-ws] [--rounds 5] \\
        [--cases embedded,server,stages]
"""

from __future__ import annotations

import sys
import time

if __name__ == "__main__" and "--child" in sys.argv:  # first thing: the interpreter phase ends here
    _T_FIRST = time.time()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sqlite3  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
from collections import defaultdict  # noqa: E402
from collections.abc import Callable  # noqa: E402
from contextlib import closing  # noqa: E402
from functools import wraps  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PHASES = [
    "interpreter",
    "imports",
    "config + plan",
    "api start",
    "flow run",
    "mlflow",
    "api stop",
    "other",
    "exit",
]
HEAVY = ["torch", "lightning", "pytorch_lightning", "transformers", "mlflow", "pandas", "matplotlib", "prefect"]
# module -> {function: phase}; a module's functions are wrapped as soon as it is imported
TARGETS: dict[str, dict[str, str]] = {
    "flows.cli": {"_load": "config + plan", "check_run": "config + plan"},
    "tasks.plan": {
        "build_plan": "config + plan",
        "select": "config + plan",
        "describe": "config + plan",
        "check_inputs": "config + plan",
        "check_corpus_fits": "config + plan",
        "check_stages": "config + plan",
    },
    "flows.api_server": {
        "start_server": "api start",
        "ApiServer.__init__": "api start",  # launching it (the wait comes later)
        "ApiServer.wait_ready": "api start",
        "ApiServer.stop": "api stop",
        "stop_server": "api stop",
        "drain_clients": "api stop",
    },
    "flows.pipeline": {"run_pipeline": "flow run"},
    "tasks.registry": {"register_stage_model": "mlflow"},
}


# ---------------------------------------------------------------------------------------------- the child


class Clock:
    """Charges the main thread's time to one phase at a time (a stack: the innermost phase wins)."""

    def __init__(self) -> None:
        self.main = threading.get_ident()
        self.spent: dict[str, float] = defaultdict(float)
        self.stack: list[list[Any]] = [["other", time.perf_counter()]]

    def enter(self, phase: str) -> None:
        now = time.perf_counter()
        self.spent[self.stack[-1][0]] += now - self.stack[-1][1]
        self.stack.append([phase, now])

    def leave(self) -> None:
        now = time.perf_counter()
        phase, since = self.stack.pop()
        self.spent[phase] += now - since
        self.stack[-1][1] = now

    def close(self) -> None:
        while len(self.stack) > 1:
            self.leave()
        phase, since = self.stack[0]
        self.spent[phase] += time.perf_counter() - since
        self.stack[0][1] = time.perf_counter()

    def timed(self, fn: Callable[..., Any], phase: str) -> Callable[..., Any]:
        """`fn`, charging its main-thread time to `phase` (a generator's body is charged where it runs)."""
        if getattr(fn, "_bench_timed", False):
            return fn

        @wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() != self.main:
                return fn(*args, **kwargs)
            self.enter(phase)
            try:
                return fn(*args, **kwargs)
            finally:
                self.leave()

        wrapper._bench_timed = True  # type: ignore[attr-defined]
        return wrapper


def _patch(clock: Clock, name: str, module: Any) -> None:
    for path, phase in TARGETS.get(name, {}).items():
        owner, _, attr = path.rpartition(".")  # "function" or "Class.method"
        holder = getattr(module, owner, None) if owner else module
        fn = getattr(holder, attr, None)
        if holder is not None and callable(fn):
            setattr(holder, attr, clock.timed(fn, phase))
    if name == "mlflow.tracking.client":
        cls = module.MlflowClient
        for attr, fn in list(vars(cls).items()):
            if callable(fn) and (not attr.startswith("_") or attr == "__init__"):
                setattr(cls, attr, clock.timed(fn, "mlflow"))


def _install(clock: Clock) -> None:
    """Charge top-level imports to `imports` and wrap the target functions when their module loads."""
    import _frozen_importlib as bootstrap  # type: ignore[import-not-found]

    load = bootstrap._find_and_load
    depth = [0]

    def find_and_load(name: str, import_: Any) -> Any:
        if threading.get_ident() != clock.main:
            module = load(name, import_)
        else:
            if depth[0] == 0:
                clock.enter("imports")
            depth[0] += 1
            try:
                module = load(name, import_)
            finally:
                depth[0] -= 1
                if depth[0] == 0:
                    clock.leave()
        if name in TARGETS or name == "mlflow.tracking.client":
            _patch(clock, name, module)
        return module

    bootstrap._find_and_load = find_and_load


def child(out: str, argv: list[str]) -> None:
    """Run `gptflow ARGV` in this process with the clock on; write the phases to `out` (JSON)."""
    clock = Clock()
    _install(clock)
    from flows.cli import main

    code = 1
    sys.argv = ["gptflow", *argv]  # main() with no argv is the console script, as `gptflow` runs it
    try:
        code = main()
    finally:
        clock.close()
        record = {
            "first": _T_FIRST,
            "main_end": time.time(),
            "code": code,
            "phases": dict(clock.spent),
            "heavy": [m for m in HEAVY if m in sys.modules],
        }
        Path(out).write_text(json.dumps(record))
        sys.stdout.flush()
    sys.exit(code)


# --------------------------------------------------------------------------------------------- the parent


def run_round(argv: list[str], env: dict[str, str], log: Path, importtime: bool = False) -> dict[str, Any]:
    """One CLI run in a fresh interpreter; returns its phases (seconds), total and imported heavy packages."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    cmd = [sys.executable, *(["-X", "importtime"] if importtime else []), str(Path(__file__).resolve())]
    cmd += ["--child", out, *argv]
    with open(log, "w") as stream:
        start = time.time()
        # stdout/stderr to a file, and wait() rather than communicate(): a server the CLI leaves to stop
        # on its own must not hold the round open through an inherited pipe
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=stream, stderr=stream)
        proc.wait()
        end = time.time()
    try:
        record = json.loads(Path(out).read_text())
    finally:
        os.unlink(out)
    if proc.returncode != 0 or record["code"] != 0:
        sys.exit(f"gptflow {' '.join(argv)} failed (exit {proc.returncode}); see {log}")
    phases = {p: 0.0 for p in PHASES}
    phases.update(record["phases"])
    phases["interpreter"] = record["first"] - start
    phases["exit"] = end - record["main_end"]
    phases["total"] = end - start
    return {"phases": phases, "heavy": record["heavy"]}


def import_profile(log: Path, top: int = 8) -> str:
    """`-X importtime` self times summed per top-level package: the `top` largest, in seconds."""
    per: dict[str, float] = defaultdict(float)
    for line in log.read_text().splitlines():
        if line.startswith("import time:") and "|" in line:
            parts = line.split("|")
            try:
                self_us = int(parts[0].split(":")[1])
            except ValueError:
                continue  # the header line
            per[parts[2].strip().split(".")[0]] += self_us / 1e6
    total = sum(per.values())
    biggest = sorted(per.items(), key=lambda kv: -kv[1])[:top]
    return f"{total:.2f} s in all: " + ", ".join(f"{k} {v:.2f}" for k, v in biggest)


def check_cached(workspace: Path, prefect_db: Path, since: float) -> str:
    """'' when the newest pipeline run (started after `since`) has all stages but the report tagged
    cached=true and Prefect recorded Cached task runs for it; else what is wrong."""
    with closing(sqlite3.connect(f"file:{workspace / 'mlflow.db'}?mode=ro", uri=True)) as db:
        row = db.execute(
            "SELECT r.run_uuid, r.start_time FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
            "WHERE t.key = 'gptflow.kind' AND t.value = 'pipeline' ORDER BY r.start_time DESC LIMIT 1"
        ).fetchone()
        if row is None or row[1] / 1000 < since - 1:
            return "no new MLflow parent run"
        parent, flow_run = row[0], None
        children = db.execute(
            "SELECT t.run_uuid FROM tags t WHERE t.key = 'mlflow.parentRunId' AND t.value = ?", (parent,)
        ).fetchall()
        cached: dict[str, str] = {}
        for (child_id,) in children:
            tags = dict(db.execute("SELECT key, value FROM tags WHERE run_uuid = ?", (child_id,)).fetchall())
            cached[tags.get("stage", "?")] = tags.get("cached", "missing")
        flow_run = db.execute(
            "SELECT value FROM tags WHERE run_uuid = ? AND key = 'prefect_flow_run_id'", (parent,)
        ).fetchone()
    wrong = {s: c for s, c in cached.items() if c != ("false" if s == "report" else "true")}
    if not cached or wrong:
        return f"child runs not cached as expected: {wrong or 'none'}"
    deadline = time.time() + 10  # the server records task runs from events, a moment after the flow
    states: dict[str, int] = {}
    while time.time() < deadline:
        with closing(sqlite3.connect(f"file:{prefect_db}?mode=ro", uri=True, timeout=10)) as db:
            fid = flow_run[0].replace("-", "") if flow_run else ""
            rows = db.execute(
                "SELECT state_name, count(*) FROM task_run WHERE replace(flow_run_id, '-', '') = ? GROUP BY 1",
                (fid,),
            ).fetchall()
        states = dict(rows)
        if states.get("Cached", 0) >= len(cached) - 1:
            return ""
        time.sleep(0.5)
    return f"Prefect task run states of flow run {flow_run}: {states}"


def median_table(results: dict[str, list[dict[str, float]]]) -> str:
    """Phases (rows) by case (columns), medians in seconds."""
    cases = list(results)
    lines = [f"{'phase':<14}" + "".join(f"{c:>11}" for c in cases)]
    for phase in [*PHASES, "total"]:
        cells = [statistics.median(r[phase] for r in results[c]) for c in cases]
        if phase == "total":
            lines.append("-" * len(lines[0]))
        lines.append(f"{phase:<14}" + "".join(f"{v:>11.2f}" for v in cells))
    return "\n".join(lines)


def main() -> None:
    """Run the cases, print each round's total and the median of every phase."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument("--workspace", default="/tmp/rerun-ws")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--cases", default="embedded,server,stages")
    p.add_argument("--no-importtime", action="store_true", help="skip the extra -X importtime round")
    args = p.parse_args()
    ws = Path(args.workspace).resolve()
    config = str((ROOT / args.config).resolve())
    if not (ws / "mlflow.db").is_file():
        sys.exit(f"{ws} holds no finished run: run `gptflow run --config {args.config} --workspace {ws}` first")
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env["PYTHONPATH"] = str(ROOT)
    logs = Path(tempfile.mkdtemp(prefix="gptflow-rerun-bench-"))
    results: dict[str, list[dict[str, float]]] = {}
    server = None
    try:
        for case in cases:
            case_env = dict(env)
            prefect_db = ws / "prefect" / "prefect.db"
            if case == "server":
                server, case_env = start_server(env, logs)
                prefect_db = Path(case_env["PREFECT_HOME"]) / "prefect.db"
            if case == "stages":
                argv = ["stages", "--config", config, "--workspace", str(ws)]
            else:
                argv = ["run", "--config", config, "--workspace", str(ws)]
            rounds = []
            for i in range(args.rounds + 1):
                since = time.time()
                r = run_round(argv, case_env, logs / f"{case}-{i}.log")
                problem = check_cached(ws, prefect_db, since) if case != "stages" else ""
                if problem:
                    sys.exit(f"{case} round {i}: {problem} (log {logs / f'{case}-{i}.log'})")
                label = "warm-up" if i == 0 else f"round {i}"
                heavy = ",".join(r["heavy"]) or "none"
                print(f"{case:<9} {label:<8} {r['phases']['total']:6.2f} s   imported: {heavy}", flush=True)
                if i:
                    rounds.append(r["phases"])
            results[case] = rounds
            if not args.no_importtime:
                log = logs / f"{case}-importtime.log"
                run_round(argv, case_env, log, importtime=True)
                print(f"{case:<9} imports  {import_profile(log)}", flush=True)
            if server is not None:
                from flows.api_server import stop_server

                stop_server(server)
                server = None
    finally:
        if server is not None:
            from flows.api_server import stop_server

            stop_server(server)
    print(f"\nmedians over {args.rounds} rounds, seconds ({args.config}, workspace {ws}; logs {logs})")
    print(median_table(results))


def start_server(env: dict[str, str], logs: Path) -> tuple[subprocess.Popen, dict[str, str]]:
    """An already running Prefect API (its own PREFECT_HOME under `logs`) and the env that points at it."""
    home = logs / "prefect-server-home"
    home.mkdir()
    server_env = {**env, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "true"}
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(server_env)  # start_server passes this process's environment on
    try:
        sys.path.insert(0, str(ROOT))
        from flows.api_server import start_server as start

        proc, url = start(180)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    print(f"server    Prefect API at {url} (PREFECT_HOME {home})", flush=True)
    return proc, {**server_env, "PREFECT_API_URL": url}


if __name__ == "__main__":
    if "--child" in sys.argv:
        i = sys.argv.index("--child")
        child(sys.argv[i + 1], sys.argv[i + 2 :])
    else:
        main()
