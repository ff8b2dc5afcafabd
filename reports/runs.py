"""Reading a pipeline run back from MLflow: its stage runs, their artifacts and metric histories."""

from __future__ import annotations

import os
import re
from pathlib import Path

from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

# Reports download a handful of small files; MLflow's per-download progress bars would only add noise.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

# Parent-run metric prefixes that belong to stages, not tasks (evaluate copies `<task>.<metric>`).
STAGE_PREFIXES = ("corpus", "tokenizer", "encode", "pretrain", "finetune", "report")
# `<variant>.<metric>` on the parent run, e.g. sst2.accuracy, sst2-no_pretraining.accuracy, sst2-seed2.f1
TASK_METRIC = re.compile(r"^(?P<variant>[^./]+)\.(?P<metric>[^./]+)$")
# the suffixes a variant name adds to its task (ablations `no_*`, fine-tuning seeds `seedN`), see tasks/variants.py
VARIANT_PART = re.compile(r"^(no_[a-z0-9_]+|seed\d+)$")


def split_variant(name: str) -> tuple[str, str | None]:
    """`sst2-no_aux_lm-seed2` -> ("sst2", "no_aux_lm-seed2"); `sst2` -> ("sst2", None)."""
    parts = name.split("-")
    i = len(parts)
    while i > 1 and VARIANT_PART.match(parts[i - 1]):
        i -= 1
    return "-".join(parts[:i]), "-".join(parts[i:]) or None


def child_runs(client: MlflowClient, parent: Run) -> list[Run]:
    """The stage runs nested under a pipeline run, oldest first."""
    runs = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
        order_by=["attributes.start_time ASC"],
    )
    return list(runs)


def stage_runs(client: MlflowClient, parent: Run) -> dict[str, Run]:
    """Stage name -> its child run (the latest one if a stage appears twice)."""
    return {r.data.tags["stage"]: r for r in child_runs(client, parent) if "stage" in r.data.tags}


def producer(run: Run) -> str:
    """The run holding a stage's artifacts: the one that computed it (cached runs point to it)."""
    return run.data.tags.get("produced_by") or run.info.run_id


def download(client: MlflowClient, run: Run, path: str, dst: Path) -> Path | None:
    """Download a stage artifact (file or directory) from its producing run, or None when absent."""
    dst.mkdir(parents=True, exist_ok=True)
    try:
        local = Path(client.download_artifacts(producer(run), path, str(dst)))
    except (MlflowException, OSError):
        return None
    return local if local.exists() else None


def list_artifact_paths(client: MlflowClient, run: Run, path: str | None = None) -> list[str]:
    """Artifact paths directly under `path` of a stage's producing run."""
    try:
        return [a.path for a in client.list_artifacts(producer(run), path)]
    except (MlflowException, OSError):
        return []


def history(client: MlflowClient, run: Run, key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of a metric, sorted by step (last value per step), from the producing run."""
    by_step: dict[int, float] = {}
    try:
        points = client.get_metric_history(producer(run), key)
    except MlflowException:
        return [], []
    for m in sorted(points, key=lambda m: (m.step, m.timestamp)):
        by_step[m.step] = m.value
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def metric_keys(client: MlflowClient, run: Run) -> list[str]:
    """Names of all metrics of a stage's producing run (the run's own when that run is not in this store,
    e.g. a stage reused from another workspace's artifacts)."""
    try:
        src = run if producer(run) == run.info.run_id else client.get_run(producer(run))
    except MlflowException:
        src = run
    return sorted(src.data.metrics)

