"""Mean ± sample std of task metrics over fine-tuning seeds, per arm (the recipe, or one ablation of it).

A run with `finetune.seeds` records one parent-run metric per seed, `<task>[-<ablation>]-seed<N>.<metric>`
(variant names: tasks/variants.py). The report card, `gptflow compare` and
benchmarks/finetune_ablation.py all summarise them here, so they agree on the numbers.
"""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass

from reports.runs import STAGE_PREFIXES, TASK_METRIC, split_variant

SEED_PART = re.compile(r"^seed(\d+)$")


@dataclass(frozen=True)
class Spread:
    """One metric of one arm over its seeds: the values in seed order and their mean ± sample std."""

    values: tuple[float, ...]
    seeds: tuple[int | None, ...]  # None: the variant named no seed (the run's own seed)

    @property
    def n(self) -> int:
        """How many seeds."""
        return len(self.values)

    @property
    def mean(self) -> float:
        """Mean over the seeds."""
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        """Sample standard deviation (n − 1 in the denominator); nan for a single seed."""
        return statistics.stdev(self.values) if self.n > 1 else math.nan


def split_arm(suffix: str | None) -> tuple[str | None, int | None]:
    """A variant's suffix (after the task) as (ablation, seed): `no_aux_lm-seed2` -> ("no_aux_lm", 2)."""
    ablation, seed = [], None
    for part in suffix.split("-") if suffix else []:
        m = SEED_PART.match(part)
        if m:
            seed = int(m[1])
        else:
            ablation.append(part)
    return "-".join(ablation) or None, seed


def arm_spreads(metrics: dict[str, float]) -> dict[str, dict[str | None, dict[str, Spread]]]:
    """Parent-run metrics grouped as task -> arm (None: the recipe, else the ablation) -> metric -> Spread.

    Every variant of one (task, ablation), whatever its seed, is one value of that arm's Spread;
    a run without `finetune.seeds` gives Spreads of one value.
    """
    points: dict[tuple[str, str | None, str], list[tuple[int | None, float]]] = {}
    for key, value in metrics.items():
        m = TASK_METRIC.match(key)
        if not m or m["variant"] in STAGE_PREFIXES:
            continue
        task, suffix = split_variant(m["variant"])
        ablation, seed = split_arm(suffix)
        points.setdefault((task, ablation, m["metric"]), []).append((seed, value))
    out: dict[str, dict[str | None, dict[str, Spread]]] = {}
    for (task, ablation, metric), pts in points.items():
        pts.sort(key=lambda p: (p[0] is not None, p[0] or 0))
        spread = Spread(tuple(v for _, v in pts), tuple(s for s, _ in pts))
        out.setdefault(task, {}).setdefault(ablation, {})[metric] = spread
    return out
