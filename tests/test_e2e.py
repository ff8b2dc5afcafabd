"""The real pipeline (Prefect flow, MLflow SQLite store, Lightning) on the micro config."""

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from flows.cli import main
from gpt.config.loader import load_config
from tasks.plan import build_plan

MICRO = Path(__file__).resolve().parents[1] / "configs" / "micro.yaml"
STAGES = [s.name for s in build_plan(load_config(MICRO), Path("unused"))]


def runs_of(client: MlflowClient, parent_id: str):
    parent = client.get_run(parent_id)
    children = client.search_runs([parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
    return parent, {r.data.tags["stage"]: r for r in children}


def latest_parent(client: MlflowClient) -> str:
    exp = client.get_experiment_by_name("gptflow-micro")
    runs = client.search_runs(
        [exp.experiment_id], filter_string="tags.`gptflow.kind` = 'pipeline'", order_by=["attributes.start_time DESC"]
    )
    return runs[0].info.run_id


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ws")


def run(config: Path, ws: Path, *extra: str) -> None:
    assert main(["run", "--config", str(config), "--workspace", str(ws), *extra]) == 0


def test_pipeline_runs_every_stage_and_tracks_it(micro_config, workspace):
    run(micro_config, workspace)
    client = MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")
    parent, children = runs_of(client, latest_parent(client))
    assert sorted(children) == sorted(STAGES)
    for name, child in children.items():
        assert child.data.tags["cached"] == "false", name
        assert len(child.data.tags["cache_key"]) == 16
        assert child.info.status == "FINISHED"
    assert parent.info.status == "FINISHED"
    assert parent.data.params["model.n_layer"] == "2" and "config_hash" in parent.data.tags
    m = parent.data.metrics
    assert 0 <= m["sst2.accuracy"] <= 1 and 0 <= m["story_cloze.accuracy"] <= 1
    assert m["pretrain.final_val_loss"] < m["pretrain.initial_val_loss"]
    history = client.get_metric_history(children["pretrain"].info.run_id, "train_loss")
    assert len(history) >= 4 and history[-1].value < history[0].value
    assert any(k.endswith("mfu") for k in children["pretrain"].data.metrics)
    artifacts = {a.path for a in client.list_artifacts(children["pretrain"].info.run_id)}
    assert {"model", "samples.txt"} <= artifacts
    assert "report.md" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    manifest = json.loads(next((workspace / "artifacts" / "pretrain").glob("*/manifest.json")).read_text())
    assert "model/model.safetensors" in manifest["files"]


def test_second_run_is_all_cache_hits(micro_config, workspace, capsys):
    client = MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")
    first = latest_parent(client)
    capsys.readouterr()
    run(micro_config, workspace)
    out = capsys.readouterr().out
    parent, children = runs_of(client, latest_parent(client))
    assert parent.info.run_id != first
    # every stage reused, except the report: each run gets a report card of its own (its id, its stage outcomes)
    expected = {n: "false" if n == "report" else "true" for n in STAGES}
    assert {n: c.data.tags["cached"] for n, c in children.items()} == expected
    reused = {n: c for n, c in children.items() if n != "report"}
    assert all(c.data.tags["produced_by"] == runs_of(client, first)[1][n].info.run_id for n, c in reused.items())
    report_path = workspace / "artifacts" / "report" / children["report"].data.tags["cache_key"] / "report.md"
    report = report_path.read_text()
    assert parent.info.run_id in report and first not in report
    assert parent.data.metrics["sst2.accuracy"] == client.get_run(first).data.metrics["sst2.accuracy"]
    assert client.list_artifacts(children["pretrain"].info.run_id) == []  # weights stay with the producer
    # a cached rerun still ends with the run's figures, read back from MLflow, and the report card's path
    results = out[out.index("results:") :].splitlines()
    m = parent.data.metrics
    assert f"pretrain: val loss {m['pretrain.final_val_loss']:.4f}" in results[1]
    assert f"sst2       : accuracy {m['sst2.accuracy']:.4f} (majority class {m['sst2.majority_rate']:.4f})" in out
    assert results[-1].strip() == f"report card: {report_path.with_name('report.html')}"


def test_changed_finetune_lr_reruns_only_downstream(micro_config, workspace):
    run(micro_config, workspace, "--set", "finetune.lr=0.002", "--set", "finetune.tasks=[sst2]")
    client = MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")
    _, children = runs_of(client, latest_parent(client))
    cached = {n: c.data.tags["cached"] for n, c in children.items()}
    assert cached == {
        "corpus": "true",
        "tokenizer": "true",
        "encode": "true",
        "pretrain": "true",
        "finetune[sst2]": "false",
        "evaluate[sst2]": "false",
        "report": "false",
    }
