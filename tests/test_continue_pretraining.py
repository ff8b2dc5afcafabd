"""Continuing a finished pretraining (`pretrain.resume_from`) with the extendable wsd schedule (slow): the
extension resumes at the finished run's cooldown start and ends with the weights of a run planned that long."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TRACKING_URI_AT_START
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from flows.cli import main
from gpt.config.fields import ConfigError
from gpt.config.loader import load_config
from gpt.train.optim import warmup_stable_decay
from tasks.pretrain import resume_point

ROOT = Path(__file__).resolve().parents[1]
MICRO = ROOT / "configs" / "micro.yaml"
WSD = ["pretrain.schedule=wsd", "pretrain.cooldown_steps=4", "pretrain.precision=32-true", "pretrain.ckpt_every=10"]


def test_wsd_is_constant_until_the_cooldown_whatever_the_length():
    short, long = warmup_stable_decay(5, 20, 4, 0.1), warmup_stable_decay(5, 40, 4, 0.1)
    assert [short(s) for s in range(16)] == [long(s) for s in range(16)]
    assert short(2) == pytest.approx(0.6) and short(16) == 1.0 and short(19) == pytest.approx(1 - 0.9 * 3 / 4)


def pretrain(ws: Path, *sets: str) -> Path:
    """`gptflow run` up to pretraining; returns the pretrain stage directory of this config."""
    import mlflow

    mlflow.set_tracking_uri(TRACKING_URI_AT_START)
    argv = ["run", "--config", str(MICRO), "--workspace", str(ws), "--only", "corpus,tokenizer,encode,pretrain"]
    assert main([*argv, *[a for s in sets for a in ("--set", s)]]) == 0
    newest = max(
        (p for p in (ws / "artifacts" / "pretrain").iterdir() if (p / "manifest.json").is_file()),
        key=lambda p: json.loads((p / "manifest.json").read_text())["completed_at"],
    )
    return newest


@pytest.mark.slow
def test_an_extended_wsd_run_is_the_longer_run(tmp_path):
    ws = tmp_path / "ws"
    short = pretrain(ws, *WSD, "pretrain.max_steps=20")
    assert json.loads((short / "checkpoints" / "stable.json").read_text()) == {"step": 16}
    extended = pretrain(ws, *WSD, "pretrain.max_steps=40", f"pretrain.resume_from={short}")
    planned_long = pretrain(ws, *WSD, "pretrain.max_steps=40")
    assert len({short.name, extended.name, planned_long.name}) == 3  # three keys: the extension is its own stage

    summary = json.loads((extended / "manifest.json").read_text())["summary"]
    assert summary["resumed_from_step"] == 16 and summary["steps"] == 40
    a, b = load_file(extended / "model" / "model.safetensors"), load_file(planned_long / "model" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)

    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")

    def curve(stage: Path) -> dict[int, float]:
        run = json.loads((stage / "manifest.json").read_text())["produced_by_run"]
        return {m.step: m.value for m in client.get_metric_history(run, "train_loss")}

    continued, whole = curve(extended), curve(planned_long)
    assert min(continued) > 16 and continued == {s: v for s, v in whole.items() if s in continued}


@pytest.mark.slow
def test_continuing_needs_more_steps_than_were_done(tmp_path):
    short = pretrain(tmp_path / "ws", "pretrain.max_steps=10", "pretrain.precision=32-true")
    cfg = load_config(MICRO, ["pretrain.max_steps=10", f"pretrain.resume_from={short}"])
    with pytest.raises(ConfigError, match=r"'pretrain.resume_from'.*already trained 10 steps"):
        resume_point(cfg.pretrain)
    cfg = load_config(MICRO, ["pretrain.max_steps=30", f"pretrain.resume_from={short}"])
    assert resume_point(cfg.pretrain).name == "last.ckpt"  # cosine: from the final state, lr re-warmed by the schedule
