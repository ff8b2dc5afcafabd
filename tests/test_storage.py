"""Stages shared through a store beyond one disk (`--store` / GPTFLOW_STORE): a second local directory
through `file://`, and an S3 bucket on moto's S3-compatible server on 127.0.0.1.

Unit tests drive `tasks.remote_store.RemoteStore` directly; the slow tests run the real pipeline in
two workspaces (two "machines") that share one store: the second recomputes nothing.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from flows.cli import main
from tasks.remote_store import STORE_ENV, RemoteStore, StoreError, normalize_url
from tasks.stage import MANIFEST, Stage, commit
from tasks.stages import BY_KIND

ROOT = Path(__file__).resolve().parents[1]
MICRO = ROOT / "configs" / "micro.yaml"
DATA_STAGES = ["corpus", "tokenizer", "encode"]


def make_stage(workspace: Path, kind: str = "tokenizer") -> Stage:
    """A stage of a given kind keyed like a real one; the same arguments give the same key in any workspace."""
    return Stage(kind, BY_KIND[kind], {"vocab_size": 512}, [], workspace / "artifacts")


def committed_stage(workspace: Path, kind: str = "tokenizer") -> Stage:
    """A committed stage directory with a top-level file and a nested one."""
    stage = make_stage(workspace, kind)
    out = stage.prepare_partial()
    (out / "tokenizer.json").write_text(json.dumps({"merges": list(range(100))}))
    (out / "model").mkdir()
    (out / "model" / "weights.bin").write_bytes(os.urandom(4096))
    commit(stage, {"vocab": 512.0}, {}, "run-a")
    return stage


def test_push_then_pull_into_a_second_workspace(tmp_path):
    store = RemoteStore((tmp_path / "store").as_uri())
    a = committed_stage(tmp_path / "a")
    assert store.push(a) is True
    remote = tmp_path / "store" / "artifacts" / "tokenizer" / a.key
    assert sorted(p.relative_to(remote).as_posix() for p in remote.rglob("*") if p.is_file()) == [
        MANIFEST,
        "model/weights.bin",
        "tokenizer.json",
    ]
    assert store.push(a) is False  # already there: nothing uploaded

    b = make_stage(tmp_path / "b")
    assert b.key == a.key and not b.is_done()
    assert store.pull(b) is True
    assert b.is_done() and b.verify(deep=True) == []
    assert b.manifest() == a.manifest()  # the producer's manifest, run id included: not recomputed
    assert (b.dir / "model" / "weights.bin").read_bytes() == (a.dir / "model" / "weights.bin").read_bytes()
    assert b.last_completed() == b.inputs_record()
    assert not (b.dir.parent / f"{b.key}.pull").exists()


def test_pull_is_a_no_op_when_the_store_lacks_the_stage(tmp_path):
    store = RemoteStore((tmp_path / "store").as_uri())
    stage = make_stage(tmp_path / "b")
    assert store.pull(stage) is False
    assert not stage.dir.exists()


def test_pull_refuses_a_store_copy_whose_sha256_does_not_match(tmp_path):
    store = RemoteStore((tmp_path / "store").as_uri())
    store.push(committed_stage(tmp_path / "a", kind="pretrain"))
    b = make_stage(tmp_path / "b", kind="pretrain")
    weights = tmp_path / "store" / "artifacts" / "pretrain" / b.key / "model" / "weights.bin"
    weights.write_bytes(bytes(weights.stat().st_size))  # same size, other content: only sha256 can tell
    ckpt = b.prepare_partial() / "last.ckpt"  # a killed local run's checkpoint must survive a refused pull
    ckpt.write_bytes(b"checkpoint")
    with pytest.raises(StoreError) as err:
        store.pull(b)
    message = str(err.value)
    assert "model/weights.bin does not match its sha256" in message and "--rebuild pretrain" in message
    assert store.stage_url(b) in message and "\n" not in message
    assert not b.dir.exists() and not (b.dir.parent / f"{b.key}.pull").exists()
    assert ckpt.read_bytes() == b"checkpoint"


def test_pull_refuses_a_manifest_that_points_outside_the_stage(tmp_path):
    store = RemoteStore((tmp_path / "store").as_uri())
    a = committed_stage(tmp_path / "a")
    store.push(a)
    manifest_path = tmp_path / "store" / "artifacts" / "tokenizer" / a.key / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["../../escape"] = {"sha256": "0" * 64, "bytes": 1}
    manifest_path.write_text(json.dumps(manifest))
    b = make_stage(tmp_path / "b")
    with pytest.raises(StoreError, match="outside the stage"):
        store.pull(b)
    assert not b.dir.exists()


def test_manifest_is_uploaded_last(tmp_path, monkeypatch):
    store = RemoteStore((tmp_path / "store").as_uri())
    a = committed_stage(tmp_path / "a")
    seen_before_files = []
    put = store.fs.put

    def spying_put(lpaths, rpaths, **kwargs):
        seen_before_files.append(store.has(a))
        return put(lpaths, rpaths, **kwargs)

    monkeypatch.setattr(store.fs, "put", spying_put)
    store.push(a)
    assert seen_before_files == [False] and store.has(a)


def test_forced_push_replaces_the_store_copy(tmp_path):
    store = RemoteStore((tmp_path / "store").as_uri())
    store.push(committed_stage(tmp_path / "a"))
    a2 = committed_stage(tmp_path / "a2")  # recomputed elsewhere: other bytes, same key
    assert store.push(a2, overwrite=True) is True
    b = make_stage(tmp_path / "b")
    store.pull(b)
    assert (b.dir / "model" / "weights.bin").read_bytes() == (a2.dir / "model" / "weights.bin").read_bytes()


def test_plain_paths_become_file_urls(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert normalize_url("shared/") == (tmp_path / "shared").as_uri()
    assert normalize_url("s3://bucket/prefix/") == "s3://bucket/prefix"


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("nosuchproto://bucket/x", "Protocol not known: nosuchproto"),
        ("file:///proc/gptflow-store", "is not writable"),
    ],
)
def test_unusable_store_fails_fast_with_one_line(tmp_path, monkeypatch, capsys, url, needle):
    monkeypatch.setenv(STORE_ENV, "")  # main() sets it from --store; monkeypatch removes it after the test
    ws = tmp_path / "ws"
    code = main(["run", "--config", str(MICRO), "--workspace", str(ws), "--store", url])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "--store / GPTFLOW_STORE" in err[0] and needle in err[0]
    assert not (ws / "artifacts").exists()  # nothing computed


# --- S3: moto's server mode on 127.0.0.1 -------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3_endpoint():
    """A moto S3 server on a free 127.0.0.1 port; AWS_ENDPOINT_URL_S3 points s3fs (aiobotocore) and MLflow
    (boto3) at it. The variables are set for this module only."""
    pytest.importorskip("s3fs")
    moto_server = pytest.importorskip("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {**S3_ENV, "AWS_ENDPOINT_URL_S3": f"http://{host}:{port}"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


def make_bucket(name: str) -> str:
    import boto3

    boto3.client("s3").create_bucket(Bucket=name)
    return f"s3://{name}/team"


def test_s3_push_then_pull_into_a_second_workspace(tmp_path, s3_endpoint):
    store = RemoteStore(make_bucket("gptflow-unit"))
    store.check()
    a = committed_stage(tmp_path / "a")
    assert store.push(a) is True and store.has(a)
    b = make_stage(tmp_path / "b")
    assert store.pull(b) is True
    assert b.verify(deep=True) == [] and b.manifest() == a.manifest()


def test_s3_store_without_its_bucket_fails_fast(tmp_path, s3_endpoint, monkeypatch, capsys):
    monkeypatch.setenv(STORE_ENV, "")
    code = main(["run", "--config", str(MICRO), "--workspace", str(tmp_path / "ws"), "--store", "s3://no-such-bucket"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "s3://no-such-bucket is not writable" in err[0], err


# --- the real pipeline on two workspaces sharing one store ----------------------------------------


def gptflow_run(workspace: Path, store: str | None, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess:
    """`gptflow run` on the micro config in its own process: a second machine shares nothing but the store."""
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", "--config", str(MICRO), "--workspace", str(workspace)]
        + (["--store", store] if store else []) + list(extra),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **env, "PYTHONPATH": str(ROOT), "PREFECT_LOGGING_LEVEL": "INFO"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def stage_runs(workspace: Path):
    """(tracking client, stage name -> child run of the latest pipeline run) of a workspace."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")
    exp = client.get_experiment_by_name("gptflow-micro")
    parent = client.search_runs(
        [exp.experiment_id], "tags.`gptflow.kind` = 'pipeline'", order_by=["attributes.start_time DESC"]
    )[0]
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    return client, parent, {r.data.tags["stage"]: r for r in children}


def manifests(workspace: Path) -> dict[str, dict]:
    return {p.parent.parent.name: json.loads(p.read_text()) for p in (workspace / "artifacts").glob(f"*/*/{MANIFEST}")}


def assert_second_machine_reuses_everything(tmp_path: Path, store: str, env: dict[str, str], *extra: str):
    """Run in workspace a, then in workspace b with the same store; b must reuse every stage a produced."""
    a, b = tmp_path / "a", tmp_path / "b"
    gptflow_run(a, store, env, *extra)
    proc = gptflow_run(b, store, env, *extra)
    _, _, children = stage_runs(b)
    # every stage is downloaded, except the report card: each run writes its own (it describes that run)
    shared = {n: c for n, c in children.items() if n != "report"}
    assert {n: c.data.tags["cached"] for n, c in shared.items()} == {n: "true" for n in shared}
    outcomes = proc.stdout.split("MLflow run", 1)[1].splitlines()
    assert not [line for line in outcomes if line.split()[-1:] == ["computed"] and line.split()[0] != "report"]
    without_report = {k: m for k, m in manifests(b).items() if k != "report"}
    assert without_report == {k: m for k, m in manifests(a).items() if k != "report"}  # downloaded, not recomputed
    assert (proc.stdout + proc.stderr).count(f"reused from {store}/artifacts/") == len(shared)
    return a, b, children


def assert_mlflow_artifacts_in_store(workspace: Path, store: str, stage: str, name: str, tmp_path: Path) -> None:
    """The stage's MLflow artifact lives under `<store>/mlartifacts` and reads back through MLflow."""
    from mlflow.artifacts import download_artifacts

    client, _, children = stage_runs(workspace)
    run = children[stage]
    assert run.info.artifact_uri.startswith(f"{store}/mlartifacts/")
    assert name in {a.path for a in client.list_artifacts(run.info.run_id)}
    local = download_artifacts(
        run_id=run.info.run_id, artifact_path=name, dst_path=str(tmp_path / "dl"), tracking_uri=client.tracking_uri
    )
    stage_dir = next((workspace / "artifacts" / stage).glob(f"*/{name}")).parent
    assert Path(local).read_bytes() == (stage_dir / name).read_bytes()


@pytest.mark.slow  # ~80 s: two `gptflow run` processes, each starting its own Prefect API
def test_file_store_second_workspace_recomputes_nothing(tmp_path):
    store = (tmp_path / "shared").as_uri()
    a, _, children = assert_second_machine_reuses_everything(tmp_path, store, {}, "--only", ",".join(DATA_STAGES))
    assert sorted(children) == sorted(DATA_STAGES)
    for kind, manifest in manifests(a).items():
        assert (tmp_path / "shared" / "artifacts" / kind / manifest["key"] / MANIFEST).is_file()
    assert_mlflow_artifacts_in_store(a, store, "tokenizer", "tokenizer.json", tmp_path)


@pytest.mark.slow  # ~2 min: three `gptflow run` processes
def test_stages_finished_before_the_store_was_set_are_uploaded_by_the_next_run(tmp_path):
    store = (tmp_path / "shared").as_uri()
    only = ("--only", ",".join(DATA_STAGES))
    gptflow_run(tmp_path / "a", None, {}, *only)
    assert not (tmp_path / "shared").exists()
    gptflow_run(tmp_path / "a", store, {}, *only)  # all done locally: nothing recomputed, everything uploaded
    for kind, manifest in manifests(tmp_path / "a").items():
        assert (tmp_path / "shared" / "artifacts" / kind / manifest["key"] / MANIFEST).is_file(), kind
    gptflow_run(tmp_path / "b", store, {}, *only)
    assert manifests(tmp_path / "b") == manifests(tmp_path / "a")


@pytest.mark.slow  # ~3 min: the whole micro pipeline once, then a second workspace reusing it from S3
def test_s3_store_full_pipeline_second_workspace_recomputes_nothing(tmp_path, s3_endpoint):
    store = make_bucket("gptflow-e2e")
    a, _, children = assert_second_machine_reuses_everything(tmp_path, store, s3_endpoint)
    assert {"pretrain", "report"} <= set(children)
    assert_mlflow_artifacts_in_store(a, store, "tokenizer", "tokenizer.tiktoken", tmp_path)
    # The registry's model and the report card were logged to, and read back from, the S3 artifact store.
    from tasks.registry import resolve_model_uri

    tracking = f"sqlite:///{a / 'mlflow.db'}"
    model_dir, tokenizer_dir = resolve_model_uri("models:/gptflow-micro-pretrained@best", tracking)
    assert (model_dir / "model.safetensors").is_file() and any(tokenizer_dir.iterdir())
    client, parent, _ = stage_runs(a)
    assert "report.md" in {x.path for x in client.list_artifacts(parent.info.run_id)}
    report = next((a / "artifacts" / "report").glob("*/report.md")).read_text()
    # both sections exist only when the report stage could download the artifacts it shows
    assert "Sample tokenization (" in report and "Sampled continuations (`samples.txt`)" in report
