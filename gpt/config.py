"""Typed experiment configuration: one dataclass per pipeline section, loaded from YAML.

Every key a user can write is a dataclass field, so an unknown key, a wrong type or an
out-of-range value is caught here, with the dotted key path in the message, before any compute.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A config problem a user can fix; the message names the key or file."""


# A field's `role` (dataclass field metadata) says whether it changes what a stage computes.
# Fields without one do. `observation`: only what is logged or how often state is saved;
# `placement`: only where and on how many devices the job runs. Both leave the trained weights
# and written data unchanged, so a stage that differs only in them is the same stage.
OBSERVATION, PLACEMENT = "observation", "placement"


def observation(default: Any, why: str) -> Any:
    """A field that changes only what is logged or saved along the way, not the result."""
    return field(default=default, metadata={"role": OBSERVATION, "why": why})


def placement(default: Any, why: str) -> Any:
    """A field that changes only where the job runs, not the result."""
    return field(default=default, metadata={"role": PLACEMENT, "why": why})


@dataclass
class CorpusSourceConfig:
    """One source of a corpus mixture (`corpus.sources`) and its share of the corpus bytes."""

    source: str = ""  # any `corpus.source` syntax
    weight: float = 1.0


@dataclass
class CorpusConfig:
    """Where the pretraining text comes from and how it is cleaned."""

    source: str = "tinyshakespeare"
    sources: list[CorpusSourceConfig] = field(default_factory=list)  # weighted mixture; replaces `source` when set
    strip_gutenberg: bool = True
    fix_unicode: bool = False  # ftfy.fix_text (mojibake, entities, NFC), as GPT-1 did
    normalize_whitespace: bool = False  # unicode spaces to ' ', no trailing spaces, at most one blank line
    lowercase: bool = False
    dedup: bool = True  # drop exact duplicate documents (after cleaning)
    max_bytes: int | None = None  # keep only the first N bytes of text (quick runs)


@dataclass
class TokenizerConfig:
    """BPE trained on the corpus (`bpe`) or OpenAI's GPT-2 ranks (`gpt2`)."""

    kind: Literal["bpe", "gpt2"] = "bpe"
    vocab_size: int = 4096  # for `bpe`: mergeable ranks, specials come on top
    max_train_bytes: int | None = None  # for `bpe`: train on the first N bytes of the corpus only


@dataclass
class EncodeConfig:
    """How the corpus is split into train/val documents before encoding."""

    val_fraction: float = 0.05


@dataclass
class ModelConfig:
    """GPT architecture; the defaults are GPT-1's except for size."""

    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    block_size: int = 256
    dropout: float = 0.1
    norm: Literal["post", "pre"] = "post"
    activation: Literal["gelu", "gelu_new"] = "gelu"  # gelu_new: tanh approximation (GPT-1/GPT-2 code)
    pad_vocab_to: int = 1  # round the embedding rows up to a multiple (64 speeds up the LM head)


@dataclass
class PretrainConfig:
    """Language-model pretraining with a Lightning Trainer.

    Observation and placement fields (see `observation`, `placement`) are kept out of the stage's
    cache key: changing them reuses (or resumes) the same pretraining. The global batch is fixed
    by `batch_size` and `tokens_per_step`, so a rerun on another device count resumes the same
    checkpoints; validation runs in eval mode without drawing from the training RNG, and samples
    and zero-shot scores use RNGs of their own.
    """

    max_steps: int = 200
    batch_size: int = 8
    lr: float = 2.5e-4
    warmup_steps: int = 20
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    val_every: int = observation(50, "when the val loss is logged; the final val loss is measured at the end anyway")
    val_batches: int = 8  # in the key: the reported final val loss depends on it
    ckpt_every: int = observation(50, "how often a checkpoint is saved; a resume is exact from any step")
    log_every: int = observation(10, "how often train loss, lr and tokens/s are logged")
    precision: str = "auto"  # auto: bf16-mixed on GPU, 32-true on CPU
    strategy: str = placement("auto", "auto | ddp | fsdp | fsdp_cpu_offload | deepspeed[_stage_N] (if installed)")
    devices: str = placement("auto", 'per node: auto, a count ("2") or a list of device ids ("0,1")')
    accelerator: str = "auto"
    sample_tokens: int = observation(48, "length of the continuations sampled at validations and at the end")
    schedule: Literal["cosine", "linear"] = "cosine"  # after warmup: cosine to min_lr_ratio, or linear to 0
    tokens_per_step: int | None = None  # accumulate gradients to about this many tokens per optimizer step
    compile: bool | None = None  # torch.compile the model; None: on with CUDA, off on CPU
    num_nodes: int = placement(1, "nodes the job spans; the global batch stays tokens_per_step")
    ckpt_keep: int = observation(2, "step checkpoints kept besides last.ckpt")
    zeroshot_tasks: list[str] = field(
        default_factory=list,
        metadata={"role": OBSERVATION, "why": "tasks scored zero-shot at each validation (GPT-1 Fig. 2); logged only"},
    )
    zeroshot_examples: int | None = observation(200, "dev examples per zero-shot task (None: all)")
    activation_checkpointing: bool = placement(False, "fsdp: recompute each Transformer block in the backward pass")
    launcher: str = placement("", "command prefix starting the training job's ranks, e.g. srun or torchrun ...")

    def accumulation(self, block_size: int, world_size: int = 1) -> int:
        """Micro-batches per optimizer step so a step sees about `tokens_per_step` tokens on all ranks (1: unset)."""
        if self.tokens_per_step is None:
            return 1
        return max(1, round(self.tokens_per_step / (self.batch_size * block_size * world_size)))

    def global_batch(self, block_size: int, world_size: int) -> int:
        """Windows per optimizer step over all ranks: what a step trains on, whatever the device count."""
        return self.accumulation(block_size, world_size) * world_size * self.batch_size


@dataclass
class FinetuneOverrides:
    """Per-task changes to the fine-tuning recipe (`finetune.per_task.<task>`); unset keys keep the default."""

    lr: float | None = None
    epochs: int | None = None
    batch_size: int | None = None
    aux_lm_weight: float | None = None
    warmup_fraction: float | None = None
    weight_decay: float | None = None
    clf_dropout: float | None = None
    max_examples: int | None = None
    max_len: int | None = None
    early_stopping_patience: int | None = None
    select_best: bool | None = None


@dataclass
class FinetuneConfig:
    """Per-task fine-tuning with GPT-1's input transformations and auxiliary LM loss."""

    tasks: list[str] = field(default_factory=lambda: ["sst2", "story_cloze"])
    lr: float = 6.25e-5
    epochs: int = 3
    batch_size: int = 32
    aux_lm_weight: float = 0.5
    warmup_fraction: float = 0.002
    weight_decay: float = 0.01
    clf_dropout: float = 0.1
    max_examples: int | None = None  # cap per split, for quick runs
    max_len: int | None = None  # defaults to model.block_size
    init: str = "pretrained"  # pretrained (the pipeline's) | scratch (random, same architecture) | a model dir
    early_stopping_patience: int | None = None  # stop after N dev checks without improvement of the dev metric
    select_best: bool = False  # keep the weights of the best dev-metric epoch instead of the last
    ckpt_every: int = observation(50, "optimizer steps between mid-stage checkpoints (exact resume after a kill)")
    seeds: list[int] | None = None  # fine-tune (and evaluate) each task once per seed
    per_task: dict[str, FinetuneOverrides] = field(default_factory=dict)  # task name -> recipe overrides


@dataclass
class TaskColumnsConfig:
    """Which columns of a custom task's files feed the input transformation, by role."""

    text: str | None = None  # classification
    premise: str | None = None  # entailment
    hypothesis: str | None = None
    a: str | None = None  # similarity (both orders are fed)
    b: str | None = None
    context: str | None = None  # multiple choice
    answers: list[str] | None = None


@dataclass
class CustomTaskConfig:
    """A benchmark defined by configuration alone (see README, "Custom tasks")."""

    type: Literal["classification", "entailment", "similarity", "multiple_choice"]
    train: str  # local path or https://...#sha256=<hex>
    dev: str
    test: str | None = None  # scored too when it has labels
    format: Literal["auto", "csv", "tsv", "jsonl"] = "auto"  # auto: from the file extension
    delimiter: str | None = None  # overrides the format's (csv ',' / tsv tab)
    quoting: Literal["minimal", "none"] = "minimal"  # none: quote characters are plain text
    encoding: str = "utf-8-sig"  # utf-8-sig also reads plain UTF-8; a BOM is dropped
    columns: TaskColumnsConfig = field(default_factory=TaskColumnsConfig)
    label: str = "label"  # the label column
    labels: list[str] | None = None  # label set in class order; multiple choice: value naming each answer
    score_range: list[float] | None = None  # regression (similarity): [low, high], one output, MSE loss
    metrics: list[str] | None = None  # default: accuracy, or pearson + spearman for regression


@dataclass
class FanoutConfig:
    """How the independent fine-tune/evaluate stages (tasks, ablations, seeds) run at once.

    Placement only, like `pretrain.strategy`: no stage's cache key depends on it.
    """

    runner: Literal["thread", "dask", "ray"] = placement("thread", "the Prefect task runner; dask/ray need their extra")
    max_concurrency: int | None = placement(None, "stages in flight at once; None: one per visible GPU, 1 on CPU")
    address: str | None = placement(None, "an existing Dask scheduler / Ray cluster; None starts a local one")
    threads_per_stage: int | None = placement(
        None, "torch CPU threads of each concurrent stage; None: cores / concurrency"
    )


@dataclass
class ExperimentConfig:
    """The whole resolved configuration of one pipeline run."""

    experiment: str = observation("gptflow", "the MLflow experiment the runs are recorded in")
    seed: int = 1234
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    tasks: dict[str, CustomTaskConfig] = field(default_factory=dict)  # custom tasks by name
    ablations: list[Literal["no_pretraining", "no_aux_lm"]] = field(default_factory=list)
    fanout: FanoutConfig = field(default_factory=FanoutConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (what YAML holds), for hashing and logging."""
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """The config as `section.key -> value`, the form MLflow params take."""
        return flatten(self.to_dict())

    def digest(self) -> str:
        """Stable short hash of the whole config."""
        return hash_json(self.to_dict())


def hash_json(obj: Any, length: int = 16) -> str:
    """sha256 of canonical JSON, shortened; the content key of configs and stages."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict to dotted keys."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML file (or defaults), apply `key.path=value` overrides, validate.

    Raises ConfigError naming the file, key and problem.
    """
    raw: dict[str, Any] = {}
    where = "defaults"
    if path is not None:
        where = str(path)
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = f" line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{p}:{line} is not valid YAML: {getattr(e, 'problem', e)}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping of config sections")
        raw = loaded
    for item in overrides or []:
        apply_override(raw, item)
    return from_dict(ExperimentConfig, raw, where=where)


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


def from_dict(cls: type, data: Any, where: str = "config", prefix: str = "") -> Any:
    """Build dataclass `cls` from a mapping, checking keys and types recursively."""
    label = prefix.rstrip(".") or "top level"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: '{label}' must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown config key '{prefix}{unknown[0]}' (known: {', '.join(sorted(names))})")
    required = [f.name for f in dataclasses.fields(cls) if f.default is f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if name not in data]
    if missing:
        raise ConfigError(f"{where}: missing config key '{prefix}{missing[0]}'")
    kwargs = {name: _coerce(hints[name], value, where, f"{prefix}{name}") for name, value in data.items()}
    obj = cls(**kwargs)
    _check_ranges(obj, where, prefix)
    return obj


def _coerce(tp: Any, value: Any, where: str, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where, key + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, where, key)
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


# (key, predicate, requirement) checked after types; messages say what is allowed.
def _strategy_available(name: str) -> bool:
    """A Lightning training strategy gptflow supports; deepspeed only when the package is installed."""
    if name.startswith("deepspeed"):
        import importlib.util

        return importlib.util.find_spec("deepspeed") is not None
    return name in ("auto", "ddp", "ddp_spawn", "ddp_find_unused_parameters_true", "fsdp", "fsdp_cpu_offload")


def _runner_available(name: str) -> bool:
    """A fan-out task runner whose Prefect integration is installed (`gptflow[dask]`, `gptflow[ray]`)."""
    import importlib.util

    return name == "thread" or importlib.util.find_spec(f"prefect_{name}") is not None


_RANGES: dict[type, list[tuple[str, Any, str]]] = {
    CorpusSourceConfig: [
        ("source", lambda v: bool(v.strip()), "a non-empty source (see README, Data offline)"),
        ("weight", lambda v: v > 0, "> 0"),
    ],
    CorpusConfig: [("max_bytes", lambda v: v is None or v >= 1, ">= 1")],
    TokenizerConfig: [
        ("vocab_size", lambda v: 256 < v <= 65_000, "between 257 and 65000"),
        ("max_train_bytes", lambda v: v is None or v >= 1, ">= 1"),
    ],
    EncodeConfig: [("val_fraction", lambda v: 0 < v < 0.5, "in (0, 0.5)")],
    ModelConfig: [
        ("n_layer", lambda v: v >= 1, ">= 1"),
        ("n_head", lambda v: v >= 1, ">= 1"),
        ("n_embd", lambda v: v >= 1, ">= 1"),
        ("block_size", lambda v: v >= 8, ">= 8"),
        ("dropout", lambda v: 0 <= v < 1, "in [0, 1)"),
        ("pad_vocab_to", lambda v: v >= 1, ">= 1"),
    ],
    PretrainConfig: [
        ("max_steps", lambda v: v >= 1, ">= 1"),
        ("batch_size", lambda v: v >= 1, ">= 1"),
        ("lr", lambda v: v > 0, "> 0"),
        ("warmup_steps", lambda v: v >= 0, ">= 0"),
        ("min_lr_ratio", lambda v: 0 <= v <= 1, "in [0, 1]"),
        ("weight_decay", lambda v: v >= 0, ">= 0"),
        ("val_every", lambda v: v >= 1, ">= 1"),
        ("val_batches", lambda v: v >= 1, ">= 1"),
        ("ckpt_every", lambda v: v >= 1, ">= 1"),
        ("log_every", lambda v: v >= 1, ">= 1"),
        ("tokens_per_step", lambda v: v is None or v >= 1, ">= 1"),
        ("num_nodes", lambda v: v >= 1, ">= 1"),
        ("strategy", _strategy_available, "auto, ddp, ddp_spawn, fsdp, fsdp_cpu_offload or deepspeed (installed)"),
        ("ckpt_keep", lambda v: v >= 0, ">= 0"),
        ("zeroshot_examples", lambda v: v is None or v >= 1, ">= 1"),
    ],
    FinetuneConfig: [
        ("tasks", lambda v: len(v) >= 1, "a non-empty list"),
        ("lr", lambda v: v > 0, "> 0"),
        ("epochs", lambda v: v >= 1, ">= 1"),
        ("batch_size", lambda v: v >= 1, ">= 1"),
        ("aux_lm_weight", lambda v: v >= 0, ">= 0"),
        ("warmup_fraction", lambda v: 0 <= v < 1, "in [0, 1)"),
        ("clf_dropout", lambda v: 0 <= v < 1, "in [0, 1)"),
        ("max_examples", lambda v: v is None or v >= 2, ">= 2"),
        ("max_len", lambda v: v is None or v >= 8, ">= 8"),
        ("early_stopping_patience", lambda v: v is None or v >= 1, ">= 1"),
        ("ckpt_every", lambda v: v >= 1, ">= 1"),
        ("seeds", lambda v: v is None or len(v) >= 1, "a non-empty list"),
    ],
    FanoutConfig: [
        ("runner", _runner_available, "thread, or dask / ray with its extra installed (pip install 'gptflow[dask]')"),
        ("max_concurrency", lambda v: v is None or v >= 1, ">= 1"),
        ("threads_per_stage", lambda v: v is None or v >= 1, ">= 1"),
    ],
    FinetuneOverrides: [
        ("lr", lambda v: v is None or v > 0, "> 0"),
        ("epochs", lambda v: v is None or v >= 1, ">= 1"),
        ("batch_size", lambda v: v is None or v >= 1, ">= 1"),
        ("aux_lm_weight", lambda v: v is None or v >= 0, ">= 0"),
        ("warmup_fraction", lambda v: v is None or 0 <= v < 1, "in [0, 1)"),
        ("clf_dropout", lambda v: v is None or 0 <= v < 1, "in [0, 1)"),
        ("max_examples", lambda v: v is None or v >= 2, ">= 2"),
        ("max_len", lambda v: v is None or v >= 8, ">= 8"),
        ("early_stopping_patience", lambda v: v is None or v >= 1, ">= 1"),
    ],
}


def _check_ranges(obj: Any, where: str, prefix: str) -> None:
    for name, ok, requirement in _RANGES.get(type(obj), []):
        value = getattr(obj, name)
        if not ok(value):
            raise ConfigError(f"{where}: config key '{prefix}{name}' must be {requirement}, got {value!r}")
    if isinstance(obj, CustomTaskConfig):  # columns per task type, label set vs regression, metric names
        from gpt.downstream.custom import check_task_config

        check_task_config(obj, where, prefix.rstrip("."))
    if isinstance(obj, PretrainConfig) and obj.strategy.startswith(("fsdp", "deepspeed")) and obj.accelerator == "cpu":
        raise ConfigError(f"{where}: config key '{prefix}strategy' ({obj.strategy}) needs a GPU; accelerator is 'cpu'")
    if isinstance(obj, ModelConfig) and obj.n_embd % obj.n_head:
        raise ConfigError(
            f"{where}: config key '{prefix}n_embd' ({obj.n_embd}) must be divisible by '{prefix}n_head' ({obj.n_head})"
        )
    if isinstance(obj, ExperimentConfig):
        max_len = obj.finetune.max_len
        if max_len is not None and max_len > obj.model.block_size:
            raise ConfigError(
                f"{where}: config key 'finetune.max_len' ({max_len}) exceeds 'model.block_size' "
                f"({obj.model.block_size})"
            )
