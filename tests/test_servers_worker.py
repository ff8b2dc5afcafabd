"""The team stack beyond one `gptflow run`: a deployment on a process work pool run by `prefect worker`,
the Prefect UI's page of that flow run (a Chromium screenshot), and a tracking server that dies
mid-run (one line naming it; the rerun continues, nothing finished is recomputed or lost).

Runs against `gptflow servers up` (tests/stack_fixture.py); `pytest -m servers`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from stack_fixture import ROOT, TeamStack

MICRO = ROOT / "configs" / "micro.yaml"
OUTPUT = Path(__file__).resolve().parent / "output"  # screenshots (git-ignored)
POOL = "gptflow-test"
STAGES = {"corpus", "tokenizer", "encode", "pretrain", "finetune[sst2]", "evaluate[sst2]", "report"}


@contextmanager
def prefect_client(stack: TeamStack) -> Iterator:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: stack.env["PREFECT_API_URL"]}), get_client(sync_client=True) as client:
        yield client


def run_scheduled(stack: TeamStack, deployment_id: uuid.UUID) -> uuid.UUID:
    """Schedule a run of the deployment for now, and let one `prefect worker --run-once` pick it up and run it."""
    from prefect.states import Scheduled

    with prefect_client(stack) as client:
        run = client.create_flow_run_from_deployment(deployment_id, state=Scheduled())
    worker = subprocess.run(
        [str(Path(sys.executable).with_name("prefect")), "worker", "start", "--pool", POOL, "--run-once"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, **stack.env, "PYTHONPATH": str(ROOT)},
    )
    assert worker.returncode == 0, worker.stderr[-3000:]
    return run.id


def task_states(stack: TeamStack, flow_run_id: uuid.UUID) -> dict[str, str]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    flow_runs = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    with prefect_client(stack) as client:  # `sort` given: Prefect 3.8's server rejects the client's default (null)
        runs = client.read_task_runs(flow_run_filter=flow_runs, sort=TaskRunSort.EXPECTED_START_TIME_DESC, limit=200)
    return {t.name: t.state.name for t in runs if t.state is not None}


@pytest.mark.servers
def test_a_worker_runs_the_deployment_and_the_ui_shows_the_flow_run(team_servers, tmp_path):
    ws = tmp_path / "ws"
    r = team_servers.gptflow(
        "serve", "--pool", POOL, "--name", "nightly", "--cron", "0 3 * * *", "--config", str(MICRO),
        "--workspace", str(ws), "--set", "finetune.tasks=[sst2]",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"run it with: prefect worker start --pool {POOL}" in r.stdout
    with prefect_client(team_servers) as client:
        deployment = client.read_deployment_by_name("gptflow-pipeline/nightly")
        pool = client.read_work_pool(POOL)
    assert pool.type == "process" and deployment.work_pool_name == POOL
    assert [s.schedule.cron for s in deployment.schedules] == ["0 3 * * *"]  # type: ignore[union-attr]
    env = deployment.job_variables["env"]
    assert env["MLFLOW_TRACKING_URI"] == team_servers.env["MLFLOW_TRACKING_URI"] and env["GPTFLOW_HOME"] == str(ws)

    first = run_scheduled(team_servers, deployment.id)
    second = run_scheduled(team_servers, deployment.id)
    with prefect_client(team_servers) as client:
        runs = [client.read_flow_run(first), client.read_flow_run(second)]
    assert all(run.state is not None and run.state.is_completed() for run in runs), [r.state for r in runs]
    assert task_states(team_servers, first) == {n: "Completed" for n in STAGES}
    assert task_states(team_servers, second) == {n: "Completed" if n == "report" else "Cached" for n in STAGES}
    assert (ws / "artifacts" / "pretrain").is_dir()  # the worker's run used the deployment's workspace

    from mlflow.tracking import MlflowClient

    mlflow = MlflowClient(team_servers.env["MLFLOW_TRACKING_URI"])
    parents = mlflow.search_runs(
        [e.experiment_id for e in mlflow.search_experiments()], f"tags.prefect_flow_run_id = '{first}'"
    )
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium; .ci/run installs it)")
    from test_ui import Browser

    ui = team_servers.env["PREFECT_API_URL"].removesuffix("/api")
    browser = Browser(chromium, 1600, 1000)
    try:  # the rerun's page: its timeline of stages, then its Task Runs tab, the reused stages Cached
        browser.send("Page.navigate", url=f"{ui}/runs/flow-run/{second}")
        opened = browser.wait_for(f"document.body.innerText.includes({runs[1].name!r} + '')")
        time.sleep(2)  # the timeline is drawn on a canvas: no text to wait for
        png = browser.screenshot(OUTPUT / "prefect_ui_flow_run.png")
        browser.eval(
            "[...document.querySelectorAll('*')]"
            ".filter(e => !e.children.length && e.textContent.trim() === 'Task Runs').forEach(e => e.click())"
        )
        shown = browser.wait_for(
            "document.body.innerText.includes('pretrain') && document.body.innerText.includes('Cached')"
        )
        browser.screenshot(OUTPUT / "prefect_ui_task_runs.png")
    finally:
        browser.close()
    assert opened and shown, "the Prefect UI never showed the rerun's task runs as Cached"
    assert png.stat().st_size > 20_000  # a rendered page, not a blank one


@pytest.mark.servers
def test_tracking_server_killed_mid_run_then_the_rerun_continues(team_servers, tmp_path):
    """The MLflow server dies while pretraining runs: one line naming it; after `servers up` brings it
    back, the rerun reuses the finished stages and resumes pretraining from its checkpoint."""
    ws = tmp_path / "ws"
    argv = [
        sys.executable, "-m", "flows.cli", "run", "--config", str(MICRO), "--workspace", str(ws),
        "--experiment", "gptflow-server-killed", "--set", "finetune.tasks=[sst2]",
        "--set", "pretrain.max_steps=400", "--set", "pretrain.ckpt_every=10", "--set", "pretrain.val_every=200",
    ]  # fmt: skip
    env = {
        **os.environ,
        **team_servers.env,
        "PYTHONPATH": str(ROOT),
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",  # fail in seconds, not after MLflow's minutes of retries
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    }
    run = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while not list((ws / "artifacts" / "pretrain").glob("*.partial/checkpoints/last.ckpt")):
        assert run.poll() is None, run.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "pretraining never wrote a checkpoint"
        time.sleep(0.2)
    mlflow_server = team_servers.state()["servers"]["mlflow"]
    os.killpg(mlflow_server["pid"], signal.SIGKILL)  # the server and its workers
    out, err = run.communicate(timeout=600)
    uri = team_servers.env["MLFLOW_TRACKING_URI"]
    assert run.returncode == 2, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last == (
        f"gptflow: error: the MLflow tracking server {uri} (MLFLOW_TRACKING_URI) stopped answering; "
        "rerun once it is back: finished stages are kept"
    ), err[-3000:]
    finished_before = {p.parent.parent.name for p in (ws / "artifacts").glob("*/*/manifest.json")}
    assert {"corpus", "tokenizer", "encode"} <= finished_before and "pretrain" not in finished_before

    up = subprocess.run(
        [sys.executable, "-m", "flows.cli", "servers", "up", "--dir", str(team_servers.dir)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert up.returncode == 0, up.stderr[-2000:]
    rerun = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    outcomes = dict(re.findall(r"^  (\S+) +(computed|cached)$", rerun.stdout, re.M))
    assert [outcomes.get(s) for s in ("corpus", "tokenizer", "encode", "pretrain")] == [
        "cached",
        "cached",
        "cached",
        "computed",
    ], rerun.stdout

    pretrain = json.loads(next((ws / "artifacts" / "pretrain").glob("*/manifest.json")).read_text())
    assert pretrain["summary"]["resumed_from_step"] >= 10 and pretrain["summary"]["steps"] == 400

    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("gptflow-server-killed")
    parents = client.search_runs([exp.experiment_id], "tags.`gptflow.kind` = 'pipeline'")
    assert len(parents) == 2  # the killed run is kept, and the rerun says it continues it
    killed = next(p for p in parents if p.info.status != "FINISHED")
    rerun_parent = next(p for p in parents if p.info.status == "FINISHED")
    assert rerun_parent.data.tags.get("resumes") == killed.info.run_id
    killed_children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{killed.info.run_id}'")
    finished = {c.data.tags["stage"] for c in killed_children if c.info.status == "FINISHED"}
    assert {"corpus", "tokenizer", "encode"} <= finished  # what was logged before the server died is still there
