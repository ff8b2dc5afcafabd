"""`encode` stage: the corpus into memory-mappable token shards, split into train/val by document."""

from __future__ import annotations

import json
from dataclasses import asdict

from gpt.shards import encode_corpus
from gpt.tokenizer import load_tokenizer
from tasks.corpus import CORPUS_FILE
from tasks.stage import MANIFEST, StageContext, StageOutput


def compute(ctx: StageContext) -> StageOutput:
    """Write `train.bin`, `val.bin` and `shards.json`; report token counts and bytes per token."""
    enc = load_tokenizer(ctx.inputs["tokenizer"])
    corpus = ctx.inputs["corpus"] / CORPUS_FILE
    stats = encode_corpus(corpus, enc, ctx.out, ctx.cfg.encode.val_fraction, ctx.cfg.seed)
    summary = {k: v for k, v in asdict(stats).items() if k != "dtype"}
    total_bytes = json.loads((ctx.inputs["corpus"] / MANIFEST).read_text())["summary"]["bytes"]
    summary["bytes_per_token"] = total_bytes / max(1, stats.train_tokens + stats.val_tokens)
    return StageOutput(summary=summary, info={"dtype": stats.dtype})
