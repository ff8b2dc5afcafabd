"""`tokenizer` stage: train a byte-level BPE on the corpus, or load GPT-2's ranks, served by tiktoken."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gpt.config.experiment import ExperimentConfig
from gpt.data.config import TokenizerConfig
from gpt.data.tokenizer import META_FILE, RANKS_FILE
from tasks.corpus import CORPUS_FILE
from tasks.definition import PlanContext, Planned, StageDef, StageEnv, StageOutput


@dataclass
class TokenizerSection:
    """The tokenizer config (GPT-2's ranks need none of it: `kind: gpt2` alone)."""

    tokenizer: TokenizerConfig
    gpt2_ranks: str | None = None  # sha256 the catalog pins for GPT-2's rank file (`kind: gpt2`)


def plan_tokenizer(cfg: ExperimentConfig, ctx: PlanContext) -> list[Planned]:
    """One `tokenizer` stage: trained on the corpus, or GPT-2's fixed ranks (no upstream)."""
    if cfg.tokenizer.kind == "gpt2":
        from gpt.data.sources import CATALOG

        (ranks,) = CATALOG["gpt2_bpe"]
        return [Planned("tokenizer", TokenizerSection(TokenizerConfig(kind="gpt2"), ranks.sha256), [])]
    return [Planned("tokenizer", TokenizerSection(cfg.tokenizer), ["corpus"])]


def compute(section: TokenizerSection, inputs: dict[str, Path], out: Path, env: StageEnv) -> StageOutput:
    """Write `tokenizer.tiktoken` + `tokenizer.json` (loadable with plain tiktoken).

    Reports the vocab size, the training time and the text bytes trained on; the compression on
    the val split (bytes per token) is reported by `encode`, which makes the split.
    """
    from tiktoken.load import load_tiktoken_bpe

    from gpt.data.corpus import read_documents
    from gpt.data.sources import CATALOG, fetch
    from gpt.data.tokenizer import GPT2_PATTERN, SPLIT_PATTERN, build_encoding, save_tokenizer, train_bpe

    summary: dict[str, float] = {}
    tok = section.tokenizer
    if tok.kind == "gpt2":
        (remote,) = CATALOG["gpt2_bpe"]
        ranks = load_tiktoken_bpe(str(fetch(remote, env.cache_dir)))
        enc = build_encoding(ranks, GPT2_PATTERN, name="gpt2")
    else:
        seen = [0]
        cap = tok.max_train_bytes

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
        ranks = train_bpe(counted(read_documents(inputs["corpus"] / CORPUS_FILE)), tok.vocab_size)
        summary["train_seconds"] = time.perf_counter() - t0
        summary["train_bytes"] = seen[0]
        summary["train_mb_per_s"] = seen[0] / 1e6 / max(summary["train_seconds"], 1e-9)
        enc = build_encoding(ranks, SPLIT_PATTERN)
    save_tokenizer(enc, ranks, out)
    summary["vocab_size"] = enc.n_vocab
    return StageOutput(summary=summary, artifacts=[RANKS_FILE, META_FILE])


DEFINITION = StageDef(
    kind="tokenizer",
    version="2",
    doc="byte-level BPE (rustbpe) served by tiktoken, or GPT-2's ranks",
    instances=plan_tokenizer,
    compute=compute,
    outputs=(RANKS_FILE, META_FILE),
    retries=2,  # the GPT-2 rank file is a download
)
