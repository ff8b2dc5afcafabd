"""Tasks defined by configuration alone (`tasks:` in the config): files, columns, labels, metric.

The config is checked when it is loaded (column roles per task type, label set or score range,
metric names); local files are checked before any compute (`check_custom_task`), so a wrong column
name, an unknown label or an empty file stops the run with one line naming the file and column.
"""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path
from typing import Any

from gpt.config import ConfigError, CustomTaskConfig
from gpt.data.sources import MIRROR_SCHEME, download, resolve_mirror
from gpt.downstream.metrics import CLASS_METRICS, REGRESSION_METRICS
from gpt.downstream.spec import Example, TaskDataError, TaskSpec, label_index, read_table

NAME_PATTERN = re.compile(r"^[a-z0-9_]+$")
ROLES = {
    "classification": ("text",),
    "entailment": ("premise", "hypothesis"),
    "similarity": ("a", "b"),
    "multiple_choice": ("context", "answers"),
}
FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}


def _split_sources(tc: CustomTaskConfig) -> dict[str, str]:
    return {s: src for s, src in (("train", tc.train), ("dev", tc.dev), ("test", tc.test)) if src}


def file_format(tc: CustomTaskConfig, source: str) -> str | None:
    """csv / tsv / jsonl: the configured format, else from the file extension (None when unknown)."""
    if tc.format != "auto":
        return tc.format
    path = source.split("#", 1)[0].split("?", 1)[0]
    return FORMATS.get(Path(path).suffix.lower())


def check_task_config(tc: CustomTaskConfig, where: str, key: str) -> None:
    """Raise ConfigError (with the key path) for a task definition that cannot work, whatever its files hold."""
    name = key.rsplit(".", 1)[-1]
    if not NAME_PATTERN.match(name):
        raise ConfigError(f"{where}: task name '{key}' must use only a-z, 0-9 and _")
    roles = ROLES[tc.type]
    for role in ("text", "premise", "hypothesis", "a", "b", "context", "answers"):
        given = getattr(tc.columns, role) is not None
        if role in roles and not given:
            raise ConfigError(f"{where}: config key '{key}.columns.{role}' is required for a {tc.type} task")
        if role not in roles and given:
            raise ConfigError(
                f"{where}: config key '{key}.columns.{role}' is not used by a {tc.type} task "
                f"(it reads {', '.join(roles)})"
            )
    if tc.type == "multiple_choice" and len(tc.columns.answers or []) < 2:
        raise ConfigError(f"{where}: config key '{key}.columns.answers' must list at least 2 answer columns")
    regression = tc.score_range is not None
    if regression:
        if tc.labels is not None:
            raise ConfigError(f"{where}: config keys '{key}.labels' and '{key}.score_range' exclude each other")
        if tc.type == "multiple_choice":
            raise ConfigError(f"{where}: config key '{key}.score_range': a multiple_choice task has no regression form")
        if len(tc.score_range) != 2 or not tc.score_range[0] < tc.score_range[1]:
            raise ConfigError(f"{where}: config key '{key}.score_range' must be [low, high] with low < high")
    elif tc.type != "multiple_choice" and (tc.labels is None or len(tc.labels) < 2):
        raise ConfigError(f"{where}: config key '{key}.labels' must list at least 2 labels (or give score_range)")
    if tc.type == "multiple_choice" and tc.labels is not None and len(tc.labels) != len(tc.columns.answers or []):
        raise ConfigError(f"{where}: config key '{key}.labels' must name each of the answer columns, in order")
    if tc.labels is not None and len(set(tc.labels)) != len(tc.labels):
        raise ConfigError(f"{where}: config key '{key}.labels' has duplicates")
    allowed = REGRESSION_METRICS if regression else CLASS_METRICS
    for i, metric in enumerate(tc.metrics or []):
        if metric not in allowed:
            raise ConfigError(f"{where}: config key '{key}.metrics[{i}]' must be one of {' | '.join(allowed)}")
    if tc.metrics is not None and not tc.metrics:
        raise ConfigError(f"{where}: config key '{key}.metrics' must not be empty")
    if tc.delimiter is not None and len(tc.delimiter) != 1:
        raise ConfigError(f"{where}: config key '{key}.delimiter' must be one character")
    for split, source in _split_sources(tc).items():
        if file_format(tc, source) is None:
            raise ConfigError(
                f"{where}: config key '{key}.{split}': cannot tell the format of {source!r} "
                f"from its extension; set '{key}.format' (csv | tsv | jsonl)"
            )
        if source.startswith("https://") and "#sha256=" not in source:
            raise ConfigError(f"{where}: config key '{key}.{split}': an https file needs '#sha256=<hex>'")


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
    source = _split_sources(tc)[split]
    path = _resolve(source, cache_dir)
    fmt = file_format(tc, source) or "csv"
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
        splits=tuple(_split_sources(tc)),
    )


def check_custom_task(name: str, tc: CustomTaskConfig) -> None:
    """Load every local split once (URL splits are checked when downloaded), raising TaskDataError on bad data."""
    for split, source in _split_sources(tc).items():
        if not source.startswith("https://"):
            load_custom_split(name, tc, split, None)
