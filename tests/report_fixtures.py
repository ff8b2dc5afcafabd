"""Pipeline runs recorded straight into a real MLflow store (no training), for fast report/compare/registry tests.

Each run has what a real `gptflow run` leaves: a parent run (flattened config as params, tags,
metrics copied up), one child run per stage with the same tags, pretraining metric histories, and
real artifacts (a trained BPE tokenizer, a tiny GPT, a task model, predictions). The slow tests in
test_report.py check the same things on a real pipeline run.
"""

from __future__ import annotations

import time
from pathlib import Path

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from gpt.config.loader import load_config

ROOT = Path(__file__).resolve().parents[1]
MICRO = ROOT / "configs" / "micro.yaml"
# label,prediction rows whose confusion matrix is [[1, 1], [0, 2]]
PREDICTIONS = "label,prediction,text\n0,0,a\n0,1,b\n1,1,c\n1,1,d\n"
TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer. " * 40


def make_tokenizer(out: Path) -> Path:
    """A real byte-level BPE (300 ranks) trained on a short text and saved like the tokenizer stage does."""
    from gpt.data.tokenizer import SPLIT_PATTERN, build_encoding, save_tokenizer, train_bpe

    ranks = train_bpe([TEXT], 300)
    save_tokenizer(build_encoding(ranks, SPLIT_PATTERN), ranks, out)
    return out


def make_models(out: Path, tok_dir: Path) -> tuple[Path, Path]:
    """(pretrained model dir, task model dir) of a tiny random GPT; the model dir carries the tokenizer files."""
    import shutil

    from gpt.data.tokenizer import load_tokenizer
    from gpt.model.config import ModelConfig
    from gpt.model.transformer import GPT, save_model
    from gpt.train.finetune import TaskModel, save_task_model

    enc = load_tokenizer(tok_dir)
    gpt = GPT(ModelConfig(vocab_size=enc.n_vocab, n_layer=1, n_head=2, n_embd=32, block_size=32, dropout=0.0))
    model_dir, task_dir = out / "model", out / "task_model"
    save_model(gpt, model_dir)
    for f in tok_dir.iterdir():
        shutil.copy2(f, model_dir / f.name)
    save_task_model(TaskModel(gpt, "classification", 2, 0.0), task_dir)
    return model_dir, task_dir


def _metrics(client: MlflowClient, run_id: str, values: dict[str, float], step: int = 0) -> None:
    ts = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), ts, step) for k, v in values.items()])


def record_run(
    client: MlflowClient,
    experiment: str,
    assets: Path,
    overrides: list[str] | None = None,
    val_losses: tuple[float, ...] = (6.0, 5.5, 5.2),
    tasks: dict[str, float] | None = None,
    ablations: dict[str, float] | None = None,
) -> str:
    """Record one pipeline run (micro config + overrides) with its stage runs; returns the parent run id.

    `tasks`: variant -> accuracy of the finetune/evaluate stages recorded; `ablations`: variant ->
    accuracy copied onto the parent only (default: `<task>-no_pretraining` 0.55 for each task).
    """
    tasks = {"sst2": 0.75} if tasks is None else tasks
    ablations = {f"{task}-no_pretraining": 0.55 for task in tasks} if ablations is None else ablations
    cfg = load_config(MICRO, overrides)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    tags = {
        "gptflow.kind": "pipeline",
        "git_commit": "abc123",
        "config_hash": cfg.digest(),
        "gptflow.config_file": str(MICRO),
    }
    parent = client.create_run(exp_id, run_name=f"run-{len(client.search_runs([exp_id]))}", tags=tags).info.run_id
    client.log_batch(parent, params=[Param(k, str(v)) for k, v in cfg.flat().items()])

    def child(stage: str, kind: str, task: str | None = None) -> str:
        t = {
            "mlflow.parentRunId": parent,
            "stage": stage,
            "stage_kind": kind,
            "cache_key": f"{kind}0000",
            "cached": "false",
        }
        if task:
            t["task"] = task
        return client.create_run(exp_id, run_name=stage, tags={**t, "gptflow.kind": "stage"}).info.run_id

    finished = []
    run = child("corpus", "corpus")
    _metrics(client, parent, {"corpus.documents": 1, "corpus.bytes": len(TEXT)})
    finished.append(run)
    run = child("tokenizer", "tokenizer")
    client.log_artifacts(run, str(assets / "tokenizer"))
    _metrics(client, parent, {"tokenizer.vocab_size": 304})
    finished.append(run)
    run = child("encode", "encode")
    _metrics(client, parent, {"encode.train_tokens": 1800, "encode.val_tokens": 200, "encode.val_bytes_per_token": 1.9})
    finished.append(run)
    pre = child("pretrain", "pretrain")
    for i, v in enumerate(val_losses):
        step = 20 * i
        _metrics(
            client, pre, {"val_loss": v, "train_loss": v - 0.1, "lr-AdamW/pg1": 1e-3 * (1 - i / len(val_losses))}, step
        )
        _metrics(client, pre, {"zeroshot/sst2": 0.5 + 0.02 * i, "train/lengths": (step + 1) * 512}, step)
        client.log_text(pre, f"--- prompt: 'The '\nThe step {step} text\n", f"samples/step_{step:07d}.txt")
    client.log_text(pre, "--- prompt: 'The '\nThe final text\n", "samples.txt")
    client.log_artifacts(pre, str(assets / "model"), "model")
    final = {"final_val_loss": val_losses[-1], "tokens_per_sec": 2500.0, "mfu": 0.02, "params": 1e5, "steps": 40}
    _metrics(client, pre, final)
    _metrics(client, parent, {f"pretrain.{k}": v for k, v in final.items()})
    finished.append(pre)
    for task, acc in tasks.items():
        finished.append(child(f"finetune[{task}]", "finetune", task))
        ev = child(f"evaluate[{task}]", "evaluate", task)
        client.log_text(ev, PREDICTIONS, "predictions.csv")
        _metrics(client, ev, {"accuracy": acc})
        _metrics(client, parent, {f"{task}.accuracy": acc, f"{task}.majority_rate": 0.5})
        finished.append(ev)
    if ablations:
        _metrics(client, parent, {f"{variant}.accuracy": acc for variant, acc in ablations.items()})
    for run in finished:
        client.set_terminated(run, "FINISHED")
    client.set_terminated(child("report", "report"), "FINISHED")
    client.set_terminated(parent, "FINISHED")
    return parent


def record_in_new_workspace(
    tmp_path_factory, experiment: str, overrides: list[str], **run: dict[str, float]
) -> tuple[Path, MlflowClient, str]:
    """A fresh workspace whose MLflow store holds one `record_run` (tokenizer and models made for it):
    (workspace, client, parent run id)."""
    ws = tmp_path_factory.mktemp("ws")
    assets = tmp_path_factory.mktemp("assets")
    make_tokenizer(assets / "tokenizer")
    make_models(assets, assets / "tokenizer")
    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    return ws, client, record_run(client, experiment, assets, overrides, **run)
