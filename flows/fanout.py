"""Fan-out of the independent fine-tune/evaluate stages through a Prefect task runner (`fanout:`).

The runner is Prefect's own: ThreadPoolTaskRunner, or prefect-dask's DaskTaskRunner / prefect-ray's
RayTaskRunner (a local cluster, or an existing one at `fanout.address`). At most
`max_concurrency` stages are in flight, whatever the runner, and a stage is submitted only once
its upstream stages have finished, so a failed fine-tune never starts its evaluation. On the
thread runner each slot has a worker process of its own that computes its stages
(tasks/child_process.py); Dask and Ray workers are processes already.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import nullcontext
from typing import Any

from prefect.futures import PrefectFuture, as_completed
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from flows.stage_book import INTERRUPTS, StageBook
from gpt.config.experiment import FanoutConfig
from tasks.child_process import Placement, stage_workers, stop_workers
from tasks.placement import visible_gpus
from tasks.stage import Stage


def concurrency(cfg: FanoutConfig) -> int:
    """`fanout.max_concurrency`, else one stage per visible GPU, else one."""
    return cfg.max_concurrency or max(1, visible_gpus())


def stage_threads(cfg: FanoutConfig, slots: int) -> int:
    """torch CPU threads per concurrent stage: `fanout.threads_per_stage`, else the cores shared out."""
    return cfg.threads_per_stage or max(1, (os.cpu_count() or 1) // slots)


def _worker_env(threads: int) -> dict[str, str]:
    """What a local cluster's worker processes need: the flow's Prefect API and a thread budget."""
    from prefect.settings import PREFECT_API_URL

    env = {"OMP_NUM_THREADS": str(threads)}
    if PREFECT_API_URL.value():  # set for this process only (flows/api_server.py), not in os.environ
        env["PREFECT_API_URL"] = PREFECT_API_URL.value()
    return env


def make_runner(cfg: FanoutConfig, slots: int, threads: int) -> TaskRunner:
    """The Prefect task runner `fanout.runner` names, sized to `slots` workers when it starts a local cluster."""
    if cfg.runner == "dask":
        from prefect_dask import DaskTaskRunner

        logging.getLogger("distributed").setLevel(logging.WARNING)  # its INFO lines would drown the progress bars
        if cfg.address:
            return DaskTaskRunner(address=cfg.address)
        kwargs = {"n_workers": slots, "threads_per_worker": 1, "processes": True, "env": _worker_env(threads)}
        return DaskTaskRunner(cluster_kwargs={**kwargs, "dashboard_address": None})
    if cfg.runner == "ray":
        from prefect_ray import RayTaskRunner

        if cfg.address:
            return RayTaskRunner(address=cfg.address)
        return RayTaskRunner(init_kwargs={"num_cpus": slots, "runtime_env": {"env_vars": _worker_env(threads)}})
    return ThreadPoolTaskRunner(max_workers=slots)


def concurrent(cfg: FanoutConfig) -> bool:
    """Whether fan-out stages go through the task runner: a cluster runner, or more than one at a time."""
    return cfg.runner != "thread" or concurrency(cfg) > 1


def fans_out(stage: Stage) -> bool:
    """Whether a stage is one of the independent per-variant stages."""
    return stage.definition.fans_out


def groups(selected: list[Stage]) -> Iterator[tuple[bool, list[Stage]]]:
    """The selected stages in plan order, split into runs of fan-out stages and of the rest."""
    run: list[Stage] = []
    for stage in selected:
        if run and fans_out(run[-1]) != fans_out(stage):
            yield fans_out(run[-1]), run
            run = []
        run.append(stage)
    if run:
        yield fans_out(run[-1]), run


def run_concurrently(book: StageBook, stages: list[Stage], cfg: FanoutConfig) -> str | None:
    """Run independent stages through the configured runner, at most `concurrency(cfg)` at once.

    Returns the first bad-input message (stages in flight still finish and are recorded; no new
    one starts); other failures are raised once the stages in flight have settled.
    """
    slots = concurrency(cfg)
    threads = stage_threads(cfg, slots)
    own_workers = cfg.runner == "thread"  # Dask and Ray workers are processes already
    names = {s.name for s in stages}
    pending = list(stages)
    done: set[str] = set()
    free = list(range(slots))
    in_flight: dict[PrefectFuture[Any], tuple[Stage, str, int]] = {}
    error: str | None = None
    raised: BaseException | None = None
    workers = stage_workers(threads, visible_gpus()) if own_workers else nullcontext()
    with workers as start_worker, make_runner(cfg, slots, threads) as runner:  # a local cluster starts here
        try:
            while True:
                for stage in [] if error or raised else list(pending):
                    if not free:
                        break
                    if all(u in done for u in stage.upstream if u in names):
                        pending.remove(stage)
                        slot = free.pop(0)
                        placement = Placement(threads, slot if own_workers else None)
                        child = book.begin(stage)
                        task, params = book.call(stage, child, placement)
                        if start_worker is not None and book.computes(stage):  # None: not own_workers
                            start_worker(slot)
                        in_flight[runner.submit(task, params)] = (stage, child, slot)
                if not in_flight:
                    break
                future = next(as_completed(list(in_flight)))
                future.wait()  # records the final state on the future (its `state` would ask the API)
                stage, child, slot = in_flight.pop(future)
                free.append(slot)
                try:
                    message = book.settle(stage, child, future.state)
                except INTERRUPTS:
                    raise
                except BaseException as e:
                    raised = raised or e
                    continue
                if message:
                    error = error or message
                else:
                    done.add(stage.name)
        except INTERRUPTS as e:
            stop_workers()  # else the runner's exit would wait for their stages to finish
            for _, child, _ in in_flight.values():
                book.tracker.fail(child, e, "KILLED")
            raise
    if raised is not None:
        raise raised
    return error
