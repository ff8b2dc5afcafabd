"""An in-process 'kill' for resume tests: a callback that raises after a given optimizer step."""

from __future__ import annotations

import lightning as L


class Crash(RuntimeError):
    """Raised by `CrashAt`; tests expect exactly this, so real errors still fail them."""


class CrashAt(L.Callback):
    """Stops the run with an exception after `step` optimizer steps (an in-process 'kill')."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *_):
        if trainer.global_step == self.step:
            raise Crash(f"killed at {self.step}")
