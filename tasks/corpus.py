"""`corpus` stage: resolve the sources (mirror first), clean and mix them, write documents as JSONL."""

from __future__ import annotations

from dataclasses import asdict

from gpt.corpus import Cleaning, build_corpus, corpus_sources
from tasks.stage import StageContext, StageOutput

CORPUS_FILE = "corpus.jsonl"


def compute(ctx: StageContext) -> StageOutput:
    """Write `corpus.jsonl`; report documents, bytes, characters and what cleaning changed or dropped."""
    c = ctx.cfg.corpus
    cleaning = Cleaning(c.strip_gutenberg, c.fix_unicode, c.normalize_whitespace, c.lowercase, c.dedup)
    mixture = [(source, weight) for _, source, weight in corpus_sources(c)]
    stats = build_corpus(mixture, ctx.out / CORPUS_FILE, ctx.cache_dir, cleaning, c.max_bytes)
    summary = {k: v for k, v in asdict(stats).items() if k not in ("files", "source_bytes")}
    return StageOutput(summary=summary, info={"files": stats.files, "source_bytes": stats.source_bytes})
