"""`gptflow sweep` end to end on the micro pipeline (slow): trials share stages, also when they run at
once; the sweep run holds the table and the best trial; a killed sweep's rerun reuses finished trials
and resumes the interrupted one from its checkpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from flows.sweep.plan import plan_sweep, with_grid
from gpt.config.loader import load_config
from tasks.plan import build_plan

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
MICRO = ROOT / "configs" / "micro.yaml"


def _env() -> dict[str, str]:
    drop = ("PREFECT_HOME", "PREFECT_RESULTS_LOCAL_STORAGE_PATH", "PREFECT_API_URL", "MLFLOW_TRACKING_URI")
    return {**{k: v for k, v in os.environ.items() if k not in drop}, "PYTHONPATH": str(ROOT)}


def _argv(ws: Path, sets: list[str], grid: list[str]) -> list[str]:
    argv = [sys.executable, "-m", "flows.cli", "sweep", "--config", str(MICRO), "--workspace", str(ws)]
    argv += [a for s in sets for a in ("--set", s)]
    return argv + [a for g in grid for a in ("--grid", g)]


def _sweep(ws: Path, sets: list[str], grid: list[str]) -> str:
    done = subprocess.run(_argv(ws, sets, grid), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return done.stdout


def _trial_runs(client: MlflowClient, sweep_id: str) -> list:
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids, f"tags.sweep = '{sweep_id}' and tags.`gptflow.kind` = 'pipeline'")


def _stage_outcomes(client: MlflowClient, run) -> dict[str, str]:
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    return {c.data.tags["stage"]: c.data.tags["cached"] for c in children}


def test_a_two_by_two_grid_computes_one_pretrain_with_trials_at_once(tmp_path):
    sets = ["finetune.tasks=[sst2]", "fanout.max_concurrency=2"]
    grid = ["finetune.lr=0.001,0.003", "finetune.aux_lm_weight=0,0.5"]
    out = _sweep(tmp_path, sets, grid)
    sweep_id = out.splitlines()[0].split(":")[0]
    assert sweep_id.startswith("sweep-") and out.strip().splitlines()[-1].startswith("best: trial ")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    trials = _trial_runs(client, sweep_id)
    assert sorted(int(r.data.tags["trial"]) for r in trials) == [1, 2, 3, 4]
    outcomes = [_stage_outcomes(client, r) for r in trials]
    assert [o["pretrain"] for o in outcomes].count("false") == 1  # computed once, cached in the other three
    assert [o["encode"] for o in outcomes].count("false") == 1
    assert all(o["finetune[sst2]"] == "false" for o in outcomes)  # every trial's own fine-tune
    ids = [e.experiment_id for e in client.search_experiments()]
    (sweep_run,) = client.search_runs(ids, f"tags.`gptflow.kind` = 'sweep' and tags.sweep = '{sweep_id}'")
    table = pd.read_csv(client.download_artifacts(sweep_run.info.run_id, "sweep.csv", str(tmp_path)))
    assert len(table) == 4 and set(table["run_id"]) == {r.info.run_id for r in trials}
    by_run = {r.info.run_id: r.data.metrics["sst2.accuracy"] for r in trials}
    assert list(table["sst2.accuracy"]) == [by_run[r] for r in table["run_id"]]
    best = int(sweep_run.data.tags["best_trial"])
    assert best == int(table.loc[table["sst2.accuracy"].idxmax(), "trial"])  # first of equals
    assert sweep_run.data.metrics["best.sst2.accuracy"] == table["sst2.accuracy"].max()
    assert f"best: trial {best} (" in out
    compare = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "compare",
            "--sweep",
            sweep_id,
            "--workspace",
            str(tmp_path),
            "--format",
            "csv",
        ],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert compare.returncode == 0 and compare.stdout.splitlines()[0].startswith(
        "trial,finetune.lr,finetune.aux_lm_weight"
    )


def test_a_killed_sweep_reruns_reusing_finished_trials_and_resuming_the_third(tmp_path):
    sets = ["finetune.tasks=[sst2]", "finetune.ckpt_every=1", "finetune.epochs=3", "finetune.max_examples=128"]
    grid = ["finetune.lr=0.001,0.002,0.003"]
    plan = plan_sweep(with_grid(load_config(MICRO, sets), grid))
    third = plan.trial_config(plan.source().next_batch(3)[2])
    (finetune,) = [s for s in build_plan(third, tmp_path / "artifacts") if s.kind == "finetune"]
    proc = subprocess.Popen(
        _argv(tmp_path, sets, grid), cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 900

    def checkpointed() -> bool:  # its key is known once pretrain is done
        ckpts = finetune.partial_dir / "checkpoints" if finetune.key_or_none() else None
        return ckpts is not None and ckpts.exists() and any(ckpts.glob("*.ckpt"))

    while not checkpointed():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"never saw trial 3 checkpoint:\n{proc.communicate()[0][-3000:]}")
        time.sleep(0.05)
    time.sleep(0.3)  # let the checkpoint write finish (a torn one is set aside and the previous one used)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not finetune.dir.exists()
    out = _sweep(tmp_path, sets, grid)
    lines = [line for line in out.splitlines() if line.startswith("trial ")]
    assert "0 stages computed" in lines[0] and "0 stages computed" in lines[1], out
    assert "0 stages computed" not in lines[2]
    manifest = json.loads((finetune.dir / "manifest.json").read_text())
    assert manifest["summary"]["resumed_from_step"] > 0
