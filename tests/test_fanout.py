"""Fan-out of fine-tune/evaluate stages through Prefect task runners (`fanout:`)."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
import types
from concurrent.futures import Future
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from procs import alive, descendants

from flows.cli import main
from flows.fanout import concurrency, concurrent, groups, run_concurrently, stage_threads, visible_gpus
from gpt.config.experiment import ExperimentConfig, FanoutConfig
from gpt.config.fields import ConfigError
from gpt.config.loader import from_dict, load_config
from tasks.plan import build_plan

ROOT = Path(__file__).resolve().parents[1]
MICRO = ROOT / "configs" / "micro.yaml"


def test_groups_split_the_plan_into_fan_out_runs_and_the_rest():
    plan = build_plan(load_config(MICRO), Path("unused"))
    split = [(parallel, [s.name for s in stages]) for parallel, stages in groups(plan)]
    assert split == [
        (False, ["corpus", "tokenizer", "encode", "pretrain"]),
        (True, ["finetune[sst2]", "finetune[story_cloze]", "evaluate[sst2]", "evaluate[story_cloze]"]),
        (False, ["report"]),
    ]


def test_default_concurrency_is_one_per_gpu_else_one(monkeypatch):
    monkeypatch.setattr("tasks.placement.glob.glob", lambda pattern: ["/dev/nvidia0", "/dev/nvidia1", "/dev/nvidia2"])
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert visible_gpus() == 3 and concurrency(FanoutConfig()) == 3
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,0")
    assert concurrency(FanoutConfig()) == 2
    monkeypatch.setattr("tasks.placement.glob.glob", lambda pattern: [])
    assert concurrency(FanoutConfig()) == 1 and not concurrent(FanoutConfig())
    assert concurrency(FanoutConfig(max_concurrency=4)) == 4 and concurrent(FanoutConfig(max_concurrency=4))
    monkeypatch.setattr("flows.fanout.os.cpu_count", lambda: 16)
    assert stage_threads(FanoutConfig(), 4) == 4 and stage_threads(FanoutConfig(threads_per_stage=2), 4) == 2


def test_fanout_keys_are_checked_before_compute(monkeypatch):
    with pytest.raises(ConfigError, match="fanout.max_concurrency"):
        from_dict(ExperimentConfig, {"fanout": {"max_concurrency": 0}})
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"fanout.runner.*gptflow\[dask\]"):
        from_dict(ExperimentConfig, {"fanout": {"runner": "ray"}})


def test_fanout_keys_do_not_change_stage_keys():
    base = load_config(MICRO)
    spread = from_dict(ExperimentConfig, {**base.to_dict(), "fanout": {"runner": "dask", "max_concurrency": 8}})
    digests = [s.section_digest() for s in build_plan(base, Path("x"))]
    assert digests == [s.section_digest() for s in build_plan(spread, Path("x"))]


def evaluations(ws: Path) -> dict[str, dict]:
    """Each evaluate stage's dev summary, by stage name, from its newest manifest.

    By name, not key: fine-tunes on one thread each (fan-out) may differ from two-thread ones in the last
    float bits, and an evaluate stage's key hashes its fine-tune's weights (early cutoff).
    """
    manifests = [json.loads(p.read_text()) for p in (ws / "artifacts" / "evaluate").glob("*/manifest.json")]
    return {m["stage"]: m["summary"] for m in sorted(manifests, key=lambda m: m["completed_at"])}


def finetune_spans(ws: Path) -> dict[str, tuple[float, float]]:
    """(start, end) of each fine-tune's compute, from the stage manifests."""
    manifests = [json.loads(p.read_text()) for p in (ws / "artifacts" / "finetune").glob("*/manifest.json")]
    return {m["stage"]: (m["started_at"], m["completed_at"]) for m in manifests}


@pytest.fixture(scope="module")
def sequential(tmp_path_factory) -> tuple[Path, dict[str, dict]]:
    """The micro pipeline run one stage at a time (the default on CPU), and its evaluation results."""
    ws = tmp_path_factory.mktemp("fanout")
    assert main(["run", "--config", str(MICRO), "--workspace", str(ws)]) == 0
    return ws, evaluations(ws)


RAY = pytest.mark.skipif(importlib.util.find_spec("prefect_ray") is None, reason="pip install 'gptflow[ray]'")


@pytest.mark.slow
@pytest.mark.parametrize("runner", ["thread", "dask", pytest.param("ray", marks=RAY)])
def test_two_finetunes_run_at_once_and_match_the_sequential_run(sequential, runner):
    ws, expected = sequential
    args = ["--set", f"fanout.runner={runner}", "--set", "fanout.max_concurrency=2", "--force", "finetune"]
    assert main(["run", "--config", str(MICRO), "--workspace", str(ws), *args]) == 0
    spans = finetune_spans(ws)
    (a_start, a_end), (b_start, b_end) = spans["finetune[sst2]"], spans["finetune[story_cloze]"]
    assert a_start < b_end and b_start < a_end, f"fine-tunes did not overlap: {spans}"
    assert evaluations(ws) == expected  # same results whatever ran beside them


class FakeFuture:
    """Just what `run_concurrently` and Prefect's `as_completed` use of a task future."""

    def __init__(self, fn):
        self._future = Future()
        self._final_state = None
        self._fn = fn

    def run(self) -> None:
        self._final_state = self._fn()
        self._future.set_result(self._final_state)

    def add_done_callback(self, fn) -> None:
        self._future.add_done_callback(lambda _: fn(self))

    def wait(self, timeout=None) -> None:
        self._future.result(timeout)

    @property
    def state(self):
        return self._final_state


class FakeRunner:
    """A task runner that finishes submitted stages in submission order, on demand, recording what was in flight."""

    def __init__(self):
        self.in_flight: list[FakeFuture] = []
        self.max_in_flight = 0
        self.submitted: list[str] = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def submit(self, task, parameters):
        name = parameters["stage"].name
        self.submitted.append(name)
        future = FakeFuture(lambda: task(name))
        self.in_flight.append(future)
        self.max_in_flight = max(self.max_in_flight, len(self.in_flight))
        # finish the oldest stage on another thread once the scheduler waits for it
        threading.Timer(0.01, self._finish_oldest).start()
        return future

    def _finish_oldest(self) -> None:
        self.in_flight.pop(0).run()


class FakeBook:
    """Records settled stages; `bad` names the stage that fails on bad input, `crash` one that raises."""

    def __init__(self, bad: str | None = None, crash: str | None = None):
        self.tracker = types.SimpleNamespace(start_child=lambda stage: f"run-{stage.name}", fail=lambda *a: None)
        self.settled: list[str] = []
        self.bad, self.crash = bad, crash

    def computes(self, stage):
        return False  # nothing to compute: no worker processes in these tests

    def begin(self, stage):
        return self.tracker.start_child(stage)

    def call(self, stage, child, placement):
        return (lambda name: name), {"stage": stage, "placement": placement}

    def settle(self, stage, child, state):
        self.settled.append(stage.name)
        if stage.name == self.crash:
            raise RuntimeError(f"{stage.name} crashed")
        return f"stage '{stage.name}': bad" if stage.name == self.bad else None


def fanout_stages() -> list:
    plan = build_plan(load_config(MICRO), Path("unused"))
    return next(stages for parallel, stages in groups(plan) if parallel)


def test_run_concurrently_caps_in_flight_stages_and_keeps_dependency_order(monkeypatch):
    runner = FakeRunner()
    monkeypatch.setattr("flows.fanout.make_runner", lambda *a: runner)
    book = FakeBook()
    assert run_concurrently(book, fanout_stages(), FanoutConfig(max_concurrency=2)) is None
    assert runner.max_in_flight == 2
    assert sorted(book.settled) == sorted(s.name for s in fanout_stages())
    for task in ("sst2", "story_cloze"):
        assert runner.submitted.index(f"finetune[{task}]") < runner.submitted.index(f"evaluate[{task}]")
        assert book.settled.index(f"finetune[{task}]") < runner.submitted.index(f"evaluate[{task}]")


def test_bad_input_stops_new_stages_but_lets_running_ones_finish(monkeypatch):
    runner = FakeRunner()
    monkeypatch.setattr("flows.fanout.make_runner", lambda *a: runner)
    book = FakeBook(bad="finetune[sst2]")
    error = run_concurrently(book, fanout_stages(), FanoutConfig(max_concurrency=2))
    assert error == "stage 'finetune[sst2]': bad"
    assert "evaluate[sst2]" not in runner.submitted  # its input failed
    assert book.settled == ["finetune[sst2]", "finetune[story_cloze]"]  # the one in flight was recorded


def test_a_crash_is_raised_after_the_stages_in_flight_settle(monkeypatch):
    monkeypatch.setattr("flows.fanout.make_runner", lambda *a: FakeRunner())
    book = FakeBook(crash="finetune[sst2]")
    with pytest.raises(RuntimeError, match=r"finetune\[sst2\] crashed"):
        run_concurrently(book, fanout_stages(), FanoutConfig(max_concurrency=2))
    assert book.settled == ["finetune[sst2]", "finetune[story_cloze]"]






@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killing_gptflow_during_concurrent_finetunes_leaves_no_process_and_the_rerun_resumes(sig, tmp_path):
    argv = [sys.executable, "-m", "flows.cli", "run", "--config", str(MICRO), "--workspace", str(tmp_path)]
    sets = ["fanout.max_concurrency=2", "finetune.max_examples=320", "finetune.epochs=3", "finetune.ckpt_every=5"]
    argv += [a for s in sets for a in ("--set", s)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.monotonic() + 600
    while len(list(tmp_path.glob("artifacts/finetune/*.partial/checkpoints/last.ckpt"))) < 2:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"never caught two fine-tunes running:\n{proc.communicate()[0][-3000:]}")
        time.sleep(0.05)
    below = descendants(proc.pid)
    assert len(below) >= 3  # the Prefect API server and the two fine-tune processes
    os.kill(proc.pid, sig)
    out = proc.communicate(timeout=60)[0]  # SIGTERM: the flow stops its children instead of waiting for them
    assert proc.returncode != 0
    time.sleep(2)
    assert not [p for p in below if alive(p)], out[-2000:]  # nothing orphaned (PR_SET_PDEATHSIG)
    if sig == signal.SIGTERM:
        client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
        runs = client.search_runs([client.get_experiment_by_name("gptflow-micro").experiment_id])
        status = {r.data.tags.get("stage", "parent"): r.info.status for r in runs}
        assert status["finetune[sst2]"] == status["finetune[story_cloze]"] == "KILLED", status

    rerun = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, env=env, timeout=900)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    for manifest in (tmp_path / "artifacts" / "finetune").glob("*/manifest.json"):
        assert json.loads(manifest.read_text())["summary"]["resumed_from_step"] >= 5
