"""`pretrain` stage: train the GPT with Lightning, logging to the stage's MLflow child run.

The stage writes `model/` (weights, config and the tokenizer files, so the directory is usable on
its own by `gptflow generate`), `samples.txt`, and `checkpoints/` for resuming. Downstream stages
read `model/` only, so that is what their keys hash. The job itself is in tasks/pretrain_job.py;
multi-process jobs run it through tasks/pretrain_worker.py.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from gpt.config.experiment import ExperimentConfig
from gpt.train.config import PretrainConfig
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
    if p.resume_from is not None:  # keyed by the checkpoint it continues, not by where it is
        from tasks.pretrain_job import resume_digests

        ckpt = resume_point(p)
        section.resume_ckpt, section.resume_files = str(ckpt), resume_digests(ckpt, ctx.digests)
    if p.init_from is not None:  # keyed by the weights' content, not by where they are
        from tasks.content import model_dir_digests

        init_dir = init_model_dir(p.init_from)
        section.init_dir, section.init_files = (
            str(init_dir),
            model_dir_digests(init_dir, ctx.digests, "pretrain.init_from"),
        )
    return [Planned("pretrain", section, ["encode", "tokenizer"])]


# Architecture fields the initial weights must share with `model:` (dropout is training, vocab the tokenizer's).
INIT_ARCHITECTURE = ("n_layer", "n_head", "n_embd", "block_size", "norm", "activation")
GPT2_VOCAB = 50257  # GPT-2's ids, <|endoftext|> included
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


def check_starting_weights(cfg: ExperimentConfig) -> None:
    """Before compute: the weights `pretrain.init_from` or `pretrain.resume_from` start from have `model:`'s
    architecture and the tokenizer's vocabulary, and a run to continue has a checkpoint to continue from."""
    p = cfg.pretrain
    if p.resume_from is not None:
        resume_point(p)
        check_architecture(Path(p.resume_from).expanduser() / "model", cfg, "config key 'pretrain.resume_from'")
    if p.init_from is not None:
        check_architecture(init_model_dir(p.init_from), cfg, "config key 'pretrain.init_from'")


def check_architecture(model_dir: Path, cfg: ExperimentConfig, key: str) -> None:
    """ConfigError naming `key` when the model in `model_dir` differs from `model:` or the tokenizer's vocabulary."""
    from gpt.config.fields import ConfigError
    from gpt.data.tokenizer import SPECIALS
    from gpt.model.config import read_model_config

    try:
        init = read_model_config(model_dir)
    except ValueError as e:
        raise ConfigError(f"{key}: {e}") from None
    for name in INIT_ARCHITECTURE:
        if getattr(init, name) != getattr(cfg.model, name):
            raise ConfigError(
                f"{key}: {model_dir} has model.{name} {getattr(init, name)!r}, this config {getattr(cfg.model, name)!r}"
            )
    tok = cfg.tokenizer
    vocab = GPT2_VOCAB + len(SPECIALS) - 1 if tok.kind == "gpt2" else tok.vocab_size + len(SPECIALS)
    if init.vocab_size not in (vocab, vocab - GPT1_SPECIALS_ADDED):
        raise ConfigError(
            f"{key}: {model_dir} has a vocabulary of {init.vocab_size} tokens, the tokenizer ({tok.kind}) "
            f"{vocab}: another vocabulary (set tokenizer: to the one it was trained with)"
        )


def resume_point(p: PretrainConfig) -> Path:
    """The checkpoint `pretrain.resume_from` continues from: with wsd, the finished run's cooldown start
    (`stable.ckpt`), so the extension is the longer run itself; else its final `last.ckpt`. ConfigError says why
    there is none."""
    from gpt.config.fields import ConfigError
    from gpt.train.pretrain import LAST_CKPT, STABLE_CKPT, STABLE_STEP_FILE
    from tasks.pretrain_job import CHECKPOINTS_DIR

    assert p.resume_from is not None
    key = "config key 'pretrain.resume_from'"
    stage = Path(p.resume_from).expanduser().resolve()
    ckpts = stage / CHECKPOINTS_DIR
    manifest = stage / "manifest.json"
    record = json.loads(manifest.read_text()) if manifest.is_file() else {}
    if record.get("kind") != "pretrain":
        raise ConfigError(f"{key}: {p.resume_from} is not a finished pretrain stage directory")
    done = int(record["summary"]["steps"])
    stable = ckpts / STABLE_STEP_FILE
    if p.schedule == "wsd" and stable.is_file():
        step, ckpt = int(json.loads(stable.read_text())["step"]), ckpts / STABLE_CKPT
        if step > p.max_steps - p.cooldown():
            raise ConfigError(
                f"{key}: its cooldown began at step {step}, after this run's ({p.max_steps - p.cooldown()}): "
                "raise pretrain.max_steps or shorten pretrain.cooldown_steps"
            )
    else:
        step, ckpt = done, ckpts / LAST_CKPT
    if step >= p.max_steps:
        raise ConfigError(f"{key}: it already trained {step} steps; pretrain.max_steps ({p.max_steps}) must be more")
    if not ckpt.is_file():
        raise ConfigError(f"{key}: {ckpt} is missing (a stage from before checkpoints were kept?)")
    return ckpt


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
