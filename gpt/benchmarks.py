"""Built-in fine-tuning benchmarks: where their files come from and how rows become examples."""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from gpt.sources import CATALOG, fetch

TaskType = Literal["classification", "entailment", "similarity", "multiple_choice"]


@dataclass(frozen=True)
class Example:
    """One labelled example: its text fields in the order the task's input transformation uses them.

    classification: (text,); entailment: (premise, hypothesis); similarity: (a, b);
    multiple_choice: (context, answer_1, ..., answer_n) with `label` the index of the right answer.
    """

    fields: tuple[str, ...]
    label: int


@dataclass(frozen=True)
class TaskSpec:
    """A benchmark: its input format, output size, official metric and data splits."""

    name: str
    type: TaskType
    num_outputs: int  # classes, or answers per example for multiple choice
    metric: str
    files: tuple[str, ...]  # catalog entries it reads (checked before any compute)
    load: Callable[[str, Path], list[Example]]  # (split: "train" | "dev", cache_dir) -> examples


def _read_tsv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def _load_sst2(split: str, cache_dir: Path) -> list[Example]:
    (remote,) = CATALOG[f"sst2/{split}"]
    path = fetch(remote, cache_dir)
    rows = _read_tsv(path)
    out = []
    for lineno, row in enumerate(rows, 2):
        if row.get("label") not in ("0", "1"):
            raise ValueError(f"{path}:{lineno}: label must be 0 or 1, got {row.get('label')!r}")
        out.append(Example((row["sentence"].strip(),), int(row["label"])))
    return out


# GPT-1's finetune-transformer-lm held out 374 of the 1,871 Story Cloze val stories with
# sklearn's train_test_split(test_size=374, random_state=3535999445); this is that split.
STORY_CLOZE_SEED = 3535999445
STORY_CLOZE_DEV = 374


def _load_story_cloze(split: str, cache_dir: Path) -> list[Example]:
    (remote,) = CATALOG["story_cloze/val"]
    path = fetch(remote, cache_dir)
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    perm = np.random.RandomState(STORY_CLOZE_SEED).permutation(len(rows))
    chosen = perm[:STORY_CLOZE_DEV] if split == "dev" else perm[STORY_CLOZE_DEV:]
    out = []
    for i in chosen:
        row = rows[i]
        context = " ".join(row[f"InputSentence{k}"].strip() for k in range(1, 5))
        endings = (row["RandomFifthSentenceQuiz1"].strip(), row["RandomFifthSentenceQuiz2"].strip())
        out.append(Example((context, *endings), int(row["AnswerRightEnding"]) - 1))
    return out


BUILTIN_TASKS: dict[str, TaskSpec] = {
    "sst2": TaskSpec("sst2", "classification", 2, "accuracy", ("sst2/train", "sst2/dev"), _load_sst2),
    "story_cloze": TaskSpec("story_cloze", "multiple_choice", 2, "accuracy", ("story_cloze/val",), _load_story_cloze),
}


def get_task(name: str) -> TaskSpec:
    """The built-in task called `name`; the error lists the known ones."""
    if name not in BUILTIN_TASKS:
        raise KeyError(f"unknown task {name!r} (built-in: {', '.join(sorted(BUILTIN_TASKS))})")
    return BUILTIN_TASKS[name]


def cap_examples(examples: list[Example], max_examples: int | None, seed: int) -> list[Example]:
    """A seeded random subset of at most `max_examples` (all of them, shuffled, when None)."""
    order = np.random.default_rng(seed).permutation(len(examples))
    if max_examples is not None:
        order = order[:max_examples]
    return [examples[i] for i in order]
