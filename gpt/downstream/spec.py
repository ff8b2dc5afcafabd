"""What every fine-tuning task is made of: examples, a spec, and a table reader whose errors name file and column."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from gpt.data.sources import SourceError

TaskType = Literal["classification", "entailment", "similarity", "multiple_choice"]
# Zero-shot sentiment (GPT-1 §5): the words whose likelihood after "<text> very" decides the label, in label order.
SENTIMENT_VERBALIZERS = {"sst2": (" negative", " positive")}


class TaskDataError(SourceError):
    """A task file that cannot be used; the message names the file, and the line or column (a user error)."""


@dataclass(frozen=True)
class Example:
    """One labelled example: its text fields in the order the task's input transformation uses them.

    classification: (text,); entailment: (premise, hypothesis); similarity: (a, b);
    multiple_choice: (context, answer_1, ..., answer_n) with `label` the index of the right answer.
    `label` is a class index, or a float score for regression tasks.
    """

    fields: tuple[str, ...]
    label: int | float


@dataclass(frozen=True)
class TaskSpec:
    """A downstream task: its input format, output size, metrics and data splits."""

    name: str
    type: TaskType
    num_outputs: int  # classes; 1 for regression; answers per example for multiple choice
    metrics: tuple[str, ...]  # the first is the task's headline metric (early stopping, report)
    load: Callable[[str, Path], list[Example]]  # (split, cache_dir) -> examples
    files: tuple[str, ...] = ()  # catalog entries it reads (checked before any compute)
    label_names: tuple[str, ...] = ()  # class names in index order (predictions file, confusion matrix)
    regression: bool = False  # one output trained with MSE (e.g. STS-B scores 0-5)
    splits: tuple[str, ...] = ("train", "dev")  # labelled splits; "test" is evaluated too when listed

    @property
    def metric(self) -> str:
        """The headline metric."""
        return self.metrics[0]


def read_table(
    path: Path,
    fmt: str = "tsv",
    delimiter: str | None = None,
    quoting: str = "none",
    encoding: str = "utf-8-sig",
) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    """(column names, [(line number, row)]) of a CSV/TSV file with a header row, or of a JSONL file.

    Raises TaskDataError naming the file for an undecodable, empty or ragged file.
    """
    try:
        text = path.read_text(encoding=encoding)
    except UnicodeDecodeError as e:
        raise TaskDataError(f"{path}: not {encoding} text ({e.reason} at byte {e.start})") from None
    if not text.strip():
        raise TaskDataError(f"{path}: file is empty")
    if fmt == "jsonl":
        rows = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise TaskDataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise TaskDataError(f"{path}:{lineno}: each line must be a JSON object")
            rows.append((lineno, row))
        columns = list(dict.fromkeys(k for _, r in rows for k in r))
        return columns, rows
    sep = delimiter or ("\t" if fmt == "tsv" else ",")
    reader = csv.reader(
        text.splitlines(), delimiter=sep, quoting=csv.QUOTE_NONE if quoting == "none" else csv.QUOTE_MINIMAL
    )
    try:
        header = next(reader, None)
        if not header:
            raise TaskDataError(f"{path}: no header row")
        seen: set[str] = set()
        for column in header:
            if column in seen:
                raise TaskDataError(f"{path}:1: column {column!r} appears twice in the header; rename one")
            seen.add(column)
        rows = []
        for record in reader:
            lineno = reader.line_num
            if not record:
                continue
            if len(record) != len(header):
                raise TaskDataError(f"{path}:{lineno}: {len(record)} fields, the header has {len(header)}")
            rows.append((lineno, dict(zip(header, record, strict=True))))
    except csv.Error as e:  # a field over csv.field_size_limit(), a NUL byte, a stray quote with quoting: none
        raise TaskDataError(f"{path}:{reader.line_num}: not readable as {fmt} ({e})") from None
    if not rows:
        raise TaskDataError(f"{path}: no data rows after the header")
    return header, rows


def label_index(path: Path, lineno: int, column: str, value: Any, labels: tuple[str, ...]) -> int:
    """The index of `value` in the label set, or a TaskDataError naming file, line and column."""
    text = str(value).strip()
    if text not in labels:
        raise TaskDataError(
            f"{path}:{lineno}: column {column!r} has label {text!r}, not in the label set {list(labels)}"
        )
    return labels.index(text)


def probe_supported(spec: TaskSpec) -> bool:
    """Whether a task has a linear-probe form (gpt.downstream.probe): classes, or two answers to choose between."""
    if spec.regression:
        return False
    return spec.type != "multiple_choice" or spec.num_outputs == 2


def cap_examples(examples: list[Example], max_examples: int | None, seed: int) -> list[Example]:
    """A seeded random subset of at most `max_examples` (all of them, shuffled, when None)."""
    order = np.random.default_rng(seed).permutation(len(examples))
    if max_examples is not None:
        order = order[:max_examples]
    return [examples[i] for i in order]
