"""`pretrain.init_from`: pretraining starts from given weights, keyed by their content; a wrong model is one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gpt.config.fields import ConfigError
from gpt.config.loader import load_config
from gpt.model.config import ModelConfig
from gpt.model.transformer import GPT, load_model, save_model
from gpt.train.pretrain import copy_weights
from tasks.pretrain import check_starting_weights

ROOT = Path(__file__).resolve().parents[1]
MICRO = ROOT / "configs" / "micro.yaml"
# micro.yaml's architecture over its 512-rank BPE (+ 4 special tokens)
MICRO_MODEL = {"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 64, "dropout": 0.0, "norm": "post"}


def saved_model(tmp_path: Path, vocab_size: int, **changes) -> Path:
    torch.manual_seed(0)
    out = tmp_path / f"model-{vocab_size}-{len(changes)}"
    save_model(GPT(ModelConfig(**{**MICRO_MODEL, **changes}, vocab_size=vocab_size)), out)
    return out


def test_a_model_of_the_configs_architecture_and_vocabulary_passes(tmp_path):
    check_starting_weights(load_config(MICRO, [f"pretrain.init_from={saved_model(tmp_path, 516)}"]))


def test_another_vocabulary_is_one_line_naming_the_key(tmp_path):
    cfg = load_config(MICRO, [f"pretrain.init_from={saved_model(tmp_path, 1000)}"])
    with pytest.raises(ConfigError, match=r"'pretrain.init_from'.*vocabulary of 1000 tokens.*516"):
        check_starting_weights(cfg)


def test_another_architecture_names_the_model_key(tmp_path):
    cfg = load_config(MICRO, [f"pretrain.init_from={saved_model(tmp_path, 516, n_layer=3)}"])
    with pytest.raises(ConfigError, match=r"'pretrain.init_from'.*model.n_layer 3.*2"):
        check_starting_weights(cfg)


def test_a_folder_without_a_model_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"'pretrain.init_from'.*neither a model directory"):
        check_starting_weights(load_config(MICRO, [f"pretrain.init_from={tmp_path}"]))


def test_copied_weights_give_the_same_logits_and_new_token_rows_keep_their_init():
    torch.manual_seed(0)
    source = GPT(ModelConfig(**MICRO_MODEL, vocab_size=100)).eval()
    target = GPT(ModelConfig(**MICRO_MODEL, vocab_size=100, pad_vocab_to=64)).eval()
    copy_weights(source, target)
    idx = torch.randint(0, 100, (2, 16))
    with torch.no_grad():
        assert torch.equal(source(idx), target(idx))


@pytest.mark.slow
def test_pretraining_from_an_imported_hf_model_starts_at_its_loss_and_is_keyed_by_its_content(tmp_path, capsys):
    """A random small GPT-2 (transformers), imported; the pretrain stage's step-0 val loss is that model's own."""
    transformers = pytest.importorskip("transformers")
    from flows.cli import main
    from gpt.data.windows import ShardDataModule
    from gpt.model.hf import import_hf
    from gpt.train.finetune import extend_vocab

    torch.manual_seed(0)
    hf_config = transformers.GPT2Config(vocab_size=50257, n_positions=64, n_embd=64, n_layer=2, n_head=2)
    transformers.GPT2LMHeadModel(hf_config).save_pretrained(tmp_path / "hf")
    import_hf(tmp_path / "hf", tmp_path / "imported")
    ws = tmp_path / "ws"
    sets = [
        "tokenizer.kind=gpt2",
        "model.norm=pre",
        "model.activation=gelu_new",
        "pretrain.precision=32-true",
        "pretrain.max_steps=4",
        f"pretrain.init_from={tmp_path / 'imported'}",
    ]
    argv = ["run", "--config", str(MICRO), "--workspace", str(ws), "--only", "corpus,tokenizer,encode,pretrain"]
    assert main([*argv, *[a for s in sets for a in ("--set", s)]]) == 0
    (stage,) = [p for p in (ws / "artifacts" / "pretrain").iterdir() if p.is_dir()]
    manifest = json.loads((stage / "manifest.json").read_text())
    (encode,) = [p for p in (ws / "artifacts" / "encode").iterdir() if p.is_dir()]

    model = extend_vocab(load_model(tmp_path / "imported"), 50260).eval()
    cfg = load_config(MICRO)
    data = ShardDataModule(encode, 64, cfg.pretrain.batch_size, cfg.pretrain.val_batches, cfg.seed)
    with torch.no_grad():
        losses = [float(model.next_token_loss(x, y)) for x, y in data.val_dataloader()]
    assert manifest["summary"]["initial_val_loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-4)

    # the key holds the weights' content: the same files elsewhere reuse the stage, changed weights do not
    moved = tmp_path / "elsewhere"
    (tmp_path / "imported").rename(moved)
    sets[-1] = f"pretrain.init_from={moved}"
    stages = ["stages", "--config", str(MICRO), "--workspace", str(ws), *[a for s in sets for a in ("--set", s)]]
    capsys.readouterr()
    assert main(stages) == 0
    assert pretrain_status(capsys.readouterr().out) == "done"
    model = load_model(moved)
    with torch.no_grad():
        model.wte.weight.mul_(1.01)
    save_model(model, moved)
    assert main(stages) == 0
    assert pretrain_status(capsys.readouterr().out) == "stale"


def pretrain_status(stages_output: str) -> str:
    (row,) = [line.split() for line in stages_output.splitlines() if line.startswith("pretrain ")]
    return row[2]
