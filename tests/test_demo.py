"""The README's demo, for real: minutes on this CPU, so it is marked slow (`pytest -m slow`)."""

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from flows.cli import main

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


@pytest.mark.slow
def test_demo_learns_and_beats_the_majority_class(tmp_path):
    assert main(["run", "--config", str(DEMO), "--workspace", str(tmp_path)]) == 0
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("gptflow-demo")
    (parent,) = client.search_runs([exp.experiment_id], filter_string="tags.`gptflow.kind` = 'pipeline'")
    m = parent.data.metrics
    assert m["pretrain.final_val_loss"] < m["pretrain.initial_val_loss"] - 1.0
    assert m["sst2.accuracy"] > m["sst2.majority_rate"]
