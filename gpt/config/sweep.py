"""The `sweep:` section: which config keys a sweep varies, how trials are chosen, and what "best" means.

A sweep runs one ordinary pipeline run per trial (the base config with the trial's values set);
its stages are keyed like any other run's, so trials share every stage whose section they do not
change. This section is read by `gptflow sweep` only: it changes no stage and no trial's config.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from gpt.config.fields import FieldError, Section, at_least, observation

SweepMethod = Literal["grid", "random", "tpe"]


@dataclass(frozen=True)
class ParamRange:
    """A numeric range a random or TPE sampler draws from (`{low, high, log}`; ints when both ends are ints)."""

    low: float
    high: float
    log: bool = False

    @property
    def integer(self) -> bool:
        """Both ends written as integers: the sampler draws integers."""
        return isinstance(self.low, int) and isinstance(self.high, int)


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def parse_param(key: str, value: Any) -> list[Any] | ParamRange:
    """A swept key's values: a non-empty list (grid or choices) or a `{low, high, log}` range.

    Raises FieldError naming `params.<key>`.
    """
    where = f"params.{key}"
    if isinstance(value, list):
        if not value:
            raise FieldError(where, "is an empty list: give at least one value")
        if len({repr(v) for v in value}) != len(value):
            raise FieldError(where, f"lists a value twice: {value!r}")
        return list(value)
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"low", "high", "log"})
        if unknown:
            raise FieldError(where, f"has unknown key {unknown[0]!r} (a range has low, high, log)")
        low: Any = value.get("low")
        high: Any = value.get("high")
        log: Any = value.get("log", False)
        if not (_number(low) and _number(high)):
            raise FieldError(where, f"needs numeric low and high, got low={low!r}, high={high!r}")
        if low >= high:
            raise FieldError(where, f"has low ({low}) >= high ({high})")
        if not isinstance(log, bool):
            raise FieldError(where, f"log must be true or false, got {log!r}")
        if log and low <= 0:
            raise FieldError(where, f"is log-scaled, so low must be > 0, got {low}")
        return ParamRange(low, high, log)
    raise FieldError(where, f"must be a list of values or a {{low, high, log}} range, got {value!r}")


@dataclass
class SweepConfig(Section):
    """What `gptflow sweep` varies and how it picks the best trial."""

    method: SweepMethod = observation("grid", "grid: every combination; random / tpe: Optuna's samplers")
    params: dict[str, Any] = observation(
        None, "config key -> list of values, or {low, high, log} (random / tpe only)", factory=dict
    )
    trials: int | None = observation(None, "how many trials random / tpe run", check=at_least(1))
    metric: str | None = observation(
        None, "parent-run metric that ranks trials, e.g. sst2.accuracy (default: the first task's headline metric)"
    )
    goal: Literal["maximize", "minimize"] | None = observation(
        None, "whether a larger metric is better (default: minimize losses, maximize the rest)"
    )
    sampler_seed: int | None = observation(None, "seed of the random / tpe sampler (default: the experiment's seed)")

    def check(self) -> None:
        for key, value in self.params.items():
            if key.split(".")[0] in ("sweep", "claims", "experiment"):
                raise FieldError(f"params.{key}", "is not a key a trial can vary")
            parsed = parse_param(key, value)
            if isinstance(parsed, ParamRange) and self.method == "grid":
                raise FieldError(f"params.{key}", "is a range: ranges need method random or tpe (a grid needs a list)")
        if self.method != "grid" and self.params and self.trials is None:
            raise FieldError("trials", f"is required for method {self.method}")
        if self.metric is not None and "." not in self.metric:
            raise FieldError("metric", f"must be a parent-run metric <variant>.<metric>, got {self.metric!r}")

    def parsed(self) -> dict[str, list[Any] | ParamRange]:
        """The swept keys with their values or ranges, in the order written."""
        return {key: parse_param(key, value) for key, value in self.params.items()}
