"""The Prefect task that runs one stage: cache key = stage key, output = the stage directory path.

Every computation of a key happens under that key's flock (tasks/locks.py): a second process
asking for the same stage waits, then finds it done and reuses it. A bad-input error (bad config
or data, disk full) ends the task in a `Failed` state named `BadInput` carrying one line,
without a traceback and without retries; anything else is raised (a traceback, and a retry for
stages that fetch from the network).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import task
from prefect.context import TaskRunContext
from prefect.logging import get_run_logger
from prefect.states import Failed, State

from gpt.config import hash_json
from tasks.child_process import Placement, compute_placed, compute_stage
from tasks.locks import file_lock
from tasks.remote_store import RemoteStore, store_url_from_env
from tasks.stage import Stage, StageContext, StageError, commit, user_error, verify_dir

# Stages that fetch from the network get retries; training stages resume from checkpoints instead.
RETRIES = {"corpus": 2, "tokenizer": 2}
BAD_INPUT = "BadInput"


def stage_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """Prefect's cache key is the stage's content key, so a done stage shows as Cached across runs.

    With a store (`--store`), the store is part of it: a stage finished before that store was set
    is not a cache hit there, so `_compute` runs once and uploads it.
    """
    stage: Stage = parameters["stage"]
    store = store_url_from_env()
    return f"gptflow-{stage.kind}-{stage.key}" + (f"-{hash_json(store, 8)}" if store else "")


def _retryable(task: Any, task_run: Any, state: State) -> bool:
    """Retry crashes and network errors, never bad input."""
    return state.name != BAD_INPUT


def check_inputs_intact(inputs: dict[str, Path]) -> None:
    """Re-hash the upstream files a computing stage is about to read; raise StageError naming a bad one."""
    for name, path in inputs.items():
        problems = verify_dir(path, deep=True)
        if problems:
            raise StageError(f"stage '{name}' output {path} is corrupt: {problems[0]}; rebuild it with --force {name}")


def _compute(
    stage: Stage,
    cfg: Any,
    inputs: dict[str, Path],
    run_id: str | None,
    tracking_uri: str | None,
    cache_dir: Path,
    force: bool,
    placement: Placement | None,
) -> dict[str, Any]:
    store = RemoteStore.from_env()  # the shared copy of finished stages (--store / GPTFLOW_STORE), if any
    with file_lock(stage.lock_path, on_wait=lambda: get_run_logger().info(f"{stage.name}: waiting for another run")):
        if force:
            stage.clear()
        if stage.is_done():  # done before we asked, or by the run we waited for
            if store:
                store.push(stage)  # a no-op when the store has it already
            return {"dir": str(stage.dir), "computed": False, "artifacts": []}
        if stage.dir.exists():
            raise StageError(
                f"stage '{stage.name}' output {stage.dir} is corrupt: {stage.verify()[0]}; "
                f"rebuild it with --force {stage.name}"
            )
        if store and not force and store.pull(stage):  # finished elsewhere: downloaded, verified, committed
            get_run_logger().info(f"{stage.name}: reused from {store.stage_url(stage)}")
            return {"dir": str(stage.dir), "computed": False, "artifacts": []}
        if stage.kind != "report":  # the report reads MLflow, not its upstream files
            check_inputs_intact(inputs)
        out_dir = stage.prepare_partial()
        for aside in stage.set_aside_broken_checkpoints():
            get_run_logger().warning(f"{stage.name}: checkpoint is corrupt, set aside as {aside}; training restarts")
        ctx = StageContext(stage, cfg, inputs, out_dir, run_id, tracking_uri, cache_dir)
        started = time.time()
        out = compute_stage(stage.kind, ctx) if placement is None else compute_placed(stage.kind, ctx, placement)
        commit(stage, out.summary, out.info, run_id, started)
        if store:
            store.push(stage, overwrite=force)
        return {"dir": str(stage.dir), "computed": True, "artifacts": out.artifacts}


@task(cache_key_fn=stage_cache_key, persist_result=True, retry_delay_seconds=[2, 10], retry_condition_fn=_retryable)
def run_stage(
    stage: Stage,
    cfg: Any,
    inputs: dict[str, Path],
    run_id: str | None,
    tracking_uri: str | None,
    cache_dir: Path,
    force: bool = False,
    placement: Placement | None = None,
) -> dict[str, Any] | State:
    """Compute one stage into its partial dir and commit it; a complete dir is returned as is.

    `placement` is set for stages that fan out (see flows/fanout.py): their threads, GPU and process.
    """
    try:
        return _compute(stage, cfg, inputs, run_id, tracking_uri, cache_dir, force, placement)
    except Exception as e:
        message = user_error(e)
        if message is None or getattr(e, "transient", False):
            raise
        return Failed(name=BAD_INPUT, message=message)


def stage_task(stage: Stage, refresh: bool):
    """`run_stage` named after the stage, refreshing Prefect's cache when the directory must be rebuilt."""
    return run_stage.with_options(
        name=stage.kind,
        task_run_name=stage.name,
        retries=RETRIES.get(stage.kind, 0),
        refresh_cache=refresh,
    )
