"""`encode` stage: the corpus into memory-mappable token shards, split into train/val by document."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from gpt.config.experiment import ExperimentConfig
from gpt.data.config import EncodeConfig
from gpt.data.shards import META_FILE
from tasks.corpus import CORPUS_FILE
from tasks.definition import PlanContext, Planned, StageDef, StageEnv, StageOutput


@dataclass
class EncodeSection:
    """How documents are split into train/val: the fraction and the seed of the split's hash."""

    encode: EncodeConfig
    seed: int


def plan_encode(cfg: ExperimentConfig, ctx: PlanContext) -> list[Planned]:
    """One `encode` stage reading the corpus and the tokenizer."""
    return [Planned("encode", EncodeSection(cfg.encode, cfg.seed), ["corpus", "tokenizer"])]


def compute(section: EncodeSection, inputs: dict[str, Path], out: Path, env: StageEnv) -> StageOutput:
    """Write `train.bin`, `val.bin` and `shards.json` (tokens, documents and sha256 per split).

    Reports token counts, the tokenizer's compression on the val split (bytes per token) and the
    encoding throughput.
    """
    from gpt.data.shards import encode_corpus
    from gpt.data.tokenizer import load_tokenizer

    enc = load_tokenizer(inputs["tokenizer"])
    corpus = inputs["corpus"] / CORPUS_FILE
    stats = encode_corpus(corpus, enc, out, section.encode.val_fraction, section.seed)
    summary = {k: v for k, v in asdict(stats).items() if k != "dtype"}
    text_bytes = stats.train_text_bytes + stats.val_text_bytes
    summary["val_bytes_per_token"] = stats.val_bytes_per_token
    summary["mb_per_s"] = text_bytes / 1e6 / max(stats.seconds, 1e-9)
    return StageOutput(summary=summary, info={"dtype": stats.dtype}, artifacts=[META_FILE])


DEFINITION = StageDef(
    kind="encode",
    version="2",
    doc="uint16/uint32 token shards (train.bin, val.bin) read with np.memmap",
    instances=plan_encode,
    compute=compute,
    outputs=("*.bin", META_FILE),
)
