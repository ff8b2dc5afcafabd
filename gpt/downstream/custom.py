"""Tasks defined by configuration alone (`tasks:` in the config): files, columns, labels, metric.

The config is checked when it is loaded (column roles per task type, label set or score range,
metric names); local files are checked before any compute (`check_custom_task`), so a wrong column
name, an unknown label or an empty file stops the run with one line naming the file and column.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from gpt.data.sources import MIRROR_SCHEME, download, resolve_mirror
from gpt.downstream.config import ROLES, CustomTaskConfig
from gpt.downstream.spec import Example, TaskDataError, TaskSpec, label_index, read_table


def resolve_task_file(source: str, cache_dir: Path | None) -> Path:
    """A local path for a split's source: a local file, `mirror://path`, or `https://...#sha256=<hex>`."""
    if source.startswith("https://") and cache_dir is not None:
        url, _, digest = source.partition("#sha256=")
        return download(url, digest, cache_dir)
    if source.startswith(MIRROR_SCHEME):
        return resolve_mirror(source)[0]
    path = Path(source).expanduser()
    if not path.is_file():
        raise TaskDataError(f"{path}: task file not found")
    return path


# One text field of the input transformation: the (column, key under `columns`) pairs it joins with a space.
FieldColumns = list[tuple[str, str]]


def _field_columns(tc: CustomTaskConfig) -> list[FieldColumns]:
    """Each text field's columns, in the order of the task type's input transformation.

    A field is one column, except a multiple-choice context listing several (joined, in order).
    """
    c = tc.columns
    if tc.type == "multiple_choice":
        if c.context is None:  # CustomTaskConfig's checks require it; guards a config built without them
            raise TaskDataError("columns.context is required for a multiple_choice task")
        context = [(c.context, "context")] if isinstance(c.context, str) else _indexed("context", c.context)
        return [context, *([pair] for pair in _indexed("answers", c.answers or []))]
    return [[(getattr(c, role), role)] for role in ROLES[tc.type]]


def _indexed(role: str, columns: list[str]) -> FieldColumns:
    """A listed role's columns with their config keys: `role[0]`, `role[1]`, ..."""
    return [(col, f"{role}[{i}]") for i, col in enumerate(columns)]


def _label(tc: CustomTaskConfig, path: Path, lineno: int, value: Any) -> int | float:
    if tc.score_range is not None:
        low, high = tc.score_range
        try:
            score = float(value)
        except (TypeError, ValueError):
            score = float("nan")
        if not low <= score <= high:
            raise TaskDataError(
                f"{path}:{lineno}: column {tc.label!r} has {value!r}, not a score in [{low:g}, {high:g}]"
            )
        return score
    labels = tc.labels or [str(i) for i in range(len(tc.columns.answers or []))]
    return label_index(path, lineno, tc.label, value, tuple(labels))


def load_custom_split(name: str, tc: CustomTaskConfig, split: str, cache_dir: Path | None) -> list[Example]:
    """The examples of one split; TaskDataError names the file and the column or line at fault."""
    source = tc.splits()[split]
    path = resolve_task_file(source, cache_dir)
    fmt = tc.file_format(source) or "csv"
    header, rows = read_table(path, fmt, tc.delimiter, tc.quoting, tc.encoding)
    fields = _field_columns(tc)
    needed = [(col, f"tasks.{name}.columns.{key}") for field in fields for col, key in field]
    needed.append((tc.label, f"tasks.{name}.label"))
    missing = next(((col, key) for col, key in needed if col not in header), None)
    if missing:
        raise TaskDataError(f"{path}: no column {missing[0]!r} ({missing[1]}); the file has columns {header}")
    return [
        Example(
            tuple(_field_text(path, lineno, row, field) for field in fields),
            _label(tc, path, lineno, row.get(tc.label)),
        )
        for lineno, row in rows
    ]


def _field_text(path: Path, lineno: int, row: dict[str, Any], field: FieldColumns) -> str:
    """One text field of a row: its columns' values, stripped and joined with one space."""
    parts = []
    for col, _ in field:
        value = row.get(col)
        if value is None:
            raise TaskDataError(f"{path}:{lineno}: column {col!r} is missing or null")
        parts.append(str(value).strip())
    return " ".join(parts)


def custom_task_spec(name: str, tc: CustomTaskConfig) -> TaskSpec:
    """The TaskSpec of a configured task."""
    regression = tc.score_range is not None
    if tc.type == "multiple_choice":
        num_outputs = len(tc.columns.answers or [])
    else:
        num_outputs = 1 if regression else len(tc.labels or [])
    metrics = tuple(tc.metrics or (("pearson", "spearman") if regression else ("accuracy",)))
    return TaskSpec(
        name,
        tc.type,
        num_outputs,
        metrics,
        partial(load_custom_split, name, tc),
        label_names=tuple(tc.labels or ()),
        regression=regression,
        splits=tuple(tc.splits()),
    )


def check_custom_task(name: str, tc: CustomTaskConfig) -> None:
    """Load every local split once (URL splits are checked when downloaded), raising TaskDataError on bad data."""
    for split, source in tc.splits().items():
        if not source.startswith("https://"):
            load_custom_split(name, tc, split, None)
