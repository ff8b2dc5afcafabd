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


def _resolve(source: str, cache_dir: Path | None) -> Path:
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


def _columns(tc: CustomTaskConfig) -> list[tuple[str, str]]:
    """(column, role) in the order of the task type's input transformation."""
    c = tc.columns
    if tc.type == "multiple_choice":
        if c.context is None:  # CustomTaskConfig's checks require it; guards a config built without them
            raise TaskDataError("columns.context is required for a multiple_choice task")
        return [(c.context, "context"), *((col, f"answers[{i}]") for i, col in enumerate(c.answers or []))]
    return [(getattr(c, role), role) for role in ROLES[tc.type]]


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
    path = _resolve(source, cache_dir)
    fmt = tc.file_format(source) or "csv"
    header, rows = read_table(path, fmt, tc.delimiter, tc.quoting, tc.encoding)
    columns = _columns(tc)
    needed = {col: f"tasks.{name}.columns.{role}" for col, role in columns}
    needed[tc.label] = f"tasks.{name}.label"
    missing = [col for col in needed if col not in header]
    if missing:
        raise TaskDataError(f"{path}: no column {missing[0]!r} ({needed[missing[0]]}); the file has columns {header}")
    out = []
    for lineno, row in rows:
        fields = []
        for col, _ in columns:
            value = row.get(col)
            if value is None:
                raise TaskDataError(f"{path}:{lineno}: column {col!r} is missing or null")
            fields.append(str(value).strip())
        out.append(Example(tuple(fields), _label(tc, path, lineno, row.get(tc.label))))
    return out


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
