"""A config field is its default, its one-line doc, its check and its role, side by side.

`knob(default, doc, check=...)` declares one; a `Section` dataclass runs every field's check (and
its own cross-field `check`) in `__post_init__`, so a section cannot exist unvalidated however it was
built: from YAML, from a stored dict, or in Python.

A field's role says whether it changes what a stage computes. Fields without one do.
`observation`: only what is logged or how often state is saved; `placement`: only where and on how
many devices the job runs. Both leave trained weights and written data unchanged, so the stage
keys in `tasks/` leave them out, as they leave out `derived` fields (set from an upstream output).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from dataclasses import MISSING, field
from typing import Any, NamedTuple

OBSERVATION, PLACEMENT = "observation", "placement"
# `derived`: never written in a config; set by the code from an input (the tokenizer's vocabulary
# size), which the stage keys already cover through the upstream stages' output digests.
DERIVED = "derived"


class ConfigError(ValueError):
    """A config problem a user can fix; the message names the key or file."""


class FieldError(ConfigError):
    """A field of a section fails its check; `key` is relative to the section (the loader prefixes it)."""

    def __init__(self, key: str, problem: str):
        self.key, self.problem = key, problem
        super().__init__(self.message(key))

    def message(self, key: str) -> str:
        """The problem said about `key` (the loader passes the dotted path from the top of the config)."""
        return f"config key '{key}'{'' if self.problem.startswith(':') else ' '}{self.problem}"


class Check(NamedTuple):
    """A predicate on a field's value (never called with None) and the requirement it states."""

    ok: Callable[[Any], bool]
    requirement: str


def knob(
    default: Any = MISSING,
    doc: str = "",
    *,
    check: Check | None = None,
    role: str | None = None,
    factory: Callable[[], Any] | None = None,
    secret: bool = False,
    keyed_when_set: bool = False,
) -> Any:
    """A config field: its default (or `factory`), its doc, its check and its role, in one place.

    `secret`: its values are credentials (a webhook URL's path is its token), never logged or shown in
    full (gpt/config/secrets.py). `keyed_when_set`: a stage key holds it only when it is set (non-empty), so
    adding the option leaves every existing key as it was.
    """
    metadata = {"doc": doc, "check": check, "role": role, "secret": secret, "omit_empty": keyed_when_set}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def observation(
    default: Any,
    doc: str,
    *,
    check: Check | None = None,
    factory: Callable[[], Any] | None = None,
    secret: bool = False,
) -> Any:
    """A field that changes only what is logged or saved along the way, not the result."""
    return knob(default, doc, check=check, role=OBSERVATION, factory=factory, secret=secret)


def placement(default: Any, doc: str, *, check: Check | None = None) -> Any:
    """A field that changes only where the job runs, not the result."""
    return knob(default, doc, check=check, role=PLACEMENT)


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def at_least(low: float) -> Check:
    """A finite number >= low."""
    return Check(lambda v: _number(v) and v >= low, f">= {low}")


def above(low: float) -> Check:
    """A finite number > low."""
    return Check(lambda v: _number(v) and v > low, f"> {low}")


def between(low: float, high: float, *, high_open: bool = False, low_open: bool = False) -> Check:
    """A finite number in [low, high], either end optionally open."""
    lo_ok: Callable[[Any], bool] = (lambda v: v > low) if low_open else (lambda v: v >= low)
    hi_ok: Callable[[Any], bool] = (lambda v: v < high) if high_open else (lambda v: v <= high)
    text = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    return Check(lambda v: _number(v) and lo_ok(v) and hi_ok(v), text)


def one_of(*choices: str) -> Check:
    """One of a fixed set of strings."""
    return Check(lambda v: v in choices, " | ".join(choices))


def matches(pattern: str, requirement: str) -> Check:
    """A string matching a regular expression in full."""
    compiled = re.compile(pattern)
    return Check(lambda v: isinstance(v, str) and compiled.fullmatch(v) is not None, requirement)


NON_EMPTY = Check(lambda v: len(v) >= 1, "non-empty")


class Section:
    """Base of every config section: checks each field, then `check()`, when the dataclass is built."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            rule: Check | None = f.metadata.get("check")
            value = getattr(self, f.name)
            if rule is not None and value is not None and not rule.ok(value):
                raise FieldError(f.name, f"must be {rule.requirement}, got {value!r}")
        self.check()

    def check(self) -> None:
        """Checks across fields; raise FieldError naming the key. Sections override it."""
