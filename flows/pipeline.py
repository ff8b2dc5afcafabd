"""The end-to-end Prefect flow: every selected stage in order, each with its MLflow child run."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from flows.workspace import Workspace
from gpt.config import ExperimentConfig, from_dict
from tasks.plan import build_plan, select
from tasks.report import REPORT_FILE
from tasks.runner import stage_task
from tasks.tracking import Tracker, git_commit


@flow(name="gptflow-pipeline")
def pipeline(
    config: dict[str, Any],
    workspace: str,
    only: list[str] | None = None,
    from_stage: str | None = None,
    force: list[str] | None = None,
) -> dict[str, Any]:
    """Run the pipeline for a resolved config; returns the MLflow parent run id and per-stage outcome."""
    # Lightning prints through its own handler; without this Prefect's root handler repeats every line.
    logging.getLogger("lightning.pytorch").propagate = False
    cfg: ExperimentConfig = from_dict(ExperimentConfig, config)
    ws = Workspace(Path(workspace))
    plan = build_plan(cfg, ws.artifacts)
    selected, forced = select(plan, only, from_stage, force)
    by_name = {s.name: s for s in plan}
    tracker = Tracker(ws.tracking_uri, cfg.experiment, ws.artifact_location)
    tags = {"config_hash": cfg.digest(), "git_commit": git_commit(), "prefect_flow_run_id": str(flow_run.id)}
    parent = tracker.start_parent(flow_run.name or "gptflow", cfg.flat(), tags)
    outcome: dict[str, str] = {}
    status = "FAILED"
    try:
        for stage in selected:
            if stage.name in forced:
                stage.clear()
            child = tracker.start_child(stage)
            try:
                inputs = {u: by_name[u].dir for u in stage.upstream}
                state = stage_task(stage, refresh=not stage.is_done())(
                    stage, cfg, inputs, child, ws.tracking_uri, ws.downloads, return_state=True
                )
                result = state.result()
            except BaseException as e:
                tracker.fail(child, e)
                raise
            # A Prefect cache hit returns the producing run's result, whose "computed" is True.
            cached = state.name == "Cached" or not result["computed"]
            if not cached:
                tracker.log_artifacts(child, [stage.dir / a for a in result["artifacts"]])
            tracker.finish_child(child, stage, stage.manifest(), cached)
            outcome[stage.name] = "cached" if cached else "computed"
        report = by_name["report"].dir / REPORT_FILE
        if "report" in outcome and report.is_file():
            tracker.log_artifacts(parent, [report])
            create_markdown_artifact(report.read_text(), key="gptflow-report", description="gptflow run report")
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracker.end_parent(status)
    return {"run_id": parent, "stages": outcome, "artifacts": str(ws.artifacts)}
