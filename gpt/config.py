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


@dataclass
class CorpusConfig:
    """Where the pretraining text comes from and how it is cleaned."""

    source: str = "tinyshakespeare"
    strip_gutenberg: bool = True
    max_bytes: int | None = None  # keep only the first N bytes of text (quick runs)


@dataclass
class TokenizerConfig:
    """BPE trained on the corpus (`bpe`) or OpenAI's GPT-2 ranks (`gpt2`)."""

    kind: Literal["bpe", "gpt2"] = "bpe"
    vocab_size: int = 4096  # for `bpe`: mergeable ranks, specials come on top


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
    activation: Literal["gelu", "gelu_new"] = "gelu"


@dataclass
class PretrainConfig:
    """Language-model pretraining with a Lightning Trainer."""

    max_steps: int = 200
    batch_size: int = 8
    lr: float = 2.5e-4
    warmup_steps: int = 20
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    val_every: int = 50
    val_batches: int = 8
    ckpt_every: int = 50
    log_every: int = 10
    precision: str = "auto"  # auto: bf16-mixed on GPU, 32-true on CPU
    strategy: str = "auto"
    devices: str = "auto"
    accelerator: str = "auto"
    sample_tokens: int = 48  # length of the continuations sampled after training


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


@dataclass
class ExperimentConfig:
    """The whole resolved configuration of one pipeline run."""

    experiment: str = "gptflow"
    seed: int = 1234
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

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
_RANGES: dict[type, list[tuple[str, Any, str]]] = {
    TokenizerConfig: [("vocab_size", lambda v: 256 < v <= 65_000, "between 257 and 65000")],
    EncodeConfig: [("val_fraction", lambda v: 0 < v < 0.5, "in (0, 0.5)")],
    ModelConfig: [
        ("n_layer", lambda v: v >= 1, ">= 1"),
        ("n_head", lambda v: v >= 1, ">= 1"),
        ("n_embd", lambda v: v >= 1, ">= 1"),
        ("block_size", lambda v: v >= 8, ">= 8"),
        ("dropout", lambda v: 0 <= v < 1, "in [0, 1)"),
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
    ],
}


def _check_ranges(obj: Any, where: str, prefix: str) -> None:
    for name, ok, requirement in _RANGES.get(type(obj), []):
        value = getattr(obj, name)
        if not ok(value):
            raise ConfigError(f"{where}: config key '{prefix}{name}' must be {requirement}, got {value!r}")
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
