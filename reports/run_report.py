"""A Markdown report of one pipeline run, built from what MLflow recorded for it."""

from __future__ import annotations

from pathlib import Path

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

# GPT-1 paper (Radford et al. 2018), Tables 2-4: the number each task is compared against.
PAPER = {
    ("sst2", "accuracy"): 91.3,
    ("story_cloze", "accuracy"): 86.5,
    ("rte", "accuracy"): 56.0,
    ("mrpc", "f1"): 82.3,
    ("stsb", "pearson"): 82.0,
    ("cola", "matthews"): 45.4,
}


def child_runs(client: MlflowClient, parent: Run) -> list[Run]:
    """The stage runs nested under a pipeline run, oldest first."""
    runs = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
        order_by=["attributes.start_time ASC"],
    )
    return list(runs)


def _fmt(v: float) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _samples(client: MlflowClient, runs: list[Run]) -> str | None:
    for run in runs:
        if run.data.tags.get("stage") == "pretrain":
            source = run.data.tags.get("produced_by", run.info.run_id)
            try:
                return Path(client.download_artifacts(source, "samples.txt")).read_text()
            except Exception:  # samples are optional in a report; a missing artifact must not fail it
                return None
    return None


def build_report(client: MlflowClient, run_id: str) -> str:
    """Markdown with the run's config digest, per-stage times and cache hits, pretraining and task figures."""
    parent = client.get_run(run_id)
    tags, metrics = parent.data.tags, parent.data.metrics
    runs = child_runs(client, parent)
    lines = [
        f"# gptflow run `{parent.info.run_name}`",
        "",
        f"- run id: `{run_id}`  ",
        f"- experiment: `{client.get_experiment(parent.info.experiment_id).name}`  ",
        f"- git commit: `{tags.get('git_commit', '?')}`, config hash `{tags.get('config_hash', '?')}`  ",
        f"- Prefect flow run: `{tags.get('prefect_flow_run_id', '?')}`",
        "",
        "## Stages",
        "",
        "| stage | cached | key | wall s |",
        "|---|---|---|---|",
    ]
    for r in runs:
        t = r.data.tags
        wall = f"{(r.info.end_time - r.info.start_time) / 1000:.1f}" if r.info.end_time else "running"
        lines.append(f"| {t.get('stage')} | {t.get('cached', 'running')} | `{t.get('cache_key')}` | {wall} |")
    pre = {k.removeprefix("pretrain."): v for k, v in metrics.items() if k.startswith("pretrain.")}
    if pre:
        lines += ["", "## Pretraining", ""]
        for k in ("params", "steps", "initial_val_loss", "final_val_loss", "tokens_per_sec", "mfu"):
            if k in pre:
                lines.append(f"- {k}: {_fmt(pre[k])}")
    tasks = sorted({k.split(".")[0] for k in metrics if k.endswith(".accuracy")} - {"pretrain"})
    if tasks:
        lines += ["", "## Tasks (dev split)", "", "| task | metric | value | majority class | GPT-1 paper |"]
        lines.append("|---|---|---|---|---|")
        for task in tasks:
            acc = metrics[f"{task}.accuracy"]
            majority = metrics.get(f"{task}.majority_rate", float("nan"))
            paper = PAPER.get((task, "accuracy"))
            lines.append(f"| {task} | accuracy | {100 * acc:.1f} | {100 * majority:.1f} | {paper if paper else '—'} |")
    samples = _samples(client, runs)
    if samples:
        lines += ["", "## Samples after pretraining", "", "```", samples.strip(), "```"]
    return "\n".join(lines) + "\n"
