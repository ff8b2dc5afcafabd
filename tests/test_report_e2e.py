"""The real pipeline, two micro runs with different pretrain.lr: report stage, registry, compare, predict, generate."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from flows.cli import main
from reports.compare import comparison_table, metric_names, pipeline_runs

pytestmark = pytest.mark.slow
MICRO = Path(__file__).resolve().parents[1] / "configs" / "micro.yaml"
EXPERIMENT = "report-e2e"


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[Path, MlflowClient, list[str]]:
    ws = tmp_path_factory.mktemp("ws")
    for lr in ("0.003", "0.002"):
        argv = ["run", "--config", str(MICRO), "--workspace", str(ws), "--experiment", EXPERIMENT]
        assert main([*argv, "--set", "finetune.tasks=[sst2]", "--set", f"pretrain.lr={lr}"]) == 0
    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs(
        [exp.experiment_id], "tags.`gptflow.kind` = 'pipeline'", order_by=["attributes.start_time ASC"]
    )
    return ws, client, [r.info.run_id for r in runs]


def test_report_stage_logs_the_report_card_to_the_parent_run(two_runs, tmp_path):
    _, client, (first, _) = two_runs
    paths = {a.path for a in client.list_artifacts(first)}
    assert {"report.html", "report.md", "plots"} <= paths
    plots = {Path(a.path).name for a in client.list_artifacts(first, "plots")}
    assert {"loss.png", "lr.png", "confusion_sst2.png"} <= plots
    md = Path(client.download_artifacts(first, "report.md", str(tmp_path))).read_text()
    for section in ("## Configuration", "## Environment", "## Stages", "## Data and tokenizer", "## Pretraining"):
        assert section in md
    assert "| sst2 | accuracy |" in md and "| 91.3 |" in md
    assert "| pretrain | computed |" in md and "torch" in md


def test_registry_hook_registers_pretrained_and_task_models(two_runs):
    _, client, runs = two_runs
    pre = client.search_model_versions(f"name = '{EXPERIMENT}-pretrained'")
    assert len(pre) == 2  # each run computed its own pretraining
    losses = {str(v.version): float(v.tags["metric_value"]) for v in pre}
    best = client.get_model_version_by_alias(f"{EXPERIMENT}-pretrained", "best")
    assert losses[str(best.version)] == min(losses.values())
    sst2 = client.search_model_versions(f"name = '{EXPERIMENT}-sst2'")
    assert len(sst2) == 2 and {v.tags["metric"] for v in sst2} == {"accuracy"}
    assert {v.run_id for v in sst2} <= {
        r.info.run_id
        for p in runs
        for r in client.search_runs(
            [client.get_run(p).info.experiment_id], f"tags.mlflow.parentRunId = '{p}' and tags.stage = 'evaluate[sst2]'"
        )
    }


def test_predict_and_generate_from_registry_uris(two_runs, capsys):
    ws, _, _ = two_runs
    argv = ["predict", "--model", f"models:/{EXPERIMENT}-sst2@best", "--task", "sst2", "--text", "a fine film"]
    assert main([*argv, "--workspace", str(ws)]) == 0
    assert capsys.readouterr().out.split("\t")[0] in ("negative", "positive")
    argv = [
        "generate",
        "--model",
        f"models:/{EXPERIMENT}-pretrained@latest",
        "--prompt",
        "The ",
        "--max-new-tokens",
        "4",
    ]
    assert main([*argv, "--workspace", str(ws)]) == 0
    assert capsys.readouterr().out.startswith("The ")


def test_compare_two_real_runs_shows_exactly_the_lr(two_runs, tmp_path):
    ws, _, runs = two_runs
    out = tmp_path / "cmp.csv"
    assert main(["compare", "--experiment", EXPERIMENT, "--out", str(out), "--workspace", str(ws)]) == 0
    table = comparison_table(pipeline_runs(f"sqlite:///{ws / 'mlflow.db'}", EXPERIMENT))
    assert [c for c in table.columns if c not in metric_names(table)] == ["run_id", "pretrain.lr"]
    df = pd.read_csv(out)
    assert list(df["run_id"]) == runs and list(df["pretrain.lr"]) == [0.003, 0.002]
    assert df["pretrain.final_val_loss"].notna().all() and df["sst2.accuracy"].notna().all()
