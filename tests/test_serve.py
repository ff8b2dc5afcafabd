"""`gptflow serve --cron`: a real deployment with a cron schedule on the process's own Prefect API,
and one run of it triggered with `run_deployment`."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.cli import main

ROOT = Path(__file__).resolve().parents[1]
MICRO = ROOT / "configs" / "micro.yaml"


def test_bad_cron_is_one_line(tmp_path, capsys):
    code = main(["serve", "--cron", "61 * * *", "--config", str(MICRO), "--workspace", str(tmp_path)])
    assert code == 2
    assert (
        capsys.readouterr().err.strip()
        == "gptflow: error: --cron '61 * * *' is not a valid cron expression (minute hour day month weekday)"
    )


def registered(name: str, get_client, proc: subprocess.Popen, timeout: float = 180):
    """The deployment, once `flow.serve` has registered it (it prints its banner first)."""
    from prefect.exceptions import ObjectNotFound

    deadline = time.monotonic() + timeout
    while True:
        try:
            with get_client(sync_client=True) as client:
                return client.read_deployment_by_name(name)
        except ObjectNotFound:
            assert proc.poll() is None and time.monotonic() < deadline, "the deployment was never registered"
            time.sleep(0.5)


@pytest.mark.slow
def test_served_deployment_has_the_schedule_and_runs(tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    argv = [sys.executable, "-m", "flows.cli", "serve", "--cron", "0 3 * * *", "--config", str(MICRO)]
    argv += ["--workspace", str(tmp_path), "--only", "corpus", "--name", "nightly"]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        line = proc.stdout.readline()
        url = re.search(r"Prefect API at (\S+)", line)
        assert url, line + proc.stdout.read() if proc.poll() is not None else line
        with temporary_settings({PREFECT_API_URL: url.group(1)}):
            deployment = registered("gptflow-pipeline/nightly", get_client, proc)
            assert [s.schedule.cron for s in deployment.schedules] == ["0 3 * * *"]
            assert deployment.parameters["only"] == ["corpus"]
            flow_run = run_deployment("gptflow-pipeline/nightly", timeout=300, poll_interval=1)
        assert flow_run.state.is_completed(), flow_run.state
        assert list((tmp_path / "artifacts" / "corpus").glob("*/manifest.json"))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
