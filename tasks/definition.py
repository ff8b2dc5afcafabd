"""What a stage kind is, in one place: its name, code version, typed section, upstream, outputs and compute.

In the spirit of marin's `ExecutorStep`: a stage is a name, a function and the config it hashes.
`instances(cfg, plan)` turns the experiment config into the stages of this kind (one, or one per
task variant), each with its *section*: a typed object built from the config that holds everything
the compute may read. `compute(section, inputs, out, env)` gets that section, its upstream stages'
directories and a run environment that carries no config, never the whole config, so a stage cannot
read a value its key does not cover.

The key hashes the section's fields except those whose dataclass metadata gives them an
`observation` or `placement` role (see gpt/config/fields.py), so changing how often something is logged or
where a job runs reuses the stage. Downstream keys hash the upstream stages' *outputs* (the sha256
of the files listed in `outputs`, recorded in their manifests), not their keys: an upstream stage
recomputed into byte-identical outputs leaves everything after it cached (early cutoff).
Credentials in a URL (`https://user:token@host/...`) are not hashed: the URL's `#sha256=` pins
the content, and people with different tokens share the stage (gpt/config/secrets.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from gpt.config.fields import DERIVED, OBSERVATION, PLACEMENT
from gpt.config.secrets import strip_credentials

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    from gpt.config.experiment import ExperimentConfig
    from tasks.content import DigestCache
    from tasks.variants import Variant

NOT_IN_KEY = (OBSERVATION, PLACEMENT, DERIVED, "location")  # field roles the key leaves out
# Created in a stage's partial directory to stop its training at the next step (another machine took
# over its lease, tasks/lease.py); the training computes watch for it.
STOP_FILE = ".gptflow-stop"


@dataclass
class StageEnv:
    """What a compute gets besides its section and inputs: where to log and cache, never config."""

    name: str  # the stage's name, e.g. "finetune[sst2]", for messages
    run_id: str | None  # the stage's MLflow child run
    tracking_uri: str | None
    cache_dir: Path  # downloads shared by all stages of the workspace
    digests: Path | None = None  # the workspace's remembered file digests (re-checking local inputs is cheap)

    def digest_cache(self) -> DigestCache:
        """The workspace's digest memory, to re-check local inputs before they are read."""
        from tasks.content import DigestCache

        return DigestCache(self.digests)


@dataclass
class StageOutput:
    """What a compute function returns: summary metrics, free-form info, and files to log to MLflow."""

    summary: dict[str, float]
    info: dict[str, Any] = field(default_factory=dict)
    artifacts: list[str] = field(default_factory=list)  # paths relative to the stage dir


@dataclass
class Planned:
    """One stage of a kind, as its definition plans it from the config."""

    name: str  # e.g. "pretrain", "finetune[sst2-seed2]"
    section: DataclassInstance  # a typed section dataclass: all the compute may read
    upstream: list[str]  # names of the stages it reads (or, for the report, waits for)
    variant: Variant | None = None  # the task variant, for per-task stages


@dataclass
class PlanContext:
    """What planning needs besides the config: content digests of local files, the run being planned."""

    digests: DigestCache
    run_id: str | None = None  # the MLflow parent run (the report describes it); None in a dry run
    planned: list[Planned] = field(default_factory=list)  # the stages planned so far, in order


S = TypeVar("S")  # a stage kind's section type


@dataclass(frozen=True)
class StageDef(Generic[S]):
    """One stage kind: all that the plan, runner, fan-out, registry and reports need to know of it."""

    kind: str
    version: str  # bump when the code changes what it writes (tests/test_stage_lock.py enforces it)
    doc: str  # one line for `gptflow stages` and the docs
    instances: Callable[[ExperimentConfig, PlanContext], list[Planned]]
    compute: Callable[[S, dict[str, Path], Path, StageEnv], StageOutput]  # section, upstream dirs, out, env
    outputs: tuple[str, ...] = ("**",)  # globs of the files downstream stages read (their digest keys them)
    resumable: bool = False  # its partial directory holds checkpoints worth keeping across a killed run
    retries: int = 0  # Prefect retries (network fetches); training stages resume from checkpoints instead
    keyed_on_inputs: bool = True  # False: upstream only orders it (the report reads MLflow, not files)
    per_run: bool = False  # keyed by the pipeline run it belongs to: every run computes its own
    fans_out: bool = False  # independent per-variant stages that may run at once (fanout:)
    registers: bool = False  # a computed stage registers a model in the MLflow Model Registry


def key_view(value: Any) -> Any:
    """The part of a section its key hashes: every field except observation, placement and location ones."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: key_view(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if f.metadata.get("role") not in NOT_IN_KEY
            and not (f.metadata.get("omit_empty") and not getattr(value, f.name))
        }
    if isinstance(value, dict):
        return {strip_credentials(str(k)): key_view(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [key_view(v) for v in value]
    if isinstance(value, str):  # a URL's credentials are not content (its #sha256= is), and differ per person
        return strip_credentials(value)
    return value


def keyed_when_set(factory: Callable[[], Any] = lambda: None) -> Any:
    """A section field in the key only when set (non-empty): a later option that leaves every older key as it was."""
    return field(default_factory=factory, metadata={"omit_empty": True})


def location(default: Any = None) -> Any:
    """A section field that says where an input lives; its content is hashed in another field instead."""
    return field(default=default, metadata={"role": "location"})
