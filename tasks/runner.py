"""The Prefect task that runs one stage: cache key = stage key, output = the stage directory path."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from prefect import task
from prefect.context import TaskRunContext

from tasks.stage import Stage, StageContext, commit

# Each stage's code lives in tasks/<kind>.py; it is imported only when the stage really runs, so a
# fully cached rerun never imports torch, Lightning or torchmetrics (seconds on this machine).
# Stages that fetch from the network get retries; training stages resume from checkpoints instead.
RETRIES = {"corpus": 2, "tokenizer": 2}


def stage_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """Prefect's cache key is the stage's content key, so a done stage shows as Cached across runs."""
    stage: Stage = parameters["stage"]
    return f"gptflow-{stage.kind}-{stage.key}"


@task(cache_key_fn=stage_cache_key, persist_result=True, retry_delay_seconds=[2, 10])
def run_stage(
    stage: Stage, cfg: Any, inputs: dict[str, Path], run_id: str | None, tracking_uri: str | None, cache_dir: Path
) -> dict[str, Any]:
    """Compute one stage into its partial dir and commit it; a complete dir is returned as is."""
    if stage.is_done():
        return {"dir": str(stage.dir), "computed": False, "artifacts": []}
    stage.partial_dir.mkdir(parents=True, exist_ok=True)
    ctx = StageContext(stage, cfg, inputs, stage.partial_dir, run_id, tracking_uri, cache_dir)
    out = importlib.import_module(f"tasks.{stage.kind}").compute(ctx)
    commit(stage, out.summary, out.info, run_id)
    return {"dir": str(stage.dir), "computed": True, "artifacts": out.artifacts}


def stage_task(stage: Stage, refresh: bool):
    """`run_stage` named after the stage, refreshing Prefect's cache when the directory must be rebuilt."""
    return run_stage.with_options(
        name=stage.kind,
        task_run_name=stage.name,
        retries=RETRIES.get(stage.kind, 0),
        refresh_cache=refresh,
    )
