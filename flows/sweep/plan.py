"""A sweep before anything runs: its id, its trials' configs, the metric that ranks them — all checked.

Every trial's config is built and validated here (an unknown swept key or a value of the wrong
type fails with the key named, exit 2), and the ranking metric is checked against what the
trials' stages will log, so a sweep cannot spend hours and then find nothing to rank.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from flows.sweep.trials import Trial, TrialSource, grid
from gpt.config.experiment import ExperimentConfig, hash_json
from gpt.config.fields import ConfigError, FieldError
from gpt.config.loader import from_dict
from gpt.config.secrets import public_config
from gpt.config.sweep import ParamRange, SweepConfig
from reports.compare import LOWER_IS_BETTER
from reports.runs import STAGE_PREFIXES, TASK_METRIC, split_variant
from reports.seeds import split_arm


@dataclass
class SweepPlan:
    """What `gptflow sweep` will run: the base config, the sweep section, and the trials' ranking."""

    base: ExperimentConfig
    sweep: SweepConfig
    metric: str
    goal: str  # maximize | minimize

    @property
    def sweep_id(self) -> str:
        """Stable id of this sweep (base config + sweep section): a rerun continues the same sweep."""
        base = public_config(self.base)  # credentials left out: everyone's copy of the sweep is the same sweep
        return "sweep-" + hash_json({"base": base, "sweep": dataclasses.asdict(self.sweep)}, 10)

    def source(self) -> TrialSource:
        """A fresh source of this sweep's trials (the sampler seeded as configured)."""
        seed = self.sweep.sampler_seed if self.sweep.sampler_seed is not None else self.base.seed
        return TrialSource(self.sweep, self.goal, seed)

    def trial_config(self, trial: Trial) -> ExperimentConfig:
        """The base config with the trial's values set (and no sweep section)."""
        return trial_config(self.base, trial.values, f"sweep trial {trial.number}")


def with_grid(cfg: ExperimentConfig, grid_args: list[str]) -> ExperimentConfig:
    """`--grid KEY=V1,V2` options added to the config's `sweep.params` (each value read as YAML)."""
    import yaml

    params = dict(cfg.sweep.params)
    for item in grid_args:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--grid {item!r}: expected KEY=V1,V2,...")
        values = [yaml.safe_load(v) for v in text.split(",") if v.strip()]
        params[key.strip()] = values
    try:
        sweep = dataclasses.replace(cfg.sweep, params=params)
    except FieldError as e:
        raise ConfigError(f"--grid: {e.message('sweep.' + e.key)}") from None
    return dataclasses.replace(cfg, sweep=sweep)


def trial_config(base: ExperimentConfig, values: dict[str, Any], where: str) -> ExperimentConfig:
    """`base` with each `a.b.c` key set to its value, validated like a config file (errors name the key)."""
    raw = base.to_dict()
    raw["sweep"] = dataclasses.asdict(SweepConfig())
    for key, value in values.items():
        node = raw
        *parents, last = key.split(".")
        for part in parents:
            nxt = node.get(part)
            if not isinstance(nxt, dict):
                raise ConfigError(f"{where}: config key 'sweep.params.{key}': '{part}' is not a config section")
            node = nxt
        if last not in node:
            raise ConfigError(f"{where}: unknown config key 'sweep.params.{key}'")
        node[last] = value
    return from_dict(ExperimentConfig, raw, where=where)


def plan_sweep(cfg: ExperimentConfig) -> SweepPlan:
    """Check the sweep section against the base config: keys, value types, ranges, metric. ConfigError names the key."""
    sweep = cfg.sweep
    if not sweep.params:
        raise ConfigError("config key 'sweep.params' is empty: give the keys to sweep (or --grid KEY=V1,V2)")
    metric = sweep.metric or _default_metric(cfg)
    goal = sweep.goal or ("minimize" if any(w in metric for w in LOWER_IS_BETTER) else "maximize")
    plan = SweepPlan(cfg, sweep, metric, goal)
    for values in _probe_values(sweep):  # every grid trial; both ends of each range
        trial = trial_config(cfg, values, "sweep.params")
        check_metric(metric, trial)
    return plan


def _probe_values(sweep: SweepConfig) -> list[dict[str, Any]]:
    params = sweep.parsed()
    if sweep.method == "grid":
        return [t.values for t in grid(params)]
    return [t.values for t in grid({k: range_probe(v) for k, v in params.items()})]


def _default_metric(cfg: ExperimentConfig) -> str:
    if not cfg.finetune.tasks:
        return "pretrain.final_val_loss"
    from gpt.downstream.builtin import get_task

    task = cfg.finetune.tasks[0]
    return f"{task}.{get_task(task, cfg.tasks).metric}"


def check_metric(metric: str, cfg: ExperimentConfig) -> None:
    """Whether a run of `cfg` logs the parent-run metric `metric`; ConfigError naming `sweep.metric` if not."""
    m = TASK_METRIC.match(metric)
    where = f"config key 'sweep.metric' ({metric!r})"
    if not m:
        raise ConfigError(f"{where} must be <variant>.<metric>, e.g. sst2.accuracy or pretrain.final_val_loss")
    variant, name = m["variant"], m["metric"]
    if variant == "pretrain":
        from gpt.train.pretrain import PretrainResult

        known = [f.name for f in dataclasses.fields(PretrainResult)]
        if name not in known:
            raise ConfigError(f"{where}: pretrain logs {', '.join(known)}")
        return
    if variant in STAGE_PREFIXES:
        raise ConfigError(f"{where}: rank trials by pretrain.<metric> or <task>.<metric>")
    task, suffix = split_variant(variant)
    ablation, seed = split_arm(suffix)
    if task not in cfg.finetune.tasks:
        raise ConfigError(f"{where}: no trial fine-tunes {task!r} (finetune.tasks: {cfg.finetune.tasks})")
    if ablation is not None and ablation not in cfg.ablations:
        raise ConfigError(f"{where}: no trial runs ablation {ablation!r} (ablations: {cfg.ablations})")
    if seed is not None and seed not in (cfg.finetune.seeds or []):
        raise ConfigError(f"{where}: no trial fine-tunes with seed {seed} (finetune.seeds: {cfg.finetune.seeds})")
    from gpt.downstream.builtin import get_task

    spec = get_task(task, cfg.tasks)
    logged = [*spec.metrics, *(f"test_{m}" for m in spec.metrics if "test" in spec.splits)]
    if name not in logged:
        raise ConfigError(f"{where}: {task} logs {', '.join(logged)}")


def range_probe(value: list[Any] | ParamRange) -> list[Any]:
    """The values a range is checked with: both ends."""
    return value if isinstance(value, list) else [value.low, value.high]
