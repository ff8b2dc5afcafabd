"""Convert Hugging Face `openai-gpt` / `gpt2` checkpoint directories to gptflow model directories and back.

Reads and writes the files `save_pretrained` produces (config.json + model.safetensors, or a legacy
pytorch_model.bin loaded with `weights_only=True`) directly, so `gpt/` never imports transformers.
Both families store attention/MLP weights as Conv1D ([in, out]); gptflow uses nn.Linear ([out, in]).
HF's openai-gpt maps `afn: gelu` to the tanh approximation (`gelu_new`), as the original GPT-1 code did.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from gpt.model.config import Activation, ModelConfig
from gpt.model.transformer import GPT, load_model, save_model

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# gptflow name -> HF name, per family, for the non-block tensors.
TOP_LEVEL = {
    "openai-gpt": {"wte.weight": "tokens_embed.weight", "wpe.weight": "positions_embed.weight"},
    "gpt2": {k: k for k in ("wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias")},
}
# HF activation names -> gptflow's `activation`, per family (openai-gpt's "gelu" is gelu_new in its code).
ACTIVATIONS: dict[str, dict[str, Activation]] = {
    "openai-gpt": {"gelu": "gelu_new", "gelu_new": "gelu_new"},
    "gpt2": {"gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_new", "gelu": "gelu"},
}


class ConversionError(ValueError):
    """A checkpoint gptflow cannot represent exactly; the message names the file and the setting."""


def _read_state(src: Path) -> dict[str, torch.Tensor]:
    if (src / "model.safetensors").is_file():
        return load_file(src / "model.safetensors")
    if (src / "pytorch_model.bin").is_file():
        return torch.load(src / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise ConversionError(f"{src}: no model.safetensors or pytorch_model.bin (sharded checkpoints are not supported)")


def _model_config(src: Path, hf: dict) -> tuple[str, ModelConfig]:
    where = src / "config.json"
    family = hf.get("model_type")
    if family not in TOP_LEVEL:
        raise ConversionError(f"{where}: model_type {family!r} is not 'openai-gpt' or 'gpt2'")
    act_key = "afn" if family == "openai-gpt" else "activation_function"
    act = hf.get(act_key, "gelu" if family == "openai-gpt" else "gelu_new")
    if act not in ACTIVATIONS[family]:
        raise ConversionError(f"{where}: {act_key} {act!r} is not supported (GELU variants only)")
    n_embd = hf.get("n_embd", 768)
    checks = {
        "layer_norm_epsilon": (hf.get("layer_norm_epsilon", 1e-5), 1e-5),
        "n_inner": (hf.get("n_inner") or 4 * n_embd, 4 * n_embd),
        "scale_attn_weights": (hf.get("scale_attn_weights", True), True),
        "scale_attn_by_inverse_layer_idx": (hf.get("scale_attn_by_inverse_layer_idx", False), False),
        "add_cross_attention": (hf.get("add_cross_attention", False), False),
    }
    for key, (got, want) in checks.items():
        if got != want:
            raise ConversionError(f"{where}: {key}={got!r} is not supported (gptflow needs {want!r})")
    cfg = ModelConfig(
        vocab_size=hf.get("vocab_size", 40478 if family == "openai-gpt" else 50257),
        n_layer=hf.get("n_layer", 12),
        n_head=hf.get("n_head", 12),
        n_embd=n_embd,
        block_size=hf.get("n_positions", 512 if family == "openai-gpt" else 1024),
        dropout=float(hf.get("resid_pdrop", 0.1)),
        norm="post" if family == "openai-gpt" else "pre",
        activation=ACTIVATIONS[family][act],
    )
    return family, cfg


def _names(family: str, cfg: ModelConfig) -> dict[str, str]:
    """gptflow parameter name -> HF name (without the `transformer.` prefix)."""
    names = dict(TOP_LEVEL[family])
    for i in range(cfg.n_layer):
        for part in ("ln_1", "ln_2", "attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            for kind in ("weight", "bias"):
                names[f"h.{i}.{part}.{kind}"] = f"h.{i}.{part}.{kind}"
    return names


def from_hf(src_dir: str | Path) -> GPT:
    """Build the gptflow GPT holding the weights of an HF `openai-gpt` or `gpt2` checkpoint directory."""
    src = Path(src_dir)
    if not (src / "config.json").is_file():
        raise ConversionError(f"{src / 'config.json'} not found: expected a directory written by save_pretrained")
    family, cfg = _model_config(src, json.loads((src / "config.json").read_text()))
    state = {k.removeprefix("transformer."): v for k, v in _read_state(src).items()}
    model = GPT(cfg)
    ours: dict[str, torch.Tensor] = {}
    for name, hf_name in _names(family, cfg).items():
        if hf_name not in state:
            raise ConversionError(f"{src}: tensor {hf_name!r} missing from the checkpoint")
        t = state[hf_name]
        ours[name] = t.t() if name.endswith(CONV1D) else t
    model.load_state_dict(ours)
    return model


def to_hf(model: GPT, out_dir: str | Path) -> None:
    """Write `model` as an HF checkpoint directory (config.json + model.safetensors) for its family.

    Post-LN with tanh GELU is `openai-gpt`; pre-LN is `gpt2`. Other combinations have no HF twin.
    """
    cfg = model.config
    if cfg.norm == "post" and cfg.activation != "gelu_new":
        raise ConversionError("post-LN export needs model.activation=gelu_new (openai-gpt's GELU)")
    family = "openai-gpt" if cfg.norm == "post" else "gpt2"
    state = model.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for name, hf_name in _names(family, cfg).items():
        t = state[name]
        if name == "wte.weight":
            t = t[: cfg.vocab_size]  # drop vocabulary padding rows
        tensors["transformer." + hf_name] = (t.t() if name.endswith(CONV1D) else t).contiguous()
    common = {
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.block_size,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout,
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "tie_word_embeddings": True,
    }
    if family == "openai-gpt":
        hf = {"model_type": "openai-gpt", "architectures": ["OpenAIGPTLMHeadModel"], "afn": "gelu", **common}
    else:
        hf = {
            "model_type": "gpt2",
            "architectures": ["GPT2LMHeadModel"],
            "activation_function": cfg.activation,
            **common,
        }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(hf, indent=2))
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})


def import_hf(src_dir: str | Path, out_dir: str | Path) -> GPT:
    """HF checkpoint directory -> gptflow model directory; returns the model."""
    model = from_hf(src_dir)
    save_model(model, out_dir)
    return model


def export_hf(model_dir: str | Path, out_dir: str | Path) -> None:
    """gptflow model directory -> HF checkpoint directory."""
    to_hf(load_model(model_dir), out_dir)
