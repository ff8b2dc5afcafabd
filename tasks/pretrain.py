"""`pretrain` stage: train the GPT with Lightning, logging to the stage's MLflow child run.

The stage writes `model/` (weights, config and the tokenizer files, so the directory is usable on
its own by `gptflow generate`), `samples.txt`, and `checkpoints/` for resuming. Downstream stages
read `model/` only, so that is what their keys hash. The job itself is in tasks/pretrain_job.py;
multi-process jobs run it through tasks/pretrain_worker.py.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from gpt.config.experiment import ExperimentConfig
from tasks.definition import PlanContext, Planned, StageDef, StageEnv, StageOutput
from tasks.errors import StageError
from tasks.pretrain_job import KEPT_MODELS_DIR, MODEL_DIR, PretrainJob, PretrainSection, train
from tasks.pretrain_worker import needs_worker, run_worker

if TYPE_CHECKING:
    from lightning.pytorch import Callback


def plan_pretrain(cfg: ExperimentConfig, ctx: PlanContext) -> list[Planned]:
    """One `pretrain` stage reading the token shards and the tokenizer."""
    from tasks.placement import device_kind, planned_world_size

    device = device_kind(cfg.pretrain.accelerator)
    # `compile: null` and `precision: auto` resolved here, so the key holds how the run computes
    gpu = device == "gpu"
    p = replace(
        cfg.pretrain,
        compile=cfg.pretrain.compiles(gpu=gpu),
        precision=cfg.pretrain.resolved_precision(gpu),
    )
    custom = {n: cfg.tasks[n] for n in [*p.zeroshot_tasks, *p.probe_tasks] if n in cfg.tasks}
    global_batch = p.global_batch(cfg.model.block_size, planned_world_size(p))
    section = PretrainSection(cfg.model, p, cfg.seed, device, global_batch, custom)
    if p.init_from is not None:  # keyed by the weights' content, not by where they are
        from tasks.finetune import init_digests

        init_dir = init_model_dir(p.init_from)
        section.init_dir, section.init_files = str(init_dir), init_digests(init_dir, ctx.digests)
    return [Planned("pretrain", section, ["encode", "tokenizer"])]


# Architecture fields the initial weights must share with `model:` (dropout is training, vocab the tokenizer's).
INIT_ARCHITECTURE = ("n_layer", "n_head", "n_embd", "block_size", "norm", "activation")
GPT1_SPECIALS_ADDED = 3  # start, delim, extract: rows an imported GPT-2-vocabulary model gets at init


def init_model_dir(ref: str) -> Path:
    """The model directory `pretrain.init_from` names: a model directory or a pretrain stage directory (run ids
    and models:/ references are resolved to one by the command line). ConfigError says why not."""
    from gpt.config.fields import ConfigError
    from gpt.model.config import CONFIG_FILE
    from tasks.pretrain_job import MODEL_DIR

    path = Path(ref).expanduser().resolve()
    for candidate in (path, path / MODEL_DIR):
        if (candidate / CONFIG_FILE).is_file():
            return candidate
    raise ConfigError(
        f"config key 'pretrain.init_from': {ref} is neither a model directory nor a pretrain stage directory"
    )


def check_init_from(cfg: ExperimentConfig) -> None:
    """Before compute: `pretrain.init_from`'s architecture is `model:`'s and its vocabulary the tokenizer's."""
    from gpt.config.fields import ConfigError
    from gpt.data.tokenizer import SPECIALS
    from gpt.model.config import read_model_config

    if cfg.pretrain.init_from is None:
        return
    key = "config key 'pretrain.init_from'"
    init_dir = init_model_dir(cfg.pretrain.init_from)
    try:
        init = read_model_config(init_dir)
    except ValueError as e:
        raise ConfigError(f"{key}: {e}") from None
    for name in INIT_ARCHITECTURE:
        if getattr(init, name) != getattr(cfg.model, name):
            raise ConfigError(
                f"{key}: {init_dir} has model.{name} {getattr(init, name)!r}, this config {getattr(cfg.model, name)!r}"
            )
    tok = cfg.tokenizer
    vocab = GPT2_VOCAB + len(SPECIALS) - 1 if tok.kind == "gpt2" else tok.vocab_size + len(SPECIALS)
    if init.vocab_size not in (vocab, vocab - GPT1_SPECIALS_ADDED):
        raise ConfigError(
            f"{key}: {init_dir} has a vocabulary of {init.vocab_size} tokens, the tokenizer ({tok.kind}) "
            f"{vocab}: another vocabulary (set tokenizer: to the one it was trained with)"
        )


GPT2_VOCAB = 50257  # GPT-2's ids, <|endoftext|> included


def compute(
    section: PretrainSection,
    inputs: dict[str, Path],
    out: Path,
    env: StageEnv,
    extra_callbacks: list[Callback] | None = None,
) -> StageOutput:
    """Train, then save weights, tokenizer and samples; multi-process training runs in a worker job.

    One device trains in this process. More than one (or `pretrain.launcher`) starts
    `tasks.pretrain_worker` as a child job — Lightning's launcher re-runs the *script* once per local
    rank, which must be that worker and not the whole `gptflow run` with its Prefect flow.
    """
    check_windows(Path(inputs["encode"]), section.model.block_size)
    job = PretrainJob(section, Path(inputs["tokenizer"]), Path(inputs["encode"]), out, env)
    return run_worker(job) if needs_worker(section.pretrain) else train(job, extra_callbacks)


def check_windows(encode_dir: Path, block_size: int) -> None:
    """StageError, before any training, when a split is too short for one window (from the shard
    manifest's token counts, with the check gpt/data/windows.py applies), naming the keys that fix it."""
    from gpt.data.shards import ShardError, check_split_length, read_manifest

    for split, meta in read_manifest(encode_dir)["splits"].items():
        try:
            check_split_length(split, meta["tokens"], block_size)
        except ShardError as e:
            more = ", a larger encode.val_fraction" if split == "val" else ""
            raise StageError(
                f"{e} (block_size + 2); use a bigger corpus (corpus.source, corpus.max_bytes){more} "
                "or a smaller model.block_size"
            ) from None


DEFINITION = StageDef(
    kind="pretrain",
    version="4",  # 4: fused AdamW; the LM loss over the padded width (-inf padding logits)
    doc="a GPT trained as a language model by a Lightning Trainer",
    instances=plan_pretrain,
    compute=compute,
    outputs=(f"{MODEL_DIR}/*", f"{KEPT_MODELS_DIR}/*/*"),
    resumable=True,
    registers=True,
)

__all__ = ["DEFINITION", "MODEL_DIR", "PretrainSection"]
