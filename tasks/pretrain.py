"""`pretrain` stage: train the GPT with Lightning, logging to the stage's MLflow child run.

Lightning is imported inside `compute` so that a fully cached rerun never pays for importing it.
"""

from __future__ import annotations

from dataclasses import asdict

import torch

from gpt.model import GPTConfig, save_model
from gpt.tokenizer import load_tokenizer
from tasks.stage import StageContext, StageOutput

MODEL_DIR = "model"
SAMPLES_FILE = "samples.txt"
PROMPTS = ("The ", "It was ", "\n")


def compute(ctx: StageContext) -> StageOutput:
    """Train (resuming from `checkpoints/last.ckpt` if present), then save weights and samples."""
    from gpt.generate import generate
    from gpt.pretrain import pretrain
    from tasks.mlflow_logger import stage_logger

    cfg = ctx.cfg
    enc = load_tokenizer(ctx.inputs["tokenizer"])
    gpt_config = GPTConfig.from_model_config(cfg.model, enc.n_vocab)
    logger = stage_logger(ctx.tracking_uri, ctx.run_id)
    model, result = pretrain(
        gpt_config, cfg.pretrain, ctx.inputs["encode"], ctx.out / "checkpoints", cfg.seed, logger=logger
    )
    save_model(model, ctx.out / MODEL_DIR)
    gen = torch.Generator().manual_seed(cfg.seed)
    samples = []
    for prompt in PROMPTS:
        ids = generate(
            model,
            enc.encode_ordinary(prompt),
            cfg.pretrain.sample_tokens,
            temperature=0.8,
            top_k=40,
            stop_id=enc.eot_token,
            generator=gen,
        )
        samples.append(f"--- prompt: {prompt!r}\n{prompt}{enc.decode(ids)}\n")
    (ctx.out / SAMPLES_FILE).write_text("\n".join(samples))
    return StageOutput(
        summary=asdict(result),
        info={"gpt_config": asdict(gpt_config)},
        artifacts=[MODEL_DIR, SAMPLES_FILE],
    )
