"""`report` stage: the run's report card (report.md, report.html, plots/) from MLflow.

It describes one pipeline run (its parent MLflow run), so its section is that run's id: every run,
a fully cached rerun included, writes and logs a report of its own. Upstream stages only order it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gpt.config.experiment import ExperimentConfig
from reports import HTML_FILE, MD_FILE, PLOTS_DIR
from tasks.definition import PlanContext, Planned, StageDef, StageEnv, StageOutput

REPORT_FILE = MD_FILE  # the Markdown the flow publishes as a Prefect artifact
REPORT_FILES = (MD_FILE, HTML_FILE, PLOTS_DIR)  # what the flow logs to the parent run


@dataclass
class ReportSection:
    """The pipeline run the report card describes (None in a dry run: each run gets its own)."""

    run: str | None


def plan_report(cfg: ExperimentConfig, ctx: PlanContext) -> list[Planned]:
    """One `report`, after every other stage of the run."""
    return [Planned("report", ReportSection(ctx.run_id), [p.name for p in ctx.planned])]


def compute(section: ReportSection, inputs: dict[str, Path], out: Path, env: StageEnv) -> StageOutput:
    """Record this process's versions and hardware on the parent run, then write the report for it."""
    from mlflow.tracking import MlflowClient

    from reports.run_report import build_report, environment_tags

    assert section.run is not None, "the report stage runs only inside a pipeline run"
    client = MlflowClient(tracking_uri=env.tracking_uri)
    for key, value in environment_tags().items():
        client.set_tag(section.run, key, value)
    files = build_report(client, section.run, out)
    return StageOutput(summary={"plots": len(files.plots)}, artifacts=list(REPORT_FILES))


DEFINITION = StageDef(
    kind="report",
    version="3",  # 3: keyed by the run it describes
    doc="the run's report card (report.html, report.md, plots/)",
    instances=plan_report,
    compute=compute,
    keyed_on_inputs=False,
    per_run=True,
)
