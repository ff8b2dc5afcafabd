"""`evaluate[<variant>]` stage: the task's metrics on dev (and on test when it is labelled).

Writes `predictions.csv` (and `predictions_test.csv`), and for classification-style tasks a
confusion matrix (`confusion.json`: label names + counts [true][predicted]). The summary's dev
metrics are unprefixed, so the parent run gets `<variant>.<metric>`; test metrics are `test_<metric>`.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch

from gpt.benchmarks import get_task
from gpt.tasks_metrics import compute_metrics, confusion, predictions
from gpt.tasks_spec import Example, TaskSpec
from gpt.tokenizer import load_tokenizer
from tasks.finetune import TASK_MODEL_DIR, load_split
from tasks.stage import StageContext, StageOutput

PREDICTIONS_FILE = "predictions.csv"
CONFUSION_FILE = "confusion.json"


def write_predictions(path: Path, examples: list[Example], preds: torch.Tensor, logits: torch.Tensor) -> None:
    """One row per example: label, prediction, the head's outputs, and the text fields joined by |||."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["label", "prediction", *[f"logit_{i}" for i in range(logits.size(1))], "text"])
        for e, p, row in zip(examples, preds.tolist(), logits.tolist(), strict=True):
            pred = f"{p:.4f}" if isinstance(p, float) else p
            writer.writerow([e.label, pred, *[f"{v:.4f}" for v in row], " ||| ".join(e.fields)])


def class_names(spec: TaskSpec) -> list[str]:
    """Names for the confusion matrix's rows and columns."""
    if spec.label_names:
        return list(spec.label_names)
    return [str(i) for i in range(spec.num_outputs)]


def compute(ctx: StageContext) -> StageOutput:
    """Predict and score the dev split (and a labelled test split) with torchmetrics."""
    from gpt.finetune import load_task_model, predict

    cfg, section = ctx.cfg, ctx.stage.section
    spec = get_task(section["task"], cfg.tasks)
    enc = load_tokenizer(ctx.inputs["tokenizer"])
    finetuned = next(path for name, path in ctx.inputs.items() if name.startswith("finetune["))
    model = load_task_model(finetuned / TASK_MODEL_DIR)
    max_len = section["max_len"] or model.gpt.config.block_size
    summary: dict[str, float] = {}
    artifacts: list[str] = []
    for split in [s for s in ("dev", "test") if s in spec.splits]:
        examples, encoded = load_split(
            spec, split, enc, section["max_examples"], section["data_seed"], ctx.cache_dir, max_len
        )
        if not examples:
            continue
        logits = predict(model, encoded)
        labels = torch.tensor([e.label for e in examples])
        preds = predictions(logits, spec.regression)
        prefix = "" if split == "dev" else f"{split}_"
        scores = compute_metrics(spec.metrics, logits, labels, spec.regression)
        summary.update({f"{prefix}{k}": v for k, v in scores.items()})
        summary[f"{prefix}examples"] = len(examples)
        name = PREDICTIONS_FILE if split == "dev" else f"predictions_{split}.csv"
        write_predictions(ctx.out / name, examples, preds, logits)
        artifacts.append(name)
        if not spec.regression and split == "dev":
            k = spec.num_outputs
            summary["majority_rate"] = float(labels.bincount(minlength=k).max() / len(labels))
            matrix = confusion(preds, labels, k)
            names = class_names(spec)
            (ctx.out / CONFUSION_FILE).write_text(json.dumps({"labels": names, "matrix": matrix.tolist()}, indent=2))
            artifacts.append(CONFUSION_FILE)
    return StageOutput(summary=summary, artifacts=artifacts)
