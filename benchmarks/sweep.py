"""Wall time of a fine-tuning sweep: `gptflow sweep` vs the same trials as separate `gptflow run` commands
(fresh processes, one shared workspace) vs the same runs with no shared cache (a workspace each).

Every arm starts from an empty workspace and runs the same trials (the grid below on the config), so
the sweep and the separate runs both compute pretraining once and the no-cache arm computes it once
per trial. Arms alternate their order from round to round, so drift of this shared machine hits
all of them alike; each process starts its own Prefect API, as a user's would.

    python benchmarks/sweep.py --config configs/demo.yaml --rounds 1 \\
        [--grid finetune.lr=2.5e-4,5e-4,1e-3 --grid finetune.aux_lm_weight=0,0.5] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_GRID = ["finetune.lr=2.5e-4,5e-4,1e-3", "finetune.aux_lm_weight=0,0.5"]


def _gptflow(*argv: str) -> float:
    """Seconds one `gptflow` command takes, in a fresh process; fails loudly when the command fails."""
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "flows.cli", *argv], cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"gptflow {' '.join(argv[:3])} failed:\n{(done.stdout + done.stderr)[-3000:]}")
    return seconds


def trial_sets(grid: list[str]) -> list[list[str]]:
    """Each grid trial as --set options (the same trials `gptflow sweep --grid` runs, in its order)."""
    keys, values = [], []
    for item in grid:
        key, _, text = item.partition("=")
        keys.append(key)
        values.append(text.split(","))
    return [[f"{k}={v}" for k, v in zip(keys, combo, strict=True)] for combo in itertools.product(*values)]


def main() -> None:
    """Print each arm's median wall time over the rounds and its ratio to the sweep."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--grid", action="append", help=f"swept key (repeatable; default {' '.join(DEFAULT_GRID)})")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    grid = args.grid or DEFAULT_GRID
    sets = [a for s in args.overrides for a in ("--set", s)]
    trials = trial_sets(grid)
    base = ["--config", args.config, *sets]

    def sweep(root: Path) -> float:
        return _gptflow("sweep", *base, "--workspace", str(root / "ws"), *[a for g in grid for a in ("--grid", g)])

    def separate(root: Path) -> float:
        one = [("run", *base, "--workspace", str(root / "ws"), *[a for s in t for a in ("--set", s)]) for t in trials]
        return sum(_gptflow(*argv) for argv in one)

    def no_cache(root: Path) -> float:
        return sum(
            _gptflow("run", *base, "--workspace", str(root / f"ws{i}"), *[a for s in t for a in ("--set", s)])
            for i, t in enumerate(trials)
        )

    arms = {
        "gptflow sweep": sweep,
        f"{len(trials)} gptflow run, shared workspace": separate,
        f"{len(trials)} gptflow run, no shared cache": no_cache,
    }
    times: dict[str, list[float]] = {name: [] for name in arms}
    for r in range(args.rounds):
        order = list(arms) if r % 2 == 0 else list(reversed(arms))
        for name in order:
            with tempfile.TemporaryDirectory(prefix="gptflow-sweep-bench-") as root:
                times[name].append(arms[name](Path(root)))
                print(f"round {r + 1}: {name}: {times[name][-1]:.1f} s", flush=True)
    sweep_median = statistics.median(times["gptflow sweep"])
    print(
        f"\n{len(trials)} trials ({', '.join(grid)}) on {args.config} {' '.join(args.overrides)}; "
        f"{args.rounds} round(s)"
    )
    print("| arm | median s | rounds s | ratio to the sweep |")
    print("|---|---|---|---|")
    for name, values in times.items():
        median = statistics.median(values)
        rounds = ", ".join(f"{v:.1f}" for v in values)
        print(f"| {name} | {median:.1f} | {rounds} | {median / sweep_median:.2f} |")


if __name__ == "__main__":
    main()
