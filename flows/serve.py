"""`gptflow serve`: the pipeline as a scheduled Prefect deployment, served by this process (flow.serve).

Without PREFECT_API_URL the deployment lives on a temporary API owned by this process (printed
at start, so `prefect deployment run` or `run_deployment` can reach it); with it, on that server.
Scheduled runs execute in subprocesses started by Prefect's runner, with the same workspace.
"""

from __future__ import annotations

import os
from typing import Any

from flows.api_server import prefect_api
from flows.workspace import Workspace
from gpt.config.experiment import ExperimentConfig
from gpt.config.fields import ConfigError


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
        print(f"serving deployment 'gptflow-pipeline/{name}' (cron {cron!r}) on the Prefect API at {url}", flush=True)
        pipeline.serve(
            name=name,
            cron=cron,
            parameters={"config": cfg.to_dict(), "workspace": str(ws.root), **selection},
            tags=["gptflow", cfg.experiment],
            print_starting_message=False,
        )
