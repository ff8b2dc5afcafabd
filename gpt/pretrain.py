"""Language-model pretraining with a Lightning Trainer: resumable from checkpoints in a fixed directory."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import Logger

from gpt.callbacks import NonFiniteLossStop, TokenThroughput
from gpt.config import PretrainConfig
from gpt.lm_data import ShardDataModule
from gpt.model import GPT, GPTConfig
from gpt.optim import adamw, warmup_cosine

LAST_CKPT = "last.ckpt"
INITIAL_VAL_FILE = "initial_val.json"


class LMModule(L.LightningModule):
    """Next-token prediction on a GPT; logs train_loss, val_loss and (via callbacks) lr, tokens/s, MFU."""

    def __init__(self, gpt_config: dict[str, Any], train: dict[str, Any]):
        super().__init__()
        self.save_hyperparameters()
        self.model = GPT(GPTConfig(**gpt_config))
        self.train_cfg = PretrainConfig(**train)
        cfg = self.model.config
        self.flops_per_batch = self.model.flops_per_token() * self.train_cfg.batch_size * cfg.block_size

    def _loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        logits = self.model(x)
        return F.cross_entropy(logits.view(-1, logits.size(-1)).float(), y.reshape(-1))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.log("val_loss", self._loss(batch), prog_bar=True, on_epoch=True, batch_size=batch[0].size(0))

    def configure_optimizers(self) -> dict[str, Any]:
        c = self.train_cfg
        opt = adamw(self.model, c.lr, c.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(c.warmup_steps, c.max_steps, c.min_lr_ratio))
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


def resolve_precision(precision: str) -> str:
    """`auto` means bf16-mixed on a GPU and full fp32 on CPU."""
    if precision != "auto":
        return precision
    return "bf16-mixed" if torch.cuda.is_available() else "32-true"


def pretrain(
    gpt_config: GPTConfig,
    cfg: PretrainConfig,
    shard_dir: Path,
    ckpt_dir: Path,
    seed: int,
    logger: Logger | bool = False,
    extra_callbacks: list[L.Callback] | None = None,
) -> tuple[GPT, PretrainResult]:
    """Train (or resume training) a GPT on the shards; checkpoints go to `ckpt_dir/last.ckpt`."""
    L.seed_everything(seed, workers=True, verbose=False)
    module = LMModule(asdict(gpt_config), asdict(cfg))
    data = ShardDataModule(shard_dir, gpt_config.block_size, cfg.batch_size, cfg.val_batches, seed)
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=cfg.ckpt_every, save_top_k=0, save_last=True)
    throughput = TokenThroughput(window_size=min(10, cfg.max_steps))
    callbacks: list[L.Callback] = [checkpoint, throughput, NonFiniteLossStop(), *(extra_callbacks or [])]
    if logger:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    trainer = L.Trainer(
        max_steps=cfg.max_steps,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        strategy=cfg.strategy,
        precision=resolve_precision(cfg.precision),
        gradient_clip_val=cfg.grad_clip,
        val_check_interval=cfg.val_every,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        log_every_n_steps=cfg.log_every,
        logger=logger,
        callbacks=callbacks,
        enable_model_summary=False,
        default_root_dir=ckpt_dir,
    )
    last = ckpt_dir / LAST_CKPT
    initial_file = ckpt_dir / INITIAL_VAL_FILE
    resumed_from = 0
    if last.is_file():
        resumed_from = int(torch.load(last, map_location="cpu", weights_only=False)["global_step"])
    if not initial_file.is_file():  # the step-0 val loss, kept so a resumed run still reports it
        initial_val = trainer.validate(module, datamodule=data, verbose=False)[0]["val_loss"]
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        initial_file.write_text(json.dumps({"val_loss": float(initial_val)}))
    initial = float(json.loads(initial_file.read_text())["val_loss"])
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=data, ckpt_path=last if last.is_file() else None)
    fit_seconds = time.perf_counter() - t0
    tokens_per_sec = (trainer.global_step - resumed_from) * cfg.batch_size * gpt_config.block_size / fit_seconds
    final_train = float(trainer.callback_metrics.get("train_loss", float("nan")))
    final_val = float(trainer.validate(module, datamodule=data, verbose=False)[0]["val_loss"])
    result = PretrainResult(
        initial_val_loss=initial,
        final_val_loss=final_val,
        final_train_loss=final_train,
        steps=trainer.global_step,
        resumed_from_step=resumed_from,
        params=module.model.num_params(),
        tokens_per_sec=tokens_per_sec,
        mfu=tokens_per_sec * module.model.flops_per_token() / throughput.available_flops
        if throughput.available_flops
        else float("nan"),
        fit_seconds=fit_seconds,
    )
    return module.model, result
