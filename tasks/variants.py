"""The fine-tuning recipe of one task variant: GPT-1's defaults, per-task overrides, ablation switches.

A variant is a task, optionally an ablation (`no_pretraining`: same architecture from random init;
`no_aux_lm`: λ = 0) and optionally a seed; its name (`sst2`, `sst2-no_pretraining`,
`sst2-no_aux_lm-seed2`) names the stages `finetune[<variant>]` / `evaluate[<variant>]` and the
parent-run metrics `<variant>.<metric>`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from gpt.config.experiment import ExperimentConfig
from gpt.config.fields import ConfigError
from gpt.downstream.spec import SENTIMENT_VERBALIZERS, probe_supported
from gpt.model.config import read_model_config
from gpt.train.config import FinetuneConfig

# ablation -> the FinetuneConfig fields it overrides
ABLATIONS: dict[str, dict[str, Any]] = {"no_pretraining": {"init": "scratch"}, "no_aux_lm": {"aux_lm_weight": 0.0}}


@dataclass(frozen=True)
class Variant:
    """One fine-tune/evaluate pair of the plan."""

    task: str
    ablation: str | None = None
    seed: int | None = None  # None: the experiment's seed
    step: int | None = None  # the pretraining checkpoint fine-tuned from; None: the final weights

    @property
    def name(self) -> str:
        """`task[-stepN][-ablation][-seedN]`."""
        step = [f"step{self.step}"] if self.step is not None else []
        return "-".join([self.task, *step, *([self.ablation] if self.ablation else []), *self._seed_part()])

    def _seed_part(self) -> list[str]:
        return [f"seed{self.seed}"] if self.seed is not None else []


def variants(cfg: ExperimentConfig) -> list[Variant]:
    """Every task × pretraining checkpoint (`finetune.from_checkpoints`; `no_pretraining` starts from none)
    × (no ablation + each configured ablation) × each of `finetune.seeds` (or the run's seed)."""
    seeds: list[int | None] = list(cfg.finetune.seeds) if cfg.finetune.seeds else [None]
    steps = cfg.finetune.checkpoint_steps()
    return [
        Variant(task, ablation, seed, step)
        for task in cfg.finetune.tasks
        for step in steps
        for ablation in [None, *cfg.ablations]
        if step is None or ablation != "no_pretraining"
        for seed in seeds
    ]


def recipe(cfg: ExperimentConfig, variant: Variant) -> FinetuneConfig:
    """`finetune` with the task's `per_task` overrides and the variant's ablation applied."""
    ft = cfg.finetune
    override = ft.per_task.get(variant.task)
    changes: dict[str, Any] = {k: v for k, v in asdict(override).items() if v is not None} if override else {}
    changes.update(ABLATIONS[variant.ablation] if variant.ablation else {})
    return replace(ft, **changes, tasks=[variant.task], seeds=None, per_task={}, from_checkpoints=[])


def check_task_inputs(cfg: ExperimentConfig) -> None:
    """Before compute: every task name known, per-task overrides name a task that runs, `finetune.init`
    exists, custom tasks' local files have the configured columns and labels, and a built-in task's
    test file (`builtin_tasks`) is readable and labelled.

    Raises ConfigError naming the key, or TaskDataError naming the file and column.
    """
    from gpt.downstream.builtin import check_test_file, get_task
    from gpt.downstream.custom import check_custom_task

    for i, name in enumerate(cfg.finetune.tasks):
        try:
            get_task(name, cfg.tasks)
        except KeyError as e:
            raise ConfigError(f"config key 'finetune.tasks[{i}]': {e.args[0]}") from None
        if name in cfg.tasks:
            check_custom_task(name, cfg.tasks[name])
        elif name in cfg.builtin_tasks:
            check_test_file(name, cfg.builtin_tasks[name])
    for i, name in enumerate(cfg.pretrain.zeroshot_tasks):
        try:
            spec = get_task(name, cfg.tasks)
        except KeyError as e:
            raise ConfigError(f"config key 'pretrain.zeroshot_tasks[{i}]': {e.args[0]}") from None
        if spec.type != "multiple_choice" and name not in SENTIMENT_VERBALIZERS:
            raise ConfigError(
                f"config key 'pretrain.zeroshot_tasks[{i}]': {name!r} has no zero-shot form "
                f"(multiple-choice tasks and {', '.join(SENTIMENT_VERBALIZERS)} have)"
            )
    for i, name in enumerate(cfg.pretrain.probe_tasks):
        try:
            spec = get_task(name, cfg.tasks)
        except KeyError as e:
            raise ConfigError(f"config key 'pretrain.probe_tasks[{i}]': {e.args[0]}") from None
        if not probe_supported(spec):
            raise ConfigError(
                f"config key 'pretrain.probe_tasks[{i}]': {name!r} has no linear-probe form "
                "(classification, entailment, similarity classes or two-answer multiple choice have)"
            )
    check_checkpoints(cfg)
    init = cfg.finetune.init
    if init not in ("pretrained", "scratch"):
        try:
            read_model_config(Path(init).expanduser())
        except ValueError as e:
            raise ConfigError(
                f"config key 'finetune.init' must be pretrained | scratch | a model directory, got {init!r} ({e})"
            ) from None


def check_checkpoints(cfg: ExperimentConfig) -> None:
    """`finetune.from_checkpoints` names steps pretraining keeps (`pretrain.keep_models`), and fine-tuning
    starts from the pipeline's pretraining."""
    ft = cfg.finetune
    if not ft.from_checkpoints:
        return
    if ft.init != "pretrained":
        raise ConfigError(f"config key 'finetune.from_checkpoints' needs finetune.init: pretrained, not {ft.init!r}")
    kept = cfg.pretrain.keep_models
    for i, step in enumerate(ft.checkpoint_steps()):
        if step is not None and step not in kept:
            raise ConfigError(
                f"config key 'finetune.from_checkpoints[{i}]': step {step} is not kept "
                f"(pretrain.keep_models: {kept}); add it there"
            )
