"""`gptflow compare`: differing config keys only, final metrics with the best marked, task-set intersection, formats."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from report_fixtures import make_tokenizer, record_run

from flows.cli import main
from reports.compare import best_rows, comparison_table, pipeline_runs


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """Two runs differing only in pretrain.lr (experiment `lr`), and one with another task set (experiment `mixed`)."""
    ws = tmp_path_factory.mktemp("ws")
    assets = tmp_path_factory.mktemp("assets")
    make_tokenizer(assets / "tokenizer")
    (assets / "model").mkdir()
    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    runs = {
        "base": record_run(client, "lr", assets, [], val_losses=(6.0, 5.6, 5.4), tasks={"sst2": 0.70}),
        "high_lr": record_run(
            client, "lr", assets, ["pretrain.lr=0.01"], val_losses=(6.0, 5.3, 5.1), tasks={"sst2": 0.65}
        ),
    }
    runs["mixed_a"] = record_run(client, "mixed", assets, [], tasks={"sst2": 0.7, "story_cloze": 0.6})
    runs["mixed_b"] = record_run(
        client, "mixed", assets, ["finetune.tasks=[sst2, rte]"], tasks={"sst2": 0.8, "rte": 0.5}
    )
    return ws, runs


def test_only_the_differing_key_and_both_runs_metrics(store):
    ws, runs = store
    table = comparison_table(pipeline_runs(f"sqlite:///{ws / 'mlflow.db'}", "lr"))
    metrics = [
        "pretrain.final_val_loss",
        "pretrain.tokens_per_sec",
        "pretrain.mfu",
        "sst2.accuracy",
        "sst2-no_pretraining.accuracy",
    ]
    assert list(table.columns) == ["run_id", "pretrain.lr", *metrics]
    assert list(table["run_id"]) == [runs["base"], runs["high_lr"]]
    assert list(table["pretrain.lr"]) == ["0.003", "0.01"]
    assert list(table["pretrain.final_val_loss"]) == [5.4, 5.1]
    assert list(table["sst2.accuracy"]) == [0.70, 0.65]
    best = best_rows(table)
    assert best == {"pretrain.final_val_loss": [1], "sst2.accuracy": [0]}  # lowest loss, highest score; ties: none


def test_different_task_sets_compare_on_the_intersection(store):
    ws, runs = store
    table = comparison_table(pipeline_runs(f"sqlite:///{ws / 'mlflow.db'}", "mixed"))
    # tasks both runs have come first, then the rest; each task's ablation follows it
    assert [c for c in table.columns if c.endswith(".accuracy")] == [
        "sst2.accuracy",
        "sst2-no_pretraining.accuracy",
        "rte.accuracy",
        "rte-no_pretraining.accuracy",
        "story_cloze.accuracy",
        "story_cloze-no_pretraining.accuracy",
    ]
    assert list(table["finetune.tasks"]) == ["['sst2', 'story_cloze']", "['sst2', 'rte']"]
    assert table["story_cloze.accuracy"].isna().tolist() == [False, True]
    assert table["rte.accuracy"].isna().tolist() == [True, False]


def test_compare_cli_html_with_highlight_and_plots(store, tmp_path):
    ws, _ = store
    out = tmp_path / "cmp.html"
    assert main(["compare", "--experiment", "lr", "--out", str(out), "--workspace", str(ws)]) == 0
    html = out.read_text()
    assert html.count('src="data:image/png;base64,') == 2  # overlaid val-loss curves, per-task bars
    assert html.count('class="best"') == 2  # val loss, sst2 accuracy; tokens/s, MFU, the ablation tie
    assert "<code>pretrain.lr</code>" in html
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)


def test_compare_cli_csv_and_markdown_for_scripts(store, tmp_path):
    ws, runs = store
    csv = tmp_path / "c.csv"
    assert main(["compare", "--runs", runs["base"], runs["high_lr"], "--out", str(csv), "--workspace", str(ws)]) == 0
    df = pd.read_csv(csv)
    assert list(df["pretrain.lr"]) == [0.003, 0.01] and "sst2.accuracy" in df.columns
    md = tmp_path / "c.md"
    assert main(["compare", "--experiment", "lr", "--format", "md", "--out", str(md), "--workspace", str(ws)]) == 0
    assert "| **5.1** |" in md.read_text()  # best (lowest) val loss in bold


def test_compare_csv_and_markdown_go_to_stdout_without_out(store, tmp_path, capsys, monkeypatch):
    """Like `dvc exp show --csv`: text formats pipe into pandas or `column`; nothing is written to the cwd."""
    import io

    ws, runs = store
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["compare", "--runs", runs["base"], runs["high_lr"], "--format", "csv", "--workspace", str(ws)]) == 0
    df = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert list(df["pretrain.lr"]) == [0.003, 0.01] and "sst2.accuracy" in df.columns
    assert main(["compare", "--experiment", "lr", "--format", "md", "--workspace", str(ws)]) == 0
    assert "| **5.1** |" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_compare_unknown_experiment_or_run_is_one_line_error(store, tmp_path, capsys):
    ws, _ = store
    assert main(["compare", "--experiment", "nope", "--out", str(tmp_path / "x.html"), "--workspace", str(ws)]) == 2
    assert "no MLflow experiment named 'nope'" in capsys.readouterr().err
    assert main(["compare", "--runs", "deadbeef", "--out", str(tmp_path / "x.html"), "--workspace", str(ws)]) == 2
    assert "no pipeline run with id 'deadbeef'" in capsys.readouterr().err


def test_comparison_page_renders_in_chromium(store, tmp_path):
    from test_report import OUTPUT, distinct_colours, screenshot

    ws, _ = store
    out = tmp_path / "cmp.html"
    assert main(["compare", "--experiment", "mixed", "--out", str(out), "--workspace", str(ws)]) == 0
    png = screenshot(out.as_uri(), OUTPUT / "compare.png", size="1400,1400")
    assert distinct_colours(png) > 200
