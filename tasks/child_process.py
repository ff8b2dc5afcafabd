"""Processes tied to the life of the process that starts them, and the stage workers built on them.

Stages that fan out on threads must not share one process: a fine-tune seeds torch's global RNG
and sets its thread count, so two at once in one process would make results depend on
scheduling. Each fan-out slot gets a spawned worker process that computes its stages one after
another (imports are paid once per slot; every stage seeds what it draws, so a worker's earlier
stages do not change a later one's result, as on Dask and Ray workers). The kernel stops a worker
(PR_SET_PDEATHSIG) when the thread that started it dies, however it dies: an orphan would go on
writing the partial directory that a rerun is about to use.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import get_context
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING

from tasks.definition import StageEnv, StageOutput

if TYPE_CHECKING:
    from tasks.stage import Stage

PR_SET_PDEATHSIG = 1
_workers: dict[int, StageWorker] = {}  # this process's stage workers, by fan-out slot


def die_with_parent(parent: int, sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A function to run first in a child process: the kernel sends it `sig` when its parent dies (Linux)."""

    def arm() -> None:
        if sys.platform.startswith("linux"):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return arm


def interrupt(signum: int, frame: object) -> None:
    """A SIGTERM handler: raise KeyboardInterrupt, so a pipeline closes its MLflow runs as KILLED on the way out."""
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


@dataclass(frozen=True)
class Placement:
    """Where a fanned-out stage computes: its torch CPU threads and, on the thread runner, the
    fan-out slot whose worker process runs it (None: in the task runner's own worker process)."""

    threads: int
    slot: int | None = None


def compute_stage(stage: Stage, inputs: dict[str, Path], out: Path, env: StageEnv) -> StageOutput:
    """Run the stage definition's compute on its section and inputs (heavy imports happen inside it)."""
    return stage.definition.compute(stage.section, inputs, out, env)


def _visible_gpu(index: int) -> str:
    """The device id CUDA_VISIBLE_DEVICES gives the `index`-th visible GPU (the index itself when unset)."""
    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return visible[index].strip() if index < len(visible) else str(index)


class ChildTraceback(Exception):
    """The traceback of an error raised in a stage worker, attached as the re-raised error's cause."""


def _worker_main(conn: Connection, parent: int, threads: int, gpu: str | None) -> None:
    die_with_parent(parent, signal.SIGKILL)()
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    import torch

    torch.set_num_threads(threads)
    while True:
        try:  # in-memory messages from the parent process over a pipe, never a file
            stage, inputs, out, env = conn.recv()
        except EOFError:  # the flow closed its end: no more stages
            return
        try:
            conn.send((True, compute_stage(stage, inputs, out, env), ""))
        except BaseException as e:
            conn.send((False, e, traceback.format_exc()))


class StageWorker:
    """A spawned process computing stages one at a time for one fan-out slot, on its own GPU if given."""

    def __init__(self, threads: int, gpu: int | None):
        mp = get_context("spawn")
        self._conn, theirs = mp.Pipe()
        device = None if gpu is None else _visible_gpu(gpu)
        self.process = mp.Process(target=_worker_main, args=(theirs, os.getpid(), threads, device), daemon=True)
        self.process.start()
        theirs.close()

    def compute(self, stage: Stage, inputs: dict[str, Path], out: Path, env: StageEnv) -> StageOutput:
        """The stage's compute, in the worker; its error is raised here (the worker's traceback as the
        cause), and a worker that dies without a word (killed) raises RuntimeError."""
        self._conn.send((stage, inputs, out, env))
        try:
            ok, value, trace = self._conn.recv()
        except EOFError:
            self.process.join()
            code = self.process.exitcode
            raise RuntimeError(f"stage '{stage.name}': its worker process died (exit code {code})") from None
        if not ok:
            raise value from ChildTraceback(trace)
        return value

    def close(self) -> None:
        """Let the worker finish and exit."""
        self._conn.close()
        self.process.join()


@contextmanager
def stage_workers(threads: int, gpus: int) -> Iterator[Callable[[int], None]]:
    """Yields `start(slot)`, which starts that fan-out slot's worker unless it runs already (slot i gets
    GPU i when there are enough); stages placed on a slot compute there. Call it from the flow's
    thread, and only for a stage that will compute: a fully cached rerun starts no worker (each
    one imports torch). The workers exit with the block."""

    def start(slot: int) -> None:
        if slot not in _workers:
            _workers[slot] = StageWorker(threads, slot if slot < gpus else None)

    try:
        yield start
    finally:
        for slot in list(_workers):
            _workers.pop(slot).close()


def stop_workers() -> None:
    """Kill every stage worker (the flow was interrupted), so nothing waits for their stages; checkpoints stay."""
    for worker in list(_workers.values()):
        worker.process.kill()


def compute_placed(
    stage: Stage, inputs: dict[str, Path], out: Path, env: StageEnv, placement: Placement
) -> StageOutput:
    """The stage's compute where `placement` puts it: its slot's worker, or this (task runner) process."""
    if placement.slot is not None:
        return _workers[placement.slot].compute(stage, inputs, out, env)
    import torch

    torch.set_num_threads(placement.threads)
    return compute_stage(stage, inputs, out, env)
