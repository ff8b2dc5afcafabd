"""`tokenizer` stage: train a byte-level BPE on the corpus, or load GPT-2's ranks, served by tiktoken."""

from __future__ import annotations

import time

from gpt.corpus import read_documents
from gpt.sources import CATALOG, fetch
from gpt.tokenizer import GPT2_PATTERN, SPLIT_PATTERN, build_encoding, save_tokenizer, train_bpe
from tasks.corpus import CORPUS_FILE
from tasks.stage import StageContext, StageOutput


def compute(ctx: StageContext) -> StageOutput:
    """Write `tokenizer.tiktoken` + `tokenizer.json` (loadable with plain tiktoken)."""
    from tiktoken.load import load_tiktoken_bpe

    t0 = time.perf_counter()
    if ctx.cfg.tokenizer.kind == "gpt2":
        (remote,) = CATALOG["gpt2_bpe"]
        ranks = load_tiktoken_bpe(str(fetch(remote, ctx.cache_dir)))
        enc = build_encoding(ranks, GPT2_PATTERN, name="gpt2")
    else:
        docs = read_documents(ctx.inputs["corpus"] / CORPUS_FILE)
        ranks = train_bpe(docs, ctx.cfg.tokenizer.vocab_size, SPLIT_PATTERN)
        enc = build_encoding(ranks, SPLIT_PATTERN)
    save_tokenizer(enc, ranks, ctx.out)
    summary = {"vocab_size": enc.n_vocab, "train_seconds": time.perf_counter() - t0}
    return StageOutput(summary=summary, artifacts=["tokenizer.tiktoken", "tokenizer.json"])
