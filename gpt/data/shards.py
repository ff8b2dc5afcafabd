"""Encode a corpus into flat token shards (uint16 when the vocab fits) that np.memmap reads zero-copy.

Streaming and parallel: documents are read from the corpus JSONL in batches of at most about
`BATCH_BYTES`, assigned to train/val by a seeded hash of their index, encoded by a pool of threads
(tiktoken's Rust core releases the GIL; `encode_to_numpy` skips the Python list of ints), and
appended to `train.bin` / `val.bin` in corpus order while a sha256 of each file is updated.
Memory is bounded by the batches in flight, not by the corpus. `shards.json` records per split:
tokens, documents, text bytes and sha256.

Threads rather than processes: tiktoken releases the GIL while it encodes (checked: a Python loop
keeps running while another thread encodes), so threads parallelise without a process pool's
start-up, per-batch pickling, or the re-import of the caller's `__main__` in spawned workers.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from gpt.data.sources import sha256_file
from gpt.data.tokenizer import EOT

if TYPE_CHECKING:
    import tiktoken

SPLITS = ("train", "val")
META_FILE = "shards.json"
BATCH_BYTES = 1 << 21  # text per task given to a thread (less for small corpora, so every thread gets work)
MASK_CHUNK = 1 << 20  # documents per chunk of the train/val assignment
_GOLDEN = 0x9E3779B97F4A7C15
_MASK64 = (1 << 64) - 1


class ShardError(ValueError):
    """A token shard that does not match its manifest, or too short to train on; the message names it."""


def split_tokens_needed(block_size: int) -> int:
    """Tokens a split needs for one LM window: block_size inputs + 1 target, and a second start to draw from."""
    return block_size + 2


def check_split_length(split: str, tokens: int, block_size: int) -> None:
    """ShardError when a split is too short for one window of `block_size` tokens."""
    need = split_tokens_needed(block_size)
    if tokens < need:
        raise ShardError(
            f"the {split} split has {tokens} tokens, but one window of model.block_size {block_size} needs {need}"
        )


@dataclass
class ShardStats:
    """Token, document and text-byte counts per split, the shard dtype, and the encoding speed."""

    dtype: str
    train_tokens: int
    val_tokens: int
    train_documents: int
    val_documents: int
    train_text_bytes: int
    val_text_bytes: int
    seconds: float

    @property
    def val_bytes_per_token(self) -> float:
        """Compression of the tokenizer on the val split: UTF-8 bytes per token (end-of-text excluded)."""
        return self.val_text_bytes / max(1, self.val_tokens - self.val_documents)


def token_dtype(n_vocab: int) -> np.dtype:
    """uint16 when every id fits, else uint32."""
    return np.dtype(np.uint16) if n_vocab <= 2**16 else np.dtype(np.uint32)


def _uniform(start: int, stop: int, seed: int) -> np.ndarray:
    """A uniform [0, 1) number per document index in [start, stop): splitmix64 of (seed, index)."""
    x = np.arange(start, stop, dtype=np.uint64) + np.uint64((seed * _GOLDEN) & _MASK64)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def val_mask(n_docs: int, val_fraction: float, seed: int, chunk: int = 1 << 20) -> Iterator[np.ndarray]:
    """Which documents go to val, in chunks: a seeded hash of the index below `val_fraction`.

    Independent of the documents' content and of batching; at least one document lands in each
    split (the lowest- / highest-hashed one is moved when a split would be empty). O(chunk) memory.
    """
    lowest, highest, n_val = (1.0, -1), (-1.0, -1), 0
    for start in range(0, n_docs, chunk):
        u = _uniform(start, min(n_docs, start + chunk), seed)
        n_val += int((u < val_fraction).sum())
        lowest = min(lowest, (float(u.min()), start + int(u.argmin())))
        highest = max(highest, (float(u.max()), start + int(u.argmax())))
    for start in range(0, n_docs, chunk):
        mask = _uniform(start, min(n_docs, start + chunk), seed) < val_fraction
        if n_val == 0 and start <= lowest[1] < start + chunk:
            mask[lowest[1] - start] = True
        if n_val == n_docs and start <= highest[1] < start + chunk:
            mask[highest[1] - start] = False
        yield mask


def cut_single_document(text: str, val_fraction: float) -> tuple[str, str]:
    """A one-document corpus is cut at the paragraph break nearest the split point (train, val)."""
    cut = text.rfind("\n\n", 0, int(len(text) * (1 - val_fraction)))
    cut = cut if cut > 0 else int(len(text) * (1 - val_fraction))
    return text[:cut], text[cut:].lstrip("\n")


def _count_lines(path: Path) -> int:
    """Lines of a file, a last line without a newline included; read in 16 MiB chunks."""
    lines, last = 0, b"\n"
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    return lines + (last != b"\n")


def _split_batches(
    corpus_file: Path, val_fraction: float, seed: int, bar: tqdm, batch_bytes: int
) -> Iterator[tuple[str, list[str]]]:
    """(split, documents) batches of about `batch_bytes` each, in corpus order per split."""
    n_docs = _count_lines(corpus_file)
    if n_docs == 1:
        text = json.loads(corpus_file.read_text(encoding="utf-8"))["text"]
        train, val = cut_single_document(text, val_fraction)
        bar.update(bar.total)
        yield "train", [train]
        yield "val", [val]
        return
    pending: dict[str, list[str]] = {s: [] for s in SPLITS}
    size = dict.fromkeys(SPLITS, 0)
    masks = val_mask(n_docs, val_fraction, seed, MASK_CHUNK)
    mask: np.ndarray = np.zeros(0, dtype=bool)
    with open(corpus_file, "rb") as f:
        for i, line in enumerate(f):
            if i % MASK_CHUNK == 0:
                mask = next(masks)
            split = SPLITS[int(mask[i % MASK_CHUNK])]
            pending[split].append(json.loads(line)["text"])
            size[split] += len(line)
            bar.update(len(line))
            if size[split] >= batch_bytes:
                yield split, pending[split]
                pending[split], size[split] = [], 0
    for split in SPLITS:
        if pending[split]:
            yield split, pending[split]


@dataclass
class EncodedBatch:
    """Tokens of a batch of documents as shard bytes, with its counts."""

    data: bytes
    tokens: int
    documents: int
    text_bytes: int


def encode_documents(enc: tiktoken.Encoding, docs: list[str], dtype: str) -> EncodedBatch:
    """`docs` as shard bytes, each followed by end-of-text; special-token text is encoded as plain text."""
    eot = np.array([enc.encode_single_token(EOT)], dtype=dtype)
    parts: list[np.ndarray] = []
    for doc in docs:
        parts.append(enc.encode_to_numpy(doc, disallowed_special=()).astype(dtype, copy=False))
        parts.append(eot)
    tokens = np.concatenate(parts)
    return EncodedBatch(tokens.tobytes(), tokens.size, len(docs), sum(len(d.encode()) for d in docs))


def _ordered_results(
    pool: ThreadPoolExecutor | None,
    workers: int,
    enc: tiktoken.Encoding,
    batches: Iterator[tuple[str, list[str]]],
    dtype: str,
) -> Iterator[tuple[str, EncodedBatch]]:
    """Results in submission order with at most 2 batches per thread in flight (bounded memory).

    Written by hand because `Pool.imap` and `Executor.map` read their whole input up front.
    """
    if pool is None:
        for split, docs in batches:
            yield split, encode_documents(enc, docs, dtype)
        return
    window: deque[tuple[str, Future]] = deque()
    limit = 2 * workers
    for split, docs in batches:
        window.append((split, pool.submit(encode_documents, enc, docs, dtype)))
        if len(window) >= limit:
            s, fut = window.popleft()
            yield s, fut.result()
    while window:
        s, fut = window.popleft()
        yield s, fut.result()


def encode_corpus(
    corpus_file: Path,
    enc: tiktoken.Encoding,
    out_dir: Path,
    val_fraction: float,
    seed: int,
    workers: int | None = None,
) -> ShardStats:
    """Write `train.bin` and `val.bin` (each document followed by end-of-text) plus `shards.json`.

    `workers`: encoding threads (default: all cores; 1 encodes in the calling thread).
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    dtype = token_dtype(enc.n_vocab)
    corpus_bytes = corpus_file.stat().st_size
    workers = workers or os.cpu_count() or 1
    pool = ThreadPoolExecutor(workers, thread_name_prefix="encode") if workers > 1 else None
    counts = {s: {"tokens": 0, "documents": 0, "text_bytes": 0} for s in SPLITS}
    hashes = {s: hashlib.sha256() for s in SPLITS}
    files = {s: open(out_dir / f"{s}.bin", "wb") for s in SPLITS}  # noqa: SIM115 (closed below)
    try:
        with tqdm(total=corpus_bytes, unit="B", unit_scale=True, desc="encode") as bar:
            batch_bytes = max(1 << 16, min(BATCH_BYTES, corpus_bytes // (4 * workers)))
            batches = _split_batches(corpus_file, val_fraction, seed, bar, batch_bytes)
            for split, batch in _ordered_results(pool, workers, enc, batches, dtype.name):
                files[split].write(batch.data)
                hashes[split].update(batch.data)
                counts[split]["tokens"] += batch.tokens
                counts[split]["documents"] += batch.documents
                counts[split]["text_bytes"] += batch.text_bytes
    finally:
        for f in files.values():
            f.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    meta = {
        "dtype": dtype.name,
        "eot": enc.encode_single_token(EOT),
        "vocab_size": enc.n_vocab,
        "splits": {s: {"file": f"{s}.bin", **counts[s], "sha256": hashes[s].hexdigest()} for s in SPLITS},
    }
    tmp = out_dir / (META_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, out_dir / META_FILE)
    return ShardStats(
        dtype=dtype.name,
        train_tokens=counts["train"]["tokens"],
        val_tokens=counts["val"]["tokens"],
        train_documents=counts["train"]["documents"],
        val_documents=counts["val"]["documents"],
        train_text_bytes=counts["train"]["text_bytes"],
        val_text_bytes=counts["val"]["text_bytes"],
        seconds=time.perf_counter() - t0,
    )


def read_manifest(shard_dir: Path) -> dict:
    """The `shards.json` of an encode directory."""
    path = Path(shard_dir) / META_FILE
    if not path.is_file():
        raise ShardError(f"no shard manifest {path}: not an encode stage directory")
    return json.loads(path.read_text())


def open_shard(shard_dir: Path, split: str, verify: bool = True) -> np.memmap:
    """Zero-copy view of one split's tokens, checked against `shards.json`.

    The size is always checked; with `verify` the sha256 is too, once per file per process
    (cached by path, size and mtime), so a DataModule reopening the shard pays for it only once.
    Raises ShardError naming the file when it is truncated or corrupt.
    """
    meta = read_manifest(shard_dir)
    info = meta["splits"][split]
    path = Path(shard_dir) / info["file"]
    dtype = np.dtype(meta["dtype"])
    expected = info["tokens"] * dtype.itemsize
    actual = path.stat().st_size if path.is_file() else None
    if actual != expected:
        found = "missing" if actual is None else f"{actual} bytes"
        raise ShardError(
            f"token shard {path} is truncated or corrupt: shards.json says {info['tokens']} {dtype.name} tokens "
            f"({expected} bytes), found {found}; rebuild the encode stage (--rebuild encode)"
        )
    if verify:
        stat = path.stat()
        digest = _sha256_cached(str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if digest != info["sha256"]:
            raise ShardError(
                f"token shard {path} is corrupt: expected sha256 {info['sha256']}, got {digest}; "
                f"rebuild the encode stage (--rebuild encode)"
            )
    return np.memmap(path, dtype=dtype, mode="r")


@cache
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file, remembered per (path, size, mtime) for the life of the process."""
    return sha256_file(path)
