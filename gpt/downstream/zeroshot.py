"""Zero-shot task scores during pretraining (GPT-1 §5, Fig. 2): how far the LM alone gets, checkpoint by checkpoint.

Multiple choice: the answer with the highest average token log-likelihood after the context wins.
SST-2: the text + " very", then whichever of " positive" / " negative" is likelier. No special
tokens are used, since the LM never saw them during pretraining.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import tiktoken
import torch
import torch.nn.functional as F

from gpt.downstream.builtin import get_task
from gpt.downstream.config import CustomTaskConfig
from gpt.downstream.spec import SENTIMENT_VERBALIZERS, Example, TaskSpec, cap_examples
from gpt.model.transformer import GPT
from gpt.train.callbacks import ScoresAtValidation

SENTIMENT_PROMPT = " very"


@dataclass
class ZeroShotSet:
    """A task's dev examples as (prefix, continuation) token pairs: `n_choices` per example, in label order."""

    name: str
    prefixes: list[list[int]]
    continuations: list[list[int]]
    n_choices: int
    labels: torch.Tensor
    average: bool  # score by mean token log-likelihood (multiple choice) or by the sum (verbalizers)


def build_zeroshot_set(
    spec: TaskSpec, enc: tiktoken.Encoding, cache_dir: Path, max_examples: int | None, seed: int
) -> ZeroShotSet:
    """Tokenize a task's dev split for zero-shot scoring (a seeded subset of `max_examples`)."""
    return encode_zeroshot(spec, cap_examples(spec.load("dev", cache_dir), max_examples, seed), enc)


def encode_zeroshot(spec: TaskSpec, examples: list[Example], enc: tiktoken.Encoding) -> ZeroShotSet:
    """Examples of task `spec` as (prefix, continuation) pairs, scored by the task's rule (see the module doc)."""
    prefixes, continuations = [], []
    if spec.type == "multiple_choice":
        for e in examples:
            context = enc.encode_ordinary(e.fields[0])
            for answer in e.fields[1:]:
                prefixes.append(context)
                continuations.append(enc.encode_ordinary(" " + answer))
        n_choices, average = spec.num_outputs, True
    else:
        verbalizers = [enc.encode_ordinary(v) for v in SENTIMENT_VERBALIZERS[spec.name]]
        for e in examples:
            prompt = enc.encode_ordinary(e.fields[0] + SENTIMENT_PROMPT)
            for v in verbalizers:
                prefixes.append(prompt)
                continuations.append(v)
        n_choices, average = len(verbalizers), False
    labels = torch.tensor([int(e.label) for e in examples])
    return ZeroShotSet(spec.name, prefixes, continuations, n_choices, labels, average)


@torch.no_grad()
def continuation_logprobs(
    model: GPT, prefixes: list[list[int]], continuations: list[list[int]], batch_size: int = 16
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of log p(continuation tokens | prefix), number of continuation tokens) per pair.

    The prefix is cut from the left so that prefix + continuation fits the model's context.
    """
    block = model.config.block_size
    device = next(model.parameters()).device
    sums, counts = [], []
    for i in range(0, len(prefixes), batch_size):
        pairs = []
        for p, c in zip(prefixes[i : i + batch_size], continuations[i : i + batch_size], strict=True):
            c = c[: block - 1]
            pairs.append((p[-(block - len(c)) :] if len(p) + len(c) > block else p, c))
        T = max(len(p) + len(c) for p, c in pairs)
        idx = torch.zeros(len(pairs), T, dtype=torch.long)
        mask = torch.zeros(len(pairs), T - 1, dtype=torch.bool)  # which next-token predictions to count
        for b, (p, c) in enumerate(pairs):
            idx[b, : len(p) + len(c)] = torch.tensor(p + c)
            mask[b, len(p) - 1 : len(p) + len(c) - 1] = True
        idx, mask = idx.to(device), mask.to(device)
        logprobs = F.log_softmax(model(idx[:, :-1]).float(), dim=-1).gather(-1, idx[:, 1:, None]).squeeze(-1)
        sums.append((logprobs * mask).sum(1).cpu())
        counts.append(mask.sum(1).cpu())
    return torch.cat(sums), torch.cat(counts)


def zeroshot_predictions(model: GPT, data: ZeroShotSet, batch_size: int = 16) -> torch.Tensor:
    """The index of the likeliest continuation of each example, by the set's rule (average or sum)."""
    total, count = continuation_logprobs(model, data.prefixes, data.continuations, batch_size)
    scores = total / count.clamp(min=1) if data.average else total
    return scores.view(-1, data.n_choices).argmax(-1)


def zeroshot_accuracy(model: GPT, data: ZeroShotSet, batch_size: int = 16) -> float:
    """Accuracy of picking the likeliest continuation of each example."""
    return float((zeroshot_predictions(model, data, batch_size) == data.labels).float().mean())


class ZeroShotEval(ScoresAtValidation):
    """Logs `zeroshot/<task>` accuracy at every validation."""

    def __init__(self, sets: list[ZeroShotSet], batch_size: int = 16):
        self.sets = sets
        super().__init__("zeroshot", [(d.name, d) for d in sets], lambda m, d: zeroshot_accuracy(m, d, batch_size))


def zeroshot_callback(
    names: list[str],
    enc: tiktoken.Encoding,
    cache_dir: Path,
    max_examples: int | None,
    seed: int,
    custom: dict[str, CustomTaskConfig] | None = None,
) -> ZeroShotEval:
    """The callback for tasks `names`, built-in or custom (checked by `check_task_inputs` before compute)."""
    sets = [build_zeroshot_set(get_task(n, custom), enc, cache_dir, max_examples, seed) for n in names]
    return ZeroShotEval(sets)
