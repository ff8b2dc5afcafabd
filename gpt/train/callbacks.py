"""Lightning callbacks gptflow adds: MFU on CPU too, a clear stop on a non-finite loss, a stop on request."""

from __future__ import annotations

import time
from collections.abc import Callable
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


class ScoresAtValidation(L.Callback):
    """Logs `<prefix>/<name>` = `score(model, data)` for each named data set at every validation (in `fit` and in
    standalone `validate` calls, not the sanity check), on the module's GPT in eval mode (its mode restored)."""

    def __init__(self, prefix: str, named: list[tuple[str, Any]], score: Callable[[Any, Any], float]):
        self.prefix, self.named, self.score = prefix, named, score

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from gpt.model.transformer import GPT

        if trainer.sanity_checking:
            return
        model = pl_module.model
        if not isinstance(model, GPT):
            raise TypeError(f"{type(self).__name__} needs a module whose .model is a GPT, not {type(model).__name__}")
        was_training = model.training
        model.eval()
        for name, data in self.named:
            pl_module.log(f"{self.prefix}/{name}", self.score(model, data))
        model.train(was_training)


class AtSteps(L.Callback):
    """Calls `action(step, trainer)` on rank 0 once the optimizer step `step` is done, for each of `steps`.

    What pretraining keeps of chosen steps (model directories, the wsd cooldown's start): a resumed run redoes
    the steps it lost, and with them their actions, which overwrite with the same state.
    """

    def __init__(self, steps: list[int], action: Callable[[int, L.Trainer], None], every_rank: bool = False):
        self.steps = set(steps)
        self.action = action
        self.every_rank = every_rank  # the action is collective (trainer.save_checkpoint waits for all ranks)
        self.done: set[int] = set()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *_: Any) -> None:
        step = trainer.global_step
        if step in self.steps and step not in self.done and (self.every_rank or trainer.is_global_zero):
            self.action(step, trainer)
            self.done.add(step)
