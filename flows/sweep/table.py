"""A sweep's results: each trial's metric (mean ± std over its fine-tuning seeds), the table, the best trial.

The same frame is printed in the terminal, logged as the sweep run's `sweep.csv` and read by
`gptflow compare --sweep`, so they agree on every number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from flows.sweep.trials import Trial
from reports.runs import TASK_METRIC, split_variant
from reports.seeds import Spread, arm_spreads, split_arm


@dataclass
class TrialResult:
    """A finished trial: its pipeline run, how its stages ended, and its parent run's metrics."""

    trial: Trial
    run_id: str
    stages: dict[str, str]  # stage -> computed | cached
    metrics: dict[str, float]

    def computed(self) -> int:
        """Stages this trial computed (the rest it reused)."""
        return sum(1 for outcome in self.stages.values() if outcome == "computed")


def metric_spread(metrics: dict[str, float], metric: str) -> Spread | None:
    """`metric` of one run: the parent-run value, or over its fine-tuning seeds (`sst2.accuracy` of a run with
    `finetune.seeds` is the mean of `sst2-seed<N>.accuracy`); None when the run logged neither."""
    if metric in metrics:
        return Spread((metrics[metric],), (None,))
    m = TASK_METRIC.match(metric)
    if not m:
        return None
    task, suffix = split_variant(m["variant"])
    ablation, seed = split_arm(suffix)
    if seed is not None:
        return None
    return arm_spreads(metrics).get(task, {}).get(ablation, {}).get(m["metric"])


def best_result(results: list[TrialResult], metric: str, goal: str) -> TrialResult | None:
    """The trial with the best mean metric (the first of equals); None when no trial logged it."""
    scored = [(s.mean, r) for r in results if (s := metric_spread(r.metrics, metric)) and math.isfinite(s.mean)]
    if not scored:
        return None
    pick = max if goal == "maximize" else min
    return pick(scored, key=lambda pair: pair[0])[1]


def trial_table(results: list[TrialResult], keys: list[str], metric: str, goal: str) -> pd.DataFrame:
    """One row per trial: the swept keys' values, the metric (mean, std, seeds), stages computed/reused, run id."""
    best = best_result(results, metric, goal)
    rows = []
    for r in sorted(results, key=lambda r: r.trial.number):
        spread = metric_spread(r.metrics, metric)
        rows.append(
            {
                "trial": r.trial.number,
                **{key: r.trial.values.get(key) for key in keys},
                metric: spread.mean if spread else math.nan,
                "std": spread.std if spread else math.nan,
                "seeds": spread.n if spread else 0,
                "computed": r.computed(),
                "reused": len(r.stages) - r.computed(),
                "best": "*" if r is best else "",
                "run_id": r.run_id,
            }
        )
    return pd.DataFrame(rows)


def table_text(table: pd.DataFrame, metric: str) -> str:
    """The table for a terminal: metric as `mean ± std` when trials have several seeds."""
    shown = table.drop(columns=["run_id"]).copy()
    if (table["seeds"] > 1).any():
        shown[metric] = [
            f"{m:.4f} ± {s:.4f}" if n > 1 else f"{m:.4f}"
            for m, s, n in zip(table[metric], table["std"], table["seeds"], strict=True)
        ]
        shown = shown.drop(columns=["std"])  # shown beside the mean
    else:
        shown[metric] = [f"{m:.4f}" for m in table[metric]]
        shown = shown.drop(columns=["std", "seeds"])
    return shown.to_string(index=False)


def best_line(best: TrialResult | None, metric: str) -> str:
    """`best: trial 3 (finetune.lr=0.001) sst2.accuracy=0.7123`, the sweep's last line."""
    if best is None:
        return f"best: none (no trial logged {metric})"
    spread = metric_spread(best.metrics, metric)
    value = f"{spread.mean:.4f}" if spread else "nan"
    if spread and spread.n > 1:
        value += f" ± {spread.std:.4f} ({spread.n} seeds)"
    return f"best: trial {best.trial.number} ({best.trial.label()}) {metric}={value}"
