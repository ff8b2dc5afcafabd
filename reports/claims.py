"""Verdicts on a run's claims (`claims:` in the config): supported, refuted or undecided over fine-tuning seeds.

A claim compares two arms of one task (the recipe, or an ablation) on the task's headline metric,
e.g. `sst2: pretrained > no_pretraining`. Its evidence is the difference of the arms' means over
the run's fine-tuning seeds (`finetune.seeds`, grouped by reports/seeds.py) with a 95% confidence
interval, and the verdict reads only that interval:

    a >  b   supported iff low >  0;  refuted iff high <= 0;  else undecided
    a >= b   supported iff low >= 0;  refuted iff high <  0;  else undecided
    a <  b   supported iff high <  0; refuted iff low >= 0;   else undecided   (b > a)
    a <= b   supported iff high <= 0; refuted iff low >  0;   else undecided   (b >= a)

so `a >= b` is supported exactly when `b > a` is refuted. Fewer than two seeds in either arm gives
no interval, hence `undecided`: one run per arm cannot tell an effect from seed noise (GPT-1's own
code reports a median over 10 runs for that reason).

The interval is Welch's t, not a bootstrap: runs have 3 to 10 seeds, and a percentile bootstrap of
so few values is too narrow (it ignores that the spread itself is estimated; n=3 has only 10 distinct
resamples) while Student's t accounts for it exactly under normal noise. Welch's form (standard
error sqrt(vL/nL + vR/nR), Welch–Satterthwaite degrees of freedom) does not assume the arms vary
alike, and they do not: training from scratch (`no_pretraining`) is far noisier than fine-tuning.

The claims travel with the run as the parent-run tag `gptflow.claims` (JSON, with each task's
headline metric resolved), so the report card, `gptflow compare` and `gptflow run` decide them from
MLflow alone.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypedDict

from reports.seeds import arm_spreads

if TYPE_CHECKING:
    from mlflow.entities import Run

    from gpt.config.experiment import ExperimentConfig

CLAIMS_TAG = "gptflow.claims"
METHOD = "Welch t"
SUPPORTED, REFUTED, UNDECIDED = "supported", "refuted", "undecided"
CONFIDENCE = 0.95


class ClaimRecord(TypedDict):
    """One claim as stored in the run's tag: the text as written, its task, arms (None: the recipe),
    comparison and the task's headline metric."""

    text: str
    task: str
    left: str | None
    op: str
    right: str | None
    metric: str


def claims_json(cfg: ExperimentConfig) -> str:
    """The run's claims as the JSON value of CLAIMS_TAG, each with its task's headline metric."""
    from gpt.downstream.builtin import get_task

    records: list[ClaimRecord] = [
        {
            "text": c.text,
            "task": c.task,
            "left": c.left,
            "op": c.op,
            "right": c.right,
            "metric": get_task(c.task, cfg.tasks).metric,
        }
        for c in cfg.parsed_claims()
    ]
    return json.dumps(records)


def read_claims(tag_value: str | None) -> list[ClaimRecord]:
    """The claims of a CLAIMS_TAG value (JSON only); no tag, or a value that is not such a list, gives none."""
    if not tag_value:
        return []
    try:
        data = json.loads(tag_value)
    except ValueError:
        return []
    if not isinstance(data, list):
        return []
    keys = set(ClaimRecord.__annotations__)
    return [
        ClaimRecord(
            text=str(d["text"]),
            task=str(d["task"]),
            left=d["left"],
            op=str(d["op"]),
            right=d["right"],
            metric=str(d["metric"]),
        )
        for d in data
        if isinstance(d, dict) and keys <= d.keys()
    ]


@dataclass(frozen=True)
class Verdict:
    """A claim decided: mean(left) − mean(right) of its metric, the 95% CI of it, the seed counts, the verdict."""

    text: str
    metric: str
    diff: float  # nan when an arm has no value
    low: float  # nan with fewer than 2 seeds on either side
    high: float
    n_left: int
    n_right: int
    verdict: str  # SUPPORTED | REFUTED | UNDECIDED


def welch_interval(left: list[float], right: list[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Welch's t interval of mean(left) − mean(right); (nan, nan) with fewer than 2 values on a side.

    se = sqrt(vL/nL + vR/nR) with sample variances; df by Welch–Satterthwaite. Both arms constant:
    se = 0 and the interval is the difference itself.
    """
    from scipy.stats import t

    n_l, n_r = len(left), len(right)
    if n_l < 2 or n_r < 2:
        return math.nan, math.nan
    diff = statistics.fmean(left) - statistics.fmean(right)
    a, b = statistics.variance(left) / n_l, statistics.variance(right) / n_r
    se = math.sqrt(a + b)
    if se == 0:
        return diff, diff
    df = (a + b) ** 2 / (a**2 / (n_l - 1) + b**2 / (n_r - 1))
    half = float(t.ppf(0.5 + confidence / 2, df)) * se
    return diff - half, diff + half


def verdict_of(op: str, low: float, high: float) -> str:
    """The verdict the interval [low, high] of left − right gives `left op right` (rule in the module docstring)."""
    if math.isnan(low) or math.isnan(high):
        return UNDECIDED
    if op in ("<", "<="):  # the mirror image: right > left, right >= left
        op, low, high = op.replace("<", ">"), -high, -low
    if op == ">":
        supported, refuted = low > 0, high <= 0
    elif op == ">=":
        supported, refuted = low >= 0, high < 0
    else:
        raise ValueError(f"unknown comparison {op!r}")
    return SUPPORTED if supported else REFUTED if refuted else UNDECIDED


def decide(claim: ClaimRecord, metrics: dict[str, float]) -> Verdict:
    """The verdict on one claim from a parent run's metrics (`<variant>.<metric>`, grouped by arm and seed)."""
    arms = arm_spreads(metrics).get(claim["task"], {})
    sides = [arms.get(arm, {}).get(claim["metric"]) for arm in (claim["left"], claim["right"])]
    left, right = (list(s.values) if s else [] for s in sides)
    diff = statistics.fmean(left) - statistics.fmean(right) if left and right else math.nan
    low, high = welch_interval(left, right)
    return Verdict(
        claim["text"], claim["metric"], diff, low, high, len(left), len(right), verdict_of(claim["op"], low, high)
    )


def run_verdicts(run: Run) -> list[Verdict]:
    """The verdicts on a pipeline run's claims (none without the tag), from its parent-run metrics."""
    return [decide(c, run.data.metrics) for c in read_claims(run.data.tags.get(CLAIMS_TAG))]


def decided(verdicts: list[Verdict]) -> bool:
    """Every claim supported or refuted."""
    return all(v.verdict != UNDECIDED for v in verdicts)


def _signed(x: float) -> str:
    return f"{x:+.3f}"


def interval_text(v: Verdict) -> str:
    """`[+0.011, +0.093]`, or why there is no interval."""
    if math.isnan(v.diff):
        return "no values for an arm"
    if math.isnan(v.low):
        return "none: needs 2 seeds per arm"
    return f"[{_signed(v.low)}, {_signed(v.high)}]"


def verdict_line(v: Verdict) -> str:
    """One line per claim, e.g.

    `sst2: pretrained > no_pretraining  supported  accuracy +0.052 [95% CI +0.011, +0.093], Welch t, 3 vs 3 seeds`
    """
    if math.isnan(v.diff):
        evidence = f"{v.metric}: no values for an arm"
    elif math.isnan(v.low):
        evidence = f"{v.metric} {_signed(v.diff)} (no CI: needs 2 seeds per arm)"
    else:
        evidence = f"{v.metric} {_signed(v.diff)} [95% CI {_signed(v.low)}, {_signed(v.high)}], {METHOD}"
    return f"{v.text}  {v.verdict}  {evidence}, {v.n_left} vs {v.n_right} seeds"


def verdict_cell(v: Verdict) -> str:
    """The short form for a comparison table cell: `supported +0.052 [+0.011, +0.093] n=3/3`."""
    diff = "" if math.isnan(v.diff) else f" {_signed(v.diff)}"
    ci = "" if math.isnan(v.low) else f" [{_signed(v.low)}, {_signed(v.high)}]"
    return f"{v.verdict}{diff}{ci} n={v.n_left}/{v.n_right}"
