"""`pretrain` stage: train the GPT with Lightning, logging to the stage's MLflow child run.

torch and Lightning are imported inside the functions so that planning and a fully cached rerun
never pay for importing them. The stage writes `model/` (weights, config and the tokenizer files, so
the directory is usable on its own by `gptflow generate`), `samples.txt`, and `checkpoints/` for
resuming. Downstream stages read `model/` only, so that is what their keys hash.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gpt.config.experiment import ExperimentConfig
from gpt.config.fields import OBSERVATION
from gpt.downstream.config import CustomTaskConfig
from gpt.model.config import ModelConfig
from gpt.train.config import PretrainConfig
from tasks.definition import PlanContext, Planned, StageDef, StageEnv, StageOutput
from tasks.errors import StageError

MODEL_DIR = "model"
SAMPLES_FILE = "samples.txt"
PROMPTS = ("The ", "It was ", "\n")
SAMPLE_TEMPERATURE, SAMPLE_TOP_K = 0.8, 40


@dataclass
class PretrainSection:
    """The architecture, the training recipe and the seed; `pretrain`'s observation and placement fields
    (logging cadence, checkpoints kept, zero-shot scoring, devices) are in it but not in its key."""

    model: ModelConfig
    pretrain: PretrainConfig
    seed: int
    device: str  # gpu | cpu (`accelerator` resolved): numerics, and what `precision: auto` / `compile` become
    global_batch: int  # windows per optimizer step over all ranks (`batch_size` × ranks unless `tokens_per_step`)
    zeroshot_custom: dict[str, CustomTaskConfig] = field(
        default_factory=dict, metadata={"role": OBSERVATION, "why": "custom tasks scored zero-shot (logged only)"}
    )


def plan_pretrain(cfg: ExperimentConfig, ctx: PlanContext) -> list[Planned]:
    """One `pretrain` stage reading the token shards and the tokenizer."""
    from tasks.placement import device_kind, planned_world_size

    p = cfg.pretrain
    custom = {n: cfg.tasks[n] for n in p.zeroshot_tasks if n in cfg.tasks}
    global_batch = p.global_batch(cfg.model.block_size, planned_world_size(p))
    section = PretrainSection(cfg.model, p, cfg.seed, device_kind(p.accelerator), global_batch, custom)
    return [Planned("pretrain", section, ["encode", "tokenizer"])]


def sample_text(model: Any, enc: Any, n_tokens: int, seed: int) -> str:
    """A continuation of each of PROMPTS, with its own RNG so training's RNG stream is untouched."""
    import torch

    from gpt.model.generate import generate

    gen = torch.Generator().manual_seed(seed)
    samples = []
    for prompt in PROMPTS:
        ids = generate(
            model,
            enc.encode_ordinary(prompt),
            n_tokens,
            temperature=SAMPLE_TEMPERATURE,
            top_k=SAMPLE_TOP_K,
            stop_id=enc.eot_token,
            generator=gen,
        )
        samples.append(f"--- prompt: {prompt!r}\n{prompt}{enc.decode(ids)}\n")
    return "\n".join(samples)


def sample_logger(enc: Any, n_tokens: int, seed: int) -> Any:
    """A Lightning callback logging sampled continuations as `samples/step_N.txt` to MLflow at each validation."""
    import lightning as L
    from lightning.pytorch.loggers import MLFlowLogger

    class SampleLogger(L.Callback):
        def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            logger = trainer.logger
            if trainer.sanity_checking or not trainer.is_global_zero or not isinstance(logger, MLFlowLogger):
                return
            step = trainer.global_step
            text = sample_text(pl_module.model, enc, n_tokens, seed + step)
            logger.experiment.log_text(logger.run_id, text, f"samples/step_{step:07d}.txt")

    return SampleLogger()


def train(
    section: PretrainSection,
    tok_dir: Path,
    encode_dir: Path,
    out: Path,
    tracking_uri: str | None,
    run_id: str | None,
    cache_dir: Path,
    extra_callbacks: list[Any] | None = None,
) -> dict[str, Any]:
    """Train (resuming from the newest intact checkpoint in `out/checkpoints/`); rank 0 writes model/ and samples.txt.

    Runs on every rank of a multi-process job; returns the stage's summary and info.
    """
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    from gpt.data.tokenizer import META_FILE, RANKS_FILE, load_tokenizer
    from gpt.model.transformer import save_model
    from gpt.train.pretrain import pretrain
    from tasks.mlflow_logger import stage_logger

    p = section.pretrain
    enc = load_tokenizer(tok_dir)
    gpt_config = section.model.with_vocab(enc.n_vocab)
    logger = stage_logger(tracking_uri, run_id)
    callbacks = [sample_logger(enc, p.sample_tokens, section.seed), *(extra_callbacks or [])]
    if p.zeroshot_tasks:  # GPT-1 Fig. 2: zero-shot task scores logged at every validation
        from gpt.downstream.zeroshot import zeroshot_callback

        zeroshot = zeroshot_callback(
            p.zeroshot_tasks, enc, cache_dir, p.zeroshot_examples, section.seed, section.zeroshot_custom
        )
        callbacks.append(zeroshot)
    try:
        ckpt_dir = out / "checkpoints"
        model, result = pretrain(
            gpt_config, p, encode_dir, ckpt_dir, section.seed, logger=logger, extra_callbacks=callbacks
        )
    except FloatingPointError as e:  # a diverged run: one line for the user, checkpoints kept
        raise StageError(str(e)) from None  # the runner prefixes the stage name
    if rank_zero_only.rank == 0:
        save_model(model, out / MODEL_DIR)
        for name in (RANKS_FILE, META_FILE):
            shutil.copy2(tok_dir / name, out / MODEL_DIR / name)
        (out / SAMPLES_FILE).write_text(sample_text(model, enc, p.sample_tokens, section.seed))
    return {"summary": asdict(result), "info": {"gpt_config": asdict(gpt_config)}}


def compute(
    section: PretrainSection,
    inputs: dict[str, Path],
    out: Path,
    env: StageEnv,
    extra_callbacks: list[Any] | None = None,
) -> StageOutput:
    """Train, then save weights, tokenizer and samples; multi-process training runs in a worker job.

    One device trains in this process. More than one (or `pretrain.launcher`) starts
    `tasks.pretrain_worker` as a child job — Lightning's launcher re-runs the *script* once per local
    rank, which must be that worker and not the whole `gptflow run` with its Prefect flow.
    """
    from tasks.pretrain_worker import needs_worker, run_worker

    args = (section, Path(inputs["tokenizer"]), Path(inputs["encode"]), out)
    if needs_worker(section.pretrain):
        result = run_worker(*args, env.tracking_uri, env.run_id, env.cache_dir)
    else:
        result = train(*args, env.tracking_uri, env.run_id, env.cache_dir, extra_callbacks)
    return StageOutput(summary=result["summary"], info=result["info"], artifacts=[MODEL_DIR, SAMPLES_FILE])


DEFINITION = StageDef(
    kind="pretrain",
    version="3",
    doc="a GPT trained as a language model by a Lightning Trainer",
    instances=plan_pretrain,
    compute=compute,
    outputs=(f"{MODEL_DIR}/*",),
    resumable=True,
    registers=True,
)
