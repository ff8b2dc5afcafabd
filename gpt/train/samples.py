"""Sampled continuations of a few fixed prompts: how a language model's text reads as it trains."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import lightning as L
import torch

from gpt.model.generate import generate

if TYPE_CHECKING:
    import tiktoken

    from gpt.model.transformer import GPT
    from gpt.train.pretrain import LMModule

PROMPTS = ("The ", "It was ", "\n")
SAMPLE_TEMPERATURE, SAMPLE_TOP_K = 0.8, 40


def sample_text(model: GPT, enc: tiktoken.Encoding, n_tokens: int, seed: int) -> str:
    """A continuation of each of PROMPTS, with its own RNG so training's RNG stream is untouched."""
    gen = torch.Generator().manual_seed(seed)
    samples = []
    for prompt in PROMPTS:
        ids = generate(
            model,
            enc.encode_ordinary(prompt),
            n_tokens,
            temperature=SAMPLE_TEMPERATURE,
            top_k=SAMPLE_TOP_K,
            stop_id=enc.eot_token,
            generator=gen,
        )
        samples.append(f"--- prompt: {prompt!r}\n{prompt}{enc.decode(ids)}\n")
    return "\n".join(samples)


class SampleCallback(L.Callback):
    """At each validation (rank 0, not the sanity check), sample continuations and hand them to `write(step, text)`."""

    def __init__(self, enc: tiktoken.Encoding, n_tokens: int, seed: int, write: Callable[[int, str], None]):
        self.enc, self.n_tokens, self.seed, self.write = enc, n_tokens, seed, write

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        step = trainer.global_step
        self.write(step, sample_text(cast("LMModule", pl_module).model, self.enc, self.n_tokens, self.seed + step))
