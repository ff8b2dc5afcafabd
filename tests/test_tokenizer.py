import shutil

import numpy as np
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st
from tiktoken.load import load_tiktoken_bpe

from gpt.data.shards import encode_documents
from gpt.data.sources import CATALOG, fetch, mirror_dir
from gpt.data.tokenizer import (
    EOT,
    EXTRACT,
    GPT2_PATTERN,
    SPLIT_PATTERN,
    build_encoding,
    load_tokenizer,
    save_tokenizer,
    special_ids,
    train_bpe,
)

TEXT = ["the quick brown fox jumps over the lazy dog. " * 50, "Hello world! It's 2026; numbers 12345."]


def test_train_save_load_roundtrip(tmp_path):
    ranks = train_bpe(TEXT, 300)
    assert len(ranks) == 300
    enc = build_encoding(ranks, SPLIT_PATTERN)
    save_tokenizer(enc, ranks, tmp_path)
    # plain tiktoken, from the files alone
    plain = tiktoken.Encoding(
        name="x",
        pat_str=SPLIT_PATTERN,
        mergeable_ranks=load_tiktoken_bpe(str(tmp_path / "tokenizer.tiktoken")),
        special_tokens=enc._special_tokens,
    )
    loaded = load_tokenizer(tmp_path)
    sample = "the lazy fox says hello, 42 times"
    assert loaded.encode_ordinary(sample) == enc.encode_ordinary(sample) == plain.encode_ordinary(sample)
    assert loaded.decode(loaded.encode_ordinary(sample)) == sample


def test_training_is_deterministic():
    assert train_bpe(TEXT, 300) == train_bpe(TEXT, 300)


def test_specials_follow_the_ranks_and_never_come_from_text():
    enc = build_encoding(train_bpe(TEXT, 280), SPLIT_PATTERN)
    ids = special_ids(enc)
    assert sorted(ids.values()) == [280, 281, 282, 283]
    assert enc.n_vocab == 284
    ids_from_text = enc.encode_ordinary(f"a {EOT} b {EXTRACT}")  # how corpus and task text are encoded
    assert not set(ids_from_text) & set(ids.values())


def test_gpt2_ranks_match_tiktoken_gpt2(tmp_path, monkeypatch):
    # tiktoken's own gpt2 encoding, offline: its cache holds the mirror files under sha1(url) names
    mirror = mirror_dir()
    cache = tmp_path / "tiktoken"
    cache.mkdir()
    shutil.copy(mirror / "gpt2_bpe/vocab.bpe", cache / "6d1cbeee0f20b3d9449abfede4726ed8212e3aee")
    shutil.copy(mirror / "gpt2_bpe/encoder.json", cache / "6c7ea1a7e38e3a7f062df639a5b80947f075ffe6")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    reference = tiktoken.get_encoding("gpt2")
    ranks = load_tiktoken_bpe(str(fetch(CATALOG["gpt2_bpe"][0], tmp_path / "dl")))
    ours = build_encoding(ranks, GPT2_PATTERN, name="gpt2")
    text = "Hello world!  It's a test of GPT-2's BPE,\n\n with   spaces and ünïcödé 12345."
    assert ours.encode_ordinary(text) == reference.encode_ordinary(text)
    assert ours.encode_single_token(EOT) == reference.eot_token == 50256


def test_training_writes_byte_identical_rank_files(tmp_path):
    for name in ("a", "b"):
        ranks = train_bpe(TEXT * 3, 400)
        save_tokenizer(build_encoding(ranks, SPLIT_PATTERN), ranks, tmp_path / name)
    for f in ("tokenizer.tiktoken", "tokenizer.json"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()


ROUNDTRIP_ENC = build_encoding(train_bpe(TEXT + ["naïve café 東京 🙂 \u0301\t\r\n"], 320), SPLIT_PATTERN)


@settings(max_examples=300, deadline=None, database=None)  # no .hypothesis/ in the checkout
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=200))
def test_roundtrip_arbitrary_unicode_never_produces_specials(text):
    ids = ROUNDTRIP_ENC.encode_ordinary(text)
    assert ROUNDTRIP_ENC.decode(ids) == text
    batch = encode_documents(ROUNDTRIP_ENC, [text, text + EOT], "uint16")  # the encode stage's path
    tokens = np.frombuffer(batch.data, dtype=np.uint16).tolist()
    specials = set(special_ids(ROUNDTRIP_ENC).values())
    assert tokens[: len(ids)] == ids and tokens[len(ids)] == ROUNDTRIP_ENC.eot_token
    assert not specials & set(tokens[: len(ids)] + tokens[len(ids) + 1 : -1])  # literal "<|endoftext|>" is text
    assert ROUNDTRIP_ENC.decode(tokens[len(ids) + 1 : -1]) == text + EOT
