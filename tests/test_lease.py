"""Leases in the shared store (tasks/lease.py): two machines sharing a `--store` compute a stage once.

Unit tests drive `StoreLease` / `acquire` on a `file://` store (and one on moto's S3 server); the
slow tests run the real pipeline in two workspaces ("machines") on one store: started together,
every stage is computed once in total; a holder SIGKILLed mid-pretraining is taken over, and the
new holder resumes from the checkpoints the dead one uploaded.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

from tasks.definition import STOP_FILE
from tasks.lease import LEASE_TTL_ENV, LeaseLost, StoreLease, acquire, lease_ttl
from tasks.remote_store import RemoteStore
from tasks.stage import MANIFEST, Stage
from tasks.stages import BY_KIND

ROOT = Path(__file__).resolve().parents[1]
MICRO = ROOT / "configs" / "micro.yaml"


def make_stage(workspace: Path, kind: str = "pretrain") -> Stage:
    """A stage keyed like a real one; the same arguments give the same key in any workspace."""
    return Stage(kind, BY_KIND[kind], {"max_steps": 40}, [], workspace / "artifacts")


def machine(tmp_path: Path, name: str, ttl: float = 2.0) -> tuple[RemoteStore, Stage, StoreLease]:
    """One "machine": its own workspace, the shared store, and a lease object for the stage."""
    store = RemoteStore((tmp_path / "store").as_uri())
    stage = make_stage(tmp_path / name)
    return store, stage, StoreLease(store, stage, ttl=ttl)


def fake_checkpoint(path: Path, payload: bytes = b"weights") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", payload)
    return path


def test_first_writer_takes_the_lease_and_the_second_waits(tmp_path):
    store, stage, _ = machine(tmp_path, "a")
    messages: list[str] = []
    a = acquire(store, stage, pull=False, log=messages.append)
    assert a is not None and a.holds()
    record = json.loads((tmp_path / "store" / "leases" / "pretrain" / f"{stage.key}.json").read_text())
    assert record["owner"] == a.owner and record["pid"] == os.getpid() and record["stage"] == "pretrain"

    got: list[StoreLease | None] = []
    b_store, b_stage, _ = machine(tmp_path, "b")
    waiter = threading.Thread(target=lambda: got.append(acquire(b_store, b_stage, pull=False, log=messages.append)))
    waiter.start()
    time.sleep(1.5)
    assert not got, "b took a lease a holds"
    assert any("is computing it" in m and "waiting for its result" in m for m in messages), messages
    a.release()  # a finished: its record goes, b takes the lease
    waiter.join(timeout=10)
    assert got and got[0] is not None and got[0].holds() and not a.holds()


def test_a_lease_without_heartbeats_expires_after_its_ttl(tmp_path, monkeypatch):
    store, stage, a = machine(tmp_path, "a", ttl=1.0)
    assert a.try_take()
    monkeypatch.setattr("tasks.lease.pid_alive", lambda pid: True)  # a live process on another host, say
    messages: list[str] = []
    t0 = time.monotonic()
    b = acquire(store, make_stage(tmp_path / "b"), pull=False, log=messages.append, poll=0.1)
    assert b is not None and b.holds() and not a.holds()
    assert time.monotonic() - t0 >= 1.0
    assert any("expired; taking over" in m for m in messages), messages


def test_a_lease_whose_holder_process_is_gone_is_taken_at_once(tmp_path):
    store, stage, a = machine(tmp_path, "a", ttl=600.0)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = tmp_path / "store" / "leases" / "pretrain" / f"{stage.key}.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"owner": "x", "host": a.host, "pid": dead.pid, "beats": 0, "ttl_s": 600.0}))
    t0 = time.monotonic()
    b = acquire(store, make_stage(tmp_path / "b"), pull=False, log=lambda m: None)
    assert b is not None and b.holds() and time.monotonic() - t0 < 10


def test_heartbeats_keep_a_lease_alive_past_its_ttl(tmp_path):
    store, stage, a = machine(tmp_path, "a", ttl=1.0)
    assert a.try_take()
    partial = stage.prepare_partial()
    got: list[StoreLease | None] = []
    with a.kept(partial, lambda m: None, lambda m: None):
        waiter = threading.Thread(
            target=lambda: got.append(acquire(store, make_stage(tmp_path / "b"), pull=False, log=lambda m: None))
        )
        waiter.daemon = True
        waiter.start()
        time.sleep(3.0)  # three ttls: without the beats b would have taken over
        assert not got and a.holds() and a.beats >= 4
    a.release()
    waiter.join(timeout=10)
    assert got and got[0] is not None


def test_a_holder_that_finds_another_owner_stops_and_never_commits(tmp_path):
    store, stage, a = machine(tmp_path, "a", ttl=1.0)
    assert a.try_take()
    partial = stage.prepare_partial()
    warnings: list[str] = []
    with a.kept(partial, lambda m: None, warnings.append):
        _, _, b = machine(tmp_path, "b", ttl=1.0)
        b._write()  # another machine wrote over a's lease (a race that slipped through)
        deadline = time.monotonic() + 5
        while not a.lost.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)
    assert a.lost.is_set() and (partial / STOP_FILE).exists()  # the training callback stops at its next step
    assert any("lost its lease" in w for w in warnings), warnings
    with pytest.raises(LeaseLost, match="another machine took over its lease"):
        a.check()
    a.release()
    assert b.holds()  # the new holder's record is left alone
    assert not (stage.prepare_partial() / STOP_FILE).exists()  # the next attempt starts without the stop


def test_intact_checkpoints_are_uploaded_and_restored_on_another_machine(tmp_path):
    store, stage, a = machine(tmp_path, "a")
    partial = stage.prepare_partial()
    fake_checkpoint(partial / "checkpoints" / "last.ckpt", b"step 20")
    (partial / "checkpoints" / "step=10.ckpt").write_bytes(b"PK\x03\x04 torn")  # a save in progress
    assert a.upload_checkpoints(partial) == ["checkpoints/last.ckpt"]
    assert a.upload_checkpoints(partial) == []  # unchanged: not sent again

    _, b_stage, b = machine(tmp_path, "b")
    b_partial = b_stage.prepare_partial()
    assert b.restore_checkpoints(b_partial) == ["checkpoints/last.ckpt"]
    restored = (b_partial / "checkpoints" / "last.ckpt").read_bytes()
    assert restored == (partial / "checkpoints" / "last.ckpt").read_bytes()
    assert b.restore_checkpoints(b_partial) == []  # it has its own now: never overwritten
    a.clear_checkpoints()
    assert not (tmp_path / "store" / "partial" / "pretrain" / stage.key).exists()


def test_acquire_downloads_a_stage_that_is_in_the_store(tmp_path):
    from tasks.stage import commit

    store, stage, _ = machine(tmp_path, "a")
    out = stage.prepare_partial()
    (out / "model.safetensors").write_bytes(b"w" * 100)
    commit(stage, {}, {}, "run-a")
    store.push(stage)
    b_stage = make_stage(tmp_path / "b")
    assert acquire(store, b_stage, pull=True, log=lambda m: None) is None
    assert b_stage.is_done() and not (tmp_path / "store" / "leases").exists()


def test_lease_ttl_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(LEASE_TTL_ENV, "7.5")
    assert lease_ttl() == 7.5
    monkeypatch.setenv(LEASE_TTL_ENV, "soon")
    from gpt.config.fields import ConfigError

    with pytest.raises(ConfigError, match=f"{LEASE_TTL_ENV}='soon'"):
        lease_ttl()


def test_lease_on_an_s3_store(tmp_path):
    pytest.importorskip("s3fs")
    moto_server = pytest.importorskip("moto.server")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    from s3fs import S3FileSystem

    S3FileSystem.clear_instance_cache()  # fsspec caches filesystems: none may keep another test's endpoint
    try:
        import boto3

        boto3.client("s3").create_bucket(Bucket="leases")
        store = RemoteStore("s3://leases/team")
        a = StoreLease(store, make_stage(tmp_path / "a"), ttl=2.0)
        assert a.try_take() and a.holds()
        b = StoreLease(store, make_stage(tmp_path / "b"), ttl=2.0)
        assert not b.holds()
        partial = a.stage.prepare_partial()
        fake_checkpoint(partial / "checkpoints" / "last.ckpt")
        assert a.upload_checkpoints(partial) == ["checkpoints/last.ckpt"]
        assert b.restore_checkpoints(b.stage.prepare_partial()) == ["checkpoints/last.ckpt"]
        a.release()
        assert a.read() is None
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        S3FileSystem.clear_instance_cache()
        server.stop()


# --- the real pipeline: two machines on one store ------------------------------------------------


def start_run(workspace: Path, store: str, *extra: str, ttl: float = 60.0) -> subprocess.Popen:
    """`gptflow run` on the micro config in its own process group (a "machine" sharing only the store)."""
    return subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "run", "--config", str(MICRO), "--workspace", str(workspace)]
        + ["--store", store, *extra],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_LOGGING_LEVEL": "INFO", LEASE_TTL_ENV: str(ttl)},
    )


def finished(proc: subprocess.Popen, timeout: float = 900) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def manifests(workspace: Path) -> dict[str, dict]:
    return {p.parent.parent.name: json.loads(p.read_text()) for p in (workspace / "artifacts").glob(f"*/*/{MANIFEST}")}


ONLY = ("--only", "corpus,tokenizer,encode,pretrain", "--set", "finetune.tasks=[sst2]")


@pytest.mark.slow  # ~2 min: two runs of the micro pipeline's first four stages at once
def test_two_machines_started_together_compute_each_stage_once(tmp_path):
    store = (tmp_path / "store").as_uri()
    a = start_run(tmp_path / "a", store, *ONLY)
    b = start_run(tmp_path / "b", store, *ONLY)
    out_a, out_b = finished(a), finished(b)
    ma, mb = manifests(tmp_path / "a"), manifests(tmp_path / "b")
    stages = ["corpus", "tokenizer", "encode", "pretrain"]
    assert sorted(ma) == sorted(mb) == sorted(stages)
    assert ma == mb  # one machine computed each stage, the other downloaded it (same manifest, same producer)
    computed = {
        s: [w for w, out in (("a", out_a), ("b", out_b)) if f"{s}: reused from {store}/artifacts/" not in out]
        for s in stages
    }
    assert all(len(who) == 1 for who in computed.values()), computed
    assert "is computing it" in out_a + out_b  # the second machine waited for the first's lease
    assert not list((tmp_path / "store" / "leases").rglob("*.json"))  # every lease released
    assert not (tmp_path / "store" / "partial").exists() or not list((tmp_path / "store" / "partial").rglob("*.ckpt"))


@pytest.mark.slow  # ~2 min: a holder killed mid-pretraining, then another machine taking over
def test_a_dead_holders_lease_is_taken_over_and_its_checkpoints_resumed(tmp_path):
    store = (tmp_path / "store").as_uri()
    slow = ("--set", "pretrain.max_steps=400", "--set", "pretrain.ckpt_every=20", "--set", "pretrain.val_every=200")
    a = start_run(tmp_path / "a", store, *ONLY, *slow, ttl=2.0)
    uploaded = tmp_path / "store" / "partial" / "pretrain"
    deadline = time.monotonic() + 600
    while not list(uploaded.glob("*/checkpoints/last.ckpt")):
        assert a.poll() is None, a.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "machine a never uploaded a pretraining checkpoint"
        time.sleep(0.2)
    os.killpg(a.pid, signal.SIGKILL)  # the holder dies: no release, no more heartbeats
    a.wait()
    lease = next((tmp_path / "store" / "leases" / "pretrain").glob("*.json"))
    assert json.loads(lease.read_text())["pid"] == a.pid  # a's lease is left behind
    out = finished(start_run(tmp_path / "b", store, *ONLY, *slow, ttl=2.0))
    assert "expired; taking over" in out, out[-3000:]
    assert "resuming from the previous holder's checkpoints" in out, out[-3000:]
    pretrain = manifests(tmp_path / "b")["pretrain"]
    assert pretrain["summary"]["resumed_from_step"] > 0 and pretrain["summary"]["steps"] == 400
    assert (tmp_path / "store" / "artifacts" / "pretrain" / pretrain["key"] / MANIFEST).is_file()
