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
from tasks.pretrain_job import MODEL_DIR, PretrainJob, PretrainSection, train
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
    return [Planned("pretrain", section, ["encode", "tokenizer"])]


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
    outputs=(f"{MODEL_DIR}/*",),
    resumable=True,
    registers=True,
)

__all__ = ["DEFINITION", "MODEL_DIR", "PretrainSection"]
