"""The stage cache end to end, on the micro pipeline with local inputs (slow).

Keys hash content (a corpus folder, a custom task's files), leave observation keys out, and
hash upstream outputs (early cutoff); the same key means the same bytes across workspaces; nothing
is unpickled; a forced recompute that dies leaves the finished stage in place; a rebuild never swaps
a stage under a run reading it; a corrupt `last.ckpt` resumes from the newest intact checkpoint;
`gptflow gc` never removes what a registered model needs.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TRACKING_URI_AT_START
from mlflow.tracking import MlflowClient

from flows.cli import main
from gpt.config.loader import load_config
from tasks.plan import build_plan

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
MICRO = ROOT / "configs" / "micro.yaml"
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """A local corpus folder (3 files) and a custom task's train/dev CSVs."""
    root = tmp_path_factory.mktemp("inputs")
    text = SHAKESPEARE.read_text()[:150_000]
    corpus = root / "corpus"
    corpus.mkdir()
    for i in range(3):
        (corpus / f"part{i}.txt").write_text(text[i * 50_000 : (i + 1) * 50_000])
    words = ["fine", "dull", "bright", "grim", "warm", "cold"]
    for split, n in (("train", 48), ("dev", 24)):
        rows = "".join(f"a {words[i % 6]} film number {i},{'pos' if i % 6 in (0, 2, 4) else 'neg'}\n" for i in range(n))
        (root / f"{split}.csv").write_text("text,label\n" + rows)
    return {"corpus": corpus, "train": root / "train.csv", "dev": root / "dev.csv"}


def sets(inputs: dict[str, Path], *extra: str) -> list[str]:
    task = (
        f"tasks={{reviews: {{type: classification, train: {inputs['train']}, dev: {inputs['dev']}, "
        "columns: {text: text}, labels: [neg, pos]}}"
    )
    base = [f"corpus.source={inputs['corpus']}", "finetune.tasks=[reviews]", task, "finetune.max_examples=32"]
    return [*base, *extra]


def argv(ws: Path, overrides: list[str], *extra: str) -> list[str]:
    return ["--config", str(MICRO), "--workspace", str(ws), *[a for s in overrides for a in ("--set", s)], *extra]


def run(ws: Path, overrides: list[str], *extra: str) -> dict[str, str]:
    """`gptflow run` in this process; returns stage -> computed | cached from the new parent run."""
    import mlflow

    mlflow.set_tracking_uri(TRACKING_URI_AT_START)  # Lightning's MLflow logger leaks the last run's store
    assert main(["run", *argv(ws, overrides, *extra)]) == 0
    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    exp = client.get_experiment_by_name("gptflow-micro")
    (parent,) = client.search_runs(
        [exp.experiment_id], "tags.`gptflow.kind` = 'pipeline'", order_by=["attributes.start_time DESC"], max_results=1
    )
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    return {c.data.tags["stage"]: "cached" if c.data.tags["cached"] == "true" else "computed" for c in children}


def stages_output(ws: Path, overrides: list[str], capsys) -> tuple[dict[str, str], str]:
    """`gptflow stages`: stage -> status, and the whole output."""
    capsys.readouterr()
    assert main(["stages", *argv(ws, overrides)]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines()[:-1]]
    return {r[0]: "to run" if r[2] == "to" else r[2] for r in rows}, out


def child_env() -> dict[str, str]:
    """The environment of a `gptflow` subprocess: the workspace's own Prefect home, not this module's API."""
    drop = ("PREFECT_HOME", "PREFECT_RESULTS_LOCAL_STORAGE_PATH", "PREFECT_API_URL")
    return {**{k: v for k, v in os.environ.items() if k not in drop}, "PYTHONPATH": str(ROOT)}


def subprocess_run(ws: Path, overrides: list[str], *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "flows.cli", "run", *argv(ws, overrides, *extra)]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=child_env())


def manifests(ws: Path) -> dict[tuple[str, str], dict]:
    """(kind, key) -> manifest of every finished stage directory."""
    return {
        (p.parent.parent.name, p.parent.name): json.loads(p.read_text())
        for p in (ws / "artifacts").glob("*/*/manifest.json")
    }


@pytest.fixture(scope="module")
def ws(prefect_api, inputs, tmp_path_factory) -> Path:
    """A finished micro workspace on the local inputs."""
    ws = tmp_path_factory.mktemp("ws")
    outcome = run(ws, sets(inputs))
    assert set(outcome.values()) == {"computed"}
    return ws


def test_observation_keys_reuse_the_stages(ws, inputs):
    outcome = run(ws, sets(inputs, "pretrain.val_every=10", "pretrain.log_every=2", "pretrain.sample_tokens=8"))
    assert outcome == {**{n: "cached" for n in outcome}, "report": "computed"}


def test_same_key_means_same_bytes_across_workspaces(ws, inputs, tmp_path):
    """A cadence key (val/ckpt/log every) shares every key and every byte; a seed shares only the seed-free stages."""
    cadence = tmp_path / "cadence"
    run(cadence, sets(inputs, "pretrain.val_every=10", "pretrain.ckpt_every=10", "pretrain.ckpt_keep=4"))
    ours, theirs = manifests(ws), manifests(cadence)
    shared = (set(ours) & set(theirs)) - {k for k in ours if k[0] == "report"}
    assert {kind for kind, _ in shared} == {"corpus", "tokenizer", "encode", "pretrain", "finetune", "evaluate"}
    for key in shared:
        assert ours[key]["outputs"] == theirs[key]["outputs"], key  # the files downstream reads, byte for byte
    weights = [next(d.glob("artifacts/pretrain/*/model/model.safetensors")).read_bytes() for d in (ws, cadence)]
    assert weights[0] == weights[1]

    seeded = tmp_path / "seeded"
    run(seeded, sets(inputs, "seed=7"), "--only", "corpus,tokenizer,encode")
    theirs = manifests(seeded)
    assert {kind for kind, _ in set(ours) & set(theirs)} == {"corpus", "tokenizer"}  # the split follows the seed
    for key in set(ours) & set(theirs):
        assert ours[key]["outputs"] == theirs[key]["outputs"]


def test_local_file_content_is_the_key(ws, inputs, capsys):
    overrides = sets(inputs)
    status, _ = stages_output(ws, overrides, capsys)
    assert status == {**{n: "done" for n in status}, "report": "to run"}  # each run writes its own report
    part = inputs["corpus"] / "part1.txt"
    part.write_text(part.read_text() + "\nA line added to the corpus.\n")
    status, out = stages_output(ws, overrides, capsys)
    assert status["corpus"] == "stale" and f"{part} changed since the last run" in out.splitlines()[0]
    assert status["tokenizer"] == "waiting"
    outcome = run(ws, overrides)
    assert outcome["corpus"] == "computed" and outcome["tokenizer"] == "computed"

    (inputs["corpus"] / "part3.txt").write_text("A new file in the corpus folder.\n")
    assert "part3.txt is new since the last run" in stages_output(ws, overrides, capsys)[1]
    assert run(ws, overrides)["corpus"] == "computed"

    train = inputs["train"]
    train.write_text(train.read_text().replace("a fine film number 0,pos", "a fine film number 0,neg"))
    outcome = run(ws, overrides)
    assert outcome["finetune[reviews]"] == "computed" and outcome["evaluate[reviews]"] == "computed"
    assert {outcome[n] for n in ("corpus", "tokenizer", "encode", "pretrain")} == {"cached"}


def test_early_cutoff_an_upstream_rebuilt_into_the_same_bytes_keeps_downstream(ws, inputs):
    """`corpus.max_bytes` above the corpus size: a new corpus key, byte-identical output, nothing after it reruns."""
    outcome = run(ws, sets(inputs, "corpus.max_bytes=400000"))
    assert outcome["corpus"] == "computed"
    assert {n: o for n, o in outcome.items() if n not in ("corpus", "report")} == {
        n: "cached" for n in outcome if n not in ("corpus", "report")
    }


def _wait_for(predicate, proc: subprocess.Popen, what: str, timeout: float = 600, poll: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"never saw {what}:\n{proc.communicate()[0][-3000:]}")
        time.sleep(poll)


def test_a_killed_forced_recompute_leaves_the_finished_stage(ws, inputs):
    overrides = sets(inputs)
    (pretrain,) = [s for s in build_plan(load_config(MICRO, overrides), ws / "artifacts") if s.name == "pretrain"]
    before = (pretrain.dir / "manifest.json").stat().st_mtime_ns
    proc = subprocess_run(ws, overrides, "--force", "pretrain")
    _wait_for(lambda: (pretrain.partial_dir / "checkpoints" / "initial_val.json").exists(), proc, "pretrain computing")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (pretrain.dir / "manifest.json").stat().st_mtime_ns == before and pretrain.verify(deep=True) == []
    outcome = run(ws, overrides)
    assert outcome["pretrain"] == "cached" and outcome["evaluate[reviews]"] == "cached"


def test_a_rebuild_waits_for_the_runs_reading_the_stage(ws, inputs):
    """While a run reads `pretrain` (the shared lock a computing stage holds on its inputs), `--force pretrain`
    computes its new copy but swaps it in only once the reader is done."""
    from tasks.locks import shared_locks

    overrides = sets(inputs)
    (pretrain,) = [s for s in build_plan(load_config(MICRO, overrides), ws / "artifacts") if s.name == "pretrain"]
    before = (pretrain.dir / "manifest.json").stat().st_mtime_ns
    with shared_locks([pretrain.readers_path]):  # what a fine-tune reading pretrain holds while it computes
        writer = subprocess_run(ws, overrides, "--force", "pretrain", "--only", "pretrain")
        _wait_for(lambda: (pretrain.partial_dir / "manifest.json").exists(), writer, "the new copy committed")
        time.sleep(3)  # it is complete, and waiting for us
        assert writer.poll() is None
        assert (pretrain.dir / "manifest.json").stat().st_mtime_ns == before and pretrain.verify(deep=True) == []
    assert writer.wait(timeout=600) == 0, writer.stdout.read()[-3000:]
    assert (pretrain.dir / "manifest.json").stat().st_mtime_ns != before and pretrain.verify(deep=True) == []
    assert not list((ws / "artifacts" / "pretrain").glob("*.replaced-*"))


def test_corrupt_last_checkpoint_resumes_from_the_newest_intact_one(ws, inputs):
    overrides = sets(inputs, "pretrain.lr=0.002", "pretrain.ckpt_every=5", "pretrain.ckpt_keep=10")
    (pretrain,) = [s for s in build_plan(load_config(MICRO, overrides), ws / "artifacts") if s.name == "pretrain"]
    ckpts = pretrain.partial_dir / "checkpoints"
    proc = subprocess_run(ws, overrides)
    # step 25 on disk means the step-20 save finished; kill with 15 steps to go, however fast the machine
    _wait_for(lambda: (ckpts / "step=25.ckpt").exists(), proc, "step 25", poll=0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not pretrain.dir.exists(), "the run finished before it could be killed"
    for ckpt in ckpts.glob("step=*.ckpt"):  # keep step 20 as the newest intact checkpoint
        if int(ckpt.stem.removeprefix("step=")) > 20:
            ckpt.unlink()
    (ckpts / "last.ckpt").write_bytes((ckpts / "last.ckpt").read_bytes()[:1000])  # killed mid-save
    outcome = run(ws, overrides, "--only", "pretrain")
    assert outcome["pretrain"] == "computed"
    assert pretrain.manifest()["summary"]["resumed_from_step"] == 20
    assert list(pretrain.dir.parent.glob(f"{pretrain.key}.last.ckpt.corrupt"))


def test_gc_keeps_what_registered_models_need(ws, inputs, capsys):
    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    versions = client.search_model_versions()
    assert versions
    needed = {client.get_run(v.run_id).data.tags["cache_key"] for v in versions}
    capsys.readouterr()
    assert main(["gc", "--workspace", str(ws), "--keep-runs", "1"]) == 0
    listing = capsys.readouterr().out
    assert "would be freed" in listing
    assert main(["gc", "--workspace", str(ws), "--keep-runs", "1", "--yes"]) == 0
    kept = {p.parent.name for p in (ws / "artifacts").glob("*/*/manifest.json")}
    assert needed <= kept
    for kind_key in needed:  # and everything they were computed from
        (manifest,) = [json.loads(p.read_text()) for p in (ws / "artifacts").glob(f"*/{kind_key}/manifest.json")]
        for upstream in manifest["upstream"].values():
            assert upstream in kept
    outcome = run(ws, sets(inputs))  # the latest config is still fully cached after gc
    assert {o for n, o in outcome.items() if n != "report"} == {"cached"}


def test_nothing_is_unpickled_on_a_cached_rerun(ws, inputs, tmp_path):
    """No unpickling at all (audit hook), no Prefect result records, and payloads planted everywhere never run."""
    overrides = sets(inputs)
    audit = tmp_path / "audit.json"
    script = (
        "import json, os, sys\n"
        "events = []\n"
        "sys.addaudithook(lambda e, a: events.append(f'{a[0]}.{a[1]}') if e == 'pickle.find_class' else None)\n"
        "from flows.cli import main\n"
        f"code = main(['run', *{argv(ws, overrides)!r}])\n"
        f"json.dump({{'code': code, 'unpickled': events}}, open({str(audit)!r}, 'w'))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600, env=child_env()
    )
    result = json.loads(audit.read_text())
    assert result == {"code": 0, "unpickled": []}, proc.stderr[-2000:]
    assert not [p for p in (ws / "prefect").rglob("*") if "results" in p.parts and p.is_file()]

    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    payload = pickle.dumps(Payload())
    results = ws / "prefect" / "results"  # where Prefect kept its cloudpickle task results
    results.mkdir(parents=True, exist_ok=True)
    for s in build_plan(load_config(MICRO, overrides), ws / "artifacts"):
        (results / f"gptflow-{s.kind}-{s.key_or_none()}").write_bytes(payload)
    cached = subprocess_run(ws, overrides)
    assert cached.wait(timeout=600) == 0, cached.stdout.read()[-3000:]
    assert not marker.exists()

    # every file of the workspace (last test of the module), the SQLite stores and the lock files aside
    for p in ws.rglob("*"):
        if p.is_file() and not p.name.startswith(("mlflow.db", "prefect.db")) and p.suffix not in (".lock", ".readers"):
            p.write_bytes(payload)
    planted = subprocess_run(ws, overrides)
    planted.wait(timeout=600)
    assert not marker.exists(), planted.stdout.read()[-3000:]
