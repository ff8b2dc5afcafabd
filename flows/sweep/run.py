"""Running a sweep: trials in batches as wide as `fanout.max_concurrency`, recorded as they finish.

One trial at a time (the default on CPU), trials are sub-flows of the `gptflow-sweep` flow in this
process; several at once, each runs in a worker process of its own (flows/sweep/worker.py). Either
way a trial is an ordinary pipeline run, so a stage two trials share is computed by whichever asks
first (under the stage key's lock) and reused by the other, and a rerun of a killed sweep reuses
every finished trial's stages and resumes the interrupted one from its checkpoints.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient
from prefect import flow

from flows.fanout import concurrency, stage_threads
from flows.notify import on_sweep_completion, on_sweep_failure
from flows.stage_book import INTERRUPTS
from flows.sweep.plan import SweepPlan, plan_sweep
from flows.sweep.record import SWEEP_TAG, TRIAL_TAG, finish_sweep_run, start_sweep_run
from flows.sweep.table import TrialResult, best_result, metric_spread, trial_table
from flows.sweep.trials import Trial
from flows.sweep.worker import init_worker, run_trial
from flows.workspace import Workspace
from gpt.config.experiment import ExperimentConfig
from gpt.config.loader import from_dict
from gpt.config.secrets import install_log_redaction, reveal_config, scrub_exception
from tasks.locks import file_lock
from tasks.tracking import Tracker

# the (config, tags) of each trial of a batch -> each one's {"run_id", "stages"}, in the same order
Execute = Callable[[list[tuple[dict[str, Any], dict[str, str]]]], list[dict[str, Any]]]


@dataclass
class SweepOutcome:
    """A finished sweep: its MLflow run, the trials' results and the best one."""

    run_id: str
    results: list[TrialResult]
    best: TrialResult | None


@contextmanager
def trial_executor(slots: int, threads: int, workspace: str) -> Iterator[Execute]:
    """Run a batch of trials: in this process one after another, or in `slots` worker processes at once.

    Leaving early (an error, Ctrl-C) terminates the workers at once: each closes its MLflow runs as
    KILLED, and a rerun resumes their stages from checkpoints.
    """
    if slots == 1:
        yield lambda batch: [run_trial(config, workspace, tags) for config, tags in batch]
        return
    from prefect.settings import PREFECT_API_URL

    init = (os.getpid(), PREFECT_API_URL.value(), threads)
    pool = get_context("spawn").Pool(slots, initializer=init_worker, initargs=init)

    def execute(batch: list[tuple[dict[str, Any], dict[str, str]]]) -> list[dict[str, Any]]:
        pending = [pool.apply_async(run_trial, (config, workspace, tags)) for config, tags in batch]
        return [p.get() for p in pending]

    try:
        yield execute
    except BaseException:
        pool.terminate()
        raise
    else:
        pool.close()
    finally:
        pool.join()


def in_worker(cfg_dict: dict[str, Any], threads: int) -> dict[str, Any]:
    """A trial's config for a worker process: its stages one at a time on the worker's share of the cores.

    Placement fields only: the trial's stage keys are those of the same trial run alone.
    """
    fanout = {**cfg_dict["fanout"], "runner": "thread", "max_concurrency": 1, "threads_per_stage": threads}
    return {**cfg_dict, "fanout": fanout}


@flow(name="gptflow-sweep", on_failure=[on_sweep_failure], on_completion=[on_sweep_completion])
def sweep_flow(config: dict[str, Any], workspace: str) -> SweepOutcome:
    """Every trial of the sweep, batch by batch, a line for each as it ends; the sweep's MLflow run holds
    the trials' table and the best trial. `config` comes redacted (gpt/config/secrets.py); one `notify:`
    message reports the whole sweep (flows/notify.py)."""
    install_log_redaction()
    plan = plan_sweep(from_dict(ExperimentConfig, reveal_config(config)))
    ws = Workspace(Path(workspace))
    source = plan.source()
    slots = concurrency(plan.base.fanout)
    threads = stage_threads(plan.base.fanout, slots)  # each trial's torch threads when several run at once
    with file_lock(ws.root / "mlflow.lock"):  # concurrent runs would race creating the store and experiment
        tracker = Tracker(ws.tracking_uri, plan.base.experiment, ws.artifact_location)
    client: MlflowClient = tracker.client
    run_id = start_sweep_run(client, tracker.experiment_id, plan, source.total)
    results: list[TrialResult] = []
    keys = list(plan.sweep.params)
    status = "FAILED"
    try:
        with trial_executor(slots, threads, workspace) as execute:
            while batch := source.next_batch(slots):
                configs = [_trial_config(plan, trial, slots, threads) for trial in batch]
                tags = [{SWEEP_TAG: plan.sweep_id, TRIAL_TAG: str(trial.number)} for trial in batch]
                for trial, done in zip(batch, execute(list(zip(configs, tags, strict=True))), strict=True):
                    metrics = client.get_run(done["run_id"]).data.metrics
                    stages = {name: outcome for name, outcome in done["stages"].items() if name != "report"}
                    result = TrialResult(trial, done["run_id"], stages, metrics)  # each run writes its own report
                    spread = metric_spread(metrics, plan.metric)
                    source.tell(trial, spread.mean if spread else None)
                    results.append(result)
                    print(_progress_line(result, source.total, plan.metric), flush=True)
        status = "FINISHED"
    except INTERRUPTS:
        status = "KILLED"
        raise
    except Exception as e:
        scrub_exception(e)  # its message becomes the flow state's, stored by Prefect
        raise
    finally:
        best = best_result(results, plan.metric, plan.goal)
        finish_sweep_run(client, run_id, trial_table(results, keys, plan.metric, plan.goal), best, plan, status)
    return SweepOutcome(run_id, results, best)


def _trial_config(plan: SweepPlan, trial: Trial, slots: int, threads: int) -> dict[str, Any]:
    config = plan.trial_config(trial).to_dict()
    return in_worker(config, threads) if slots > 1 else config


def _progress_line(result: TrialResult, total: int, metric: str) -> str:
    spread = metric_spread(result.metrics, metric)
    value = f"{spread.mean:.4f}" if spread else "not logged"
    reused = len(result.stages) - result.computed()
    return (
        f"trial {result.trial.number}/{total} ({result.trial.label()}): {metric}={value}; "
        f"{result.computed()} stages computed, {reused} reused; run {result.run_id}"
    )
