"""`gptflow sweep` and `gptflow stages --sweep`: check the whole sweep, then run it or say what it would do."""

from __future__ import annotations

import argparse
import sys

from flows.sweep.plan import SweepPlan, plan_sweep, with_grid
from flows.workspace import Workspace
from gpt.config.experiment import ExperimentConfig
from gpt.config.secrets import export_secrets, redacted_config


def checked_plan(cfg: ExperimentConfig, grid_args: list[str] | None) -> SweepPlan:
    """The sweep of `cfg` plus `--grid` options, with every trial's config, value and metric checked."""
    return plan_sweep(with_grid(cfg, grid_args or []))


def cmd_sweep(cfg: ExperimentConfig, args: argparse.Namespace, ws: Workspace) -> int:
    """Check every trial, run them (stages shared across trials computed once), print the table and the best."""
    from flows.api_server import prefect_api
    from flows.sweep.run import sweep_flow
    from flows.sweep.table import best_line, table_text, trial_table
    from tasks.plan import build_plan, check_corpus_fits, check_inputs, check_stages, select

    plan = checked_plan(cfg, args.grid)
    source = plan.source()
    for trial in source.next_batch(source.total) if plan.sweep.method == "grid" else []:
        trial_cfg = plan.trial_config(trial)  # every grid trial's inputs, before any compute
        check_inputs(trial_cfg)
        stages = build_plan(trial_cfg, ws.artifacts)
        selected, forced = select(stages, None, None, None, None)
        check_corpus_fits(trial_cfg, selected)
        check_stages(stages, selected, forced)
    if plan.sweep.method != "grid":
        check_inputs(plan.base)
    ws.check_writable()
    ws.check_tracking()
    ws.check_store()
    print(f"{plan.sweep_id}: {source.total} trials of {plan.sweep.method} over {', '.join(plan.sweep.params)}")
    export_secrets(plan.base)  # the flow's parameter is redacted (Prefect stores it); the trials need the real values
    with prefect_api():
        outcome = sweep_flow(config=redacted_config(plan.base), workspace=str(ws.root))
    table = trial_table(outcome.results, list(plan.sweep.params), plan.metric, plan.goal)
    print(f"\nsweep {plan.sweep_id}: MLflow run {outcome.run_id} (experiment '{plan.base.experiment}')")
    print(f"compare: gptflow compare --sweep {plan.sweep_id} --workspace {ws.root}\n")
    print(table_text(table, plan.metric))
    print(best_line(outcome.best, plan.metric))
    sys.stdout.flush()
    return 0


def cmd_stages_sweep(cfg: ExperimentConfig, args: argparse.Namespace, ws: Workspace) -> int:
    """Dry run of a sweep: per trial, the stages it computes, shares with an earlier trial, or reuses."""
    from flows.sweep.dry_run import share_counts

    plan = checked_plan(cfg, args.grid)
    rows = share_counts(plan, ws.artifacts)
    width = max((len(r.trial.label()) for r in rows), default=0)
    for r in rows:
        print(
            f"trial {r.trial.number:<3} {r.trial.label():<{width}}  computes {r.computes:>2}, "
            f"shares {r.shares:>2} with earlier trials, reuses {r.reuses:>2}"
        )
    total = sum(r.computes for r in rows)
    alone = sum(r.computes + r.shares for r in rows)
    print(f"{plan.sweep_id}: {len(rows)} trials compute {total} stages ({alone} if run with no shared cache)")
    if plan.sweep.method == "tpe":
        print("tpe: trials after the first ones depend on earlier results; shown are its first guesses")
    return 0
