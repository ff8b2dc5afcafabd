"""`pretrain` stage: train the GPT with Lightning, logging to the stage's MLflow child run.

Lightning is imported inside `compute` so that a fully cached rerun never pays for importing it.
The stage writes `model/` (weights, config and the tokenizer files, so the directory is usable on
its own by `gptflow generate`), `samples.txt`, and `checkpoints/` for resuming.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from gpt.model import GPTConfig, save_model
from gpt.tokenizer import META_FILE, RANKS_FILE, load_tokenizer
from tasks.stage import StageContext, StageError, StageOutput

MODEL_DIR = "model"
SAMPLES_FILE = "samples.txt"
PROMPTS = ("The ", "It was ", "\n")
SAMPLE_TEMPERATURE, SAMPLE_TOP_K = 0.8, 40


def sample_text(model: Any, enc: Any, n_tokens: int, seed: int) -> str:
    """A continuation of each of PROMPTS, with its own RNG so training's RNG stream is untouched."""
    from gpt.generate import generate

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


def compute(ctx: StageContext, extra_callbacks: list[Any] | None = None) -> StageOutput:
    """Train (resuming from `checkpoints/last.ckpt` if present), then save weights, tokenizer and samples."""
    from gpt.pretrain import pretrain
    from tasks.mlflow_logger import stage_logger

    cfg = ctx.cfg
    tok_dir = Path(ctx.inputs["tokenizer"])
    enc = load_tokenizer(tok_dir)
    gpt_config = GPTConfig.from_model_config(cfg.model, enc.n_vocab)
    logger = stage_logger(ctx.tracking_uri, ctx.run_id)
    callbacks = [sample_logger(enc, cfg.pretrain.sample_tokens, cfg.seed), *(extra_callbacks or [])]
    if cfg.pretrain.zeroshot_tasks:  # GPT-1 Fig. 2: zero-shot task scores logged at every validation
        from gpt.zeroshot import zeroshot_callback

        p = cfg.pretrain
        zeroshot = zeroshot_callback(p.zeroshot_tasks, enc, ctx.cache_dir, p.zeroshot_examples, cfg.seed, cfg.tasks)
        callbacks.append(zeroshot)
    try:
        model, result = pretrain(
            gpt_config,
            cfg.pretrain,
            ctx.inputs["encode"],
            ctx.out / "checkpoints",
            cfg.seed,
            logger=logger,
            extra_callbacks=callbacks,
        )
    except FloatingPointError as e:  # a diverged run: one line for the user, checkpoints kept
        raise StageError(str(e)) from None  # the runner prefixes the stage name
    save_model(model, ctx.out / MODEL_DIR)
    for name in (RANKS_FILE, META_FILE):
        shutil.copy2(tok_dir / name, ctx.out / MODEL_DIR / name)
    (ctx.out / SAMPLES_FILE).write_text(sample_text(model, enc, cfg.pretrain.sample_tokens, cfg.seed))
    return StageOutput(
        summary=asdict(result),
        info={"gpt_config": asdict(gpt_config)},
        artifacts=[MODEL_DIR, SAMPLES_FILE],
    )
