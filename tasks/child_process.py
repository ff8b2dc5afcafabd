"""Processes tied to the life of the process that starts them, and stage computes run in one.

Stages that fan out on threads must not share one process: a fine-tune seeds torch's global RNG
and sets its thread count, so two in one process would make results depend on scheduling. Each
such compute runs in a freshly spawned process that the kernel stops (PR_SET_PDEATHSIG) when its
parent thread dies, however it dies: an orphan would go on writing the partial directory that a
rerun is about to use.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import signal
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context

from tasks.stage import StageContext, StageOutput

PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int, sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A function to run first in a child process: the kernel sends it `sig` when its parent dies (Linux)."""

    def arm() -> None:
        if sys.platform.startswith("linux"):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return arm


@dataclass(frozen=True)
class Placement:
    """Where a fanned-out stage computes: its torch CPU threads, its GPU (an index into the visible
    ones), and whether it needs a process of its own (`spawn`: its task runs on a thread)."""

    threads: int
    spawn: bool
    gpu: int | None = None


def compute_stage(kind: str, ctx: StageContext) -> StageOutput:
    """Run `tasks/<kind>.py`'s compute, imported only now (a cached stage never imports torch)."""
    return importlib.import_module(f"tasks.{kind}").compute(ctx)


def _start_child(parent: int, threads: int, gpu: str | None) -> None:
    die_with_parent(parent, signal.SIGKILL)()
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    import torch

    torch.set_num_threads(threads)


def _visible_gpu(index: int) -> str:
    """The device id CUDA_VISIBLE_DEVICES gives the `index`-th visible GPU (the index itself when unset)."""
    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return visible[index].strip() if index < len(visible) else str(index)


def compute_placed(kind: str, ctx: StageContext, placement: Placement) -> StageOutput:
    """The stage's compute with its placement applied: in a spawned child process, or in this worker process."""
    if not placement.spawn:
        import torch

        torch.set_num_threads(placement.threads)
        return compute_stage(kind, ctx)
    gpu = None if placement.gpu is None else _visible_gpu(placement.gpu)
    with ProcessPoolExecutor(
        1, mp_context=get_context("spawn"), initializer=_start_child, initargs=(os.getpid(), placement.threads, gpu)
    ) as pool:
        return pool.submit(compute_stage, kind, ctx).result()
