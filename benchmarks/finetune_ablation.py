"""Mean ± std per task and variant (pretrained vs `no_pretraining`, ...) over fine-tuning seeds, from MLflow.

Reads the parent run's `<task>[-<ablation>][-seed<N>].<metric>` metrics of one `gptflow run` (the
latest finished one of the experiment, or --run-id) and prints a Markdown table, then how far the
pretrained variant beats each ablation relative to the seed spread.

    python benchmarks/finetune_ablation.py --experiment gptflow-cpu-30min [--workspace DIR] [--run-id ID]
"""

from __future__ import annotations

import argparse

from flows.workspace import Workspace
from reports.seeds import Spread, arm_spreads

SKIP = {"examples", "majority_rate"}


def collect(metrics: dict[str, float]) -> dict[tuple[str, str, str], Spread]:
    """(task, variant, metric) -> its values over the seeds (reports.seeds), dev metrics only."""
    return {
        (task, ablation or "pretrained", metric): spread
        for task, arms in arm_spreads(metrics).items()
        for ablation, per_metric in arms.items()
        for metric, spread in per_metric.items()
        if metric not in SKIP and not metric.startswith("test_")
    }


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
    for (task, variant, metric), s in sorted(table.items()):
        print(f"| {task} | {variant} | {metric} | {s.mean:.4f} | {s.std:.4f} | {s.n} |")
    print()
    for (task, variant, metric), s in sorted(table.items()):
        base = table.get((task, "pretrained", metric))
        if variant == "pretrained" or not base or s.n < 2 or base.n < 2:
            continue
        gap = base.mean - s.mean
        spread = max(base.std, s.std)
        verdict = "pretraining beats it" if gap > spread else "pretraining does not beat it"
        print(f"{task} {metric}: pretrained − {variant} = {gap:+.4f}, seed spread {spread:.4f}: {verdict}")


if __name__ == "__main__":
    main()
