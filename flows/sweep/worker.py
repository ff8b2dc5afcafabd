"""Running one trial: its pipeline run in this process, or in a spawned worker when trials run at once.

Trials in flight at once each get a worker process of their own (a trial's stages seed torch's
global RNG and set its thread count, so two trials must not share a process). Workers talk to the
sweep's Prefect API, stop with the sweep process (PR_SET_PDEATHSIG), and close their MLflow runs
as KILLED when stopped.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from tasks.child_process import die_with_parent, interrupt


def run_trial(config: dict[str, Any], workspace: str, tags: dict[str, str]) -> dict[str, Any]:
    """One pipeline run of a trial's config; returns its MLflow run id and each stage's outcome.

    Raises StageError with the stage's one-line message when a stage fails on bad input.
    """
    from flows.pipeline import run_pipeline

    result = run_pipeline(config, workspace, tags=tags)
    return {"run_id": result["run_id"], "stages": dict(result["stages"])}


def init_worker(parent: int, api_url: str | None, threads: int) -> None:
    """First thing in a trial worker: die with the sweep, use its Prefect API, keep to its share of the cores."""
    die_with_parent(parent)()
    signal.signal(signal.SIGTERM, interrupt)
    if api_url:
        os.environ["PREFECT_API_URL"] = api_url
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)
