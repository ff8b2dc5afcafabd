"""The `tasks` section: downstream tasks defined by configuration alone (see README, "Custom tasks"),
and `builtin_tasks`: options of the built-in tasks (a labelled test file).

A task definition is checked when it is built (column roles per task type, label set or score
range, metric names, encoding, how each split is read); its files are checked before any compute
by `gpt.downstream.custom.check_custom_task`.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gpt.config.fields import FieldError, Section, knob

NAME_PATTERN = re.compile(r"^[a-z0-9_]+$")
ROLES = {
    "classification": ("text",),
    "entailment": ("premise", "hypothesis"),
    "similarity": ("a", "b"),
    "multiple_choice": ("context", "answers"),
}
FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}
CLASS_METRICS = ("accuracy", "f1", "matthews")
REGRESSION_METRICS = ("pearson", "spearman", "mse")
SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass
class TaskColumnsConfig(Section):
    """Which columns of a custom task's files feed the input transformation, by role."""

    text: str | None = knob(None, "classification: the text")
    premise: str | None = knob(None, "entailment: the premise")
    hypothesis: str | None = knob(None, "entailment: the hypothesis")
    a: str | None = knob(None, "similarity: the first text (both orders are fed)")
    b: str | None = knob(None, "similarity: the second text")
    context: str | list[str] | None = knob(
        None,
        "multiple choice: the context column, or a list of columns joined with one space in order "
        "(Story Cloze's [InputSentence1, InputSentence2, InputSentence3, InputSentence4])",
    )
    answers: list[str] | None = knob(None, "multiple choice: one column per answer")

    def context_columns(self) -> list[str]:
        """The context's columns in joining order: one column, or the listed ones (none when unset)."""
        if self.context is None:
            return []
        return [self.context] if isinstance(self.context, str) else list(self.context)


@dataclass
class CustomTaskConfig(Section):
    """A downstream task defined by configuration alone: its files, columns, labels and metrics."""

    type: Literal["classification", "entailment", "similarity", "multiple_choice"] = knob(
        doc="the task type (input transformation and head)"
    )
    train: str = knob(doc="local path, mirror://path or https://...#sha256=<hex>")
    dev: str = knob(doc="as `train`; scored after fine-tuning")
    test: str | None = knob(None, "as `train`; scored too when it has labels")
    format: Literal["auto", "csv", "tsv", "jsonl"] = knob("auto", "auto: from the file extension")
    delimiter: str | None = knob(None, "overrides the format's (csv ',' / tsv tab)")
    quoting: Literal["minimal", "none"] = knob("minimal", "none: quote characters are plain text")
    encoding: str = knob("utf-8-sig", "text encoding of the files; utf-8-sig also reads plain UTF-8 (a BOM is dropped)")
    columns: TaskColumnsConfig = knob(doc="columns by role", factory=TaskColumnsConfig)
    label: str = knob("label", "the label column")
    labels: list[str] | None = knob(None, "label set in class order; multiple choice: the value naming each answer")
    score_range: list[float] | None = knob(None, "regression (similarity): [low, high], one output, MSE loss")
    metrics: list[str] | None = knob(None, "default: accuracy, or pearson + spearman for regression")

    def splits(self) -> dict[str, str]:
        """Each configured split's source, by split name."""
        return {s: src for s, src in (("train", self.train), ("dev", self.dev), ("test", self.test)) if src}

    def file_format(self, source: str) -> str | None:
        """csv / tsv / jsonl: the configured format, else from the file extension (None when unknown)."""
        if self.format != "auto":
            return self.format
        path = source.split("#", 1)[0].split("?", 1)[0]
        return FORMATS.get(Path(path).suffix.lower())

    def check(self) -> None:
        self._check_columns()
        self._check_labels()
        allowed = REGRESSION_METRICS if self.score_range is not None else CLASS_METRICS
        for i, metric in enumerate(self.metrics or []):
            if metric not in allowed:
                raise FieldError(f"metrics[{i}]", f"must be one of {' | '.join(allowed)}")
        if self.metrics is not None and not self.metrics:
            raise FieldError("metrics", "must not be empty")
        if self.delimiter is not None and len(self.delimiter) != 1:
            raise FieldError("delimiter", "must be one character")
        try:
            # rot13, base64, zlib...: codecs Python knows, but not text encodings (open() refuses them)
            if not getattr(codecs.lookup(self.encoding), "_is_text_encoding", True):
                raise LookupError(self.encoding)
        except LookupError:
            raise FieldError(
                "encoding", f": {self.encoding!r} is not a text encoding Python knows (e.g. utf-8, latin-1)"
            ) from None
        for split, source in self.splits().items():
            if self.file_format(source) is None:
                raise FieldError(
                    split,
                    f": cannot tell the format of {source!r} from its extension; set 'format' (csv | tsv | jsonl)",
                )
            if source.startswith("https://"):
                digest = source.partition("#sha256=")[2]
                if not SHA256.fullmatch(digest):
                    raise FieldError(split, ": an https file needs '#sha256=<64 hex digits>'")

    def _check_columns(self) -> None:
        roles = ROLES[self.type]
        for role in ("text", "premise", "hypothesis", "a", "b", "context", "answers"):
            given = getattr(self.columns, role) is not None
            if role in roles and not given:
                raise FieldError(f"columns.{role}", f"is required for a {self.type} task")
            if role not in roles and given:
                raise FieldError(f"columns.{role}", f"is not used by a {self.type} task (it reads {', '.join(roles)})")
        if self.type == "multiple_choice" and len(self.columns.answers or []) < 2:
            raise FieldError("columns.answers", "must list at least 2 answer columns")
        if isinstance(self.columns.context, list) and not self.columns.context:
            raise FieldError("columns.context", "must name a column or list at least 1")

    def _check_labels(self) -> None:
        if self.score_range is not None:
            if self.labels is not None:
                raise FieldError("labels", "and 'score_range' exclude each other")
            if self.type == "multiple_choice":
                raise FieldError("score_range", ": a multiple_choice task has no regression form")
            if len(self.score_range) != 2 or not self.score_range[0] < self.score_range[1]:
                raise FieldError("score_range", "must be [low, high] with low < high")
        elif self.type != "multiple_choice" and (self.labels is None or len(self.labels) < 2):
            raise FieldError("labels", "must list at least 2 labels (or give score_range)")
        if (
            self.type == "multiple_choice"
            and self.labels is not None
            and len(self.labels) != len(self.columns.answers or [])
        ):
            raise FieldError("labels", "must name each of the answer columns, in order")
        if self.labels is not None and len(set(self.labels)) != len(self.labels):
            raise FieldError("labels", "has duplicates")


# Built-in tasks that may be given a labelled test file (`builtin_tasks.<task>.test`): Story Cloze's 2016
# test set (1,871 stories, the val file's columns) is what GPT-1's Table 3 reports, and it is not in the
# mirror (it is distributed on request). GLUE's test sets have no labels, so their tasks take none.
TEST_FILE_TASKS = ("story_cloze",)


@dataclass
class BuiltinTaskConfig(Section):
    """Options of a built-in task (`builtin_tasks.<task>`): the labelled test file it is also scored on."""

    test: str | None = knob(
        None,
        "a labelled test file in the task's own format (story_cloze: the 2016 test CSV, the val file's columns), "
        "a local path or mirror://path; evaluate logs test_<metric> on it, never used to pick weights",
    )

    def check(self) -> None:
        if self.test is not None and "://" in self.test and not self.test.startswith("mirror://"):
            raise FieldError("test", f"must be a local path or mirror://path, got {self.test!r}")
