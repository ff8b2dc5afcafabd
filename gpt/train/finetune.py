"""Supervised fine-tuning (GPT-1 §3.2): a linear head on h(extract) plus the auxiliary LM loss, L3 = L2 + λ·L1.

Resume is exact, as in pretraining: `last.ckpt` every `ckpt_every` optimizer steps and after each epoch's dev check,
training batches a pure function of (seed, optimizer step) (`EpochPermutationBatches`), and the RNG
states that drive dropout saved in every checkpoint; a run killed mid-epoch and continued from
`last.ckpt` sees no example twice or never and ends with the uninterrupted run's weights.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from gpt.downstream.metrics import HIGHER_IS_BETTER, compute_metrics
from gpt.downstream.spec import TaskType
from gpt.downstream.transforms import EncodedExample, collate
from gpt.model.config import WEIGHTS_FILE, ModelConfig
from gpt.model.transformer import GPT
from gpt.train.config import FinetuneConfig
from gpt.train.optim import adamw, warmup_linear
from gpt.train.pretrain import ExactResumeModule, resolve_precision, resume_checkpoint

TASK_MODEL_FILE = "task_model.json"
BEST_DIR = "best"


class TaskModel(nn.Module):
    """A GPT with a task head; the head's input follows the task type's transformation.

    classification/entailment: linear on h(extract); similarity: the two orders' h(extract) summed,
    then linear (classes, or one output for a regression score); multiple choice: linear to one
    score per answer sequence, so a softmax over dim 1 spans one question's answers.
    """

    def __init__(
        self,
        gpt: GPT,
        task_type: TaskType,
        num_outputs: int,
        clf_dropout: float,
        regression: bool = False,
        init_seed: int | None = None,
    ):
        """`init_seed` draws the head's weights from its own generator, so they do not depend on what
        else drew from the process-global torch RNG before (None: the global RNG, e.g. before a load)."""
        super().__init__()
        self.gpt = gpt
        self.task_type = task_type
        self.num_outputs = num_outputs
        self.regression = regression
        self.clf_dropout = nn.Dropout(clf_dropout)
        out = 1 if task_type == "multiple_choice" or regression else num_outputs
        self.head = nn.Linear(gpt.config.n_embd, out)
        generator = torch.Generator().manual_seed(init_seed) if init_seed is not None else None
        nn.init.normal_(self.head.weight, std=0.02, generator=generator)
        nn.init.zeros_(self.head.bias)

    def forward(
        self, tokens: torch.Tensor, lengths: torch.Tensor, with_lm: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(task logits [B, K], LM loss averaged over the real tokens, or None when `with_lm` is off)."""
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
        if not with_lm:
            return logits, None
        real = torch.arange(T - 1, device=flat.device)[None, :] < (flat_len - 1)[:, None]  # real tokens only
        targets = flat[:, 1:].masked_fill(~real, -100)
        return logits, self.gpt.lm_loss(hidden[:, :-1], targets)


def extend_vocab(gpt: GPT, vocab_size: int) -> GPT:
    """`gpt` with room for `vocab_size` tokens: new embedding rows (GPT-1's start/delim/extract on top of
    an imported vocabulary) are initialised like the rest (normal, std 0.02); every learned weight is kept."""
    if vocab_size <= gpt.vocab_size:
        return gpt
    bigger = GPT(replace(gpt.config, vocab_size=vocab_size))
    state = gpt.state_dict()
    rows = state["wte.weight"].size(0)
    with torch.no_grad():
        grown = bigger.wte.weight.clone()
        grown[:rows] = state["wte.weight"]
        state["wte.weight"] = grown
    bigger.load_state_dict(state)
    return bigger


def fresh_special_embeddings(gpt: GPT, token_ids: Sequence[int], seed: int) -> None:
    """Re-draw the embedding rows of `token_ids` (normal, std 0.02, from `seed`): GPT-1's start/delim/extract are
    new tokens at fine-tuning. Pretraining text never contains them, so with the LM head tied to the embedding
    their rows learn only "never predict me" and drift together (cosine ~0.9 with each other after 1,000 steps
    of the cpu-30min run), which fine-tuning would first have to undo."""
    # a stream of its own: the task head draws from Generator(seed), and these rows must not repeat its draws
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, 1]).generate_state(1)[0]))
    rows = torch.tensor(list(token_ids))
    with torch.no_grad():
        fresh = torch.randn(len(rows), gpt.config.n_embd, generator=generator) * 0.02
        gpt.wte.weight[rows] = fresh.to(gpt.wte.weight.dtype)


def task_loss(model: TaskModel, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """L2: mean squared error for a regression head, else cross-entropy (over answers, for multiple choice)."""
    if model.regression:
        return F.mse_loss(logits.squeeze(-1).float(), labels.float())
    return F.cross_entropy(logits.float(), labels)


class FinetuneModule(ExactResumeModule):
    """Trains a TaskModel on L3 = L2 + λ·L1 (just L2 when λ = 0) and scores the dev split each epoch."""

    def __init__(self, model: TaskModel, cfg: FinetuneConfig, total_steps: int, metrics: tuple[str, ...] = ()):
        super().__init__()
        self.model, self.cfg, self.total_steps, self.metrics = model, cfg, total_steps, metrics
        self._val: list[tuple[torch.Tensor, torch.Tensor]] = []

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        use_lm = self.cfg.aux_lm_weight > 0
        logits, lm_loss = self.model(batch["tokens"], batch["lengths"], with_lm=use_lm)
        l2 = task_loss(self.model, logits, batch["labels"])
        loss = l2 + self.cfg.aux_lm_weight * lm_loss if lm_loss is not None else l2
        logs = {"train_loss": loss, "task_loss": l2, **({"lm_loss": lm_loss} if lm_loss is not None else {})}
        self.log_dict(logs, prog_bar=True, batch_size=batch["labels"].size(0))
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits, _ = self.model(batch["tokens"], batch["lengths"], with_lm=False)
        self._val.append((logits.float().cpu(), batch["labels"].cpu()))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        logits = torch.cat([v[0] for v in self._val])
        labels = torch.cat([v[1] for v in self._val])
        self._val.clear()
        scores = compute_metrics(self.metrics, logits, labels, self.model.regression)
        self.log_dict({f"val_{k}": v for k, v in scores.items()}, prog_bar=True)

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        opt = adamw(self.model, self.cfg.lr, self.cfg.weight_decay, fused=self.clips_fused_optimizer())
        warmup = math.ceil(self.cfg.warmup_fraction * self.total_steps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_linear(warmup, self.total_steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class StepCheckpoint(ModelCheckpoint):
    """`last.ckpt` every `every_n_train_steps` optimizer steps, except after an epoch's last batch.

    That state is saved by the epoch-end checkpoint once the epoch's dev check has run: Lightning does
    not rerun a dev check on resume, so a checkpoint taken just before it would lose that check (and
    with it an early-stopping or best-epoch decision) if the run were killed during it.
    """

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        if not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            super().on_train_batch_end(trainer, *args, **kwargs)


class ExampleDataset(Dataset[EncodedExample]):
    """Encoded examples as a map-style Dataset: what a DataLoader indexes."""

    def __init__(self, examples: Sequence[EncodedExample]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> EncodedExample:
        return self.examples[index]


class EpochPermutationBatches(Sampler[list[int]]):
    """Batches of example indices: epoch e visits `default_rng([seed, e]).permutation(n)` in order.

    With `lengths`, the permutation is cut into groups of `GROUP_BATCHES` batches; each group is sorted
    by length, cut into batches, and its batches are visited in a seeded random order (HF Trainer's
    `group_by_length`): a batch pads to a length close to its examples', and the epoch's order stays
    random at the group level. Still a pure function of (seed, epoch).

    Each new iteration starts where `steps_done()` (the trainer's optimizer steps; one batch per step)
    says the run is, so a run resumed mid-epoch continues that epoch's order at the next batch. The
    position comes from Lightning's restored `global_step` rather than from a state_dict of this
    sampler, because the loop pre-fetches a batch: a count of batches handed out would run ahead of
    the batches trained on when the checkpoint is written.
    """

    GROUP_BATCHES = 50

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int,
        steps_done: Callable[[], int],
        lengths: Sequence[int] | None = None,
    ):
        if lengths is not None and len(lengths) != n:
            raise ValueError(f"{len(lengths)} lengths for {n} examples")
        self.n, self.batch_size, self.seed, self.steps_done = n, batch_size, seed, steps_done
        self.lengths = np.asarray(lengths) if lengths is not None else None

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """The batches of one epoch, in visiting order."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(self.n)
        if self.lengths is None:
            return [order[b : b + self.batch_size] for b in range(0, self.n, self.batch_size)]
        group = self.batch_size * self.GROUP_BATCHES
        batches: list[np.ndarray] = []
        for g in range(0, self.n, group):
            members = order[g : g + group]
            members = members[np.argsort(-self.lengths[members], kind="stable")]
            cut = [members[b : b + self.batch_size] for b in range(0, len(members), self.batch_size)]
            batches.extend(cut[i] for i in rng.permutation(len(cut)))
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        epoch, start = divmod(self.steps_done(), len(self))
        for batch in self.epoch_batches(epoch)[start:]:
            yield batch.tolist()


def example_length(example: EncodedExample) -> int:
    """The padded length an example needs: its longest sequence."""
    return max(len(s) for s in example.sequences)


@dataclass
class FinetuneResult:
    """What the finetune stage reports."""

    train_examples: int
    steps: int
    resumed_from_step: int
    epochs_run: int
    final_train_loss: float
    final_task_loss: float
    final_lm_loss: float  # nan when λ = 0
    best_dev_metric: float  # the headline metric at the selected epoch; nan without a dev split


def finetune(
    model: TaskModel,
    train: list[EncodedExample],
    cfg: FinetuneConfig,
    ckpt_dir: Path,
    seed: int,
    precision: str = "auto",
    logger: Logger | bool = False,
    dev: list[EncodedExample] | None = None,
    metrics: tuple[str, ...] = ("accuracy",),
    extra_callbacks: list[L.Callback] | None = None,
) -> FinetuneResult:
    """Fine-tune in place, resuming exactly from `ckpt_dir/last.ckpt` if present (written every `cfg.ckpt_every` steps).

    With `dev`, the dev split is scored after every epoch (`val_<metric>`), which enables
    `cfg.early_stopping_patience` (Lightning EarlyStopping) and `cfg.select_best` (the weights of
    the best epoch by the headline metric, kept by a ModelCheckpoint and restored at the end).
    """
    L.seed_everything(seed, workers=True, verbose=False)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    # Own generators: a DataLoader without one draws its base seed from the global torch RNG at every
    # iter(), which would shift the dropout stream of a run resumed mid-epoch.
    dev_loader = (
        DataLoader(ExampleDataset(dev), batch_size=64, collate_fn=collate, generator=torch.Generator()) if dev else None
    )
    module = FinetuneModule(model, cfg, cfg.epochs * steps_per_epoch, metrics)
    # enable_version_counter=False: both write the one `last.ckpt`, not last-v1.ckpt
    callbacks: list[L.Callback] = [
        StepCheckpoint(
            ckpt_dir, every_n_train_steps=cfg.ckpt_every, save_top_k=0, save_last=True, enable_version_counter=False
        ),
        # each epoch's end, after its dev check (Lightning writes last.ckpt only beside a top-k checkpoint there)
        ModelCheckpoint(ckpt_dir, filename="epoch-end", save_top_k=1, save_last=True, enable_version_counter=False),
        *(extra_callbacks or []),
    ]
    monitor, mode = f"val_{metrics[0]}", "max" if HIGHER_IS_BETTER[metrics[0]] else "min"
    best = None
    if dev_loader is not None:
        if cfg.early_stopping_patience:
            callbacks.append(EarlyStopping(monitor=monitor, mode=mode, patience=cfg.early_stopping_patience))
        if cfg.select_best:
            best = ModelCheckpoint(
                dirpath=ckpt_dir / BEST_DIR, monitor=monitor, mode=mode, save_top_k=1, save_weights_only=True
            )
            callbacks.append(best)
    if logger:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    trainer = L.Trainer(
        max_epochs=cfg.epochs,
        accelerator="auto",
        devices=1,
        precision=resolve_precision(precision),
        gradient_clip_val=1.0,
        log_every_n_steps=max(1, min(10, steps_per_epoch // 4)),
        logger=logger,
        callbacks=callbacks,
        num_sanity_val_steps=0,
        enable_model_summary=False,
        default_root_dir=ckpt_dir,
    )
    lengths = [example_length(e) for e in train] if cfg.group_by_length else None
    batches = EpochPermutationBatches(len(train), cfg.batch_size, seed, lambda: trainer.global_step, lengths)
    loader = DataLoader(ExampleDataset(train), batch_sampler=batches, collate_fn=collate, generator=torch.Generator())
    resume = resume_checkpoint(ckpt_dir)  # last.ckpt, else the newest intact one (epoch-end.ckpt)
    with warnings.catch_warnings():
        # without a dev split the validation_step is simply unused; the loader resumes from the restored
        # global step (see EpochPermutationBatches), not from a loader state_dict Lightning looks for
        warnings.filterwarnings("ignore", message=".*`validation_step` but have no `val_dataloader`")
        warnings.filterwarnings("ignore", message=".*your dataloader is not resumable")
        trainer.fit(module, train_dataloaders=loader, val_dataloaders=dev_loader, ckpt_path=resume, weights_only=True)
    m = trainer.callback_metrics
    best_metric = float(m.get(monitor, float("nan")))
    if best is not None and best.best_model_path:
        state = torch.load(best.best_model_path, map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state)
        if best.best_model_score is None:
            raise RuntimeError(f"{best.best_model_path}: the best-epoch checkpoint has no {monitor} score")
        best_metric = float(best.best_model_score)
    return FinetuneResult(
        train_examples=len(train),
        steps=trainer.global_step,
        resumed_from_step=module.resumed_from_step,
        epochs_run=trainer.current_epoch,
        final_train_loss=float(m.get("train_loss", float("nan"))),
        final_task_loss=float(m.get("task_loss", float("nan"))),
        final_lm_loss=float(m.get("lm_loss", float("nan"))),
        best_dev_metric=best_metric,
    )


@torch.no_grad()
def predict(model: TaskModel, examples: list[EncodedExample], batch_size: int = 64) -> torch.Tensor:
    """Task logits [N, K] (or [N, 1] scores) for encoded examples, in order, on the CPU."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for batch in DataLoader(ExampleDataset(examples), batch_size=batch_size, collate_fn=collate):
        logits, _ = model(batch["tokens"].to(device), batch["lengths"].to(device), with_lm=False)
        out.append(logits.float().cpu())
    return torch.cat(out)


def save_task_model(model: TaskModel, out_dir: Path) -> None:
    """Write the GPT config, task head description and all weights (safetensors)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "gpt": asdict(model.gpt.config),
        "task_type": model.task_type,
        "num_outputs": model.num_outputs,
        "clf_dropout": model.clf_dropout.p,
        "regression": model.regression,
    }
    (out_dir / TASK_MODEL_FILE).write_text(json.dumps(meta, indent=2))
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, out_dir / WEIGHTS_FILE)


def load_task_model(model_dir: str | Path) -> TaskModel:
    """Rebuild a TaskModel written by `save_task_model` (safetensors: no pickle is ever loaded)."""
    model_dir = Path(model_dir)
    meta = json.loads((model_dir / TASK_MODEL_FILE).read_text())
    gpt = GPT(ModelConfig(**meta["gpt"]))
    model = TaskModel(gpt, meta["task_type"], meta["num_outputs"], meta["clf_dropout"], meta.get("regression", False))
    model.load_state_dict(load_file(model_dir / WEIGHTS_FILE))
    return model
