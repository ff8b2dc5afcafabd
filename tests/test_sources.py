"""Corpus source kinds (parquet, jsonl, hf mirror/offline), weighted mixtures and cleaning options."""

import gzip
import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gpt.config.fields import ConfigError
from gpt.config.loader import load_config
from gpt.data.config import CorpusConfig
from gpt.data.corpus import build_corpus, check_corpus_sources, mix, normalise_whitespace, read_documents
from gpt.data.sources import SourceError, check_source


def write_parquet(path, texts, column="text"):
    pq.write_table(pa.table({column: texts, "id": list(range(len(texts)))}), path)


def corpus(tmp_path, sources, **kw):
    out = tmp_path / "out.jsonl"
    stats = build_corpus(sources, out, tmp_path / "dl", **kw)
    return stats, list(read_documents(out))


def test_parquet_source_reads_the_text_column(tmp_path):
    write_parquet(tmp_path / "a.parquet", ["first doc", None, "second doc"])
    stats, docs = corpus(tmp_path, str(tmp_path / "a.parquet"))
    assert docs == ["first doc", "second doc"] and stats.documents == 2


def test_parquet_without_text_column_names_file_and_columns(tmp_path):
    write_parquet(tmp_path / "a.parquet", ["x"], column="content")
    with pytest.raises(SourceError, match=r"a\.parquet: no 'text' column \(columns: content, id\)"):
        corpus(tmp_path, str(tmp_path / "a.parquet"))


def test_jsonl_gz_streams_lines_and_counts_bad_bytes(tmp_path):
    with gzip.open(tmp_path / "a.jsonl.gz", "wb") as f:
        f.write(b'{"text": "caf\xc3\xa9"}\n\n{"text": "bad \xff byte"}\n')
    stats, docs = corpus(tmp_path, str(tmp_path / "a.jsonl.gz"))
    assert docs == ["café", "bad \ufffd byte"] and stats.bad_bytes_replaced == 1


def test_jsonl_line_without_text_is_named(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(SourceError, match=r"a\.jsonl:2: expected a JSON object with a string 'text' field"):
        corpus(tmp_path, str(tmp_path / "a.jsonl"))


def test_glob_source(tmp_path):
    for name in ("b.txt", "a.txt", "c.md"):
        (tmp_path / name).write_text(name)
    _, docs = corpus(tmp_path, str(tmp_path / "*.txt"))
    assert docs == ["a.txt", "b.txt"]


def test_exact_duplicates_are_dropped_after_cleaning(tmp_path):
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in ["x\r\n", "x\n", "y", "x\n"]))
    stats, docs = corpus(tmp_path, str(tmp_path / "a.jsonl"))
    assert docs == ["x\n", "y"] and stats.duplicates_dropped == 2
    stats, docs = corpus(tmp_path, str(tmp_path / "a.jsonl"), cleaning=CorpusConfig(dedup=False))
    assert len(docs) == 4 and stats.duplicates_dropped == 0


def test_cleaning_options(tmp_path):
    raw = "The Mona Lisa doesnÃ¢â‚¬â„¢t smile.\u00a0 \n\n\n\nSECOND   paragraph\t\n"
    (tmp_path / "a.txt").write_text(raw)
    opts = CorpusConfig(fix_unicode=True, normalize_whitespace=True, lowercase=True)
    stats, docs = corpus(tmp_path, str(tmp_path / "a.txt"), cleaning=opts)
    assert docs == ["the mona lisa doesn't smile.\n\nsecond   paragraph"]
    assert stats.unicode_fixed == 1
    _, plain = corpus(tmp_path, str(tmp_path / "a.txt"))
    assert plain == [raw]  # all off by default except Gutenberg stripping and dedup


def test_unwrap_lines_joins_hard_wrapped_paragraphs(tmp_path):
    raw = "It was a dark and\nstormy night;  \n  the rain fell.\n\nChapter II\n\nShe left.\n"
    (tmp_path / "a.txt").write_text(raw)
    stats, docs = corpus(tmp_path, str(tmp_path / "a.txt"), cleaning=CorpusConfig(unwrap_lines=True))
    assert docs == ["It was a dark and stormy night; the rain fell.\n\nChapter II\n\nShe left.\n"]
    assert stats.lines_unwrapped == 2
    assert load_config(None, ["corpus.unwrap_lines=true"]).corpus.unwrap_lines


def test_normalise_whitespace():
    assert normalise_whitespace("\n a\u3000b \t\n\n\n\nc  \n") == "a b\n\nc"


def test_weighted_mixture_follows_byte_shares(tmp_path):
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": f"a{i:03d}" * 10}) + "\n" for i in range(100)))
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({"text": f"b{i:03d}" * 10}) + "\n" for i in range(100)))
    stats, docs = corpus(tmp_path, [(str(tmp_path / "a.jsonl"), 3.0), (str(tmp_path / "b.jsonl"), 1.0)])
    # a runs out first (first_exhausted): all 100 of a, about a third as many bytes of b
    assert stats.source_bytes[str(tmp_path / "a.jsonl")] == 100 * 40
    assert abs(stats.source_bytes[str(tmp_path / "b.jsonl")] - 100 * 40 / 3) <= 40
    assert docs[:4] == ["a000" * 10, "b000" * 10, "a001" * 10, "a002" * 10]  # interleaved, not concatenated
    again = corpus(tmp_path, [(str(tmp_path / "a.jsonl"), 3.0), (str(tmp_path / "b.jsonl"), 1.0)])[1]
    assert again == docs


def test_mix_stops_at_first_exhausted_stream():
    out = list(mix([iter(["aa", "aa"]), iter(["b"] * 10)], [1.0, 1.0]))
    assert [t for _, t in out] == ["aa", "b", "b", "aa", "b", "b"]


def test_mixture_dedups_across_sources(tmp_path):
    (tmp_path / "a.txt").write_text("same text")
    (tmp_path / "b.txt").write_text("same text")
    stats, docs = corpus(tmp_path, [(str(tmp_path / "a.txt"), 1.0), (str(tmp_path / "b.txt"), 1.0)])
    assert docs == ["same text"] and stats.duplicates_dropped == 1


def test_sources_config_is_validated_with_key_paths(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    cfg = load_config(None, [f"corpus.sources=[{{source: {tmp_path}/a.txt, weight: 2}}, {{source: tinyshakespeare}}]"])
    assert [(s.source, s.weight) for s in cfg.corpus.sources] == [(f"{tmp_path}/a.txt", 2.0), ("tinyshakespeare", 1.0)]
    check_corpus_sources(cfg.corpus)
    with pytest.raises(ConfigError, match=r"'corpus\.sources\[1\]\.weight' must be > 0"):
        load_config(None, ["corpus.sources=[{source: a.txt}, {source: b.txt, weight: 0}]"])
    with pytest.raises(ConfigError, match=r"unknown config key 'corpus\.sources\[0\]\.wieght'"):
        load_config(None, ["corpus.sources=[{source: a.txt, wieght: 1}]"])
    bad = load_config(None, [f"corpus.sources=[{{source: {tmp_path}/a.txt}}, {{source: {tmp_path}/nope.txt}}]"])
    with pytest.raises(SourceError, match=r"config key 'corpus\.sources\[1\]\.source': corpus source not found"):
        check_corpus_sources(bad.corpus)


def test_hf_source_needs_a_pinned_revision():
    with pytest.raises(SourceError, match="needs a pinned revision"):
        check_source("hf://owner/data?split=train")
    check_source("hf://owner/data/cfg?split=train&revision=abc123")


def test_hf_source_served_from_the_mirror(tmp_path, monkeypatch):
    split_dir = tmp_path / "mirror" / "hf" / "owner" / "data" / "cfg"
    split_dir.mkdir(parents=True)
    write_parquet(split_dir / "validation.parquet", ["hub row one", "hub row two"])
    monkeypatch.setenv("GPTFLOW_MIRROR", str(tmp_path / "mirror"))
    _, docs = corpus(tmp_path, "hf://owner/data/cfg?split=validation&revision=abc123")
    assert docs == ["hub row one", "hub row two"]


def test_hf_source_offline_fails_fast_saying_how_to_provide_it(tmp_path, monkeypatch):
    monkeypatch.setenv("GPTFLOW_MIRROR", str(tmp_path / "mirror"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    with pytest.raises(SourceError) as err:
        corpus(tmp_path, "hf://owner/no-such-data?split=train&revision=abc123")
    msg = str(err.value)
    assert "cannot load hf://owner/no-such-data" in msg and "hf/owner/no-such-data/train.parquet" in msg
    assert "\n" not in msg


def test_hf_source_streams_through_datasets(tmp_path, monkeypatch):
    # `datasets` resolves owner/data to a local folder first: the real streaming path, offline
    (tmp_path / "owner" / "data").mkdir(parents=True)
    write_parquet(tmp_path / "owner" / "data" / "train.parquet", ["hub doc a", "hub doc b"])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GPTFLOW_MIRROR", str(tmp_path / "no-mirror"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")  # its lock files
    _, docs = corpus(tmp_path, "hf://owner/data?split=train&revision=main")
    assert docs == ["hub doc a", "hub doc b"]
    with pytest.raises(SourceError, match=r"no column 'body' \(columns: text, id\); add &column=<name>"):
        corpus(tmp_path, "hf://owner/data?split=train&revision=main&column=body")


def test_empty_source_in_a_mixture_is_named(tmp_path):
    (tmp_path / "a.txt").write_text("some text")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(SourceError, match=r"corpus source '.*empty\.jsonl' produced no text"):
        corpus(tmp_path, [(str(tmp_path / "a.txt"), 1.0), (str(tmp_path / "empty.jsonl"), 1.0)])


def test_task_source_is_the_tasks_training_inputs_without_labels(tmp_path):
    import csv

    from gpt.data.sources import mirror_dir

    (tmp_path / "sc").mkdir()
    _, docs = corpus(tmp_path, "task:sst2", max_bytes=200_000)
    with open(mirror_dir() / "glue/SST-2/train.tsv", newline="") as f:
        sentences = [r["sentence"].strip() for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    assert len(docs) > 1000 and set(docs[:-1]) <= set(sentences)  # the last one cut at max_bytes
    assert docs[0] == sentences[0]
    assert not any("\t" in d for d in docs)  # the label column never reaches the corpus
    _, story_docs = corpus(tmp_path / "sc", "task:story_cloze")
    assert len(story_docs) == 1871 - 374  # the train split only: the 374 dev stories stay out
    assert all(len(d.split("\n")) == 3 for d in story_docs)  # story, then each ending


def test_unknown_task_source_names_the_key_and_the_known_tasks():
    with pytest.raises(SourceError, match=r"'corpus.source': task:nope: 'nope' is not a built-in task .*sst2"):
        check_corpus_sources(CorpusConfig(source="task:nope"))
