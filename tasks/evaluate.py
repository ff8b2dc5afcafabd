"""`evaluate[<variant>]` stage: the task's metrics on dev (and on test when it is labelled: a custom
task's `test`, or a built-in task's `builtin_tasks.<task>.test`, e.g. the Story Cloze 2016 test set).

Writes `predictions.csv` (and `predictions_test.csv`), and for classification-style tasks a
confusion matrix (`confusion.json`: label names + counts [true][predicted]). The summary's dev
metrics are unprefixed, so the parent run gets `<variant>.<metric>`; test metrics are `test_<metric>`.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gpt.config.experiment import ExperimentConfig
from tasks.definition import PlanContext, Planned, StageDef, StageEnv, StageOutput
from tasks.finetune import TASK_MODEL_DIR, TaskInput, load_split, task_input
from tasks.variants import recipe, variants

if TYPE_CHECKING:
    import torch

    from gpt.downstream.spec import Example, TaskSpec

PREDICTIONS_FILE = "predictions.csv"
CONFUSION_FILE = "confusion.json"


@dataclass
class EvaluateSection:
    """The task and how its dev/test examples are capped (a seeded subset) and cut."""

    task: TaskInput
    max_examples: int | None
    max_len: int | None
    data_seed: int


def plan_evaluate(cfg: ExperimentConfig, ctx: PlanContext) -> list[Planned]:
    """One `evaluate[<variant>]` per `finetune[<variant>]`, reading its task model."""
    out = []
    for variant in variants(cfg):
        r = recipe(cfg, variant)
        task = task_input(variant.task, cfg, ctx.digests, ("dev", "test"))
        section = EvaluateSection(task, r.max_examples, r.max_len, cfg.seed)
        out.append(Planned(f"evaluate[{variant.name}]", section, [f"finetune[{variant.name}]", "tokenizer"], variant))
    return out


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


def compute(section: EvaluateSection, inputs: dict[str, Path], out: Path, env: StageEnv) -> StageOutput:
    """Predict and score the dev split (and a labelled test split) with torchmetrics."""
    import torch

    from gpt.data.tokenizer import load_tokenizer
    from gpt.downstream.builtin import get_task
    from gpt.downstream.metrics import compute_metrics, confusion, predictions
    from gpt.train.finetune import load_task_model, predict

    section.task.check_unchanged(env.digest_cache(), env.name)
    spec = get_task(section.task.name, section.task.custom(), section.task.builtin())
    enc = load_tokenizer(inputs["tokenizer"])
    finetuned = next(path for name, path in inputs.items() if name.startswith("finetune["))
    model = load_task_model(finetuned / TASK_MODEL_DIR)
    max_len = section.max_len or model.gpt.config.block_size
    summary: dict[str, float] = {}
    artifacts: list[str] = []
    for split in [s for s in ("dev", "test") if s in spec.splits]:
        examples, encoded = load_split(
            spec, split, enc, section.max_examples, section.data_seed, env.cache_dir, max_len
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
        write_predictions(out / name, examples, preds, logits)
        artifacts.append(name)
        if not spec.regression and split == "dev":
            k = spec.num_outputs
            summary["majority_rate"] = float(labels.bincount(minlength=k).max() / len(labels))
            matrix = confusion(preds, labels, k)
            names = class_names(spec)
            (out / CONFUSION_FILE).write_text(json.dumps({"labels": names, "matrix": matrix.tolist()}, indent=2))
            artifacts.append(CONFUSION_FILE)
    return StageOutput(summary=summary, artifacts=artifacts)


DEFINITION = StageDef(
    kind="evaluate",
    version="2",
    doc="the task's metrics on dev (and a labelled test split), predictions, confusion matrix",
    instances=plan_evaluate,
    compute=compute,
    fans_out=True,
    registers=True,
)
