"""Byte-level BPE served through tiktoken, with GPT-1's special tokens.

Training uses rustbpe (measured faster than HF tokenizers here); encoding always goes through a
`tiktoken.Encoding`, so a saved tokenizer is plain tiktoken data: a rank file in tiktoken's own
format plus a small JSON with the split pattern and the special tokens.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # tiktoken loads on first use: the planner reads this module's constants only
    import tiktoken

# The GPT-4 split pattern (as nanochat uses it); GPT-2's pattern is kept for the `gpt2` kind.
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|"""
    r"""\s+(?!\S)|\s+"""
)
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""

EOT = "<|endoftext|>"
START = "<|start|>"
DELIM = "<|delim|>"
EXTRACT = "<|extract|>"
SPECIALS = (EOT, START, DELIM, EXTRACT)

RANKS_FILE = "tokenizer.tiktoken"
META_FILE = "tokenizer.json"


def train_bpe(texts: Iterable[str], vocab_size: int, pattern: str = SPLIT_PATTERN) -> dict[bytes, int]:
    """Learn `vocab_size` byte-level BPE ranks (256 bytes + merges) from a stream of texts."""
    import rustbpe

    trainer = rustbpe.Tokenizer()
    trainer.train_from_iterator(iter(texts), vocab_size, pattern=pattern)
    return {bytes(token): rank for token, rank in trainer.get_mergeable_ranks()}


def build_encoding(ranks: dict[bytes, int], pattern: str, name: str = "gptflow") -> tiktoken.Encoding:
    """A tiktoken Encoding over `ranks` with the four specials appended after the last rank."""
    base = max(ranks.values()) + 1
    specials = {tok: base + i for i, tok in enumerate(SPECIALS)}
    import tiktoken

    return tiktoken.Encoding(name=name, pat_str=pattern, mergeable_ranks=ranks, special_tokens=specials)


def save_tokenizer(enc: tiktoken.Encoding, ranks: dict[bytes, int], out_dir: str | Path) -> None:
    """Write the rank file (tiktoken format) and the JSON that plain tiktoken needs to rebuild `enc`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # tiktoken's own dump_tiktoken_bpe needs the optional blobfile package; the format is one line each.
    lines = (f"{base64.b64encode(tok).decode()} {rank}\n" for tok, rank in sorted(ranks.items(), key=lambda t: t[1]))
    (out / RANKS_FILE).write_text("".join(lines))
    meta = {
        "name": enc.name,
        "pattern": enc._pat_str,
        "special_tokens": enc._special_tokens,
        "vocab_size": enc.n_vocab,
        "ranks_file": RANKS_FILE,
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=2))


def load_tokenizer(tok_dir: str | Path) -> tiktoken.Encoding:
    """Rebuild the Encoding saved by `save_tokenizer`."""
    d = Path(tok_dir)
    meta = json.loads((d / META_FILE).read_text())
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    ranks = load_tiktoken_bpe(str(d / meta["ranks_file"]))
    return tiktoken.Encoding(
        name=meta["name"], pat_str=meta["pattern"], mergeable_ranks=ranks, special_tokens=meta["special_tokens"]
    )


def special_ids(enc: tiktoken.Encoding) -> dict[str, int]:
    """Ids of eot/start/delim/extract by short name."""
    return {
        "eot": enc.encode_single_token(EOT),
        "start": enc.encode_single_token(START),
        "delim": enc.encode_single_token(DELIM),
        "extract": enc.encode_single_token(EXTRACT),
    }
