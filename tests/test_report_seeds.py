"""Fine-tuning seeds: mean ± sample std per arm in the report card (md + html) and the ablation benchmark."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from report_fixtures import ROOT, record_in_new_workspace

from reports.run_report import build_report
from reports.seeds import arm_spreads, split_arm

RECIPE = {"sst2-seed1": 0.70, "sst2-seed2": 0.80, "sst2-seed3": 0.75}  # mean 75.0, sample std 5.0
ABLATION = {"sst2-no_pretraining-seed1": 0.50, "sst2-no_pretraining-seed2": 0.52, "sst2-no_pretraining-seed3": 0.60}
# no_pretraining: mean 54.0, sample std sqrt((0.04² + 0.02² + 0.06²) / 2) = 0.0529 -> 5.3


def test_arm_spreads_group_seeds_per_task_and_ablation():
    metrics = {
        **{f"{k}.accuracy": v for k, v in {**RECIPE, **ABLATION}.items()},
        "sst2-seed2.majority_rate": 0.5,
        "story_cloze.accuracy": 0.6,  # no seeds: one value
        "pretrain.final_val_loss": 5.0,  # a stage's metric, not a task's
    }
    arms = arm_spreads(metrics)
    assert set(arms) == {"sst2", "story_cloze"}
    recipe = arms["sst2"][None]["accuracy"]
    assert recipe.seeds == (1, 2, 3) and recipe.values == (0.70, 0.80, 0.75) and recipe.n == 3
    assert recipe.mean == pytest.approx(0.75) and recipe.std == pytest.approx(0.05)
    ablation = arms["sst2"]["no_pretraining"]["accuracy"]
    assert ablation.mean == pytest.approx(0.54) and ablation.std == pytest.approx(math.sqrt(0.0028))
    single = arms["story_cloze"][None]["accuracy"]
    assert single.n == 1 and single.seeds == (None,) and math.isnan(single.std)
    assert split_arm("no_aux_lm-seed12") == ("no_aux_lm", 12) and split_arm(None) == (None, None)


def test_ablation_benchmark_uses_the_same_spreads():
    spec = importlib.util.spec_from_file_location("finetune_ablation", ROOT / "benchmarks" / "finetune_ablation.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    metrics = {f"{k}.accuracy": v for k, v in {**RECIPE, **ABLATION}.items()} | {"sst2-seed1.majority_rate": 0.5}
    table = benchmark.collect(metrics)
    assert set(table) == {("sst2", "pretrained", "accuracy"), ("sst2", "no_pretraining", "accuracy")}
    assert table[("sst2", "pretrained", "accuracy")].std == pytest.approx(0.05)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory) -> tuple[MlflowClient, str]:
    """A recorded run fine-tuned with seeds 1, 2, 3: the recipe's stages and the no_pretraining arm's metrics."""
    _, client, run_id = record_in_new_workspace(
        tmp_path_factory, "seeds", ["finetune.seeds=[1,2,3]"], tasks=RECIPE, ablations=ABLATION
    )
    return client, run_id


def test_report_card_shows_mean_and_std_per_arm_and_each_seed(seeded, tmp_path: Path):
    client, run_id = seeded
    files = build_report(client, run_id, tmp_path)
    md = files.markdown.read_text()
    assert "| task | metric | this run | no_pretraining | majority class | GPT-1 paper |" in md
    assert "| sst2 | accuracy | 75.0 ± 5.0 (n=3) | 54.0 ± 5.3 (n=3) | 50.0 | 91.3 |" in md
    assert "mean ± sample std (n seeds)" in md
    assert "| task | metric | arm | seed 1 | seed 2 | seed 3 |" in md
    assert "| sst2 | accuracy | recipe | 70.0 | 80.0 | 75.0 |" in md
    assert "| sst2 | accuracy | no_pretraining | 50.0 | 52.0 | 60.0 |" in md
    assert "seed1 |" not in md.split("## Tasks")[1].split("### Fine-tuning seeds")[0]  # no per-seed columns
    assert "sst2-seed1: confusion matrix" in md  # the first seed's evaluate stage
    html = files.html.read_text()
    assert "<td>75.0 ± 5.0 (n=3)</td>" in html and "<td>54.0 ± 5.3 (n=3)</td>" in html
    assert "<h3>Fine-tuning seeds</h3>" in html


def test_compare_folds_seed_columns_into_mean_and_std(seeded):
    from reports.compare import best_rows, comparison_table, pipeline_runs

    client, run_id = seeded
    table = comparison_table(pipeline_runs(client.tracking_uri, "seeds"))
    metrics = [c for c in table.columns if c.startswith("sst2")]
    assert metrics == [
        "sst2.accuracy mean",
        "sst2.accuracy std",
        "sst2-no_pretraining.accuracy mean",
        "sst2-no_pretraining.accuracy std",
    ]
    row = table.iloc[0]
    assert row["sst2.accuracy mean"] == pytest.approx(0.75) and row["sst2.accuracy std"] == pytest.approx(0.05)
    assert row["sst2-no_pretraining.accuracy mean"] == pytest.approx(0.54)
    assert row["sst2-no_pretraining.accuracy std"] == pytest.approx(math.sqrt(0.0028))
    assert not any(c.endswith(" std") for c in best_rows(table))  # a spread is never "best"
