"""Two `gptflow run` processes on one workspace and config, plus a third with another config, at once:
all finish, each shared stage is computed exactly once, and every artifact matches its manifest."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from gpt.config.loader import load_config
from tasks.plan import build_plan

ROOT = Path(__file__).resolve().parents[1]
MICRO = ROOT / "configs" / "micro.yaml"
SAME = ["--set", "finetune.tasks=[sst2]"]
OTHER = [*SAME, "--set", "pretrain.lr=0.002"]  # shares corpus, tokenizer and encode with SAME


def start(ws: Path, *sets: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "run", "--config", str(MICRO), "--workspace", str(ws), *sets],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


@pytest.mark.slow
def test_concurrent_runs_share_stages_and_each_stage_is_computed_once(tmp_path):
    procs = [start(tmp_path, *SAME), start(tmp_path, *SAME), start(tmp_path, *OTHER)]
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("gptflow-micro")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`gptflow.kind` = 'stage'", max_results=1000)
    computed: dict[str, int] = {}
    reports = 0
    for r in runs:
        assert r.info.status == "FINISHED"
        if r.data.tags["cached"] == "false":
            computed[r.data.tags["cache_key"]] = computed.get(r.data.tags["cache_key"], 0) + 1
            reports += r.data.tags["stage"] == "report"
    assert reports == 3  # each run writes a report card of its own
    plans = [build_plan(load_config(MICRO, s[1::2]), tmp_path / "artifacts") for s in (SAME, OTHER)]
    keys = {s.key: s for plan in plans for s in plan if not s.definition.per_run}
    assert {k: computed.get(k, 0) for k in keys} == dict.fromkeys(keys, 1)
    for stage in keys.values():
        assert stage.verify(deep=True) == [], stage.name
    first = {t.key for t in plans[0]}
    shared = {s.name for s in plans[1] if s.key in keys and s.key in first}  # the report: each run its own
    assert shared == {"corpus", "tokenizer", "encode"}
    assert not list((tmp_path / "artifacts").glob("*/*.partial"))
