"""Built-in downstream tasks served from the mirror, and the one lookup for every task name.

A task name is a custom task from the config's `tasks:` mapping, a built-in mirror task (SST-2,
RTE, MRPC, STS-B, Story Cloze) or a Hugging Face hub task (CoLA, MNLI, QNLI, QQP, SNLI, SciTail, RACE).
A built-in task in `TEST_FILE_READERS` also takes a labelled test file (`builtin_tasks.<task>.test`).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np

from gpt.data.sources import CATALOG, TASK_SCHEME, SourceError, fetch
from gpt.downstream.config import BuiltinTaskConfig, CustomTaskConfig
from gpt.downstream.custom import custom_task_spec, resolve_task_file
from gpt.downstream.hub import HUB_TASKS
from gpt.downstream.spec import Example, TaskDataError, TaskSpec, TaskType, cap_examples, label_index, read_table

__all__ = [
    "BUILTIN_TASKS",
    "TEST_FILE_READERS",
    "Example",
    "TaskSpec",
    "TaskType",
    "cap_examples",
    "check_test_file",
    "get_task",
    "known_tasks",
]


def _glue_loader(
    entry: str, columns: tuple[str, ...], label: str, to_label: Callable[[Path, int, str], int | float]
) -> Callable[[str, Path], list[Example]]:
    """A loader for a GLUE TSV (quoting off): `columns` in transformation order, `label` parsed by `to_label`."""

    def load(split: str, cache_dir: Path) -> list[Example]:
        (remote,) = CATALOG[f"{entry}/{split}"]
        path = fetch(remote, cache_dir)
        _, rows = read_table(path, "tsv", quoting="none")
        return [
            Example(tuple(row[c].strip() for c in columns), to_label(path, lineno, row[label])) for lineno, row in rows
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
# The columns of the Story Cloze 2016 val and test CSVs that make an example.
STORY_CLOZE_COLUMNS = (
    *(f"InputSentence{k}" for k in range(1, 5)),
    "RandomFifthSentenceQuiz1",
    "RandomFifthSentenceQuiz2",
    "AnswerRightEnding",
)
STORY_CLOZE_ENDINGS = ("1", "2")  # AnswerRightEnding's values, in answer order


def _load_story_cloze(split: str, cache_dir: Path) -> list[Example]:
    (remote,) = CATALOG["story_cloze/val"]
    path = fetch(remote, cache_dir)
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    perm = np.random.RandomState(STORY_CLOZE_SEED).permutation(len(rows))
    chosen = perm[:STORY_CLOZE_DEV] if split == "dev" else perm[STORY_CLOZE_DEV:]
    return [_story_cloze_example(rows[i], int(rows[i]["AnswerRightEnding"]) - 1) for i in chosen]


def _story_cloze_example(row: dict[str, str], label: int) -> Example:
    """A story as GPT-1 feeds it: the four sentences joined with spaces, then the two candidate endings."""
    context = " ".join(row[f"InputSentence{k}"].strip() for k in range(1, 5))
    endings = (row["RandomFifthSentenceQuiz1"].strip(), row["RandomFifthSentenceQuiz2"].strip())
    return Example((context, *endings), label)


def read_story_cloze_test(source: str, key: str) -> list[Example]:
    """The labelled stories of a Story Cloze test CSV (a local path or mirror://path; the val file's columns).

    TaskDataError names the file and the line and column at fault, or the config key `key` for a missing column.
    """
    path = resolve_task_file(source, None)
    header, rows = read_table(path, "csv", quoting="minimal")
    missing = next((column for column in STORY_CLOZE_COLUMNS if column not in header), None)
    if missing:
        raise TaskDataError(
            f"{path}: no column {missing!r} ({key}: a Story Cloze test CSV has the val file's columns); "
            f"the file has columns {header}"
        )
    return [
        _story_cloze_example(
            row, label_index(path, lineno, "AnswerRightEnding", row["AnswerRightEnding"], STORY_CLOZE_ENDINGS)
        )
        for lineno, row in rows
    ]


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
        _glue_loader("rte", ("sentence1", "sentence2"), "label", _classes(("entailment", "not_entailment"), "label")),
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


# Built-in task -> the reader of its labelled test file: (source, config key for messages) -> examples.
TEST_FILE_READERS: dict[str, Callable[[str, str], list[Example]]] = {"story_cloze": read_story_cloze_test}


def with_test_file(spec: TaskSpec, source: str) -> TaskSpec:
    """A built-in task that also has a labelled `test` split, read from `source` (evaluate scores it as
    test_<metric>; fine-tuning and model selection never read it)."""
    read_test = TEST_FILE_READERS[spec.name]
    key = f"builtin_tasks.{spec.name}.test"

    def load(split: str, cache_dir: Path) -> list[Example]:
        return read_test(source, key) if split == "test" else spec.load(split, cache_dir)

    return replace(spec, load=load, splits=(*spec.splits, "test"))


def check_test_file(name: str, options: BuiltinTaskConfig) -> None:
    """Read a built-in task's configured test file once, before any compute; TaskDataError names the file."""
    if options.test is not None:
        TEST_FILE_READERS[name](options.test, f"builtin_tasks.{name}.test")


def known_tasks(custom: dict[str, CustomTaskConfig] | None = None) -> list[str]:
    """Every task name `get_task` accepts."""
    return sorted({*BUILTIN_TASKS, *HUB_TASKS, *(custom or {})})


def get_task(
    name: str,
    custom: dict[str, CustomTaskConfig] | None = None,
    builtin: dict[str, BuiltinTaskConfig] | None = None,
) -> TaskSpec:
    """The task called `name`: a custom task from the config first, then built-in and hub tasks.

    `builtin`: options of built-in tasks (`builtin_tasks`); a test file adds a labelled `test` split.
    Raises KeyError listing the known names.
    """
    if custom and name in custom:
        return custom_task_spec(name, custom[name])
    if name in BUILTIN_TASKS:
        options = (builtin or {}).get(name)
        if options is not None and options.test is not None:
            return with_test_file(BUILTIN_TASKS[name], options.test)
        return BUILTIN_TASKS[name]
    if name in HUB_TASKS:
        return HUB_TASKS[name]
    raise KeyError(f"unknown task {name!r} (known: {', '.join(known_tasks(custom))})")


def task_catalog_entries(source: str) -> tuple[str, ...]:
    """The catalog entries (pinned files) a `task:<name>` corpus source reads; SourceError for an unknown task."""
    name = source.removeprefix(TASK_SCHEME)
    if name not in BUILTIN_TASKS:
        known = ", ".join(BUILTIN_TASKS)
        raise SourceError(f"{source}: {name!r} is not a built-in task with pinned data (one of: {known})")
    return BUILTIN_TASKS[name].files


def task_inputs(source: str, cache_dir: Path) -> Iterator[str]:
    """A `task:<name>` corpus source: the task's training inputs without their labels, one text per example
    (its fields, a line each); task-adaptive pretraining text (Gururangan et al., 2020). Only the train split,
    never dev or test."""
    task_catalog_entries(source)
    for example in BUILTIN_TASKS[source.removeprefix(TASK_SCHEME)].load("train", cache_dir):
        yield "\n".join(example.fields)
