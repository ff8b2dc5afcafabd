"""`encode` stage: the corpus into memory-mappable token shards, split into train/val by document."""

from __future__ import annotations

from dataclasses import asdict

from gpt.shards import META_FILE, encode_corpus
from gpt.tokenizer import load_tokenizer
from tasks.corpus import CORPUS_FILE
from tasks.stage import StageContext, StageOutput


def compute(ctx: StageContext) -> StageOutput:
    """Write `train.bin`, `val.bin` and `shards.json` (tokens, documents and sha256 per split).

    Reports token counts, the tokenizer's compression on the val split (bytes per token) and the
    encoding throughput.
    """
    enc = load_tokenizer(ctx.inputs["tokenizer"])
    corpus = ctx.inputs["corpus"] / CORPUS_FILE
    stats = encode_corpus(corpus, enc, ctx.out, ctx.cfg.encode.val_fraction, ctx.cfg.seed)
    summary = {k: v for k, v in asdict(stats).items() if k != "dtype"}
    text_bytes = stats.train_text_bytes + stats.val_text_bytes
    summary["val_bytes_per_token"] = stats.val_bytes_per_token
    summary["mb_per_s"] = text_bytes / 1e6 / max(stats.seconds, 1e-9)
    return StageOutput(summary=summary, info={"dtype": stats.dtype}, artifacts=[META_FILE])
