"""The trials of a sweep: every grid combination, or what Optuna's random / TPE sampler asks for.

Grid needs no extra. Random and TPE are Optuna's samplers driven through its ask-and-tell
interface (the sweep, not Optuna, runs the trials): asked in batches as wide as the trials in
flight and told each batch's results in trial order, so a fixed sampler seed asks for the same
trials again, also when a killed sweep is rerun (its finished trials report the same values).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gpt.config.fields import ConfigError
from gpt.config.sweep import ParamRange, SweepConfig


@dataclass(frozen=True)
class Trial:
    """One trial: its number (from 1) and the value of each swept key."""

    number: int
    values: dict[str, Any]

    def label(self) -> str:
        """`finetune.lr=0.0001, finetune.aux_lm_weight=0.5`."""
        return ", ".join(f"{k}={v}" for k, v in self.values.items())


def grid(params: Mapping[str, list[Any] | ParamRange]) -> list[Trial]:
    """Every combination of the swept lists, the last key varying fastest."""
    lists = [v for v in params.values() if isinstance(v, list)]
    assert len(lists) == len(params), "a grid sweeps lists only (SweepConfig.check)"
    keys = list(params)
    return [Trial(i + 1, dict(zip(keys, combo, strict=True))) for i, combo in enumerate(itertools.product(*lists))]


@dataclass
class TrialSource:
    """Hands out the next trials to run and takes their results (a grid ignores them; TPE learns from them)."""

    sweep: SweepConfig
    goal: str
    seed: int
    study: Any = None  # optuna.Study for random / tpe
    asked: dict[int, Any] = field(default_factory=dict)  # trial number -> optuna FrozenTrial being run
    distributions: dict[str, Any] = field(default_factory=dict)  # swept key -> optuna distribution
    pending: list[Trial] = field(default_factory=list)  # grid trials not handed out yet
    handed_out: int = 0

    def __post_init__(self) -> None:
        params = self.sweep.parsed()
        if self.sweep.method == "grid":
            self.pending = grid(params)
            return
        optuna = _optuna(self.sweep.method)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sampler = (
            optuna.samplers.RandomSampler(seed=self.seed)
            if self.sweep.method == "random"
            else optuna.samplers.TPESampler(seed=self.seed)
        )
        self.study = optuna.create_study(direction=self.goal, sampler=sampler)
        self.distributions = {key: _distribution(optuna, key, value) for key, value in params.items()}

    @property
    def total(self) -> int:
        """How many trials the sweep runs."""
        return len(self.pending) + self.handed_out if self.study is None else int(self.sweep.trials or 0)

    def next_batch(self, width: int) -> list[Trial]:
        """Up to `width` trials to run now (none when the sweep is complete)."""
        n = min(width, self.total - self.handed_out)
        if self.study is None:
            batch, self.pending = self.pending[:n], self.pending[n:]
        else:
            batch = []
            for i in range(n):
                asked = self.study.ask(self.distributions)
                number = self.handed_out + i + 1
                self.asked[number] = asked
                batch.append(Trial(number, {key: asked.params[key] for key in self.distributions}))
        self.handed_out += len(batch)
        return batch

    def tell(self, trial: Trial, value: float | None) -> None:
        """The trial's metric (None: it logged none, or failed); the sampler learns from it."""
        asked = self.asked.pop(trial.number, None)
        if asked is None:
            return
        if value is None:
            self.study.tell(asked, state=_optuna(self.sweep.method).trial.TrialState.FAIL)
        else:
            self.study.tell(asked, value)


def _optuna(method: str) -> Any:
    try:
        import optuna
    except ImportError:
        raise ConfigError(
            f"config key 'sweep.method' {method} uses Optuna's sampler: pip install 'gptflow[sweep]'"
        ) from None
    return optuna


def _distribution(optuna: Any, key: str, value: list[Any] | ParamRange) -> Any:
    if isinstance(value, ParamRange):
        if value.integer:
            return optuna.distributions.IntDistribution(int(value.low), int(value.high), log=value.log)
        return optuna.distributions.FloatDistribution(float(value.low), float(value.high), log=value.log)
    if not all(v is None or isinstance(v, bool | int | float | str) for v in value):
        raise ConfigError(f"config key 'sweep.params.{key}': Optuna chooses among scalars only, got {value!r}")
    return optuna.distributions.CategoricalDistribution(value)
