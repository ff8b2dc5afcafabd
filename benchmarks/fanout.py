"""Wall time of the fine-tune/evaluate stages run one by one vs fanned out (`fanout.max_concurrency`).

Runs the pipeline once to have the upstream stages, then, per round and setting, recomputes every
fine-tune (`--force finetune`) and measures the span of the fan-out stages from their manifests
(first `started_at` to last `completed_at`), so Prefect's start-up and the report are left out.

    python benchmarks/fanout.py --config configs/micro.yaml --concurrency 1 2 --runner thread --rounds 3 \\
        [--set finetune.max_examples=640 ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from flows.cli import main as gptflow


def fanout_span(ws: Path) -> float:
    """Seconds from the first fan-out stage's compute start to the last one's end."""
    manifests = [
        json.loads(p.read_text())
        for kind in ("finetune", "evaluate")
        for p in (ws / "artifacts" / kind).glob("*/manifest.json")
    ]
    return max(m["completed_at"] for m in manifests) - min(m["started_at"] for m in manifests)


def main() -> None:
    """Print the median span per concurrency and its ratio to the first setting."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/micro.yaml")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--runner", default="thread", choices=["thread", "dask", "ray"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    ws = Path(tempfile.mkdtemp(prefix="gptflow-fanout-"))
    base = ["run", "--config", args.config, "--workspace", str(ws), *[a for s in args.overrides for a in ("--set", s)]]
    assert gptflow(base) == 0
    spans: dict[int, list[float]] = {n: [] for n in args.concurrency}
    for _ in range(args.rounds):  # settings alternate within a round, so drift hits all alike
        for n in args.concurrency:
            placement = ["--set", f"fanout.runner={args.runner}", "--set", f"fanout.max_concurrency={n}"]
            assert gptflow([*base, *placement, "--force", "finetune"]) == 0
            spans[n].append(fanout_span(ws))
    first = statistics.median(spans[args.concurrency[0]])
    print(f"\nfan-out stages, runner {args.runner}, {args.rounds} rounds (workspace {ws})")
    print("| max_concurrency | median s | rounds s | ratio to first |")
    print("|---|---|---|---|")
    for n, values in spans.items():
        median = statistics.median(values)
        rounds = ", ".join(f"{v:.1f}" for v in values)
        print(f"| {n} | {median:.1f} | {rounds} | {median / first:.2f} |")


if __name__ == "__main__":
    main()
