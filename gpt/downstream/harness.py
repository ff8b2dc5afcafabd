"""gptflow's GPT as an lm-evaluation-harness model: the field's standard evals on any model directory.

`HarnessLM` implements lm-eval's `LM` interface directly over the GPT and its tiktoken encoding, so every
gptflow model is evaluable, whatever its tokenizer (a trained BPE has no Hugging Face tokenizer to export).
Log-likelihoods follow lm-eval's own rule for Hugging Face models: trailing spaces of the context move to the
continuation, the continuation's tokens are those of (context + continuation) past the context's tokens, and
an empty context is conditioned on the end-of-text token. Contexts are cut from the left to fit the block.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import tiktoken
import torch
import torch.nn.functional as F
from lm_eval.api.model import LM

from gpt.data.tokenizer import special_ids
from gpt.model.generate import generate
from gpt.model.transformer import GPT

if TYPE_CHECKING:
    from lm_eval.api.instance import Instance


def split_pair(enc: tiktoken.Encoding, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of (context, continuation), tokenized as lm-eval tokenizes them for its `hf` models."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = enc.encode_ordinary(context + continuation)
    context_ids = enc.encode_ordinary(context)
    return context_ids, whole[len(context_ids) :]


@torch.no_grad()
def score_continuations(
    model: GPT, pairs: list[tuple[list[int], list[int]]], batch_size: int = 16
) -> list[tuple[float, bool]]:
    """(sum of log p(continuation | context), whether greedy decoding yields it) for each pair.

    The context is cut from the left so that the model reads at most a block (lm-eval's rule: the last
    block + 1 tokens of context + continuation, all but the last fed); a continuation longer than the block
    keeps its last block tokens. Pairs are scored longest first, so a
    batch pads little, and returned in the input order.
    """
    block = model.config.block_size
    device = next(model.parameters()).device
    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
    results: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)
    for start in range(0, len(order), batch_size):
        batch = []
        for i in order[start : start + batch_size]:
            context, continuation = pairs[i]
            continuation = continuation[-block:]  # block + 1 tokens in all: the model reads the first block
            batch.append((context[max(0, len(context) + len(continuation) - block - 1) :], continuation))
        T = max(len(c) + len(x) for c, x in batch)
        idx = torch.zeros(len(batch), T, dtype=torch.long)
        for b, (c, x) in enumerate(batch):
            idx[b, : len(c) + len(x)] = torch.tensor(c + x)
        logits = model(idx[:, :-1].to(device)).float()
        logprobs = F.log_softmax(logits, dim=-1)
        for b, (c, x) in enumerate(batch):
            lo, hi = len(c) - 1, len(c) + len(x) - 1  # predictions of the continuation's tokens
            target = idx[b, lo + 1 : hi + 1].to(device)
            rows = logprobs[b, lo:hi]
            total = float(rows.gather(-1, target[:, None]).sum())
            greedy = bool((rows.argmax(-1) == target).all())
            results[order[start + b]] = (total, greedy)
    return results


class HarnessLM(LM):
    """lm-eval's `LM` over a gptflow GPT: loglikelihood, rolling loglikelihood and greedy generation."""

    def __init__(self, model: GPT, enc: tiktoken.Encoding, batch_size: int = 16, max_gen_tokens: int = 64):
        super().__init__()
        self.model = model.eval()
        self.enc = enc
        self.batch_size = batch_size
        self.max_gen_tokens = max_gen_tokens
        self.eot = special_ids(enc)["eot"]

    def _pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        context_ids, continuation_ids = split_pair(self.enc, context, continuation)
        return (context_ids or [self.eot]), continuation_ids

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """log p(continuation | context) and greedy-ness for each (context, continuation) request."""
        pairs = [self._pair(*r.args) for r in requests]
        return score_continuations(self.model, pairs, self.batch_size)

    def loglikelihood_rolling(self, requests: list[Instance]) -> list[float]:
        """Each text's whole log-likelihood after end-of-text, in disjoint windows with the most context."""
        step = self.model.config.block_size  # tokens scored per window, after at least one of context
        out = []
        for r in requests:
            tokens = [self.eot, *self.enc.encode_ordinary(r.args[0])]
            # each window's context is cut from the left to fill the block (score_continuations)
            pairs = [(tokens[:lo], tokens[lo : lo + step]) for lo in range(1, len(tokens), step)]
            out.append(sum(s for s, _ in score_continuations(self.model, pairs, self.batch_size)))
        return out

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Greedy continuations, cut at the first of the request's `until` strings."""
        out = []
        for r in requests:
            context, gen_kwargs = r.args
            until = _until(gen_kwargs)
            limit = int(gen_kwargs.get("max_gen_toks", self.max_gen_tokens))
            prompt = self.enc.encode_ordinary(context) or [self.eot]
            text = self.enc.decode(generate(self.model, prompt, limit, temperature=0.0, stop_id=self.eot))
            cut = min((i for i in (text.find(u) for u in until) if i >= 0), default=len(text))
            out.append(text[:cut])
        return out


def _until(gen_kwargs: dict[str, Any]) -> list[str]:
    until = gen_kwargs.get("until", [])
    return [until] if isinstance(until, str) else list(until)
