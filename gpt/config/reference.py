"""Every config key with its type, default, doc, requirement and role: what `gptflow config` prints.

Generated from the section dataclasses (their `knob` metadata and resolved type hints), so it
cannot drift from them. A mapping of sections (`tasks`, `finetune.per_task`) is listed once under a
placeholder (`tasks.<name>.type`, `finetune.per_task.<task>.lr`), a list of sections under `[]`
(`corpus.sources[].source`). Pure: imports neither torch nor tiktoken.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterator
from dataclasses import MISSING, dataclass
from typing import Any, Literal

from gpt.config.experiment import ExperimentConfig
from gpt.config.fields import ConfigError
from gpt.config.secrets import mask_secret, redact_text

SECTION = "section"
REQUIRED = "(required)"  # the default shown for a key that has none


@dataclass(frozen=True)
class KeyDoc:
    """One config key: how it is written, what it holds and what it does."""

    key: str  # dotted path: `pretrain.lr`, `tasks.<name>.type`, `corpus.sources[].weight`
    type: str  # `float`, `int | null`, `list[str]`, `section`, `dict[str, section]`
    default: str  # as YAML writes it; `(required)` when there is none; '' for a section
    doc: str
    requirement: str | None = None  # what the value must be (its check, or its choices)
    role: str | None = None  # observation | placement: left out of the stage cache keys
    leaf: bool = True  # False for a section, or a mapping / list of sections
    value: str | None = None  # the value in a resolved config (`config_reference(cfg)`); None: not asked


def config_reference(config: ExperimentConfig | None = None) -> list[KeyDoc]:
    """Every key of `ExperimentConfig`, depth first in declaration order; with `config`, its values too."""
    return list(_walk(ExperimentConfig, "", None, [("", config)] if config is not None else None))


def filter_rows(rows: list[KeyDoc], section: str | None) -> list[KeyDoc]:
    """The rows at or under `section` (a dotted prefix such as `pretrain` or `tasks.<name>.columns`)."""
    if not section:
        return rows
    prefix = section.rstrip(".")
    picked = [r for r in rows if r.key == prefix or r.key.startswith((prefix + ".", prefix + "["))]
    if not picked:
        sections = ", ".join(r.key for r in rows if "." not in r.key)
        raise ConfigError(f"no config key '{prefix}' (top-level keys: {sections})")
    return picked


def render_text(rows: list[KeyDoc]) -> str:
    """Aligned columns: key, type, default, [value,] role, doc (with what the value must be)."""
    head = ["key", "type", "default", *(["value"] if _has_values(rows) else []), "role", "doc"]
    table = [head, *(_cells(r, with_value=len(head) == 6) for r in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(head) - 1)]
    lines = [
        "  ".join([*(c.ljust(w) for c, w in zip(line, widths, strict=False)), line[-1]]).rstrip() for line in table
    ]
    return "\n".join([*lines, "", _ROLE_NOTE]) + "\n"


def render_markdown(rows: list[KeyDoc]) -> str:
    """A Markdown table of the same columns; keys, types and values as code."""
    with_value = _has_values(rows)
    head = ["key", "type", "default", *(["value"] if with_value else []), "role", "doc"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = _cells(r, with_value)
        code = [f"`{c}`" if c and c != REQUIRED and i < len(cells) - 2 else c for i, c in enumerate(cells)]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in code) + " |")
    return "\n".join([*lines, "", _ROLE_NOTE]) + "\n"


_ROLE_NOTE = (
    "role: observation (only what is logged or saved) and placement (only where the job runs) keys are "
    "left out of the stage cache keys; changing them reuses or resumes a finished stage. derived keys are "
    "set by the pipeline from an upstream output (leave them unset)."
)


def _has_values(rows: list[KeyDoc]) -> bool:
    return any(r.value is not None for r in rows)


def _cells(r: KeyDoc, with_value: bool) -> list[str]:
    doc = f"{r.doc}; must be {r.requirement}" if r.requirement and r.requirement not in r.doc else r.doc
    return [r.key, r.type, r.default, *([r.value or ""] if with_value else []), r.role or "", doc]


Instances = list[tuple[str, Any]] | None  # (label, object) pairs a class's fields are read from


def _walk(cls: type, prefix: str, inherited_role: str | None, instances: Instances) -> Iterator[KeyDoc]:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        key = prefix + f.name
        role = f.metadata.get("role") or inherited_role
        doc = f.metadata.get("doc", "")
        check = f.metadata.get("check")
        values = None if instances is None else [(label, getattr(obj, f.name)) for label, obj in instances]
        inner, shape = _sections_in(tp)
        if inner is None:
            if values is not None:  # credentials are never printed (gpt/config/secrets.py)
                values = [(label, _shown(v, bool(f.metadata.get("secret")))) for label, v in values]
            yield KeyDoc(
                key,
                _type_name(tp),
                _default(f),
                doc,
                check.requirement if check is not None else _choices(tp),
                role,
                value=None if values is None else _join(values),
            )
            continue
        yield KeyDoc(
            key,
            _type_name(tp),
            "" if shape == SECTION else _default(f),
            doc,
            check.requirement if check is not None else None,
            role,
            leaf=False,
            value=None if values is None or shape == SECTION else _summary(values),
        )
        if shape == SECTION:
            yield from _walk(inner, key + ".", role, values)
        elif shape == "dict":
            items = None if values is None else [(_at(lb, k), v) for lb, d in values for k, v in d.items()]
            yield from _walk(inner, f"{key}.<{_placeholder(f.name)}>.", role, items)
        else:
            items = None if values is None else [(_at(lb, f"[{i}]"), v) for lb, xs in values for i, v in enumerate(xs)]
            yield from _walk(inner, f"{key}[].", role, items)


def _shown(value: Any, secret: bool) -> Any:
    """A value as `gptflow config` may print it: a secret field masked, credentials in URLs redacted."""
    if isinstance(value, str):
        return mask_secret(value) if secret else redact_text(value)
    if isinstance(value, list):
        return [_shown(v, secret) for v in value]
    return value


def _placeholder(name: str) -> str:
    """What stands for an entry of a mapping field: `per_task` -> `task`, anything else -> `name`."""
    return name.removeprefix("per_") if name.startswith("per_") else "name"


def _at(label: str, part: str) -> str:
    return f"{label}.{part}" if label and not part.startswith("[") else label + part


def _sections_in(tp: Any) -> tuple[type | None, str]:
    """The section class a field holds and how: itself, as the values of a dict, or as list items."""
    # a field's type hint is a class, never a dataclass instance: isinstance(..., type) says so to the checker
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return tp, SECTION
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is dict and isinstance(args[1], type) and dataclasses.is_dataclass(args[1]):
        return args[1], "dict"
    if origin is list and isinstance(args[0], type) and dataclasses.is_dataclass(args[0]):
        return args[0], "list"
    return None, ""


def _type_name(tp: Any) -> str:
    """A type as YAML users read it: `int | null`, `list[str]`, `section`; a Literal is its base type."""
    if dataclasses.is_dataclass(tp):
        return SECTION
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is Literal:
        return type(args[0]).__name__
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    return "null" if tp is type(None) else tp.__name__


def _choices(tp: Any) -> str | None:
    """The choices of a Literal field (in an Optional or a list too), as its requirement."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return " | ".join(map(str, args))
    if origin in (typing.Union, types.UnionType):
        return next((c for c in map(_choices, args) if c), None)
    if origin is list:
        inner = _choices(args[0])
        return f"a list of {inner}" if inner else None
    return None


def _default(f: dataclasses.Field[Any]) -> str:
    if f.default is not MISSING:
        return yaml_text(f.default)
    if f.default_factory is not MISSING:
        return yaml_text(f.default_factory())
    return REQUIRED


def _join(values: list[tuple[str, Any]]) -> str:
    """One field's value across the entries it was read from (a single one: just the value)."""
    if len(values) == 1 and not values[0][0]:
        return yaml_text(values[0][1])
    return ", ".join(f"{label}: {yaml_text(v)}" for label, v in values)


def _summary(values: list[tuple[str, Any]]) -> str:
    """A mapping or list of sections, in short: the names of its entries, or how many there are."""
    parts = []
    for label, v in values:
        text = (", ".join(v) or "{}") if isinstance(v, dict) else (f"{len(v)} entries" if v else "[]")
        parts.append(f"{label}: {text}" if label else text)
    return "; ".join(parts)


def yaml_text(v: Any) -> str:
    """A value as it is written in a config file (flow style): null, true, 0.00025, [sst2, story_cloze]."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return v if v else "''"
    if isinstance(v, list | tuple):
        return "[" + ", ".join(map(yaml_text, v)) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {yaml_text(x)}" for k, x in v.items()) + "}"
    if dataclasses.is_dataclass(v):
        return yaml_text({k: x for k, x in dataclasses.asdict(v).items() if x is not None})  # type: ignore[arg-type]
    return repr(v)
