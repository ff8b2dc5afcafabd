"""Read an experiment config: a YAML file, then `key.path=value` overrides, into the checked dataclasses.

Written by hand (about 100 lines) rather than with pydantic: pydantic's lax mode turns `true` into 1
and `"yes"` into True without a word, and its strict mode refuses YAML 1.1's `1e-3` (a string) for a
float; its messages also do not list the keys a section knows. Here a type or range error is one
line: the file, the dotted key and what is allowed. The checks themselves live on the fields.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from gpt.config.experiment import ExperimentConfig
from gpt.config.fields import ConfigError, FieldError

T = TypeVar("T")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML file (or defaults), apply `key.path=value` overrides, validate.

    Raises ConfigError naming the file, key and problem.
    """
    raw: dict[str, Any] = {}
    where = "defaults"
    if path is not None:
        where = str(path)
        raw = read_yaml(Path(path))
    for item in overrides or []:
        apply_override(raw, item)
    return from_dict(ExperimentConfig, raw, where=where)


def read_yaml(p: Path) -> dict[str, Any]:
    """A config file's top-level mapping; ConfigError names the file (and line) when it cannot be read."""
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text (byte {e.start}); save the config as UTF-8") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{p}:{line} is not valid YAML: {getattr(e, 'problem', e)}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{p}: top level must be a mapping of config sections")
    return loaded


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set `a.b.c=value` in a nested dict; the value is parsed as YAML (so 3, 1e-3, [a, b] work)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key.path=value")
    key, _, text = item.partition("=")
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set {item!r}: empty key")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    node = raw
    for part in parts[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {item!r}: '{part}' is not a section")
        node = nxt
    node[parts[-1]] = value


def from_dict(cls: type[T], data: Any, where: str = "config", prefix: str = "") -> T:
    """Build dataclass `cls` from a mapping, checking keys and types recursively, then the fields' checks."""
    label = prefix.rstrip(".") or "top level"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: '{label}' must be a mapping, got {type(data).__name__}")
    if True in data and "on" in {f.name for f in dataclasses.fields(cls)}:  # type: ignore[arg-type]
        data = {("on" if k is True else k): v for k, v in data.items()}  # YAML 1.1 reads a bare `on:` key as true
    odd = [k for k in data if not isinstance(k, str)]
    if odd:
        raise ConfigError(
            f"{where}: config key '{prefix}{odd[0]}' must be a name, got {type(odd[0]).__name__} {odd[0]!r}"
        )
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    names = {f.name for f in fields}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown config key '{prefix}{unknown[0]}' (known: {', '.join(sorted(names))})")
    required = [f.name for f in fields if f.default is f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if name not in data]
    if missing:
        raise ConfigError(f"{where}: missing config key '{prefix}{missing[0]}'")
    kwargs = {name: _coerce(hints[name], value, where, f"{prefix}{name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except FieldError as e:
        raise ConfigError(f"{where}: {e.message(prefix + e.key)}") from None


def _union_member(args: tuple[Any, ...], value: Any) -> Any:
    """The member of a union type a (non-null) value is read as: a list alternative for a YAML list
    (`columns.context: [s1, s2]` of `str | list[str] | None`), else the first non-null member."""
    inner = [a for a in args if a is not type(None)]
    if isinstance(value, list):
        return next((a for a in inner if typing.get_origin(a) is list), inner[0])
    return inner[0]


def _coerce(tp: Any, value: Any, where: str, key: str) -> Any:
    if tp is Any:  # a free-form value its section checks itself (sweep.params)
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where, key + ".")  # type: ignore[arg-type]
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _coerce(_union_member(args, value), value, where, key)
    if origin is Literal:
        if value not in args:
            choices = " | ".join(map(str, args))
            raise ConfigError(f"{where}: config key '{key}' must be one of {choices}, got {value!r}")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: config key '{key}' must be a mapping, got {value!r}")
        return {str(k): _coerce(args[1], v, where, f"{key}.{k}") for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: config key '{key}' must be a list, got {value!r}")
        return [_coerce(args[0], v, where, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: config key '{key}' must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: config key '{key}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: config key '{key}' must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str | int):
            raise ConfigError(f"{where}: config key '{key}' must be a string, got {value!r}")
        return str(value)
    raise TypeError(f"unsupported config type {tp} for {key}")
