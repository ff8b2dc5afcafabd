"""`tokenizer` stage: train a byte-level BPE on the corpus, or load GPT-2's ranks, served by tiktoken."""

from __future__ import annotations

import time
from collections.abc import Iterator

from gpt.corpus import read_documents
from gpt.sources import CATALOG, fetch
from gpt.tokenizer import GPT2_PATTERN, SPLIT_PATTERN, build_encoding, save_tokenizer, train_bpe
from tasks.corpus import CORPUS_FILE
from tasks.stage import StageContext, StageOutput


def compute(ctx: StageContext) -> StageOutput:
    """Write `tokenizer.tiktoken` + `tokenizer.json` (loadable with plain tiktoken).

    Reports the vocab size, the training time and the text bytes trained on; the compression on
    the val split (bytes per token) is reported by `encode`, which makes the split.
    """
    from tiktoken.load import load_tiktoken_bpe

    summary: dict[str, float] = {}
    if ctx.cfg.tokenizer.kind == "gpt2":
        (remote,) = CATALOG["gpt2_bpe"]
        ranks = load_tiktoken_bpe(str(fetch(remote, ctx.cache_dir)))
        enc = build_encoding(ranks, GPT2_PATTERN, name="gpt2")
    else:
        seen = [0]
        cap = ctx.cfg.tokenizer.max_train_bytes

        def counted(docs: Iterator[str]) -> Iterator[str]:
            """The corpus documents up to `max_train_bytes` (the last one cut), counting bytes."""
            for doc in docs:
                if cap is not None:
                    doc = doc.encode()[: cap - seen[0]].decode("utf-8", errors="ignore")
                seen[0] += len(doc.encode())
                yield doc
                if cap is not None and seen[0] >= cap:
                    return

        t0 = time.perf_counter()
        ranks = train_bpe(counted(read_documents(ctx.inputs["corpus"] / CORPUS_FILE)), ctx.cfg.tokenizer.vocab_size)
        summary["train_seconds"] = time.perf_counter() - t0
        summary["train_bytes"] = seen[0]
        summary["train_mb_per_s"] = seen[0] / 1e6 / max(summary["train_seconds"], 1e-9)
        enc = build_encoding(ranks, SPLIT_PATTERN)
    save_tokenizer(enc, ranks, ctx.out)
    summary["vocab_size"] = enc.n_vocab
    return StageOutput(summary=summary, artifacts=["tokenizer.tiktoken", "tokenizer.json"])
