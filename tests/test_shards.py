import hashlib
import json

import numpy as np
import pytest

from gpt.data.shards import (
    ShardError,
    cut_single_document,
    encode_corpus,
    open_shard,
    read_manifest,
    val_mask,
)
from gpt.data.tokenizer import EOT, SPLIT_PATTERN, build_encoding, train_bpe

DOCS = [f"story number {i}: the cat sat on the mat. {EOT} is plain text here." for i in range(60)]


@pytest.fixture(scope="module")
def enc():
    return build_encoding(train_bpe(DOCS, 300), SPLIT_PATTERN)


def write_corpus(path, docs):
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path


def decoded_docs(enc, tokens):
    """Documents between end-of-text ids (their text may contain the string "<|endoftext|>")."""
    ends = np.flatnonzero(tokens == enc.eot_token)
    return [enc.decode(part[:-1].tolist()) for part in np.split(np.asarray(tokens), ends + 1)[:-1]]


def test_val_mask_is_seeded_chunk_independent_and_nonempty():
    whole = np.concatenate(list(val_mask(1000, 0.1, seed=1)))
    chunked = np.concatenate(list(val_mask(1000, 0.1, seed=1, chunk=7)))
    assert (whole == chunked).all() and 50 < whole.sum() < 150
    assert not (whole == np.concatenate(list(val_mask(1000, 0.1, seed=2)))).all()
    tiny = np.concatenate(list(val_mask(3, 0.01, seed=0)))  # would be all train: one doc is moved to val
    assert tiny.sum() == 1
    assert np.concatenate(list(val_mask(2, 0.49, seed=5))).sum() == 1  # two docs: one in each split


def test_single_document_is_cut_at_a_paragraph():
    text = "\n\n".join(f"paragraph {i} " * 5 for i in range(20))
    train, val = cut_single_document(text, 0.1)
    assert train.startswith("paragraph 0") and val.startswith("paragraph")
    assert len(val) < len(train)


def test_every_document_lands_whole_in_exactly_one_split(tmp_path, enc):
    stats = encode_corpus(write_corpus(tmp_path / "corpus.jsonl", DOCS), enc, tmp_path, 0.2, seed=3)
    train, val = open_shard(tmp_path, "train"), open_shard(tmp_path, "val")
    assert isinstance(train, np.memmap) and train.dtype == np.uint16
    assert stats.train_tokens == len(train) and stats.val_tokens == len(val)
    eot = enc.encode_single_token(EOT)
    train_docs, val_docs = decoded_docs(enc, train), decoded_docs(enc, val)
    assert len(train_docs) == stats.train_documents == (train == eot).sum()
    assert len(val_docs) == stats.val_documents == (val == eot).sum() > 0
    assert sorted(train_docs + val_docs) == sorted(DOCS)  # whole, and each in one split only
    # corpus order is kept within a split, and the split is the seeded hash of the index
    mask = np.concatenate(list(val_mask(len(DOCS), 0.2, seed=3)))
    assert val_docs == [d for d, v in zip(DOCS, mask, strict=True) if v]
    assert stats.val_text_bytes == sum(len(d.encode()) for d in val_docs)
    assert stats.val_bytes_per_token > 1


def test_encoding_threads_write_the_same_shards_as_one_thread(tmp_path, enc):
    corpus = write_corpus(tmp_path / "corpus.jsonl", DOCS)
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    encode_corpus(corpus, enc, tmp_path / "one", 0.2, seed=3, workers=1)
    encode_corpus(corpus, enc, tmp_path / "two", 0.2, seed=3, workers=2)
    assert read_manifest(tmp_path / "one") == read_manifest(tmp_path / "two")
    for split in ("train", "val"):
        assert (tmp_path / "one" / f"{split}.bin").read_bytes() == (tmp_path / "two" / f"{split}.bin").read_bytes()


def test_manifest_has_counts_and_sha256_per_shard(tmp_path, enc):
    encode_corpus(write_corpus(tmp_path / "corpus.jsonl", DOCS), enc, tmp_path, 0.2, seed=3)
    meta = read_manifest(tmp_path)
    assert meta["dtype"] == "uint16" and meta["eot"] == enc.eot_token
    for split in ("train", "val"):
        info = meta["splits"][split]
        data = (tmp_path / info["file"]).read_bytes()
        assert len(data) == 2 * info["tokens"]
        assert hashlib.sha256(data).hexdigest() == info["sha256"]


def test_truncated_shard_is_named(tmp_path, enc):
    encode_corpus(write_corpus(tmp_path / "corpus.jsonl", DOCS), enc, tmp_path, 0.2, seed=3)
    path = tmp_path / "train.bin"
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(ShardError, match=r"token shard .*train\.bin is truncated or corrupt"):
        open_shard(tmp_path, "train")
    assert len(open_shard(tmp_path, "val")) > 0


def test_corrupt_shard_fails_its_checksum(tmp_path, enc):
    encode_corpus(write_corpus(tmp_path / "corpus.jsonl", DOCS), enc, tmp_path, 0.2, seed=3)
    path = tmp_path / "val.bin"
    data = bytearray(path.read_bytes())
    data[0] ^= 0xFF  # same size, different content
    path.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=r"token shard .*val\.bin is corrupt: expected sha256 [0-9a-f]{64}, got"):
        open_shard(tmp_path, "val")
    assert len(open_shard(tmp_path, "val", verify=False)) > 0  # size alone still matches


def test_single_document_corpus_gives_both_splits(tmp_path, enc):
    text = "\n\n".join(f"paragraph {i} about the cat." for i in range(50))
    stats = encode_corpus(write_corpus(tmp_path / "corpus.jsonl", [text]), enc, tmp_path, 0.1, seed=0)
    assert stats.train_documents == stats.val_documents == 1
    train, val = decoded_docs(enc, open_shard(tmp_path, "train")), decoded_docs(enc, open_shard(tmp_path, "val"))
    assert train[0] + "\n\n" + val[0] == text


def test_large_vocab_uses_uint32(tmp_path):
    ranks = {bytes([i]): i for i in range(256)}
    ranks.update({f"<{i}>".encode(): 256 + i for i in range(70_000)})  # rank bytes need not be reachable
    big = build_encoding(ranks, SPLIT_PATTERN)
    encode_corpus(write_corpus(tmp_path / "corpus.jsonl", DOCS[:5]), big, tmp_path, 0.2, seed=0)
    assert open_shard(tmp_path, "train").dtype == np.uint32


def test_last_line_without_newline_is_a_document(tmp_path, enc):
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(json.dumps({"text": d}) for d in DOCS[:10]))
    stats = encode_corpus(path, enc, tmp_path, 0.2, seed=3)
    assert stats.train_documents + stats.val_documents == 10
