"""Scale-out parity on CPU: DDP with 2 processes (gloo) trains exactly like 1 process with the same global batch.

The global batch of a step is the same set of windows whatever the device count (gpt/data/windows.py),
DDP averages gradients over ranks, and the logged train loss is the mean over ranks, so the loss
curves must agree to float tolerance (dropout 0). Each run goes through a script in a subprocess so
that Lightning's subprocess launcher can start rank 1 by re-running it.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gpt.train.pretrain import INITIAL_VAL_FILE, LAST_CKPT

ROOT = Path(__file__).resolve().parents[1]
BLOCK, GLOBAL_BATCH, STEPS = 16, 16, 12

# Train on the CPU with the given devices/strategy/batch size, logging to an existing MLflow run.
SCRIPT = """
import json, os, sys
from pathlib import Path
from gpt.model.config import ModelConfig
from gpt.train.config import PretrainConfig
from gpt.train.pretrain import pretrain
from tasks.mlflow_logger import stage_logger
a = json.loads(sys.argv[1])
gcfg = ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=a["block"], dropout=0.0, vocab_size=a["vocab"])
tcfg = PretrainConfig(max_steps=a["steps"], batch_size=a["batch"], tokens_per_step=a["tokens_per_step"], lr=3e-3,
                      warmup_steps=2, val_every=6, val_batches=2, ckpt_every=6, ckpt_keep=2, log_every=1,
                      accelerator="cpu", devices=str(a["devices"]), strategy=a["strategy"],
                      precision="32-true")  # fp32 parity; bf16 autocast rounds the ranks differently
_, result = pretrain(gcfg, tcfg, Path(a["shards"]), Path(a["ckpt"]), seed=0,
                     logger=stage_logger(a["tracking_uri"], a["run_id"]))
if os.environ.get("LOCAL_RANK", "0") == "0":
    Path(a["ckpt"], "result.json").write_text(json.dumps(result.__dict__))
"""


def _train(tmp_path: Path, shards, ckpt: Path, client, experiment_id: str, devices: int, **kw) -> tuple[dict, str]:
    """Run SCRIPT on `devices` CPU processes; returns rank 0's PretrainResult dict and the MLflow run id."""
    run_id = client.create_run(experiment_id).info.run_id
    shard_dir, vocab = shards
    args = {
        "block": BLOCK,
        "vocab": vocab,
        "steps": STEPS,
        "batch": GLOBAL_BATCH // devices,
        "tokens_per_step": GLOBAL_BATCH * BLOCK,
        "devices": devices,
        "strategy": "ddp" if devices > 1 else "auto",
        "shards": str(shard_dir),
        "ckpt": str(ckpt),
        "tracking_uri": client.tracking_uri,
        "run_id": run_id,
        **kw,
    }
    script = tmp_path / "train_script.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(
        [sys.executable, str(script), json.dumps(args)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((ckpt / "result.json").read_text()), run_id


def _curve(client, run_id: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, "train_loss"))


def test_device_placement_keeps_the_pretrain_cache_key(micro_config, tmp_path):
    """Devices/strategy/launcher spread the same computation: a rerun on more devices resumes the same stage."""
    from gpt.config.loader import load_config
    from tasks.plan import build_plan

    def key(*overrides: str) -> str:
        plan = build_plan(load_config(micro_config, list(overrides)), tmp_path)
        return next(s.section_digest() for s in plan if s.name == "pretrain")

    fixed = "pretrain.tokens_per_step=4096"  # 8 windows x 64 tokens x 8 ranks: the same global batch anywhere
    placed = ["pretrain.devices=4", "pretrain.strategy=fsdp", "pretrain.num_nodes=2", "pretrain.launcher=srun"]
    assert key(fixed, *placed) == key(fixed)
    assert key("pretrain.tokens_per_step=8192") != key(fixed)
    assert key("pretrain.devices=4") != key()  # without tokens_per_step the global batch grows with the ranks


def test_bad_placement_is_a_config_error_before_compute(micro_config):
    from gpt.config.fields import ConfigError
    from gpt.config.loader import load_config

    with pytest.raises(ConfigError, match=r"micro.yaml: config key 'pretrain.strategy' \(fsdp\) needs a GPU"):
        load_config(micro_config, ["pretrain.strategy=fsdp", "pretrain.accelerator=cpu"])
    with pytest.raises(ConfigError, match="'pretrain.strategy' must be auto, ddp"):
        load_config(micro_config, ["pretrain.strategy=horovod"])


@pytest.mark.parametrize(
    ("launcher", "message"),
    [
        ("no-such-launcher -n 2", "'pretrain.launcher': command 'no-such-launcher' not found"),
        ("/bin/false", "(exit 1)"),
    ],
)
def test_training_job_failures_are_one_line_stage_errors(micro_config, tmp_path, launcher, message):
    from gpt.config.loader import load_config
    from tasks.definition import StageEnv
    from tasks.plan import build_plan
    from tasks.pretrain_job import PretrainJob
    from tasks.pretrain_worker import run_worker
    from tasks.stage import StageError

    cfg = load_config(micro_config, [f"pretrain.launcher={launcher}"])
    (pretrain,) = [s for s in build_plan(cfg, tmp_path / "artifacts") if s.name == "pretrain"]
    with pytest.raises(StageError) as err:
        run_worker(
            PretrainJob(
                pretrain.section, tmp_path, tmp_path, tmp_path / "out", StageEnv("pretrain", None, None, tmp_path)
            )
        )
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.slow  # ~2 min: four training subprocesses (one of them 2-process DDP) and a fresh MLflow store
def test_ddp_two_processes_match_one_process_and_resume_on_one(shards, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("ddp", artifact_location=(tmp_path / "artifacts").as_uri())

    single, single_run = _train(tmp_path, shards, tmp_path / "one", client, exp, devices=1)
    ddp, ddp_run = _train(tmp_path, shards, tmp_path / "two", client, exp, devices=2)
    assert (single["world_size"], single["accumulate_grad_batches"]) == (1, 1)
    assert (ddp["world_size"], ddp["accumulate_grad_batches"]) == (2, 1)

    one, two = _curve(client, single_run), _curve(client, ddp_run)
    assert [s for s, _ in two] == [s for s, _ in one] == list(range(STEPS))  # rank 0 only: one value per step
    diff = max(abs(a - b) for (_, a), (_, b) in zip(one, two, strict=True))
    print(f"DDP parity: max |train_loss(1 proc) - train_loss(2 procs)| over {STEPS} steps = {diff:.3g}")
    assert diff < 1e-4
    assert one[-1][1] < one[0][1] - 0.5  # it did learn

    # 1 process accumulating 2 micro-batches of 8 per step: the same global batches, the same weights.
    accum, _ = _train(tmp_path, shards, tmp_path / "accum", client, exp, devices=1, batch=GLOBAL_BATCH // 2)
    assert (accum["world_size"], accum["accumulate_grad_batches"]) == (1, 2)
    weights = [torch.load(tmp_path / d / LAST_CKPT, weights_only=True)["state_dict"] for d in ("two", "accum")]
    weight_diff = max((weights[0][k] - weights[1][k]).abs().max().item() for k in weights[0])
    print(f"2 procs x 8 vs 1 proc x 8 x 2 accumulated: max |weight diff| after {STEPS} steps = {weight_diff:.3g}")
    assert weight_diff < 1e-4
    assert accum["final_val_loss"] == pytest.approx(ddp["final_val_loss"], abs=1e-4)

    # The 2-process checkpoint of step 6 resumes on 1 process and ends where the 1-process run ends.
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copy2(tmp_path / "two" / "step=6.ckpt", resumed / LAST_CKPT)
    shutil.copy2(tmp_path / "one" / INITIAL_VAL_FILE, resumed / INITIAL_VAL_FILE)
    cont, _ = _train(tmp_path, shards, resumed, client, exp, devices=1)
    assert cont["resumed_from_step"] == 6 and cont["steps"] == STEPS
    print(f"resume 2->1 procs: |final_val_loss diff| = {abs(cont['final_val_loss'] - single['final_val_loss']):.3g}")
    assert cont["final_val_loss"] == pytest.approx(single["final_val_loss"], abs=1e-4)


TORCHRUN = Path(sys.executable).with_name("torchrun")  # the venv's, which need not be on PATH
LAUNCHERS = {
    "lightning": [],  # Lightning's own launcher starts rank 1 by re-running the worker module
    "torchrun": ["--set", f"pretrain.launcher={TORCHRUN} --standalone --nproc-per-node=2 --no-python"],
}


@pytest.mark.slow  # ~1-2 min each: corpus..pretrain of the micro config with a 2-process training job
@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_pipeline_pretrains_on_two_processes_with_one_set_of_metrics(micro_config, tmp_path, launcher):
    from mlflow.tracking import MlflowClient

    from flows.cli import main

    ws = tmp_path / "ws"
    ddp = ["pretrain.accelerator=cpu", "pretrain.devices=2", "pretrain.strategy=ddp", "pretrain.max_steps=6"]
    sets = [a for kv in ddp for a in ("--set", kv)] + ["--set", "pretrain.val_every=3", "--set", "pretrain.log_every=1"]
    only = ["--only", "corpus,tokenizer,encode,pretrain"]
    assert main(["run", "--config", str(micro_config), "--workspace", str(ws), *only, *sets, *LAUNCHERS[launcher]]) == 0
    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    [run] = client.search_runs(
        [client.get_experiment_by_name("gptflow-micro").experiment_id], filter_string="tags.stage = 'pretrain'"
    )
    assert run.data.metrics["world_size"] == 2
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert sorted(m.step for m in history) == list(range(6))  # rank 0 only: one value per step
    [stage_dir] = (ws / "artifacts" / "pretrain").glob("*/manifest.json")
    assert "model/model.safetensors" in json.loads(stage_dir.read_text())["files"]
