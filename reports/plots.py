"""Matplotlib figures for reports, written as PNG files (Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

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


def scatter_plot(path: Path, x: Sequence[float | str], y: Sequence[float], xlabel: str, ylabel: str) -> Path:
    """One point per run: a metric against one config key (a category axis when the key is not numeric)."""
    fig, ax = plt.subplots(figsize=(4.2, 3.2), dpi=100)
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in x)
    nums = [float(v) for v in x] if numeric else []
    ax.scatter(nums if numeric else [str(v) for v in x], y, s=24)
    if nums and min(nums) > 0 and max(nums) / min(nums) >= 100:  # learning rates and the like
        ax.set_xscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=f"{ylabel} vs {xlabel}")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def parallel_coordinates(path: Path, axes: Mapping[str, Sequence[Any]], color_by: str, title: str) -> Path:
    """One line per run across every axis (each scaled to its own range; categories evenly spaced),
    coloured by the `color_by` axis, the way sweep dashboards show which settings go together."""
    names = list(axes)
    scaled: dict[str, list[float]] = {}
    ticks: dict[str, tuple[list[float], list[str]]] = {}
    for name, values in axes.items():
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            nums = [float(v) for v in values]
            lo, hi = min(nums), max(nums)
            span = (hi - lo) or 1.0
            scaled[name] = [(v - lo) / span for v in nums]
            ticks[name] = ([0.0, 1.0], [f"{lo:.4g}", f"{hi:.4g}"])
        else:
            cats = sorted({str(v) for v in values})
            pos = {c: (i / (len(cats) - 1) if len(cats) > 1 else 0.5) for i, c in enumerate(cats)}
            scaled[name] = [pos[str(v)] for v in values]
            ticks[name] = (list(pos.values()), cats)
    fig, ax = plt.subplots(figsize=(max(5, 1.8 * len(names)), 3.8), dpi=100)
    cmap = plt.get_cmap("viridis")
    for row in range(len(next(iter(scaled.values()), []))):
        ax.plot(range(len(names)), [scaled[n][row] for n in names], color=cmap(scaled[color_by][row]), alpha=0.8)
    for i, name in enumerate(names):
        ax.axvline(i, color="#888", lw=0.8)
        for y, label in zip(*ticks[name], strict=True):
            ax.text(i + 0.03, y, label, fontsize=7, va="center")
    ax.set_xticks(range(len(names)), names, rotation=15, ha="right")
    ax.set_yticks([])
    ax.set(title=title)
    return _save(fig, path)
