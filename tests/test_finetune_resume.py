"""A fine-tune crashed mid-epoch resumes exactly from its last mid-stage checkpoint: the same batches in the
same order (none skipped or repeated) and, with dropout on, the uninterrupted run's final weights and loss."""

import lightning as L
import pytest
import torch
from crash import Crash, CrashAt

from gpt.data.tokenizer import SPLIT_PATTERN, build_encoding
from gpt.downstream.spec import Example
from gpt.downstream.transforms import encode_examples
from gpt.model.config import ModelConfig
from gpt.model.transformer import GPT
from gpt.train.config import FinetuneConfig
from gpt.train.finetune import TaskModel, finetune
from gpt.train.pretrain import LAST_CKPT, RNG_KEY

pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")


class RecordBatches(L.Callback):
    """(optimizer step, the batch's token rows) for every batch trained on (each example's row is unique)."""

    def __init__(self, seen: list):
        self.seen = seen

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.seen.append((trainer.global_step, [tuple(row) for row in batch["tokens"][:, 0].tolist()]))


@pytest.fixture(scope="module")
def data():
    enc = build_encoding({bytes([i]): i for i in range(256)}, SPLIT_PATTERN)
    examples = [Example((("x " if i % 2 else "o ") + f"item {i} " + "abc" * (i % 3 + 1),), i % 2) for i in range(24)]
    train = encode_examples(examples, "classification", enc, 32)
    return enc, train, encode_examples(examples[:8], "classification", enc, 32)


# 6 steps per epoch, a checkpoint every 2
CFG = FinetuneConfig(lr=1e-3, epochs=2, batch_size=4, warmup_fraction=0.1, clf_dropout=0.1, ckpt_every=2)


def _run(data, ckpt_dir, *callbacks):
    """Fine-tune a fresh tiny model (dropout on, so the RNG state matters); the model and the result."""
    enc, train, dev = data
    torch.manual_seed(0)
    gpt = GPT(ModelConfig(vocab_size=enc.n_vocab, n_layer=2, n_head=2, n_embd=32, block_size=32, dropout=0.1))
    model = TaskModel(gpt, "classification", 2, CFG.clf_dropout)
    result = finetune(model, train, CFG, ckpt_dir, seed=0, dev=dev, extra_callbacks=list(callbacks))
    return model, result


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.allclose(sa[k], sb[k], rtol=1e-6, atol=0) for k in sa)


def test_crashed_finetune_resumes_exactly_mid_epoch(data, tmp_path):
    straight_seen, resumed_seen = [], []
    straight, straight_result = _run(data, tmp_path / "a", RecordBatches(straight_seen))
    with pytest.raises(Crash):  # epoch 0, step 3: the checkpoint of step 2 is the one to resume from
        _run(data, tmp_path / "b", RecordBatches(resumed_seen), CrashAt(3))
    assert torch.load(tmp_path / "b" / LAST_CKPT, weights_only=True)["global_step"] == 2
    with pytest.raises(Crash):  # epoch 1, step 9: resumes from step 8, two batches into the epoch
        _run(data, tmp_path / "b", RecordBatches(resumed_seen), CrashAt(9))
    assert torch.load(tmp_path / "b" / LAST_CKPT, weights_only=True)["global_step"] == 8
    resumed, resumed_result = _run(data, tmp_path / "b", RecordBatches(resumed_seen))
    # the steps after each checkpoint are trained again (their updates were lost), on the same batches
    trained = {step: batch for step, batch in resumed_seen}  # the last time each step was trained
    assert [s for s, _ in straight_seen] == list(range(12)) and sorted(trained) == list(range(12))
    assert all(trained[step] == batch for step, batch in straight_seen)
    for epoch in (straight_seen[:6], straight_seen[6:]):  # each epoch visits every example once
        rows = [row for _, batch in epoch for row in batch]
        assert len(rows) == len(set(rows)) == 24
    assert [b for _, b in straight_seen[:6]] != [b for _, b in straight_seen[6:]]  # reshuffled per epoch
    assert resumed_result.steps == straight_result.steps == 12
    assert resumed_result.final_train_loss == pytest.approx(straight_result.final_train_loss, rel=1e-6)
    assert _same_weights(resumed, straight)


def test_resume_without_rng_state_would_differ(data, tmp_path):
    """The RNG state in the checkpoint is what makes dropout runs exact (the test above can fail)."""
    straight, _ = _run(data, tmp_path / "a")
    with pytest.raises(Crash):
        _run(data, tmp_path / "b", CrashAt(9))
    last = tmp_path / "b" / LAST_CKPT
    ckpt = torch.load(last, weights_only=True)
    del ckpt[RNG_KEY]
    torch.save(ckpt, last)
    resumed, _ = _run(data, tmp_path / "b")
    assert not _same_weights(resumed, straight)


class CrashInDevCheck(L.Callback):
    def on_validation_start(self, trainer, module):
        raise Crash("killed during the dev check")


class RecordDevChecks(L.Callback):
    def __init__(self, steps: list):
        self.steps = steps

    def on_validation_end(self, trainer, module):
        self.steps.append(trainer.global_step)


def test_a_kill_during_the_dev_check_resumes_before_it(data, tmp_path):
    """The epoch's last step is checkpointed after its dev check, so a resumed run does not skip that check."""
    with pytest.raises(Crash):
        _run(data, tmp_path, CrashInDevCheck())
    assert torch.load(tmp_path / LAST_CKPT, weights_only=True)["global_step"] == 4
    checks = []
    _run(data, tmp_path, RecordDevChecks(checks))
    assert checks == [6, 12]
