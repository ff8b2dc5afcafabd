"""`report` stage: the run's Markdown report, from MLflow, logged to the parent run and to Prefect."""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from reports.run_report import build_report
from tasks.stage import StageContext, StageOutput

REPORT_FILE = "report.md"


def compute(ctx: StageContext) -> StageOutput:
    """Write `report.md` for the pipeline run that owns this stage's child run."""
    client = MlflowClient(tracking_uri=ctx.tracking_uri)
    parent_id = client.get_run(ctx.run_id).data.tags["mlflow.parentRunId"]
    (ctx.out / REPORT_FILE).write_text(build_report(client, parent_id))
    return StageOutput(summary={}, artifacts=[REPORT_FILE])
