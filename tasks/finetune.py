"""`finetune[<variant>]` stage: a GPT plus a task head, trained with the auxiliary LM loss.

The stage's config section (built by `gpt.tasks_recipe.finetune_sections`) holds everything it
reads: the task, the resolved recipe (per-task overrides and ablation applied) and the seed.
The GPT starts from the pipeline's pretrained model, from scratch, or from a model directory.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import tiktoken
import torch

from gpt.benchmarks import get_task
from gpt.config import FinetuneConfig, ModelConfig
from gpt.model import GPT, GPTConfig, load_model
from gpt.tasks_spec import Example, TaskSpec, cap_examples
from gpt.tokenizer import load_tokenizer
from gpt.transforms import EncodedExample, encode_examples
from tasks.pretrain import MODEL_DIR
from tasks.stage import StageContext, StageOutput

TASK_MODEL_DIR = "task_model"


def load_split(
    spec: TaskSpec,
    split: str,
    enc: tiktoken.Encoding,
    max_examples: int | None,
    seed: int,
    cache_dir: Path,
    max_len: int,
) -> tuple[list[Example], list[EncodedExample]]:
    """A task split, capped to `max_examples` (a seeded subset), and its encoded form."""
    examples = cap_examples(spec.load(split, cache_dir), max_examples, seed)
    return examples, encode_examples(examples, spec.type, enc, max_len)


def initial_gpt(ctx: StageContext, section: dict[str, Any], vocab_size: int) -> GPT:
    """The GPT fine-tuning starts from: pretrained (upstream stage), scratch (seeded random init), or a model
    directory (e.g. from `gptflow import-hf`), its embedding grown for the special tokens it lacks."""
    from gpt.finetune import extend_vocab

    init = section["recipe"]["init"]
    if init == "pretrained":
        return load_model(ctx.inputs["pretrain"] / MODEL_DIR)
    if init == "scratch":
        torch.manual_seed(section["seed"])
        return GPT(GPTConfig.from_model_config(ModelConfig(**section["model"]), vocab_size))
    torch.manual_seed(section["seed"])  # the rows extend_vocab adds for tokens the imported model lacks
    return extend_vocab(load_model(Path(init).expanduser()), vocab_size)


def compute(ctx: StageContext) -> StageOutput:
    """Fine-tune on the task's train split (dev-scored each epoch when early stopping/best selection is on)."""
    from gpt.finetune import TaskModel, finetune, save_task_model
    from tasks.mlflow_logger import stage_logger

    cfg, section = ctx.cfg, ctx.stage.section
    ft = FinetuneConfig(**section["recipe"], tasks=[section["task"]])
    spec = get_task(section["task"], cfg.tasks)
    enc = load_tokenizer(ctx.inputs["tokenizer"])
    gpt = initial_gpt(ctx, section, enc.n_vocab)
    max_len = ft.max_len or gpt.config.block_size
    _, train = load_split(spec, "train", enc, ft.max_examples, cfg.seed, ctx.cache_dir, max_len)
    dev = None
    if ft.early_stopping_patience or ft.select_best:
        dev = load_split(spec, "dev", enc, ft.max_examples, cfg.seed, ctx.cache_dir, max_len)[1]
    # the head from the section's seed, not the global RNG (whatever ran earlier in this process drew from it)
    model = TaskModel(gpt, spec.type, spec.num_outputs, ft.clf_dropout, spec.regression, init_seed=section["seed"])
    logger = stage_logger(ctx.tracking_uri, ctx.run_id)
    result = finetune(
        model,
        train,
        ft,
        ctx.out / "checkpoints",
        section["seed"],
        cfg.pretrain.precision,
        logger=logger,
        dev=dev,
        metrics=spec.metrics,
    )
    save_task_model(model, ctx.out / TASK_MODEL_DIR)
    return StageOutput(summary=asdict(result), info={"init": ft.init}, artifacts=[TASK_MODEL_DIR])
