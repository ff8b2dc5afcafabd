"""MLflow bookkeeping for a pipeline run: one parent run, one nested child run per stage.

Uses `MlflowClient` with explicit run ids rather than mlflow's fluent active-run stack, so
Lightning's MLFlowLogger, Prefect task threads and the flow all write to the right run.
"""

from __future__ import annotations

import math
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from gpt.config.secrets import redact_text
from tasks.locks import pid_alive
from tasks.stage import Stage


def git_commit() -> str:
    """The checkout's commit (with '-dirty' when modified), or 'unknown' outside git."""
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True).stdout
        return sha + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _finite(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and math.isfinite(v)}


def _start_ticks(pid: int) -> str | None:
    """The process's start time in clock ticks (Linux /proc), to tell a live pid from a reused one."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def owner_tags() -> dict[str, str]:
    """Who is running this pipeline: host, pid and the pid's start time."""
    return {
        "gptflow.host": socket.gethostname(),
        "gptflow.pid": str(os.getpid()),
        "gptflow.pid_start": _start_ticks(os.getpid()) or "",
    }


def _owner_alive(tags: dict[str, str]) -> bool:
    """Whether the process recorded in `owner_tags` still runs (only decidable on the same host)."""
    if tags.get("gptflow.host") != socket.gethostname() or not tags.get("gptflow.pid", "").isdigit():
        return True
    pid = int(tags["gptflow.pid"])
    if not pid_alive(pid):
        return False
    return _start_ticks(pid) == (tags.get("gptflow.pid_start") or _start_ticks(pid))


class Tracker:
    """Creates and closes the parent and child runs of one `gptflow run`."""

    def __init__(self, tracking_uri: str, experiment: str, artifact_location: str | None):
        # The registry lives in the same store; without registry_uri MLflow would use the process-global URI.
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self.tracking_uri = tracking_uri
        self.experiment_id = self._experiment(experiment, artifact_location)
        self.parent_id: str | None = None

    def _experiment(self, name: str, artifact_location: str | None) -> str:
        """The experiment's id, creating it first if needed. On a shared tracking server another machine may
        create it between the lookup and the create (the workspace's lock covers one machine only): then use theirs."""
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=artifact_location)
        except MlflowException as e:
            found = self.client.get_experiment_by_name(name)
            if e.error_code != "RESOURCE_ALREADY_EXISTS" or found is None:
                raise
            return found.experiment_id

    def close_orphans(self) -> list[Run]:
        """Mark RUNNING pipeline and stage runs whose process is gone (SIGKILL, power loss) as FAILED.

        Returns the orphaned parent runs, so the new run can link to the one it resumes.
        """
        host = socket.gethostname().replace("'", "")
        experiment_ids = [e.experiment_id for e in self.client.search_experiments()]
        running = self.client.search_runs(
            experiment_ids, filter_string=f"attributes.status = 'RUNNING' and tags.`gptflow.host` = '{host}'"
        )
        parents = []
        for run in running:
            if _owner_alive(run.data.tags):
                continue
            self.client.set_tag(run.info.run_id, "gptflow.ended_by", f"process {run.data.tags['gptflow.pid']} is gone")
            self.client.set_terminated(run.info.run_id, "FAILED")
            if run.data.tags.get("gptflow.kind") == "pipeline":
                parents.append(run)
        return parents

    def start_parent(self, run_name: str, params: dict[str, Any], tags: dict[str, str]) -> str:
        """The run that stands for the whole pipeline: flattened config as params."""
        tags = {**tags, **owner_tags(), "gptflow.kind": "pipeline"}
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        self.parent_id = run.info.run_id
        items = [Param(k, redact_text(str(v))) for k, v in params.items()]  # the caller masks secret fields
        for i in range(0, len(items), 100):
            self.client.log_batch(self.parent_id, params=items[i : i + 100])
        return self.parent_id

    def start_child(self, stage: Stage) -> str:
        """A nested run for one stage, tagged with its name and cache key."""
        assert self.parent_id is not None
        tags = {
            "mlflow.parentRunId": self.parent_id,
            "stage": stage.name,
            "stage_kind": stage.kind,
            "cache_key": stage.key,
            "gptflow.kind": "stage",
            **owner_tags(),
        }
        if stage.variant:
            tags["task"] = stage.variant.name
        return self.client.create_run(self.experiment_id, run_name=stage.name, tags=tags).info.run_id

    def finish_child(self, run_id: str, stage: Stage, manifest: dict[str, Any], cached: bool) -> None:
        """Tag cached/producer, log the stage's summary metrics, and copy them onto the parent.

        Three round trips to the store (the child's tags and metrics in one batch, the parent's metrics, the
        end): a fully cached rerun's stages are all bookkeeping."""
        tags = [RunTag("cached", str(cached).lower())]
        producer = manifest.get("produced_by_run")
        if cached and producer:
            tags.append(RunTag("produced_by", producer))
        summary = _finite(manifest.get("summary", {}))
        ts = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, v, ts, 0) for k, v in summary.items()], tags=tags)
        # evaluate[sst2] -> sst2.accuracy (the comparison table's columns); finetune[sst2] -> finetune.sst2.*;
        # lm_eval's metrics are already named lm_eval/<task>/<metric>
        evaluated = stage.variant if stage.kind == "evaluate" else None
        prefix = evaluated.name if evaluated else stage.name.replace("[", ".").rstrip("]")
        if stage.kind == "lm_eval":  # at the step of the weights evaluated: checkpoints make a curve
            self.log_metrics(self.parent_id, summary, step=getattr(stage.section, "at_step", 0))
        else:
            self.log_metrics(self.parent_id, {f"{prefix}.{k}": v for k, v in summary.items()})
        self.client.set_terminated(run_id, "FINISHED")

    def fail(self, run_id: str, error: BaseException | str, status: str = "FAILED") -> None:
        """Close a run as FAILED (or KILLED), keeping the error message as a tag."""
        self.client.set_tag(run_id, "error", redact_text(str(error) or type(error).__name__)[:5000])
        self.client.set_terminated(run_id, status)

    def log_metrics(self, run_id: str | None, metrics: dict[str, float], step: int = 0) -> None:
        """Log several metrics at one step in one call."""
        if run_id is None or not metrics:
            return
        ts = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, v, ts, step) for k, v in metrics.items()])

    def log_artifacts(self, run_id: str, paths: list[Path], artifact_path: str | None = None) -> None:
        """Copy files or directories into the run's artifact store."""
        for p in paths:
            if p.is_dir():
                self.client.log_artifacts(run_id, str(p), artifact_path=f"{artifact_path or ''}{p.name}".strip("/"))
            elif p.is_file():
                self.client.log_artifact(run_id, str(p), artifact_path=artifact_path)

    def end_parent(self, status: str = "FINISHED") -> None:
        """Close the pipeline run."""
        if self.parent_id is not None:
            self.client.set_terminated(self.parent_id, status)
