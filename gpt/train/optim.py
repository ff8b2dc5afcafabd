"""AdamW with GPT-1's weight-decay rule and the warmup schedules of the paper."""

from __future__ import annotations

import math

import torch
from torch import nn


def adamw(model: nn.Module, lr: float, weight_decay: float, fused: bool = False) -> torch.optim.AdamW:
    """AdamW decaying only matrices and embeddings (>= 2-D), never biases or LayerNorm gains.

    `fused`: one kernel updates every tensor (on this 2-core CPU a 16M-parameter update drops from ~60
    to ~9 ms, about 3% of a step); the caller says whether its training loop can clip its gradients.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = fused and all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, fused=fused)


def warmup_cosine(warmup: int, total: int, min_ratio: float = 0.0):
    """LR multiplier: linear warmup over `warmup` steps, then cosine down to `min_ratio` at `total`."""

    def fn(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return fn


def warmup_linear(warmup: int, total: int):
    """LR multiplier: linear warmup over `warmup` steps, then linear decay to 0 at `total` (fine-tuning)."""

    def fn(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return fn


def warmup_stable_decay(warmup: int, total: int, cooldown: int, min_ratio: float = 0.0):
    """LR multiplier: linear warmup, then constant, then linear decay to `min_ratio` over the last `cooldown` steps.

    Before its cooldown the schedule does not depend on `total`, so a run stopped at the cooldown's start can be
    extended to any longer `total` and continue exactly as a run planned that long from the start.
    """

    def fn(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        start = total - cooldown
        if step < start:
            return 1.0
        return max(min_ratio, 1 - (1 - min_ratio) * (step - start) / max(1, cooldown))

    return fn
