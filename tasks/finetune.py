"""`finetune[task]` stage: the pretrained GPT plus a task head, trained with the auxiliary LM loss."""

from __future__ import annotations

from dataclasses import asdict

from gpt.benchmarks import cap_examples, get_task
from gpt.model import load_model
from gpt.tokenizer import load_tokenizer
from gpt.transforms import encode_example
from tasks.pretrain import MODEL_DIR
from tasks.stage import StageContext, StageOutput

TASK_MODEL_DIR = "task_model"


def compute(ctx: StageContext) -> StageOutput:
    """Fine-tune on the task's train split (capped by `finetune.max_examples`) and save the task model."""
    from gpt.finetune import TaskModel, finetune, save_task_model
    from tasks.mlflow_logger import stage_logger

    cfg = ctx.cfg
    spec = get_task(ctx.stage.task)
    enc = load_tokenizer(ctx.inputs["tokenizer"])
    gpt = load_model(ctx.inputs["pretrain"] / MODEL_DIR)
    max_len = cfg.finetune.max_len or gpt.config.block_size
    examples = cap_examples(spec.load("train", ctx.cache_dir), cfg.finetune.max_examples, cfg.seed)
    train = [encode_example(e, spec.type, enc, max_len) for e in examples]
    model = TaskModel(gpt, spec.type, spec.num_outputs, cfg.finetune.clf_dropout)
    logger = stage_logger(ctx.tracking_uri, ctx.run_id)
    result = finetune(
        model, train, cfg.finetune, ctx.out / "checkpoints", cfg.seed, cfg.pretrain.precision, logger=logger
    )
    save_task_model(model, ctx.out / TASK_MODEL_DIR)
    return StageOutput(summary=asdict(result), artifacts=[TASK_MODEL_DIR])
