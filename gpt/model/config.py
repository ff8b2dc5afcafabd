"""The GPT's architecture: the `model` section of the experiment config, and what a saved model stores."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from gpt.config.fields import DERIVED, FieldError, Section, at_least, between, knob

CONFIG_FILE = "config.json"  # a model directory: the architecture ...
WEIGHTS_FILE = "model.safetensors"  # ... and the weights (safetensors: loading runs no code)
MAX_BLOCK_SIZE = 65_536  # the position table is block_size x n_embd, attention block_size^2 per head
Activation = Literal["gelu", "gelu_new"]  # ModelConfig.activation


@dataclass
class ModelConfig(Section):
    """GPT architecture; the defaults are GPT-1's except for size."""

    n_layer: int = knob(4, "Transformer blocks", check=at_least(1))
    n_head: int = knob(4, "attention heads per block", check=at_least(1))
    n_embd: int = knob(256, "width of the residual stream; divisible by n_head", check=at_least(1))
    block_size: int = knob(256, "context length in tokens", check=between(8, MAX_BLOCK_SIZE))
    dropout: float = knob(
        0.1, "dropout on embeddings, attention and residual branches", check=between(0, 1, high_open=True)
    )
    norm: Literal["post", "pre"] = knob("post", "post: GPT-1's LN(x + f(x)); pre: GPT-2's x + f(LN(x)) with a final LN")
    activation: Activation = knob("gelu", "gelu: exact (erf); gelu_new: tanh approximation (GPT-1/2 code)")
    pad_vocab_to: int = knob(
        1, "round the embedding rows up to a multiple (64 speeds up the LM head)", check=at_least(1)
    )
    vocab_size: int | None = knob(
        None, "tokens in the vocabulary; the tokenizer's (set by the pipeline)", check=at_least(1), role=DERIVED
    )

    def check(self) -> None:
        if self.n_embd % self.n_head:
            raise FieldError("n_embd", f"({self.n_embd}) must be divisible by 'n_head' ({self.n_head})")

    def with_vocab(self, vocab_size: int) -> ModelConfig:
        """This architecture over a vocabulary of `vocab_size` tokens: what a GPT module is built from."""
        return replace(self, vocab_size=vocab_size)

    def num_params(self, non_embedding: bool = True) -> int:
        """The GPT's parameter count from the architecture alone (no torch); without the position table
        by default (the 6N FLOPs convention). Equals `GPT.num_params` (tested)."""
        C = self.n_embd
        attention = 3 * C * C + 3 * C + C * C + C
        mlp = 4 * C * C + 4 * C + 4 * C * C + C
        layer = attention + mlp + 2 * 2 * C  # two LayerNorms
        final_norm = 2 * C if self.norm == "pre" else 0
        n = self.padded_vocab_size * C + self.n_layer * layer + final_norm
        return n if non_embedding else n + self.block_size * C

    def flops_per_token(self) -> int:
        """Training FLOPs per token: 6N for the weights plus 6·L·T·C for attention scores."""
        return 6 * self.num_params() + 6 * self.n_layer * self.block_size * self.n_embd

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the token embedding; logits beyond `vocab_size` are never returned."""
        if self.vocab_size is None:
            raise ValueError("ModelConfig.vocab_size is unset: build the GPT from `config.with_vocab(n)`")
        m = self.pad_vocab_to
        return (self.vocab_size + m - 1) // m * m


def read_model_config(model_dir: str | Path) -> ModelConfig:
    """The architecture a model directory stores in `config.json`, checked like any config section."""
    path = Path(model_dir) / CONFIG_FILE
    if not path.is_file():
        raise ValueError(f"{path} not found: {model_dir} is not a gptflow model directory")
    try:
        return ModelConfig(**json.loads(path.read_text()))
    except (ValueError, TypeError) as e:  # bad JSON, an unknown key or a value out of range
        raise ValueError(f"{path} is not a gptflow model config: {e}") from None
