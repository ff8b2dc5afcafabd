"""One pretraining job: what it reads and writes (`PretrainJob`) and the training run itself (`train`).

The same job runs in the stage's process (one device) or as `tasks.pretrain_worker` on every rank
of a multi-process job; it crosses that process boundary as JSON, rebuilt field by field (nothing
unpickled). torch and Lightning are imported inside `train` so planning never pays for them.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpt.config.fields import observation
from gpt.config.loader import from_dict
from gpt.config.secrets import redact_data, reveal_data
from gpt.downstream.config import CustomTaskConfig
from gpt.model.config import ModelConfig
from gpt.train.config import PretrainConfig
from tasks.definition import STOP_FILE, StageEnv, StageOutput, keyed_when_set, location
from tasks.errors import StageError

if TYPE_CHECKING:
    from lightning.pytorch import Callback

    from gpt.model.transformer import GPT
    from tasks.content import DigestCache

MODEL_DIR = "model"
KEPT_MODELS_DIR = "models"  # models/step-N: the weights at the steps `pretrain.keep_models` names
SAMPLES_FILE = "samples.txt"
CHECKPOINTS_DIR = "checkpoints"


@dataclass
class PretrainSection:
    """The architecture, the training recipe and the seed; `pretrain`'s observation and placement fields
    (logging cadence, checkpoints kept, zero-shot scoring, devices) are in it but not in its key."""

    model: ModelConfig
    pretrain: PretrainConfig
    seed: int
    device: str  # gpu | cpu (`accelerator` resolved): numerics, and what `precision: auto` / `compile` become
    global_batch: int  # windows per optimizer step over all ranks (`batch_size` × ranks unless `tokens_per_step`)
    scored_custom: dict[str, CustomTaskConfig] = observation(
        None, "custom tasks scored zero-shot or probed during pretraining (logged only)", factory=dict
    )
    init_dir: str | None = location()  # the model directory `pretrain.init_from` resolved to
    init_files: dict[str, str] = keyed_when_set(dict)  # its files -> sha256: the key holds the weights' content
    resume_ckpt: str | None = location()  # the finished pretraining's checkpoint `pretrain.resume_from` continues
    resume_files: dict[str, str] = keyed_when_set(dict)  # that checkpoint (and its step-0 val loss) -> sha256


@dataclass
class PretrainJob:
    """A pretraining job: its section, the tokenizer and token shards it reads, where it writes, its run."""

    section: PretrainSection
    tokenizer_dir: Path
    encode_dir: Path
    out: Path
    env: StageEnv

    @property
    def checkpoints(self) -> Path:
        """Where Lightning's checkpoints (and a worker job's spec, result and log) live."""
        return self.out / CHECKPOINTS_DIR

    def to_json(self) -> str:
        """The job as JSON, for a training job in other processes."""
        paths = {"tokenizer_dir": self.tokenizer_dir, "encode_dir": self.encode_dir, "out": self.out}
        env = {**asdict(self.env), "cache_dir": str(self.env.cache_dir), "digests": None}
        spec = {"section": asdict(self.section), **{k: str(v) for k, v in paths.items()}, "env": env}
        return json.dumps(redact_data(spec))  # a file in the stage dir: the worker reveals credentials from its env

    @classmethod
    def from_json(cls, text: str) -> PretrainJob:
        """The job back from `to_json`; the section is rebuilt and checked field by field."""
        spec = reveal_data(json.loads(text))  # the tracking URI and task URLs: from the environment
        env = spec["env"]
        return cls(
            from_dict(PretrainSection, spec["section"]),
            Path(spec["tokenizer_dir"]),
            Path(spec["encode_dir"]),
            Path(spec["out"]),
            StageEnv(env["name"], env["run_id"], env["tracking_uri"], Path(env["cache_dir"])),
        )


def kept_model_dir(step: int) -> str:
    """Where the pretrain stage keeps the weights of step `step` (`pretrain.keep_models`), relative to it."""
    return f"{KEPT_MODELS_DIR}/step-{step}"


def save_model_dir(model: GPT, tokenizer_dir: Path, out: Path) -> None:
    """A model directory usable on its own: weights, config and the tokenizer files."""
    from gpt.data.tokenizer import META_FILE, RANKS_FILE
    from gpt.model.transformer import save_model

    save_model(model, out)
    for name in (RANKS_FILE, META_FILE):
        shutil.copy2(tokenizer_dir / name, out / name)


def train(job: PretrainJob, extra_callbacks: list[Callback] | None = None) -> StageOutput:
    """Train (resuming from the newest intact checkpoint); rank 0 writes model/ and samples.txt.

    Runs on every rank of a multi-process job; returns the stage's summary and info.
    """
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    from gpt.data.tokenizer import load_tokenizer
    from gpt.train.callbacks import StopWhenFileAppears
    from gpt.train.pretrain import pretrain
    from gpt.train.samples import SampleCallback, sample_text
    from tasks.mlflow_logger import stage_logger

    section, p = job.section, job.section.pretrain
    enc = load_tokenizer(job.tokenizer_dir)
    model_config = section.model.with_vocab(enc.n_vocab)
    logger = stage_logger(job.env.tracking_uri, job.env.run_id)

    def log_samples(step: int, text: str) -> None:
        if logger:
            logger.experiment.log_text(logger.run_id, text, f"samples/step_{step:07d}.txt")

    callbacks = [
        SampleCallback(enc, p.sample_tokens, section.seed, log_samples),
        StopWhenFileAppears(job.out / STOP_FILE),  # the lease was lost (tasks/lease.py)
        *(extra_callbacks or []),
    ]
    if p.keep_models:  # the weights at those steps, as model directories (finetune.from_checkpoints)
        from gpt.train.callbacks import AtSteps

        def keep(step: int, trainer: Any) -> None:
            save_model_dir(trainer.lightning_module.model, job.tokenizer_dir, job.out / kept_model_dir(step))

        callbacks.append(AtSteps(p.keep_models, keep))
    if p.zeroshot_tasks:  # GPT-1 Fig. 2: zero-shot task scores logged at every validation
        from gpt.downstream.zeroshot import zeroshot_callback

        zeroshot = zeroshot_callback(
            p.zeroshot_tasks, enc, job.env.cache_dir, p.zeroshot_examples, section.seed, section.scored_custom
        )
        callbacks.append(zeroshot)
    if p.probe_tasks:  # linear probes of h(extract) on the frozen model at every validation
        from gpt.downstream.probe import probe_callback

        probes = probe_callback(
            p.probe_tasks, enc, job.env.cache_dir, p.probe_examples, model_config.block_size, section.seed,
            section.scored_custom,
        )  # fmt: skip
        callbacks.append(probes)
    init = initial_weights(job, enc.n_vocab)
    start_from_finished(job)
    try:
        model, result = pretrain(
            model_config,
            p,
            job.encode_dir,
            job.checkpoints,
            section.seed,
            logger=logger,
            extra_callbacks=callbacks,
            init_weights=init,
        )
    except FloatingPointError as e:  # a diverged run: one line for the user, checkpoints kept
        raise StageError(str(e)) from None  # the runner prefixes the stage name
    if rank_zero_only.rank == 0:  # type: ignore[attr-defined]  # set by lightning at import; its stub (a function) lacks it
        save_model_dir(model, job.tokenizer_dir, job.out / MODEL_DIR)
        (job.out / SAMPLES_FILE).write_text(sample_text(model, enc, p.sample_tokens, section.seed))
    return StageOutput(
        summary=asdict(result),
        info={"model_config": asdict(model_config)},
        artifacts=[MODEL_DIR, SAMPLES_FILE, *([KEPT_MODELS_DIR] if p.keep_models else [])],
    )


def initial_weights(job: PretrainJob, vocab_size: int) -> GPT | None:
    """The GPT `pretrain.init_from` names, grown to the tokenizer's vocabulary; None for a random init.

    StageError when its files changed since planning or its tokenizer is not the pipeline's (same size,
    other merges): its token ids would mean other text.
    """
    from gpt.data.tokenizer import RANKS_FILE
    from gpt.model.transformer import load_model
    from gpt.train.finetune import extend_vocab
    from tasks.content import check_unchanged, model_dir_digests

    if job.section.init_dir is None:
        return None
    init_dir = Path(job.section.init_dir)
    check_unchanged(
        job.section.init_files, model_dir_digests(init_dir, job.env.digest_cache(), "pretrain.init_from"), job.env.name
    )
    ranks = init_dir / RANKS_FILE
    if ranks.is_file() and ranks.read_bytes() != (job.tokenizer_dir / RANKS_FILE).read_bytes():
        raise StageError(
            f"config key 'pretrain.init_from': {init_dir} was trained with another tokenizer than this pipeline's "
            "(its tokenizer.tiktoken differs); its token ids would mean other text"
        )
    return extend_vocab(load_model(init_dir), vocab_size)


def start_from_finished(job: PretrainJob) -> None:
    """Seed this stage's checkpoints with the finished pretraining's (`pretrain.resume_from`), once: training then
    resumes from it as from its own, optimizer, schedule position and RNG states included."""
    from gpt.train.pretrain import INITIAL_VAL_FILE, LAST_CKPT, resume_checkpoint
    from tasks.content import check_unchanged

    section = job.section
    if section.resume_ckpt is None or resume_checkpoint(job.checkpoints) is not None:
        return  # a fresh stage, or this stage's own checkpoints already continue it
    ckpt = Path(section.resume_ckpt)
    check_unchanged(section.resume_files, resume_digests(ckpt, job.env.digest_cache()), job.env.name)
    job.checkpoints.mkdir(parents=True, exist_ok=True)
    shutil.copy2(ckpt.with_name(INITIAL_VAL_FILE), job.checkpoints / INITIAL_VAL_FILE)
    shutil.copy2(ckpt, job.checkpoints / f"{LAST_CKPT}.tmp")
    (job.checkpoints / f"{LAST_CKPT}.tmp").replace(job.checkpoints / LAST_CKPT)


def resume_digests(ckpt: Path, digests: DigestCache) -> dict[str, str]:
    """sha256 of a finished pretraining's checkpoint and of its step-0 val loss, by file name: what a
    continuation's key holds of where it starts."""
    from gpt.train.pretrain import INITIAL_VAL_FILE

    files = [ckpt, ckpt.with_name(INITIAL_VAL_FILE)]
    return {p.name: d for p, d in zip(files, digests.files(files, str(ckpt.parent)).values(), strict=True)}
