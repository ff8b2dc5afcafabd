"""Encode a corpus into flat token shards (uint16 when the vocab fits) that np.memmap reads zero-copy."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import tiktoken
from tqdm import tqdm

from gpt.corpus import read_documents
from gpt.tokenizer import EOT

SPLITS = ("train", "val")
META_FILE = "shards.json"


@dataclass
class ShardStats:
    """Token and document counts per split, and the dtype of the shard files."""

    dtype: str
    train_tokens: int
    val_tokens: int
    train_documents: int
    val_documents: int


def split_documents(docs: list[str], val_fraction: float, seed: int) -> dict[str, list[str]]:
    """Assign whole documents to train/val at random (seeded), at least one each.

    A corpus of a single document is cut at the paragraph break nearest the split point instead,
    the usual convention for one running text.
    """
    if len(docs) == 1:
        text = docs[0]
        cut = text.rfind("\n\n", 0, int(len(text) * (1 - val_fraction)))
        cut = cut if cut > 0 else int(len(text) * (1 - val_fraction))
        return {"train": [text[:cut]], "val": [text[cut:].lstrip("\n")]}
    u = np.random.default_rng(seed).random(len(docs))
    is_val = u < val_fraction
    if not is_val.any():
        is_val[int(np.argmin(u))] = True
    if is_val.all():
        is_val[int(np.argmax(u))] = False
    return {
        "train": [d for d, v in zip(docs, is_val, strict=True) if not v],
        "val": [d for d, v in zip(docs, is_val, strict=True) if v],
    }


def token_dtype(n_vocab: int) -> np.dtype:
    """uint16 when every id fits, else uint32."""
    return np.dtype(np.uint16) if n_vocab <= 2**16 else np.dtype(np.uint32)


def _batches(docs: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(docs), size):
        yield docs[i : i + size]


def encode_corpus(
    corpus_file: Path, enc: tiktoken.Encoding, out_dir: Path, val_fraction: float, seed: int
) -> ShardStats:
    """Write `train.bin` and `val.bin` (documents separated by end-of-text) plus `shards.json`."""
    dtype = token_dtype(enc.n_vocab)
    eot = enc.encode_single_token(EOT)
    splits = split_documents(list(read_documents(corpus_file)), val_fraction, seed)
    counts: dict[str, int] = {}
    total_bytes = sum(len(d) for docs in splits.values() for d in docs)
    with tqdm(total=total_bytes, unit="B", unit_scale=True, desc="encode") as bar:
        for split in SPLITS:
            n = 0
            with open(out_dir / f"{split}.bin", "wb") as f:
                for batch in _batches(splits[split], 64):
                    for ids in enc.encode_ordinary_batch(batch):
                        arr = np.asarray(ids + [eot], dtype=dtype)
                        f.write(arr.tobytes())
                        n += arr.size
                    bar.update(sum(len(d) for d in batch))
            counts[split] = n
    stats = ShardStats(
        dtype=dtype.name,
        train_tokens=counts["train"],
        val_tokens=counts["val"],
        train_documents=len(splits["train"]),
        val_documents=len(splits["val"]),
    )
    (out_dir / META_FILE).write_text(json.dumps(asdict(stats), indent=2))
    return stats


def open_shard(shard_dir: Path, split: str) -> np.memmap:
    """Zero-copy view of one split's tokens."""
    meta = json.loads((Path(shard_dir) / META_FILE).read_text())
    return np.memmap(Path(shard_dir) / f"{split}.bin", dtype=np.dtype(meta["dtype"]), mode="r")
