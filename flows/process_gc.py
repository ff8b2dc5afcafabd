"""The garbage collector in a `gptflow` command-line process: out of the way of imports and of the exit.

Importing Prefect, MLflow, pandas and matplotlib allocates about a million long-lived objects. With
the collector on, the collections triggered while they pile up cost about a quarter of the import
time, and the interpreter's final collection at exit walks them all once more (~1.5 s on 2 cores)
only for the operating system to free the memory anyway. So a process that exits after one command
(`gptflow ...`, not a test calling `main`) freezes what it holds before its final collection, and
heavy imports run with the collector off; in a one-shot process what they built is then frozen
(never scanned again: it lives until exit anyway), elsewhere the collector just resumes.
"""

from __future__ import annotations

import atexit
import gc
from collections.abc import Iterator
from contextlib import contextmanager

_one_shot = False


def one_shot_process() -> None:
    """Mark this process as one that exits after its command: the interpreter's final collection is skipped.

    Call it first thing: atexit runs handlers last-registered first, so `gc.freeze` runs after every
    handler registered later (logging, Prefect, MLflow) and just before the interpreter tears down.
    """
    global _one_shot
    if not _one_shot:
        _one_shot = True
        atexit.register(gc.freeze)


@contextmanager
def imports_without_gc() -> Iterator[None]:
    """Run the block (heavy imports) with the collector off; freeze what it built in a one-shot process."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if _one_shot:
            gc.freeze()
        if enabled:
            gc.enable()
