"""The corpus -> tokenizer -> encode stage functions on a weighted mixture, without Prefect or MLflow."""

import json

from gpt.config.loader import load_config
from gpt.data.shards import open_shard, read_manifest
from tasks.definition import StageEnv
from tasks.plan import build_plan


def run(name, cfg, out, inputs, cache_dir):
    """The stage's compute on its planned section, as the runner calls it."""
    out.mkdir()
    (stage,) = [s for s in build_plan(cfg, out.parent / "artifacts") if s.name == name]
    return stage.definition.compute(stage.section, inputs, out, StageEnv(name, None, None, cache_dir))


def test_stages_chain_on_a_weighted_mixture(tmp_path):
    (tmp_path / "a.jsonl").write_text(
        "".join(json.dumps({"text": f"Document {i}: The cat sat.\u00a0 \n\n\n"}) + "\n" for i in range(40))
        + json.dumps({"text": "Document 0: The cat sat.\u00a0 \n\n\n"})  # a duplicate
        + "\n"
    )
    cfg = load_config(
        None,
        [
            f"corpus.sources=[{{source: {tmp_path}/a.jsonl, weight: 1}}, {{source: tinyshakespeare, weight: 0.5}}]",
            "corpus.normalize_whitespace=true",
            "corpus.lowercase=true",
            "tokenizer.vocab_size=300",
            "encode.val_fraction=0.2",
        ],
    )
    dl = tmp_path / "dl"
    c = run("corpus", cfg, tmp_path / "corpus", {}, dl)
    assert c.summary["duplicates_dropped"] == 1
    assert c.info["source_bytes"]["tinyshakespeare"] > 0 and c.summary["documents"] == 41
    t = run("tokenizer", cfg, tmp_path / "tok", {"corpus": tmp_path / "corpus"}, dl)
    assert t.summary["vocab_size"] == 304 and t.summary["train_seconds"] > 0
    assert t.summary["train_bytes"] == c.summary["bytes"]
    e = run("encode", cfg, tmp_path / "enc", {"corpus": tmp_path / "corpus", "tokenizer": tmp_path / "tok"}, dl)
    assert e.summary["train_documents"] + e.summary["val_documents"] == 41
    assert e.summary["train_text_bytes"] + e.summary["val_text_bytes"] == c.summary["bytes"]
    assert 1 < e.summary["val_bytes_per_token"] < 10
    meta = read_manifest(tmp_path / "enc")
    assert len(open_shard(tmp_path / "enc", "val")) == meta["splits"]["val"]["tokens"] == e.summary["val_tokens"]


def test_tokenizer_trains_on_at_most_max_train_bytes(tmp_path):
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": f"doc {i} " * 50}) + "\n" for i in range(20)))
    cfg = load_config(
        None, [f"corpus.source={tmp_path}/a.jsonl", "tokenizer.vocab_size=300", "tokenizer.max_train_bytes=1000"]
    )
    run("corpus", cfg, tmp_path / "corpus", {}, tmp_path / "dl")
    t = run("tokenizer", cfg, tmp_path / "tok", {"corpus": tmp_path / "corpus"}, tmp_path / "dl")
    assert t.summary["train_bytes"] == 1000
