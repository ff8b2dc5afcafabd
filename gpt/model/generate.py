"""Sampling from a GPT: greedy, temperature, top-k and top-p (nucleus), stopping at end-of-text.

Generation is incremental through a KV cache: after the prompt, each step feeds one token. Once the
context is full, the window slides and the cache is rebuilt from the last `block_size` tokens, so the
output is exactly what full recomputation (`use_cache=False`) gives.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypedDict, Unpack

import torch

from gpt.model.transformer import GPT, KVCache


def filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Mask all but the top-k tokens and/or the smallest set whose probability reaches top-p."""
    if top_k is not None and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[..., -1, None]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) >= top_p  # keep the token that crosses top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


@torch.no_grad()
def stream_tokens(
    model: GPT,
    prompt: list[int],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_id: int | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> Iterator[int]:
    """Yield new token ids after `prompt` one at a time; temperature 0 means greedy.

    The model is put in eval mode for the duration and returned to its previous mode afterwards.
    """
    if not prompt:
        raise ValueError("the prompt must contain at least one token")
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        dtype = next(model.parameters()).dtype
        block = model.config.block_size
        tokens = list(prompt)
        cache: KVCache | None = None
        for _ in range(max_new_tokens):
            if not use_cache:
                logits = model(torch.tensor([tokens[-block:]], device=device))
            elif cache is None or cache.pos >= block:  # (re)fill: the start, or the window slid
                cache = KVCache(model.config, 1, device, dtype)
                logits = model(torch.tensor([tokens[-block:]], device=device), cache)
            else:
                logits = model(torch.tensor([tokens[-1:]], device=device), cache)
            logits = logits[:, -1, :].float()
            if temperature == 0:
                next_id = logits.argmax(-1, keepdim=True)
            else:
                logits = filter_logits(logits / temperature, top_k, top_p)
                next_id = torch.multinomial(logits.softmax(-1), 1, generator=generator)
            token = int(next_id)
            if token == stop_id:
                return
            yield token
            tokens.append(token)
    finally:
        model.train(was_training)


class SamplingOptions(TypedDict, total=False):
    """`stream_tokens`'s keyword options, so `generate` takes exactly the same ones."""

    temperature: float
    top_k: int | None
    top_p: float | None
    stop_id: int | None
    generator: torch.Generator | None
    use_cache: bool


def generate(model: GPT, prompt: list[int], max_new_tokens: int, **options: Unpack[SamplingOptions]) -> list[int]:
    """New token ids after `prompt` as a list; temperature 0 means greedy (see `stream_tokens`)."""
    return list(stream_tokens(model, prompt, max_new_tokens, **options))
