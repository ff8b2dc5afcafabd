"""Notifications through apprise (`notify:` in the config): a run that failed, or finished.

Sent from the Prefect flows' state hooks (`on_failure`, `on_completion`), not from the CLI's end
of run: a hook runs in whichever process runs the flow, so it covers `gptflow run`, every scheduled
run of `gptflow serve` or of a work-pool deployment (a Prefect runner or worker subprocess the CLI
never sees) and a sweep. The hook reads what it says back from MLflow: the pipeline parent run
tagged with the flow run's id, and its FAILED stage run (`stage` and `error` tags).

- failure: one message naming the failed stage and its one-line error, and the run (its MLflow
  URL when the tracking URI is http(s), else its run id and `gptflow report RUN_ID`);
- finish (with `on: [..., finish]`): the run's headline figures (reports/headline.py) and where
  its report card is.

A sweep sends one message for the whole sweep (its own flow's hooks): the first failing trial's
stage and error, or on finish the best trial. Its trials are pipeline runs, and their own hooks
stay quiet, so a 20-trial sweep sends one message, not 20. Each round of `run --until-decided` is a
separate `gptflow run` and reports like one.

Sending never fails the run: a target that cannot be reached is a warning line on stderr (naming
`notify.urls[i]` by its scheme only: the URL is a credential). Interrupted runs (Ctrl-C, SIGTERM)
send nothing.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from mlflow.entities import Run
from prefect import Flow
from prefect.client.schemas.objects import FlowRun
from prefect.states import State

from flows.workspace import Workspace
from gpt.config.loader import from_dict
from gpt.config.notify import NotifyConfig
from gpt.config.secrets import mask_secret, redact_text, redact_url, reveal_config, strip_credentials

FAILURE, FINISH = "failure", "finish"
SWEEP_TAG = "sweep"  # reports/sweep_compare.py: a trial's pipeline run carries it in the flow's `tags`


def warn(message: str) -> None:
    """One warning line on stderr (credentials redacted)."""
    print(f"gptflow: warning: {redact_text(message)}", file=sys.stderr, flush=True)


def send(notify: NotifyConfig, title: str, body: str, failure: bool = False) -> int:
    """Send one message to every URL of `notify`; returns how many were delivered.

    Each URL is sent on its own, so one dead target neither hides nor blocks the others; apprise's own
    log (which quotes parts of the URLs) is muted, and a failure is a warning line naming `notify.urls[i]`.
    """
    import apprise

    kind = apprise.NotifyType.FAILURE if failure else apprise.NotifyType.SUCCESS
    log = logging.getLogger("apprise")
    muted, log.disabled = log.disabled, True
    delivered = 0
    try:
        for i, url in enumerate(notify.urls):
            target = apprise.Apprise()
            try:
                ok = bool(target.add(url)) and bool(target.notify(body=body, title=title, notify_type=kind))
            except Exception as e:  # a plugin's own bug must not end the run
                ok = False
                warn(f"notify.urls[{i}] ({mask_secret(url)}): {type(e).__name__}")
            if ok:
                delivered += 1
            else:
                warn(f"notification to notify.urls[{i}] ({mask_secret(url)}) was not delivered")
    finally:
        log.disabled = muted
    return delivered


def _notify_section(config: dict[str, Any]) -> NotifyConfig | None:
    """The run's `notify` section with its real URLs (they are passed to the flow redacted)."""
    section = config.get("notify") or {}
    if not section.get("urls"):
        return None
    return from_dict(NotifyConfig, reveal_config({"notify": section})["notify"], prefix="notify.")


def run_link(tracking_uri: str, experiment_id: str, run_id: str, workspace: str) -> str:
    """Where to look at a run: its MLflow UI URL (no credentials) for an http(s) tracking server, else
    its id and the command that writes its report card."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"{strip_credentials(tracking_uri).rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return (
        f"MLflow run {run_id} (store {redact_url(tracking_uri)}); "
        f"report card: gptflow report {run_id} --workspace {workspace}"
    )


def _first_line(text: str) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return lines[0] if lines else ""


def _pipeline_message(flow_run: FlowRun, state: State, outcome: str) -> tuple[str, str]:
    """(title, body) of a pipeline run's message, read back from MLflow (best effort: an unreachable
    tracking server, maybe the very cause of the failure, leaves the flow state's own message)."""
    from mlflow.tracking import MlflowClient

    from reports.headline import headline
    from tasks.runner import BAD_INPUT

    config, workspace = flow_run.parameters["config"], str(flow_run.parameters["workspace"])
    experiment = str(config.get("experiment", "gptflow"))
    ws = Workspace(Path(workspace))
    where = f"Prefect flow run '{flow_run.name}' (MLflow not reachable)"
    error = _first_line(state.message or "the flow failed")
    lines: list[str] = []
    try:
        client = MlflowClient(tracking_uri=ws.tracking_uri)
        found = client.get_experiment_by_name(experiment)
        parents: list[Run] = []
        if found is not None:
            parents = client.search_runs(
                [found.experiment_id],
                filter_string=f"tags.prefect_flow_run_id = '{flow_run.id}' and tags.`gptflow.kind` = 'pipeline'",
                max_results=1,
            )
        where = f"Prefect flow run '{flow_run.name}' (no MLflow run)"
        if parents:
            parent = parents[0]
            where = run_link(ws.tracking_uri, parent.info.experiment_id, parent.info.run_id, workspace)
            if outcome == FINISH:
                lines = headline(ws.tracking_uri, parent.info.run_id, ws.artifacts)
            elif state.name != BAD_INPUT:  # a BadInput message names its stage already; an error does not
                children = f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
                failed = client.search_runs(
                    [parent.info.experiment_id],
                    filter_string=f"{children} and attributes.status = 'FAILED'",
                    order_by=["attributes.end_time ASC"],
                )
                if failed:
                    tags = failed[0].data.tags
                    error = f"stage '{tags.get('stage', '?')}': {_first_line(tags.get('error', '')) or error}"
                    if len(failed) > 1:
                        error += f" (and {len(failed) - 1} more stages failed)"
    except Exception as e:  # the message goes out with what is known
        warn(f"notification: MLflow not read back ({type(e).__name__}: {e})")
    if outcome == FINISH:
        body = "\n".join([*(lines or ["(no figures logged)"]), f"run: {where}"])
        return f"gptflow: run finished ({experiment})", redact_text(body)
    return f"gptflow: run failed ({experiment})", redact_text(f"{error}\nrun: {where}")


def _pipeline_hook(outcome: str, flow_run: FlowRun, state: State) -> None:
    try:
        if (flow_run.parameters.get("tags") or {}).get(SWEEP_TAG):  # a sweep trial: the sweep reports
            return
        notify = _notify_section(flow_run.parameters.get("config") or {})
        if notify is None or outcome not in notify.on:
            return
        title, body = _pipeline_message(flow_run, state, outcome)
        send(notify, title, body, failure=outcome == FAILURE)
    except Exception as e:  # the run's outcome stands whatever happens here
        warn(f"no notification sent: {type(e).__name__}: {e}")


def on_pipeline_failure(flow: Flow[..., Any], flow_run: FlowRun, state: State) -> None:
    """Prefect `on_failure` hook of the pipeline flow: one message naming the failed stage and its error."""
    _pipeline_hook(FAILURE, flow_run, state)


def on_pipeline_completion(flow: Flow[..., Any], flow_run: FlowRun, state: State) -> None:
    """Prefect `on_completion` hook of the pipeline flow: the headline figures, when `finish` is in `notify.on`."""
    _pipeline_hook(FINISH, flow_run, state)


def _sweep_message(flow_run: FlowRun, state: State, outcome: str) -> tuple[str, str]:
    """(title, body) of a sweep's message: its best trial, or the trial that failed and why (MLflow is read
    back best effort, as for a pipeline run)."""
    from mlflow.tracking import MlflowClient

    from flows.sweep.plan import plan_sweep
    from gpt.config.experiment import ExperimentConfig
    from tasks.stage import user_error

    config, workspace = reveal_config(flow_run.parameters["config"]), str(flow_run.parameters["workspace"])
    plan = plan_sweep(from_dict(ExperimentConfig, config))
    ws = Workspace(Path(workspace))
    lines = [f"sweep {plan.sweep_id} finished"]
    if outcome == FAILURE:
        error = state.result(raise_on_failure=False)
        why = (user_error(error) or f"{type(error).__name__}: {error}") if isinstance(error, BaseException) else ""
        lines = [f"sweep {plan.sweep_id}: {_first_line(why or state.message or 'the sweep failed')}"]
    try:
        client = MlflowClient(tracking_uri=ws.tracking_uri)
        found = client.get_experiment_by_name(plan.base.experiment)
        in_sweep = f"tags.`{SWEEP_TAG}` = '{plan.sweep_id}'"
        latest = ["attributes.start_time DESC"]
        if found is not None and outcome == FINISH:
            runs = client.search_runs(
                [found.experiment_id], f"{in_sweep} and tags.`gptflow.kind` = 'sweep'", order_by=latest, max_results=1
            )
            for run in runs:
                best, trials = run.data.tags.get("best_trial"), run.data.params.get("trials", "?")
                value = run.data.metrics.get(f"best.{plan.metric}")
                shown = f"{value:.4f}" if value is not None else "not logged"
                lines.append(
                    f"{trials} trials; best trial {best}: {plan.metric} = {shown}" if best else f"{trials} trials"
                )
                if run.data.tags.get("best_run"):
                    link = run_link(ws.tracking_uri, run.info.experiment_id, run.data.tags["best_run"], workspace)
                    lines.append(f"best run: {link}")
        elif found is not None:
            failed = client.search_runs(
                [found.experiment_id],
                f"{in_sweep} and tags.`gptflow.kind` = 'pipeline' and attributes.status = 'FAILED'",
                order_by=latest,
                max_results=1,
            )
            for run in failed:
                link = run_link(ws.tracking_uri, run.info.experiment_id, run.info.run_id, workspace)
                lines.append(f"trial {run.data.tags.get('trial', '?')}: {link}")
    except Exception as e:
        warn(f"notification: MLflow not read back ({type(e).__name__}: {e})")
    lines.append(f"compare: gptflow compare --sweep {plan.sweep_id} --workspace {workspace}")
    verb = "finished" if outcome == FINISH else "failed"
    return f"gptflow: sweep {verb} ({plan.base.experiment})", redact_text("\n".join(lines))


def _sweep_hook(outcome: str, flow_run: FlowRun, state: State) -> None:
    try:
        notify = _notify_section(flow_run.parameters.get("config") or {})
        if notify is None or outcome not in notify.on:
            return
        title, body = _sweep_message(flow_run, state, outcome)
        send(notify, title, body, failure=outcome == FAILURE)
    except Exception as e:
        warn(f"no notification sent: {type(e).__name__}: {e}")


def on_sweep_failure(flow: Flow[..., Any], flow_run: FlowRun, state: State) -> None:
    """Prefect `on_failure` hook of the sweep flow: one message for the sweep (its trials send none)."""
    _sweep_hook(FAILURE, flow_run, state)


def on_sweep_completion(flow: Flow[..., Any], flow_run: FlowRun, state: State) -> None:
    """Prefect `on_completion` hook of the sweep flow: the best trial, when `finish` is in `notify.on`."""
    _sweep_hook(FINISH, flow_run, state)
