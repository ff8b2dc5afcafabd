"""The end-to-end Prefect flow: every selected stage in order, each with its MLflow child run."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from prefect.states import Failed, State

from flows.fanout import concurrent, groups, run_concurrently
from flows.notify import on_pipeline_completion, on_pipeline_failure
from flows.stage_book import INTERRUPTS, StageBook
from flows.workspace import Workspace
from gpt.config.experiment import ExperimentConfig
from gpt.config.loader import from_dict
from gpt.config.secrets import export_secrets, install_log_redaction, redacted_config, reveal_config, scrub_exception
from reports.claims import CLAIMS_TAG, claims_json
from reports.run_report import PRESET_TAG
from tasks.content import DigestCache
from tasks.locks import file_lock
from tasks.plan import build_plan, select
from tasks.report import REPORT_FILE, REPORT_FILES
from tasks.runner import BAD_INPUT
from tasks.tracking import Tracker, git_commit


@flow(name="gptflow-pipeline", on_failure=[on_pipeline_failure], on_completion=[on_pipeline_completion])
def pipeline(
    config: dict[str, Any],
    workspace: str,
    only: list[str] | None = None,
    from_stage: str | None = None,
    force: list[str] | None = None,
    config_file: str | None = None,
    rebuild: list[str] | None = None,
    tags: dict[str, str] | None = None,
) -> dict[str, Any] | State:
    """Run the pipeline for a resolved config; returns the MLflow parent run id and per-stage outcome.

    `tags` are added to the parent run (a sweep's `sweep` and `trial`).
    A stage that fails on bad input ends the flow in a `Failed` state named `BadInput` whose
    message is one line naming the stage and the culprit.

    `config` comes redacted (Prefect stores flow parameters on its server): the credentials it stood
    for are put back from this process's environment (gpt/config/secrets.py). The flow's hooks send
    the `notify:` messages (flows/notify.py).
    """
    install_log_redaction()  # Prefect ships this process's log records to its server
    # Lightning prints through its own handler; without this Prefect's root handler repeats every line.
    logging.getLogger("lightning.pytorch").propagate = False
    cfg: ExperimentConfig = from_dict(ExperimentConfig, reveal_config(config))
    ws = Workspace(Path(workspace))
    digests = DigestCache(ws.digests)
    select(build_plan(cfg, ws.artifacts, digests=digests), only, from_stage, force, rebuild)  # fail before any run
    with file_lock(ws.root / "mlflow.lock"):  # concurrent runs would race creating the store and experiment
        tracker = Tracker(ws.tracking_uri, cfg.experiment, ws.artifact_location)
    run_tags = {"config_hash": cfg.digest(), "git_commit": git_commit(), "prefect_flow_run_id": str(flow_run.id)}
    if config_file:  # the preset the report diffs this run's config against
        run_tags[PRESET_TAG] = config_file
    if cfg.claims:  # what the report card, `compare` and the run's last lines decide
        run_tags[CLAIMS_TAG] = claims_json(cfg)
    run_tags.update(tags or {})
    resumed = [r for r in tracker.close_orphans() if r.data.tags.get("config_hash") == run_tags["config_hash"]]
    if resumed:  # the latest killed run of this config: this run continues its work
        run_tags["resumes"] = max(resumed, key=lambda r: r.info.start_time).info.run_id
    parent = tracker.start_parent(flow_run.name or "gptflow", cfg.flat(), run_tags)  # credentials redacted
    plan = build_plan(cfg, ws.artifacts, run_id=parent, digests=digests)  # the report stage describes this run
    selected, forced = select(plan, only, from_stage, force, rebuild)
    book = StageBook(tracker, cfg, plan, forced, ws)
    status = "FAILED"
    try:
        for parallel, stages in groups(selected):
            if parallel and concurrent(cfg.fanout):
                error = run_concurrently(book, stages, cfg.fanout)
            else:
                error = book.run_in_order(stages)
            if error:
                return Failed(name=BAD_INPUT, message=error)
        report = book.by_name["report"].dir / REPORT_FILE
        if "report" in book.outcome and report.is_file():
            tracker.log_artifacts(parent, [report.parent / f for f in REPORT_FILES])
            create_markdown_artifact(report.read_text(), key="gptflow-report", description="gptflow run report")
        status = "FINISHED"
    except INTERRUPTS:
        status = "KILLED"
        raise
    except Exception as e:
        scrub_exception(e)  # its message becomes the flow state's, stored by Prefect
        raise
    finally:
        tracker.end_parent(status)
    return {"run_id": parent, "stages": book.outcome, "artifacts": str(ws.artifacts)}


def run_pipeline(config: dict[str, Any], workspace: str, **options: Any) -> dict[str, Any]:
    """Call the flow and return its result (`run_id`, `stages`, `artifacts`), for `gptflow run` and sweep trials.

    A stage that failed on bad input raises StageError with its one line; `options` are the flow's
    other parameters (stage selection, config file, tags). The flow gets the config with its
    credentials redacted; their real values reach it through this process's environment.
    """
    from tasks.stage import StageError

    cfg = from_dict(ExperimentConfig, config)
    export_secrets(cfg)
    state = pipeline(config=redacted_config(cfg), workspace=workspace, **options, return_state=True)
    if state.name == BAD_INPUT:
        raise StageError(state.message)
    result = state.result()
    if not isinstance(result, dict):  # the flow returns a State only for a bad input, handled above
        raise StageError(f"the pipeline ended in state {state.name!r} without a result")
    return result
