"""The training sections of the experiment config: `pretrain` and `finetune` (with its per-task overrides)."""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from gpt.config.fields import (
    NON_EMPTY,
    OBSERVATION,
    Check,
    FieldError,
    Section,
    above,
    at_least,
    between,
    knob,
    matches,
    observation,
    one_of,
    placement,
)

# The precisions a Lightning Trainer is given; `pretrain.precision` is one of them or `auto` (a checked str, so a
# bad value gets one_of's message; gpt.train.pretrain.resolve_precision narrows it to LightningPrecision).
LightningPrecision = Literal["32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true"]
PRECISIONS: tuple[str, ...] = ("auto", *get_args(LightningPrecision))
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
STRATEGIES = ("auto", "ddp", "ddp_spawn", "ddp_find_unused_parameters_true", "fsdp", "fsdp_cpu_offload")


def _strategy_available(name: str) -> bool:
    """A Lightning training strategy gptflow supports; deepspeed only when the package is installed."""
    if name.startswith("deepspeed"):
        return importlib.util.find_spec("deepspeed") is not None
    return name in STRATEGIES


STRATEGY = Check(_strategy_available, "auto, ddp, ddp_spawn, fsdp, fsdp_cpu_offload or deepspeed (installed)")
DEVICES = matches(r"auto|-1|[1-9][0-9]*|[0-9]+(,[0-9]+)*,?", 'auto, a count ("2") or a list of device ids ("0,1")')


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX), where bf16 autocast pays: on this
    machine's 2 cores it trains the demo model 1.7x faster than fp32 (both compiled), at an equal val loss
    after equal steps (benchmarks/precision.py). Read from /proc/cpuinfo, so planning needs no torch."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:  # not Linux
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def auto_precision(gpu: bool) -> LightningPrecision:
    """What `precision: auto` means: bf16-mixed with a GPU or a CPU with native bf16, else 32-true."""
    return "bf16-mixed" if gpu or cpu_has_native_bf16() else "32-true"


@dataclass
class PretrainConfig(Section):
    """Language-model pretraining with a Lightning Trainer.

    Observation and placement fields are kept out of the stage's cache key: changing them reuses
    (or resumes) the same pretraining. The global batch is fixed by `batch_size` and
    `tokens_per_step`, so a rerun on another device count resumes the same checkpoints.
    """

    max_steps: int = knob(200, "optimizer steps", check=at_least(1))
    batch_size: int = knob(8, "windows per micro-batch per device", check=at_least(1))
    lr: float = knob(2.5e-4, "peak learning rate (AdamW)", check=above(0))
    warmup_steps: int = knob(20, "linear warmup steps", check=at_least(0))
    min_lr_ratio: float = knob(0.0, "cosine schedule: final lr as a fraction of the peak", check=between(0, 1))
    weight_decay: float = knob(
        0.01, "AdamW decoupled weight decay on matrices (not biases, gains, positions)", check=at_least(0)
    )
    grad_clip: float = knob(1.0, "clip the gradient norm to this (0: no clipping)", check=at_least(0))
    val_every: int = observation(
        50, "when the val loss is logged; the final val loss is measured anyway", check=at_least(1)
    )
    val_batches: int = knob(
        8, "val batches per validation (the reported final val loss depends on it)", check=at_least(1)
    )
    ckpt_every: int = observation(
        50, "how often a checkpoint is saved; a resume is exact from any step", check=at_least(1)
    )
    log_every: int = observation(10, "how often train loss, lr and tokens/s are logged", check=at_least(1))
    precision: str = knob(
        "auto",
        "auto (bf16-mixed on a GPU and on a CPU with native bf16, else 32-true) or a Lightning precision",
        check=one_of(*PRECISIONS),
    )
    strategy: str = placement(
        "auto", "auto | ddp | fsdp | fsdp_cpu_offload | deepspeed[_stage_N] (if installed)", check=STRATEGY
    )
    devices: str = placement("auto", 'per node: auto, a count ("2") or a list of device ids ("0,1")', check=DEVICES)
    accelerator: str = knob("auto", "auto (a GPU when visible) | cpu | gpu | mps", check=one_of(*ACCELERATORS))
    sample_tokens: int = observation(
        48, "length of the continuations sampled at validations and at the end", check=at_least(1)
    )
    schedule: Literal["cosine", "linear", "wsd"] = knob(
        "cosine",
        "after warmup: cosine to min_lr_ratio, linear to 0, or wsd: constant, then linear to min_lr_ratio over the "
        "last cooldown_steps (extendable: see pretrain.resume_from)",
    )
    cooldown_steps: int | None = knob(
        None, "wsd: steps of the final decay (unset: 20% of max_steps)", check=at_least(1), keyed_when_set=True
    )
    tokens_per_step: int | None = knob(
        None, "accumulate gradients to about this many tokens per optimizer step", check=at_least(1)
    )
    compile: bool | None = knob(
        None, "torch.compile the loss; unset: on with a GPU, off on a CPU (where it measured no faster)"
    )
    num_nodes: int = placement(1, "nodes the job spans; the global batch stays tokens_per_step", check=at_least(1))
    ckpt_keep: int = observation(2, "step checkpoints kept besides last.ckpt", check=at_least(0))
    zeroshot_tasks: list[str] = observation(
        None, "tasks scored zero-shot at each validation (GPT-1 Fig. 2); logged only", factory=list
    )
    zeroshot_examples: int | None = observation(200, "dev examples per zero-shot task (unset: all)", check=at_least(1))
    probe_tasks: list[str] = observation(
        None, "tasks linearly probed (h(extract), frozen model) at each validation; logged only", factory=list
    )
    probe_examples: int | None = observation(
        1000, "training examples each probe is fit on (unset: all); scored on the whole dev split", check=at_least(2)
    )
    keep_models: list[int] = knob(
        None,
        "steps whose weights are kept as model directories (models/step-N: safetensors), e.g. to fine-tune from "
        "them (finetune.from_checkpoints); they live as long as the stage does",
        factory=list,
        keyed_when_set=True,
    )
    resume_from: str | None = knob(
        None,
        "continue a finished pretraining (a pretrain stage directory or run id) to max_steps: its optimizer, "
        "schedule position and data order carry on; wsd resumes from the start of its cooldown",
        role="location",
    )
    init_from: str | None = knob(
        None,
        "start from these weights, not a random init: a model directory (e.g. from `gptflow import-hf`), a pretrain "
        "stage directory, a run id or models:/NAME@ALIAS; keyed by the weights' content, not this reference",
        role="location",
    )
    activation_checkpointing: bool = placement(False, "fsdp: recompute each Transformer block in the backward pass")
    launcher: str = placement("", "command prefix starting the training job's ranks, e.g. srun or torchrun ...")

    def check(self) -> None:
        if self.strategy.startswith(("fsdp", "deepspeed")) and self.accelerator == "cpu":
            raise FieldError("strategy", f"({self.strategy}) needs a GPU; accelerator is 'cpu'")
        if self.schedule == "wsd" and self.cooldown() > self.max_steps - self.warmup_steps:
            raise FieldError("cooldown_steps", f"({self.cooldown()}) leaves no steps between warmup and the cooldown")
        if self.init_from is not None and self.resume_from is not None:
            raise FieldError("init_from", "and 'resume_from' both say where training starts: give one")
        if self.keep_models and self.strategy.startswith(("fsdp", "deepspeed")):
            raise FieldError("keep_models", f"needs whole weights on rank 0: one device or ddp, not {self.strategy}")
        bad = next((s for s in self.keep_models if not 1 <= s <= self.max_steps), None)
        if bad is not None:
            raise FieldError("keep_models", f"has step {bad}, outside 1..max_steps ({self.max_steps})")

    def cooldown(self) -> int:
        """Steps of the wsd schedule's final decay: `cooldown_steps`, unset 20% of `max_steps`."""
        return self.cooldown_steps if self.cooldown_steps is not None else max(1, self.max_steps // 5)

    def accumulation(self, block_size: int, world_size: int = 1) -> int:
        """Micro-batches per optimizer step so a step sees about `tokens_per_step` tokens on all ranks (1: unset)."""
        if self.tokens_per_step is None:
            return 1
        return max(1, round(self.tokens_per_step / (self.batch_size * block_size * world_size)))

    def compiles(self, gpu: bool) -> bool:
        """Whether training runs under torch.compile: `compile` when set; unset, with a GPU.

        On this 2-core CPU it does not pay (benchmarks/precision.py, demo model, quiet machine, Inductor's
        cache warm): a compiled step ran at 0.97x of eager in fp32 and 1.03x in bf16-mixed, and a cold
        compilation costs ~45-55 s more.
        """
        return gpu if self.compile is None else self.compile

    def resolved_precision(self, gpu: bool) -> str:
        """The Lightning precision training runs in: `precision`, with `auto` resolved (`auto_precision`)."""
        return auto_precision(gpu) if self.precision == "auto" else self.precision

    def global_batch(self, block_size: int, world_size: int) -> int:
        """Windows per optimizer step over all ranks: what a step trains on, whatever the device count."""
        return self.accumulation(block_size, world_size) * world_size * self.batch_size


@dataclass
class FinetuneConfig(Section):
    """Per-task fine-tuning with GPT-1's input transformations and auxiliary LM loss.

    The fields marked `RECIPE` can be changed per task in `per_task.<task>`.
    """

    tasks: list[str] = knob(
        doc="the tasks fine-tuned and evaluated", check=NON_EMPTY, factory=lambda: ["sst2", "story_cloze"]
    )
    lr: float = knob(6.25e-5, "peak learning rate (GPT-1: 6.25e-5)", check=above(0))
    epochs: int = knob(3, "passes over the training split", check=at_least(1))
    batch_size: int = knob(32, "examples per optimizer step", check=at_least(1))
    aux_lm_weight: float = knob(0.5, "λ of L3 = L2 + λ·L1 (0 turns the auxiliary LM loss off)", check=at_least(0))
    warmup_fraction: float = knob(
        0.002, "share of the steps in linear warmup, then linear decay to 0", check=between(0, 1, high_open=True)
    )
    weight_decay: float = knob(0.01, "AdamW decoupled weight decay", check=at_least(0))
    clf_dropout: float = knob(0.1, "dropout before the task head", check=between(0, 1, high_open=True))
    max_examples: int | None = knob(None, "cap per split, for quick runs (a seeded subset)", check=at_least(2))
    max_len: int | None = knob(None, "input tokens per example; unset: model.block_size", check=at_least(8))
    group_by_length: bool = knob(
        True,
        "batch examples of similar length (within seeded groups of 50 batches), so padding costs little",
    )
    fresh_special_tokens: bool = knob(
        True,
        "re-draw the start/delim/extract embeddings before fine-tuning pretrained weights (GPT-1 adds them then)",
    )
    init: str = knob(
        "pretrained",
        "pretrained (the pipeline's) | scratch (random, same architecture) | a model dir",
        check=matches(r".+", "non-empty"),
    )
    early_stopping_patience: int | None = knob(
        None, "stop after N dev checks without improvement of the dev metric", check=at_least(1)
    )
    select_best: bool = knob(False, "keep the weights of the best dev-metric epoch instead of the last")
    ckpt_every: int = observation(
        50, "optimizer steps between mid-stage checkpoints (exact resume after a kill)", check=at_least(1)
    )
    seeds: list[int] | None = knob(None, "fine-tune (and evaluate) each task once per seed", check=NON_EMPTY)
    from_checkpoints: list[str] = knob(
        None,
        "fine-tune (and evaluate) each task from each of these pretraining steps (kept by pretrain.keep_models) "
        "and `last` (the final weights), e.g. [200, 400, last]; empty: the final weights only",
        factory=list,
        check=Check(lambda v: all(s == "last" or s.isdigit() for s in v), "a list of steps and `last`"),
        keyed_when_set=True,
    )

    def checkpoint_steps(self) -> list[int | None]:
        """`from_checkpoints` as pretraining steps, None for the final weights (also when it is empty)."""
        return [None if s == "last" else int(s) for s in self.from_checkpoints] or [None]

    per_task: dict[str, FinetuneOverrides] = knob(  # type: ignore[valid-type]
        doc="task name -> recipe overrides (any of the recipe keys)", factory=dict
    )

    def check(self) -> None:
        for name in self.per_task:
            if name not in self.tasks:
                raise FieldError(f"per_task.{name}", f": {name!r} is not in finetune.tasks")


# The keys `finetune.per_task.<task>` may override: the recipe, not the plan (tasks, seeds) or logging.
RECIPE_KEYS = (
    "lr", "epochs", "batch_size", "aux_lm_weight", "warmup_fraction", "weight_decay", "clf_dropout",
    "max_examples", "max_len", "group_by_length", "fresh_special_tokens", "early_stopping_patience", "select_best",
)  # fmt: skip


def _override_field(f: dataclasses.Field[Any]) -> tuple[str, Any, Any]:
    """A recipe field as an override: optional (unset keeps the default), same doc and check."""
    return (
        f.name,
        f.type if "None" in str(f.type) else f"{f.type} | None",
        knob(None, f.metadata["doc"], check=f.metadata["check"]),
    )


# `finetune.per_task.<task>`: FinetuneConfig's recipe fields, each optional; derived, so the two cannot drift.
FinetuneOverrides = dataclasses.make_dataclass(
    "FinetuneOverrides",
    [_override_field(f) for f in dataclasses.fields(FinetuneConfig) if f.name in RECIPE_KEYS],
    bases=(Section,),
    namespace={
        "__doc__": "Per-task changes to the fine-tuning recipe; unset keys keep `finetune`'s value.",
        "__module__": __name__,
    },
)

__all__ = ["OBSERVATION", "FinetuneConfig", "FinetuneOverrides", "PretrainConfig", "RECIPE_KEYS"]
