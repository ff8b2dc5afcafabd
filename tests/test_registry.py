"""Model registry: versions with their tokenizer, `best`/`latest` aliases, generate and predict from `models:/` URIs."""

from __future__ import annotations

from pathlib import Path

import mlflow.pyfunc
import pytest
from mlflow.tracking import MlflowClient
from report_fixtures import make_models, make_tokenizer

from flows.cli import main
from tasks.registry import register_model, resolve_model_uri


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> tuple[Path, MlflowClient, str, Path, Path, Path]:
    """(workspace, client, a run to log models into, pretrained dir, task model dir, tokenizer dir)."""
    ws = tmp_path_factory.mktemp("ws")
    assets = tmp_path_factory.mktemp("assets")
    tok = make_tokenizer(assets / "tokenizer")
    model_dir, task_dir = make_models(assets, tok)
    uri = f"sqlite:///{ws / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    exp = client.create_experiment("reg", artifact_location=(ws / "mlartifacts").as_uri())
    return ws, client, exp, model_dir, task_dir, tok


def _run(client: MlflowClient, exp: str) -> str:
    return client.create_run(exp).info.run_id


def test_best_follows_the_score_and_latest_the_newest_version(registry):
    _, client, exp, model_dir, _, tok = registry
    for loss in (5.0, 5.5, 4.0):  # pretraining: lower val loss is better
        reg = register_model(
            client, "reg-pretrained", _run(client, exp), model_dir, tok, ("final_val_loss", loss, False)
        )
        best = client.get_model_version_by_alias("reg-pretrained", "best")
        latest = client.get_model_version_by_alias("reg-pretrained", "latest")
        assert str(latest.version) == reg.version
        if loss == 5.5:
            assert str(best.version) == "1" and reg.aliases == ["latest"]
    assert str(best.version) == "3" and best.tags["metric_value"] == "4.0"
    model, tokenizer = resolve_model_uri("models:/reg-pretrained@best", client.tracking_uri)
    assert (model / "model.safetensors").is_file() and (tokenizer / "tokenizer.json").is_file()
    assert (model / "tokenizer.json").is_file()  # the model directory alone is usable
    assert resolve_model_uri("models:/reg-pretrained/2", client.tracking_uri)[0].is_dir()


def test_generate_from_a_registry_uri(registry, capsys):
    ws, client, exp, model_dir, _, tok = registry
    register_model(client, "reg-gen", _run(client, exp), model_dir, tok, ("final_val_loss", 5.0, False))
    argv = ["generate", "--model", "models:/reg-gen@best", "--prompt", "To be", "--max-new-tokens", "5"]
    assert main([*argv, "--temperature", "0", "--workspace", str(ws)]) == 0
    assert capsys.readouterr().out.startswith("To be")


def test_predict_from_a_registered_fine_tuned_model(registry, capsys, monkeypatch):
    ws, client, exp, _, task_dir, tok = registry
    for acc in (0.6, 0.5):  # a task metric: higher is better, so `best` stays on version 1
        register_model(client, "reg-sst2", _run(client, exp), task_dir, tok, ("accuracy", acc, True))
    assert str(client.get_model_version_by_alias("reg-sst2", "best").version) == "1"
    argv = ["predict", "--model", "models:/reg-sst2@best", "--task", "sst2", "--text", "a moving film"]
    assert main([*argv, "--workspace", str(ws)]) == 0
    label, probs = capsys.readouterr().out.strip().split("\t")
    assert label in ("negative", "positive") and "negative=" in probs and "positive=" in probs
    mlflow.set_tracking_uri(client.tracking_uri)  # what plain pyfunc.load_model resolves models:/ with
    (out,) = mlflow.pyfunc.load_model("models:/reg-sst2@latest").predict(["a moving film"])
    assert abs(sum(out["probabilities"]) - 1) < 1e-3


def test_unknown_model_or_wrong_kind_is_one_line_error(registry, capsys):
    ws, *_ = registry
    argv = ["predict", "--model", "models:/nope@best", "--task", "sst2", "--text", "x", "--workspace", str(ws)]
    assert main(argv) == 2
    assert "model 'models:/nope@best' not found in the registry" in capsys.readouterr().err
    argv = [
        "predict",
        "--model",
        "models:/reg-pretrained@best",
        "--task",
        "sst2",
        "--text",
        "x",
        "--workspace",
        str(ws),
    ]
    assert main(argv) == 2
    assert "is a pretrained model, not a fine-tuned one" in capsys.readouterr().err


def test_pipeline_hook_skips_cached_stages_ablations_and_other_kinds(registry, tmp_path):
    from gpt.config.loader import load_config
    from tasks.plan import build_plan
    from tasks.registry import register_stage_model
    from tasks.stage import StageError

    _, client, exp, *_ = registry
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "micro.yaml")

    plan = {s.name: s for s in build_plan(cfg, tmp_path)}  # no output dirs: registering would fail
    assert [s.kind for s in plan.values() if s.definition.registers] == ["pretrain", "evaluate", "evaluate"]
    run = _run(client, exp)
    assert register_stage_model(client, cfg.experiment, plan["pretrain"], run, cached=True) is None
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "micro.yaml", ["ablations=[no_pretraining]"])
    plan = {s.name: s for s in build_plan(cfg, tmp_path)}
    ablation = plan["evaluate[sst2-no_pretraining]"]
    assert register_stage_model(client, cfg.experiment, ablation, run, cached=False) is None
    # a computed main-recipe evaluate does register: it asks for its directory (which has no key yet here)
    with pytest.raises(StageError, match="waits for 'finetune\\[sst2\\]'"):
        register_stage_model(client, cfg.experiment, plan["evaluate[sst2]"], run, cached=False)
