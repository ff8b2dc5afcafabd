"""Mean ± std per task and variant (pretrained vs `no_pretraining`, ...) over fine-tuning seeds, from MLflow.

Reads the parent run's `<task>[-<ablation>][-seed<N>].<metric>` metrics of one `gptflow run` (the
latest finished one of the experiment, or --run-id) and prints a Markdown table, then how far the
pretrained variant beats each ablation relative to the seed spread.

    python benchmarks/finetune_ablation.py --experiment gptflow-cpu-30min [--workspace DIR] [--run-id ID]
"""

from __future__ import annotations

import argparse
import re
import statistics
from collections import defaultdict

from flows.workspace import Workspace
from gpt.tasks_recipe import ABLATIONS
from tasks.plan import STAGE_KINDS

NAME = re.compile(rf"^(?P<task>[a-z0-9_]+)(?:-(?P<ablation>{'|'.join(ABLATIONS)}))?(?:-seed(?P<seed>\d+))?$")
SKIP = {"examples", "majority_rate"}


def collect(metrics: dict[str, float]) -> dict[tuple[str, str, str], list[float]]:
    """(task, variant, metric) -> one value per seed, from a parent run's metrics."""
    out: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for key, value in metrics.items():
        variant, _, metric = key.rpartition(".")
        m = NAME.match(variant)
        if not m or m["task"] in STAGE_KINDS or metric in SKIP or metric.startswith("test_") or "." in variant:
            continue
        out[(m["task"], m["ablation"] or "pretrained", metric)].append(value)
    return out


def main() -> None:
    """Print the table for one pipeline run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="gptflow-cpu-30min")
    parser.add_argument("--workspace", default=None)
    parser.add_argument("--run-id", default=None)
    args = parser.parse_args()
    ws = Workspace.resolve(args.workspace)
    ws.configure_environment()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(ws.tracking_uri)
    if args.run_id:
        run = client.get_run(args.run_id)
    else:
        exp = client.get_experiment_by_name(args.experiment)
        if exp is None:
            raise SystemExit(f"no experiment {args.experiment!r} in {ws.tracking_uri}")
        runs = client.search_runs(
            [exp.experiment_id],
            "attributes.status = 'FINISHED' and tags.config_hash != ''",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if not runs:
            raise SystemExit(f"no finished pipeline run in experiment {args.experiment!r}")
        run = runs[0]
    table = collect(run.data.metrics)
    print(f"run {run.info.run_id}\n")
    print("| task | variant | metric | mean | std | seeds |\n|---|---|---|---|---|---|")
    for (task, variant, metric), values in sorted(table.items()):
        std = statistics.stdev(values) if len(values) > 1 else float("nan")
        print(f"| {task} | {variant} | {metric} | {statistics.mean(values):.4f} | {std:.4f} | {len(values)} |")
    print()
    for (task, variant, metric), values in sorted(table.items()):
        base = table.get((task, "pretrained", metric))
        if variant == "pretrained" or not base or len(values) < 2 or len(base) < 2:
            continue
        gap = statistics.mean(base) - statistics.mean(values)
        spread = max(statistics.stdev(base), statistics.stdev(values))
        verdict = "pretraining beats it" if gap > spread else "pretraining does not beat it"
        print(f"{task} {metric}: pretrained − {variant} = {gap:+.4f}, seed spread {spread:.4f}: {verdict}")


if __name__ == "__main__":
    main()
