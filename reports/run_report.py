"""The report card of one pipeline run (report.md + report.html + PNG plots), built from MLflow alone.

Everything comes from the parent run (params, tags, metrics copied up by the stages), its stage
child runs (metric histories, tags) and their artifacts (tokenizer, samples, predictions), so a
report can be rebuilt for any run in any store with `gptflow report RUN_ID`.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from gpt.config.experiment import ExperimentConfig
from gpt.config.fields import ConfigError
from gpt.config.loader import load_config
from gpt.data.tokenizer import META_FILE
from reports import HTML_FILE, MD_FILE, PLOTS_DIR, plots
from reports.claims import METHOD, interval_text, run_verdicts
from reports.document import Block, Bullets, Code, Heading, Image, Para, Table, to_html, to_markdown
from reports.environment import hardware, package_versions
from reports.paper import paper_number
from reports.runs import download, history, list_artifact_paths, metric_keys, stage_runs
from reports.seeds import Spread, arm_spreads
from tasks.evaluate import PREDICTIONS_FILE
from tasks.pretrain_job import SAMPLES_FILE

PRESETS = Path(__file__).resolve().parents[1] / "configs"  # the checkout's presets, when installed from one
PRESET_TAG = "gptflow.config_file"  # the YAML preset a run's config came from (diffed in the header)
ENV_TAG = "gptflow.env."  # gptflow.env.<package>=<version>, gptflow.env.hw.<key>=<value>
SAMPLE_TEXT = "The quick brown fox jumps over the lazy dog. Shall I compare thee to a summer's day?"
NOT_TASK_METRICS = {"examples", "test_examples", "majority_rate", "loss", "seconds"}
POINTS = {"accuracy", "f1", "matthews", "pearson", "spearman"}  # shown ×100, as the GPT-1 paper does


@dataclass
class ReportFiles:
    """Where a report was written."""

    markdown: Path
    html: Path
    plots: list[Path]


STEP_ARM = re.compile(r"step\d+")  # the arm of a variant fine-tuned from a kept checkpoint (tasks/variants.py)


def environment_tags() -> dict[str, str]:
    """This process's package versions and hardware as parent-run tags (recorded by the report stage)."""
    tags = {f"{ENV_TAG}{k}": v for k, v in package_versions().items()}
    tags.update({f"{ENV_TAG}hw.{k}": v for k, v in hardware().items()})
    return tags


def _pct(v: float | None) -> str:
    return "" if v is None else f"{100 * v:.1f}"


def _num(v: float | None) -> str:
    if v is None:
        return ""
    return f"{v:,.0f}" if abs(v) >= 1000 or float(v).is_integer() else f"{v:.4g}"


def _wall(run: Run, now_ms: int) -> float:
    return ((run.info.end_time or now_ms) - run.info.start_time) / 1000


def _diff(params: dict[str, str], reference: ExperimentConfig) -> list[list[str]]:
    ref = {k: str(v) for k, v in reference.flat().items()}
    # Keys the run did not record (added to gptflow after it ran) are left out rather than shown as changes.
    return [[f"`{k}`", ref.get(k, "(not in reference)"), v] for k, v in sorted(params.items()) if ref.get(k) != v]


def config_diff(params: dict[str, str], preset: str | None) -> tuple[str, list[list[str]]]:
    """(what the run is compared against, rows key | reference | this run) for keys that differ.

    The reference is the preset the run recorded (tag `gptflow.config_file`); without one, the
    checkout's preset (configs/*.yaml) closest to the run when it is closer than the built-in defaults.
    """
    if preset:
        try:
            return f"preset `{preset}`", _diff(params, load_config(preset))
        except ConfigError:
            return f"the built-in defaults (preset `{preset}` is not readable here)", _diff(params, ExperimentConfig())
    label, rows = "the built-in defaults", _diff(params, ExperimentConfig())
    for path in sorted(PRESETS.glob("*.yaml")):
        try:
            candidate = _diff(params, load_config(path))
        except ConfigError:
            continue
        if len(candidate) < len(rows):
            label, rows = f"the closest preset `configs/{path.name}` (the run recorded no config file)", candidate
    return label, rows


def _header(client: MlflowClient, parent: Run, stages: dict[str, Run]) -> list[Block]:
    tags, now = parent.data.tags, int(time.time() * 1000)
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(parent.info.start_time / 1000))
    total = _wall(parent, now)
    blocks: list[Block] = [
        Heading(f"gptflow run {parent.info.run_name}", 1),
        Bullets(
            [
                f"run id: `{parent.info.run_id}`, experiment `{client.get_experiment(parent.info.experiment_id).name}`",
                f"started {started}, status {parent.info.status}, total wall time {total:.1f} s"
                + ("" if parent.info.end_time else " so far"),
                f"git commit `{tags.get('git_commit', '?')}`, config hash `{tags.get('config_hash', '?')}`",
                f"Prefect flow run `{tags.get('prefect_flow_run_id', '?')}`",
            ]
        ),
        Heading("Configuration"),
    ]
    label, rows = config_diff(parent.data.params, tags.get(PRESET_TAG))
    if rows:
        blocks += [Para(f"Keys that differ from {label}:"), Table(["key", "reference", "this run"], rows)]
    else:
        blocks.append(Para(f"Identical to {label}."))
    env = {k.removeprefix(ENV_TAG): v for k, v in tags.items() if k.startswith(ENV_TAG)}
    where = "as recorded by the run"
    if not env:
        env = {**package_versions(), **{f"hw.{k}": v for k, v in hardware().items()}}
        where = "this machine at report time (the run recorded none)"
    blocks += [
        Heading("Environment"),
        Para(f"Package versions and hardware, {where}:"),
        Table(
            ["package", "version"],
            [[k, v] for k, v in sorted(env.items()) if not k.startswith("hw.")],
        ),
        Bullets([f"{k.removeprefix('hw.')}: {v}" for k, v in sorted(env.items()) if k.startswith("hw.")]),
        Heading("Stages"),
    ]
    rows, cached_total = [], 0.0
    for name, run in stages.items():
        t = run.data.tags
        cached = t.get("cached", "running")
        wall = _wall(run, now)
        cached_total += wall if cached == "true" else 0.0
        rows.append(
            [
                name,
                "cached" if cached == "true" else ("computed" if cached == "false" else cached),
                f"`{t.get('cache_key', '')}`",
                f"{wall:.1f}",
                f"`{t['produced_by']}`" if "produced_by" in t else "",
            ]
        )
    blocks += [
        Table(["stage", "outcome", "cache key", "wall s", "produced by run"], rows),
        Para(f"Total wall time {total:.1f} s; cached stages took {cached_total:.1f} s of it (lookup only)."),
    ]
    return blocks


def _data(client: MlflowClient, parent: Run, stages: dict[str, Run], tmp: Path) -> list[Block]:
    m = parent.data.metrics
    blocks: list[Block] = [Heading("Data and tokenizer")]
    facts = [
        ("corpus source", parent.data.params.get("corpus.source")),
        ("documents", _num(m.get("corpus.documents"))),
        ("corpus bytes", _num(m.get("corpus.bytes"))),
        ("train tokens", _num(m.get("encode.train_tokens"))),
        ("val tokens", _num(m.get("encode.val_tokens"))),
        ("bytes per token (val)", _num(m.get("encode.val_bytes_per_token", m.get("encode.bytes_per_token")))),
        ("vocabulary", _num(m.get("tokenizer.vocab_size"))),
    ]
    blocks.append(Bullets([f"{k}: {v}" for k, v in facts if v]))
    tok_run = stages.get("tokenizer")
    tok_dir = download(client, tok_run, "", tmp / "tokenizer") if tok_run else None
    if tok_dir and (tok_dir / META_FILE).is_file():
        from gpt.data.tokenizer import load_tokenizer

        enc = load_tokenizer(tok_dir)
        ids = enc.encode_ordinary(SAMPLE_TEXT)
        pieces = " | ".join(enc.decode([i]) for i in ids)
        blocks += [
            Para(f"Sample tokenization ({len(SAMPLE_TEXT)} characters, {len(ids)} tokens):"),
            Code(f"{SAMPLE_TEXT}\n\n{pieces}\n\n{ids}"),
        ]
    return blocks


def _tokens_per_step(client: MlflowClient, parent: Run, pre: Run) -> tuple[float, str]:
    """Tokens seen per optimizer step: from Lightning's ThroughputMonitor when logged, else batch × block."""
    steps, lengths = history(client, pre, "train/lengths")
    if steps and steps[-1] > 0:
        return lengths[-1] / (steps[-1] + 1), "tokens"
    p = parent.data.params
    try:
        return float(p["pretrain.batch_size"]) * float(p["model.block_size"]), "tokens"
    except (KeyError, ValueError):
        return 1.0, "step"


def _sample_files(client: MlflowClient, pre: Run, keep: int = 3) -> list[str]:
    """Samples logged during training (`samples/step_N.txt`: first, middle, last), then the final `samples.txt`."""
    steps = sorted(p for p in list_artifact_paths(client, pre, "samples") if p.endswith(".txt"))
    if len(steps) > keep:
        steps = [steps[round(i * (len(steps) - 1) / (keep - 1))] for i in range(keep)]
    final = [p for p in list_artifact_paths(client, pre) if p == SAMPLES_FILE]
    return steps + final


def _pretraining(client: MlflowClient, parent: Run, stages: dict[str, Run], out: Path, tmp: Path) -> list[Block]:
    pre = stages.get("pretrain")
    if pre is None:
        return []
    m = {k.removeprefix("pretrain."): v for k, v in parent.data.metrics.items() if k.startswith("pretrain.")}
    blocks: list[Block] = [Heading("Pretraining")]
    facts = [
        ("parameters", _num(m.get("params"))),
        ("steps", _num(m.get("steps"))),
        ("initial val loss", _num(m.get("initial_val_loss"))),
        ("final val loss", _num(m.get("final_val_loss"))),
        ("final train loss", _num(m.get("final_train_loss"))),
        ("tokens/s", _num(m.get("tokens_per_sec"))),
        ("MFU", f"{100 * m['mfu']:.2f}%" if "mfu" in m else ""),
        ("fit time s", _num(m.get("fit_seconds"))),
    ]
    blocks.append(Bullets([f"{k}: {v}" for k, v in facts if v]))
    per_step, unit = _tokens_per_step(client, parent, pre)
    series = []
    for key in ("train_loss", "val_loss"):
        steps, values = history(client, pre, key)
        if steps:
            series.append((key, [s * per_step for s in steps], values))
    if series:
        path = plots.line_plot(out / PLOTS_DIR / "loss.png", series, unit, "loss", "Pretraining loss")
        blocks.append(Image(str(path.relative_to(out)), f"train and val loss against {unit}"))
    keys = metric_keys(client, pre)
    lr_key = next((k for k in keys if k.startswith("lr")), None)
    if lr_key:
        steps, values = history(client, pre, lr_key)
        path = plots.line_plot(out / PLOTS_DIR / "lr.png", [(lr_key, steps, values)], "step", "lr", "Learning rate")
        blocks.append(Image(str(path.relative_to(out)), f"learning-rate schedule ({lr_key})"))
    for name in _sample_files(client, pre):
        local = download(client, pre, name, tmp / "samples")
        if local:
            blocks += [Para(f"Sampled continuations (`{name}`):"), Code(local.read_text())]
    curves = (
        ("zeroshot", "Zero-shot over pretraining", "zero-shot metrics"),
        ("probe", "Linear probes over pretraining", "dev accuracy of a linear probe of h(extract), frozen model"),
    )
    for prefix, title, caption in curves:
        series = []
        for key in (k for k in keys if k.startswith(prefix)):
            steps, values = history(client, pre, key)
            label = key.removeprefix(f"{prefix}/").removeprefix(f"{prefix}.")
            series.append((label, [s * per_step for s in steps], values))
        if series:
            path = plots.line_plot(out / PLOTS_DIR / f"{prefix}.png", series, unit, "score", title)
            blocks += [Heading(title, 3), Image(str(path.relative_to(out)), caption)]
    return blocks


def confusion(client: MlflowClient, run: Run, tmp: Path) -> tuple[list[str], list[list[int]]] | None:
    """(labels, counts[true][pred]) from the evaluate stage's confusion file, else from predictions.csv."""
    paths = list_artifact_paths(client, run)
    for name in paths:
        if "confusion" in name and name.endswith(".json"):
            local = download(client, run, name, tmp / run.info.run_id)
            if local:
                data = json.loads(local.read_text())
                return [str(x) for x in data["labels"]], [[int(c) for c in row] for row in data["matrix"]]
    for name in paths:
        if "confusion" in name and name.endswith(".csv"):
            local = download(client, run, name, tmp / run.info.run_id)
            if local:
                df = pd.read_csv(local, index_col=0)
                return [str(c) for c in df.columns], df.astype(int).values.tolist()
    if PREDICTIONS_FILE not in paths:
        return None
    local = download(client, run, PREDICTIONS_FILE, tmp / run.info.run_id)
    df = pd.read_csv(local, usecols=["label", "prediction"]) if local else None
    if df is None or df.empty or not all(pd.api.types.is_integer_dtype(df[c]) for c in df):
        return None  # regression tasks have no confusion matrix
    labels = sorted(set(df["label"]) | set(df["prediction"]))
    table = pd.crosstab(df["label"], df["prediction"]).reindex(index=labels, columns=labels, fill_value=0)
    return [str(x) for x in labels], table.values.tolist()


def _formatter(metric: str) -> Callable[[float | None], str]:
    """How a task metric is shown: accuracy-like ones (dev or `test_`) ×100, the others as numbers."""
    return _pct if metric.removeprefix("test_") in POINTS else _num


def _spread_cell(spread: Spread | None, show: Callable[[float | None], str]) -> str:
    """One value as is; several seeds as `mean ± sample std (n=N)`."""
    if spread is None:
        return ""
    if spread.n == 1:
        return show(spread.values[0])
    return f"{show(spread.mean)} ± {show(spread.std)} (n={spread.n})"


def _shown(task_arms: dict[str | None, dict[str, Spread]], ablations: list[str]) -> list[str]:
    """The task's metric names in the table: the recipe's, then any only an ablation has."""
    names = dict.fromkeys([*task_arms.get(None, {}), *(k for a in ablations for k in task_arms.get(a, {}))])
    return [k for k in names if k not in NOT_TASK_METRICS]


def _seed_table(grouped: dict[str, dict[str | None, dict[str, Spread]]], ablations: list[str]) -> list[Block]:
    """Each seed's value for every arm fine-tuned with several seeds (what the task table's mean ± std sums up)."""
    rows = [
        (task, metric, ablation or "recipe", spread)
        for task, arms in sorted(grouped.items())
        for metric in _shown(arms, ablations)
        for ablation in [None, *ablations]
        if (spread := arms.get(ablation, {}).get(metric)) is not None and spread.n > 1
    ]
    if not rows:
        return []
    seeds = sorted({s for *_, spread in rows for s in spread.seeds}, key=lambda s: (s is not None, s or 0))
    cells = []
    for task, metric, arm, spread in rows:
        show = _formatter(metric)
        by_seed = dict(zip(spread.seeds, spread.values, strict=True))
        cells.append([task, metric, arm, *(show(by_seed.get(s)) for s in seeds)])
    header = ["task", "metric", "arm", *(f"seed {s}" if s is not None else "run seed" for s in seeds)]
    return [Heading("Fine-tuning seeds", 3), Table(header, cells)]


def _over_pretraining(client: MlflowClient, parent: Run, stages: dict[str, Run], out: Path) -> list[Block]:
    """Each task's metric fine-tuned from each kept checkpoint (`step<N>` arms and the final weights), and the
    lm-eval metrics of those checkpoints, against pretraining tokens (GPT-1 Fig. 2, left)."""
    pre = stages.get("pretrain")
    try:
        final_step = int(parent.data.params["pretrain.max_steps"])
    except (KeyError, ValueError):
        return []
    per_step, unit = _tokens_per_step(client, parent, pre) if pre else (1.0, "step")
    series = []
    for task, arms in sorted(arm_spreads(parent.data.metrics).items()):
        steps = {int(a[4:]): m for a, m in arms.items() if a and STEP_ARM.fullmatch(a)}
        if not steps or None not in arms:
            continue
        metric = next((k for k in arms[None] if k not in ("majority_rate", "examples")), None)
        if metric is None:
            continue
        points = sorted(
            [*((s, m[metric].mean) for s, m in steps.items() if metric in m), (final_step, arms[None][metric].mean)]
        )
        series.append((f"{task} {metric}", [s * per_step for s, _ in points], [v for _, v in points]))
    for key in sorted(k for k in parent.data.metrics if k.startswith("lm_eval/")):
        steps_, values = history(client, parent, key)
        if len(steps_) > 1:
            series.append((key, [s * per_step for s in steps_], values))
    if not series:
        return []
    title = "Transfer over pretraining"
    path = plots.line_plot(out / PLOTS_DIR / "checkpoints.png", series, unit, "score", title)
    caption = "each task fine-tuned from each kept pretraining checkpoint (mean over seeds), and lm-eval metrics"
    return [Heading(title, 3), Image(str(path.relative_to(out)), caption)]


def _tasks(client: MlflowClient, parent: Run, stages: dict[str, Run], out: Path, tmp: Path) -> list[Block]:
    grouped = arm_spreads(parent.data.metrics)
    if not grouped:
        return []
    ablations = sorted({a for arms in grouped.values() for a in arms if a is not None})
    header = ["task", "metric", "this run", *ablations, "majority class", "GPT-1 paper"]
    rows = []
    for task, arms in sorted(grouped.items()):
        main = arms.get(None, {})
        majority = main.get("majority_rate")
        for metric in _shown(arms, ablations):
            paper = paper_number(task, metric)
            show = _formatter(metric)
            rows.append(
                [
                    task,
                    metric,
                    _spread_cell(main.get(metric), show),
                    *[_spread_cell(arms.get(a, {}).get(metric), show) for a in ablations],
                    _pct(majority.mean) if majority and metric == "accuracy" else "",
                    f"{paper}" if paper is not None else "—",
                ]
            )
    seed_blocks = _seed_table(grouped, ablations)
    tested = any(row[1].startswith("test_") for row in rows)
    blocks: list[Block] = [
        Heading("Tasks (dev split)"),
        Para(
            "Accuracy, F1 and correlations ×100. `this run`: the recipe; the columns after it: its ablations."
            + (" `test_` rows: the task's labelled test split, never used to pick weights." if tested else "")
            + (" Fine-tuned with several seeds: mean ± sample std (n seeds); each seed below." if seed_blocks else "")
        ),
        Table(header, rows),
        *seed_blocks,
    ]
    for task, arms in sorted(grouped.items()):
        first = next(iter(arms.get(None, {}).values()), None)  # the recipe's (first seed's) evaluate stage
        name = task if first is None or first.seeds[0] is None else f"{task}-seed{first.seeds[0]}"
        run = stages.get(f"evaluate[{name}]")
        cm = confusion(client, run, tmp) if run else None
        if cm:
            labels, matrix = cm
            path = plots.confusion_plot(out / PLOTS_DIR / f"confusion_{task}.png", matrix, labels, name)
            blocks.append(Image(str(path.relative_to(out)), f"{name}: confusion matrix (rows true, columns predicted)"))
    return blocks


def _claims(parent: Run) -> list[Block]:
    """The run's claims, each decided over its fine-tuning seeds (reports/claims.py); nothing without claims."""
    verdicts = run_verdicts(parent)
    if not verdicts:
        return []
    rows = [
        [
            v.text,
            v.metric,
            "" if math.isnan(v.diff) else f"{v.diff:+.3f}",
            interval_text(v),
            f"{v.n_left} vs {v.n_right}",
            v.verdict,
        ]
        for v in verdicts
    ]
    return [
        Heading("Claims"),
        Para(
            "What the config says the run shows, on each task's headline metric. Difference: mean(left) − mean(right)"
            f" over fine-tuning seeds, with its 95% confidence interval ({METHOD}: unequal variances, few seeds)."
            " `>`: supported when the interval lies above 0, refuted when it lies at or below 0; `>=`: supported"
            " when it lies at or above 0, refuted when below; `<`, `<=` mirror them; else undecided."
            " Fewer than 2 seeds per arm: undecided (run `gptflow run --until-decided` to add seeds)."
        ),
        Table(["claim", "metric", "difference", "95% CI", "seeds", "verdict"], rows),
    ]


def build_report(client: MlflowClient, run_id: str, out_dir: Path) -> ReportFiles:
    """Write report.md, report.html and plots/*.png for pipeline run `run_id` into `out_dir`."""
    try:
        parent = client.get_run(run_id)
    except MlflowException:
        raise ConfigError(f"report: no run {run_id!r} in the MLflow store {client.tracking_uri}") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    stages = stage_runs(client, parent)
    with tempfile.TemporaryDirectory(prefix="gptflow-report-") as tmp_name:
        tmp = Path(tmp_name)
        blocks = [
            *_header(client, parent, stages),
            *_data(client, parent, stages, tmp),
            *_pretraining(client, parent, stages, out_dir, tmp),
            *_over_pretraining(client, parent, stages, out_dir),
            *_tasks(client, parent, stages, out_dir, tmp),
            *_claims(parent),
        ]
    md, page = out_dir / MD_FILE, out_dir / HTML_FILE
    md.write_text(to_markdown(blocks))
    page.write_text(to_html(blocks, f"gptflow run {parent.info.run_name}", out_dir))
    return ReportFiles(md, page, [out_dir / b.path for b in blocks if isinstance(b, Image)])
