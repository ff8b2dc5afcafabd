"""Lightning callbacks gptflow adds: MFU on CPU too, a clear stop on a non-finite loss, a stop on request."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ThroughputMonitor


def measure_peak_flops(dtype: torch.dtype = torch.float32, n: int = 1024, repeats: int = 8) -> float:
    """Achievable matmul FLOP/s on this CPU, the denominator of MFU where no datasheet peak exists."""
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    a @ b  # warm up
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - t0)


class TokenThroughput(ThroughputMonitor):
    """Lightning's ThroughputMonitor counting tokens, with a measured peak on CPU so MFU is logged there too.

    Lightning only knows datasheet peaks for GPUs/TPUs (`get_available_flops` is None on CPU).
    """

    def __init__(self, window_size: int = 10):
        super().__init__(
            batch_size_fn=lambda batch: batch[0].size(0),
            length_fn=lambda batch: batch[0].numel(),
            window_size=window_size,
        )

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.available_flops is None and trainer.strategy.root_device.type == "cpu":
            bf16 = "bf16" in str(trainer.precision)
            peak = int(measure_peak_flops(torch.bfloat16 if bf16 else torch.float32))
            self.available_flops = peak
            for throughput in self._throughputs.values():
                throughput.available_flops = peak


class NonFiniteLossStop(L.Callback):
    """Stop training at the first NaN/inf loss with an error naming the step; checkpoints stay as they are."""

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, *_: Any) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None and not torch.isfinite(loss).all():
            raise FloatingPointError(
                f"non-finite loss ({loss.item()}) at step {trainer.global_step}; "
                "checkpoints from earlier steps are kept — lower the lr or check the data"
            )


class StopRequested(RuntimeError):
    """Training was asked to stop from outside (a file appeared); its checkpoints stay for a resume."""


class StopWhenFileAppears(L.Callback):
    """Raise StopRequested at the next optimizer step once `path` exists.

    Another thread or process (one that can neither signal this one nor share its memory: a
    stage worker, a trainer on another thread) asks the training to stop by creating the file.
    Stopping with an error, not `trainer.should_stop`, so the truncated run is never taken for a
    finished one. One stat per step.
    """

    def __init__(self, path: Path):
        self.path = path

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self.path.exists():
            raise StopRequested(f"asked to stop at step {trainer.global_step}: {self.path} exists")
