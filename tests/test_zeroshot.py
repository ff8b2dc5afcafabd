"""Zero-shot scoring during pretraining: log-likelihoods by hand, choice rules, the callback, the config check."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from gpt.config.fields import ConfigError
from gpt.config.loader import load_config
from gpt.data.tokenizer import SPLIT_PATTERN, build_encoding
from gpt.downstream.builtin import get_task
from gpt.downstream.zeroshot import (
    ZeroShotEval,
    ZeroShotSet,
    build_zeroshot_set,
    continuation_logprobs,
    zeroshot_accuracy,
    zeroshot_callback,
)
from gpt.model.config import ModelConfig
from gpt.model.transformer import GPT
from tasks.variants import check_task_inputs


@pytest.fixture(scope="module")
def enc():
    return build_encoding({bytes([i]): i for i in range(256)}, SPLIT_PATTERN)


def tiny_gpt(vocab=260, block=16):
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=vocab, n_layer=1, n_head=2, n_embd=16, block_size=block, dropout=0.0)).eval()


def test_continuation_logprobs_match_a_direct_computation():
    model = tiny_gpt()
    prefixes, conts = [[5, 6, 7], [9]], [[8, 9], [1, 2, 3]]
    total, count = continuation_logprobs(model, prefixes, conts, batch_size=1)
    assert count.tolist() == [2, 3]
    for i, (p, c) in enumerate(zip(prefixes, conts, strict=True)):
        seq = torch.tensor([p + c])
        with torch.no_grad():
            logp = F.log_softmax(model(seq[:, :-1]), -1)[0]
        expected = sum(logp[len(p) - 1 + j, c[j]] for j in range(len(c)))
        assert total[i] == pytest.approx(float(expected), abs=1e-4)
    batched, _ = continuation_logprobs(model, prefixes, conts, batch_size=2)  # padding changes nothing
    assert torch.allclose(batched, total, atol=1e-4)


def test_long_prefixes_are_cut_from_the_left():
    model = tiny_gpt(block=8)
    total, count = continuation_logprobs(model, [list(range(10, 30))], [[1, 2]])
    direct, _ = continuation_logprobs(model, [list(range(24, 30))], [[1, 2]])
    assert count.tolist() == [2] and torch.allclose(total, direct)


class FavoursToken(torch.nn.Module):
    """An LM that always predicts token 1 with log-probability ~0 and everything else at about -20."""

    config = SimpleNamespace(block_size=32)

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, idx):
        logits = torch.zeros(*idx.shape, 260)
        logits[..., 1] = 20.0
        return logits


def test_choice_rules_average_vs_sum():
    # answer A: [1, 1, 7] (mean ≈ -6.7, sum ≈ -20); answer B: [7] (mean = sum ≈ -20)
    mc = ZeroShotSet("mc", [[3], [3]], [[1, 1, 7], [7]], 2, torch.tensor([0]), average=True)
    assert zeroshot_accuracy(FavoursToken(), mc) == 1.0
    summed = ZeroShotSet("s", [[3], [3]], [[1, 1, 7, 7], [7]], 2, torch.tensor([1]), average=False)
    assert zeroshot_accuracy(FavoursToken(), summed) == 1.0


def test_zero_shot_sets_from_the_mirror(enc, tmp_path):
    sst = build_zeroshot_set(get_task("sst2"), enc, tmp_path, 5, seed=0)
    assert len(sst.prefixes) == 10 and sst.n_choices == 2 and not sst.average
    assert bytes(sst.prefixes[0]).decode().endswith(" very")
    assert [bytes(c).decode() for c in sst.continuations[:2]] == [" negative", " positive"]
    cloze = build_zeroshot_set(get_task("story_cloze"), enc, tmp_path, 4, seed=0)
    assert len(cloze.continuations) == 8 and cloze.average and cloze.labels.shape == (4,)
    assert cloze.prefixes[0] == cloze.prefixes[1]  # both endings follow the same story


def test_callback_logs_one_curve_point_per_task(enc, tmp_path):
    logged = {}
    model = tiny_gpt(block=128).train()
    sets = [build_zeroshot_set(get_task("story_cloze"), enc, tmp_path, 3, seed=0)]
    module = SimpleNamespace(model=model, log=lambda k, v: logged.__setitem__(k, v))
    ZeroShotEval(sets).on_validation_epoch_end(SimpleNamespace(sanity_checking=False), module)
    assert set(logged) == {"zeroshot/story_cloze"}
    assert min(abs(logged["zeroshot/story_cloze"] - k / 3) for k in range(4)) < 1e-6
    assert model.training  # restored


def test_zero_shot_config_is_checked_before_compute():
    check_task_inputs(load_config(None, ["pretrain.zeroshot_tasks=[sst2, story_cloze, race]"]))
    with pytest.raises(ConfigError, match=r"'pretrain\.zeroshot_tasks\[0\]': 'rte' has no zero-shot form"):
        check_task_inputs(load_config(None, ["pretrain.zeroshot_tasks=[rte]"]))


def test_custom_multiple_choice_task_zero_shot(enc, tmp_path):
    (tmp_path / "mc.jsonl").write_text('{"q": "sky is", "a": "blue", "b": "loud", "ok": "a"}\n')
    cfg = load_config(
        None,
        [
            "pretrain.zeroshot_tasks=[quiz]",
            f"tasks={{quiz: {{type: multiple_choice, train: {tmp_path}/mc.jsonl, dev: {tmp_path}/mc.jsonl, "
            "columns: {context: q, answers: [a, b]}, label: ok, labels: [a, b]}}",
        ],
    )
    check_task_inputs(cfg)
    callback = zeroshot_callback(["quiz"], enc, tmp_path, None, 0, cfg.tasks)
    (data,) = callback.sets
    assert [bytes(c).decode() for c in data.continuations] == [" blue", " loud"] and data.labels.tolist() == [0]
