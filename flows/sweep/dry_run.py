"""`gptflow stages --sweep`: how many stages each trial computes, shares with an earlier trial, or reuses.

Read from the plans alone (nothing starts). A stage is identified by its key when its inputs are
done, else by its section and its upstream stages' identities, which is what its key will hash: two
trials that agree there will get one key, so the second reuses what the first computes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flows.sweep.plan import SweepPlan
from flows.sweep.trials import Trial
from gpt.config.experiment import hash_json
from tasks.plan import build_plan
from tasks.stage import Stage


@dataclass(frozen=True)
class TrialShare:
    """One trial's stages by what a sweep run would do with them."""

    trial: Trial
    computes: int  # first asked for by this trial
    shares: int  # computed by an earlier trial of the sweep
    reuses: int  # done in the workspace already


def _identity(stage: Stage, memo: dict[str, str]) -> str:
    if stage.name not in memo:
        key = stage.key_or_none()
        upstream = [_identity(u, memo) for u in stage.upstream_stages]
        memo[stage.name] = key or hash_json({"section": stage.section_digest(), "upstream": upstream})
    return memo[stage.name]


def share_counts(plan: SweepPlan, artifacts: Path) -> list[TrialShare]:
    """Each trial's counts, in trial order (random / TPE: the trials the sampler asks for first)."""
    source = plan.source()
    seen: set[str] = set()
    rows = []
    for trial in source.next_batch(source.total):
        computes = shares = reuses = 0
        memo: dict[str, str] = {}
        for stage in build_plan(plan.trial_config(trial), artifacts):
            if stage.definition.per_run:  # the report: each run writes its own
                continue
            identity = _identity(stage, memo)
            if stage.is_done():
                reuses += 1
            elif identity in seen:
                shares += 1
            else:
                computes += 1
                seen.add(identity)
        rows.append(TrialShare(trial, computes, shares, reuses))
    return rows
