"""Comparison of pipeline runs: the config keys that differ, final metrics with the best highlighted, and plots.

Runs come from `mlflow.search_runs` (one row per parent run, tag `gptflow.kind=pipeline`) as a
pandas frame; config keys are the `params.*` columns, metrics the `metrics.*` columns the stages
copied onto the parent. Runs with different task sets share the columns of the tasks they have in
common; a task a run did not run is blank in its row.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

from gpt.config.fields import ConfigError
from reports import plots
from reports.claims import CLAIMS_TAG, decide, read_claims, verdict_cell
from reports.document import Block, Heading, Image, Para, Table, to_html, to_markdown
from reports.runs import STAGE_PREFIXES, TASK_METRIC, history, split_variant, stage_runs
from reports.seeds import Spread, arm_spreads, split_arm

PIPELINE_FILTER = "tags.`gptflow.kind` = 'pipeline'"
PRETRAIN_COLUMNS = ("pretrain.final_val_loss", "pretrain.tokens_per_sec", "pretrain.mfu")
LOWER_IS_BETTER = ("loss", "mse", "seconds")
HIDDEN_TASK_METRICS = {"examples", "majority_rate"}
SEED_MEAN, SEED_STD = " mean", " std"  # suffixes of the columns a run's fine-tuning seeds fold into
CLAIM_COLUMN = "claim: "  # prefix of the columns of claim verdicts


@contextmanager
def _tracking_uri(uri: str) -> Iterator[None]:
    """`mlflow.search_runs` reads the global tracking URI; setting it also exports MLFLOW_TRACKING_URI: restore both."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        # None unsets the global and the variable (mlflow handles None; its annotation says str | Path)
        mlflow.set_tracking_uri(before)  # type: ignore[arg-type]


def pipeline_runs(tracking_uri: str, experiment: str | None = None, run_ids: list[str] | None = None) -> pd.DataFrame:
    """`mlflow.search_runs` over pipeline parent runs: of one experiment, or the given ids, else all finished."""
    where = PIPELINE_FILTER
    if run_ids:
        where += " and attributes.run_id IN (" + ", ".join(f"'{r}'" for r in run_ids) + ")"
    elif not experiment:
        where += " and attributes.status = 'FINISHED'"
    if experiment and MlflowClient(tracking_uri).get_experiment_by_name(experiment) is None:
        raise ConfigError(f"compare: no MLflow experiment named {experiment!r} in {tracking_uri}")
    scope = {"experiment_names": [experiment]} if experiment else {"search_all_experiments": True}
    with _tracking_uri(tracking_uri):
        df = mlflow.search_runs(filter_string=where, order_by=["attributes.start_time"], **scope)
    if run_ids:
        missing = sorted(set(run_ids) - set(df.get("run_id", [])))
        if missing:
            raise ConfigError(f"compare: no pipeline run with id {missing[0]!r} in {tracking_uri}")
    if df.empty:
        raise ConfigError(f"compare: no pipeline runs found in {tracking_uri}")
    return df.reset_index(drop=True)


def _differing_params(df: pd.DataFrame) -> list[str]:
    """Config keys with at least two distinct recorded values (a key a run did not record is not a difference)."""
    cols = [c for c in df.columns if c.startswith("params.")]
    return [c for c in cols if df[c].dropna().nunique() > 1]


def _metric_columns(df: pd.DataFrame) -> list[str]:
    """Pretraining figures, then task metrics: tasks every run has first, then the others."""
    present = [c.removeprefix("metrics.") for c in df.columns if c.startswith("metrics.")]
    matches = [(key, TASK_METRIC.match(key)) for key in present]
    hidden = (STAGE_PREFIXES, HIDDEN_TASK_METRICS)
    tasks = [k for k, m in matches if m and m["variant"] not in hidden[0] and m["metric"] not in hidden[1]]
    shared = [k for k in tasks if df[f"metrics.{k}"].notna().all()]
    partial = [k for k in tasks if k not in shared]
    return [c for c in PRETRAIN_COLUMNS if c in present] + sorted(shared, key=_order) + sorted(partial, key=_order)


def _order(column: str) -> tuple[str, str, int, str]:
    """Task, then its main recipe before its ablations, each arm's seeds in order, then the metric."""
    name, metric = column.rsplit(".", 1)
    task, variant = split_variant(name)
    ablation, seed = split_arm(variant)
    return task, ablation or "", seed or 0, metric


def _fold_seeds(df: pd.DataFrame, metrics: list[str]) -> tuple[list[str], dict[str, list[float]]]:
    """The metric columns with each arm's per-seed columns (`sst2-seed1.accuracy`, ...) replaced by
    `sst2.accuracy mean` and `sst2.accuracy std` (sample std over the run's seeds, reports.seeds),
    and the values of those new columns, one per run. A run without seeds shows its one value as the
    mean (std blank), so seeded and unseeded runs compare in one column."""
    per_run = [
        arm_spreads({k.removeprefix("metrics."): v for k, v in row.items() if k.startswith("metrics.") and pd.notna(v)})
        for _, row in df.iterrows()
    ]
    columns, folded = [], {}
    for c in metrics:
        name, metric = c.rsplit(".", 1)
        task, suffix = split_variant(name)
        ablation, seed = split_arm(suffix)
        if seed is None:
            columns.append(c)
            continue
        arm = "-".join([task, *([ablation] if ablation else [])]) + f".{metric}"
        if arm + SEED_MEAN in folded:
            continue
        spreads: list[Spread | None] = [arms.get(task, {}).get(ablation, {}).get(metric) for arms in per_run]
        folded[arm + SEED_MEAN] = [s.mean if s else math.nan for s in spreads]
        folded[arm + SEED_STD] = [s.std if s else math.nan for s in spreads]
        columns += [arm + SEED_MEAN, arm + SEED_STD]
    return columns, folded


def _claim_columns(df: pd.DataFrame) -> dict[str, list[str]]:
    """`claim: <text>` -> one short verdict per run (reports/claims.py), for every claim any run states;
    blank in the rows of runs that do not state it."""
    tag = f"tags.{CLAIMS_TAG}"
    if tag not in df.columns:
        return {}
    columns: dict[str, list[str]] = {}
    for i, (_, row) in enumerate(df.iterrows()):
        value = row[tag]
        claims = read_claims(value if isinstance(value, str) else None)
        metrics = {k.removeprefix("metrics."): v for k, v in row.items() if k.startswith("metrics.") and pd.notna(v)}
        for claim in claims:
            cells = columns.setdefault(f"{CLAIM_COLUMN}{claim['text']}", [""] * len(df))
            cells[i] = verdict_cell(decide(claim, metrics))
    return columns


def comparison_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run (indexed by run name and short id): differing config keys, final metrics, claim verdicts.

    A run fine-tuned with several seeds shows each arm's mean and sample std over them, not one column per seed.
    Each claim a run states (`claims:`) gets a column `claim: <text>` of short verdicts (`supported +0.052
    [+0.011, +0.093] n=3/3`: difference of means, its 95% CI, seeds per arm).
    """
    params = _differing_params(df)
    metrics, folded = _fold_seeds(df, _metric_columns(df))
    out = pd.DataFrame(index=[f"{n} ({i[:8]})" for n, i in zip(df["tags.mlflow.runName"], df["run_id"], strict=True)])
    out.index.name = "run"
    out["run_id"] = list(df["run_id"])
    for c in params:
        out[c.removeprefix("params.")] = list(df[c])
    for c in metrics:
        out[c] = folded[c] if c in folded else list(df[f"metrics.{c}"])
    claims = _claim_columns(df)
    for c, cells in claims.items():
        out[c] = cells
    out.attrs["metrics"] = metrics
    out.attrs["claims"] = list(claims)
    return out


def metric_names(table: pd.DataFrame) -> list[str]:
    """The metric columns of a comparison table (the config-key columns come before them)."""
    return list(table.attrs.get("metrics", []))


def best_rows(table: pd.DataFrame) -> dict[str, list[int]]:
    """Metric column -> row positions holding its best value (lowest for losses, highest otherwise).

    A column where every run has the same value has no best and is left out, and so is a seed spread (std).
    """
    best = {}
    for c in metric_names(table):
        if c.endswith(SEED_STD):
            continue
        values = pd.to_numeric(table[c], errors="coerce").reset_index(drop=True)
        present = values.dropna()
        if present.nunique() < 2 and len(table) > 1:
            continue
        target = present.min() if any(w in c for w in LOWER_IS_BETTER) else present.max()
        best[c] = [int(i) for i in present.index[present == target]]
    return best


def _cell(v: object) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"
    return str(v)


def _table_blocks(table: pd.DataFrame) -> list[Block]:
    """The heading, the differing keys and the table with the best value per metric marked."""
    cols = [c for c in table.columns if c != "run_id"]
    best = best_rows(table)
    cells = [[name, *[_cell(table.iloc[i][c]) for c in cols]] for i, name in enumerate(table.index)]
    marks = {(row, cols.index(c) + 1) for c, rows in best.items() for row in rows}
    params = [c for c in cols if c not in metric_names(table) and c not in table.attrs.get("claims", [])]
    return [
        Heading(f"gptflow comparison of {len(table)} runs", 1),
        Para(
            "Config keys that differ: "
            + (", ".join(f"`{p}`" for p in params) if params else "none")
            + ". Best value per metric highlighted (lowest loss, highest score; none where all runs tie);"
            + " blank: the run did not have it."
            + (
                " Claims: verdict, mean(left) − mean(right) [95% CI, Welch t] and seeds per arm (left/right)."
                if table.attrs.get("claims")
                else ""
            )
        ),
        Table(["run", *cols], cells, marks),
    ]


def _blocks(table: pd.DataFrame, client: MlflowClient, out_dir: Path) -> list[Block]:
    blocks = _table_blocks(table)
    series = []
    for i, run_id in enumerate(table["run_id"]):
        pre = stage_runs(client, client.get_run(run_id)).get("pretrain")
        if pre is not None:
            steps, values = history(client, pre, "val_loss")
            if steps:
                series.append((table.index[i], steps, values))
    if series:
        path = plots.line_plot(out_dir / "compare_val_loss.png", series, "step", "val loss", "Pretraining val loss")
        blocks.append(Image(path.name, "validation loss during pretraining, one curve per run"))
    tasks = [c for c in metric_names(table) if c not in PRETRAIN_COLUMNS and not c.endswith(SEED_STD)]
    if tasks:
        bars = {
            name: [None if pd.isna(v) else float(v) for v in table.iloc[i][tasks]] for i, name in enumerate(table.index)
        }
        path = plots.bar_chart(out_dir / "compare_tasks.png", tasks, bars, "score", "Task metrics (dev split)")
        blocks.append(Image(path.name, "per-task metric, one bar per run (missing: the run did not have the task)"))
    return blocks


def comparison_text(table: pd.DataFrame, fmt: str) -> str:
    """The comparison as `csv` or `md` text for standard output (the table; plots need a file beside them)."""
    return table.to_csv() if fmt == "csv" else to_markdown(_table_blocks(table))


def write_comparison(table: pd.DataFrame, client: MlflowClient, out: Path, fmt: str) -> Path:
    """Write the comparison as `html` (table + plots embedded), `md` (plots beside it) or `csv` (table only)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        table.to_csv(out)
        return out
    blocks = _blocks(table, client, out.parent)
    text = to_html(blocks, "gptflow comparison", out.parent) if fmt == "html" else to_markdown(blocks)
    out.write_text(text)
    return out
