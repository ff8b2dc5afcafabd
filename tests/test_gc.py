"""`gptflow gc`: what is kept (last N runs, registered models, running runs, held locks, resumable
partials, and their upstream closure), what is listed, and that `--yes` removes exactly that.

Stage directories are hand-written (a manifest and a few bytes); the MLflow store is a real SQLite
store in tmp_path, copied from one created per session (creating its tables takes seconds).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from flows.gc_command import add_gc_parser, cmd_gc
from flows.workspace import Workspace
from tasks.gc import Garbage, GcError, entry_bytes, find_garbage, human_bytes, remove_garbage, tracking_client
from tasks.plan import VERSIONS
from tasks.stage import user_error


@pytest.fixture(scope="session")
def template_db(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()  # creates the tables
    return path


@pytest.fixture
def ws(tmp_path, template_db, monkeypatch) -> Workspace:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the workspace's own store
    root = tmp_path / "ws"
    root.mkdir()
    shutil.copy(template_db, root / "mlflow.db")
    return Workspace(root)


@pytest.fixture
def client(ws) -> MlflowClient:
    return MlflowClient(ws.tracking_uri, registry_uri=ws.tracking_uri)


def kind_of(name: str) -> str:
    return name.split("[", 1)[0]


def make_stage(ws: Workspace, name: str, key: str, upstream: dict[str, str] | None = None, size: int = 10) -> Path:
    """A finished stage directory: manifest.json and one file of `size` bytes."""
    d = ws.artifacts / kind_of(name) / key
    d.mkdir(parents=True)
    manifest = {"stage": name, "kind": kind_of(name), "key": key, "version": "1", "upstream": upstream or {}}
    (d / "manifest.json").write_text(json.dumps(manifest))
    (d / "data.bin").write_bytes(b"x" * size)
    return d


class Runs:
    """Pipeline runs in one experiment, started one second apart (so 'the last N' is well defined)."""

    def __init__(self, client: MlflowClient, ws: Workspace, name: str = "exp"):
        self.client = client
        self.exp = client.create_experiment(name, artifact_location=(ws.root / "mlartifacts").as_uri())
        self.clock = 1_700_000_000_000

    def pipeline(self, stages: dict[str, str], status: str = "FINISHED") -> tuple[str, dict[str, str]]:
        """A parent run and one child per stage name -> key; returns (parent id, stage name -> child id)."""
        self.clock += 1000
        parent = self.client.create_run(self.exp, start_time=self.clock, tags={"gptflow.kind": "pipeline"}).info.run_id
        children = {}
        for name, key in stages.items():
            tags = {
                "mlflow.parentRunId": parent,
                "gptflow.kind": "stage",
                "stage": name,
                "stage_kind": kind_of(name),
                "cache_key": key,
            }
            child = self.client.create_run(self.exp, start_time=self.clock, tags=tags).info.run_id
            if status != "RUNNING":
                self.client.set_terminated(child, status)
            children[name] = child
        if status != "RUNNING":
            self.client.set_terminated(parent, status)
        return parent, children


def listed(items: list[Garbage]) -> set[tuple[str, str]]:
    return {(g.kind, g.what) for g in items}


@contextmanager
def held(path: Path, mode: int = fcntl.LOCK_EX):
    """Hold a flock on `path` the way a running gptflow does (another open file description)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)


def gc(ws: Workspace, capsys, *argv: str) -> tuple[int, list[str]]:
    parser = argparse.ArgumentParser(prog="gptflow")
    add_gc_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["gc", "--workspace", str(ws.root), *argv])
    code = cmd_gc(args, ws)
    return code, capsys.readouterr().out.splitlines()


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# --- what is kept ---------------------------------------------------------------------------------


def test_last_n_runs_of_each_experiment_are_kept_older_and_unused_are_listed(ws, client):
    a, b = Runs(client, ws, "a"), Runs(client, ws, "b")
    for key in ("c1", "c2", "c3", "b1", "orphan"):
        make_stage(ws, "corpus", key)
    b.pipeline({"corpus": "b1"})  # the oldest run overall, but the last of its experiment
    for key in ("c1", "c2", "c3"):
        a.pipeline({"corpus": key}, status="FAILED" if key == "c3" else "FINISHED")  # any status counts

    assert listed(find_garbage(ws.artifacts, client, keep_runs=2)) == {("corpus", "c1"), ("corpus", "orphan")}
    assert listed(find_garbage(ws.artifacts, client, keep_runs=3)) == {("corpus", "orphan")}
    (item,) = [g for g in find_garbage(ws.artifacts, client, keep_runs=3)]
    assert item.reason == "not used by the last 3 runs of any experiment, a registered model or a running run"
    assert item.path == ws.artifacts / "corpus" / "orphan" and item.category == "stage"


def test_a_registered_model_keeps_its_stage_and_everything_upstream_of_it(ws, client):
    runs = Runs(client, ws)
    make_stage(ws, "corpus", "C")
    make_stage(ws, "tokenizer", "T", {"corpus": "C"})
    make_stage(ws, "encode", "E", {"corpus": "C", "tokenizer": "T"})
    make_stage(ws, "pretrain", "P", {"encode": "E", "tokenizer": "T"})
    make_stage(ws, "finetune", "F", {"pretrain": "P", "tokenizer": "T"})
    make_stage(ws, "evaluate", "V", {"finetune[sst2-seed2]": "F", "tokenizer": "T"})
    make_stage(ws, "finetune", "F2", {"pretrain": "P", "tokenizer": "T"})
    make_stage(ws, "report", "R", {"evaluate[sst2-seed2]": "V", "finetune[cola]": "F2"})
    # The old run lists only some of its stages: the rest must come from the manifests' upstream.
    _, old = runs.pipeline({"evaluate[sst2-seed2]": "V", "finetune[cola]": "F2", "report": "R"})
    make_stage(ws, "corpus", "new")
    runs.pipeline({"corpus": "new"})
    runs.pipeline({"corpus": "new"})

    client.create_registered_model("exp-sst2")
    client.create_model_version("exp-sst2", source="file:///tmp/x", run_id=old["evaluate[sst2-seed2]"])
    items = find_garbage(ws.artifacts, client, keep_runs=1)
    assert listed(items) == {("finetune", "F2"), ("report", "R")}
    assert [g.kind for g in items] == ["finetune", "report"]  # sorted by pipeline order


def test_a_registered_pipeline_run_keeps_all_its_stages(ws, client):
    runs = Runs(client, ws)
    make_stage(ws, "pretrain", "P")
    make_stage(ws, "corpus", "C")
    parent, _ = runs.pipeline({"pretrain": "P", "corpus": "C"})
    runs.pipeline({})
    client.create_registered_model("m")
    client.create_model_version("m", source="file:///tmp/x", run_id=parent)
    assert find_garbage(ws.artifacts, client, keep_runs=1) == []


def test_a_running_run_keeps_its_stages_however_old(ws, client):
    runs = Runs(client, ws)
    make_stage(ws, "corpus", "live")
    make_stage(ws, "tokenizer", "T")
    make_stage(ws, "corpus", "dead")
    runs.pipeline({"corpus": "live"}, status="RUNNING")
    runs.pipeline({"corpus": "dead"}, status="KILLED")
    for _ in range(3):
        runs.pipeline({})
    # A stage run still running whose parent says otherwise (a crash between the two) counts too.
    parent, _ = runs.pipeline({})
    client.create_run(
        runs.exp, tags={"mlflow.parentRunId": parent, "stage_kind": "tokenizer", "cache_key": "T"}
    )  # left RUNNING
    assert listed(find_garbage(ws.artifacts, client, keep_runs=1)) == {("corpus", "dead")}


def test_a_held_lock_or_readers_keeps_the_stage_and_its_upstream(ws, client):
    make_stage(ws, "tokenizer", "T")
    make_stage(ws, "pretrain", "P", {"tokenizer": "T"})
    make_stage(ws, "corpus", "read")
    assert listed(find_garbage(ws.artifacts, client)) == {("tokenizer", "T"), ("pretrain", "P"), ("corpus", "read")}
    lock, readers = ws.artifacts / "pretrain" / "P.lock", ws.artifacts / "corpus" / "read.readers"
    with held(lock), held(readers, fcntl.LOCK_SH):
        assert find_garbage(ws.artifacts, client) == []
    # Released: the lock files themselves are listed with their (unused) directories.
    assert listed(find_garbage(ws.artifacts, client)) == {
        ("tokenizer", "T"),
        ("pretrain", "P"),
        ("pretrain", "P.lock"),
        ("corpus", "read"),
        ("corpus", "read.readers"),
    }


def test_partials_of_the_current_training_code_are_kept_others_listed(ws, client):
    art = ws.artifacts

    def partial(kind: str, key: str, record: dict | None) -> Path:
        d = art / kind / f"{key}.partial"
        d.mkdir(parents=True)
        (d / "last.ckpt").write_bytes(b"c" * 5)
        if record is not None:
            (d / ".gptflow-partial.json").write_text(json.dumps({"kind": kind, "key": key, **record}))
        return d

    make_stage(ws, "encode", "E")
    partial("pretrain", "resumable", {"version": VERSIONS["pretrain"], "upstream": {"encode": "E"}})
    partial("finetune", "old", {"version": "0"})
    partial("pretrain", "norecord", None)
    partial("corpus", "data", {"version": VERSIONS["corpus"]})
    partial("finetune", "busy", {"version": "0"})
    make_stage(ws, "pretrain", "forced")  # finished, and a forced recompute of it died: nothing resumes that
    partial("pretrain", "forced", {"version": VERSIONS["pretrain"]})
    with held(art / "finetune" / "busy.lock"):
        items = find_garbage(art, client)
    reasons = {g.what: g.reason for g in items}
    assert reasons == {
        "old.partial": f"partial of finetune version 0 (current {VERSIONS['finetune']})",
        "norecord.partial": "partial from an older gptflow",
        "data.partial": "partial of corpus, a data stage: a rerun starts it from scratch",
        "forced.partial": "partial of a finished stage (a forced recompute that did not finish): nothing resumes it",
        "forced": "not used by the last 5 runs of any experiment, a registered model or a running run",
    }  # the resumable partial and its input E are kept; so is the one being computed
    assert {g.category for g in items} == {"partial", "stage"}
    assert all(g.bytes == sum(f.stat().st_size for f in g.path.rglob("*")) for g in items)


# --- leftovers ------------------------------------------------------------------------------------


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_leftovers_of_killed_runs_are_listed_and_records_left_alone(ws, client):
    d = ws.artifacts / "pretrain"
    make_stage(ws, "pretrain", "kept")
    Runs(client, ws).pipeline({"pretrain": "kept"})
    (d / "kept.lock").touch()  # the lock of a kept directory stays
    (d / "kept.readers").touch()
    (d / "kept.last.ckpt.corrupt").write_bytes(b"z" * 7)
    (d / "gone.lock").touch()  # no directory for that key any more
    (d / "gone.readers").touch()
    (d / "kept.replaced-123").mkdir()
    (d / "kept.replaced-123" / "model.bin").write_bytes(b"m" * 11)
    (d / "other.replaced-9").mkdir()
    (d / "pulled.pull" / "pulled").mkdir(parents=True)
    (d / f"killed.gc-{dead_pid()}").mkdir()
    (d / f"mine.gc-{os.getpid()}").mkdir()  # a gc in progress (this process): not a leftover
    (d / "latest-pretrain.json").write_text("{}")
    (d / "latest-pretrain.json.tmp").write_text("{")
    (d / "notes.txt").write_text("someone's file")
    (ws.artifacts / "unknown-kind" / "k").mkdir(parents=True)
    (ws.root / "downloads").mkdir()

    with held(d / "other.readers", fcntl.LOCK_SH):  # a run reads `other`: its replaced copy stays
        items = find_garbage(ws.artifacts, client)
    by_name = {g.what: g for g in items}
    assert set(by_name) == {
        "kept.last.ckpt.corrupt",
        "gone.lock",
        "gone.readers",
        "kept.replaced-123",
        "pulled.pull",
        next(n for n in os.listdir(d) if n.startswith("killed.gc-")),
    }
    assert by_name["kept.last.ckpt.corrupt"].bytes == 7
    assert by_name["kept.replaced-123"].bytes == 11
    assert by_name["gone.lock"].reason == "stale lock file: not held, no stage"


def test_sizes_are_lstat_totals_without_following_symlinks(tmp_path):
    d = tmp_path / "entry"
    (d / "sub").mkdir(parents=True)
    (d / "a").write_bytes(b"1" * 100)
    (d / "sub" / "b").write_bytes(b"2" * 23)
    os.link(d / "a", d / "a-hardlink")  # counted once
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "big").write_bytes(b"3" * 10_000)
    (d / "link").symlink_to(outside, target_is_directory=True)
    assert entry_bytes(d) == 100 + 23 + len(str(outside))
    assert entry_bytes(d / "a") == 100 and entry_bytes(tmp_path / "missing") == 0
    assert [human_bytes(n) for n in (0, 999, 1234, 1_200_000_000, 3 * 10**15)] == [
        "0 B",
        "999 B",
        "1.2 kB",
        "1.2 GB",
        "3.0 PB",
    ]


# --- the command and removal ----------------------------------------------------------------------


def test_gc_lists_then_yes_removes_exactly_the_listed_entries(ws, client, capsys):
    runs = Runs(client, ws)
    make_stage(ws, "tokenizer", "T", size=1000)
    make_stage(ws, "pretrain", "P", {"tokenizer": "T"}, size=2000)
    make_stage(ws, "pretrain", "old", {"tokenizer": "T"}, size=3000)
    make_stage(ws, "corpus", "old", size=400)
    runs.pipeline({"pretrain": "old", "corpus": "old"})
    runs.pipeline({"pretrain": "P"})
    art = ws.artifacts
    (art / "pretrain" / "old.lock").touch()
    (art / "pretrain" / "P.lock").touch()
    (art / "pretrain" / "P.last.ckpt.corrupt").write_bytes(b"c" * 50)
    (art / "pretrain" / "latest-pretrain.json").write_text("{}")
    (art / "corpus" / "latest-corpus.json").write_text("{}")
    before = tree(art)

    code, out = gc(ws, capsys, "--keep-runs", "1")
    expected = {"pretrain/old", "pretrain/old.lock", "corpus/old", "pretrain/P.last.ckpt.corrupt"}
    total = sum(entry_bytes(art / p) for p in expected)
    assert code == 0 and tree(art) == before  # listing removes nothing
    assert out[0].split() == ["kind", "entry", "size", "reason"]
    rows = {tuple(line.split()[:2]) for line in out[1:-1]}
    assert rows == {tuple(p.split("/")) for p in expected}
    assert out[-1] == f"gc: 4 entries, {human_bytes(total)} would be freed (run with --yes to remove)"

    code, out = gc(ws, capsys, "--keep-runs", "1", "--yes")
    assert code == 0 and out[-1] == f"gc: removed 4 entries, freed {human_bytes(total)}"
    gone = {p for p in before if any(p == e or p.startswith(e + "/") for e in expected)}
    assert tree(art) == before - gone  # no .gc-* leftovers, no new lock files, latest-*.json untouched

    code, out = gc(ws, capsys, "--keep-runs", "1")
    assert out == ["gc: 0 entries, 0 B would be freed"]


def test_remove_skips_an_entry_whose_lock_was_taken_since_listing(ws, client):
    make_stage(ws, "pretrain", "busy")
    make_stage(ws, "pretrain", "free")
    d = ws.artifacts / "pretrain"
    (d / "busy.lock").touch()
    items = find_garbage(ws.artifacts, client)
    assert listed(items) == {("pretrain", "busy"), ("pretrain", "free"), ("pretrain", "busy.lock")}
    skipped = []
    with held(d / "busy.lock"):
        removed, freed = remove_garbage(items, on_skip=lambda g, why: skipped.append((g.what, why)))
    assert sorted(skipped) == [
        ("busy", "busy: busy.lock is held by a running process"),
        ("busy.lock", "busy: busy.lock is held by a running process"),
    ]
    assert removed == 1 and freed == next(g.bytes for g in items if g.what == "free")
    assert sorted(os.listdir(d)) == ["busy", "busy.lock"]  # and no lock file left behind for `free`

    with held(d / "busy.readers", fcntl.LOCK_SH):  # a reader holds it: the stage stays too
        assert remove_garbage([g for g in items if g.what == "busy"]) == (0, 0)
    assert (d / "busy" / "manifest.json").is_file()


def test_a_symlinked_stage_is_removed_as_a_link_never_its_target(ws, client, tmp_path):
    outside = tmp_path / "elsewhere" / "stage"
    outside.mkdir(parents=True)
    (outside / "manifest.json").write_text(json.dumps({"key": "S", "upstream": {}}))
    (ws.artifacts / "pretrain").mkdir(parents=True)
    (ws.artifacts / "pretrain" / "S").symlink_to(outside, target_is_directory=True)
    items = find_garbage(ws.artifacts, client)
    assert listed(items) == {("pretrain", "S")}
    assert remove_garbage(items) == (1, items[0].bytes)
    assert os.listdir(ws.artifacts / "pretrain") == [] and (outside / "manifest.json").is_file()


def test_without_a_store_there_are_no_runs_and_none_is_created(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    ws = Workspace(tmp_path / "fresh")
    make_stage(ws, "corpus", "C")
    assert tracking_client(ws.tracking_uri) is None
    code, out = gc(ws, capsys)
    assert code == 0 and out[-1].startswith("gc: 1 entry, ")
    assert not (ws.root / "mlflow.db").exists()


def test_an_unreadable_store_or_server_refuses_with_one_line_and_removes_nothing(ws, monkeypatch, capsys):
    make_stage(ws, "corpus", "C")
    (ws.root / "mlflow.db").write_text("not a database")
    with pytest.raises(GcError) as e:
        gc(ws, capsys, "--yes")
    assert "is not a usable SQLite database" in str(e.value) and "gc removes nothing" in str(e.value)
    assert "\n" not in user_error(e.value)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(GcError, match="unreachable.*gc removes nothing") as e:
        gc(ws, capsys, "--yes")
    assert "\n" not in user_error(e.value)
    assert (ws.artifacts / "corpus" / "C" / "manifest.json").is_file()


def test_keep_runs_must_be_at_least_one(capsys):
    parser = argparse.ArgumentParser(prog="gptflow")
    add_gc_parser(parser.add_subparsers(dest="command"))
    for bad in ("0", "-1", "x"):
        with pytest.raises(SystemExit):
            parser.parse_args(["gc", "--keep-runs", bad])
    assert "expected an integer >= 1" in capsys.readouterr().err
    args = parser.parse_args(["gc"])
    assert (args.keep_runs, args.yes, args.workspace) == (5, False, None)
