"""The end-to-end Prefect flow: every selected stage in order, each with its MLflow child run."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.exceptions import TerminationSignal
from prefect.runtime import flow_run
from prefect.states import Failed, State

from flows.workspace import Workspace
from gpt.config import ExperimentConfig, from_dict
from reports.run_report import PRESET_TAG
from tasks.locks import file_lock
from tasks.plan import build_plan, select
from tasks.registry import register_stage_model
from tasks.report import REPORT_FILE, REPORT_FILES
from tasks.runner import BAD_INPUT, stage_task
from tasks.tracking import Tracker, git_commit


@flow(name="gptflow-pipeline")
def pipeline(
    config: dict[str, Any],
    workspace: str,
    only: list[str] | None = None,
    from_stage: str | None = None,
    force: list[str] | None = None,
    config_file: str | None = None,
) -> dict[str, Any] | State:
    """Run the pipeline for a resolved config; returns the MLflow parent run id and per-stage outcome.

    A stage that fails on bad input ends the flow in a `Failed` state named `BadInput` whose
    message is one line naming the stage and the culprit.
    """
    # Lightning prints through its own handler; without this Prefect's root handler repeats every line.
    logging.getLogger("lightning.pytorch").propagate = False
    cfg: ExperimentConfig = from_dict(ExperimentConfig, config)
    ws = Workspace(Path(workspace))
    plan = build_plan(cfg, ws.artifacts)
    selected, forced = select(plan, only, from_stage, force)
    by_name = {s.name: s for s in plan}
    with file_lock(ws.root / "mlflow.lock"):  # concurrent runs would race creating the store and experiment
        tracker = Tracker(ws.tracking_uri, cfg.experiment, ws.artifact_location)
    tags = {"config_hash": cfg.digest(), "git_commit": git_commit(), "prefect_flow_run_id": str(flow_run.id)}
    if config_file:  # the preset the report diffs this run's config against
        tags[PRESET_TAG] = config_file
    resumed = [r for r in tracker.close_orphans() if r.data.tags.get("config_hash") == tags["config_hash"]]
    if resumed:  # the latest killed run of this config: this run continues its work
        tags["resumes"] = max(resumed, key=lambda r: r.info.start_time).info.run_id
    parent = tracker.start_parent(flow_run.name or "gptflow", cfg.flat(), tags)
    outcome: dict[str, str] = {}
    status = "FAILED"
    try:
        for stage in selected:
            child = tracker.start_child(stage)
            try:
                inputs = {u: by_name[u].dir for u in stage.upstream}
                forced_now = stage.name in forced
                state = stage_task(stage, refresh=forced_now or not stage.is_done())(
                    stage, cfg, inputs, child, ws.tracking_uri, ws.downloads, forced_now, return_state=True
                )
                if state.name == BAD_INPUT:
                    tracker.fail(child, state.message)
                    return Failed(name=BAD_INPUT, message=f"stage '{stage.name}': {state.message}")
                result = state.result()
            except (KeyboardInterrupt, SystemExit, TerminationSignal) as e:
                tracker.fail(child, e, "KILLED")
                raise
            except BaseException as e:
                tracker.fail(child, e)
                raise
            # A Prefect cache hit returns the producing run's result, whose "computed" is True.
            cached = state.name == "Cached" or not result["computed"]
            if not cached:
                tracker.log_artifacts(child, [stage.dir / a for a in result["artifacts"]])
            tracker.finish_child(child, stage, stage.manifest(), cached)
            register_stage_model(tracker.client, cfg, stage, child, inputs, cached)  # pretrain, evaluate[task]
            outcome[stage.name] = "cached" if cached else "computed"
        report = by_name["report"].dir / REPORT_FILE
        if "report" in outcome and report.is_file():
            tracker.log_artifacts(parent, [report.parent / f for f in REPORT_FILES])
            create_markdown_artifact(report.read_text(), key="gptflow-report", description="gptflow run report")
        status = "FINISHED"
    except (KeyboardInterrupt, SystemExit, TerminationSignal):
        status = "KILLED"
        raise
    finally:
        tracker.end_parent(status)
    return {"run_id": parent, "stages": outcome, "artifacts": str(ws.artifacts)}
