"""The sweep's own MLflow run: its trials' table (`sweep.csv`), the best trial, and how to find its trial runs.

Trial runs are ordinary pipeline parent runs tagged `sweep=<id>` and `trial=<n>`; the sweep run
is tagged `gptflow.kind=sweep` (so `compare` of pipeline runs leaves it out) and `sweep=<id>`.
"""

from __future__ import annotations

import json
import math

import pandas as pd
from mlflow.tracking import MlflowClient

from flows.sweep.plan import SweepPlan
from flows.sweep.table import TrialResult
from gpt.config.secrets import redact_text
from reports.sweep_compare import GOAL_TAG, KEYS_TAG, METRIC_TAG, SWEEP_TAG, TABLE_FILE
from tasks.tracking import owner_tags

TRIAL_TAG = "trial"


def start_sweep_run(client: MlflowClient, experiment_id: str, plan: SweepPlan, total: int) -> str:
    """Open the sweep run (RUNNING until the last trial is in)."""
    tags = {
        **owner_tags(),
        "gptflow.kind": "sweep",
        SWEEP_TAG: plan.sweep_id,
        KEYS_TAG: json.dumps(list(plan.sweep.params)),
        METRIC_TAG: plan.metric,
        GOAL_TAG: plan.goal,
        "config_hash": plan.base.digest(),
    }
    run = client.create_run(experiment_id, run_name=plan.sweep_id, tags=tags)
    client.log_param(run.info.run_id, "method", plan.sweep.method)
    client.log_param(run.info.run_id, "trials", total)
    client.log_param(run.info.run_id, "params", redact_text(json.dumps(plan.sweep.params, default=str))[:6000])
    return run.info.run_id


def finish_sweep_run(
    client: MlflowClient, run_id: str, table: pd.DataFrame, best: TrialResult | None, plan: SweepPlan, status: str
) -> None:
    """Log the trial table and the best trial (tag `best_trial`, metric `best.<metric>`), then close the run."""
    if not table.empty:
        client.log_text(run_id, redact_text(table.to_csv(index=False)), TABLE_FILE)
    if best is not None:
        client.set_tag(run_id, "best_trial", str(best.trial.number))
        client.set_tag(run_id, "best_run", best.run_id)
        value = table.loc[table["trial"] == best.trial.number, plan.metric].iloc[0]
        if math.isfinite(value):
            client.log_metric(run_id, f"best.{plan.metric}", float(value))
    client.set_terminated(run_id, status)
