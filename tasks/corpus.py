"""`corpus` stage: resolve the source (mirror first), clean it, write documents as JSONL."""

from __future__ import annotations

from dataclasses import asdict

from gpt.corpus import build_corpus
from tasks.stage import StageContext, StageOutput

CORPUS_FILE = "corpus.jsonl"


def compute(ctx: StageContext) -> StageOutput:
    """Write `corpus.jsonl` and report documents, bytes and characters."""
    c = ctx.cfg.corpus
    stats = build_corpus(c.source, ctx.out / CORPUS_FILE, ctx.cache_dir, c.strip_gutenberg, c.max_bytes)
    summary = {k: v for k, v in asdict(stats).items() if k != "files"}
    return StageOutput(summary=summary, info={"files": stats.files})
