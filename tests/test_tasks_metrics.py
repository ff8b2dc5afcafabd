"""Task metrics (torchmetrics) against values computed by hand."""

import math

import pytest
import torch

from gpt.downstream.metrics import compute_metrics, confusion, score

PREDS = torch.tensor([1, 0, 1, 1, 0, 1])
LABELS = torch.tensor([1, 0, 0, 1, 1, 1])  # TP 3, TN 1, FP 1, FN 1


def test_classification_metrics_by_hand():
    assert score("accuracy", PREDS, LABELS, 2) == pytest.approx(4 / 6)
    assert score("f1", PREDS, LABELS, 2) == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))  # positive class
    assert score("matthews", PREDS, LABELS, 2) == pytest.approx((3 * 1 - 1 * 1) / math.sqrt(4 * 4 * 2 * 2))
    assert confusion(PREDS, LABELS, 2).tolist() == [[1, 1], [1, 3]]  # [true][predicted]


def test_correlations_by_hand():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    y = torch.tensor([2.0, 4.0, 5.0, 9.0])
    assert score("pearson", x, y, 1) == pytest.approx(11 / math.sqrt(5 * 26), abs=1e-6)
    assert score("spearman", x, y, 1) == pytest.approx(1.0)
    assert score("spearman", x, torch.tensor([2.0, 4.0, 9.0, 5.0]), 1) == pytest.approx(1 - 6 * 2 / (4 * 15))
    assert score("mse", x, y, 1) == pytest.approx((1 + 4 + 4 + 25) / 4)


def test_compute_metrics_from_logits():
    logits = torch.tensor([[0.1, 0.9], [2.0, -1.0], [0.0, 1.0]])
    assert compute_metrics(("accuracy", "f1"), logits, torch.tensor([1, 0, 0]), regression=False) == {
        "accuracy": pytest.approx(2 / 3),
        "f1": pytest.approx(2 / 3),
    }
    scores = compute_metrics(("pearson",), torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([2.0, 4.0, 6.0]), True)
    assert scores["pearson"] == pytest.approx(1.0)
