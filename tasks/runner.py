"""The Prefect task that runs one stage: reuse the finished directory, or compute and commit it.

The stage manifest is the cache, not Prefect's result store: the task persists nothing (no
cloudpickle record is ever written to, or read back from, the workspace) and reports a reused stage
by returning a `Completed` state named `Cached`, which is how Prefect shows a cache hit.

Every computation of a key happens under that key's flock (tasks/locks.py): a second process
asking for the same stage waits, then finds it done and reuses it. While a stage computes it holds
a shared lock on each input's `readers` file, so a rebuild of that input never swaps it under it.
A bad-input error (bad config or data, disk full) ends the task in a `Failed` state named
`BadInput` carrying one line, without a traceback and without retries; anything else is raised (a
traceback, and a retry for stages that fetch from the network).
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from prefect.states import Completed, Failed, State

from gpt.config.secrets import scrub_exception
from tasks.child_process import Placement, compute_placed, compute_stage
from tasks.definition import StageEnv
from tasks.lease import LeaseLost, StoreLease, acquire
from tasks.locks import file_lock, shared_locks
from tasks.plan import corrupt_message
from tasks.remote_store import RemoteStore
from tasks.stage import Stage, StageError, commit, user_error, verify_dir

if TYPE_CHECKING:
    from prefect.client.schemas.objects import TaskRun

BAD_INPUT = "BadInput"
CACHED = "Cached"


def _retryable(task: Task[..., Any], task_run: TaskRun, state: State) -> bool:
    """Retry crashes and network errors, never bad input."""
    return state.name != BAD_INPUT


def check_inputs_intact(upstream: list[Stage]) -> None:
    """Re-hash the upstream files a computing stage is about to read (their `outputs`; the rest by size only),
    and raise StageError naming a bad one. Checkpoints, which nothing downstream reads, are not re-read."""
    for stage in upstream:
        problems = verify_dir(stage.dir, deep=True, patterns=stage.definition.outputs)
        if problems:
            raise StageError(corrupt_message(stage, problems[0]))


def _compute(stage: Stage, env: StageEnv, force: bool, placement: Placement | None) -> dict[str, Any]:
    store = RemoteStore.from_env()  # the shared copy of finished stages (--store / GPTFLOW_STORE), if any
    log = get_run_logger()
    with file_lock(stage.lock_path, on_wait=lambda: log.info(f"{stage.name}: waiting for another run")):
        stage.recover_replaced()
        if not force and stage.is_done():  # done before we asked, or by the run we waited for
            if store:
                store.push(stage)  # a no-op when the store has it already
            return {"dir": str(stage.dir), "computed": False, "artifacts": []}
        if not force and stage.dir.exists():
            raise StageError(corrupt_message(stage, stage.verify()[0]))
        if store is None:
            return _compute_and_commit(stage, env, force, placement, None, None)
        while True:  # machines sharing the store: one holds the stage's lease and computes, the others wait
            lease = acquire(store, stage, pull=not force, log=log.info)
            if lease is None:  # finished elsewhere: downloaded, verified, committed
                size = sum(f["bytes"] for f in stage.manifest()["files"].values())
                log.info(f"{stage.name}: reused from {store.stage_url(stage)} (downloaded {size / 1e6:.2f} MB)")
                return {"dir": str(stage.dir), "computed": False, "artifacts": []}
            try:
                return _compute_and_commit(stage, env, force, placement, store, lease)
            except LeaseLost as e:
                log.warning(f"{e}; waiting for that machine's result")
                force = False  # the new holder's result is the one to take
            finally:
                lease.release()


def _compute_and_commit(
    stage: Stage,
    env: StageEnv,
    force: bool,
    placement: Placement | None,
    store: RemoteStore | None,
    lease: StoreLease | None,
) -> dict[str, Any]:
    """Compute the stage from its inputs into its partial directory and commit it (its lock held);
    with a store, under this machine's `lease`, and uploaded once committed."""
    log = get_run_logger()
    upstream = stage.upstream_stages if stage.definition.keyed_on_inputs else []
    with shared_locks([u.readers_path for u in upstream]):  # no rebuild swaps an input until committed
        changed = stage.inputs_changed()
        if changed:
            raise StageError(f"{', '.join(changed)} was rebuilt by another run since this stage was planned; run again")
        check_inputs_intact(upstream)
        out_dir = stage.prepare_partial(fresh=force)
        if lease is not None and stage.definition.resumable and not force:
            restored = lease.restore_checkpoints(out_dir)
            if restored:
                log.info(f"{stage.name}: resuming from the previous holder's checkpoints: {', '.join(restored)}")
        for aside in stage.set_aside_broken_checkpoints():
            log.warning(f"{stage.name}: checkpoint is corrupt, set aside as {aside}; resuming from the newest intact")
        inputs = {u.name: u.dir for u in upstream}
        started = time.time()
        with lease.kept(out_dir, log.info, log.warning) if lease else nullcontext():
            try:
                if placement is None:
                    out = compute_stage(stage, inputs, out_dir, env)
                else:
                    out = compute_placed(stage, inputs, out_dir, env, placement)
            except Exception:
                if lease is not None and lease.lost.is_set():  # stopped because another machine took over
                    lease.check()
                raise
        if lease is not None:
            lease.check()  # never commit a stage whose lease another machine holds now
        commit(stage, out.summary, out.info, env.run_id, started)  # replaces a forced stage's old copy only now
    if store is not None and lease is not None:
        store.push(stage, overwrite=force)
        lease.clear_checkpoints()
    return {"dir": str(stage.dir), "computed": True, "artifacts": out.artifacts}


@task(persist_result=False, cache_policy=NO_CACHE, retry_delay_seconds=[2, 10], retry_condition_fn=_retryable)
def run_stage(stage: Stage, env: StageEnv, force: bool = False, placement: Placement | None = None) -> State:
    """Compute one stage into its partial dir and commit it; a finished dir is reused (state `Cached`).

    `placement` is set for stages that fan out (see flows/fanout.py): their threads, GPU and process.
    """
    try:
        result = _compute(stage, env, force, placement)
    except Exception as e:
        message = user_error(e)
        if message is None or getattr(e, "transient", False):
            scrub_exception(e)  # Prefect stores the failed state's message on its server
            raise
        return Failed(name=BAD_INPUT, message=message)
    if result["computed"]:
        return Completed(data=result)
    return Completed(name=CACHED, data=result, message=f"reused {stage.dir}")


def stage_task(stage: Stage) -> Task[..., State]:
    """`run_stage` named after the stage, with its definition's retries."""
    return run_stage.with_options(name=stage.kind, task_run_name=stage.name, retries=stage.definition.retries)
