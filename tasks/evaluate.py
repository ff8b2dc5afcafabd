"""`evaluate[task]` stage: the task's official metric on its dev split, plus a predictions file."""

from __future__ import annotations

import csv

import torch
import torchmetrics.functional as M

from gpt.benchmarks import get_task
from gpt.tokenizer import load_tokenizer
from tasks.finetune import TASK_MODEL_DIR, load_split
from tasks.stage import StageContext, StageOutput

PREDICTIONS_FILE = "predictions.csv"


def compute(ctx: StageContext) -> StageOutput:
    """Predict the dev split and score it with torchmetrics."""
    from gpt.finetune import load_task_model, predict

    cfg = ctx.cfg
    spec = get_task(ctx.stage.task)
    enc = load_tokenizer(ctx.inputs["tokenizer"])
    model = load_task_model(ctx.inputs[f"finetune[{spec.name}]"] / TASK_MODEL_DIR)
    max_len = cfg.finetune.max_len or model.gpt.config.block_size
    examples, encoded = load_split(spec, "dev", enc, cfg, ctx.cache_dir, max_len)
    logits = predict(model, encoded)
    preds = logits.argmax(-1)
    labels = torch.tensor([e.label for e in examples])
    k = spec.num_outputs
    summary = {
        "accuracy": float(M.accuracy(preds, labels, task="multiclass", num_classes=k)),
        "majority_rate": float(labels.bincount(minlength=k).max() / len(labels)),
        "examples": len(examples),
    }
    with open(ctx.out / PREDICTIONS_FILE, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["label", "prediction", *[f"logit_{i}" for i in range(logits.size(1))], "text"])
        for e, p, row in zip(examples, preds.tolist(), logits.tolist(), strict=True):
            writer.writerow([e.label, p, *[f"{v:.4f}" for v in row], " ||| ".join(e.fields)])
    return StageOutput(summary=summary, artifacts=[PREDICTIONS_FILE])
