"""The `lm_eval` stage and the checkpoint matrix end to end on the micro pipeline (slow): the mirror's Story Cloze
and a local YAML task, metrics in MLflow on the stage and the parent, a task fine-tuned and lm-eval run from a
kept checkpoint and from the final weights, everything cached on rerun, and gptflow's zero-shot scorer agreeing
with lm-eval's choice on every story."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TRACKING_URI_AT_START
from mlflow.tracking import MlflowClient

from flows.cli import main
from gpt.data.sources import fetch
from gpt.data.tokenizer import load_tokenizer
from gpt.downstream.builtin import get_task, read_story_cloze_test
from gpt.downstream.harness_tasks import MIRRORED
from gpt.downstream.zeroshot import encode_zeroshot, zeroshot_predictions
from gpt.model.transformer import load_model

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
MICRO = ROOT / "configs" / "micro.yaml"
LIMIT = 40

TINY_TASK = """task: tiny_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
"""


@pytest.fixture(scope="module")
def harness_run(tmp_path_factory):
    """The micro pipeline with `harness:` on storycloze_2016 and a local YAML task, run twice."""
    import mlflow

    root = tmp_path_factory.mktemp("harness")
    tasks_dir = root / "lm_tasks"
    tasks_dir.mkdir()
    rows = [{"context": f"Number {i} is", "choices": [" odd", " even"], "label": i % 2 == 0} for i in range(12)]
    (tasks_dir / "tiny.jsonl").write_text("".join(json.dumps({**r, "label": int(r["label"])}) + "\n" for r in rows))
    (tasks_dir / "tiny.yaml").write_text(TINY_TASK.format(data=tasks_dir / "tiny.jsonl"))
    ws = root / "ws"
    sets = [
        "harness.tasks=[storycloze_2016, tiny_choice]",
        f"harness.include_path={tasks_dir}",
        f"harness.limit={LIMIT}",
        "finetune.tasks=[sst2]",
        "finetune.max_examples=32",
        "pretrain.keep_models=[20]",
        "finetune.from_checkpoints=[20, last]",
    ]
    argv = ["run", "--config", str(MICRO), "--workspace", str(ws), *[a for s in sets for a in ("--set", s)]]
    runs = []
    for _ in range(2):
        mlflow.set_tracking_uri(TRACKING_URI_AT_START)
        assert main(argv) == 0
        client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
        exp = client.get_experiment_by_name("gptflow-micro")
        (parent,) = client.search_runs(
            [exp.experiment_id],
            "tags.`gptflow.kind` = 'pipeline'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
        runs.append((parent, {c.data.tags["stage"]: c for c in children}))
    return ws, tasks_dir, runs


def test_metrics_land_on_the_stage_and_the_parent(harness_run):
    _, _, [(parent, stages), _] = harness_run
    stage = stages["lm_eval"]
    for name in ("lm_eval/storycloze_2016/acc", "lm_eval/tiny_choice/acc"):
        assert 0.0 <= stage.data.metrics[name] <= 1.0
        assert parent.data.metrics[name] == stage.data.metrics[name]


def test_a_rerun_reuses_every_stage_of_the_checkpoint_matrix(harness_run):
    _, _, [(_, first), (_, second)] = harness_run
    matrix = {"lm_eval", "lm_eval[step20]", "finetune[sst2]", "finetune[sst2-step20]", "evaluate[sst2-step20]"}
    assert matrix <= set(first) and set(first) == set(second)
    assert all(first[name].data.tags["cached"] == "false" for name in matrix)
    assert all(run.data.tags["cached"] == "true" for name, run in second.items() if name != "report")


def test_checkpoint_metrics_make_curves_over_pretraining(harness_run):
    ws, _, [(parent, _), _] = harness_run
    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    history = client.get_metric_history(parent.info.run_id, "lm_eval/storycloze_2016/acc")
    assert sorted(m.step for m in history) == [20, 40]  # the kept checkpoint and the final weights (max_steps)
    assert "sst2-step20.accuracy" in parent.data.metrics
    assert (stage_dir(ws, "pretrain") / "models" / "step-20" / "model.safetensors").is_file()
    assert (stage_dir(ws, "report") / "plots" / "checkpoints.png").is_file()


def stage_dir(ws: Path, kind: str, name: str | None = None) -> Path:
    """The committed directory of stage `name` (default: `kind`) under the workspace's artifacts."""
    dirs = [p for p in (ws / "artifacts" / kind).iterdir() if p.is_dir() and not p.name.endswith(".partial")]
    return next(p for p in dirs if json.loads((p / "manifest.json").read_text())["stage"] == (name or kind))


def test_gptflow_zero_shot_with_the_sum_rule_picks_lm_evals_ending_on_every_story(harness_run, tmp_path):
    ws, _, _ = harness_run
    out = stage_dir(ws, "lm_eval")
    samples = [json.loads(line) for line in (out / "samples_storycloze_2016.jsonl").read_text().splitlines()]
    assert [s["doc_id"] for s in samples] == list(range(LIMIT))
    lm_eval_choice = [max(range(2), key=lambda k, s=s: s["scores"][k][0]) for s in samples]

    model_dir = stage_dir(ws, "pretrain") / "model"
    model, enc = load_model(model_dir), load_tokenizer(model_dir)
    stories = read_story_cloze_test(str(fetch(MIRRORED["storycloze_2016"].remote, tmp_path)), "test")[:LIMIT]
    data = encode_zeroshot(get_task("story_cloze"), stories, enc)
    data.average = False  # lm-eval's acc: the sum of the ending's token log-likelihoods
    assert zeroshot_predictions(model, data).tolist() == lm_eval_choice
    results = json.loads((out / "results.json").read_text())["results"]
    accuracy = sum(c == int(s["target"]) for c, s in zip(lm_eval_choice, samples, strict=True)) / LIMIT
    assert results["storycloze_2016"]["acc,none"] == pytest.approx(accuracy)
