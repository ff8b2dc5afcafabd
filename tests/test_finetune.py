"""Task heads and losses: similarity is order-symmetric, the multiple-choice softmax spans one question,
λ = 0 leaves no LM term, regression uses MSE, and dev-metric early stopping / best-epoch selection work."""

import pytest
import torch

from gpt.data.tokenizer import SPLIT_PATTERN, build_encoding
from gpt.downstream.spec import Example
from gpt.downstream.transforms import collate, encode_examples
from gpt.model.config import ModelConfig
from gpt.model.transformer import GPT
from gpt.train.config import FinetuneConfig
from gpt.train.finetune import FinetuneModule, TaskModel, extend_vocab, finetune, predict

pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")


@pytest.fixture(scope="module")
def enc():
    return build_encoding({bytes([i]): i for i in range(256)}, SPLIT_PATTERN)


def tiny_gpt(enc, seed=0):
    torch.manual_seed(seed)
    return GPT(ModelConfig(vocab_size=enc.n_vocab, n_layer=1, n_head=2, n_embd=16, block_size=48, dropout=0.0))


def batch_of(enc, examples, task_type):
    return collate(encode_examples(examples, task_type, enc, 48))


def test_similarity_head_is_order_symmetric(enc):
    model = TaskModel(tiny_gpt(enc), "similarity", 2, 0.0).eval()
    ab = batch_of(enc, [Example(("a cat sat", "the dog ran off"), 0)], "similarity")
    ba = batch_of(enc, [Example(("the dog ran off", "a cat sat"), 0)], "similarity")
    with torch.no_grad():
        logits_ab, _ = model(ab["tokens"], ab["lengths"])
        logits_ba, _ = model(ba["tokens"], ba["lengths"])
        one_order, _ = model(ab["tokens"][:, :1], ab["lengths"][:, :1])  # a single order differs
    assert torch.allclose(logits_ab, logits_ba, atol=1e-6)
    assert not torch.allclose(logits_ab, one_order, atol=1e-4)


def test_multiple_choice_softmax_spans_one_questions_answers(enc):
    model = TaskModel(tiny_gpt(enc), "multiple_choice", 3, 0.0).eval()
    q1 = Example(("the story", "end one", "end two", "end three"), 2)
    q2 = Example(("another tale", "x", "yy", "zzz"), 0)
    q2_changed = Example(("another tale", "something else entirely", "yy", "zzz"), 0)
    with torch.no_grad():
        b = batch_of(enc, [q1, q2], "multiple_choice")
        logits, _ = model(b["tokens"], b["lengths"])
        b2 = batch_of(enc, [q1, q2_changed], "multiple_choice")
        logits2, _ = model(b2["tokens"], b2["lengths"])
    assert logits.shape == (2, 3)  # one score per answer, per question
    probs = logits.softmax(-1)
    assert torch.allclose(probs.sum(-1), torch.ones(2))
    assert torch.allclose(logits[0], logits2[0], atol=1e-5)  # question 1 ignores question 2's answers
    assert not torch.allclose(logits[1], logits2[1], atol=1e-5)
    # the loss is cross-entropy over one question's answers
    module = FinetuneModule(model, FinetuneConfig(aux_lm_weight=0.0), total_steps=1)
    loss = module.training_step(b, 0)
    expected = -(logits.log_softmax(-1)[0, 2] + logits.log_softmax(-1)[1, 0]) / 2
    assert torch.allclose(loss, expected, atol=1e-5)


def test_lambda_zero_leaves_no_lm_term(enc, monkeypatch):
    model = TaskModel(tiny_gpt(enc), "classification", 2, 0.0).eval()
    b = batch_of(enc, [Example(("good film",), 1), Example(("bad",), 0)], "classification")
    with_lm = FinetuneModule(model, FinetuneConfig(aux_lm_weight=0.5), total_steps=1).training_step(b, 0)
    logits, lm_loss = model(b["tokens"], b["lengths"])
    task = torch.nn.functional.cross_entropy(logits, b["labels"])
    assert torch.allclose(with_lm, task + 0.5 * lm_loss, atol=1e-6) and lm_loss > 0

    def no_lm_head(hidden):
        raise AssertionError("the LM head must not run when λ = 0")

    monkeypatch.setattr(model.gpt, "lm_logits", no_lm_head)
    loss = FinetuneModule(model, FinetuneConfig(aux_lm_weight=0.0), total_steps=1).training_step(b, 0)
    assert torch.allclose(loss, task, atol=1e-6)


def test_lm_loss_ignores_padding(enc):
    model = TaskModel(tiny_gpt(enc), "classification", 2, 0.0).eval()
    short = Example(("ab",), 0)
    alone = batch_of(enc, [short], "classification")
    padded = batch_of(enc, [short, short], "classification")
    padded["tokens"] = torch.cat([padded["tokens"], torch.full((2, 1, 5), 7)], dim=2)  # junk after the end
    with torch.no_grad():
        _, lm_alone = model(alone["tokens"], alone["lengths"])
        _, lm_padded = model(padded["tokens"], padded["lengths"])
    assert torch.allclose(lm_alone, lm_padded, atol=1e-6)


def test_regression_head_uses_mse(enc):
    model = TaskModel(tiny_gpt(enc), "similarity", 1, 0.0, regression=True).eval()
    b = batch_of(enc, [Example(("a", "b"), 4.5), Example(("c", "d"), 0.5)], "similarity")
    loss = FinetuneModule(model, FinetuneConfig(aux_lm_weight=0.0), total_steps=1).training_step(b, 0)
    logits, _ = model(b["tokens"], b["lengths"])
    assert logits.shape == (2, 1) and b["labels"].dtype == torch.float
    assert torch.allclose(loss, ((logits.squeeze(-1) - torch.tensor([4.5, 0.5])) ** 2).mean(), atol=1e-5)


def _parity(n):
    """A learnable toy task: does the text contain 'x'?"""
    return [Example((("x " if i % 2 else "o ") + "abc" * (i % 3 + 1),), i % 2) for i in range(n)]


def test_early_stopping_stops_when_the_dev_metric_stalls(enc, tmp_path):
    train = encode_examples(_parity(16), "classification", enc, 48)
    dev = encode_examples(_parity(8), "classification", enc, 48)
    model = TaskModel(tiny_gpt(enc), "classification", 2, 0.0)
    cfg = FinetuneConfig(lr=1e-12, epochs=5, batch_size=8, early_stopping_patience=1)  # nothing can improve
    result = finetune(model, train, cfg, tmp_path / "ckpt", seed=0, dev=dev, metrics=("accuracy",))
    assert result.epochs_run == 2 and result.steps == 4


def test_best_checkpoint_restores_the_best_dev_epoch(enc, tmp_path):
    train = encode_examples(_parity(32), "classification", enc, 48)
    dev = encode_examples(_parity(16), "classification", enc, 48)
    model = TaskModel(tiny_gpt(enc), "classification", 2, 0.0)
    cfg = FinetuneConfig(lr=1e-3, epochs=4, batch_size=8, select_best=True)
    result = finetune(model, train, cfg, tmp_path / "ckpt", seed=0, dev=dev, metrics=("accuracy",))
    assert len(list((tmp_path / "ckpt" / "best").glob("*.ckpt"))) == 1
    # the model holds the best epoch's weights: its dev accuracy is the reported best
    acc = (predict(model, dev).argmax(-1) == torch.tensor([e.label for e in dev])).float().mean()
    assert abs(float(acc) - result.best_dev_metric) < 1e-6


def test_extend_vocab_keeps_learned_rows(enc):
    gpt = tiny_gpt(enc)
    small = GPT(ModelConfig(vocab_size=100, n_layer=1, n_head=2, n_embd=16, block_size=48, dropout=0.0))
    grown = extend_vocab(small, 260)
    assert grown.wte.weight.shape[0] >= 260 and grown.config.vocab_size == 260
    assert torch.equal(grown.wte.weight[:100], small.wte.weight)
    assert torch.equal(grown.h[0].mlp.c_fc.weight, small.h[0].mlp.c_fc.weight)
    assert extend_vocab(gpt, 100) is gpt


def test_length_grouped_batches_visit_every_example_once_and_pad_less():
    import numpy as np

    from gpt.train.finetune import EpochPermutationBatches

    lengths = np.random.default_rng(0).integers(3, 90, size=5000)
    step = [0]
    plain = EpochPermutationBatches(5000, 32, seed=1, steps_done=lambda: step[0])
    grouped = EpochPermutationBatches(5000, 32, seed=1, steps_done=lambda: step[0], lengths=lengths.tolist())
    for epoch in (0, 1):
        batches = grouped.epoch_batches(epoch)
        assert len(batches) == len(grouped) == len(plain)
        assert sorted(np.concatenate(batches).tolist()) == list(range(5000))
    assert [b.tolist() for b in grouped.epoch_batches(0)] != [b.tolist() for b in grouped.epoch_batches(1)]

    def padded(sampler):
        return sum(int(lengths[b].max()) * len(b) for b in sampler.epoch_batches(0))

    assert padded(grouped) < 0.6 * padded(plain)
    # a run resumed at step 7 continues the same epoch's order at its 8th batch
    step[0] = 7
    assert list(grouped) == [b.tolist() for b in grouped.epoch_batches(0)[7:]]
    step[0] = len(grouped) + 2
    assert next(iter(grouped)) == grouped.epoch_batches(1)[2].tolist()


def test_fresh_special_embeddings_redraw_only_those_rows(enc):
    from gpt.train.finetune import fresh_special_embeddings

    torch.manual_seed(0)
    gpt = GPT(ModelConfig(vocab_size=enc.n_vocab, n_layer=1, n_head=2, n_embd=16, block_size=16))
    before = gpt.wte.weight.detach().clone()
    ids = [enc.n_vocab - 3, enc.n_vocab - 1]
    fresh_special_embeddings(gpt, ids, seed=5)
    after = gpt.wte.weight.detach()
    others = [i for i in range(enc.n_vocab) if i not in ids]
    assert torch.equal(after[others], before[others])
    assert not torch.equal(after[ids], before[ids])
    again = GPT(ModelConfig(vocab_size=enc.n_vocab, n_layer=1, n_head=2, n_embd=16, block_size=16))
    fresh_special_embeddings(again, ids, seed=5)
    assert torch.equal(again.wte.weight[ids], after[ids])  # a function of the seed alone
