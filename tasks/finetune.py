"""`finetune[<variant>]` stage: a GPT plus a task head, trained with the auxiliary LM loss.

The stage's section holds everything it reads: the task (with its definition and its files'
content when custom), the resolved recipe (per-task overrides and ablation applied), the seeds,
the precision, and where the GPT starts: the pipeline's pretrained model, a random init of the
configured architecture (`scratch`), or a model directory, keyed by its files' content.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from gpt.config.experiment import ExperimentConfig
from gpt.data.sources import MIRROR_SCHEME, resolve_mirror
from gpt.downstream.config import BuiltinTaskConfig, CustomTaskConfig
from gpt.model.config import ModelConfig
from gpt.train.config import FinetuneConfig
from tasks.content import DigestCache, check_unchanged, model_dir_digests
from tasks.definition import STOP_FILE, PlanContext, Planned, StageDef, StageEnv, StageOutput, keyed_when_set, location
from tasks.placement import device_kind
from tasks.pretrain_job import CHECKPOINTS_DIR, MODEL_DIR, kept_model_dir
from tasks.variants import Variant, recipe, variants

if TYPE_CHECKING:
    import tiktoken

    from gpt.downstream.spec import Example, TaskSpec
    from gpt.downstream.transforms import EncodedExample
    from gpt.model.transformer import GPT

TASK_MODEL_DIR = "task_model"
MODEL_DIR_INIT = "model_dir"  # `recipe.init` when fine-tuning starts from a model directory (`init_dir`)


@dataclass
class TaskInput:
    """The downstream task a variant runs on: its name, its definition when custom, its local files' content."""

    name: str
    config: CustomTaskConfig | None = None
    files: dict[str, str] = field(default_factory=dict)  # local train/dev/test file -> sha256
    # A built-in task's labelled test file (`builtin_tasks.<task>.test`), when the stage reads it; the key
    # hashes its content in `files` (a location field, so the keys of stages without one are unchanged).
    builtin_test: str | None = location()

    def custom(self) -> dict[str, CustomTaskConfig]:
        """The custom-task table `gpt.downstream.builtin.get_task` takes."""
        return {self.name: self.config} if self.config else {}

    def builtin(self) -> dict[str, BuiltinTaskConfig]:
        """The built-in task options `gpt.downstream.builtin.get_task` takes: the test file, when read."""
        return {self.name: BuiltinTaskConfig(test=self.builtin_test)} if self.builtin_test else {}

    def check_unchanged(self, digests: DigestCache, what: str) -> None:
        """Raise ContentError if a local file of the task changed since the run was planned."""
        check_unchanged(self.files, {source: digests.file(task_file(source)) for source in self.files}, what)


def task_file(source: str) -> Path:
    """The local file a custom task's split source names (a path or `mirror://...`)."""
    return resolve_mirror(source)[0] if source.startswith(MIRROR_SCHEME) else Path(source).expanduser()


@dataclass
class FinetuneSection:
    """All one `finetune[<variant>]` computes from."""

    task: TaskInput
    recipe: FinetuneConfig  # for this variant: per-task overrides and the ablation applied
    seed: int  # head init, batch order, dropout
    data_seed: int  # the seeded subset `max_examples` keeps (the experiment's seed, shared by the variants)
    precision: str  # `pretrain.precision` resolved: fine-tuning runs in the numeric format of pretraining
    device: str  # gpu | cpu: where it trains (numerics)
    model: ModelConfig | None = None  # the architecture, when starting from scratch
    init_dir: str | None = location()  # the model directory, when `recipe.init` is `model_dir`
    init_files: dict[str, str] = field(default_factory=dict)  # its files -> sha256
    pretrain_step: int | None = keyed_when_set()  # pretrained: the kept checkpoint (models/step-N) it starts from


def task_input(name: str, cfg: ExperimentConfig, digests: DigestCache, splits: tuple[str, ...]) -> TaskInput:
    """The task of a variant, with the content of its local (or mirror) files of `splits`: a custom task's,
    or a built-in task's test file (`builtin_tasks.<task>.test`)."""
    tc = cfg.tasks.get(name)
    if tc is None:
        test = cfg.builtin_tasks[name].test if name in cfg.builtin_tasks else None
        if test is None or "test" not in splits:
            return TaskInput(name)
        return TaskInput(name, files={test: digests.file(task_file(test))}, builtin_test=test)
    files = {}
    for split in splits:
        source = getattr(tc, split)
        if source is None or source.startswith(("https://", "http://")):  # pinned by its #sha256
            continue
        files[source] = digests.file(task_file(source))
    return TaskInput(name, tc, files)


def finetune_section(cfg: ExperimentConfig, variant: Variant, digests: DigestCache) -> FinetuneSection:
    """What the variant's `finetune` stage computes from (and its key hashes)."""
    r = replace(recipe(cfg, variant), tasks=[variant.task], seeds=None, per_task={})
    seed = cfg.seed if variant.seed is None else variant.seed
    splits = ("train", "dev") if r.early_stopping_patience or r.select_best else ("train",)  # dev: scored per epoch
    task = task_input(variant.task, cfg, digests, splits)
    device = device_kind("auto")  # fine-tuning trains on whatever this machine has
    precision = cfg.pretrain.resolved_precision(gpu=device == "gpu")
    section = FinetuneSection(task, r, seed, cfg.seed, precision, device)
    if r.init == "pretrained":
        section.pretrain_step = variant.step
    if r.init == "scratch":
        section.model = cfg.model
    elif r.init != "pretrained":  # a model directory: keyed by its content, not its path
        init_dir = Path(r.init).expanduser().resolve()
        section.recipe = replace(r, init=MODEL_DIR_INIT)
        section.init_dir, section.init_files = str(init_dir), model_dir_digests(init_dir, digests, "finetune.init")
    return section


def plan_finetune(cfg: ExperimentConfig, ctx: PlanContext) -> list[Planned]:
    """One `finetune[<variant>]` per task × ablation × seed; from scratch it does not wait for pretraining."""
    out = []
    for variant in variants(cfg):
        section = finetune_section(cfg, variant, ctx.digests)
        upstream = ["pretrain", "tokenizer"] if section.recipe.init == "pretrained" else ["tokenizer"]
        out.append(Planned(f"finetune[{variant.name}]", section, upstream, variant))
    return out


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
    from gpt.downstream.spec import cap_examples
    from gpt.downstream.transforms import encode_examples

    examples = cap_examples(spec.load(split, cache_dir), max_examples, seed)
    return examples, encode_examples(examples, spec.type, enc, max_len)


def initial_gpt(section: FinetuneSection, inputs: dict[str, Path], vocab_size: int) -> GPT:
    """The GPT fine-tuning starts from: pretrained (upstream stage), scratch (seeded random init), or a model
    directory (e.g. from `gptflow import-hf`), its embedding grown for the special tokens it lacks."""
    import torch

    from gpt.model.transformer import GPT, load_model
    from gpt.train.finetune import extend_vocab

    init = section.recipe.init
    if init == "pretrained":
        step = section.pretrain_step
        return load_model(inputs["pretrain"] / (MODEL_DIR if step is None else kept_model_dir(step)))
    if init == "scratch":
        assert section.model is not None
        torch.manual_seed(section.seed)
        return GPT(section.model.with_vocab(vocab_size))
    assert section.init_dir is not None
    torch.manual_seed(section.seed)  # the rows extend_vocab adds for tokens the imported model lacks
    return extend_vocab(load_model(Path(section.init_dir)), vocab_size)


def compute(section: FinetuneSection, inputs: dict[str, Path], out: Path, env: StageEnv) -> StageOutput:
    """Fine-tune on the task's train split (dev-scored each epoch when early stopping/best selection is on)."""
    from gpt.data.tokenizer import load_tokenizer, special_ids
    from gpt.downstream.builtin import get_task
    from gpt.train.callbacks import StopWhenFileAppears
    from gpt.train.finetune import TaskModel, finetune, fresh_special_embeddings, save_task_model
    from tasks.mlflow_logger import stage_logger

    cache = env.digest_cache()
    section.task.check_unchanged(cache, env.name)
    if section.init_dir is not None:
        check_unchanged(section.init_files, model_dir_digests(Path(section.init_dir), cache, "finetune.init"), env.name)
    ft = section.recipe
    spec = get_task(section.task.name, section.task.custom())
    enc = load_tokenizer(inputs["tokenizer"])
    gpt = initial_gpt(section, inputs, enc.n_vocab)
    if ft.fresh_special_tokens and ft.init != "scratch":
        ids = special_ids(enc)
        fresh_special_embeddings(gpt, [ids["start"], ids["delim"], ids["extract"]], section.seed)
    max_len = ft.max_len or gpt.config.block_size
    _, train = load_split(spec, "train", enc, ft.max_examples, section.data_seed, env.cache_dir, max_len)
    dev = None
    if ft.early_stopping_patience or ft.select_best:
        dev = load_split(spec, "dev", enc, ft.max_examples, section.data_seed, env.cache_dir, max_len)[1]
    # the head from the section's seed, not the global RNG (whatever ran earlier in this process drew from it)
    model = TaskModel(gpt, spec.type, spec.num_outputs, ft.clf_dropout, spec.regression, init_seed=section.seed)
    logger = stage_logger(env.tracking_uri, env.run_id)
    result = finetune(
        model,
        train,
        ft,
        out / CHECKPOINTS_DIR,
        section.seed,
        section.precision,
        logger=logger,
        dev=dev,
        metrics=spec.metrics,
        extra_callbacks=[StopWhenFileAppears(out / STOP_FILE)],  # the lease was lost (tasks/lease.py)
    )
    save_task_model(model, out / TASK_MODEL_DIR)
    return StageOutput(summary=asdict(result), info={"init": ft.init}, artifacts=[TASK_MODEL_DIR])


DEFINITION = StageDef(
    kind="finetune",
    version="7",  # 7: length-grouped batches, fresh special-token embeddings; 6: fused AdamW, LM loss padded width
    doc="the GPT with a task head, trained with λ·LM loss",
    instances=plan_finetune,
    compute=compute,
    outputs=(f"{TASK_MODEL_DIR}/*",),
    resumable=True,
    fans_out=True,
)
