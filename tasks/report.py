"""`report` stage: the run's report card (report.md, report.html, plots/) from MLflow."""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from reports.run_report import HTML_FILE, MD_FILE, PLOTS_DIR, build_report, environment_tags
from tasks.stage import StageContext, StageOutput

REPORT_FILE = MD_FILE  # the Markdown the flow publishes as a Prefect artifact
REPORT_FILES = (MD_FILE, HTML_FILE, PLOTS_DIR)  # what the flow logs to the parent run


def compute(ctx: StageContext) -> StageOutput:
    """Record this process's versions and hardware on the parent run, then write the report for it."""
    client = MlflowClient(tracking_uri=ctx.tracking_uri)
    parent_id = client.get_run(ctx.run_id).data.tags["mlflow.parentRunId"]
    for key, value in environment_tags().items():
        client.set_tag(parent_id, key, value)
    files = build_report(client, parent_id, ctx.out)
    return StageOutput(summary={"plots": len(files.plots)}, artifacts=list(REPORT_FILES))
