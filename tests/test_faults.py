"""Stage directories, locks and run bookkeeping survive kills, leftovers and tampering (fast unit tests)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from procs import alive, children

from gpt.config.fields import ConfigError
from gpt.config.loader import load_config
from tasks.locks import file_lock
from tasks.plan import build_plan, check_stages, describe, select
from tasks.stage import StageError, commit, user_error, verify_dir, why_stale

ROOT = Path(__file__).resolve().parents[1]


def plan_for(tmp_path: Path, *overrides: str):
    return {s.name: s for s in build_plan(load_config(None, list(overrides)), tmp_path)}


def complete_upstream(stages: dict, name: str) -> None:
    """Commit every stage before `name` in plan order (a file each), so that its key resolves."""
    for s in stages.values():
        if s.name == name:
            return
        if not s.is_done():
            complete(s, {"out.txt": s.name.encode()})


def complete(stage, files: dict[str, bytes]) -> dict:
    out = stage.prepare_partial()
    for rel, data in files.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
    return commit(stage, {"n": 1.0}, {}, "run-1")


def test_commit_records_hash_and_size_and_renames_atomically(tmp_path):
    corpus = plan_for(tmp_path)["corpus"]
    manifest = complete(corpus, {"corpus.jsonl": b"abc", "sub/x.bin": b"\0" * 10})
    assert not corpus.partial_dir.exists() and corpus.is_done() and corpus.status() == "done"
    assert manifest["files"]["sub/x.bin"]["bytes"] == 10
    assert manifest["files"]["corpus.jsonl"]["sha256"].startswith("ba7816bf")  # sha256("abc")
    assert json.loads(corpus.latest_path.read_text())["key"] == corpus.key


def test_verify_catches_missing_resized_and_same_size_changes(tmp_path):
    corpus = plan_for(tmp_path)["corpus"]
    complete(corpus, {"corpus.jsonl": b"abc", "other.txt": b"xyz"})
    (corpus.dir / "corpus.jsonl").write_bytes(b"abd")  # same size: only sha256 sees it
    assert corpus.is_done() and corpus.verify() == []
    assert corpus.verify(deep=True) == ["corpus.jsonl does not match its sha256 in manifest.json"]
    (corpus.dir / "other.txt").write_bytes(b"xy")
    assert corpus.status() == "corrupt" and "other.txt has 2 bytes" in corpus.verify()[0]
    (corpus.dir / "other.txt").unlink()
    assert corpus.verify() == ["other.txt is missing"]


def test_corrupt_stage_is_refused_before_compute_and_force_rebuilds(tmp_path):
    stages = plan_for(tmp_path)
    complete(stages["corpus"], {"corpus.jsonl": b"abc"})
    (stages["corpus"].dir / "corpus.jsonl").write_bytes(b"")
    plan = list(stages.values())
    with pytest.raises(
        StageError, match=r"stage 'corpus' output .* is corrupt: corpus.jsonl has 0 bytes.*--rebuild corpus"
    ):
        check_stages(plan, *select(plan, None, None, None))
    check_stages(plan, *select(plan, None, None, ["corpus"]))  # forced: it will be rebuilt
    _, rebuilt = select(plan, None, None, None, ["corpus"])
    assert rebuilt == {"corpus"}  # --rebuild recomputes just that stage; the rest follows its outputs
    check_stages(plan, plan, rebuilt)
    assert (stages["corpus"].dir / "corpus.jsonl").exists()  # refusing deleted nothing


def test_stage_dir_from_another_config_is_not_done(tmp_path):
    a = plan_for(tmp_path, "corpus.max_bytes=1000")["corpus"]
    b = plan_for(tmp_path, "corpus.max_bytes=2000")["corpus"]
    complete(a, {"corpus.jsonl": b"abc"})
    os.rename(a.dir, b.dir)  # someone copies A's output under B's key
    assert not b.is_done() and "belongs to key" in verify_dir(b.dir)[0]


def test_stale_partial_dir_is_cleared_for_data_stages_and_kept_for_training(tmp_path):
    stages = plan_for(tmp_path)
    complete_upstream(stages, "pretrain")
    stages["corpus"] = plan_for(tmp_path, "corpus.max_bytes=5")["corpus"]  # not done: a partial of a data stage
    for name in ("corpus", "pretrain"):
        stages[name].partial_dir.mkdir(parents=True)
        (stages[name].partial_dir / "leftover").write_text("x")
    assert not (stages["corpus"].prepare_partial() / "leftover").exists()
    assert (stages["pretrain"].prepare_partial() / "leftover").exists()  # checkpoints to resume from


def test_stages_says_why(tmp_path):
    stages = plan_for(tmp_path, "finetune.tasks=[sst2]")
    for s in stages.values():
        complete(s, {"out.txt": s.name.encode()})
    changed = plan_for(tmp_path, "finetune.tasks=[sst2]", "finetune.lr=0.5")
    plan = list(changed.values())
    rows = {r["stage"]: r for r in describe(plan, *select(plan, None, None, None))}
    assert rows["pretrain"]["status"] == "done"
    assert rows["finetune[sst2]"]["status"] == "stale" and "lr: 6.25e-05 -> 0.5" in rows["finetune[sst2]"]["why"]
    assert rows["evaluate[sst2]"]["status"] == "waiting"  # its key hashes the new weights, not computed yet
    assert rows["evaluate[sst2]"]["why"] == "runs after finetune[sst2] (its key hashes their outputs)"
    changed["finetune[sst2]"].dir.mkdir(parents=True)  # the new fine-tune came out byte-identical to the old one
    old_manifest = stages["finetune[sst2]"].manifest()
    (changed["finetune[sst2]"].dir / "manifest.json").write_text(
        json.dumps({**old_manifest, "key": changed["finetune[sst2]"].key})
    )
    rows = {r["stage"]: r for r in describe(plan, *select(plan, None, None, None))}
    assert rows["evaluate[sst2]"]["status"] == "done"  # early cutoff: the evaluation is reused
    forced = {r["stage"]: r for r in describe(plan, *select(plan, None, None, ["pretrain"]))}
    assert forced["pretrain"]["status"] == "to run" and "forced" in forced["pretrain"]["why"]
    assert forced["encode"]["status"] == "done"
    assert why_stale(plan_for(tmp_path / "other")["corpus"]) == "never completed"


def test_flock_is_released_when_its_holder_is_sigkilled(tmp_path):
    lock = tmp_path / "k.lock"
    script = (
        "import pathlib, time\n"
        "from tasks.locks import file_lock\n"
        f"with file_lock(pathlib.Path({str(lock)!r})):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(60)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    waited = []
    holder_pid = holder.pid
    t0 = time.monotonic()

    def kill_holder() -> None:
        waited.append(True)
        os.kill(holder_pid, signal.SIGKILL)

    with file_lock(lock, on_wait=kill_holder):
        pass
    holder.wait()
    assert waited == [True] and time.monotonic() - t0 < 10


def test_user_errors_are_one_liners_and_bugs_are_not():
    assert user_error(ConfigError("config key 'x'")) == "config key 'x'"
    assert user_error(OSError(28, "No space left on device", "/ws/a")) == "No space left on device: /ws/a"
    assert user_error(PermissionError(13, "Permission denied", "/ro")) == "Permission denied: /ro"
    assert user_error(KeyError("bug")) is None and user_error(ValueError("bug")) is None


def test_server_child_dies_with_its_parent(tmp_path):
    """PR_SET_PDEATHSIG: the Prefect API server never outlives a SIGKILLed gptflow."""
    script = (
        "import os, subprocess, time\n"
        "from tasks.child_process import die_with_parent\n"
        "p = subprocess.Popen(['sleep', '60'], preexec_fn=die_with_parent(os.getpid()))\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and Path(f"/proc/{child}").exists():
        state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "Z":  # dead, waiting for init to reap it
            break
        time.sleep(0.05)
    else:
        assert not Path(f"/proc/{child}").exists()


def test_orphaned_runs_are_closed_and_linked(tmp_path):
    from mlflow.tracking import MlflowClient

    from tasks.tracking import Tracker, owner_tags

    dead = subprocess.Popen(["true"])
    dead.wait()
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "exp", (tmp_path / "art").as_uri())
    client: MlflowClient = tracker.client
    mine = owner_tags()
    gone = {**mine, "gptflow.pid": str(dead.pid), "gptflow.pid_start": "1"}
    orphan = client.create_run(tracker.experiment_id, tags={**gone, "gptflow.kind": "pipeline"}).info.run_id
    child = client.create_run(tracker.experiment_id, tags={**gone, "mlflow.parentRunId": orphan}).info.run_id
    alive = client.create_run(tracker.experiment_id, tags={**mine, "gptflow.kind": "pipeline"}).info.run_id
    closed = tracker.close_orphans()
    assert [r.info.run_id for r in closed] == [orphan]
    assert client.get_run(orphan).info.status == "FAILED" and client.get_run(child).info.status == "FAILED"
    assert client.get_run(alive).info.status == "RUNNING"
    assert "is gone" in client.get_run(orphan).data.tags["gptflow.ended_by"]


# --- kill tests: SIGKILL `gptflow run` inside a stage, rerun, compare with an uninterrupted run ---

KILL_SETS = [
    "corpus.source=gutenberg",  # a few MB, so the data stages last long enough to be caught
    "corpus.max_bytes=8000000",
    "pretrain.max_steps=60",
    "pretrain.ckpt_every=20",
    "finetune.tasks=[sst2]",
    "finetune.epochs=2",
    "finetune.max_examples=320",  # 20 steps per epoch (batch 16)
    "finetune.ckpt_every=5",  # mid-epoch checkpoints to resume from
]


def gptflow_run(ws: Path) -> subprocess.Popen:
    argv = [sys.executable, "-m", "flows.cli", "run", "--config", str(ROOT / "configs" / "micro.yaml")]
    argv += ["--workspace", str(ws), *[a for s in KILL_SETS for a in ("--set", s)]]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_LOGGING_LEVEL": "INFO"}
    return subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def summaries(ws: Path) -> dict[str, dict]:
    return {
        m["stage"]: m["summary"]
        for m in (json.loads(p.read_text()) for p in (ws / "artifacts").glob("*/*/manifest.json"))
    }






def stable_file(pattern: str, ws: Path) -> bool:
    """A file matching `pattern` exists and its size did not change over 50 ms (not mid-write)."""
    found = list(ws.glob(pattern))
    if not found:
        return False
    size = found[0].stat().st_size
    time.sleep(0.05)
    return found[0].exists() and found[0].stat().st_size == size > 0


KILL_POINTS = {
    "corpus": lambda ws: bool(list(ws.glob("artifacts/corpus/*.partial"))),
    "encode": lambda ws: bool(list(ws.glob("artifacts/encode/*.partial"))),
    "pretrain": lambda ws: stable_file("artifacts/pretrain/*.partial/checkpoints/last.ckpt", ws),
    "finetune": lambda ws: stable_file("artifacts/finetune/*.partial/checkpoints/last.ckpt", ws),
}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[str, dict]:
    ws = tmp_path_factory.mktemp("reference")
    proc = gptflow_run(ws)
    out = proc.communicate(timeout=900)[0]
    assert proc.returncode == 0, out[-3000:]
    return summaries(ws)


@pytest.mark.slow
@pytest.mark.parametrize("stage", list(KILL_POINTS))
def test_sigkill_during_a_stage_then_rerun_loses_nothing(stage, uninterrupted, tmp_path):
    proc = gptflow_run(tmp_path)
    deadline = time.monotonic() + 600
    while not KILL_POINTS[stage](tmp_path):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"never caught {stage} running:\n{proc.communicate()[0][-3000:]}")
        time.sleep(0.01)
    servers = children(proc.pid)
    proc.kill()
    proc.communicate()
    checkpoints = list(tmp_path.glob(f"artifacts/{stage}/*.partial/checkpoints/last.ckpt"))
    ckpt_step = torch.load(checkpoints[0], weights_only=True)["global_step"] if checkpoints else 0
    done_before = {str(p): p.stat().st_mtime_ns for p in (tmp_path / "artifacts").glob("*/*/manifest.json")}
    assert all(f"/{stage}/" not in p for p in done_before)  # killed inside `stage`, before it completed
    time.sleep(1)
    assert [p for p in servers if alive(p)] == []  # no orphaned Prefect API server

    rerun = gptflow_run(tmp_path)
    out = rerun.communicate(timeout=900)[0]
    assert rerun.returncode == 0, out[-3000:]
    for path, mtime in done_before.items():  # completed stages were reused, not recomputed
        assert Path(path).stat().st_mtime_ns == mtime, path
    assert not list((tmp_path / "artifacts").glob("*/*.partial"))
    after = summaries(tmp_path)
    if stage == "pretrain":
        assert after["pretrain"]["resumed_from_step"] >= 20
    if stage == "finetune":  # resumed from the mid-stage checkpoint, not from step 0
        assert ckpt_step >= 5
        assert after["finetune[sst2]"]["resumed_from_step"] == ckpt_step
    assert after["pretrain"] == {**uninterrupted["pretrain"], **{k: after["pretrain"][k] for k in TIMING_KEYS}}
    assert after["evaluate[sst2]"] == uninterrupted["evaluate[sst2]"]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("gptflow-micro").experiment_id])
    killed = [r for r in runs if r.data.tags.get("gptflow.kind") == "pipeline" and r.info.status == "FAILED"]
    assert len(killed) == 1 and "is gone" in killed[0].data.tags["gptflow.ended_by"]
    assert not [r for r in runs if r.info.status == "RUNNING"]
    resumed = [r for r in runs if r.data.tags.get("resumes") == killed[0].info.run_id]
    assert len(resumed) == 1 and resumed[0].info.status == "FINISHED"


TIMING_KEYS = ("tokens_per_sec", "mfu", "fit_seconds", "resumed_from_step")


def test_broken_checkpoint_is_set_aside(tmp_path):
    stages = plan_for(tmp_path)
    complete_upstream(stages, "pretrain")
    pretrain = stages["pretrain"]
    ckpts = pretrain.prepare_partial() / "checkpoints"
    ckpts.mkdir()
    (ckpts / "last.ckpt").write_bytes(b"PK\x03\x04 truncated mid-save")
    import torch

    torch.save({"global_step": 3}, ckpts / "good.ckpt")
    (aside,) = pretrain.set_aside_broken_checkpoints()
    assert aside == pretrain.partial_dir.parent / f"{pretrain.key}.last.ckpt.corrupt" and aside.is_file()
    assert not (ckpts / "last.ckpt").exists() and (ckpts / "good.ckpt").exists()


@pytest.mark.slow
def test_sigterm_closes_runs_as_killed(tmp_path):
    from mlflow.tracking import MlflowClient

    proc = gptflow_run(tmp_path)
    deadline = time.monotonic() + 600
    while not list(tmp_path.glob("artifacts/pretrain/*.partial")):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(1)
    proc.terminate()
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode != 0
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("gptflow-micro").experiment_id])
    status = {r.data.tags.get("stage", "parent"): r.info.status for r in runs}
    assert status["parent"] == "KILLED" and status["pretrain"] == "KILLED", (status, out[-2000:])
    assert status["encode"] == "FINISHED"


def test_stages_verify_rehashes(tmp_path):
    stages = plan_for(tmp_path)
    complete(stages["corpus"], {"corpus.jsonl": b"abc"})
    (stages["corpus"].dir / "corpus.jsonl").write_bytes(b"abd")  # same size, other content
    plan = list(stages.values())
    quick = {r["stage"]: r for r in describe(plan, *select(plan, ["corpus"], None, None))}
    deep = {r["stage"]: r for r in describe(plan, *select(plan, ["corpus"], None, None), deep=True)}
    assert quick["corpus"]["status"] == "done" and quick["tokenizer"]["status"] == "skipped"
    assert deep["corpus"]["status"] == "corrupt" and "sha256" in deep["corpus"]["why"]
