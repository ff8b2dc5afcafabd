import json

import lightning as L
import pytest

from gpt.config import ModelConfig, PretrainConfig
from gpt.model import GPTConfig
from gpt.pretrain import pretrain
from gpt.shards import encode_corpus
from gpt.tokenizer import SPLIT_PATTERN, build_encoding, train_bpe


class Crash(RuntimeError):
    pass


class CrashAt(L.Callback):
    """Simulates a killed process: stops the run with an exception after `step` optimizer steps."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *_):
        if trainer.global_step == self.step:
            raise Crash(f"killed at {self.step}")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("shards")
    docs = [f"Once upon a time, story {i} told of a king and a cat who lived by the sea." * 8 for i in range(40)]
    (d / "corpus.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    enc = build_encoding(train_bpe(docs, 300), SPLIT_PATTERN)
    encode_corpus(d / "corpus.jsonl", enc, d, 0.1, seed=0)
    return d, enc.n_vocab


def _setup(vocab: int):
    gcfg = GPTConfig.from_model_config(ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, dropout=0.0), vocab)
    tcfg = PretrainConfig(
        max_steps=12, batch_size=4, lr=3e-3, warmup_steps=2, val_every=6, val_batches=2, ckpt_every=4, log_every=2
    )
    return gcfg, tcfg


def test_loss_goes_down(shards, tmp_path):
    shard_dir, vocab = shards
    _, result = pretrain(*_setup(vocab), shard_dir, tmp_path / "ckpt", seed=0)
    assert result.steps == 12
    assert result.final_val_loss < result.initial_val_loss
    assert result.tokens_per_sec > 0 and 0 < result.mfu < 1
    assert (tmp_path / "ckpt" / "last.ckpt").is_file()


def test_killed_run_resumes_from_checkpoint_and_matches(shards, tmp_path):
    shard_dir, vocab = shards
    _, straight = pretrain(*_setup(vocab), shard_dir, tmp_path / "a", seed=0)
    with pytest.raises(Crash):
        pretrain(*_setup(vocab), shard_dir, tmp_path / "b", seed=0, extra_callbacks=[CrashAt(10)])
    _, resumed = pretrain(*_setup(vocab), shard_dir, tmp_path / "b", seed=0)
    assert resumed.resumed_from_step == 8  # the last checkpoint before the crash, not step 0
    assert resumed.steps == 12
    assert resumed.initial_val_loss == straight.initial_val_loss
    assert resumed.final_val_loss == pytest.approx(straight.final_val_loss, rel=1e-6)
