"""The figures a finished `gptflow run` ends with: pretraining loss, task scores, claim verdicts, the report card.

Read back from the run's parent MLflow run (what the comparison table and the report card read too),
so a fully cached rerun prints the same figures as the run that computed them.
"""

from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient

from reports import HTML_FILE
from reports.claims import run_verdicts, verdict_line
from reports.compare import HIDDEN_TASK_METRICS
from reports.runs import STAGE_PREFIXES, TASK_METRIC, stage_runs


def headline(tracking_uri: str, run_id: str, artifacts: Path) -> list[str]:
    """Lines: the pretraining val loss, each evaluated variant's metrics with its majority-class rate,
    each claim's verdict (`claim ...`, reports/claims.py), the report card."""
    client = MlflowClient(tracking_uri=tracking_uri)
    run = client.get_run(run_id)
    metrics = run.data.metrics
    lines = []
    if "pretrain.final_val_loss" in metrics:
        start = metrics.get("pretrain.initial_val_loss")
        before = f" (from {start:.4f} at step 0)" if start is not None else ""
        lines.append(f"pretrain: val loss {metrics['pretrain.final_val_loss']:.4f}{before}")
    scores: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        match = TASK_METRIC.match(key)
        if match and match["variant"] not in STAGE_PREFIXES:
            scores.setdefault(match["variant"], {})[match["metric"]] = value
    width = max((len(v) for v in scores), default=0)
    for variant in sorted(scores):
        shown = ", ".join(f"{m} {v:.4f}" for m, v in sorted(scores[variant].items()) if m not in HIDDEN_TASK_METRICS)
        majority = scores[variant].get("majority_rate")
        chance = f" (majority class {majority:.4f})" if majority is not None else ""
        lines.append(f"{variant:<{width}}: {shown}{chance}")
    lines += [f"claim {verdict_line(v)}" for v in run_verdicts(run)]
    report = stage_runs(client, run).get("report")
    if report is not None and "cache_key" in report.data.tags:
        page = artifacts / "report" / report.data.tags["cache_key"] / HTML_FILE
        if page.is_file():
            lines.append(f"report card: {page}")
    return lines
