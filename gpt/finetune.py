"""Supervised fine-tuning (GPT-1 §3.2): a linear head on h(extract) plus the auxiliary LM loss, L3 = L2 + λ·L1."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import Logger
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader

from gpt.config import FinetuneConfig
from gpt.model import GPT, GPTConfig
from gpt.optim import adamw, warmup_linear
from gpt.pretrain import LAST_CKPT, resolve_precision
from gpt.transforms import EncodedExample, collate

TASK_MODEL_FILE = "task_model.json"
WEIGHTS_FILE = "model.safetensors"


class TaskModel(nn.Module):
    """A GPT with a task head; the head's input follows the task type's transformation."""

    def __init__(self, gpt: GPT, task_type: str, num_outputs: int, clf_dropout: float):
        super().__init__()
        self.gpt = gpt
        self.task_type = task_type
        self.num_outputs = num_outputs
        self.clf_dropout = nn.Dropout(clf_dropout)
        out = 1 if task_type == "multiple_choice" else num_outputs
        self.head = nn.Linear(gpt.config.n_embd, out)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(task logits [B, K], per-token LM loss averaged over real tokens)."""
        B, C, T = tokens.shape
        flat, flat_len = tokens.view(B * C, T), lengths.view(B * C)
        hidden = self.gpt.hidden_states(flat)
        h_extract = self.clf_dropout(hidden[torch.arange(B * C, device=flat.device), flat_len - 1])
        if self.task_type == "multiple_choice":
            logits = self.head(h_extract).view(B, C)
        elif self.task_type == "similarity":  # both orders' h(extract) summed, then linear
            logits = self.head(h_extract.view(B, C, -1).sum(1))
        else:
            logits = self.head(h_extract)
        lm_logits = self.gpt.lm_logits(hidden[:, :-1])
        mask = torch.arange(T - 1, device=flat.device)[None, :] < (flat_len - 1)[:, None]
        token_loss = F.cross_entropy(lm_logits.transpose(1, 2).float(), flat[:, 1:], reduction="none")
        lm_loss = (token_loss * mask).sum() / mask.sum().clamp(min=1)
        return logits, lm_loss


class FinetuneModule(L.LightningModule):
    """Trains a TaskModel with cross-entropy on the task plus λ times the LM loss."""

    def __init__(self, model: TaskModel, cfg: FinetuneConfig, total_steps: int):
        super().__init__()
        self.model, self.cfg, self.total_steps = model, cfg, total_steps

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits, lm_loss = self.model(batch["tokens"], batch["lengths"])
        task_loss = F.cross_entropy(logits.float(), batch["labels"])
        loss = task_loss + self.cfg.aux_lm_weight * lm_loss
        bs = batch["labels"].size(0)
        self.log_dict({"train_loss": loss, "task_loss": task_loss, "lm_loss": lm_loss}, prog_bar=True, batch_size=bs)
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        opt = adamw(self.model, self.cfg.lr, self.cfg.weight_decay)
        warmup = math.ceil(self.cfg.warmup_fraction * self.total_steps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_linear(warmup, self.total_steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


@dataclass
class FinetuneResult:
    """What the finetune stage reports."""

    train_examples: int
    steps: int
    final_train_loss: float
    final_task_loss: float
    final_lm_loss: float


def finetune(
    model: TaskModel,
    train: list[EncodedExample],
    cfg: FinetuneConfig,
    ckpt_dir: Path,
    seed: int,
    precision: str = "auto",
    logger: Logger | bool = False,
) -> FinetuneResult:
    """Fine-tune in place for `cfg.epochs` epochs, resuming from `ckpt_dir/last.ckpt` if present."""
    L.seed_everything(seed, workers=True, verbose=False)
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(train, batch_size=cfg.batch_size, shuffle=True, collate_fn=collate, generator=generator)
    total_steps = cfg.epochs * len(loader)
    module = FinetuneModule(model, cfg, total_steps)
    callbacks: list[L.Callback] = [ModelCheckpoint(dirpath=ckpt_dir, save_top_k=0, save_last=True)]
    if logger:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    trainer = L.Trainer(
        max_epochs=cfg.epochs,
        accelerator="auto",
        devices=1,
        precision=resolve_precision(precision),
        gradient_clip_val=1.0,
        log_every_n_steps=max(1, min(10, len(loader) // 4)),
        logger=logger,
        callbacks=callbacks,
        enable_model_summary=False,
        default_root_dir=ckpt_dir,
    )
    last = ckpt_dir / LAST_CKPT
    trainer.fit(module, train_dataloaders=loader, ckpt_path=last if last.is_file() else None)
    m = trainer.callback_metrics
    return FinetuneResult(
        train_examples=len(train),
        steps=trainer.global_step,
        final_train_loss=float(m.get("train_loss", float("nan"))),
        final_task_loss=float(m.get("task_loss", float("nan"))),
        final_lm_loss=float(m.get("lm_loss", float("nan"))),
    )


@torch.no_grad()
def predict(model: TaskModel, examples: list[EncodedExample], batch_size: int = 64) -> torch.Tensor:
    """Task logits [N, K] for encoded examples, in order."""
    model.eval()
    out = []
    for batch in DataLoader(examples, batch_size=batch_size, collate_fn=collate):
        logits, _ = model(batch["tokens"], batch["lengths"])
        out.append(logits.float())
    return torch.cat(out)


def save_task_model(model: TaskModel, out_dir: Path) -> None:
    """Write the GPT config, task head description and all weights (safetensors)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "gpt": asdict(model.gpt.config),
        "task_type": model.task_type,
        "num_outputs": model.num_outputs,
        "clf_dropout": model.clf_dropout.p,
    }
    (out_dir / TASK_MODEL_FILE).write_text(json.dumps(meta, indent=2))
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, out_dir / WEIGHTS_FILE)


def load_task_model(model_dir: Path) -> TaskModel:
    """Rebuild a TaskModel written by `save_task_model`."""
    meta = json.loads((model_dir / TASK_MODEL_FILE).read_text())
    model = TaskModel(GPT(GPTConfig(**meta["gpt"])), meta["task_type"], meta["num_outputs"], meta["clf_dropout"])
    model.load_state_dict(load_file(model_dir / WEIGHTS_FILE))
    return model
