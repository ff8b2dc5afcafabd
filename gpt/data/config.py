"""The data sections of the experiment config: `corpus` (sources and cleaning), `tokenizer`, `encode`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gpt.config.fields import Check, Section, above, at_least, between, knob

NON_BLANK = Check(lambda v: bool(v.strip()), "a non-empty source (see README, Data offline)")


@dataclass
class CorpusSourceConfig(Section):
    """One source of a corpus mixture (`corpus.sources`) and its share of the corpus bytes."""

    source: str = knob("", "any `corpus.source` syntax", check=NON_BLANK)
    weight: float = knob(1.0, "share of the corpus bytes, relative to the other sources", check=above(0))


@dataclass
class CorpusConfig(Section):
    """Where the pretraining text comes from and how every document is cleaned."""

    source: str = knob(
        "tinyshakespeare",
        "a catalog name, a local file/folder/glob, mirror://, https://...#sha256=, hf://",
        check=NON_BLANK,
    )
    sources: list[CorpusSourceConfig] = knob(doc="weighted mixture; replaces `source` when set", factory=list)
    strip_gutenberg: bool = knob(True, "keep the text between Project Gutenberg's START/END lines")
    fix_unicode: bool = knob(False, "ftfy.fix_text (mojibake, entities, NFC), as GPT-1 did")
    normalize_whitespace: bool = knob(False, "unicode spaces to ' ', no trailing spaces, at most one blank line")
    unwrap_lines: bool = knob(
        False, "join hard-wrapped lines inside each paragraph with a space (blank lines keep paragraphs)"
    )
    lowercase: bool = knob(False, "lower-case every document")
    dedup: bool = knob(True, "drop exact duplicate documents (after cleaning)")
    max_bytes: int | None = knob(None, "keep only the first N bytes of text (quick runs)", check=at_least(1))


@dataclass
class TokenizerConfig(Section):
    """BPE trained on the corpus (`bpe`) or OpenAI's GPT-2 ranks (`gpt2`)."""

    kind: Literal["bpe", "gpt2"] = knob("bpe", "bpe: trained on the corpus; gpt2: OpenAI's GPT-2 ranks")
    vocab_size: int = knob(
        4096, "for `bpe`: mergeable ranks; the special tokens come on top", check=between(257, 65_000)
    )
    max_train_bytes: int | None = knob(
        None, "for `bpe`: train on the first N bytes of the corpus only", check=at_least(1)
    )


@dataclass
class EncodeConfig(Section):
    """How the corpus is split into train/val documents before encoding."""

    val_fraction: float = knob(
        0.05, "share of documents in the val split", check=between(0, 0.5, low_open=True, high_open=True)
    )
