"""Two "machines" (two workspaces, two processes) sharing one `--store`, started together on one config.

Prints, per machine: its wall time, the stages it computed, the stages it downloaded from the other
machine's work, how long it waited on the other's leases and how much it downloaded; and the
total stage computations against the two machines computing everything each (no shared store).

    python benchmarks/two_machines.py --config configs/micro.yaml [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def start(config: str, workspace: Path, store: str, overrides: list[str]) -> subprocess.Popen[str]:
    """`gptflow run` in its own process, logging Prefect's INFO lines (the lease messages)."""
    argv = [sys.executable, "-m", "flows.cli", "run", "--config", config, "--workspace", str(workspace)]
    argv += ["--store", store] + [a for kv in overrides for a in ("--set", kv)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_LOGGING_LEVEL": "INFO"}
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def summarize(name: str, out: str, wall: float) -> dict[str, object]:
    """What one machine's output says it computed, downloaded and waited for."""
    outcomes = dict(re.findall(r"^  (\S+) +(computed|cached)$", out, re.M))
    downloaded = re.findall(r"(\S+): reused from \S+ \(downloaded ([\d.]+) MB\)", out)
    waits = [float(s) for s in re.findall(r": waited ([\d.]+) s for another machine's lease", out)]
    return {
        "machine": name,
        "wall_s": wall,
        "computed": sorted(s for s, o in outcomes.items() if o == "computed"),
        "downloaded": sorted(s for s, _ in downloaded),
        "downloaded_mb": sum(float(mb) for _, mb in downloaded),
        "waited_s": sum(waits),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "micro.yaml"))
    p.add_argument("--set", dest="overrides", action="append", default=[], help="config override KEY=VALUE")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="gptflow-two-machines-") as tmp:
        store = (Path(tmp) / "store").as_uri()
        t0 = time.monotonic()
        procs = {m: start(args.config, Path(tmp) / m, store, args.overrides) for m in ("a", "b")}
        ended: dict[str, tuple[str, float]] = {}

        def collect(name: str) -> None:
            out, _ = procs[name].communicate()
            ended[name] = (out, time.monotonic() - t0)

        threads = [threading.Thread(target=collect, args=(m,)) for m in procs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        rows = []
        for name, proc in procs.items():
            out, wall = ended[name]
            if proc.returncode != 0:
                print(out[-3000:], file=sys.stderr)
                return proc.returncode
            rows.append(summarize(name, out, wall))
    stages = set().union(*(set(r["computed"]) | set(r["downloaded"]) for r in rows))  # type: ignore[arg-type]
    print(f"{'machine':<8} {'wall s':>7} {'computed':>9} {'downloaded':>11} {'MB':>7} {'waited s':>9}")
    for r in rows:
        print(
            f"{r['machine']:<8} {r['wall_s']:>7.1f} {len(r['computed']):>9} {len(r['downloaded']):>11} "  # type: ignore[arg-type]
            f"{r['downloaded_mb']:>7.2f} {r['waited_s']:>9.1f}"
        )
        print(f"  computed: {', '.join(r['computed']) or '-'}")  # type: ignore[arg-type]
        print(f"  downloaded: {', '.join(r['downloaded']) or '-'}")  # type: ignore[arg-type]
    computed = sum(len(r["computed"]) for r in rows)  # type: ignore[arg-type]
    print(f"stage computations: {computed} for {len(stages)} stages (without a shared store: {2 * len(stages)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
