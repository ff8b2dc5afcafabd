import gzip
import json

import pytest

from gpt.data.corpus import build_corpus, decode, normalise_newlines, read_documents, strip_gutenberg
from gpt.data.sources import CATALOG, SourceError, fetch, sha256_file

PG = (
    "The Project Gutenberg eBook\r\nheader stuff\r\n*** START OF THIS PROJECT GUTENBERG EBOOK X ***\r\n"
    "Chapter 1\r\nIt was a dark night.\r\n*** END OF THIS PROJECT GUTENBERG EBOOK X ***\r\nlicense\r\n"
)


def test_strip_and_normalise():
    text, stripped = strip_gutenberg(normalise_newlines(PG))
    assert stripped
    assert text == "Chapter 1\nIt was a dark night.\n"
    assert strip_gutenberg("no markers") == ("no markers", False)


def test_bad_bytes_are_replaced_and_counted():
    text, bad = decode(b"ok \xff\xfe fine \xef\xbf\xbd")  # two bad bytes, one real U+FFFD
    assert bad == 2
    assert text.startswith("ok ")


def test_build_corpus_from_mixed_local_files(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(PG.encode())
    with gzip.open(src / "b.txt.gz", "wb") as f:
        f.write(b"second book\r\n")
    (src / "c.jsonl").write_text(json.dumps({"text": "third"}) + "\n" + json.dumps({"text": "fourth"}) + "\n")
    stats = build_corpus(str(src), tmp_path / "out.jsonl", tmp_path / "dl")
    docs = list(read_documents(tmp_path / "out.jsonl"))
    assert docs == ["Chapter 1\nIt was a dark night.\n", "second book\n", "third", "fourth"]
    assert stats.documents == 4 and stats.gutenberg_stripped == 1
    assert stats.bytes == sum(len(d.encode()) for d in docs)


def test_max_bytes_caps_the_corpus(tmp_path):
    (tmp_path / "a.txt").write_text("x" * 1000)
    stats = build_corpus(str(tmp_path / "a.txt"), tmp_path / "out.jsonl", tmp_path / "dl", max_bytes=100)
    assert stats.bytes == 100


def test_empty_and_missing_sources_fail_clearly(tmp_path):
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(SourceError, match="produced no text"):
        build_corpus(str(tmp_path / "empty.txt"), tmp_path / "o.jsonl", tmp_path / "dl")
    with pytest.raises(SourceError, match="not found: .*nope.txt"):
        build_corpus(str(tmp_path / "nope.txt"), tmp_path / "o.jsonl", tmp_path / "dl")


def test_mirror_checksum_mismatch_names_both_hashes(tmp_path, monkeypatch):
    remote = CATALOG["tinyshakespeare"][0]
    target = tmp_path / remote.mirror_path
    target.parent.mkdir(parents=True)
    target.write_text("tampered")
    monkeypatch.setenv("GPTFLOW_MIRROR", str(tmp_path))
    with pytest.raises(SourceError) as err:
        fetch(remote, tmp_path / "dl")
    assert remote.sha256 in str(err.value) and sha256_file(target) in str(err.value)


def test_catalog_source_served_from_mirror(tmp_path):
    path = fetch(CATALOG["tinyshakespeare"][0], tmp_path / "dl")
    assert sha256_file(path) == CATALOG["tinyshakespeare"][0].sha256
    assert not (tmp_path / "dl").exists()  # nothing downloaded


def test_gutenberg_catalog_is_verified_and_stripped(tmp_path):
    remotes = CATALOG["gutenberg"]
    assert len(remotes) == 48 and all(r.url.startswith("https://raw.githubusercontent.com/") for r in remotes)
    stats = build_corpus("gutenberg", tmp_path / "out.jsonl", tmp_path / "dl", max_bytes=3_000_000)
    assert stats.documents >= 3 and stats.gutenberg_stripped == stats.documents
    first = next(read_documents(tmp_path / "out.jsonl"))
    assert "Project Gutenberg" not in first[:2000] and "\r" not in first
    assert not (tmp_path / "dl").exists()  # everything came from the mirror
