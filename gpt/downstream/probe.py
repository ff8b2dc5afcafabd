"""Linear probes of h(extract) on the frozen model during pretraining: are the features the tasks need there?

At each validation a logistic regression (scikit-learn) is fit on the frozen model's final hidden state at the
`extract` token of GPT-1's input transformation, on a seeded subset of the task's training split, and scored on
its dev split. The step-0 probe reads a random model's features, so the curve starts at the random-feature
baseline. If pretrained features probe better than random ones but fine-tuning from them loses to training from
scratch, the fine-tuning recipe is at fault; if they don't, the pretraining is.

Classification and entailment read one sequence; similarity sums the two orders' features (as its head does); a
two-answer multiple-choice task reads the difference of the answers' features (a linear scorer's margin).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tiktoken
import torch

from gpt.downstream.builtin import get_task
from gpt.downstream.config import CustomTaskConfig
from gpt.downstream.spec import TaskSpec, cap_examples, probe_supported
from gpt.downstream.transforms import EncodedExample, collate, encode_examples
from gpt.model.transformer import GPT
from gpt.train.callbacks import ScoresAtValidation


@dataclass
class ProbeSet:
    """A task's encoded training and dev examples for a linear probe."""

    name: str
    task_type: str
    train: list[EncodedExample]
    dev: list[EncodedExample]


def build_probe_set(
    spec: TaskSpec, enc: tiktoken.Encoding, cache_dir: Path, max_train: int | None, max_len: int, seed: int
) -> ProbeSet:
    """Encode a seeded subset of `max_train` training examples and the whole dev split."""
    train = cap_examples(spec.load("train", cache_dir), max_train, seed)
    dev = spec.load("dev", cache_dir)
    return ProbeSet(
        spec.name,
        spec.type,
        encode_examples(train, spec.type, enc, max_len),
        encode_examples(dev, spec.type, enc, max_len),
    )


@torch.no_grad()
def extract_features(model: GPT, examples: list[EncodedExample], task_type: str, batch_size: int = 64) -> np.ndarray:
    """One feature vector per example from h(extract), combined across its sequences by the task type."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start : start + batch_size])
        tokens, lengths = batch["tokens"].to(device), batch["lengths"].to(device)
        B, C, T = tokens.shape
        hidden = model.hidden_states(tokens.view(B * C, T))
        h = hidden[torch.arange(B * C, device=device), lengths.view(B * C) - 1].float().view(B, C, -1)
        # two answers: their margin; else one sequence, or both orders of a similarity pair, summed
        feats = h[:, 0] - h[:, 1] if task_type == "multiple_choice" else h.sum(1)
        out.append(feats.cpu().numpy())
    return np.concatenate(out)


def probe_accuracy(model: GPT, data: ProbeSet, seed: int = 0) -> float:
    """Dev accuracy of a logistic regression fit on the frozen model's training-split features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    was_training = model.training
    model.eval()
    x_train = extract_features(model, data.train, data.task_type)
    x_dev = extract_features(model, data.dev, data.task_type)
    model.train(was_training)
    y_train = np.array([int(e.label) for e in data.train])
    y_dev = np.array([int(e.label) for e in data.dev])
    if data.task_type == "multiple_choice":  # label 0: the first answer is right, so its margin is positive
        y_train, y_dev = (y_train == 0).astype(int), (y_dev == 0).astype(int)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    probe.fit(x_train, y_train)
    return float(probe.score(x_dev, y_dev))


class ProbeEval(ScoresAtValidation):
    """Logs `probe/<task>` dev accuracy of a linear probe at every validation."""

    def __init__(self, sets: list[ProbeSet], seed: int = 0):
        self.sets = sets
        super().__init__("probe", [(d.name, d) for d in sets], lambda m, d: probe_accuracy(m, d, seed))


def probe_callback(
    names: list[str],
    enc: tiktoken.Encoding,
    cache_dir: Path,
    max_train: int | None,
    max_len: int,
    seed: int,
    custom: dict[str, CustomTaskConfig] | None = None,
) -> ProbeEval:
    """The callback for tasks `names`, built-in or custom (checked by `check_task_inputs` before compute)."""
    assert all(probe_supported(get_task(n, custom)) for n in names), "checked by check_task_inputs"
    sets = [build_probe_set(get_task(n, custom), enc, cache_dir, max_train, max_len, seed) for n in names]
    return ProbeEval(sets, seed)
