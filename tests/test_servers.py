"""`gptflow servers up|down`: real PostgreSQL, MLflow server and Prefect server, and the pipeline against them.

The stack tests are marked `servers` (`pytest -m servers`; about four minutes on 2 cores): one
stack for the module (tests/stack_fixture.py), the micro pipeline run twice from one workspace and
once from a second one ("another machine"), then a dead server restarted and the stack stopped.
The bad-input tests at the top start nothing and run with the default suite.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from cli_helpers import gptflow
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from procs import alive, descendants
from stack_fixture import TeamStack, recorded, servers_cli

from flows.servers.errors import ServersError
from flows.servers.postgres import find_binaries
from flows.servers.procs import Proc, listening, session_members

ROOT = Path(__file__).resolve().parents[1]
MICRO = ROOT / "configs" / "micro.yaml"
EXPERIMENT = "servers-e2e"
STAGES = {
    "corpus",
    "tokenizer",
    "encode",
    "pretrain",
    "finetune[sst2]",
    "finetune[story_cloze]",
    "evaluate[sst2]",
    "evaluate[story_cloze]",
    "report",
}
LOOPBACK = "0100007F"  # 127.0.0.1 as /proc/net/tcp writes it


# --- bad input: one line, exit 2, nothing started ---------------------------------------------------------------


def test_missing_postgres_names_the_apt_package(tmp_path):
    with pytest.raises(ServersError, match=r"neither on PATH nor in .*; install PostgreSQL's server: apt-get install"):
        find_binaries(path=str(tmp_path), debian_glob=str(tmp_path / "postgresql" / "*" / "bin"))


def test_binaries_come_from_path_else_the_newest_debian_version(tmp_path):
    for version in ("9.6", "15", "13"):
        bin_dir = tmp_path / "postgresql" / version / "bin"
        bin_dir.mkdir(parents=True)
        for tool in ("initdb", "pg_ctl", "postgres"):
            (bin_dir / tool).write_text("#!/bin/sh\n")
            (bin_dir / tool).chmod(0o755)
    debian = str(tmp_path / "postgresql" / "*" / "bin")
    assert find_binaries(path=str(tmp_path / "empty"), debian_glob=debian) == tmp_path / "postgresql" / "15" / "bin"
    on_path = tmp_path / "postgresql" / "9.6" / "bin"
    assert find_binaries(path=str(on_path), debian_glob=debian) == on_path


def test_port_in_use_is_one_line(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = gptflow("servers", "up", "--dir", str(tmp_path / "stack"), "--mlflow-port", str(port))
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == (
        f"gptflow: error: port {port} on 127.0.0.1 (--mlflow-port) cannot be used: Address already in use; "
        "pick another, or 0 for a free one"
    )
    assert not (tmp_path / "stack" / "postgres").exists() and r.stdout == ""


def test_dir_that_cannot_be_a_directory_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    r = gptflow("servers", "up", "--dir", str(tmp_path / "file" / "stack"))
    assert r.returncode == 2
    assert r.stderr.strip() == (
        f"gptflow: error: --dir {tmp_path / 'file' / 'stack'} is not a writable directory (Not a directory); "
        "choose another"
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="as root only: PostgreSQL then runs as another user")
def test_as_root_a_dir_the_postgres_user_cannot_reach_is_one_line(tmp_path):
    try:
        find_binaries()
    except ServersError:
        pytest.skip("PostgreSQL is not installed")
    (tmp_path / "private").mkdir(mode=0o700)
    r = gptflow("servers", "up", "--dir", str(tmp_path / "private" / "stack"))
    assert r.returncode == 2
    assert re.fullmatch(
        r"gptflow: error: PostgreSQL refuses to run as root, so it runs as user \w+, "
        r"who cannot reach \S+/stack/postgres \(\S+ is mode 700\); "
        r"choose a --dir others can pass through, or chmod o\+x \S+\n",
        r.stderr,
    ), r.stderr


def test_down_never_signals_a_pid_that_now_belongs_to_another_process(tmp_path):
    sleeper = subprocess.Popen(["sleep", "120"], start_new_session=True)
    try:
        me = Proc.of(sleeper.pid)
        assert me is not None
        foreign = {"pid": me.pid, "start_ticks": me.start_ticks - 1, "boot_id": me.boot_id, "port": 1}
        (tmp_path / "servers.json").write_text(json.dumps({"servers": {"mlflow": foreign}}))
        r = gptflow("servers", "down", "--dir", str(tmp_path))
        assert r.returncode == 0 and "mlflow    was not running" in r.stderr
        assert sleeper.poll() is None  # same pid, another start time: not ours
        (tmp_path / "servers.json").write_text(json.dumps({"servers": {"mlflow": {**foreign, **me.to_json()}}}))
        r = gptflow("servers", "down", "--dir", str(tmp_path))
        assert f"mlflow    stopped (pids {me.pid})" in r.stderr
        assert sleeper.wait(timeout=30) == -signal.SIGTERM
        assert json.loads((tmp_path / "servers.json").read_text())["servers"]["mlflow"]["pid"] is None
    finally:
        sleeper.kill()
        sleeper.wait()
    assert gptflow("servers", "down", "--dir", str(tmp_path / "none")).stderr.startswith("nothing to stop")


# --- the stack ------------------------------------------------------------------------------------------------------


@pytest.mark.servers
def test_up_starts_three_answering_servers_on_loopback_only(team_servers: TeamStack):
    import httpx

    state = team_servers.state()
    servers = state["servers"]
    assert team_servers.env == {
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{servers['mlflow']['port']}",
        "PREFECT_API_URL": f"http://127.0.0.1:{servers['prefect']['port']}/api",
    }
    for name in ("postgres", "mlflow", "prefect"):
        assert re.search(rf"^{name} .* ready in \d+\.\d s", team_servers.up.stderr, re.M), team_servers.up.stderr
        assert set(listening(servers[name]["port"])) == {LOOPBACK}, name
        assert Proc.from_json(servers[name]).running(), name
    print(f"\nstart times: { {n: e['start_seconds'] for n, e in servers.items()} } s")
    assert httpx.get(f"{team_servers.env['MLFLOW_TRACKING_URI']}/health").status_code == 200
    assert httpx.get(f"{team_servers.env['PREFECT_API_URL']}/health").status_code == 200
    bin_dir = Path(state["bin_dir"])
    ready = subprocess.run([str(bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(servers["postgres"]["port"])])
    assert ready.returncode == 0
    # the database password: in a 0600 file, in no command line and not in servers.json
    password_file = team_servers.dir / "postgres.password"
    assert password_file.stat().st_mode & 0o777 == 0o600
    password = password_file.read_text().strip()
    assert password not in (team_servers.dir / "servers.json").read_text()
    for pid in (p for name in ("mlflow", "prefect") for p in session_members(Proc.from_json(servers[name]))):
        assert password not in Path(f"/proc/{pid}/cmdline").read_text()
    # up again: the same servers, said so, the same variables
    again = servers_cli("up", "--dir", str(team_servers.dir))
    assert again.returncode == 0 and "is already running" in again.stderr
    assert again.stdout == team_servers.up.stdout
    assert recorded(team_servers.state()) == recorded(state)
    status = servers_cli("status", "--dir", str(team_servers.dir))
    assert status.returncode == 0 and status.stdout.count("answering") == 3


@dataclass
class Machine:
    """A workspace on "one machine" that ran the pipeline against the shared servers."""

    workspace: Path
    run_ids: list[str]


def run_pipeline(stack: TeamStack, ws: Path, *extra: str) -> str:
    r = stack.gptflow("run", "--config", str(MICRO), "--workspace", str(ws), "--experiment", EXPERIMENT, *extra)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"open the UI at {stack.env['MLFLOW_TRACKING_URI']}" in r.stdout
    return re.search(r"^MLflow run (\w+) ", r.stdout, re.M).group(1)


@pytest.fixture(scope="module")
def machine_a(team_servers: TeamStack, tmp_path_factory) -> Machine:
    """The micro pipeline, twice (the second run reuses every stage), from one workspace."""
    ws = tmp_path_factory.mktemp("machine-a")
    return Machine(ws, [run_pipeline(team_servers, ws), run_pipeline(team_servers, ws)])


def client_of(stack: TeamStack) -> MlflowClient:
    uri = stack.env["MLFLOW_TRACKING_URI"]
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def children_of(client: MlflowClient, parent: str) -> dict[str, Run]:
    exp = client.get_run(parent).info.experiment_id
    return {r.data.tags["stage"]: r for r in client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent}'")}


@pytest.mark.servers
def test_pipeline_runs_land_on_the_tracking_server_with_proxied_artifacts(team_servers, machine_a, tmp_path):
    client = client_of(team_servers)
    first, second = machine_a.run_ids
    parent = client.get_run(first)
    assert parent.info.status == "FINISHED" and parent.data.tags["gptflow.kind"] == "pipeline"
    assert 0 <= parent.data.metrics["sst2.accuracy"] <= 1 and "story_cloze.accuracy" in parent.data.metrics
    assert parent.data.metrics["pretrain.final_val_loss"] < parent.data.metrics["pretrain.initial_val_loss"]
    children = children_of(client, first)
    assert set(children) == STAGES
    assert {c.data.tags["cached"] for c in children.values()} == {"false"}
    assert all(c.info.status == "FINISHED" for c in children.values())
    history = client.get_metric_history(children["pretrain"].info.run_id, "train_loss")
    assert len(history) >= 4 and history[-1].value < history[0].value
    reused = children_of(client, second)
    assert {n: c.data.tags["cached"] for n, c in reused.items()} == {n: str(n != "report").lower() for n in STAGES}
    # artifacts go through the server's proxy: mlflow-artifacts:/ URIs, files in the stack's folder, not the workspace
    assert parent.info.artifact_uri.startswith("mlflow-artifacts:/")
    report = Path(client.download_artifacts(first, "report.md", str(tmp_path)))
    assert first in report.read_text()
    assert (team_servers.dir / "mlartifacts").is_dir() and list((team_servers.dir / "mlartifacts").rglob("report.md"))
    assert not (machine_a.workspace / "mlflow.db").exists() and not (machine_a.workspace / "mlartifacts").exists()
    model = {a.path for a in client.list_artifacts(children["pretrain"].info.run_id, "model")}
    assert "model/model.safetensors" in model


@pytest.mark.servers
def test_registry_report_compare_and_predict_against_the_server(team_servers, machine_a, tmp_path):
    client = client_of(team_servers)
    first, second = machine_a.run_ids
    best = client.get_model_version_by_alias(f"{EXPERIMENT}-sst2", "best")
    assert best.run_id == children_of(client, first)["evaluate[sst2]"].info.run_id
    assert client.get_model_version_by_alias(f"{EXPERIMENT}-pretrained", "best").source.startswith("mlflow-artifacts:/")
    ws = str(machine_a.workspace)
    r = team_servers.gptflow("report", first, "--out", str(tmp_path / "card"), "--workspace", ws)
    assert r.returncode == 0, r.stderr[-2000:]
    assert first in (tmp_path / "card" / "report.md").read_text() and (tmp_path / "card" / "report.html").is_file()
    r = team_servers.gptflow("compare", "--experiment", EXPERIMENT, "--format", "csv", "--workspace", ws)
    assert r.returncode == 0, r.stderr[-2000:]
    assert {first, second} <= set(pd.read_csv(io.StringIO(r.stdout))["run_id"])
    argv = ["predict", "--model", f"models:/{EXPERIMENT}-sst2@best", "--task", "sst2", "--text", "a fine film"]
    r = team_servers.gptflow(*argv, "--workspace", ws)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split("\t")[0] in ("negative", "positive")
    r = team_servers.gptflow("ui", "--workspace", ws)
    assert r.returncode == 0 and team_servers.env["MLFLOW_TRACKING_URI"] in r.stdout


@pytest.mark.servers
def test_prefect_server_holds_the_flow_runs_and_their_stage_task_runs(team_servers, machine_a):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort
    from prefect.settings import PREFECT_API_URL, temporary_settings

    client = client_of(team_servers)
    states = []
    with (
        temporary_settings({PREFECT_API_URL: team_servers.env["PREFECT_API_URL"]}),
        get_client(sync_client=True) as prefect,
    ):
        for run_id in machine_a.run_ids:
            flow_run_id = uuid.UUID(client.get_run(run_id).data.tags["prefect_flow_run_id"])
            flow_run = prefect.read_flow_run(flow_run_id)
            assert flow_run.state is not None and flow_run.state.is_completed()
            task_runs = prefect.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                sort=TaskRunSort.EXPECTED_START_TIME_DESC,
                limit=200,
            )
            states.append({t.name: t.state.name for t in task_runs if t.state is not None})
    first, second = states
    assert first == {n: "Completed" for n in STAGES}
    assert second == {n: "Completed" if n == "report" else "Cached" for n in STAGES}


@pytest.mark.servers
def test_two_workspaces_log_to_one_server_and_compare_on_one_table(team_servers, machine_a, tmp_path_factory):
    ws = tmp_path_factory.mktemp("machine-b")
    other = run_pipeline(team_servers, ws, "--set", "finetune.tasks=[sst2]", "--set", "pretrain.max_steps=20")
    r = team_servers.gptflow("compare", "--experiment", EXPERIMENT, "--format", "csv", "--workspace", str(ws))
    assert r.returncode == 0, r.stderr[-2000:]
    table = pd.read_csv(io.StringIO(r.stdout)).set_index("run_id")
    assert set(table.index) == {*machine_a.run_ids, other}
    assert table.loc[other, "pretrain.max_steps"] == 20
    assert (table.loc[machine_a.run_ids, "pretrain.max_steps"] == 40).all()
    assert table["sst2.accuracy"].notna().all()
    client = client_of(team_servers)
    assert len(client.search_model_versions(f"name = '{EXPERIMENT}-sst2'")) == 2  # one per computed evaluate[sst2]


@pytest.mark.servers
def test_machines_creating_one_experiment_at_once_share_it(team_servers):
    """Two machines' first runs of a new experiment race to create it on the server; both must get the one id."""
    from tasks.tracking import Tracker

    name, ids, errors = f"race-{uuid.uuid4().hex[:8]}", [], []
    barrier = threading.Barrier(8)

    def start() -> None:
        barrier.wait()
        try:
            ids.append(Tracker(team_servers.env["MLFLOW_TRACKING_URI"], name, None).experiment_id)
        except Exception as e:  # noqa: BLE001 - collected and shown by the assert
            errors.append(repr(e))

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(ids) == 8 and len(set(ids)) == 1


@pytest.mark.servers
def test_up_restarts_a_dead_server_on_its_port_and_keeps_the_live_ones(team_servers):
    before = team_servers.state()["servers"]
    dead = Proc.from_json(before["prefect"])
    for pid in session_members(dead):
        os.kill(pid, signal.SIGKILL)
    status = servers_cli("status", "--dir", str(team_servers.dir))
    assert status.returncode == 1 and "prefect   not running" in status.stdout
    r = servers_cli("up", "--dir", str(team_servers.dir))
    assert r.returncode == 0, r.stderr
    assert "restarted (prefect)" in r.stderr and r.stdout == team_servers.up.stdout
    after = team_servers.state()["servers"]
    assert after["prefect"]["pid"] != before["prefect"]["pid"] and after["prefect"]["port"] == before["prefect"]["port"]
    for name in ("postgres", "mlflow"):
        assert Proc.from_json(after[name]) == Proc.from_json(before[name])
    assert servers_cli("status", "--dir", str(team_servers.dir)).returncode == 0


@pytest.mark.servers
def test_down_stops_exactly_what_up_started(team_servers):
    state = team_servers.state()
    servers = state["servers"]
    postmaster = Proc.from_json(servers["postgres"])
    ours = {pid for name in ("mlflow", "prefect") for pid in session_members(Proc.from_json(servers[name]))}
    ours |= {postmaster.pid, *descendants(postmaster.pid)}
    bystander = subprocess.Popen(["sleep", "120"])
    try:
        r = servers_cli("down", "--dir", str(team_servers.dir))
        assert r.returncode == 0, r.stderr
        assert not [pid for pid in ours if alive(pid)]
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()
    for name in ("postgres", "mlflow", "prefect"):
        assert listening(servers[name]["port"]) == [], name
    assert not (Path(servers["postgres"]["data"]) / "postmaster.pid").exists()
    assert all(e["pid"] is None for e in team_servers.state()["servers"].values())
    again = servers_cli("down", "--dir", str(team_servers.dir))
    assert again.returncode == 0 and again.stderr.count("was not running") == 3
