"""Matplotlib figures for reports, written as PNG files (Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

Series = tuple[str, Sequence[float], Sequence[float]]  # label, x, y


def line_plot(path: Path, series: Sequence[Series], xlabel: str, ylabel: str, title: str, logy: bool = False) -> Path:
    """Several labelled curves on one axis."""
    fig, ax = plt.subplots(figsize=(7, 3.8), dpi=100)
    for label, x, y in series:
        ax.plot(x, y, marker="o" if len(x) <= 12 else None, markersize=3, label=label)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8)
    return _save(fig, path)


def bar_chart(
    path: Path, groups: list[str], bars: dict[str, list[float | None]], ylabel: str, title: str
) -> Path:
    """Grouped bars: one group per x label, one bar per series; None leaves a gap."""
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(groups) * max(1, len(bars)) / 2 + 3), 3.8), dpi=100)
    width = 0.8 / max(1, len(bars))
    for i, (label, values) in enumerate(bars.items()):
        xs = [g + i * width for g, v in enumerate(values) if v is not None]
        ax.bar(xs, [v for v in values if v is not None], width, label=label)
    ax.set_xticks([g + width * (len(bars) - 1) / 2 for g in range(len(groups))], groups, rotation=25, ha="right")
    ax.set(ylabel=ylabel, title=title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def confusion_plot(path: Path, matrix: Sequence[Sequence[int]], labels: list[str], title: str) -> Path:
    """A confusion matrix heat map with counts (rows: true label, columns: predicted)."""
    n = len(labels)
    fig, ax = plt.subplots(figsize=(1.2 * n + 2.2, 1.1 * n + 1.6), dpi=100)
    ax.imshow(matrix, cmap="Blues")
    top = max((max(r) for r in matrix), default=0)
    for i in range(n):
        for j in range(n):
            v = matrix[i][j]
            ax.text(j, i, str(v), ha="center", va="center", color="white" if v > top / 2 else "black")
    ax.set_xticks(range(n), labels)
    ax.set_yticks(range(n), labels)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    return _save(fig, path)


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return path
