"""`finetune[task]` stage: the pretrained GPT plus a task head, trained with the auxiliary LM loss."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import tiktoken

from gpt.benchmarks import Example, TaskSpec, cap_examples, get_task
from gpt.config import ExperimentConfig
from gpt.model import load_model
from gpt.tokenizer import load_tokenizer
from gpt.transforms import EncodedExample, encode_examples
from tasks.pretrain import MODEL_DIR
from tasks.stage import StageContext, StageOutput

TASK_MODEL_DIR = "task_model"


def load_split(
    spec: TaskSpec, split: str, enc: tiktoken.Encoding, cfg: ExperimentConfig, cache_dir: Path, max_len: int
) -> tuple[list[Example], list[EncodedExample]]:
    """A task split, capped by `finetune.max_examples` (seeded), and its encoded form."""
    examples = cap_examples(spec.load(split, cache_dir), cfg.finetune.max_examples, cfg.seed)
    return examples, encode_examples(examples, spec.type, enc, max_len)


def compute(ctx: StageContext) -> StageOutput:
    """Fine-tune on the task's train split (capped by `finetune.max_examples`) and save the task model."""
    from gpt.finetune import TaskModel, finetune, save_task_model
    from tasks.mlflow_logger import stage_logger

    cfg = ctx.cfg
    spec = get_task(ctx.stage.task)
    enc = load_tokenizer(ctx.inputs["tokenizer"])
    gpt = load_model(ctx.inputs["pretrain"] / MODEL_DIR)
    max_len = cfg.finetune.max_len or gpt.config.block_size
    _, train = load_split(spec, "train", enc, cfg, ctx.cache_dir, max_len)
    model = TaskModel(gpt, spec.type, spec.num_outputs, cfg.finetune.clf_dropout)
    logger = stage_logger(ctx.tracking_uri, ctx.run_id)
    result = finetune(
        model, train, cfg.finetune, ctx.out / "checkpoints", cfg.seed, cfg.pretrain.precision, logger=logger
    )
    save_task_model(model, ctx.out / TASK_MODEL_DIR)
    return StageOutput(summary=asdict(result), artifacts=[TASK_MODEL_DIR])
