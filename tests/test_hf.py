"""HF parity: small random `openai-gpt` and `gpt2` models built locally, converted, compared."""

import json

import pytest
import torch
from safetensors.torch import load_file

transformers = pytest.importorskip("transformers")

from gpt.model.hf import ConversionError, export_hf, import_hf  # noqa: E402
from gpt.model.transformer import load_model  # noqa: E402

SMALL = {"vocab_size": 101, "n_positions": 32, "n_embd": 48, "n_layer": 2, "n_head": 3}


def _hf_model(family: str, **extra):
    torch.manual_seed(0)
    if family == "openai-gpt":
        config = transformers.OpenAIGPTConfig(**SMALL, **extra)
        model = transformers.OpenAIGPTLMHeadModel(config)
    else:
        config = transformers.GPT2Config(**SMALL, **extra)
        model = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():  # biases and LN gains start at 0/1; randomise them so the mapping is really tested
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


@pytest.mark.parametrize("family", ["openai-gpt", "gpt2"])
@pytest.mark.parametrize("safe", [True, False])
def test_import_matches_transformers_logits(family, safe, tmp_path):
    hf = _hf_model(family)
    hf.save_pretrained(tmp_path / "hf")
    if not safe:  # a legacy pickle checkpoint (transformers 5 writes safetensors only); read with weights_only
        weights = tmp_path / "hf" / "model.safetensors"
        torch.save(load_file(weights), tmp_path / "hf" / "pytorch_model.bin")
        weights.unlink()
    import_hf(tmp_path / "hf", tmp_path / "ours")
    ours = load_model(tmp_path / "ours").eval()
    idx = torch.randint(0, SMALL["vocab_size"], (2, 20))
    with torch.no_grad():
        want = hf(idx).logits
        got = ours(idx)
    assert got.shape == want.shape == (2, 20, SMALL["vocab_size"])
    assert (got - want).abs().max().item() <= 1e-4


@pytest.mark.parametrize("family", ["openai-gpt", "gpt2"])
def test_export_round_trip_loads_in_transformers(family, tmp_path):
    hf = _hf_model(family)
    hf.save_pretrained(tmp_path / "hf")
    import_hf(tmp_path / "hf", tmp_path / "ours")
    export_hf(tmp_path / "ours", tmp_path / "back")
    cls = transformers.OpenAIGPTLMHeadModel if family == "openai-gpt" else transformers.GPT2LMHeadModel
    again = cls.from_pretrained(tmp_path / "back").eval()
    idx = torch.randint(0, SMALL["vocab_size"], (1, 16))
    with torch.no_grad():
        assert (again(idx).logits - hf(idx).logits).abs().max().item() <= 1e-5


def test_unsupported_config_is_named(tmp_path):
    _hf_model("gpt2", scale_attn_by_inverse_layer_idx=True).save_pretrained(tmp_path / "hf")
    with pytest.raises(ConversionError, match="scale_attn_by_inverse_layer_idx"):
        import_hf(tmp_path / "hf", tmp_path / "ours")
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ConversionError, match="model_type 'bert'"):
        import_hf(tmp_path / "bert", tmp_path / "x")


def test_cli_import_then_export(tmp_path, capsys):
    from flows.cli import main

    hf = _hf_model("gpt2")
    hf.save_pretrained(tmp_path / "hf")
    ws = ["--workspace", str(tmp_path / "ws")]
    assert main(["import-hf", str(tmp_path / "hf"), str(tmp_path / "ours"), *ws]) == 0
    assert "pre-LN GPT 2x48, vocab 101" in capsys.readouterr().out
    assert main(["export-hf", str(tmp_path / "ours"), str(tmp_path / "back"), *ws]) == 0
    again = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "back").eval()
    idx = torch.randint(0, SMALL["vocab_size"], (1, 8))
    with torch.no_grad():
        assert (again(idx).logits - hf(idx).logits).abs().max().item() <= 1e-5
    assert main(["import-hf", str(tmp_path / "nothing"), str(tmp_path / "x"), *ws]) == 2
    assert "config.json not found" in capsys.readouterr().err
