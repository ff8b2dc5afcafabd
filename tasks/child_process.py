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
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import get_context
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from tasks.stage import StageContext, StageOutput

PR_SET_PDEATHSIG = 1
_running: set[BaseProcess] = set()  # stage computes in child processes, for stop_children
_running_lock = threading.Lock()


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


class ChildTraceback(Exception):
    """The traceback of an error raised in a stage's child process, attached as the re-raised error's cause."""


def _child_main(conn: Connection, parent: int, threads: int, gpu: str | None, kind: str, ctx: StageContext) -> None:
    _start_child(parent, threads, gpu)
    try:
        conn.send((True, compute_stage(kind, ctx), ""))
    except BaseException as e:
        conn.send((False, e, traceback.format_exc()))


def compute_placed(kind: str, ctx: StageContext, placement: Placement) -> StageOutput:
    """The stage's compute with its placement applied: in a spawned child process, or in this worker process.

    An error in the child is raised here (its traceback as the cause); a child that dies without
    a word (killed) raises RuntimeError.
    """
    if not placement.spawn:
        import torch

        torch.set_num_threads(placement.threads)
        return compute_stage(kind, ctx)
    gpu = None if placement.gpu is None else _visible_gpu(placement.gpu)
    mp = get_context("spawn")
    receive, send = mp.Pipe(duplex=False)
    proc = mp.Process(target=_child_main, args=(send, os.getpid(), placement.threads, gpu, kind, ctx))
    proc.start()
    send.close()
    with _running_lock:
        _running.add(proc)
    try:
        ok, value, trace = receive.recv()
    except EOFError:
        proc.join()
        raise RuntimeError(f"stage '{ctx.stage.name}': its process died (exit code {proc.exitcode})") from None
    finally:
        with _running_lock:
            _running.discard(proc)
        receive.close()
    proc.join()
    if not ok:
        raise value from ChildTraceback(trace)
    return value


def stop_children() -> None:
    """Kill every stage compute running in a child process (the flow was interrupted); checkpoints stay."""
    with _running_lock:
        procs = list(_running)
    for proc in procs:
        proc.kill()
