"""Built-in downstream tasks served from the mirror, and the one lookup for every task name.

A task name is a custom task from the config's `tasks:` mapping, a built-in mirror task (SST-2,
RTE, MRPC, STS-B, Story Cloze) or a Hugging Face hub task (CoLA, MNLI, QNLI, QQP, SNLI, SciTail, RACE).
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np

from gpt.data.sources import CATALOG, fetch
from gpt.downstream.config import CustomTaskConfig
from gpt.downstream.hub import HUB_TASKS
from gpt.downstream.spec import Example, TaskDataError, TaskSpec, TaskType, cap_examples, label_index, read_table

__all__ = ["BUILTIN_TASKS", "Example", "TaskSpec", "TaskType", "cap_examples", "get_task", "known_tasks"]


def _glue_loader(
    entry: str, columns: tuple[str, ...], label: str, to_label: Callable[[Path, int, str], int | float]
) -> Callable[[str, Path], list[Example]]:
    """A loader for a GLUE TSV (quoting off): `columns` in transformation order, `label` parsed by `to_label`."""

    def load(split: str, cache_dir: Path) -> list[Example]:
        (remote,) = CATALOG[f"{entry}/{split}"]
        path = fetch(remote, cache_dir)
        _, rows = read_table(path, "tsv", quoting="none")
        return [
            Example(tuple(row[c].strip() for c in columns), to_label(path, lineno, row[label]))
            for lineno, row in rows
        ]

    return load


def _classes(names: tuple[str, ...], column: str) -> Callable[[Path, int, str], int]:
    return lambda path, lineno, value: label_index(path, lineno, column, value, names)


def _score(low: float, high: float, column: str) -> Callable[[Path, int, str], float]:
    def parse(path: Path, lineno: int, value: str) -> float:
        try:
            score = float(value)
        except ValueError:
            score = float("nan")
        if not low <= score <= high:
            raise TaskDataError(f"{path}:{lineno}: column {column!r} has {value!r}, not a score in [{low}, {high}]")
        return score

    return parse


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
    "sst2": TaskSpec(
        "sst2",
        "classification",
        2,
        ("accuracy",),
        _glue_loader("sst2", ("sentence",), "label", _classes(("0", "1"), "label")),
        files=("sst2/train", "sst2/dev"),
        label_names=("negative", "positive"),
    ),
    "rte": TaskSpec(
        "rte",
        "entailment",
        2,
        ("accuracy",),
        _glue_loader(
            "rte", ("sentence1", "sentence2"), "label", _classes(("entailment", "not_entailment"), "label")
        ),
        files=("rte/train", "rte/dev"),
        label_names=("entailment", "not_entailment"),
    ),
    "mrpc": TaskSpec(
        "mrpc",
        "similarity",
        2,
        ("f1", "accuracy"),
        _glue_loader("mrpc", ("#1 String", "#2 String"), "Quality", _classes(("0", "1"), "Quality")),
        files=("mrpc/train", "mrpc/dev"),
        label_names=("not_paraphrase", "paraphrase"),
    ),
    "stsb": TaskSpec(
        "stsb",
        "similarity",
        1,
        ("pearson", "spearman"),
        _glue_loader("stsb", ("sentence1", "sentence2"), "score", _score(0.0, 5.0, "score")),
        files=("stsb/train", "stsb/dev"),
        regression=True,
    ),
    "story_cloze": TaskSpec(
        "story_cloze",
        "multiple_choice",
        2,
        ("accuracy",),
        _load_story_cloze,
        files=("story_cloze/val",),
        label_names=("ending_1", "ending_2"),
    ),
}


def known_tasks(custom: dict[str, CustomTaskConfig] | None = None) -> list[str]:
    """Every task name `get_task` accepts."""
    return sorted({*BUILTIN_TASKS, *HUB_TASKS, *(custom or {})})


def get_task(name: str, custom: dict[str, CustomTaskConfig] | None = None) -> TaskSpec:
    """The task called `name`: a custom task from the config first, then built-in and hub tasks.

    Raises KeyError listing the known names.
    """
    if custom and name in custom:
        from gpt.downstream.custom import custom_task_spec

        return custom_task_spec(name, custom[name])
    if name in BUILTIN_TASKS:
        return BUILTIN_TASKS[name]
    if name in HUB_TASKS:
        return HUB_TASKS[name]
    raise KeyError(f"unknown task {name!r} (known: {', '.join(known_tasks(custom))})")
