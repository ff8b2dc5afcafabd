"""Language-model pretraining with a Lightning Trainer: resumable from checkpoints in a fixed directory.

Resume is exact: batches are a pure function of (seed, step) (see gpt/data/windows.py) and the RNG
states that drive dropout are saved in every checkpoint, so a killed run continued from its last
checkpoint ends with the same weights as an uninterrupted one (on CPU, bit for bit).

Scaling out uses Lightning's own strategies (`pretrain.strategy`: ddp, fsdp, deepspeed). A step's
global batch is the same set of windows whatever the device count (gpt/data/windows.py), gradient
accumulation keeps `tokens_per_step` fixed as devices change, and Lightning writes one full
checkpoint from rank 0, so a run checkpointed on N devices resumes on M.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeGuard, get_args

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import Logger
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, SingleDeviceStrategy, Strategy
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from torch.optim import Optimizer

from gpt.data.windows import ShardDataModule
from gpt.model.config import ModelConfig
from gpt.model.transformer import GPT, Block
from gpt.train.callbacks import AtSteps, NonFiniteLossStop, TokenThroughput
from gpt.train.config import LightningPrecision, PretrainConfig, auto_precision
from gpt.train.optim import adamw, warmup_cosine, warmup_linear, warmup_stable_decay

LAST_CKPT = "last.ckpt"
STABLE_CKPT = "stable.ckpt"  # wsd: the state at the cooldown's start (save_stable)
STABLE_STEP_FILE = "stable.json"
INITIAL_VAL_FILE = "initial_val.json"
RNG_KEY = "gptflow_rng"


def rng_state() -> dict[str, Any]:
    """Torch (CPU and CUDA), NumPy and Python RNG states as tensors and plain tuples (weights_only-safe)."""
    state = np.random.get_state(legacy=True)  # legacy (the default): a tuple for the global MT19937 generator
    if not isinstance(state, tuple):
        raise TypeError(f"numpy's global RNG state is not MT19937's legacy tuple: {type(state).__name__}")
    kind, keys, pos, has_gauss, cached = state
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])


class ExactResumeModule(L.LightningModule):
    """A LightningModule whose checkpoints carry the RNG states, so a resumed run draws the same dropout masks."""

    resumed_from_step: int = 0  # the global step of the checkpoint this run resumed from

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Lightning does not save RNG states; dropout needs them for an exact resume."""
        checkpoint[RNG_KEY] = rng_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.resumed_from_step = int(checkpoint["global_step"])
        if RNG_KEY in checkpoint:
            set_rng_state(checkpoint[RNG_KEY])

    def clips_fused_optimizer(self) -> bool:
        """Whether this run can use a fused optimizer: one device or DDP (full local gradients, clipped
        here) without fp16 loss scaling (the fused kernel would unscale the gradients after clipping)."""
        plain = isinstance(self.trainer.strategy, (SingleDeviceStrategy, DDPStrategy))
        return plain and self.trainer.precision != "16-mixed"

    def configure_gradient_clipping(
        self, optimizer: Optimizer, gradient_clip_val: float | None = None, gradient_clip_algorithm: str | None = None
    ) -> None:
        """Clip by global norm; Lightning's mixed-precision plugin refuses any fused optimizer, even under
        bf16 where nothing is scaled, so clipping happens here for the runs `clips_fused_optimizer` allows."""
        if gradient_clip_val and gradient_clip_algorithm in (None, "norm") and self.clips_fused_optimizer():
            torch.nn.utils.clip_grad_norm_(self.parameters(), gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)


class LMModule(ExactResumeModule):
    """Next-token prediction on a GPT; logs train_loss, val_loss and (via callbacks) lr, tokens/s, MFU."""

    def __init__(self, model_config: ModelConfig, train: PretrainConfig):
        super().__init__()
        self.save_hyperparameters({"model": asdict(model_config), "pretrain": asdict(train)})  # a record, as JSON
        self.model = GPT(model_config)
        self.train_cfg = train
        cfg = self.model.config
        self.flops_per_batch = self.model.flops_per_token() * self.train_cfg.batch_size * cfg.block_size
        self.batch_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = self.model.next_token_loss

    def compile_loss(self) -> None:
        """torch.compile the whole loss (the model and the LM head's cross-entropy) in one graph.

        The model itself stays uncompiled, so parameter names (and checkpoints) are the plain model's.
        """
        self.batch_loss = torch.compile(self.model.next_token_loss)

    def _loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return self.batch_loss(x, y)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("train_loss", loss, prog_bar=True, sync_dist=True)  # mean over ranks: the global batch's loss
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        # eager: a few val batches don't pay back compiling the eval-mode graph (~10 s on this CPU)
        loss = self.model.next_token_loss(*batch)
        self.log("val_loss", loss, prog_bar=True, on_epoch=True, batch_size=batch[0].size(0), sync_dist=True)

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        c = self.train_cfg
        opt = adamw(self.model, c.lr, c.weight_decay, fused=self.clips_fused_optimizer())
        if c.schedule == "linear":
            fn = warmup_linear(c.warmup_steps, c.max_steps)
        elif c.schedule == "wsd":
            fn = warmup_stable_decay(c.warmup_steps, c.max_steps, c.cooldown(), c.min_lr_ratio)
        else:
            fn = warmup_cosine(c.warmup_steps, c.max_steps, c.min_lr_ratio)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, fn)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


@dataclass
class PretrainResult:
    """What the pretrain stage reports."""

    initial_val_loss: float
    final_val_loss: float
    final_train_loss: float
    steps: int
    resumed_from_step: int
    params: int
    tokens_per_sec: float
    mfu: float
    fit_seconds: float
    accumulate_grad_batches: int
    world_size: int


def _is_lightning_precision(precision: str) -> TypeGuard[LightningPrecision]:
    return precision in get_args(LightningPrecision)


def resolve_precision(precision: str) -> LightningPrecision:
    """A Lightning precision; `auto` decided for this machine (`auto_precision`)."""
    if precision == "auto":
        return auto_precision(gpu=torch.cuda.is_available())
    if not _is_lightning_precision(precision):
        raise ValueError(f"precision {precision!r} is not auto | {' | '.join(get_args(LightningPrecision))}")
    return precision


def accumulation(cfg: PretrainConfig, block_size: int, world_size: int = 1) -> int:
    """Micro-batches per optimizer step so a step sees about `tokens_per_step` tokens over all ranks (1 if unset)."""
    return cfg.accumulation(block_size, world_size)


def training_strategy(cfg: PretrainConfig) -> str | Strategy:
    """Lightning's strategy for `pretrain.strategy`; FSDP shards per Transformer block (optionally recomputing it)."""
    if cfg.strategy.startswith("fsdp"):
        checkpointing: set[type[torch.nn.Module]] | None = {Block} if cfg.activation_checkpointing else None
        offload = cfg.strategy == "fsdp_cpu_offload"
        return FSDPStrategy(
            auto_wrap_policy={Block}, activation_checkpointing_policy=checkpointing, cpu_offload=offload
        )
    return cfg.strategy


def checkpoint_callback(cfg: PretrainConfig, ckpt_dir: Path) -> ModelCheckpoint:
    """Every `ckpt_every` steps: `last.ckpt` plus the newest `ckpt_keep` step checkpoints."""
    keep = {"monitor": "step", "mode": "max", "save_top_k": cfg.ckpt_keep} if cfg.ckpt_keep else {"save_top_k": 0}
    return ModelCheckpoint(
        dirpath=ckpt_dir, filename="{step}", every_n_train_steps=cfg.ckpt_every, save_last=True, **keep
    )


def copy_weights(source: GPT, target: GPT) -> None:
    """Every weight of `source` into `target`, the token rows up to `source`'s (padding rows keep their init).

    ValueError when the two differ in architecture or vocabulary.
    """
    src, dst = source.config, target.config
    if src.vocab_size != dst.vocab_size:
        raise ValueError(
            f"the initial weights have a vocabulary of {src.vocab_size} tokens, the tokenizer {dst.vocab_size}"
        )
    state = source.state_dict()
    with torch.no_grad():
        wte = target.wte.weight.detach().clone()
        wte[: state["wte.weight"].size(0)] = state["wte.weight"][: wte.size(0)]
        state["wte.weight"] = wte
    target.load_state_dict(state)


def save_stable(trainer: L.Trainer, ckpt_dir: Path, step: int) -> None:
    """`stable.ckpt` (+ its step in `stable.json`): the wsd schedule's last step before its cooldown, from which
    `pretrain.resume_from` extends the run exactly as if it had been planned longer."""
    trainer.save_checkpoint(ckpt_dir / STABLE_CKPT)  # every rank calls it; rank 0 writes
    if trainer.is_global_zero:
        (ckpt_dir / STABLE_STEP_FILE).write_text(json.dumps({"step": step}))


def resume_checkpoint(ckpt_dir: Path) -> Path | None:
    """The checkpoint a killed run continues from: `last.ckpt`, else the newest other checkpoint there.

    A `last.ckpt` found corrupt is moved aside before training (tasks/stage.py), and the step
    checkpoints kept beside it are exact resume points too, so less work is lost than from step 0.
    """
    last = ckpt_dir / LAST_CKPT
    if last.is_file():
        return last
    others = [p for p in ckpt_dir.glob("*.ckpt") if p.is_file()]
    return max(others, key=lambda p: p.stat().st_mtime_ns) if others else None


def pretrain(
    model_config: ModelConfig,
    cfg: PretrainConfig,
    shard_dir: Path,
    ckpt_dir: Path,
    seed: int,
    logger: Logger | bool = False,
    extra_callbacks: list[L.Callback] | None = None,
    init_weights: GPT | None = None,
) -> tuple[GPT, PretrainResult]:
    """Train (or resume training) a GPT on the shards; checkpoints go to `ckpt_dir` (`last.ckpt` resumes).

    `init_weights`: start from this GPT's weights (same architecture and vocabulary) instead of a random init.
    """
    L.seed_everything(seed, workers=True, verbose=False)
    module = LMModule(model_config, cfg)
    if init_weights is not None:
        copy_weights(init_weights, module.model)
    if cfg.compiles(gpu=torch.cuda.is_available()):
        module.compile_loss()
    data = ShardDataModule(shard_dir, model_config.block_size, cfg.batch_size, cfg.val_batches, seed)
    throughput = TokenThroughput(window_size=min(10, cfg.max_steps))
    callbacks: list[L.Callback] = [
        checkpoint_callback(cfg, ckpt_dir),
        throughput,
        NonFiniteLossStop(),
        *(extra_callbacks or []),
    ]
    if cfg.schedule == "wsd":  # the cooldown's start: where a longer run of the same recipe would still be
        stable = [cfg.max_steps - cfg.cooldown()]
        callbacks.append(AtSteps(stable, lambda step, t: save_stable(t, ckpt_dir, step), every_rank=True))
    if logger:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    trainer = L.Trainer(
        max_steps=cfg.max_steps,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=training_strategy(cfg),
        precision=resolve_precision(cfg.precision),
        gradient_clip_val=cfg.grad_clip,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        log_every_n_steps=cfg.log_every,
        logger=logger,
        callbacks=callbacks,
        enable_model_summary=False,
        default_root_dir=ckpt_dir,
    )
    # The world size is known only once Lightning has resolved devices x nodes, so accumulation (and
    # the validation interval, counted in micro-batches) are set on the trainer before fit reads them.
    accumulate = accumulation(cfg, model_config.block_size, trainer.world_size)
    trainer.accumulate_grad_batches = accumulate
    trainer.val_check_interval = cfg.val_every * accumulate
    initial_file = ckpt_dir / INITIAL_VAL_FILE
    if initial_file.is_file():  # the step-0 val loss, kept so a resumed run still reports it
        initial = float(json.loads(initial_file.read_text())["val_loss"])
    else:
        initial = float(trainer.validate(module, datamodule=data, verbose=False)[0]["val_loss"])
        if trainer.is_global_zero:
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            initial_file.write_text(json.dumps({"val_loss": initial}))
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=data, ckpt_path=resume_checkpoint(ckpt_dir), weights_only=True)
    fit_seconds = time.perf_counter() - t0
    resumed_from = module.resumed_from_step
    tokens_per_step = accumulate * trainer.world_size * cfg.batch_size * model_config.block_size
    tokens = (trainer.global_step - resumed_from) * tokens_per_step
    tokens_per_sec = tokens / fit_seconds
    final_train = float(trainer.callback_metrics.get("train_loss", float("nan")))
    final_val = float(trainer.validate(module, datamodule=data, verbose=False)[0]["val_loss"])
    model = full_model(trainer, module, model_config)
    result = PretrainResult(
        initial_val_loss=initial,
        final_val_loss=final_val,
        final_train_loss=final_train,
        steps=trainer.global_step,
        resumed_from_step=resumed_from,
        params=model.num_params(),
        tokens_per_sec=tokens_per_sec,
        mfu=tokens_per_sec * model.flops_per_token() / throughput.available_flops
        if throughput.available_flops
        else float("nan"),
        fit_seconds=fit_seconds,
        accumulate_grad_batches=accumulate,
        world_size=trainer.world_size,
    )
    return model, result


def full_model(trainer: L.Trainer, module: LMModule, model_config: ModelConfig) -> GPT:
    """The trained GPT with all its weights: under FSDP they are gathered from the shards (every rank must call)."""
    if not isinstance(trainer.strategy, FSDPStrategy):
        return module.model
    state = trainer.strategy.lightning_module_state_dict()  # full weights on rank 0, a collective
    model = GPT(model_config)
    if trainer.is_global_zero:
        model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    return model
