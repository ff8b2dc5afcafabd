"""The GPT decoder: GPT-1 (post-LN) or GPT-2 (pre-LN + final LN) blocks, tied embeddings.

Readable in one sitting, after nanoGPT. `forward(idx)` gives next-token logits; `hidden_states(idx)`
gives the final hidden states so fine-tuning heads can read h(extract), and `lm_logits` turns hidden
states into logits through the tied embedding. An optional `KVCache` makes generation incremental.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from gpt.model.config import CONFIG_FILE, WEIGHTS_FILE, ModelConfig, read_model_config


class KVCache:
    """Keys and values of every layer for one batch of sequences, filled as generation proceeds."""

    def __init__(self, cfg: ModelConfig, batch_size: int, device: torch.device, dtype: torch.dtype):
        shape = (batch_size, cfg.n_head, cfg.block_size, cfg.n_embd // cfg.n_head)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.pos = 0  # positions filled so far

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store new keys/values at `pos` and return all keys/values so far (advance with `advance`)."""
        end = self.pos + k.size(2)
        self.k[layer][:, :, self.pos : end] = k
        self.v[layer][:, :, self.pos : end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def advance(self, n: int) -> None:
        """Mark `n` more positions as filled (after all layers have stored them)."""
        self.pos += n


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.n_head, self.layer = cfg.n_head, layer
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        p = self.dropout if self.training else 0.0
        if cache is None or cache.pos == 0:
            if cache is not None:
                cache.update(self.layer, k, v)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)
        else:  # new queries attend to everything cached plus themselves (causally among themselves)
            start = cache.pos
            k, v = cache.update(self.layer, k, v)
            mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(diagonal=start)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)
        self.approximate = "tanh" if cfg.activation == "gelu_new" else "none"
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate=self.approximate)))


class Block(nn.Module):
    """One Transformer block; `norm='post'` is GPT-1's LN(x + f(x)), `'pre'` is GPT-2's x + f(LN(x))."""

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.pre_norm = cfg.norm == "pre"
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg, layer)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        if self.pre_norm:
            x = x + self.attn(self.ln_1(x), cache)
            return x + self.mlp(self.ln_2(x))
        x = self.ln_1(x + self.attn(x, cache))
        return self.ln_2(x + self.mlp(x))


class GPT(nn.Module):
    """Decoder-only Transformer with learned positions and input/output embeddings tied."""

    padding_logit_bias: torch.Tensor  # [padded vocab]: 0 for real tokens, -inf for the padding rows

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.norm not in ("post", "pre") or cfg.activation not in ("gelu", "gelu_new"):
            raise ValueError(f"unsupported norm/activation {cfg.norm!r}/{cfg.activation!r}")
        if cfg.vocab_size is None:
            raise ValueError("the GPT needs ModelConfig.vocab_size: build it from `config.with_vocab(n)`")
        self.config = cfg
        self.wte = nn.Embedding(cfg.padded_vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.h = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd) if cfg.norm == "pre" else nn.Identity()
        # -inf on the padding rows' logits: the loss runs over the padded (GEMM-friendly) width, with no
        # copy of the logits to cut the padding off, and is exactly the loss over the real vocabulary.
        padding_logit_bias = torch.zeros(cfg.padded_vocab_size)
        padding_logit_bias[cfg.vocab_size :] = float("-inf")
        self.register_buffer("padding_logit_bias", padding_logit_bias, persistent=False)
        self.apply(self._init_weights)
        if cfg.norm == "pre":  # GPT-2: scale residual projections by 1/sqrt(2 * n_layer)
            for name, p in self.named_parameters():
                if name.endswith("c_proj.weight"):
                    nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @property
    def vocab_size(self) -> int:
        """Tokens in the vocabulary: `config.vocab_size`, which a GPT is never built without."""
        if self.config.vocab_size is None:
            raise ValueError("this GPT's config has no vocab_size")
        return self.config.vocab_size

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; without position embeddings by default (`ModelConfig.num_params`)."""
        return self.config.num_params(non_embedding)

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Token ids [B, T] to next-token logits [B, T, V] (V = the real vocabulary, padding cut off)."""
        return self.lm_logits(self.hidden_states(idx, cache))

    def hidden_states(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Token ids [B, T] to final hidden states [B, T, C] (what task heads read).

        With a `cache`, `idx` continues the sequences already in it (positions start at `cache.pos`).
        """
        start = cache.pos if cache is not None else 0
        T = idx.size(1)
        if self.config.block_size < start + T:
            raise ValueError(f"sequence length {start + T} exceeds block_size {self.config.block_size}")
        pos = torch.arange(start, start + T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.h:
            x = block(x, cache)
        if cache is not None:
            cache.advance(T)
        return self.ln_f(x)

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-token logits from hidden states, through the tied token embedding; padded rows are cut off."""
        logits = F.linear(hidden, self.wte.weight)
        if self.config.padded_vocab_size != self.config.vocab_size:
            logits = logits[..., : self.config.vocab_size]
        return logits

    def lm_loss(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy of hidden states [..., C] against `targets` [...] (-100: ignored).

        The training path: the logits keep the padded width, their padding columns at -inf (probability
        exactly 0), so the loss equals the one over the real vocabulary without copying the logits,
        which at a 50k vocabulary cost more than the rest of the LM head.
        """
        logits = F.linear(hidden, self.wte.weight, self.padding_logit_bias)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-100)

    def next_token_loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Pretraining's loss: mean cross-entropy of `targets` [B, T] given token ids `idx` [B, T]."""
        return self.lm_loss(self.hidden_states(idx), targets)

    def flops_per_token(self) -> int:
        """Training FLOPs per token (`ModelConfig.flops_per_token`: 6N plus attention scores)."""
        return self.config.flops_per_token()


def save_model(model: GPT, out_dir: str | Path) -> None:
    """Write `config.json` + `model.safetensors` (tied weights stored once)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).write_text(json.dumps(asdict(model.config), indent=2))
    state = model.state_dict()
    save_file({k: v.detach().contiguous() for k, v in state.items()}, out / WEIGHTS_FILE)


def load_model(model_dir: str | Path, map_location: str = "cpu") -> GPT:
    """Rebuild a GPT from a directory written by `save_model` (safetensors: no pickle is ever loaded)."""
    d = Path(model_dir)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (d / name).is_file():
            raise FileNotFoundError(f"{d / name} not found: a model directory holds {CONFIG_FILE} and {WEIGHTS_FILE}")
    cfg = read_model_config(d)
    model = GPT(cfg)
    model.load_state_dict(load_file(d / WEIGHTS_FILE, device=map_location))
    return model
