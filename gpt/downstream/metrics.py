"""Task metrics with torchmetrics: accuracy, F1, Matthews correlation, Pearson/Spearman, and a confusion matrix."""

from __future__ import annotations

import torch
import torchmetrics.functional as M

METRICS = ("accuracy", "f1", "matthews", "pearson", "spearman", "mse")
HIGHER_IS_BETTER = {"accuracy": True, "f1": True, "matthews": True, "pearson": True, "spearman": True, "mse": False}


def predictions(logits: torch.Tensor, regression: bool) -> torch.Tensor:
    """Predicted class (argmax) per example, or the predicted score for a one-output regression head."""
    return logits.squeeze(-1).float() if regression else logits.argmax(-1)


def score(name: str, preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """One metric. F1 is the positive class's for two classes (GLUE's MRPC/QQP convention), else macro."""
    if name == "accuracy":
        return float(M.accuracy(preds, labels, task="multiclass", num_classes=num_classes, average="micro"))
    if name == "f1":
        if num_classes == 2:
            return float(M.f1_score(preds, labels, task="binary"))
        return float(M.f1_score(preds, labels, task="multiclass", num_classes=num_classes, average="macro"))
    if name == "matthews":
        return float(M.matthews_corrcoef(preds, labels, task="multiclass", num_classes=num_classes))
    if name == "pearson":
        return float(M.pearson_corrcoef(preds.float(), labels.float()))
    if name == "spearman":
        return float(M.spearman_corrcoef(preds.float(), labels.float()))
    if name == "mse":
        return float(M.mean_squared_error(preds.float(), labels.float()))
    raise KeyError(f"unknown metric {name!r} (known: {', '.join(METRICS)})")


def compute_metrics(
    names: tuple[str, ...] | list[str], logits: torch.Tensor, labels: torch.Tensor, regression: bool
) -> dict[str, float]:
    """Every named metric of the task's predictions from logits [N, K] (or [N, 1] for regression)."""
    preds = predictions(logits, regression)
    k = 1 if regression else logits.size(-1)
    return {name: score(name, preds, labels, k) for name in names}


def confusion(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts [true class, predicted class]."""
    return M.confusion_matrix(preds, labels, task="multiclass", num_classes=num_classes)
