"""`gptflow compare --sweep ID`: a sweep's trial table, its metric against each swept key, and a
parallel-coordinates plot, from the sweep's MLflow run (its `sweep.csv`, written by `gptflow sweep`)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from gpt.config.fields import ConfigError
from reports import plots
from reports.document import Block, Heading, Image, Para, Table, to_html, to_markdown

# the sweep run's tags and its table, as flows/sweep/record.py writes them
SWEEP_TAG, TABLE_FILE = "sweep", "sweep.csv"
KEYS_TAG, METRIC_TAG, GOAL_TAG = "gptflow.sweep_keys", "gptflow.sweep_metric", "gptflow.sweep_goal"


def latest_sweep_run(client: MlflowClient, sweep_id: str) -> Run:
    """The newest MLflow run of sweep `sweep_id` (a rerun of a killed sweep supersedes it)."""
    ids = [e.experiment_id for e in client.search_experiments()]
    safe = sweep_id.replace("'", "")
    runs = client.search_runs(
        ids,
        filter_string=f"tags.`gptflow.kind` = 'sweep' and tags.sweep = '{safe}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        raise ConfigError(
            f"compare: no sweep {sweep_id!r} in {client.tracking_uri} (its id is printed by gptflow sweep)"
        )
    return runs[0]


def sweep_table(client: MlflowClient, run: Run, scratch: Path) -> pd.DataFrame:
    """The sweep's trial table as logged (`sweep.csv`), with the swept keys, metric and goal in `attrs`."""
    try:
        local = Path(client.download_artifacts(run.info.run_id, TABLE_FILE, str(scratch)))
        table = pd.read_csv(local)
    except (MlflowException, OSError, ValueError) as e:  # MlflowException: the sweep logged no trial yet
        raise ConfigError(f"compare: sweep run {run.info.run_id} has no {TABLE_FILE} ({e})") from None
    table.attrs.update(
        keys=json.loads(run.data.tags.get(KEYS_TAG, "[]")),
        metric=run.data.tags.get(METRIC_TAG, ""),
        goal=run.data.tags.get(GOAL_TAG, "maximize"),
        sweep=run.data.tags.get(SWEEP_TAG, ""),
    )
    return table


def sweep_text(table: pd.DataFrame, fmt: str) -> str:
    """The trial table as `csv` or `md` text for standard output."""
    return table.to_csv(index=False) if fmt == "csv" else to_markdown(_table_blocks(table))


def _table_blocks(table: pd.DataFrame) -> list[Block]:
    metric, goal = table.attrs["metric"], table.attrs["goal"]
    cols = list(table.columns)
    cells = [[_cell(v) for v in row] for row in table.itertuples(index=False)]
    best = {(i, cols.index(metric)) for i, mark in enumerate(table.get("best", [])) if mark == "*"}
    return [
        Heading(f"gptflow sweep {table.attrs['sweep']}: {len(table)} trials", 1),
        Para(f"Swept: {', '.join(f'`{k}`' for k in table.attrs['keys'])}. Ranked by `{metric}` ({goal}); best marked."),
        Table(cols, cells, best),
    ]


def _cell(v: object) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def write_sweep_comparison(table: pd.DataFrame, out: Path, fmt: str) -> Path:
    """`html` (table and plots embedded), `md` (plots beside it) or `csv` (table only)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        table.to_csv(out, index=False)
        return out
    metric, keys = table.attrs["metric"], table.attrs["keys"]
    blocks = _table_blocks(table)
    scored = table[pd.to_numeric(table[metric], errors="coerce").notna()]
    if len(scored):
        blocks.append(Heading(f"{metric} against each swept key"))
        for i, key in enumerate(keys):
            path = plots.scatter_plot(
                out.parent / "plots" / f"sweep_{i}.png", list(scored[key]), list(scored[metric]), key, metric
            )
            blocks.append(Image(str(path.relative_to(out.parent)), f"{metric} vs {key}"))
        axes = {key: list(scored[key]) for key in keys} | {metric: list(scored[metric])}
        path = plots.parallel_coordinates(out.parent / "plots" / "sweep_parallel.png", axes, metric, "trials")
        blocks.append(Image(str(path.relative_to(out.parent)), f"parallel coordinates, coloured by {metric}"))
    text = to_html(blocks, "gptflow sweep", out.parent) if fmt == "html" else to_markdown(blocks)
    out.write_text(text)
    return out
