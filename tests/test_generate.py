"""`gptflow generate`: model references (dir, stage dir, MLflow run ids), streaming, bad input."""

import pytest
import torch

from flows.cli import main
from flows.model_ref import resolve_model_dir
from flows.workspace import Workspace
from gpt.config.fields import ConfigError
from gpt.data.tokenizer import SPLIT_PATTERN, build_encoding, save_tokenizer, train_bpe
from gpt.model.config import ModelConfig
from gpt.model.generate import stream_tokens
from gpt.model.transformer import GPT, save_model

DOCS = [f"Once upon a time, story {i} told of a king and a cat who lived by the sea." for i in range(30)]


@pytest.fixture(scope="module")
def stage_dir(tmp_path_factory):
    """A pretrain-stage-shaped directory: model/ with weights, config and tokenizer files."""
    d = tmp_path_factory.mktemp("pretrain")
    ranks = train_bpe(DOCS, 300)
    enc = build_encoding(ranks, SPLIT_PATTERN)
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=enc.n_vocab, n_layer=1, n_head=2, n_embd=16, block_size=16, pad_vocab_to=64))
    save_model(model, d / "model")
    save_tokenizer(enc, ranks, d / "model")
    return d


def _generate(model, ws, capsys, *extra):
    argv = ["generate", "--model", str(model), "--prompt", "Once upon", "--workspace", str(ws), *extra]
    code = main([*argv, "--temperature", "0", "--max-new-tokens", "20"])
    return code, capsys.readouterr()


def test_generate_from_stage_dir_and_model_dir_streams_the_same_text(stage_dir, tmp_path, capsys):
    code, a = _generate(stage_dir, tmp_path, capsys)
    assert code == 0 and a.out.startswith("Once upon") and len(a.out) > len("Once upon\n")
    code, b = _generate(stage_dir / "model", tmp_path, capsys)
    assert code == 0 and b.out == a.out  # greedy: deterministic


def test_stream_tokens_yields_one_token_at_a_time(stage_dir):
    from gpt.model.transformer import load_model

    model = load_model(stage_dir / "model")
    stream = stream_tokens(model, [1, 2], 50, temperature=0)
    first = next(stream)
    assert isinstance(first, int) and model.training is False
    stream.close()
    assert model.training is True  # restored once the stream ends


def test_run_ids_resolve_to_the_pretrain_stage(stage_dir, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the workspace's own store

    ws = Workspace(tmp_path)
    key = "abc123"
    target = ws.artifacts / "pretrain" / key
    target.parent.mkdir(parents=True)
    target.symlink_to(stage_dir, target_is_directory=True)
    client = MlflowClient(ws.tracking_uri)
    exp = client.create_experiment("e", artifact_location=(tmp_path / "mlartifacts").as_uri())
    parent = client.create_run(exp, tags={"gptflow.kind": "pipeline"}).info.run_id
    tags = {"mlflow.parentRunId": parent, "stage_kind": "pretrain", "cache_key": key}
    child = client.create_run(exp, tags=tags).info.run_id
    other = client.create_run(exp, tags={"gptflow.kind": "pipeline"}).info.run_id
    assert resolve_model_dir(child, ws) == target / "model"
    assert resolve_model_dir(parent, ws) == target / "model"
    with pytest.raises(ConfigError, match="no pretrain stage"):
        resolve_model_dir(other, ws)
    with pytest.raises(ConfigError, match="not a directory, nor a run"):
        resolve_model_dir("0123456789abcdef", ws)


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--top-p", "1.5"], "--top-p"), (["--tokenizer", "/nonexistent"], "no tokenizer"), ([], None)],
)
def test_bad_input_is_one_line(stage_dir, tmp_path, capsys, extra, message):
    model = stage_dir if message else tmp_path  # [] case: a directory without a model
    code, res = _generate(model, tmp_path / "ws", capsys, *extra)
    assert code == 2 and res.err.count("\n") == 1 and res.err.startswith("gptflow: error:")
    assert (message or "neither a model directory") in res.err
