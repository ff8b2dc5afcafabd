import json

import numpy as np

from gpt.shards import encode_corpus, open_shard, split_documents
from gpt.tokenizer import EOT, SPLIT_PATTERN, build_encoding, train_bpe


def test_split_by_document_is_seeded_and_nonempty():
    docs = [f"doc {i}" for i in range(40)]
    a = split_documents(docs, 0.1, seed=1)
    assert a == split_documents(docs, 0.1, seed=1)
    assert a["val"] and a["train"]
    assert sorted(a["train"] + a["val"]) == sorted(docs)


def test_single_document_is_cut_at_a_paragraph():
    text = "\n\n".join(f"paragraph {i} " * 5 for i in range(20))
    split = split_documents([text], 0.1, seed=0)
    assert split["train"][0].startswith("paragraph 0")
    assert split["val"][0].startswith("paragraph")
    assert len(split["val"][0]) < len(split["train"][0])


def test_encode_roundtrip_through_memmap(tmp_path):
    docs = [f"story number {i}: the cat sat on the mat." for i in range(30)]
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    enc = build_encoding(train_bpe(docs, 300), SPLIT_PATTERN)
    stats = encode_corpus(tmp_path / "corpus.jsonl", enc, tmp_path, 0.2, seed=3)
    train = open_shard(tmp_path, "train")
    assert isinstance(train, np.memmap) and train.dtype == np.uint16
    assert stats.train_tokens == len(train)
    eot = enc.encode_single_token(EOT)
    texts = enc.decode(train.tolist()).split(EOT)[:-1]
    assert len(texts) == stats.train_documents == (train == eot).sum()
    assert set(texts) <= set(docs)
