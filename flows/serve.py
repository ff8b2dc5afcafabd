"""`gptflow serve`: the pipeline as a scheduled Prefect deployment.

Served by this process (flow.serve): without PREFECT_API_URL the deployment lives on a temporary
API owned by this process (printed at start, so `prefect deployment run` or `run_deployment` can
reach it); with it, on that server. Scheduled runs execute in subprocesses started by Prefect's
runner, with the same workspace.

With `--pool NAME` it is deployed to a process work pool on the Prefect server instead and this
process exits: `prefect worker start --pool NAME`, on any machine with gptflow installed, runs
the scheduled runs. The deployment's source is this checkout, and the environment a run needs
(workspace, tracking URI, store) goes in its job variables, without credentials: a worker's own
environment supplies those (MLFLOW_TRACKING_USERNAME / _PASSWORD / _TOKEN, AWS_*).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from flows.api_server import prefect_api
from flows.workspace import Workspace
from gpt.config.experiment import ExperimentConfig
from gpt.config.fields import ConfigError
from gpt.config.secrets import export_secrets, redacted_config, strip_credentials


def check_cron(cron: str) -> None:
    """Reject a malformed cron expression before anything starts."""
    from prefect.client.schemas.schedules import CronSchedule
    from pydantic import ValidationError

    try:
        CronSchedule(cron=cron)
    except ValidationError:
        raise ConfigError(f"--cron {cron!r} is not a valid cron expression (minute hour day month weekday)") from None


def serve(cfg: ExperimentConfig, ws: Workspace, cron: str, name: str | None, selection: dict[str, Any]) -> None:
    """Register the deployment `gptflow-pipeline/<name>` with a cron schedule and serve it until interrupted."""
    from prefect.settings import PREFECT_API_URL

    from flows.pipeline import pipeline

    check_cron(cron)
    name = name or f"gptflow-{cfg.experiment}"
    with prefect_api():
        url = PREFECT_API_URL.value()
        os.environ["PREFECT_API_URL"] = url  # for the runner's flow-run subprocesses
        export_secrets(cfg)  # they inherit the config's credentials too; the stored parameters hold none
        print(f"serving deployment 'gptflow-pipeline/{name}' (cron {cron!r}) on the Prefect API at {url}", flush=True)
        pipeline.serve(
            name=name,
            cron=cron,
            parameters={"config": redacted_config(cfg), "workspace": str(ws.root), **selection},
            tags=["gptflow", cfg.experiment],
            print_starting_message=False,
        )


# What a pipeline run needs from the deploying shell, passed to the worker's flow-run process.
FORWARDED_ENV = ("MLFLOW_TRACKING_URI", "GPTFLOW_STORE", "GPTFLOW_MIRROR")


def without_credentials(url: str) -> str:
    """`url` without its `user:password@`: a deployment's job variables are stored on the Prefect server."""
    return strip_credentials(url)


def ensure_process_pool(pool: str) -> None:
    """Create the process work pool `pool` on the Prefect server unless it exists."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client, contextlib.suppress(ObjectAlreadyExists):
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))


def deploy(
    cfg: ExperimentConfig, ws: Workspace, cron: str, name: str | None, selection: dict[str, Any], pool: str
) -> str:
    """Register `gptflow-pipeline/<name>` with a cron schedule on the work pool `pool` of the Prefect
    server at PREFECT_API_URL; returns the deployment id. A `prefect worker` on the pool runs it."""
    from prefect.settings import PREFECT_API_URL

    import flows
    from flows.pipeline import pipeline

    check_cron(cron)
    if not PREFECT_API_URL.value():
        raise ConfigError(
            "--pool needs a Prefect server: set PREFECT_API_URL (`gptflow servers up` starts one on this machine)"
        )
    name = name or f"gptflow-{cfg.experiment}"
    ensure_process_pool(pool)
    checkout = Path(flows.__file__).resolve().parents[1]
    env = {key: without_credentials(os.environ[key]) for key in FORWARDED_ENV if os.environ.get(key)}
    env["GPTFLOW_HOME"] = str(ws.root)
    source = pipeline.from_source(source=str(checkout), entrypoint="flows/pipeline.py:pipeline")
    # `Flow.deploy` asks the server for the pool's workers with a request Prefect 3.8's own server rejects
    # (422: null limit); `to_deployment` + `apply` registers the same deployment without that check.
    deployment = source.to_deployment(  # type: ignore[union-attr]  # a Flow here; its stub also allows a Coroutine
        name=name,
        work_pool_name=pool,
        cron=cron,
        parameters={"config": cfg.to_dict(), "workspace": str(ws.root), **selection},
        job_variables={"env": env},
        tags=["gptflow", cfg.experiment],
    )
    deployment_id = deployment.apply()  # type: ignore[union-attr]  # sync here (async_dispatch)
    print(
        f"deployed 'gptflow-pipeline/{name}' (cron {cron!r}) to work pool {pool!r} on {PREFECT_API_URL.value()}\n"
        f"run it with: prefect worker start --pool {pool}",
        flush=True,
    )
    return str(deployment_id)
