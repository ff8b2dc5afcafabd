"""`ExperimentConfig`: the whole resolved configuration of one pipeline run, composed of the sections.

Each section is defined beside the code it configures; this module only composes them, adds the
run-level fields (seed, ablations, fan-out) and the checks that span sections.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
from dataclasses import dataclass
from typing import Any, Literal

from gpt.config.claims import Claim, parse_claim
from gpt.config.fields import Check, FieldError, Section, at_least, between, knob, matches, observation, placement
from gpt.config.notify import NotifyConfig
from gpt.config.secrets import public_config, redacted_config
from gpt.config.sweep import SweepConfig
from gpt.data.config import CorpusConfig, EncodeConfig, TokenizerConfig
from gpt.downstream.config import NAME_PATTERN, TEST_FILE_TASKS, BuiltinTaskConfig, CustomTaskConfig
from gpt.downstream.harness_config import HarnessConfig
from gpt.model.config import ModelConfig
from gpt.train.config import FinetuneConfig, PretrainConfig

# What the model registry appends to the experiment name (`<experiment>-pretrained`, `<experiment>-<task>`).
REGISTRY_SUFFIXES = ("pretrained",)
# An MLflow experiment and registered-model name: no '/', ':', '%' or '\\', at most 200 characters.
EXPERIMENT_NAME = matches(
    r"[^/:%\\\s][^/:%\\]{0,199}", "a name without '/', ':', '%' or '\\' (MLflow's registry refuses them)"
)


def _runner_available(name: str) -> bool:
    """A fan-out task runner whose Prefect integration is installed (`gptflow[dask]`, `gptflow[ray]`)."""
    return name == "thread" or importlib.util.find_spec(f"prefect_{name}") is not None


@dataclass
class FanoutConfig(Section):
    """How the independent fine-tune/evaluate stages (tasks, ablations, seeds) run at once; placement only."""

    runner: Literal["thread", "dask", "ray"] = placement(
        "thread",
        "the Prefect task runner; dask/ray need their extra",
        check=Check(_runner_available, "thread, or dask / ray with its extra installed (pip install 'gptflow[dask]')"),
    )
    max_concurrency: int | None = placement(
        None, "stages in flight at once; unset: one per visible GPU, 1 on CPU", check=at_least(1)
    )
    address: str | None = placement(None, "an existing Dask scheduler / Ray cluster; unset starts a local one")
    threads_per_stage: int | None = placement(
        None, "torch CPU threads of each concurrent stage; unset: cores / concurrency", check=at_least(1)
    )


@dataclass
class ExperimentConfig(Section):
    """The whole resolved configuration of one pipeline run."""

    experiment: str = observation("gptflow", "the MLflow experiment the runs are recorded in", check=EXPERIMENT_NAME)
    seed: int = knob(1234, "seeds every stage: splits, init, batch order, dropout", check=between(0, 2**32 - 1))
    corpus: CorpusConfig = knob(doc="where the pretraining text comes from, how it is cleaned", factory=CorpusConfig)
    tokenizer: TokenizerConfig = knob(doc="BPE trained on the corpus, or GPT-2's", factory=TokenizerConfig)
    encode: EncodeConfig = knob(doc="the train/val split of the token shards", factory=EncodeConfig)
    model: ModelConfig = knob(doc="the GPT's architecture", factory=ModelConfig)
    pretrain: PretrainConfig = knob(doc="language-model pretraining", factory=PretrainConfig)
    finetune: FinetuneConfig = knob(doc="per-task fine-tuning (GPT-1's recipe)", factory=FinetuneConfig)
    tasks: dict[str, CustomTaskConfig] = knob(doc="custom tasks by name", factory=dict)
    builtin_tasks: dict[str, BuiltinTaskConfig] = knob(
        doc=f"options of built-in tasks by name ({', '.join(TEST_FILE_TASKS)}): a labelled test file", factory=dict
    )
    harness: HarnessConfig = knob(doc="lm-evaluation-harness tasks run on the pretrained model", factory=HarnessConfig)
    ablations: list[Literal["no_pretraining", "no_aux_lm"]] = knob(
        doc="GPT-1's ablations, each run beside the full recipe", factory=list
    )
    fanout: FanoutConfig = knob(doc="how the fine-tune/evaluate stages run at once", factory=FanoutConfig)
    claims: list[dict[str, str]] = observation(
        None, "what the run is meant to show, e.g. '- sst2: pretrained > no_pretraining'", factory=list
    )
    sweep: SweepConfig = observation(
        None, "what `gptflow sweep` varies (ignored by `gptflow run`)", factory=SweepConfig
    )
    notify: NotifyConfig = observation(
        None, "who hears that a run failed or finished (apprise URLs)", factory=NotifyConfig
    )

    def check(self) -> None:
        if self.model.vocab_size is not None:
            raise FieldError("model.vocab_size", "is the tokenizer's; leave it unset (set tokenizer.vocab_size)")
        max_len = self.finetune.max_len
        if max_len is not None and max_len > self.model.block_size:
            raise FieldError("finetune.max_len", f"({max_len}) exceeds 'model.block_size' ({self.model.block_size})")
        for name in self.tasks:
            if not NAME_PATTERN.fullmatch(name):
                raise FieldError(f"tasks.{name}", "is not a valid task name: use only a-z, 0-9 and _")
            if name in REGISTRY_SUFFIXES:
                raise FieldError(f"tasks.{name}", f"is reserved: the model registry names '<experiment>-{name}'")
        self._check_builtin_tasks()
        for i, claim in enumerate(self.parsed_claims()):
            if claim.task not in self.finetune.tasks:
                raise FieldError(
                    f"claims[{i}]",
                    f"names task {claim.task!r}, which finetune.tasks does not run ({self.finetune.tasks})",
                )

    def _check_builtin_tasks(self) -> None:
        """`builtin_tasks` names built-in tasks that take options, not custom tasks (their options are in `tasks`)."""
        for name in self.builtin_tasks:
            if name in self.tasks:
                raise FieldError(
                    f"builtin_tasks.{name}", f": tasks.{name} is a custom task of that name; give its test file there"
                )
            if name not in TEST_FILE_TASKS:
                raise FieldError(f"builtin_tasks.{name}", f": only {', '.join(TEST_FILE_TASKS)} takes a test file here")

    def parsed_claims(self) -> list[Claim]:
        """`claims` as Claim objects (checked: arms this run has)."""
        return [parse_claim(i, item, list(self.ablations)) for i, item in enumerate(self.claims)]

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (what YAML holds), for hashing and logging."""
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """The config as `section.key -> value`, the form MLflow params take: credentials redacted and
        secret fields masked (gpt/config/secrets.py)."""
        return flatten(redacted_config(self))

    def digest(self) -> str:
        """Stable short hash of the whole config; credentials in URLs are left out and secret fields
        masked (gpt/config/secrets.py), so everyone's copy of a config hashes the same."""
        return hash_json(public_config(self))


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
