"""GPT-1's traversal-style input transformations (§3.3): every task becomes token sequences ending in `extract`."""

from __future__ import annotations

from dataclasses import dataclass

import tiktoken
import torch

from gpt.data.tokenizer import special_ids
from gpt.downstream.spec import Example, TaskType


@dataclass
class EncodedExample:
    """The token sequences of one example (one per choice/order) and its label."""

    sequences: list[list[int]]
    label: int | float  # a class / answer index, or a regression score


def truncate(segments: list[list[int]], budget: int) -> list[list[int]]:
    """Trim segments to fit `budget` tokens in total, always shortening the longest one first."""
    lengths = [len(s) for s in segments]
    excess = sum(lengths) - budget
    while excess > 0:
        i = max(range(len(lengths)), key=lengths.__getitem__)
        lengths[i] -= 1
        excess -= 1
    return [s[:n] for s, n in zip(segments, lengths, strict=True)]


def _sequence(segments: list[list[int]], ids: dict[str, int], max_len: int) -> list[int]:
    """`start` seg1 `delim` seg2 ... `extract`, truncated so the extract token always survives."""
    specials = len(segments) + 1  # start, one delim between each pair, extract
    segments = truncate(segments, max_len - specials)
    out = [ids["start"]]
    for i, seg in enumerate(segments):
        if i:
            out.append(ids["delim"])
        out.extend(seg)
    out.append(ids["extract"])
    return out


def encode_examples(
    examples: list[Example], task_type: TaskType, enc: tiktoken.Encoding, max_len: int
) -> list[EncodedExample]:
    """Apply the task type's input transformation to every example (one batched tokenizer call)."""
    ids = special_ids(enc)
    flat = enc.encode_ordinary_batch([f for e in examples for f in e.fields])  # specials in text stay text
    out, i = [], 0
    for example in examples:
        parts, i = flat[i : i + len(example.fields)], i + len(example.fields)
        if task_type in ("classification", "entailment"):
            seqs = [_sequence(parts, ids, max_len)]
        elif task_type == "similarity":
            a, b = parts
            seqs = [_sequence([a, b], ids, max_len), _sequence([b, a], ids, max_len)]
        else:  # multiple_choice: one sequence per answer, context first
            context, answers = parts[0], parts[1:]
            seqs = [_sequence([context, answer], ids, max_len) for answer in answers]
        out.append(EncodedExample(seqs, example.label))
    return out


def collate(batch: list[EncodedExample]) -> dict[str, torch.Tensor]:
    """Right-pad to the longest sequence: tokens [B, C, T], lengths [B, C], labels [B] (long, or float scores)."""
    n_choices = len(batch[0].sequences)
    T = max(len(s) for ex in batch for s in ex.sequences)
    tokens = torch.zeros(len(batch), n_choices, T, dtype=torch.long)
    lengths = torch.zeros(len(batch), n_choices, dtype=torch.long)
    for b, ex in enumerate(batch):
        for c, seq in enumerate(ex.sequences):
            tokens[b, c, : len(seq)] = torch.tensor(seq)
            lengths[b, c] = len(seq)
    dtype = torch.float if isinstance(batch[0].label, float) else torch.long
    labels = torch.tensor([ex.label for ex in batch], dtype=dtype)
    return {"tokens": tokens, "lengths": lengths, "labels": labels}
