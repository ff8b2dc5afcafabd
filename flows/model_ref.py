"""Resolve what a user passes as `--model` to a gptflow model directory (config.json + model.safetensors).

Accepted: a model directory, a pretrain stage directory (its `model/`), or an MLflow run id in the
workspace's store: a pretrain stage's child run or a pipeline's parent run (its pretrain child). The
run's `cache_key` tag names the stage directory under the workspace's artifacts. This is the one
place to extend with more reference kinds (e.g. `models:/NAME@ALIAS`).
"""

from __future__ import annotations

from pathlib import Path

from flows.workspace import Workspace
from gpt.config.fields import ConfigError
from gpt.model.config import CONFIG_FILE, WEIGHTS_FILE
from tasks.pretrain_job import MODEL_DIR

MODEL_FILES = (CONFIG_FILE, WEIGHTS_FILE)


def _is_model_dir(d: Path) -> bool:
    return all((d / name).is_file() for name in MODEL_FILES)


def _from_dir(d: Path, key: str) -> Path:
    for candidate in (d, d / MODEL_DIR):
        if _is_model_dir(candidate):
            return candidate
    raise ConfigError(f"{key} {d}: neither a model directory nor a pretrain stage directory (no {MODEL_FILES[1]})")


def _from_run(run_id: str, ws: Workspace, key: str) -> Path:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(ws.tracking_uri)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ConfigError(f"{key} {run_id}: not a directory, nor a run in the store {ws.tracking_uri}") from None
    tags = run.data.tags
    if tags.get("stage_kind") != "pretrain":
        children = client.search_runs(
            [run.info.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{run_id}' and tags.stage_kind = 'pretrain'",
            max_results=1,
        )
        if not children:
            raise ConfigError(f"{key} {run_id}: run has no pretrain stage (neither a pretrain nor a pipeline run)")
        tags = children[0].data.tags
    stage_dir = ws.artifacts / "pretrain" / tags["cache_key"]
    if not stage_dir.is_dir():
        raise ConfigError(f"{key} {run_id}: its pretrain output {stage_dir} is gone; rerun the pipeline")
    return _from_dir(stage_dir, key)


def resolve_model_dir(ref: str, ws: Workspace, key: str = "--model") -> Path:
    """The model directory `ref` names (a directory, an MLflow run id, or a registered model
    `models:/NAME@ALIAS` / `models:/NAME/VERSION`); ConfigError says why not."""
    if ref.startswith("models:/"):
        from tasks.registry import resolve_model_uri

        return _from_dir(resolve_model_uri(ref, ws.tracking_uri)[0], key)
    path = Path(ref).expanduser()
    if path.is_dir():
        return _from_dir(path, key)
    return _from_run(ref, ws, key)
